//! Adapters on a loaded model (python `mlx_lm.tuner.utils`:
//! `linear_to_lora_layers`, `load_adapters`; `mlx_lm.fuse`), in mlx-lm's
//! files: `adapter_config.json` + `adapters.safetensors` with
//! `<layer>.lora_a` `[in, r]`, `<layer>.lora_b` `[r, out]` and DoRA's
//! `<layer>.m` `[out]`.
//!
//! Models are adapted without changing them: every `Linear` takes an
//! adapter from the weights it loads (see [`mlxrs_nn::LinearAdapter`]), so
//! attaching, updating or removing adapters is a reload of the model's own
//! parameters plus the adapter tensors ([`reload`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{AdapterSettings, QuantConfig, Weights};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::LanguageModel;

fn bad(msg: String) -> Error {
  Error::InvalidArgument(msg)
}

/// Fine-tuning kind (mlx-lm `--fine-tune-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FineTuneType {
  /// Low-rank adapters.
  Lora,
  /// Weight-decomposed low-rank adapters.
  Dora,
  /// Train the last `num_layers` layers' own weights.
  Full,
}

impl FineTuneType {
  /// Parse `lora` / `dora` / `full`.
  pub fn parse(s: &str) -> Result<FineTuneType> {
    match s {
      "lora" => Ok(FineTuneType::Lora),
      "dora" => Ok(FineTuneType::Dora),
      "full" => Ok(FineTuneType::Full),
      o => Err(bad(format!(
        "unknown fine-tune type {o:?} (expected lora, dora or full)"
      ))),
    }
  }

  /// The mlx-lm name.
  pub fn name(self) -> &'static str {
    match self {
      FineTuneType::Lora => "lora",
      FineTuneType::Dora => "dora",
      FineTuneType::Full => "full",
    }
  }
}

/// mlx-lm's `lora_parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraParameters {
  /// Adapter rank (default 8).
  pub rank: i32,
  /// Update scale (default 20).
  pub scale: f32,
  /// Dropout on the adapter input (default 0).
  pub dropout: f32,
  /// Layer-relative module paths to adapt (`self_attn.q_proj`); `None`:
  /// every linear layer of the adapted blocks.
  pub keys: Option<Vec<String>>,
}

impl Default for LoraParameters {
  fn default() -> Self {
    LoraParameters {
      rank: 8,
      scale: 20.0,
      dropout: 0.0,
      keys: None,
    }
  }
}

impl LoraParameters {
  /// Read from a `lora_parameters` JSON object (missing fields keep the
  /// defaults; mlx-lm requires `scale` and refuses `alpha`).
  pub fn from_json(v: &Value) -> Result<LoraParameters> {
    let mut p = LoraParameters::default();
    let o = v
      .as_object()
      .ok_or_else(|| bad("lora_parameters must be an object".into()))?;
    if o.contains_key("alpha") && !o.contains_key("scale") {
      return Err(bad(
        "lora_parameters has 'alpha' but no 'scale': mlx-lm's LoRA config uses 'scale'".into(),
      ));
    }
    if let Some(r) = o.get("rank") {
      p.rank = r
        .as_i64()
        .filter(|r| *r > 0 && *r < 1 << 20)
        .ok_or_else(|| {
          bad(format!(
            "lora_parameters.rank must be a positive integer, got {r}"
          ))
        })? as i32;
    }
    if let Some(s) = o.get("scale") {
      p.scale = s
        .as_f64()
        .ok_or_else(|| bad(format!("lora_parameters.scale must be a number, got {s}")))?
        as f32;
    }
    if let Some(d) = o.get("dropout") {
      p.dropout = d
        .as_f64()
        .filter(|d| (0.0..1.0).contains(d))
        .ok_or_else(|| {
          bad(format!(
            "lora_parameters.dropout must be in [0, 1), got {d}"
          ))
        })? as f32;
    }
    if let Some(k) = o.get("keys").filter(|k| !k.is_null()) {
      let keys = k
        .as_array()
        .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
        .ok_or_else(|| bad("lora_parameters.keys must be a list of strings".into()))?;
      p.keys = Some(keys);
    }
    Ok(p)
  }

