#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, the Rust unit and integration suites (which
# start the real binary), and the interoperability suite with real clients.
# Run scripts/install-test-deps.sh once first.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

step "Rust tests (unit + integration against the real binary)"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

export BERTH_BIN="${CARGO_TARGET_DIR:-target}/debug/berth"

step "interoperability with skopeo, podman, containerd and oras (one server, and two replicas on PostgreSQL)"
.venv/bin/pytest -q -p no:cacheprovider tests/interop

step "full disk: Berth on a 64 MiB tmpfs refuses writes with 507, keeps what it acknowledged"
.venv/bin/pytest -q -p no:cacheprovider tests/faults

step "web UI in Chromium: sign-in, browse, copy, delete, forged requests, axe-core, zh-CN, screenshots (tests/ui/screenshots)"
.venv/bin/pytest -q -p no:cacheprovider tests/ui

step "Kubernetes manifests, Helm chart and Containerfile against the binary; the image built and run"
.venv/bin/pytest -q -p no:cacheprovider tests/deploy

step "benchmark smoke run: every phase against Berth and Distribution produces a number"
bench/run.sh --smoke --out "$(mktemp -d)"

step "all tests passed"
