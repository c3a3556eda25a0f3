#!/usr/bin/env python3
"""Reference English phonemes for mlxrs's espeak-ng front end
(crates/mlxrs-audio/src/kokoro/phonemize.rs): misaki's `EspeakFallback`
(phonemizer + the espeak-ng of PyPI espeakng-loader, as kokoro uses it) on a
few phrases, American and British. Writes
crates/mlxrs-audio/tests/data/espeak_refs.json.

    .venv/bin/pip install phonemizer espeakng-loader && .venv/bin/pip install --no-deps misaki
    .venv/bin/python scripts/make_espeak_refs.py
"""
import json
import pathlib

from misaki.espeak import EspeakFallback

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/mlxrs-audio/tests/data/espeak_refs.json"
PHRASES = [
  "Hello world",
  "This is a test",
  "The quick brown fox jumps over the lazy dog",
  "kitchen button",
  "She sells seashells by the seashore",
  "Text to speech on MLX",
]


class Tok:
  def __init__(self, text):
    self.text = text


refs = []
for british in (False, True):
  fb = EspeakFallback(british=british)
  for p in PHRASES:
    refs.append({"text": p, "british": british, "phonemes": fb(Tok(p))[0]})
OUT.write_text(json.dumps(refs, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
print(json.dumps(refs, ensure_ascii=False, indent=1))
