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
5. ``llava/``: a tiny LLaVA-1.5-layout checkpoint (CLIP tower, projector,
   llama LM; mlx-vlm's ``llava.Model``), the tokenizer above plus
   ``<image>``, transformers ``CLIPImageProcessor`` settings (shortest edge
   56, center crop 56), its ``reference.json`` and
   ``pixel_values.safetensors`` (mlx-vlm's pixel values per case, asserted
   equal to the transformers processor's). ``--only llava`` remakes just it.
6. ``paligemma/``: a tiny PaliGemma (SigLIP, linear projector, Gemma;
   mlx-vlm's ``paligemma.Model``), one image per case (mlx-vlm takes no
   more); reference logits through mlx-vlm's generation path (merged
   embeddings, language model without a mask). ``--only paligemma``.
7. ``gemma3/``: a tiny Gemma 3 (SigLIP, avg-pool projector, Gemma 3 text
   with a sliding-window layer; mlx-vlm's ``gemma3.Model``) with a
   Gemma-3-style chat template; reference logits through mlx-vlm's
   generation path (causal). ``--only gemma3``.
8. ``llava_next/``: a tiny LLaVA-NeXT (mlx-vlm's ``llava_next.Model``);
   ids / pixels from mlx-vlm's processor (checked against transformers'
   ``LlavaNextProcessor`` / ``LlavaNextImageProcessorPil``), logits and
   greedy tokens from transformers' ``LlavaNextForConditionalGeneration``
   on the same weights (mlx-vlm's model packs features differently).
   ``--only llava_next``.
9. ``idefics3/``, ``smolvlm/``: tiny Idefics3 / SmolVLM (mlx-vlm's
   ``idefics3.Model``), references from mlx-vlm's processor and generation
   path, pixels checked against transformers' processors.
   ``--only idefics3`` / ``--only smolvlm``.
10. ``qwen2_vl-4bit/``: ``mlx_vlm.convert(quantize=True, q_group_size=32,
   q_bits=4)`` of ``qwen2_vl/`` (language model 4-bit, vision tower float as
   mlx-vlm leaves it), with its own ``reference.json``.

11. ``--chat``: ``ARCH/chat_reference.json`` for qwen2_vl, qwen2_5_vl and
   llava: mlx-vlm on a 3-turn conversation (image; text; a new image),
   ``apply_chat_template`` with the whole message list, greedy replies
   (``CHAT_TURNS``, ``CHAT_MAX_TOKENS``), replayed by
   crates/mlxrs-vlm/tests/chat.rs and tests/cli.rs.

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


def build_tokenizer(extra=()) -> Tokenizer:
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
            for t in list(SPECIAL_TOKENS) + list(extra)
        ]
    )
    assert tok.get_vocab_size() == VOCAB_SIZE + len(extra)
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


def model_reference(out: Path, arch: str, check_only=False, model_cases=None, pixel_file=None) -> dict:
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.models import cache as vcache
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    folder = out / arch
    model, processor = load(str(folder))
    if arch == "llava":
        # mlx-vlm 0.7.10's LlavaProcessor forwards the tokenizer kwargs
        # (padding, add_special_tokens) to the image processor, which
        # transformers 5 refuses: call it with the image kwargs only.
        ip = processor.image_processor
        ip.preprocess = lambda images, *a, **kw: type(ip).preprocess(ip, images, return_tensors="np")
    config = json.loads((folder / "config.json").read_text())
    cases = []
    min_margin = 1e9
    distinct = 1e9
    pixel_tensors = {}
    for name, prompt, files in model_cases or MODEL_CASES:
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
        if hasattr(model.language_model, "_rope_deltas"):
            model.language_model._position_ids = None
            model.language_model._rope_deltas = None
        cache = vcache.make_prompt_cache(model.language_model)
        if arch == "llava":  # its __call__ takes the mask positionally
            out_ = model(input_ids, pixel_values, None, cache=cache)
        elif arch in ("paligemma", "gemma3"):
            # What generate_step runs: the merged embeddings through the
            # language model without a mask (PaliGemma's prompt attends
            # bidirectionally, use_bidirectional_attention defaults to True).
            emb = model.get_input_embeddings(input_ids, pixel_values, mask=inputs["attention_mask"])
            out_ = model.language_model(input_ids, inputs_embeds=emb.inputs_embeds, cache=cache)
        else:
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
            if pixel_file is not None:
                # transformers' image processor (what mlx-vlm's processor wraps)
                proc_pv = processor.image_processor(
                    [Image.open(p).convert("RGB") for p in images], return_tensors="np"
                )["pixel_values"]
                assert np.abs(proc_pv - pv).max() == 0, name
                pixel_tensors[name] = np.ascontiguousarray(pv)
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
    if pixel_file is not None:
        from safetensors.numpy import save_file

        save_file(pixel_tensors, str(pixel_file))
    return {"cases": cases, "min_margin": min_margin, "min_distinct": distinct}



# --------------------------------------------------------------------------
# LLaVA (llava-1.5 layout: CLIP vision tower, 2-layer projector, llama LM)
# --------------------------------------------------------------------------

LLAVA_TEMPLATE = (
    # System content as list-of-parts too (what mlx-vlm passes, as
    # llava-hf's own template expects).
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '\\n' }}"
    "{% else %}{{ message['role'] | upper }}: {% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