  /// As mlx-lm writes it.
  pub fn to_json(&self) -> Value {
    // f32 -> shortest decimal (0.1, not 0.10000000149011612).
    let num = |x: f32| format!("{x}").parse::<f64>().unwrap_or(x as f64);
    let mut v = json!({"rank": self.rank, "scale": num(self.scale), "dropout": num(self.dropout)});
    if let Some(k) = &self.keys {
      v["keys"] = json!(k);
    }
    v
  }
}

/// The parts of `adapter_config.json` needed to rebuild the adapted model.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
  /// `fine_tune_type` (default `lora`).
  pub fine_tune_type: FineTuneType,
  /// `num_layers`: how many of the last blocks are adapted.
  pub num_layers: i32,
  /// `lora_parameters` (unused for `full`).
  pub lora: LoraParameters,
}

impl AdapterConfig {
  /// Read `dir/adapter_config.json`.
  pub fn read(dir: &Path) -> Result<AdapterConfig> {
    let p = dir.join("adapter_config.json");
    let text =
      std::fs::read_to_string(&p).map_err(|e| bad(format!("cannot read {}: {e}", p.display())))?;
    let v: Value = serde_json::from_str(&text)
      .map_err(|e| bad(format!("{}: invalid JSON: {e}", p.display())))?;
    let ft = FineTuneType::parse(
      v.get("fine_tune_type")
        .and_then(Value::as_str)
        .unwrap_or("lora"),
    )?;
    let num_layers = v
      .get("num_layers")
      .and_then(Value::as_i64)
      .ok_or_else(|| bad(format!("{}: missing integer \"num_layers\"", p.display())))?
      as i32;
    let lora = match v.get("lora_parameters").filter(|l| !l.is_null()) {
      Some(l) => LoraParameters::from_json(l)?,
      None if ft == FineTuneType::Full => LoraParameters::default(),
      None => return Err(bad(format!("{}: missing \"lora_parameters\"", p.display()))),
    };
    Ok(AdapterConfig {
      fine_tune_type: ft,
      num_layers,
      lora,
    })
  }
}

/// Write `bytes` to `path` atomically ([`mlxrs_core::atomic::atomic_write`]:
/// a temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
  Ok(mlxrs_core::atomic::atomic_write(path, bytes)?)
}

/// Save tensors as safetensors atomically (python `mx.save_safetensors`;
/// [`mlxrs_core::io::save_safetensors`] writes through
/// [`mlxrs_core::atomic`]).
pub fn save_safetensors_atomic(path: &Path, arrays: &HashMap<String, Array>) -> Result<()> {
  let mut meta = HashMap::new();
  meta.insert("format".to_string(), "mlx".to_string());
  Ok(mlxrs_core::io::save_safetensors(path, arrays, &meta)?)
}

/// Every parameter of `model` by path.
pub fn parameters(model: &dyn LanguageModel) -> HashMap<String, Array> {
  let mut out = HashMap::new();
  model.visit(&mut |k, a| {
    out.insert(k.to_string(), a.clone());
  });
  out
}

/// Replace all of `model`'s parameters by `params` (which must name every
/// one of them; python `model.update`), attaching adapters to the `Linear`
/// layers whose `lora_a` / `lora_b` / `m` are in `params` (removing them from
/// the others). `quant` is the checkpoint's quantization.
pub fn reload(
  model: &mut dyn LanguageModel,
  params: HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  adapter: Option<AdapterSettings>,
) -> Result<()> {
  let mut w = Weights::new(params);
  w.quant = quant.cloned();
  w.adapter = adapter;
  model.load(&mut w);
  w.finish().map_err(Error::Core)
}

/// A linear layer of the model that adapters can wrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearTarget {
  /// Module path (`model.layers.1.self_attn.q_proj`).
  pub path: String,
  /// Index of its block.
  pub layer: usize,
  /// Input features.
  pub in_dims: i32,
  /// Output features.
  pub out_dims: i32,
}

