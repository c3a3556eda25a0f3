"""Python mlx-whisper side of scripts/bench_whisper.sh.

    python scripts/bench_whisper_mlx.py convert EXPORT_DIR OUT_DIR
        EXPORT_DIR is what the mlxrs example `export_whisper` wrote
        (hf_weights.safetensors with Hugging Face names + dims.json). Writes
        an mlx-whisper folder (config.json = ModelDimensions,
        weights.safetensors in openai-whisper names, float32), so both sides
        run the same weights. Checks that every mlx-whisper parameter is
        filled with the right shape.
    python scripts/bench_whisper_mlx.py run MLX_DIR AUDIO
        mlx_whisper.transcribe(AUDIO, path_or_hf_repo=MLX_DIR, temperature=0,
        condition_on_previous_text=True, fp16=False): one warm-up, one timed
        run; prints one JSON line (seconds, duration, real-time factor, text).
"""
import json
import re
import sys
import time
from pathlib import Path

ATTN = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}


def hf_to_mlx_whisper(name):
    n = name
    for a, b in [("model.encoder.", "encoder."), ("model.decoder.", "decoder.")]:
        n = n.replace(a, b)
    n = n.replace("encoder.layer_norm.", "encoder.ln_post.")
    n = n.replace("decoder.layer_norm.", "decoder.ln.")
    n = n.replace("decoder.embed_tokens.", "decoder.token_embedding.")
    if n == "decoder.embed_positions.weight":
        return "decoder.positional_embedding"
    if n.startswith("encoder.embed_positions."):
        return None  # mlx-whisper computes the sinusoids itself
    n = n.replace(".layers.", ".blocks.")
    m = re.match(r"(.*)\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)\.(.*)", n)
    if m:
        attn = "attn" if m.group(2) == "self_attn" else "cross_attn"
        return f"{m.group(1)}.{attn}.{ATTN[m.group(3)]}.{m.group(4)}"
    n = n.replace(".self_attn_layer_norm.", ".attn_ln.")
    n = n.replace(".encoder_attn_layer_norm.", ".cross_attn_ln.")
    n = n.replace(".final_layer_norm.", ".mlp_ln.")
    n = n.replace(".fc1.", ".mlp1.").replace(".fc2.", ".mlp2.")
    return n


def convert(src, out):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_whisper import whisper

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dims = json.loads((src / "dims.json").read_text())
    hf = mx.load(str(src / "hf_weights.safetensors"))
    ref = whisper.Whisper(whisper.ModelDimensions(**dims), mx.float32)
    want = dict(tree_flatten(ref.parameters()))
    w = {}
    for k, v in hf.items():
        n = hf_to_mlx_whisper(k)
        if n is None:
            continue
        if n not in want:
            sys.exit(f"convert: {k} -> {n} is not an mlx-whisper parameter")
        if v.ndim == 3 and tuple(v.shape) != tuple(want[n].shape):
            v = v.transpose(0, 2, 1)  # conv (out, in, k) -> MLX (out, k, in)
        if tuple(v.shape) != tuple(want[n].shape):
            sys.exit(f"convert: {n}: shape {v.shape} != {want[n].shape}")
        w[n] = v.astype(mx.float32)
    missing = sorted(set(want) - set(w) - {"alignment_heads"})
    if missing:
        sys.exit(f"convert: missing {missing[:5]}")
    mx.save_safetensors(str(out / "weights.safetensors"), w)
    (out / "config.json").write_text(json.dumps(dict(dims, model_type="whisper"), indent=2))
    print(f"convert: {len(w)} tensors -> {out}")


def read_wav(path):
    """16 kHz mono PCM16 wav (the committed test clips) -> float32 samples."""
    import wave
    import numpy as np

    with wave.open(path) as f:
        if f.getframerate() != 16000 or f.getnchannels() != 1 or f.getsampwidth() != 2:
            sys.exit(f"{path}: expected 16 kHz mono 16-bit wav")
        return np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768.0


def run(model, audio):
    import mlx.core as mx
    import mlx_whisper

    kw = dict(path_or_hf_repo=model, temperature=0.0, condition_on_previous_text=True,
              fp16=False, verbose=None)
    audio = read_wav(audio)  # mlx-whisper decodes files with ffmpeg; give it samples
    r = mlx_whisper.transcribe(audio, **kw)  # warm-up (loads and caches the model)
    dur = audio.shape[0] / 16000.0
    t = time.perf_counter()
    r = mlx_whisper.transcribe(audio, **kw)
    s = time.perf_counter() - t
    print(json.dumps({"seconds": s, "duration": dur, "rtf": s / dur, "text": r["text"],
                      "device": str(mx.default_device())}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "convert":
        convert(*args)
    elif cmd == "run":
        run(*args)
    else:
        sys.exit(f"unknown command {cmd}")
