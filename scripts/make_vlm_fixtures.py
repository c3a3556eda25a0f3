#!/usr/bin/env python3
"""Tiny, real-format VLM checkpoints, test images and Python references for
the mlxrs-vlm tests.

Regenerate (from the repository root, after ``scripts/py_env.sh``)::

    .venv/bin/python scripts/make_vlm_fixtures.py            # writes models/tiny-vlm/
    .venv/bin/python scripts/make_vlm_fixtures.py --out /tmp/x

What it writes (schema details in ``models/tiny-vlm/README.md``):

1. ``images/``: small synthetic test images (numpy + Pillow, seeded): odd
   sizes, 1x1, a very wide one, RGBA, grayscale, a JPEG and a PNG carrying
   an EXIF orientation, a palette GIF, a lossless WebP, a downscale case, an
   image whose aspect ratio transformers refuses (> 200), a truncated PNG.
2. ``images/reference.json`` + ``images/reference.safetensors``: for every
   image case, transformers' ``Qwen2VLImageProcessorPil`` (the PIL backend
   of ``Qwen2VLImageProcessor``) with the tiny checkpoints'
   ``preprocessor_config.json``: ``image_grid_thw``, sums over all of
   ``pixel_values``, 4 full sampled rows of ``pixel_values`` (float32), the
   Pillow-resized uint8 image the rows were made from (checked here to
   reproduce the processor's output), and for lossy / palette formats the
   decoded uint8 image. Also Pillow resizes of one image with every filter.
3. ``qwen2_vl/`` and ``qwen2_5_vl/``: tiny random checkpoints in the
   mlx-community folder layout (config.json, model.safetensors + index,
   tokenizer.json, tokenizer_config.json, special_tokens_map.json,
   chat_template.json, preprocessor_config.json, generation_config.json).
   The model is mlx-vlm's own class (``mlx_vlm.models.<arch>.Model``)
   filled from a seeded numpy RNG and saved with mlx-vlm's
   ``save_weights`` / ``save_config``; the tokenizer is a byte-level BPE
   trained here on a small corpus plus the Qwen2-VL special tokens.
4. ``<arch>/reference.json``: each folder reloaded with ``mlx_vlm.load``;
   per case (one image, two images, text only): the prompt built by
   ``mlx_vlm.prompt_utils.apply_chat_template``, the ids / grids / pixel
   checksum from ``mlx_vlm.utils.prepare_inputs``, float32 last-position
   logits of a full forward (``model(input_ids, pixel_values, cache=...)``)
   and 20 greedy tokens from ``mlx_vlm.generate.generate_step`` (argmax,
   EOS not honoured).
5. ``qwen2_vl-4bit/``: ``mlx_vlm.convert(quantize=True, q_group_size=32,
   q_bits=4)`` of ``qwen2_vl/`` (language model 4-bit, vision tower float as
   mlx-vlm leaves it), with its own ``reference.json``.

Everything is deterministic (seeded RNGs, fixed salts found once by
``--search-salt``).
"""

import argparse
import contextlib
import io
import json
import shutil
import sys
import zlib
from io import BytesIO
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_vlm
import numpy as np
import PIL
import transformers
from mlx.utils import tree_flatten, tree_unflatten
from mlx_vlm.convert import convert as mlx_vlm_convert
from PIL import Image, ImageOps
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "tiny-vlm"
N_GREEDY = 20
N_SAMPLE_ROWS = 4

# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