LLAVA_IMAGE = 56  # CLIP image_size: 4x4 patches of 14 -> 16 image tokens
LLAVA_PREPROCESSOR = {
    "crop_size": {"height": LLAVA_IMAGE, "width": LLAVA_IMAGE},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": LLAVA_IMAGE},
}
LLAVA_SALT = 4


def llava_config(ids: dict) -> dict:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": ids["<image>"],
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "vocab_size": VOCAB_SIZE + 1,
        "eos_token_id": ids["<|im_end|>"],
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "vocab_size": VOCAB_SIZE + 1,
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "image_size": LLAVA_IMAGE,
            "patch_size": 14,
            "projection_dim": 32,
            "num_channels": 3,
            "layer_norm_eps": 1e-5,
        },
    }


def make_llava(out: Path, search_salt=False) -> dict:
    salt = LLAVA_SALT
    while True:
        ref = make_llava_once(out, salt)
        ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
        print(f"llava salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        if ok or not search_salt:
            break
        salt += 1
    return ref


def make_llava_once(out: Path, salt: int) -> dict:
    from mlx_vlm.utils import get_model_and_args, save_config, save_weights, update_module_configs

    tok = build_tokenizer(extra=["<image>"])
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + ["<image>"]}
    folder = out / "llava"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = llava_config(ids)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    model = model_class.Model(model_config)
    init_params(model, "llava", salt, False)
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    specials = SPECIAL_TOKENS + ["<image>"]
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in specials},
            "bos_token": None,
            "chat_template": LLAVA_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    write_json(folder / "chat_template.json", {"chat_template": LLAVA_TEMPLATE})
    write_json(folder / "preprocessor_config.json", LLAVA_PREPROCESSOR)
    write_json(
        folder / "processor_config.json",
        {
            "image_token": "<image>",
            "num_additional_image_tokens": 1,
            "patch_size": 14,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": "default",
        },
    )
    write_json(folder / "generation_config.json", {"eos_token_id": ids["<|im_end|>"]})
    ref = model_reference(out, "llava", pixel_file=folder / "pixel_values.safetensors")
    (folder / "pixel_values.safetensors").chmod(0o644)
    ref["salt"] = salt
    ref["versions"] = {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__}
    write_json(folder / "reference.json", ref, indent=1)
    return ref


# --------------------------------------------------------------------------
# LLaVA-NeXT (CLIP tower, any-resolution tiling, image_newline, llama LM)
# --------------------------------------------------------------------------

LNEXT_IMAGE = 42  # CLIP image_size: 3x3 patches of 14 -> 9 features per tile
LNEXT_PINPOINTS = [[42, 84], [84, 42], [84, 84], [126, 42], [42, 126]]
LNEXT_PREPROCESSOR = {
    "crop_size": {"height": LNEXT_IMAGE, "width": LNEXT_IMAGE},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_grid_pinpoints": LNEXT_PINPOINTS,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "LlavaNextImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "processor_class": "LlavaNextProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": LNEXT_IMAGE},
}
LNEXT_SALT = 15
# Images whose pixel values are checked against transformers' processor
# (beyond the model cases): odd size, 1x1, very wide, downscale, RGBA,
# grayscale, tall.
LNEXT_PIXEL_CASES = [
    "odd_37x53.png",
    "pixel_1x1.png",
    "wide_900x20.png",
    "big_300x200.png",
    "rgba_45x30.png",
    "gray_33x47.png",
    "scene_c_84x140.png",
]


LNEXT_CASES = [
    ("image", "Describe this image.", ["scene_a_64x48.png"]),
    ("tall_image", "Describe this image.", ["scene_c_84x140.png"]),
    ("two_images", "Compare these two pictures.", ["scene_b_90x60.png", "wide_900x20.png"]),
    ("text", "What is the capital of France?", []),
]


def llava_next_config(ids: dict) -> dict:
    cfg = llava_config(ids)
    cfg["architectures"] = ["LlavaNextForConditionalGeneration"]
    cfg["model_type"] = "llava_next"
    cfg["image_grid_pinpoints"] = LNEXT_PINPOINTS
    cfg["vision_config"]["image_size"] = LNEXT_IMAGE
    return cfg


def torch_llava_next(folder: Path):
    """transformers' LlavaNextForConditionalGeneration (float32, CPU) with
    the weights mlx-vlm saved (mlx-vlm names and conv layout mapped)."""
    import torch
    from safetensors.numpy import load_file
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    cfg = json.loads((folder / "config.json").read_text())
    hf_cfg = LlavaNextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "eager"
    model = LlavaNextForConditionalGeneration(hf_cfg).eval().float()
    sd = {}
    for k, v in load_file(str(folder / "model.safetensors")).items():
        if k.endswith("patch_embedding.weight"):
            v = v.transpose(0, 3, 1, 2)
        for a, b in [
            ("vision_tower.vision_model.", "model.vision_tower."),
            ("language_model.model.", "model.language_model."),
            ("language_model.lm_head.", "lm_head."),
            ("multi_modal_projector.", "model.multi_modal_projector."),
            ("image_newline", "model.image_newline"),
        ]:
            if k.startswith(a):
                k = b + k[len(a) :]
                break
        sd[k] = torch.from_numpy(np.ascontiguousarray(v))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    assert not missing and not unexpected, (missing, unexpected)
    return model


