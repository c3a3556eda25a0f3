#!/usr/bin/env python3
"""Reference data for mlxrs's GGUF block dequantizers
(crates/mlxrs-core/src/io/gguf_blocks.rs), independent of mlxrs and MLX:
the `gguf` PyPI package writes and dequantizes (`gguf.quants`).

Writes crates/mlxrs-core/tests/data/gguf/quants.gguf with one [rows, cols]
tensor per block type:
- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: normal random weights quantized by gguf-py;
- Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (gguf-py cannot quantize
  these): random bytes with small finite float16 (super-)block scales (every
  bit pattern of the packed integers and sub-block scales is valid);
- an F16 and a BF16 tensor;
and quants_ref.safetensors with gguf-py's float32 dequantization of each
(`<type>`), which mlxrs must reproduce bit for bit.

Usage: .venv/bin/python scripts/make_gguf_quant_refs.py
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/mlxrs-core/tests/data/gguf"

QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
RANDOM_BLOCKS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_NL, Q.IQ4_XS]
# Byte offsets of the float16 (super-)block scale(s) in each block.
F16_SLOTS = {
    Q.Q2_K: [80, 82],
    Q.Q3_K: [108],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
    Q.IQ4_NL: [0],
    Q.IQ4_XS: [0],
}


def main():
    rng = np.random.default_rng(16)
    path = OUT / "quants.gguf"
    w = gguf.GGUFWriter(path, "llama")
    ref = {}
    rows, cols = 3, 512
    for qt in QUANTIZABLE:
        x = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        data = gguf.quants.quantize(x, qt)
        w.add_tensor(qt.name.lower(), data, raw_dtype=qt)
        ref[qt.name.lower()] = gguf.quants.dequantize(data, qt).reshape(rows, cols).astype(np.float32)
    for qt in RANDOM_BLOCKS:
        block, size = gguf.GGML_QUANT_SIZES[qt]
        nb = rows * cols // block
        data = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
        for b in range(nb):
            for j, at in enumerate(F16_SLOTS[qt]):
                v = np.array([0.0005 * (1 + (b * 7 + j * 5) % 11)], dtype=np.float16)
                data[b, at : at + 2] = v.view(np.uint8)
        data = data.reshape(rows, -1)
        w.add_tensor(qt.name.lower(), data, raw_dtype=qt)
        ref[qt.name.lower()] = gguf.quants.dequantize(data, qt).reshape(rows, cols).astype(np.float32)
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    w.add_tensor("f16", x.astype(np.float16))
    ref["f16"] = x.astype(np.float16).astype(np.float32)
    bf = gguf.quants.quantize(x, Q.BF16)
    w.add_tensor("bf16", bf, raw_dtype=Q.BF16)
    ref["bf16"] = gguf.quants.dequantize(bf, Q.BF16).reshape(rows, 64).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(ref, str(OUT / "quants_ref.safetensors"))
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
