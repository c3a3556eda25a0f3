#!/usr/bin/env bash
# Side-by-side generation benchmark: mlxrs vs Python mlx-lm on the same MLX
# backend, same model shape, same run. Prints a table with ratios and appends
# it to docs/performance.md (set NO_DOC=1 to skip).
#
# usage: scripts/bench_lm.sh [SHAPE] [PROMPT] [GEN] [DTYPE] [BITS]
#   e.g. scripts/bench_lm.sh llama-3.2-1b 512 256 bfloat16 4
# Env: MLXRS (the mlxrs binary; default target/release/mlxrs),
#      PYTHON (a python with mlx + mlx-lm; default .venv/bin/python or python3),
#      TRIALS (default 3; the first is a warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
shape="${1:-smollm2-135m}"; p="${2:-128}"; g="${3:-64}"; dtype="${4:-float32}"; bits="${5:-}"
MLXRS="${MLXRS:-target/release/mlxrs}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TRIALS="${TRIALS:-3}"
qargs=(); [ -n "$bits" ] && qargs=(-q "$bits" --group-size 64)
cfg=$(mktemp --suffix .json)
"$MLXRS" bench --shape "$shape" --dump-config "$cfg"
rs=$("$MLXRS" bench --shape "$shape" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}" --json | tail -1)
py=$("$PYTHON" scripts/bench_lm.py "$cfg" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}")
# On Linux CPU, also run Python with the same OpenBLAS mlxrs links (LD_PRELOAD),
# so the ratio shows the binding's own speed, not just the BLAS.
blas=""
for d in /usr/lib/x86_64-linux-gnu/openblas-pthread /usr/lib/aarch64-linux-gnu/openblas-pthread; do
  [ -e "$d/libopenblas.so.0" ] && blas="$d/libopenblas.so.0" && break
done
pyb="null"
if [ -n "$blas" ] && [[ "$py" == *cpu* ]]; then
  pyb=$(LD_PRELOAD="$blas" "$PYTHON" scripts/bench_lm.py "$cfg" -p "$p" -g "$g" -n "$TRIALS" --dtype "$dtype" "${qargs[@]}")
fi
rm -f "$cfg"
table=$("$PYTHON" - "$rs" "$py" "$shape" "$p" "$g" "$dtype" "${bits:-none}" "$pyb" <<'PY'
import json, sys, datetime, platform
rs = json.loads(sys.argv[1]); py = json.loads(sys.argv[2])
shape, p, g, dtype, bits = sys.argv[3:8]
pyb = json.loads(sys.argv[8])
a = rs["average"]
dev = rs.get("device", "?")
def row(name, k):
    r, q = a[k], py[k]
    out = f"| {name} | {r:.1f} | {q:.1f} | {r / q:.2f}x |"
    if pyb:
        out += f" {pyb[k]:.1f} | {r / pyb[k]:.2f}x |"
    return out
print(f"### {shape}, prompt {p}, generate {g}, {dtype}, quantization {bits} — {dev} — {datetime.date.today()}")
print()
print(f"mlx {py.get('mlx')}; machine: {platform.node()} ({platform.machine()})")
print()
if pyb:
    print("| tok/s | mlxrs | Python mlx-lm | ratio | Python mlx-lm + OpenBLAS preload | ratio |")
    print("|---|---|---|---|---|---|")
else:
    print("| tok/s | mlxrs | Python mlx-lm | ratio |")
    print("|---|---|---|---|")
print(row("prompt (prefill)", "prompt_tps"))
print(row("generation (decode)", "generation_tps"))
print(f"| peak memory GB | {a['peak_memory_gb']:.3f} | {py['peak_memory_gb']:.3f} | |" + (" | |" if pyb else ""))
PY
)
echo "$table"
if [ -z "${NO_DOC:-}" ]; then
  printf '\n%s\n\nCommand: `scripts/bench_lm.sh %s %s %s %s %s`\n' "$table" "$shape" "$p" "$g" "$dtype" "$bits" >> docs/performance.md
fi