def make_llava_next(out: Path, search_salt=False) -> dict:
    salt = LNEXT_SALT
    while True:
        ref = make_llava_next_once(out, salt)
        ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
        print(f"llava_next salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        if ok or not search_salt:
            break
        salt += 1
    return ref


def make_llava_next_once(out: Path, salt: int) -> dict:
    """A tiny LLaVA-NeXT made by mlx-vlm's ``llava_next.Model`` (real folder
    layout). Prompt ids and pixel values: mlx-vlm's processor, checked equal
    to transformers' ``LlavaNextProcessor`` / ``LlavaNextImageProcessorPil``.
    Logits and greedy tokens: transformers' ``LlavaNextForConditionalGeneration``
    on the same weights, because mlx-vlm 0.7.10's ``llava_next.Model`` does
    not pack features as transformers does (no unpadding / spatial layout,
    the newline broadcast to whole tiles, only the first image used): its
    logits are recorded as ``mlx_vlm_logits_max_diff`` for information."""
    import torch
    from mlx_vlm.generate.ar import generate_step  # noqa: F401
    from mlx_vlm.models import cache as vcache
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import get_model_and_args, load, prepare_inputs, save_config, save_weights, update_module_configs
    from safetensors.numpy import save_file
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = build_tokenizer(extra=["<image>"])
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS + ["<image>"]}
    folder = out / "llava_next"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = llava_next_config(ids)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    model = model_class.Model(model_config)
    init_params(model, "llava_next", salt, False)
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    specials = SPECIAL_TOKENS + ["<image>"]
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in specials},
            "bos_token": None,
            "chat_template": LLAVA_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    write_json(folder / "chat_template.json", {"chat_template": LLAVA_TEMPLATE})
    write_json(folder / "preprocessor_config.json", LNEXT_PREPROCESSOR)
    proc_cfg = {
        "image_token": "<image>",
        "num_additional_image_tokens": 1,
        "patch_size": 14,
        "processor_class": "LlavaNextProcessor",
        "vision_feature_select_strategy": "default",
    }
    write_json(folder / "processor_config.json", proc_cfg)
    write_json(folder / "generation_config.json", {"eos_token_id": ids["<|im_end|>"]})

    vmodel, processor = load(str(folder))
    hf_ip = LlavaNextImageProcessorPil(**{k: v for k, v in LNEXT_PREPROCESSOR.items() if k not in ("image_processor_type", "processor_class")})
    hf_proc = LlavaNextProcessor(
        image_processor=hf_ip,
        tokenizer=processor.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    tmodel = torch_llava_next(folder)
    pixel_tensors = {}

    def hf_pixels(files):
        imgs = [Image.open(out / "images" / f).convert("RGB") for f in files]
        r = hf_ip(imgs, return_tensors="np")
        sizes = np.array(r["image_sizes"]).tolist()
        n_patches = [
            transformers.models.llava_next.modeling_llava_next.image_size_to_num_patches(s, LNEXT_PINPOINTS, LNEXT_IMAGE)
            for s in sizes
        ]
        flat = np.concatenate([pv[:n] for pv, n in zip(r["pixel_values"], n_patches)], axis=0)
        return r, flat.astype(np.float32), sizes

    pixel_cases = []
    for f in LNEXT_PIXEL_CASES:
        _, flat, sizes = hf_pixels([f])
        pixel_tensors["img." + f] = np.ascontiguousarray(flat)
        pixel_cases.append({"image": f, "image_sizes": sizes, "shape": list(flat.shape)})

    cases = []
    min_margin = 1e9
    distinct = 1e9
    for name, prompt, files in LNEXT_CASES:
        images = [str(out / "images" / f) for f in files]
        if len(images) > 1:
            # mlx-vlm 0.7.10 refuses several images for llava_next: the
            # chat template (mlx-vlm's message format: text, then images)
            # and transformers' LlavaNextProcessor only.
            msg = [{"role": "user", "content": [{"type": "text", "text": prompt, "content": prompt}] + [{"type": "image"}] * len(images)}]
            text = processor.tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
            inputs = None
        else:
            text = apply_chat_template(processor, config, prompt, num_images=len(images))
            inputs = prepare_inputs(processor, images=images or None, prompts=[text], add_special_tokens=False)
        hf = hf_proc(
            text=[text], images=[Image.open(p).convert("RGB") for p in images] or None, return_tensors="pt"
        )
        input_ids = hf["input_ids"][0].tolist()
        if inputs is not None:
            assert np.array(inputs["input_ids"])[0].tolist() == input_ids, name
        kw = {}
        sizes = []
        if images:
            r, flat, sizes = hf_pixels(files)
            if inputs is not None:
                mpv = np.array(inputs["pixel_values"].astype(mx.float32))
                assert np.abs(mpv - r["pixel_values"]).max() == 0, name
            pixel_tensors[name] = np.ascontiguousarray(flat)
            kw = {"pixel_values": hf["pixel_values"].float(), "image_sizes": hf["image_sizes"]}
        with torch.no_grad():
            ids_t = torch.tensor([input_ids])
            o = tmodel(input_ids=ids_t, use_cache=True, **kw)
            last = o.logits[0, -1].float().numpy()
            # Decode with the KV cache (generated tokens are text, even an
            # <image> id, as in generation loops).
            cache = o.past_key_values
            tokens, margins = [], []
            lg = torch.from_numpy(last)
            for _ in range(N_GREEDY):
                srt = np.sort(lg.numpy())
                margins.append(float(srt[-1] - srt[-2]))
                t = int(lg.argmax())
                tokens.append(t)
                o = tmodel(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
                cache = o.past_key_values
                lg = o.logits[0, -1].float()
        # mlx-vlm's own forward, for information only (see the docstring).
        mlx_diff = None
        try:
            if inputs is None:
                raise ValueError("several images")
            cache = vcache.make_prompt_cache(vmodel.language_model)
            o = vmodel(mx.array([input_ids]), inputs.get("pixel_values"), None, cache=cache)
            lo = o.logits if hasattr(o, "logits") else o
            mlx_diff = float(np.abs(np.array(lo[0, -1].astype(mx.float32)) - last).max())
        except Exception as e:  # noqa: BLE001
            mlx_diff = f"error: {type(e).__name__}"
        min_margin = min(min_margin, min(margins))
        distinct = min(distinct, len(set(tokens)))
        cases.append(
            {
                "name": name,
                "prompt": prompt,
                "images": files,
                "prompt_text": text,
                "input_ids": input_ids,
                "image_grid_thw": [],
                "image_sizes": sizes,
                "pixel_values": {"shape": list(pixel_tensors[name].shape), "sum": float(pixel_tensors[name].astype(np.float64).sum())} if images else None,
                "logits_last": [float(v) for v in last],
                "greedy_tokens": tokens,
                "min_greedy_margin": min(margins),
                "mlx_vlm_logits_max_diff": mlx_diff,
            }
        )
    save_file(pixel_tensors, str(folder / "pixel_values.safetensors"))
    (folder / "pixel_values.safetensors").chmod(0o644)
    ref = {
        "cases": cases,
        "pixel_cases": pixel_cases,
        "min_margin": min_margin,
        "min_distinct": distinct,
        "salt": salt,
        "reference": "transformers LlavaNextForConditionalGeneration (torch float32, eager attention)",
        "versions": {
            "mlx": mx.__version__,
            "mlx_vlm": mlx_vlm.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "pillow": PIL.__version__,
        },
    }
    write_json(folder / "reference.json", ref, indent=1)
    return ref


# --------------------------------------------------------------------------
# Idefics3 / SmolVLM (SigLIP-style tower, pixel-shuffle connector, llama LM,
# image splitting into tiles + a global image)
# --------------------------------------------------------------------------

IDF_TILE = 42  # max_image_size.longest_edge = vision image_size
IDF_PATCH = 7  # 6x6 patches per tile (1/6 is inexact: mlx-vlm's bucketed positions)
IDF_SCALE = 2  # pixel shuffle 2 -> 9 image tokens per tile
IDF_SEQ = (IDF_TILE // IDF_PATCH // IDF_SCALE) ** 2
IDF_ROWS = 4
IDF_EXTRA = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, IDF_ROWS + 1) for c in range(1, IDF_ROWS + 1)
]
# SmolVLM's chat template (images are list parts before the text).
IDF_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDF_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_image_splitting": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "max_image_size": {"longest_edge": IDF_TILE},
    "resample": 1,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 2 * IDF_TILE},
}
IDF_SALT = {"idefics3": 30, "smolvlm": 12}
IDF_CASES = [
    ("image", "Describe this image.", ["scene_a_64x48.png"]),
    ("two_images", "Compare these two pictures.", ["scene_b_90x60.png", "wide_900x20.png"]),
    ("small_image", "Describe this image.", ["pixel_1x1.png"]),
    ("text", "What is the capital of France?", []),
]
IDF_PIXEL_CASES = LNEXT_PIXEL_CASES


