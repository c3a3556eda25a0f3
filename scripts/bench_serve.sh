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
#      MLXRS (the mlxrs binary, default target/release/mlxrs),
#      ROUNDS (interleaved rounds, default 5),
#      BASELINE (an older mlxrs binary, served too and interleaved as a
#      third contestant labelled "baseline": a regression guard).
# Prints one JSON line per (server, level); see scripts/bench_serve.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/tiny/qwen3}
LEVELS=${2:-1,8,32}
MAXTOK=${3:-64}
ROUNDS=${ROUNDS:-5}
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
P2=$(free_port)
"$PY" -m mlx_lm server --model "$MODEL" --port "$P2" --max-tokens "$MAXTOK" --decode-concurrency 32 2>/tmp/bench_mlx_lm.log &
PIDS+=($!)
P3=
if [ -n "${BASELINE:-}" ]; then
  P3=$(free_port)
  "$BASELINE" serve --model "$MODEL" --port "$P3" --max-tokens "$MAXTOK" --decode-concurrency 32 2>/tmp/bench_baseline.log &
  PIDS+=($!)
fi
wait_up "$P1"
wait_up "$P2"
[ -z "$P3" ] || wait_up "$P3"

# ROUNDS interleaved rounds (mlxrs, then mlx_lm.server, then mlxrs ...), both
# servers up (idle while the other runs); then median/min/max per server
# and level over the rounds.
OUT=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  "$PY" scripts/bench_serve.py --port "$P1" --label mlxrs --levels "$LEVELS" --max-tokens "$MAXTOK" --model "$MODEL" | tee -a "$OUT"
  "$PY" scripts/bench_serve.py --port "$P2" --label mlx_lm.server --levels "$LEVELS" --max-tokens "$MAXTOK" --model "$MODEL" | tee -a "$OUT"
  [ -z "$P3" ] || "$PY" scripts/bench_serve.py --port "$P3" --label baseline --levels "$LEVELS" --max-tokens "$MAXTOK" --model "$MODEL" | tee -a "$OUT"
done
"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
keys = sorted({(r["server"], r["concurrency"]) for r in rows}, key=lambda k: (k[0], k[1]))
for lab, c in keys:
    sel = [r for r in rows if r["server"] == lab and r["concurrency"] == c]
    out = {"summary": lab, "concurrency": c, "rounds": len(sel)}
    for f in ("agg_tok_s", "ttft_p50_ms", "ttft_p90_ms"):
        v = [r[f] for r in sel if r.get(f) is not None]
        if v:
            out[f] = {"median": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1)}
    print(json.dumps(out))
PYEOF
rm -f "$OUT"