VOCAB_SIZE = 400
CORPUS = [
    "Describe this image. The image shows a red circle on a blue background.",
    "Compare these two pictures. The first one is bright and the second one is dark.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful assistant. Answer the question of the user.",
    "A picture of a cat sitting on a mat next to a green plant.",
    "There are three boxes: a small square, a large square and a long rectangle.",
    "The quick brown fox jumps over the lazy dog. Hello world!",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100",
    "Colors: red, green, blue, yellow, white, black, orange, purple.",
    "Café, naïve, 日本語, 中文, Привет 🙂",
]
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2-VL-Instruct's chat template (as shipped in its chat_template.json).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE - len(SPECIAL_TOKENS), tok.get_vocab_size()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in SPECIAL_TOKENS
        ]
    )
    assert tok.get_vocab_size() == VOCAB_SIZE
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def write_json(path: Path, obj, indent=2):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def added_token_entry(t: str) -> dict:
    return {
        "content": t,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_tokenizer_files(folder: Path, tok: Tokenizer, ids: dict):
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    cfg = {
        "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in SPECIAL_TOKENS},
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "chat_template": QWEN2_VL_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    write_json(folder / "tokenizer_config.json", cfg)
    stm = {
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "eos_token": {k: v for k, v in added_token_entry("<|im_end|>").items() if k != "special"},
        "pad_token": {k: v for k, v in added_token_entry("<|endoftext|>").items() if k != "special"},
    }
    write_json(folder / "special_tokens_map.json", stm)
    write_json(folder / "chat_template.json", {"chat_template": QWEN2_VL_TEMPLATE})


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------

PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "Qwen2VLImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "max_pixels": 28 * 28 * 16,
    "merge_size": 2,
    "min_pixels": 56 * 56,
    "patch_size": 14,
    "processor_class": "Qwen2VLProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "temporal_patch_size": 2,
}


def text_config(tie: bool) -> dict:
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        # head_dim 16 -> 8 frequencies: 2 temporal, 3 height, 3 width.
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "sliding_window": 4096,
        "use_sliding_window": False,
    }


ARCHS = {
    "qwen2_vl": {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "text": text_config(tie=False),
        "vision": {
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 4,
            "mlp_ratio": 2,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "hidden_act": "quick_gelu",
        },
        "salt": 20,
    },
    "qwen2_5_vl": {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "text": text_config(tie=True),
        "vision": {
            "model_type": "qwen2_5_vl",
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 4,
            "in_channels": 3,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            # 56 / merge 2 / patch 14 = windows of 2x2 merged tokens.
            "window_size": 56,
            "fullatt_block_indexes": [1, 3],
            "hidden_act": "silu",
        },
        "salt": 0,
    },
}


def hf_config(arch: str, ids: dict) -> dict:
    a = ARCHS[arch]
    cfg = {"architectures": a["architectures"], "model_type": arch}
    cfg.update(a["text"])
    cfg.update(
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_token_id": ids["<|vision_pad|>"],
            "vision_config": dict(a["vision"]),
        }
    )
    return dict(sorted(cfg.items()))