def idefics3_config(arch: str, ids: dict, vocab: int) -> dict:
    return {
        "architectures": ["Idefics3ForConditionalGeneration" if arch == "idefics3" else "SmolVLMForConditionalGeneration"],
        "model_type": arch,
        "image_token_id": ids["<image>"],
        "scale_factor": IDF_SCALE,
        "vocab_size": vocab,
        "eos_token_id": ids["<end_of_utterance>"],
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "rope_theta": 100000.0,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "idefics3_vision" if arch == "idefics3" else "smolvlm_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IDF_TILE,
            "patch_size": IDF_PATCH,
            "num_channels": 3,
            "layer_norm_eps": 1e-6,
        },
    }


def make_idefics3(out: Path, arch: str, search_salt=False) -> dict:
    salt = IDF_SALT[arch]
    while True:
        ref = make_idefics3_once(out, arch, salt)
        ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
        print(f"{arch} salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        if ok or not search_salt:
            break
        salt += 1
    return ref


def make_idefics3_once(out: Path, arch: str, salt: int) -> dict:
    """A tiny Idefics3 / SmolVLM made by mlx-vlm (``idefics3.Model``; SmolVLM
    is the same class). References: mlx-vlm's processor (ids, pixel values,
    checked equal to transformers' ``Idefics3ImageProcessorPil`` /
    ``SmolVLMImageProcessorPil``) and mlx-vlm's generation path (merged
    embeddings with ``pixel_attention_mask``, causal LM)."""
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.models import cache as vcache
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import get_model_and_args, load, prepare_inputs, save_config, save_weights, update_module_configs
    from safetensors.numpy import save_file

    if arch == "idefics3":
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as HfIp
    else:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as HfIp

    tok = build_tokenizer(extra=IDF_EXTRA)
    specials = SPECIAL_TOKENS + IDF_EXTRA
    ids = {t: tok.token_to_id(t) for t in specials}
    vocab = tok.get_vocab_size()
    folder = out / arch
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = idefics3_config(arch, ids, vocab)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    model = model_class.Model(model_config)
    init_params(model, arch, salt, False)
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in specials},
            "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
            "bos_token": None,
            "chat_template": IDF_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<end_of_utterance>",
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    write_json(folder / "chat_template.json", {"chat_template": IDF_TEMPLATE})
    ip_cfg = dict(IDF_PREPROCESSOR)
    ip_cfg["image_processor_type"] = "Idefics3ImageProcessor" if arch == "idefics3" else "SmolVLMImageProcessor"
    ip_cfg["processor_class"] = "Idefics3Processor" if arch == "idefics3" else "SmolVLMProcessor"
    write_json(folder / "preprocessor_config.json", ip_cfg)
    write_json(
        folder / "processor_config.json",
        {"image_seq_len": IDF_SEQ, "processor_class": ip_cfg["processor_class"]},
    )
    write_json(folder / "generation_config.json", {"eos_token_id": ids["<end_of_utterance>"]})

    vmodel, processor = load(str(folder))
    hf_ip = HfIp(**{k: v for k, v in IDF_PREPROCESSOR.items()})
    pixel_tensors = {}

    def hf_pixels(files):
        imgs = [Image.open(out / "images" / f).convert("RGB") for f in files]
        r = hf_ip([imgs], return_tensors="np", return_row_col_info=True)
        pv = np.array(r["pixel_values"][0]).astype(np.float32)
        assert np.array(r["pixel_attention_mask"]).all()
        return pv, [list(x) for x in zip(r["rows"][0], r["cols"][0])]

    pixel_cases = []
    # SmolVLMImageProcessor is the same code as Idefics3ImageProcessor: the
    # varied-image cases are stored once (idefics3/), the model cases check
    # both.
    for f in IDF_PIXEL_CASES if arch == "idefics3" else []:
        pv, rc = hf_pixels([f])
        pixel_tensors["img." + f] = np.ascontiguousarray(pv)
        pixel_cases.append({"image": f, "rows_cols": rc, "shape": list(pv.shape)})

    cases = []
    min_margin = 1e9
    distinct = 1e9
    for name, prompt, files in IDF_CASES:
        images = [str(out / "images" / f) for f in files]
        text = apply_chat_template(processor, config, prompt, num_images=len(images))
        inputs = prepare_inputs(processor, images=images or None, prompts=[text], add_special_tokens=False)
        input_ids = inputs["input_ids"]
        pixel_values = inputs.get("pixel_values")
        kw = {}
        rc = []
        if pixel_values is not None:
            kw["pixel_attention_mask"] = inputs["pixel_attention_mask"]
            hpv, rc = hf_pixels(files)
            mpv = np.array(pixel_values.astype(mx.float32))[0]
            assert np.abs(mpv - hpv).max() == 0, name
            pixel_tensors[name] = np.ascontiguousarray(hpv)
        cache = vcache.make_prompt_cache(vmodel.language_model)
        o = vmodel(input_ids, pixel_values, cache=cache, **kw)
        lo = o.logits if hasattr(o, "logits") else o
        last = np.array(lo[0, -1].astype(mx.float32))
        tokens, margins = [], []
        for tk, lp in generate_step(
            input_ids, vmodel, pixel_values, inputs.get("attention_mask"), max_tokens=N_GREEDY,
            sampler=lambda x: mx.argmax(x, axis=-1), **kw,
        ):
            tokens.append(int(tk))
            srt = np.sort(np.array(lp.astype(mx.float32)).reshape(-1))
            margins.append(float(srt[-1] - srt[-2]))
        min_margin = min(min_margin, min(margins))
        distinct = min(distinct, len(set(tokens)))
        cases.append(
            {
                "name": name,
                "prompt": prompt,
                "images": files,
                "prompt_text": text,
                "input_ids": np.array(input_ids)[0].tolist(),
                "image_grid_thw": [],
                "rows_cols": rc,
                "pixel_values": {"shape": list(pixel_tensors[name].shape), "sum": float(pixel_tensors[name].astype(np.float64).sum())} if images else None,
                "logits_last": [float(v) for v in last],
                "greedy_tokens": tokens,
                "min_greedy_margin": min(margins),
            }
        )
    save_file(pixel_tensors, str(folder / "pixel_values.safetensors"))
    (folder / "pixel_values.safetensors").chmod(0o644)
    ref = {
        "cases": cases,
        "pixel_cases": pixel_cases,
        "min_margin": min_margin,
        "min_distinct": distinct,
        "salt": salt,
        "versions": {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__, "pillow": PIL.__version__},
    }
    write_json(folder / "reference.json", ref, indent=1)
    return ref


