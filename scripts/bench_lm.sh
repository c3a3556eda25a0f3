#!/usr/bin/env bash
# Side-by-side generation benchmark: mlxrs vs Python mlx-lm on the same MLX
# backend, same model shape, same run, in interleaved rounds
# (mlxrs, python, [baseline], mlxrs, python, ...), because the machines are
# shared and noisy: only same-run ratios mean anything. Prints every raw
# figure, the median ratio with min/max, the machine (CPU model, GPU model and
# clocks when nvidia-smi exists), and appends that to docs/performance.md
# (NO_DOC=1 skips).
#
# usage: scripts/bench_lm.sh [SHAPE] [PROMPT] [GEN] [DTYPE] [BITS]
#   e.g. scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 4
# Env: MLXRS     the mlxrs binary (default target/release/mlxrs)
#      BASELINE  an older mlxrs binary to interleave as a third contestant
#                (regression guard: build it with `git worktree add /tmp/base
#                <commit> && cargo build --release` there)
#      PYTHON    a python with mlx + mlx-lm (default .venv/bin/python or python3)
#      ROUNDS    interleaved rounds (default 5)
#      TRIALS    trials per contestant per round (default 2; the first warms up)
#      BATCH     rows decoded together (default 1; > 1: continuous batching on both
#                sides, `mlxrs bench -b` vs mlx-lm's BatchGenerator, aggregate tok/s)
#      GROUP     quantization group size with BITS (default 64; 32 = the layout of
#                llama.cpp Q4_0/Q4_1/Q8_0 blocks that GGUF files load into)
set -euo pipefail
cd "$(dirname "$0")/.."
shape="${1:-smollm2-135m}"; p="${2:-128}"; g="${3:-64}"; dtype="${4:-float32}"; bits="${5:-}"
MLXRS="${MLXRS:-target/release/mlxrs}"
BASELINE="${BASELINE:-}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
ROUNDS="${ROUNDS:-5}"
TRIALS="${TRIALS:-2}"
GROUP="${GROUP:-64}"
BATCH="${BATCH:-1}"
qargs=(); qlabel=none
[ "$BATCH" != 1 ] && qargs+=(-b "$BATCH")
[ -n "$bits" ] && qargs+=(-q "$bits" --group-size "$GROUP") && qlabel="${bits}-bit g${GROUP}"
[ "$BATCH" != 1 ] && qlabel="$qlabel, batch $BATCH"
cfg=$(mktemp --suffix .json)
raw=$(mktemp)
trap 'rm -f "$cfg" "$raw"' EXIT
"$MLXRS" bench --shape "$shape" --dump-config "$cfg"
# On Linux CPU, Python gets the same OpenBLAS mlxrs links (LD_PRELOAD), so the
# ratio shows the binding's own speed, not the BLAS.
blas=""
for d in /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/aarch64-linux-gnu/openblas-pthread; do
  [ -e "$d/libopenblas.so.0" ] && blas="$d/libopenblas.so.0" && break
done
pyenv=()
if [ -n "$blas" ] && ! command -v nvidia-smi >/dev/null 2>&1; then pyenv=(env "LD_PRELOAD=$blas"); fi
for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  rs=$("$MLXRS" bench --shape "$shape" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}" --json | tail -1)
  echo "mlxrs $rs" >> "$raw"
  py=$("${pyenv[@]}" "$PYTHON" scripts/bench_lm.py "$cfg" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}")
  echo "python $py" >> "$raw"
  if [ -n "$BASELINE" ]; then
    bs=$("$BASELINE" bench --shape "$shape" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}" --json | tail -1)
    echo "baseline $bs" >> "$raw"
  fi
done
gpu=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader | head -1)
fi
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || uname -m)
table=$("$PYTHON" - "$raw" "$shape" "$p" "$g" "$dtype" "$qlabel" "$ROUNDS" "$cpu" "$gpu" "${BASELINE:+baseline}" <<'PY'
import json, sys, datetime, statistics
raw, shape, p, g, dtype, bits, rounds, cpu, gpu, has_base = sys.argv[1:11]
runs = {"mlxrs": [], "python": [], "baseline": []}
for line in open(raw):
    who, js = line.split(" ", 1)
    d = json.loads(js)
    runs[who].append(d.get("average", d))
dev = runs["python"][0].get("device", "?")
mlx = runs["python"][0].get("mlx", "?")
def fmt(xs): return " / ".join(f"{x:.1f}" for x in xs)
def stats(num, den):
    rs = [a / b for a, b in zip(num, den)]
    return f"{statistics.median(rs):.2f}x (min {min(rs):.2f}, max {max(rs):.2f})"
print(f"### {shape}, prompt {p}, generate {g}, {dtype}, quantization {bits} — {dev} — {datetime.date.today()}")
print()
print(f"mlx {mlx}; {rounds} interleaved rounds; CPU: {cpu}" + (f"; GPU: {gpu}" if gpu else ""))
print()
hdr = "| tok/s | mlxrs (per round) | Python mlx-lm (per round) | median ratio mlxrs/python |"
sep = "|---|---|---|---|"
if has_base:
    hdr += " baseline mlxrs (per round) | median ratio mlxrs/baseline |"
    sep += "---|---|"
print(hdr); print(sep)
for name, k in (("prompt (prefill)", "prompt_tps"), ("generation (decode)", "generation_tps")):
    a = [r[k] for r in runs["mlxrs"]]; b = [r[k] for r in runs["python"]]
    row = f"| {name} | {fmt(a)} | {fmt(b)} | {stats(a, b)} |"
    if has_base:
        c = [r[k] for r in runs["baseline"]]
        row += f" {fmt(c)} | {stats(a, c)} |"
    print(row)
PY
)
echo "$table"
if [ -z "${NO_DOC:-}" ]; then
  envs=""
  [ "$BATCH" != 1 ] && envs="BATCH=$BATCH "
  [ -n "$bits" ] && [ "$GROUP" != 64 ] && envs="${envs}GROUP=$GROUP "
  printf '\n%s\n\nCommand: `%sscripts/bench_lm.sh %s %s %s %s %s` (mlxrs %s)\n' "$table" "$envs" "$shape" "$p" "$g" "$dtype" "$bits" "$(git rev-parse --short HEAD 2>/dev/null || echo ?)" >> docs/performance.md
fi
