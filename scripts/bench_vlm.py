"""Python side of scripts/bench_vlm.sh.

    python scripts/bench_vlm.py make SHAPE TEMPLATE_DIR OUT [DTYPE]
        A random-weight checkpoint at a real model's shape (SHAPE:
        qwen2-vl-2b), built with mlx-vlm's own model class and saved with
        mlx-vlm's save_weights (mlx-community layout). Tokenizer, chat
        template and processor configs come from TEMPLATE_DIR (the tiny
        fixture models/tiny-vlm/qwen2_vl); its special-token ids are kept,
        so every id the prompt uses is below the real vocab size. DTYPE
        bfloat16 (default) or float32. Weights are random normal / fan_in,
        so the text is nonsense; the work per token is the real model's.
    python scripts/bench_vlm.py image W H OUT.png
        A deterministic W x H test image.
    python scripts/bench_vlm.py run MODEL IMAGE PROMPT MAX_TOKENS
        mlx-vlm: load, one warm-up (2 tokens), then stream_generate timed as
        the mlxrs example vlm_bench times itself: TTFT from the call (image
        loaded from disk and preprocessed inside mlx-vlm) to the first
        token, decode tok/s over the tokens after the first. Greedy. Prints
        one JSON line.
"""
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

SHAPES = {
    # Qwen/Qwen2-VL-2B-Instruct config.json (text + vision sizes).
    "qwen2-vl-2b": {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "hidden_act": "silu",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "max_position_embeddings": 32768,
        "num_attention_heads": 12,
        "num_hidden_layers": 28,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "quick_gelu",
        },
    }
}


def make(shape, template, out, dtype="bfloat16"):
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_vlm.utils import get_model_and_args, save_config, save_weights, update_module_configs

    template, out = Path(template), Path(out)
    tcfg = json.loads((template / "config.json").read_text())
    config = json.loads(json.dumps(SHAPES[shape]))
    for k in ("bos_token_id", "eos_token_id", "image_token_id", "video_token_id",
              "vision_start_token_id", "vision_end_token_id", "vision_token_id"):
        if k in tcfg:
            config[k] = tcfg[k]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    cfg.setdefault("text_config", {})
    cfg.setdefault("audio_config", {})
    mc = model_class.ModelConfig.from_dict(cfg)
    mc = update_module_configs(mc, model_class, cfg, ["text", "vision", "perceiver", "projector", "audio"])
    model = model_class.Model(mc)
    dt = getattr(mx, dtype)
    key = mx.random.key(0)
    new = []
    for k, v in tree_flatten(model.parameters()):
        key, sub = mx.random.split(key)
        if k.endswith("weight") and v.ndim == 1:
            w = mx.ones(v.shape) + 0.1 * mx.random.normal(v.shape, key=sub)
        elif k.endswith("bias"):
            w = 0.02 * mx.random.normal(v.shape, key=sub)
        else:
            fan_in = int(np.prod(v.shape[1:])) if v.ndim > 1 else v.shape[0]
            w = mx.random.normal(v.shape, key=sub) / float(np.sqrt(fan_in))
        new.append((k, w.astype(dt)))
        mx.eval(new[-1][1])
    model.update(tree_unflatten(new))
    mx.eval(model.parameters())
    save_weights(out, model)
    save_config(json.loads(json.dumps(config)), out / "config.json")
    for f in template.iterdir():
        if f.name not in ("config.json", "reference.json") and not f.name.startswith("model"):
            shutil.copy(f, out / f.name)
    # The real processor limits (the tiny fixture caps images at 12544 px).
    pp = json.loads((out / "preprocessor_config.json").read_text())
    pp.update(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    (out / "preprocessor_config.json").write_text(json.dumps(pp, indent=2))
    # Pad the tiny BPE vocabulary with plain ASCII tokens up to the real
    # vocab size, so any id the random model samples decodes on both sides.
    tj = json.loads((out / "tokenizer.json").read_text())
    # The added tokens go into the model vocab at their own ids too (else
    # the Rust tokenizers crate renumbers them after the model vocab).
    for a in tj["added_tokens"]:
        tj["model"]["vocab"][a["content"]] = a["id"]
    used = set(tj["model"]["vocab"].values())
    for i in range(config["vocab_size"]):
        if i not in used:
            tj["model"]["vocab"][f"zz{i}"] = i
    (out / "tokenizer.json").write_text(json.dumps(tj))


def image(w, h, out):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([127 + 127 * np.sin(x / 37.0), 127 + 127 * np.cos(y / 23.0),
                    255 * (x + y) / (w + h)], axis=-1)
    img[((x // 64 + y // 48) % 2) == 0] *= 0.7
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out)


def run(model, img, prompt, max_tokens):
    import mlx.core as mx
    import mlx_vlm
    from mlx_vlm import load, stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template

    t = time.perf_counter()
    m, processor = load(model)
    load_s = time.perf_counter() - t
    formatted = apply_chat_template(processor, m.config, prompt, num_images=1)

    def once(n):
        t0 = time.perf_counter()
        first, count, last = None, 0, None
        for r in stream_generate(m, processor, formatted, image=[img], max_tokens=n, temperature=0.0):
            count += 1
            if first is None:
                first = time.perf_counter() - t0
            last = r
        total = time.perf_counter() - t0
        return first, count, total, last

    once(2)
    first, count, total, last = once(max_tokens)
    print(json.dumps({
        "load_s": load_s, "ttft_s": first,
        "decode_tps": (count - 1) / max(total - first, 1e-9) if count > 1 else 0.0,
        "tokens": count, "prompt_tokens": getattr(last, "prompt_tokens", None),
        "mlx_vlm_generation_tps": getattr(last, "generation_tps", None),
        "version": f"mlx-vlm {mlx_vlm.__version__}, mlx {mx.__version__} {mx.default_device()}",
    }))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        make(*args)
    elif cmd == "image":
        image(int(args[0]), int(args[1]), args[2])
    elif cmd == "run":
        run(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown command {cmd}")