# --------------------------------------------------------------------------
# PaliGemma (SigLIP vision tower, linear projector, Gemma LM)
# --------------------------------------------------------------------------

PALI_IMAGE = 56  # SigLIP image_size: 4x4 patches of 14 -> 16 image tokens
PALI_EXTRA = ["<image>", "<bos>", "<eos>"]
PALI_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_seq_length": 16,
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "PaliGemmaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": PALI_IMAGE, "width": PALI_IMAGE},
}
PALI_SALT = 1
# mlx-vlm's PaliGemma takes exactly one image per prompt (its vision tower
# keeps the first image of a batch) and its processor refuses text only.
PALI_CASES = [
    ("image", "Describe this image.", ["scene_a_64x48.png"]),
    ("image_tall", "What is in this picture?", ["scene_c_84x140.png"]),
]


def paligemma_config(ids: dict) -> dict:
    vocab = VOCAB_SIZE + len(PALI_EXTRA)
    return {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<|endoftext|>"],
        "image_token_index": ids["<image>"],
        "hidden_size": 64,
        "projection_dim": 64,
        "vocab_size": vocab,
        "text_config": {
            "model_type": "gemma",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "vocab_size": vocab,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 4096,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "patch_size": 14,
            "image_size": PALI_IMAGE,
            "projection_dim": 64,
            "num_channels": 3,
            "layer_norm_eps": 1e-6,
        },
    }