/// `(prefix, index, rest)` for a path inside the block list
/// (`model.layers.3.mlp.up_proj.weight` -> (`model.layers`, 3,
/// `mlp.up_proj.weight`)).
fn split_layer(path: &str) -> Option<(&str, usize, &str)> {
  let i = path.find("layers.")?;
  let start = if i == 0 || path.as_bytes()[i - 1] == b'.' {
    i
  } else {
    return None;
  };
  let after = &path[start + 7..];
  let dot = after.find('.')?;
  let n: usize = after[..dot].parse().ok()?;
  Some((&path[..start + 6], n, &after[dot + 1..]))
}

/// The number of blocks (`layers.N`) in `params`.
pub fn num_blocks(params: &HashMap<String, Array>) -> usize {
  params
    .keys()
    .filter_map(|k| split_layer(k).map(|(_, n, _)| n + 1))
    .max()
    .unwrap_or(0)
}

/// The linear layers of the last `num_layers` blocks that mlx-lm's
/// `linear_to_lora_layers` would adapt (every `Linear` / `QuantizedLinear`,
/// or those whose block-relative path is in `keys`), sorted by path. 3-D
/// expert weights (`SwitchLinear`) are skipped.
pub fn lora_targets(
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  num_layers: i32,
  keys: Option<&[String]>,
) -> Result<Vec<LinearTarget>> {
  let n = num_blocks(params);
  if n == 0 {
    return Err(bad("the model has no `layers.N` blocks to adapt".into()));
  }
  if num_layers > n as i32 {
    return Err(bad(format!(
      "requested to train {num_layers} layers but the model only has {n} layers"
    )));
  }
  let first = n - num_layers.max(0) as usize;
  let mut out = Vec::new();
  for (k, w) in params {
    let Some(path) = k.strip_suffix(".weight") else {
      continue;
    };
    let Some((_, layer, rel)) = split_layer(path) else {
      continue;
    };
    if layer < first || rel.contains("lora") {
      continue;
    }
    if let Some(keys) = keys {
      if !keys.iter().any(|x| x == rel) {
        continue;
      }
    }
    let s = w.shape();
    if s.len() != 2 {
      continue;
    }
    let scales = params.get(&format!("{path}.scales"));
    let in_dims = match (scales, quant.and_then(|q| q.for_layer(path))) {
      (Some(_), Some(q)) => s[1] * 32 / q.bits,
      (Some(_), None) => {
        return Err(bad(format!(
          "{path} is quantized but the config has no quantization for it"
        )));
      }
      (None, _) => s[1],
    };
    out.push(LinearTarget {
      path: path.to_string(),
      layer,
      in_dims,
      out_dims: s[0],
    });
  }
  out.sort_by(|a, b| a.path.cmp(&b.path));
  if let Some(keys) = keys {
    let missing: Vec<&String> = keys
      .iter()
      .filter(|k| !out.iter().any(|t| t.path.ends_with(&format!(".{k}"))))
      .collect();
    if !missing.is_empty() {
      return Err(bad(format!(
        "lora_parameters.keys {missing:?} match no linear layer in the last {num_layers} layers"
      )));
    }
  }
  Ok(out)
}

/// The dense `[out, in]` weight of the linear layer at `path`
/// (dequantized when quantized).
pub fn dense_weight(
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  path: &str,
) -> Result<Array> {
  let w = params
    .get(&format!("{path}.weight"))
    .ok_or_else(|| bad(format!("no weight at {path}")))?;
  match params.get(&format!("{path}.scales")) {
    None => Ok(w.clone()),
    Some(s) => {
      let q = quant.and_then(|q| q.for_layer(path)).ok_or_else(|| {
        bad(format!(
          "{path} is quantized but has no quantization config"
        ))
      })?;
      Ok(ops::dequantize(
        w,
        s,
        params.get(&format!("{path}.biases")),
        Some(q.group_size),
        Some(q.bits),
        q.mode.as_str(),
        None,
        None,
      )?)
    }
  }
}

