#!/bin/sh
# The cost of the stale-fasl check (runtime.lisp's forget-stale-fasls, issue 12) on a warm
# cache: one SBCL loads examples/hello-lisp once, then times N incremental loads with and
# without the check, interleaved, and prints the ratio. The anchor is the load itself, in
# the same run; a compile step also pays SBCL's start, so its ratio is smaller still.
# Usage: bench/stale-fasl.sh [N]   (needs sbcl and hunchentoot where ASDF finds it)
set -eu
n=${1:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
XDG_CACHE_HOME=$cache sbcl --noinform --non-interactive --no-sysinit --no-userinit \
  --eval '(require :asdf)' \
  --load "$root/src/lisp/runtime.lisp" \
  --eval "(asdf:initialize-source-registry '(:source-registry (:directory \"$root/examples/hello-lisp/\") :inherit-configuration))" \
  --eval '(asdf:load-system "hello-lisp")' \
  --eval "(let ((plain 0) (checked 0))
  (dotimes (i $n)
    (let ((t0 (get-internal-real-time)))
      (asdf:load-system \"hello-lisp\")
      (incf plain (- (get-internal-real-time) t0)))
    (let ((t0 (get-internal-real-time)))
      (windlass-launcher::forget-stale-fasls \"hello-lisp\")
      (asdf:load-system \"hello-lisp\")
      (incf checked (- (get-internal-real-time) t0))))
  (format t \"~d warm loads: with the check / without = ~,3f~%\" $n (/ checked (max plain 1))))"