def make_paligemma(out: Path, search_salt=False) -> dict:
    salt = PALI_SALT
    while True:
        ref = make_paligemma_once(out, salt)
        ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
        print(f"paligemma salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        if ok or not search_salt:
            break
        salt += 1
    return ref


def make_paligemma_once(out: Path, salt: int) -> dict:
    from mlx_vlm.utils import get_model_and_args, save_config, save_weights, update_module_configs

    tok = build_tokenizer(extra=PALI_EXTRA)
    specials = SPECIAL_TOKENS + PALI_EXTRA
    ids = {t: tok.token_to_id(t) for t in specials}
    folder = out / "paligemma"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = paligemma_config(ids)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    model_config = model_class.ModelConfig.from_dict(cfg)
    model = model_class.Model(model_config)
    init_params(model, "paligemma", salt, True)
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in specials},
            "bos_token": "<bos>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>",
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    write_json(folder / "preprocessor_config.json", PALI_PREPROCESSOR)
    write_json(folder / "processor_config.json", {"image_seq_length": 16, "processor_class": "PaliGemmaProcessor"})
    write_json(folder / "generation_config.json", {"bos_token_id": ids["<bos>"], "eos_token_id": ids["<eos>"]})
    ref = model_reference(out, "paligemma", model_cases=PALI_CASES, pixel_file=folder / "pixel_values.safetensors")
    (folder / "pixel_values.safetensors").chmod(0o644)
    ref["salt"] = salt
    ref["versions"] = {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__}
    write_json(folder / "reference.json", ref, indent=1)
    return ref


# --------------------------------------------------------------------------
# Gemma 3 (SigLIP vision tower, avg-pool + RMSNorm projector, Gemma 3 text)
# --------------------------------------------------------------------------

G3_IMAGE = 56  # 4x4 patches of 14, pooled 2x2 -> 4 image tokens
G3_EXTRA = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
G3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
G3_PREPROCESSOR = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pan_and_scan": False,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "Gemma3ImageProcessor",
    "image_seq_length": 4,
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Gemma3Processor",
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": G3_IMAGE, "width": G3_IMAGE},
}
G3_SALT = 1


def gemma3_config(ids: dict) -> dict:
    vocab = VOCAB_SIZE + len(G3_EXTRA)
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "image_token_index": ids["<image_soft_token>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "mm_tokens_per_image": 4,
        "text_config": {
            "model_type": "gemma3_text",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": vocab,
            "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 16,
            "sliding_window": 8,
            "sliding_window_pattern": 2,
            "rope_global_base_freq": 1000000.0,
            "rope_local_base_freq": 10000.0,
            "mm_tokens_per_image": 4,
            "max_position_embeddings": 4096,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "num_hidden_layers": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "patch_size": 14,
            "image_size": G3_IMAGE,
            "num_channels": 3,
            "layer_norm_eps": 1e-6,
        },
    }


