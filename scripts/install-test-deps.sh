#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine: real registry clients
# (skopeo, podman, containerd/ctr, Docker's engine), the reference registry and Apache's
# htpasswd, Go for the Helm chart renderer, PostgreSQL's server (Debian), oras, pytest,
# kubernetes-validate and the moto S3 server (PyPI, in ./.venv), and the s3s-fs S3 server, which
# checks signatures (crates.io, in ./.tools).
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

packages=(skopeo podman containerd runc uidmap fuse-overlayfs apache2-utils docker-registry
          curl jq python3-venv openssl wrk iperf3
          # tests/interop/test_docker.py: Debian's dockerd and its matching client (a private
          # daemon), and `ip netns`/veth to reach the registry at a non-loopback address
          docker.io iproute2
          # tests/deploy renders the Helm chart with Go's text/template (Helm is not packaged)
          golang-go golang-gopkg-yaml.v3-dev
          # tests/deploy builds the Containerfile's image around a static (musl) binary
          musl-tools
          # the PostgreSQL metadata backend's tests start throwaway clusters (crates/meta/tests)
          postgresql
          # tests/ui drives the web UI in Debian's Chromium through playwright-core (npm), with
          # CJK fonts so the zh-CN screenshots show text rather than boxes
          chromium fonts-noto-cjk nodejs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt

# playwright-core drives the system Chromium (no browser download); axe-core checks pages.
# Versions are pinned by tests/ui/package-lock.json.
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error)

command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

# s3s-fs 0.14 (0.17 needs rustc 1.96).
# A debug build: the tests use it as a small signature-checking server, and it builds in
# less time than a release build.
[ -x .tools/bin/s3s-fs ] || cargo install --debug --locked s3s-fs@0.14.1 --features binary --root .tools

# The container image test needs Rust's musl target; rustup fetches it from static.rust-lang.org.
# Where that is unreachable the test says so and skips, and everything else still runs.
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl \
    || echo "warning: could not install the x86_64-unknown-linux-musl target; the container image test will be skipped" >&2
fi
echo "test dependencies installed"