/// Fresh adapters for `targets` (python `LoRALinear.from_base` /
/// `DoRALinear.from_base`): `lora_a` `uniform(±1/sqrt(in))` from `key`,
/// `lora_b` zeros, DoRA's `m` the base weight's row norms.
pub fn init_adapters(
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  targets: &[LinearTarget],
  rank: i32,
  dora: bool,
  key: &Array,
) -> Result<HashMap<String, Array>> {
  if rank <= 0 {
    return Err(bad(format!("LoRA rank must be positive, got {rank}")));
  }
  let mut out = HashMap::new();
  let mut key = key.clone();
  for t in targets {
    let (next, sub) = mlxrs_core::random::split(&key)?;
    key = next;
    let s = 1.0 / (t.in_dims as f32).sqrt();
    let a = mlxrs_core::random::uniform(
      &Array::scalar(-s),
      &Array::scalar(s),
      &[t.in_dims, rank],
      Dtype::Float32,
      Some(&sub),
    )?;
    out.insert(format!("{}.lora_a", t.path), a);
    out.insert(
      format!("{}.lora_b", t.path),
      ops::zeros(&[rank, t.out_dims], Dtype::Float32)?,
    );
    if dora {
      let w = dense_weight(params, quant, &t.path)?;
      out.insert(
        format!("{}.m", t.path),
        mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?,
      );
    }
  }
  Ok(out)
}

/// Check adapter tensors against the model (python `load_adapters`'
/// check): every name must be an adapter parameter of the adapted layers
/// (or, for `full`, a model parameter) with the same shape; otherwise one
/// error listing every mismatched key.
pub fn check_adapters(
  weights: &HashMap<String, Array>,
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  cfg: &AdapterConfig,
  source: &str,
) -> Result<()> {
  let mut allowed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
  if cfg.fine_tune_type == FineTuneType::Full {
    for (k, v) in params {
      allowed.insert(k.clone(), v.shape());
    }
  } else {
    let r = cfg.lora.rank;
    for t in lora_targets(params, quant, cfg.num_layers, cfg.lora.keys.as_deref())? {
      allowed.insert(format!("{}.lora_a", t.path), vec![t.in_dims, r]);
      allowed.insert(format!("{}.lora_b", t.path), vec![r, t.out_dims]);
      if cfg.fine_tune_type == FineTuneType::Dora {
        allowed.insert(format!("{}.m", t.path), vec![t.out_dims]);
      }
    }
  }
  let mut errors = Vec::new();
  let mut names: Vec<&String> = weights.keys().collect();
  names.sort();
  for name in names {
    let w = &weights[name];
    match allowed.get(name) {
      None => errors.push(format!("  {name}: not an adapter parameter in the model")),
      Some(s) if *s != w.shape() => errors.push(format!(
        "  {name}: adapter shape {:?} does not match model parameter shape {s:?}",
        w.shape()
      )),
      _ => {}
    }
  }
  if errors.is_empty() {
    Ok(())
  } else {
    let n = errors.len();
    errors.truncate(40);
    Err(bad(format!(
      "adapter at {source} contains {n} incompatible tensors (is it for another model?):\n{}",
      errors.join("\n")
    )))
  }
}