def make_gemma3(out: Path, search_salt=False) -> dict:
    salt = G3_SALT
    while True:
        ref = make_gemma3_once(out, salt)
        ok = ref["min_margin"] >= 0.03 and ref["min_distinct"] >= 5
        print(f"gemma3 salt {salt}: min margin {ref['min_margin']:.4f}, min distinct {ref['min_distinct']}", file=sys.stderr)
        if ok or not search_salt:
            break
        salt += 1
    return ref


def make_gemma3_once(out: Path, salt: int) -> dict:
    from mlx_vlm.utils import get_model_and_args, save_config, save_weights, update_module_configs

    tok = build_tokenizer(extra=G3_EXTRA)
    specials = SPECIAL_TOKENS + G3_EXTRA
    ids = {t: tok.token_to_id(t) for t in specials}
    folder = out / "gemma3"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = gemma3_config(ids)
    model_class, _ = get_model_and_args(config=json.loads(json.dumps(config)))
    cfg = json.loads(json.dumps(config))
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    model = model_class.Model(model_config)
    init_params(model, "gemma3", salt, True)
    save_weights(folder, model)
    save_config(json.loads(json.dumps(config)), folder / "config.json")
    (folder / "tokenizer.json").write_text(tok.to_str(pretty=False), encoding="utf-8")
    write_json(
        folder / "tokenizer_config.json",
        {
            "added_tokens_decoder": {str(ids[t]): added_token_entry(t) for t in specials},
            "bos_token": "<bos>",
            "chat_template": G3_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>",
            "extra_special_tokens": {
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
            "model_max_length": 4096,
            "pad_token": "<|endoftext|>",
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": None,
        },
    )
    write_json(folder / "chat_template.json", {"chat_template": G3_TEMPLATE})
    write_json(folder / "preprocessor_config.json", G3_PREPROCESSOR)
    write_json(folder / "processor_config.json", {"image_seq_length": 4, "processor_class": "Gemma3Processor"})
    write_json(folder / "generation_config.json", {"bos_token_id": ids["<bos>"], "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]]})
    ref = model_reference(out, "gemma3", pixel_file=folder / "pixel_values.safetensors")
    (folder / "pixel_values.safetensors").chmod(0o644)
    ref["salt"] = salt
    ref["versions"] = {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__}
    write_json(folder / "reference.json", ref, indent=1)
    return ref


# --------------------------------------------------------------------------
# Multi-turn chat references (``--chat``)
# --------------------------------------------------------------------------

# (user text, images attached to that user message): the session
# crates/mlxrs-vlm/tests/chat.rs replays through ``VlmChat``.
CHAT_TURNS = [
    ("Describe this image.", ["scene_a_64x48.png"]),
    ("What colors are in it?", []),
    ("And this one?", ["scene_b_90x60.png"]),
]
CHAT_MAX_TOKENS = 8
CHAT_ARCHS = ["qwen2_vl", "qwen2_5_vl", "llava"]


def chat_reference(out: Path, arch: str) -> dict:
    """mlx-vlm on a growing conversation: ``apply_chat_template`` with the
    whole message list (explicit ``{"type": "image"}`` parts stay on their
    own user turns), ``prepare_inputs`` with every image so far, greedy
    ``generate_step`` from fresh caches; the decoded reply (EOS dropped)
    becomes the next turn's assistant message."""
    from mlx_vlm.generate.ar import generate_step
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load, prepare_inputs

    folder = out / arch
    model, processor = load(str(folder))
    if arch == "llava":  # see model_reference
        ip = processor.image_processor
        ip.preprocess = lambda images, *a, **kw: type(ip).preprocess(ip, images, return_tensors="np")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = processor.tokenizer if hasattr(processor, "tokenizer") else processor
    eos = set(tokenizer.eos_token_id if isinstance(tokenizer.eos_token_id, list) else [tokenizer.eos_token_id])
    gen_cfg = json.loads((folder / "generation_config.json").read_text()) if (folder / "generation_config.json").exists() else {}
    e = gen_cfg.get("eos_token_id")
    if e is not None:
        eos |= set(e if isinstance(e, list) else [e])
    images_first = arch == "qwen2_5_vl"
    messages, images, turns = [], [], []
    for user, files in CHAT_TURNS:
        text_part = {"type": "text", "text": user, "content": user}
        img_parts = [{"type": "image"} for _ in files]
        content = img_parts + [text_part] if images_first else [text_part] + img_parts
        messages.append({"role": "user", "content": content})
        images += [str(out / "images" / f) for f in files]
        text = apply_chat_template(processor, config, messages, num_images=len(images))
        inputs = prepare_inputs(processor, images=images or None, prompts=[text], add_special_tokens=False)
        if hasattr(model.language_model, "_rope_deltas"):
            model.language_model._position_ids = None
            model.language_model._rope_deltas = None
        grid = inputs.get("image_grid_thw")
        extra = {"image_grid_thw": grid} if grid is not None else {}
        tokens = []
        for tok, _ in generate_step(
            inputs["input_ids"],
            model,
            inputs.get("pixel_values"),
            inputs.get("attention_mask"),
            max_tokens=CHAT_MAX_TOKENS,
            sampler=lambda x: mx.argmax(x, axis=-1),
            **extra,
        ):
            tokens.append(int(tok))
            if int(tok) in eos:
                break
        reply = tokenizer.decode([t for t in tokens if t not in eos])
        turns.append(
            {
                "user": user,
                "images": files,
                "prompt_text": text,
                "input_ids": np.array(inputs["input_ids"])[0].tolist(),
                "tokens": tokens,
                "text": reply,
            }
        )
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply, "content": reply}]})
    return {
        "max_tokens": CHAT_MAX_TOKENS,
        "turns": turns,
        "versions": {"mlx": mx.__version__, "mlx_vlm": mlx_vlm.__version__, "transformers": transformers.__version__},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["llava", "llava_next", "idefics3", "smolvlm", "paligemma", "gemma3"], help="only (re)make this family (images must exist)")
    ap.add_argument("--search-salt", action="store_true", help="find salts with robust greedy margins")
    ap.add_argument("--chat", action="store_true", help="only write the multi-turn chat references (ARCH/chat_reference.json)")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    mx.set_default_device(mx.cpu)
    if args.chat:
        for arch in CHAT_ARCHS:
            write_json(out / arch / "chat_reference.json", chat_reference(out, arch), indent=1)
        return
    if args.only == "llava":
        make_llava(out, args.search_salt)
        return
    if args.only == "llava_next":
        make_llava_next(out, args.search_salt)
        return
    if args.only in ("idefics3", "smolvlm"):
        make_idefics3(out, args.only, args.search_salt)
        return
    if args.only == "paligemma":
        make_paligemma(out, args.search_salt)
        return
    if args.only == "gemma3":
        make_gemma3(out, args.search_salt)
        return
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
    make_llava(out, args.search_salt)
    make_llava_next(out, args.search_salt)
    make_idefics3(out, "idefics3", args.search_salt)
    make_idefics3(out, "smolvlm", args.search_salt)
    make_paligemma(out, args.search_salt)
    make_gemma3(out, args.search_salt)
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
        "- `llava/`: tiny random LLaVA-1.5-layout checkpoint (CLIP vision width 32, 2 layers,",
        "  image 56 / patch 14 -> 16 image tokens, feature layer -2; projector; llama LM hidden 64",
        "  / 2 layers), tokenizer = the one above plus `<image>`. `reference.json` as above (no",
        "  grids); `pixel_values.safetensors`: mlx-vlm's `pixel_values` per case (checked equal to",
        "  transformers' `CLIPImageProcessor`).",
        "- `paligemma/`: tiny random PaliGemma (SigLIP width 32, 2 layers, image 56 / patch 14 ->",
        "  16 image tokens; linear projector; Gemma hidden 64 / 2 layers / 1 KV head), tokenizer =",
        "  the one above plus `<image>`, `<bos>`, `<eos>`; one image per case; same files as `llava/`",
        "  (pixel values checked equal to transformers' `SiglipImageProcessor`).",
        "- `gemma3/`: tiny random Gemma 3 (SigLIP width 32, image 56 / patch 14 pooled 2x2 -> 4",
        "  image tokens; Gemma 3 text hidden 64, a sliding layer (window 8) and a global one),",
        "  tokenizer = the one above plus Gemma 3's specials; same files as `llava/`.",
        "- `llava_next/`: tiny random LLaVA-NeXT (the LLaVA layout, CLIP image 42 / patch 14 ->",
        "  3x3 features per tile, pinpoints 42x84 .. 42x126, `image_newline`); `reference.json`:",
        "  ids / `image_sizes` from mlx-vlm's processor (== transformers' `LlavaNextProcessor`),",
        "  logits and greedy tokens from transformers' `LlavaNextForConditionalGeneration`",
        "  (float32), `pixel_cases` + `pixel_values.safetensors` (`<case>` / `img.<file>`: all",
        "  tiles stacked, from `LlavaNextImageProcessorPil`).",
        "- `idefics3/`, `smolvlm/`: tiny random Idefics3 / SmolVLM (SigLIP-style width 32, tile 42",
        "  / patch 7, pixel shuffle 2 -> 9 tokens per frame, size 84 -> up to 2x2 tiles + global;",
        "  llama LM hidden 64), tokenizer = the one above plus `<image>`,",
        "  `<fake_token_around_image>`, `<global-img>`, `<end_of_utterance>`, `<row_r_col_c>`;",
        "  `reference.json` (mlx-vlm, with `rows_cols`), pixel values from transformers'",
        "  `Idefics3ImageProcessorPil` / `SmolVLMImageProcessorPil` (varied images in idefics3/ only).",
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
