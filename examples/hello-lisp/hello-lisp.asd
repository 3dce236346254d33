;;;; hello-lisp: the windlass example Common Lisp web app.
;;;;
;;;; Note what is NOT here: no :build-operation and no :entry-point. windlass
;;;; builds the executable itself (`windlass build`) and calls the entry point
;;;; named in windlass.toml (`hello-lisp:main`) at startup, never at load time.

(defsystem "hello-lisp"
  :description "windlass example: a small Hunchentoot app"
  :version "0.1.0"
  :license "MIT OR Apache-2.0"
  :depends-on ("uiop" "hunchentoot")
  :serial t
  :pathname "src/"
  :components ((:file "package")
               (:file "app")))
