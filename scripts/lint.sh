#!/usr/bin/env bash
# Formatting and lints, as CI runs them before the tests (.ci/run):
# rustfmt (2-space house style, rustfmt.toml) and clippy with warnings as
# errors over every crate and target. mlxrs-core denies undocumented unsafe
# blocks (`// SAFETY:` on each); every crate above it forbids unsafe code.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "lint: ok"
