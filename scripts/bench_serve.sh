#!/usr/bin/env bash
# Throughput and time-to-first-token of `mlxrs serve` vs `mlx_lm.server`,
# side by side in one run, on the same model and backend (whatever MLX's
# default device is: CPU here, the GPU on a GPU machine).
#
# Usage: scripts/bench_serve.sh [MODEL_DIR] [LEVELS] [MAX_TOKENS]
#   MODEL_DIR   default models/tiny/qwen3
#   LEVELS      default 1,8,32 (concurrent clients)
#   MAX_TOKENS  default 64
# Env: PY (python with mlx-lm, default /work/main/.venv/bin/python),
#      MLXRS (the mlxrs binary, default target/release/mlxrs).
# Prints one JSON line per (server, level); see scripts/bench_serve.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/tiny/qwen3}
LEVELS=${2:-1,8,32}
MAXTOK=${3:-64}
PY=${PY:-/work/main/.venv/bin/python}
MLXRS=${MLXRS:-target/release/mlxrs}
[ -x "$MLXRS" ] || cargo build --release -p mlxrs-cli

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() {
  for _ in $(seq 1 600); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$1/v1/models', timeout=2)" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "server on port $1 did not start" >&2; return 1
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cores; model $MODEL; max_tokens $MAXTOK" >&2

P1=$(free_port)
"$MLXRS" serve --model "$MODEL" --port "$P1" --max-tokens "$MAXTOK" --decode-concurrency 32 2>/tmp/bench_mlxrs.log &
PIDS+=($!)
wait_up "$P1"
"$PY" scripts/bench_serve.py --port "$P1" --label mlxrs --levels "$LEVELS" --max-tokens "$MAXTOK" --model "$MODEL"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

P2=$(free_port)
"$PY" -m mlx_lm server --model "$MODEL" --port "$P2" --max-tokens "$MAXTOK" --decode-concurrency 32 2>/tmp/bench_mlx_lm.log &
PIDS+=($!)
wait_up "$P2"
"$PY" scripts/bench_serve.py --port "$P2" --label mlx_lm.server --levels "$LEVELS" --max-tokens "$MAXTOK" --model "$MODEL"
