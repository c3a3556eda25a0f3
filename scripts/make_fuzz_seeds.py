#!/usr/bin/env python3
"""Seed corpora for the parser fuzz targets (fuzz/seeds/{config,tokenizer,wav,image}).

The safetensors / GGUF seeds come from scripts/make_op_refs.py. These are small
valid inputs: the tiny checkpoints' config.json files, the tiny llama / qwen3
tokenizer files (first byte 0: tokenizer.json, 1: tokenizer_config.json, as
fuzz/src/lib.rs `tokenizer` reads them), wav files of several sample formats
(written with the standard library's `wave` plus a hand-made float one) and
PNG / JPEG / GIF / WebP images written with Pillow.
Run: /work/main/.venv/bin/python scripts/make_fuzz_seeds.py
"""
import io
import os
import shutil
import struct
import wave

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def out(kind, name, data):
    d = os.path.join(SEEDS, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def configs():
    for m in ["llama", "qwen3", "gemma3_text", "deepseek_v3", "gpt_oss-4bit", "mixtral"]:
        with open(os.path.join(ROOT, "models", "tiny", m, "config.json"), "rb") as f:
            out("config", m + ".json", f.read())


def tokenizers():
    for m in ["llama", "qwen3"]:
        base = os.path.join(ROOT, "models", "tiny", m)
        with open(os.path.join(base, "tokenizer.json"), "rb") as f:
            out("tokenizer", m + "-tokenizer.json", b"\x00" + f.read())
        with open(os.path.join(base, "tokenizer_config.json"), "rb") as f:
            out("tokenizer", m + "-tokenizer_config.json", b"\x01" + f.read())


def wavs():
    for ch, width, rate in [(1, 2, 16000), (2, 2, 44100), (1, 1, 8000), (2, 3, 22050)]:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(ch)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(bytes((i * 37) % 256 for i in range(64 * ch * width)))
        out("wav", f"pcm{8 * width}_{ch}ch_{rate}.wav", buf.getvalue())
    # IEEE float (format 3), mono, 16 kHz.
    data = b"".join(struct.pack("<f", ((i % 32) - 16) / 16) for i in range(64))
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    out("wav", "float32_1ch_16000.wav", b"RIFF" + struct.pack("<I", len(body)) + body)


def images():
    from PIL import Image

    img = Image.new("RGBA", (5, 4))
    for x in range(5):
        for y in range(4):
            img.putpixel((x, y), (x * 50, y * 60, 128, 255 - x * 20))
    for fmt, mode in [("PNG", "RGBA"), ("PNG", "L"), ("JPEG", "RGB"), ("GIF", "P"), ("WEBP", "RGBA")]:
        buf = io.BytesIO()
        img.convert(mode).save(buf, format=fmt)
        out("image", f"{mode.lower()}.{fmt.lower()}", buf.getvalue())


if __name__ == "__main__":
    for k in ["config", "tokenizer", "wav", "image"]:
        shutil.rmtree(os.path.join(SEEDS, k), ignore_errors=True)
    configs()
    tokenizers()
    wavs()
    images()
    print("seeds in", SEEDS)
