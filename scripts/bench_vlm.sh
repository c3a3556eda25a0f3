#!/usr/bin/env bash
# VLM time-to-first-token and decode speed, mlxrs vs Python mlx-vlm on the
# same MLX backend, same model folder, same image and prompt, same run.
#
#   scripts/bench_vlm.sh [SHAPE=qwen2-vl-2b] [WxH=1024x768] [MAX_TOKENS=64]
#
# The model is a random-weight checkpoint at SHAPE's real size made by
# scripts/bench_vlm.py with mlx-vlm (cached in $MLXRS_CACHE_DIR/bench/;
# DTYPE=float32 by default on CPU, DTYPE=bfloat16 for GPUs). Both sides
# load it, warm up once, then stream one greedy generation; TTFT includes
# image preprocessing, the vision tower and prefill. VLM_BENCH_BIN=path uses
# a prebuilt `vlm_bench` example binary (machines without cargo);
# PYTHON=... picks the python with mlx-vlm (default .venv/bin/python).
# On CPU the python side gets OpenBLAS by LD_PRELOAD when the system has it,
# as mlxrs links it (MLX_PY_OPENBLAS=0 measures the wheel's bundled BLAS).
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE="${1:-qwen2-vl-2b}"
SIZE="${2:-1024x768}"
MAXT="${3:-64}"
DTYPE="${DTYPE:-float32}"
PY="${PYTHON:-.venv/bin/python}"
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
MODEL="${VLM_BENCH_MODEL:-$CACHE/bench/$SHAPE-$DTYPE}"
IMG="$CACHE/bench/image_$SIZE.png"
mkdir -p "$CACHE/bench"

if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
  fi
fi
[ -f "$IMG" ] || "$PY" scripts/bench_vlm.py image "${SIZE%x*}" "${SIZE#*x}" "$IMG"
if [ ! -f "$MODEL/config.json" ]; then
  echo "bench_vlm: making $MODEL (random weights, $SHAPE shape, $DTYPE)" >&2
  "$PY" scripts/bench_vlm.py make "$SHAPE" models/tiny-vlm/qwen2_vl "$MODEL" "$DTYPE"
fi
PROMPT="Describe this image in detail."

if [ -n "${VLM_BENCH_BIN:-}" ]; then BIN="$VLM_BENCH_BIN"
else
  cargo build --release -q -p mlxrs-vlm --example vlm_bench
  BIN=target/release/examples/vlm_bench
fi
echo "bench_vlm: $SHAPE ($DTYPE), image $SIZE, $MAXT tokens" >&2
RS_JSON="$("$BIN" "$MODEL" "$IMG" --prompt "$PROMPT" --max-tokens "$MAXT" --warmup --json)"
PRELOAD=""
if [ "${MLX_PY_OPENBLAS:-1}" != 0 ]; then
  PRELOAD="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $NF}' | head -1)"
fi
PY_JSON="$(LD_PRELOAD="$PRELOAD" "$PY" scripts/bench_vlm.py run "$MODEL" "$IMG" "$PROMPT" "$MAXT")"

"$PY" - "$RS_JSON" "$PY_JSON" <<'EOF'
import json, sys
rs, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"mlxrs:   prompt {rs['prompt_tokens']} tokens, TTFT {rs['ttft_s']:.3f} s, decode {rs['decode_tps']:.1f} tok/s ({rs['tokens']} tokens, {rs['device']})")
if 'ttft_cached_s' in rs:
    print(f"mlxrs:   TTFT with the image features cached (same image again): {rs['ttft_cached_s']:.3f} s")
print(f"mlx-vlm: prompt {py['prompt_tokens']} tokens, TTFT {py['ttft_s']:.3f} s, decode {py['decode_tps']:.1f} tok/s ({py['tokens']} tokens, {py['version']})")
print(f"ratio TTFT mlx-vlm / mlxrs: {py['ttft_s'] / rs['ttft_s']:.2f}   decode mlxrs / mlx-vlm: {rs['decode_tps'] / max(py['decode_tps'], 1e-9):.2f}")
EOF
