#!/usr/bin/env bash
# Set up (idempotent) and run every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --all-targets --no-fail-fast "$@"
