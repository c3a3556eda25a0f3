#!/usr/bin/env python3
"""Stage-by-stage comparison of mlxrs's Kokoro decoder with the onnxruntime
float32 reference, on the fixed input of crates/mlxrs-audio/tests/kokoro.rs.

    .venv/bin/python scripts/make_kokoro_refs.py --stages /tmp/ref_stages.safetensors
    MLXRS_KOKORO_TRACE=/tmp/mlx_trace.safetensors cargo test -p mlxrs-audio --test kokoro
    .venv/bin/python scripts/compare_kokoro_stages.py /tmp/ref_stages.safetensors /tmp/mlx_trace.safetensors [--swap]

Prints max / mean |diff| per stage and the log10-mel mean |diff| of the audio
(the test's measure). `--swap` runs the reference graph with mlxrs's source
features (`har_feat`) put in place of its own: the mel difference of that run
to mlxrs's audio isolates everything after the features, its difference to the
plain reference everything before them.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def mel_filters(n_mels=80, sr=16000, n_fft=400):
  """mlxrs_audio::mel::mel_filters (Slaney, librosa's / Whisper's)."""
  nf = n_fft // 2 + 1
  fftfreqs = np.arange(nf) * sr / n_fft
  f_sp, min_log_hz = 200 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27
  h2m = lambda f: np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-9) / min_log_hz) / logstep, f / f_sp)
  m2h = lambda m: np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)
  freqs = m2h(np.linspace(0, h2m(np.array(sr / 2)), n_mels + 2))
  fdiff = np.diff(freqs)
  ramps = freqs[:, None] - fftfreqs[None, :]
  w = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
  return w * (2.0 / (freqs[2:] - freqs[:-2]))[:, None]


FB = mel_filters()


def log_mel(x):
  """tests/kokoro.rs `log_mel`: 400-sample Hann frames, hop 160, 80 bands, floor 1e-5."""
  x = np.asarray(x, np.float64).ravel()
  xp = np.pad(x, (200, 200), mode="reflect")
  win = np.hanning(401)[:400]
  n = 1 + (len(xp) - 400) // 160
  fr = np.stack([xp[i * 160:i * 160 + 400] * win for i in range(n)])
  return np.log10(np.maximum(FB @ np.abs(np.fft.rfft(fr, axis=1)).T ** 2, 1e-5))


def mel_mad(a, b):
  d = np.abs(log_mel(a) - log_mel(b))
  return float(d.mean()), float(d.max())


def swap_run(har_feat):
  import onnxruntime as ort
  from onnx import helper, TensorProto
  import make_kokoro_refs as R
  model = R.float_rewrite(R.assemble(R.cache_dir(None) / "pypi"))
  tgt = "/decoder/decoder/generator/Concat_3_output_0"
  for n in model.graph.node:
    for i, x in enumerate(n.input):
      if x == tgt:
        n.input[i] = "har_feat_override"
  model.graph.input.append(helper.make_tensor_value_info("har_feat_override", TensorProto.FLOAT, None))
  o = ort.SessionOptions()
  o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  o.log_severity_level = 3
  sess = ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])
  data = ROOT / "crates/mlxrs-audio/tests/data"
  meta = json.loads((data / "kokoro_ref.json").read_text(encoding="utf-8"))
  style = load_file(str(data / "kokoro_ref.safetensors"))["style"]
  return sess.run(None, {
    "tokens": np.array([meta["input_ids"]], np.int64), "style": style,
    "speed": np.array([meta["speed"]], np.float32), "har_feat_override": har_feat.astype(np.float32),
  })[0].ravel()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("ref")
  ap.add_argument("mlx")
  ap.add_argument("--swap", action="store_true")
  a = ap.parse_args()
  r, m = load_file(a.ref), load_file(a.mlx)
  cf = lambda x: np.swapaxes(x, 1, 2) if x.ndim == 3 else x  # mlxrs is channels-last
  for k in ["gen_in", "har", "har_feat", "nconv0", "nres0", "ups0", "stage0", "pad", "nres1", "stage1", "post"]:
    if k not in r or k not in m:
      continue
    x, y = (m[k].ravel(), r[k].ravel()) if k == "har" else (cf(m[k]), r[k])
    d = np.abs(x - y)
    print(f"{k:9s} max |diff| {d.max():.3e}  mean {d.mean():.3e}  (mean |ref| {np.abs(y).mean():.3e})")
  if "har_feat" in m:
    hr, hm = r["har_feat"][0], cf(m["har_feat"])[0]
    nb = hr.shape[0] // 2
    dp = np.abs(hr[nb:] - hm[nb:])
    print("phase |diff| > 1 by bin:", np.round((dp > 1).mean(1), 3).tolist())
  print("audio log10-mel mean |diff| %.4f, max %.3f" % mel_mad(m["audio"], r["audio"]))
  if a.swap:
    sw = swap_run(cf(m["har_feat"]))
    print("reference with mlxrs's har_feat vs mlxrs audio: mean %.2e, max %.3f" % mel_mad(sw, m["audio"]))
    print("reference with mlxrs's har_feat vs reference:   mean %.4f, max %.3f" % mel_mad(sw, r["audio"]))


if __name__ == "__main__":
  main()
