#!/usr/bin/env python3
"""References for the speech-synthesis layers of mlxrs-nn (Lstm, instance_norm1d,
AdaIn1d, AdaLayerNorm, weight_norm, Stft), made with PyTorch on fixed random
inputs. Writes crates/mlxrs-nn/tests/data/tts_nn_refs.safetensors.

    .venv/bin/python scripts/make_tts_nn_refs.py
"""
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/mlxrs-nn/tests/data/tts_nn_refs.safetensors"
torch.manual_seed(0)
A = {}

# Bidirectional LSTM, batch_first (torch gate order i, f, g, o).
lstm = torch.nn.LSTM(6, 4, batch_first=True, bidirectional=True)
x = torch.randn(2, 5, 6)
with torch.no_grad():
  y, _ = lstm(x)
A["lstm.x"] = x
A["lstm.y"] = y
for k, v in lstm.state_dict().items():
  A["lstm." + k] = v

# InstanceNorm1d (affine=False), AdaIN1d, AdaLayerNorm (StyleTTS2 formulas).
x = torch.randn(2, 8, 7)
s = torch.randn(2, 3)
fc = torch.nn.Linear(3, 16)
A["in.x"] = x
A["in.y"] = torch.nn.InstanceNorm1d(8, affine=False)(x)
A["adain.s"] = s
A["adain.fc.weight"] = fc.weight.detach()
A["adain.fc.bias"] = fc.bias.detach()
with torch.no_grad():
  h = fc(s).view(2, 16, 1)
  gamma, beta = torch.chunk(h, 2, dim=1)
  A["adain.y"] = (1 + gamma) * F.instance_norm(x, eps=1e-5) + beta
  xt = torch.randn(2, 7, 8)
  A["adaln.x"] = xt
  h = fc(s).view(2, 16, 1)
  gamma, beta = torch.chunk(h, 2, dim=1)
  gamma, beta = gamma.transpose(1, 2), beta.transpose(1, 2)
  A["adaln.y"] = (1 + gamma) * F.layer_norm(xt, (8,), eps=1e-5) + beta

# weight_norm on a Conv1d: weight = g * v / ||v|| (dim 0).
conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(4, 5, 3))
with torch.no_grad():
  conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)
  conv(torch.randn(1, 4, 3))  # recompute .weight
A["wn.g"] = conv.weight_g.detach()
A["wn.v"] = conv.weight_v.detach()
A["wn.w"] = conv.weight.detach()

# STFT magnitude / phase and the inverse (Kokoro's TorchSTFT: n_fft 20, hop 5, periodic hann).
x = torch.randn(2, 200)
win = torch.hann_window(20)
X = torch.stft(x, 20, 5, 20, window=win, return_complex=True, center=True, pad_mode="reflect")
A["stft.x"] = x
A["stft.mag"] = X.abs()
A["stft.phase"] = torch.angle(X)
mag = torch.rand(2, 11, 30) + 0.1
ph = (torch.rand(2, 11, 30) - 0.5) * 6.0
A["istft.mag"] = mag
A["istft.phase"] = ph
A["istft.y"] = torch.istft(mag * torch.exp(ph * 1j), 20, 5, 20, window=win, center=True)

OUT.parent.mkdir(parents=True, exist_ok=True)
save_file({k: v.contiguous().float() for k, v in A.items()}, str(OUT))
print("wrote", OUT, len(A), "arrays")