def init_params(model: nn.Module, name: str, salt: int, tied: bool) -> None:
    """Seeded random parameters: std ~ 1/sqrt(fan_in), norm scales ~ 1,
    embeddings / lm_head scaled so logits are not degenerate. With tied
    embeddings the embedding is small and the final norm scale large, or the
    residual stream is dominated by the input token's own embedding and
    greedy decoding just repeats the last token."""
    rng = np.random.default_rng([zlib.crc32(name.encode()), salt])
    new = {}
    for k, v in tree_flatten(model.parameters()):
        shape = tuple(v.shape)
        leaf = k.rsplit(".", 1)[-1]
        if k == "language_model.model.norm.weight" and tied:
            w = 4.0 + 0.4 * rng.standard_normal(shape)
        elif leaf == "weight" and len(shape) == 1:  # LayerNorm / RMSNorm scales
            w = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias":
            w = 0.1 * rng.standard_normal(shape)
        elif k.endswith("embed_tokens.weight"):
            w = ((0.7 if tied else 3.0) / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        elif k.endswith("lm_head.weight"):
            w = (3.0 / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        elif k.endswith("patch_embed.proj.weight"):
            fan_in = int(np.prod(shape[1:]))
            w = (2.0 / np.sqrt(fan_in)) * rng.standard_normal(shape)
        else:
            w = (1.0 / np.sqrt(shape[-1])) * rng.standard_normal(shape)
        new[k] = mx.array(w.astype(np.float32))
    model.update(tree_unflatten(list(new.items())))
    mx.eval(model.parameters())


def make_checkpoint(out: Path, arch: str, tok: Tokenizer, ids: dict, salt: int) -> None:
    from mlx_vlm.utils import get_model_and_args, save_config, save_weights, update_module_configs

    folder = out / arch
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = hf_config(arch, ids)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    cfg.setdefault("text_config", {})
    cfg.setdefault("vision_config", {})
    cfg.setdefault("audio_config", {})
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(
        model_config, model_class, cfg, ["text", "vision", "perceiver", "projector", "audio"]
    )
    model = model_class.Model(model_config)
    init_params(model, arch, salt, ARCHS[arch]["text"]["tie_word_embeddings"])
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    write_tokenizer_files(folder, tok, ids)
    write_json(folder / "preprocessor_config.json", PREPROCESSOR)
    write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def smooth_rgb(w: int, h: int, seed: int, noise: float = 5.0) -> np.ndarray:
    """A smooth colourful pattern with some noise and sharp edges (exercises
    the filters' negative lobes and clipping)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 127.5 * np.sin(x / max(w, 1) * 6.3 + seed)
    g = 127.5 + 127.5 * np.cos(y / max(h, 1) * 4.1 + 0.5 * seed)
    b = 255.0 * ((x + y) / max(w + h - 2, 1))
    img = np.stack([r, g, b], axis=-1)
    img[(x // 5 + y // 7) % 2 == 0] *= 0.6  # a checkerboard of sharp edges
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def scene(w: int, h: int, seed: int) -> np.ndarray:
    """A 'scene' for the model cases: a background gradient and a disc."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    t = (x / max(w - 1, 1))[..., None]
    img = c0 * (1 - t) + c1 * t
    cx, cy, rad = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, 0.3 * min(w, h)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
    img[disc] = rng.uniform(0, 255, 3)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def exif_with_orientation(o: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = o
    return ex


def write_images(d: Path) -> dict:
    """Writes the test images; returns {file: description}."""
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    files = {}

    def save(name, img, desc, **kw):
        img.save(d / name, **kw)
        files[name] = desc

    save("odd_37x53.png", Image.fromarray(smooth_rgb(37, 53, 1)), "RGB, odd size (37 wide, 53 tall)")
    save("pixel_1x1.png", Image.fromarray(smooth_rgb(1, 1, 2)), "1x1 RGB (upscaled to 56x56 as transformers does)")
    save("wide_900x20.png", Image.fromarray(smooth_rgb(900, 20, 3, noise=0)), "very wide RGB, aspect ratio 45")
    save("big_300x200.png", Image.fromarray(smooth_rgb(300, 200, 4, noise=0)), "300x200 RGB, downscaled (antialiased resize)")
    rgba = np.concatenate(
        [smooth_rgb(45, 30, 5), (np.linspace(0, 255, 45)[None, :].repeat(30, 0)).round().astype(np.uint8)[..., None]],
        axis=-1,
    )
    save("rgba_45x30.png", Image.fromarray(rgba, "RGBA"), "RGBA with an alpha ramp 0..255")
    gray = smooth_rgb(33, 47, 6)[..., 1]
    save("gray_33x47.png", Image.fromarray(gray, "L"), "grayscale (L)")
    # Stored 64x40, EXIF orientation 6 (rotate 90 CW on display) -> 40x64.
    save(
        "exif_rot6.jpg",
        Image.fromarray(smooth_rgb(64, 40, 7)),
        "JPEG (q95, 4:4:4) with EXIF orientation 6",
        quality=95,
        subsampling=0,
        exif=exif_with_orientation(6),
    )
    save(
        "exif_rot8.png",
        Image.fromarray(smooth_rgb(50, 30, 8)),
        "PNG with an eXIf orientation 8",
        exif=exif_with_orientation(8),
    )
    pal = Image.fromarray(smooth_rgb(30, 20, 9)).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save("palette.gif", pal, "palette GIF (16 colours, no transparency)")
    save("lossless.webp", Image.fromarray(smooth_rgb(40, 30, 10)), "lossless WebP", lossless=True)
    save("too_wide_301x1.png", Image.fromarray(smooth_rgb(301, 1, 11)), "aspect ratio 301 > 200: refused")
    buf = BytesIO()
    Image.fromarray(smooth_rgb(20, 20, 12)).save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[:60])
    files["truncated.png"] = "a PNG cut after 60 bytes"
    # Model cases.
    save("scene_a_64x48.png", Image.fromarray(scene(64, 48, 21)), "model case: 64x48 -> 56x56, 4 tokens")
    save("scene_b_90x60.png", Image.fromarray(scene(90, 60, 22)), "model case: 90x60 -> 84x56, 6 tokens")
    save("scene_c_84x140.png", Image.fromarray(scene(84, 140, 23)), "model case: 84x140, 15 tokens, partial windows")
    return files


PIXEL_CASES = [
    # (case, file, alpha)
    ("odd_37x53", "odd_37x53.png", "drop"),
    ("pixel_1x1", "pixel_1x1.png", "drop"),
    ("wide_900x20", "wide_900x20.png", "drop"),
    ("big_300x200", "big_300x200.png", "drop"),
    ("rgba_45x30", "rgba_45x30.png", "drop"),
    ("rgba_45x30_over_white", "rgba_45x30.png", "over_white"),
    ("gray_33x47", "gray_33x47.png", "drop"),
    ("exif_rot6_jpeg", "exif_rot6.jpg", "drop"),
    ("exif_rot8_png", "exif_rot8.png", "drop"),
    ("palette_gif", "palette.gif", "drop"),
    ("lossless_webp", "lossless.webp", "drop"),
    ("scene_c_84x140", "scene_c_84x140.png", "drop"),
]
ERROR_CASES = [("too_wide_301x1.png", "aspect ratio"), ("truncated.png", "decode")]
FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
FILTER_SIZES = [(20, 70), (50, 25), (111, 9)]


def pixel_references(d: Path) -> None:
    from safetensors.numpy import save_file
    from transformers.image_utils import load_image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
        smart_resize,
    )

    kw = {k: PREPROCESSOR[k] for k in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size")}
    proc = Qwen2VLImageProcessorPil(
        **kw,
        image_mean=PREPROCESSOR["image_mean"],
        image_std=PREPROCESSOR["image_std"],
        resample=PREPROCESSOR["resample"],
    )
    tensors = {}
    cases = []
    for case, file, alpha in PIXEL_CASES:
        path = d / file
        if alpha == "drop":
            img = load_image(str(path))  # exif_transpose + convert("RGB")
            rgb = np.array(img.convert("RGB"))
        else:
            img = ImageOps.exif_transpose(Image.open(path))
            img.load()
            assert img.mode == "RGBA"
            rgb = transformers.image_transforms.convert_to_rgb(img, return_numpy=True)
        out = proc(images=[img], return_tensors="np")
        pv = np.asarray(out["pixel_values"], dtype=np.float32)
        grid = [int(v) for v in np.asarray(out["image_grid_thw"])[0]]
        h, w = rgb.shape[:2]
        rh, rw = smart_resize(h, w, factor=28, min_pixels=kw["min_pixels"], max_pixels=kw["max_pixels"])
        resized = np.array(Image.fromarray(rgb).resize((rw, rh), resample=Image.Resampling.BICUBIC))
        # The resized image reproduces the processor's output.
        x = resized.astype(np.float64) * PREPROCESSOR["rescale_factor"]
        x = ((x.astype(np.float32) - np.array(PREPROCESSOR["image_mean"], np.float32)) / np.array(PREPROCESSOR["image_std"], np.float32))
        x = x.transpose(2, 0, 1)
        gh, gw = rh // 14, rw // 14
        p = x.reshape(3, gh // 2, 2, 14, gw // 2, 2, 14).transpose(1, 4, 2, 5, 0, 3, 6)
        p = np.broadcast_to(p[:, :, :, :, :, None], p.shape[:5] + (2,) + p.shape[5:]).reshape(gh * gw, -1)
        assert np.abs(p - pv).max() < 1e-6, (case, np.abs(p - pv).max())
        rows = sorted(set(np.linspace(0, pv.shape[0] - 1, N_SAMPLE_ROWS).round().astype(int).tolist()))
        tensors[f"{case}.rows"] = pv[rows]
        tensors[f"{case}.resized"] = resized
        if file.endswith((".jpg", ".gif", ".webp")):
            tensors[f"{case}.decoded"] = rgb
        cases.append(
            {
                "case": case,
                "file": file,
                "alpha": alpha,
                "decoded_size": [int(w), int(h)],
                "resized_size": [int(rw), int(rh)],
                "image_grid_thw": grid,
                "shape": list(pv.shape),
                "sum": float(pv.astype(np.float64).sum()),
                "abs_sum": float(np.abs(pv.astype(np.float64)).sum()),
                "sample_rows": rows,
            }
        )
    errors = []
    for file, expect in ERROR_CASES:
        try:
            proc(images=[load_image(str(d / file))], return_tensors="np")
            raise AssertionError(f"{file} should fail")
        except Exception as e:  # noqa: BLE001
            errors.append({"file": file, "python_error": f"{type(e).__name__}: {e}", "expect": expect})
    base = np.array(Image.open(d / "odd_37x53.png").convert("RGB"))
    filters = []
    for fname, code in FILTERS.items():
        for w, h in FILTER_SIZES:
            tensors[f"filter.{fname}.{w}x{h}"] = np.array(Image.fromarray(base).resize((w, h), resample=code))
            filters.append({"filter": fname, "code": code, "size": [w, h]})
    save_file(tensors, str(d / "reference.safetensors"))
    (d / "reference.safetensors").chmod(0o644)
    write_json(
        d / "reference.json",
        {
            "processor": "transformers Qwen2VLImageProcessorPil",
            "preprocessor_config": PREPROCESSOR,
            "cases": cases,
            "errors": errors,
            "filters": {"image": "odd_37x53.png", "resizes": filters},
            "versions": {"transformers": transformers.__version__, "pillow": PIL.__version__, "numpy": np.__version__},
        },
        indent=1,
    )


# --------------------------------------------------------------------------
# Model references
# --------------------------------------------------------------------------

QUANTIZED = [("qwen2_vl-4bit", "qwen2_vl", 32, 4)]

MODEL_CASES = [
    ("image", "Describe this image.", ["scene_a_64x48.png"]),
    ("two_images", "Compare these two pictures.", ["scene_b_90x60.png", "scene_c_84x140.png"]),
    ("text", "What is the capital of France?", []),
]


def model_reference(out: Path, arch: str, check_only=False) -> dict:
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.models import cache as vcache
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    folder = out / arch
    model, processor = load(str(folder))
    config = json.loads((folder / "config.json").read_text())
    cases = []
    min_margin = 1e9
    distinct = 1e9
    for name, prompt, files in MODEL_CASES:
        images = [str(out / "images" / f) for f in files]
        text = apply_chat_template(processor, config, prompt, num_images=len(images))
        inputs = prepare_inputs(processor, images=images or None, prompts=[text], add_special_tokens=False)
        input_ids = inputs["input_ids"]
        pixel_values = inputs.get("pixel_values")
        grid = inputs.get("image_grid_thw")
        extra = {"image_grid_thw": grid} if grid is not None else {}
        # A text-only call does not reset the M-RoPE state a previous image
        # prompt left in mlx-vlm's language model (`_position_ids`,
        # `_rope_deltas`), so reset it as a fresh load would have it.
        model.language_model._position_ids = None
        model.language_model._rope_deltas = None
        cache = vcache.make_prompt_cache(model.language_model)
        out_ = model(input_ids, pixel_values, cache=cache, **extra)
        logits = out_.logits if hasattr(out_, "logits") else out_
        last = np.array(logits[0, -1].astype(mx.float32))
        tokens = []
        margins = []
        for tok, lp in generate_step(
            input_ids,
            model,
            pixel_values,
            inputs.get("attention_mask"),
            max_tokens=N_GREEDY,
            sampler=lambda x: mx.argmax(x, axis=-1),
            **extra,
        ):
            tokens.append(int(tok))
            srt = np.sort(np.array(lp.astype(mx.float32)).reshape(-1))
            margins.append(float(srt[-1] - srt[-2]))
        min_margin = min(min_margin, min(margins))
        distinct = min(distinct, len(set(tokens)))
        pv_info = None
        if pixel_values is not None:
            pv = np.array(pixel_values.astype(mx.float32))
            pv_info = {"shape": list(pv.shape), "sum": float(pv.astype(np.float64).sum())}
        cases.append(
            {
                "name": name,
                "prompt": prompt,
                "images": files,
                "prompt_text": text,
                "input_ids": np.array(input_ids)[0].tolist(),
                "image_grid_thw": np.array(grid).tolist() if grid is not None else [],
                "pixel_values": pv_info,
                "logits_last": [float(v) for v in last],
                "greedy_tokens": tokens,
                "min_greedy_margin": min(margins),
            }
        )
    return {"cases": cases, "min_margin": min_margin, "min_distinct": distinct}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--search-salt", action="store_true", help="find salts with robust greedy margins")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    mx.set_default_device(mx.cpu)
    files = write_images(out / "images")
    tok = build_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    summary = {}
    for arch in ARCHS:
        salt = ARCHS[arch]["salt"]
        while True:
            make_checkpoint(out, arch, tok, ids, salt)
            ref = model_reference(out, arch)
            ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
            print(f"{arch} salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
            if ok or not args.search_salt:
                break
            salt += 1
        if not ok:
            print(f"warning: {arch} salt {salt} has fragile greedy margins", file=sys.stderr)
        ref["salt"] = salt
        ref["versions"] = {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__}
        write_json(out / arch / "reference.json", ref, indent=1)
        summary[arch] = salt
    # A 4-bit copy made by mlx-vlm's own converter (language model
    # quantized, vision tower kept in float as mlx-vlm does by default).
    for name, src, group, bits in QUANTIZED:
        if (out / name).exists():
            shutil.rmtree(out / name)
        with contextlib.redirect_stdout(io.StringIO()):
            mlx_vlm_convert(str(out / src), str(out / name), quantize=True, q_group_size=group, q_bits=bits)
        ref = model_reference(out, name)
        print(f"{name}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        ref["versions"] = {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__}
        write_json(out / name / "reference.json", ref, indent=1)
    pixel_references(out / "images")
    write_readme(out, files)
    print(json.dumps(summary))


def write_readme(out: Path, files: dict):
    lines = [
        "# Tiny VLM fixtures",
        "",
        "Made by `scripts/make_vlm_fixtures.py` (see its docstring); do not edit by hand.",
        "",
        "- `qwen2_vl/`, `qwen2_5_vl/`: tiny random checkpoints (mlx-community layout, float32),",
        "  LM hidden 64 / 2 layers / M-RoPE sections [2, 3, 3]; vision width 32, patch 14,",
        "  merge 2 (Qwen2.5-VL: window 56, full attention in blocks 1 and 3).",
        "  `reference.json`: per case `input_ids`, `image_grid_thw`, `logits_last` (float32,",
        "  last prompt position of a full forward) and `greedy_tokens` (20, mlx-vlm",
        "  `generate_step`, argmax, EOS not honoured).",
        "- `qwen2_vl-4bit/`: `mlx_vlm.convert(..., quantize=True, q_group_size=32, q_bits=4)`",
        "  of `qwen2_vl/` (LM 4-bit, vision float), same `reference.json` schema.",
        "- `images/`: test images; `reference.json` + `reference.safetensors`: transformers",
        "  `Qwen2VLImageProcessorPil` outputs (`<case>.rows`: sampled `pixel_values` rows,",
        "  `<case>.resized`: the Pillow-resized uint8 image, `<case>.decoded` for lossy /",
        "  palette formats) and Pillow resizes with every filter (`filter.<name>.<w>x<h>`).",
        "",
        "| image | what |",
        "| --- | --- |",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in files.items()]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