/// Load `dir`'s adapters into `model` (python `load_adapters`). Returns
/// the adapter config.
pub fn load_adapters(
  model: &mut dyn LanguageModel,
  quant: Option<&QuantConfig>,
  dir: &Path,
) -> Result<AdapterConfig> {
  if !dir.is_dir() {
    return Err(bad(format!(
      "the adapter path does not exist: {}",
      dir.display()
    )));
  }
  let cfg = AdapterConfig::read(dir)?;
  let file = dir.join("adapters.safetensors");
  let (weights, _) =
    mlxrs_core::io::load_safetensors(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
  apply_adapter_weights(model, quant, &cfg, weights, &file.display().to_string())?;
  Ok(cfg)
}

/// Put checked adapter tensors into `model` (adapters for `lora`/`dora`,
/// replaced weights for `full`).
pub fn apply_adapter_weights(
  model: &mut dyn LanguageModel,
  quant: Option<&QuantConfig>,
  cfg: &AdapterConfig,
  weights: HashMap<String, Array>,
  source: &str,
) -> Result<()> {
  let mut params = parameters(model);
  check_adapters(&weights, &params, quant, cfg, source)?;
  let settings = (cfg.fine_tune_type != FineTuneType::Full).then_some(AdapterSettings {
    scale: cfg.lora.scale,
    dropout: cfg.lora.dropout,
    training: false,
  });
  // Keep existing adapters of other layers (and their settings).
  let dtype_of = |k: &str, params: &HashMap<String, Array>| params.get(k).map(|a| a.dtype());
  for (k, v) in weights {
    // A full fine-tune keeps the model's dtype.
    let v = match dtype_of(&k, &params) {
      Some(d) if d != v.dtype() && v.dtype().is_float() => ops::astype(&v, d)?,
      _ => v,
    };
    params.insert(k, v);
  }
  reload(model, params, quant, settings)
}

/// Merge the adapters held in `params` into their layers' weights (python
/// `mlx_lm.fuse`): returns the fused parameter map (no adapter tensors).
/// A quantized layer is re-quantized with its own settings unless
/// `dequantize`, in which case every quantized layer is dequantized.
pub fn fuse_params(
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  scale: f32,
  dequantize: bool,
) -> Result<HashMap<String, Array>> {
  let mut out: HashMap<String, Array> = params
    .iter()
    .filter(|(k, _)| !is_adapter_key(k))
    .map(|(k, v)| (k.clone(), v.clone()))
    .collect();
  let adapted: Vec<String> = params
    .keys()
    .filter_map(|k| k.strip_suffix(".lora_a").map(str::to_string))
    .collect();
  for path in &adapted {
    let w = dense_weight(params, quant, path)?;
    let a = &params[&format!("{path}.lora_a")];
    let b = params
      .get(&format!("{path}.lora_b"))
      .ok_or_else(|| bad(format!("{path}.lora_b missing")))?;
    let fused = mlxrs_nn::fused_weight(&w, a, b, params.get(&format!("{path}.m")), scale)?;
    out.insert(format!("{path}.weight"), fused);
    out.remove(&format!("{path}.scales"));
    out.remove(&format!("{path}.biases"));
    let q = quant.and_then(|q| q.for_layer(path));
    if let (false, true, Some(q)) = (
      dequantize,
      params.contains_key(&format!("{path}.scales")),
      q,
    ) {
      requantize(&mut out, path, &q)?;
    }
  }
  if dequantize {
    let quantized: Vec<String> = out
      .keys()
      .filter_map(|k| k.strip_suffix(".scales").map(str::to_string))
      .collect();
    for path in quantized {
      let w = dense_weight(&out, quant, &path)?;
      out.insert(format!("{path}.weight"), w);
      out.remove(&format!("{path}.scales"));
      out.remove(&format!("{path}.biases"));
    }
  }
  Ok(out)
}

fn requantize(
  out: &mut HashMap<String, Array>,
  path: &str,
  q: &mlxrs_nn::QuantParams,
) -> Result<()> {
  let w = &out[&format!("{path}.weight")];
  let parts = ops::quantize(w, Some(q.group_size), Some(q.bits), q.mode.as_str(), None)?;
  let mut it = parts.into_iter();
  let wq = it
    .next()
    .ok_or_else(|| bad("quantize returned nothing".into()))?;
  out.insert(format!("{path}.weight"), wq);
  if let Some(s) = it.next() {
    out.insert(format!("{path}.scales"), s);
  }
  if q.has_biases() {
    if let Some(b) = it.next() {
      out.insert(format!("{path}.biases"), b);
    }
  }
  Ok(())
}

/// Whether a parameter path names an adapter tensor.
pub fn is_adapter_key(k: &str) -> bool {
  k.ends_with(".lora_a") || k.ends_with(".lora_b") || k.ends_with(".m")
}

/// The checkpoint's quantization (config.json `quantization`), if any.
pub fn quant_config(config: &crate::config::ModelConfig) -> Result<Option<QuantConfig>> {
  match config.quantization_config() {
    Some((_, q)) => Ok(Some(QuantConfig::from_json(q).map_err(Error::Core)?)),
    None => Ok(None),
  }
}
