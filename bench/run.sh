#!/usr/bin/env bash
# Berth vs. Distribution benchmark, one command. See bench/README.md.
#   bench/run.sh --smoke     # ~2 min: every phase must produce a number (exit 1 otherwise)
#   bench/run.sh --full      # the real run (default)
# BERTH_BIN=path/to/berth overrides the binary (default target/release/berth, else target/debug/berth).
set -euo pipefail
exec python3 "$(cd "$(dirname "$0")" && pwd)/run.py" "$@"
