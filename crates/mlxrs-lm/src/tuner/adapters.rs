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
use mlxrs_nn::{AdaptableLayer, AdapterKind, AdapterSettings, QuantConfig, Weights};
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
) -> Result<Vec<AdaptableLayer>> {
  let mut w = Weights::new(params);
  w.quant = quant.cloned();
  w.adapter = adapter;
  model.load(&mut w);
  let layers = w.layers().to_vec();
  w.finish().map_err(Error::Core)?;
  Ok(layers)
}

/// The layers of `model` that adapters can wrap (`Linear`, `Embedding`,
/// `SwitchLinear`, dense or quantized), in module order: the model is
/// reloaded with its own parameters, each layer noting its kind and shape
/// as it loads. The model must not hold adapters yet.
pub fn adaptable_layers(
  model: &mut dyn LanguageModel,
  quant: Option<&QuantConfig>,
) -> Result<Vec<AdaptableLayer>> {
  let params = parameters(model);
  if let Some(k) = params.keys().find(|k| k.ends_with(".lora_a")) {
    return Err(bad(format!(
      "the model already holds adapters ({k}); load the base model to attach new ones"
    )));
  }
  reload(model, params, quant, None)
}

/// `(prefix, index, rest)` for a path inside the block list
/// (`model.layers.3.mlp.up_proj.weight` -> (`model.layers`, 3,
/// `mlp.up_proj.weight`)). The blocks are `layers.N`, or `h.N` (gpt2,
/// gpt_bigcode, which mlx-lm reaches through a `layers` property).
fn split_layer(path: &str) -> Option<(&str, usize, &str)> {
  let mut at = 0;
  let mut segs = path.split('.').peekable();
  while let Some(seg) = segs.next() {
    let list_end = at + seg.len();
    if seg == "layers" || seg == "h" {
      if let Some(n) = segs.peek().and_then(|x| x.parse::<usize>().ok()) {
        let idx_len = segs.peek().map_or(0, |x| x.len());
        let rest_start = list_end + 1 + idx_len + 1;
        if rest_start <= path.len() {
          return Some((&path[..list_end], n, &path[rest_start..]));
        }
        return None;
      }
    }
    at = list_end + 1;
  }
  None
}

/// The block index of a parameter or module path (`model.layers.3.mlp`
/// -> 3), if it lies in the block list.
pub fn block_index(path: &str) -> Option<usize> {
  split_layer(&format!("{path}.")).map(|(_, n, _)| n)
}

/// The number of blocks (`layers.N` / `h.N`) in `params`.
pub fn num_blocks(params: &HashMap<String, Array>) -> usize {
  params
    .keys()
    .filter_map(|k| split_layer(k).map(|(_, n, _)| n + 1))
    .max()
    .unwrap_or(0)
}

/// The layers mlx-lm's `linear_to_lora_layers` would adapt, out of the
/// model's [`adaptable_layers`]: with no `keys`, every adaptable layer
/// (`Linear`, `SwitchLinear`, `Embedding`, dense or quantized) of the last
/// `num_layers` blocks; with `keys`, those of the last `num_layers` blocks
/// whose block-relative path is a key (`self_attn.q_proj`), plus any layer
/// whose full path is one (`lm_head`, `model.embed_tokens`). Sorted by path.
pub fn lora_targets(
  layers: &[AdaptableLayer],
  num_layers: i32,
  keys: Option<&[String]>,
) -> Result<Vec<AdaptableLayer>> {
  let n = layers
    .iter()
    .filter_map(|l| block_index(&l.path).map(|i| i + 1))
    .max()
    .unwrap_or(0);
  if n == 0 {
    return Err(bad(
      "the model has no `layers.N` (or `h.N`) blocks to adapt".into(),
    ));
  }
  if num_layers > n as i32 {
    return Err(bad(format!(
      "requested to train {num_layers} layers but the model only has {n} layers"
    )));
  }
  let first = n - num_layers.max(0) as usize;
  let mut out: Vec<AdaptableLayer> = Vec::new();
  for l in layers {
    let path = format!("{}.", l.path);
    let in_block = split_layer(&path)
      .filter(|(_, i, _)| *i >= first)
      .map(|(_, _, rel)| rel.trim_end_matches('.').to_string());
    let picked = match (keys, &in_block) {
      (None, Some(_)) => true,
      (None, None) => false,
      (Some(keys), rel) => keys
        .iter()
        .any(|k| *k == l.path || rel.as_deref() == Some(k.as_str())),
    };
    if picked && !out.iter().any(|o| o.path == l.path) {
      out.push(l.clone());
    }
  }
  out.sort_by(|a, b| a.path.cmp(&b.path));
  if let Some(keys) = keys {
    let missing: Vec<&String> = keys
      .iter()
      .filter(|k| {
        !out
          .iter()
          .any(|t| t.path == **k || t.path.ends_with(&format!(".{k}")))
      })
      .collect();
    if !missing.is_empty() {
      return Err(bad(format!(
        "lora_parameters.keys {missing:?} match no adaptable layer (Linear, SwitchLinear, \
         Embedding) in the last {num_layers} layers or the model"
      )));
    }
  }
  Ok(out)
}

/// The adapter tensors of `target` and their shapes for rank `rank`
/// (mlx-lm's names): `lora_a`, `lora_b` and, for DoRA, `m`.
fn adapter_shapes(
  target: &AdaptableLayer,
  rank: i32,
  dora: bool,
) -> Result<Vec<(String, Vec<i32>)>> {
  let s = &target.shape;
  let p = &target.path;
  let (a, b, m) = match (target.kind, s.as_slice()) {
    (AdapterKind::Linear, [out, inp]) => (vec![*inp, rank], vec![rank, *out], *out),
    (AdapterKind::Embedding, [num, dims]) => (vec![*num, rank], vec![rank, *dims], *num),
    (AdapterKind::SwitchLinear, [e, out, inp]) => {
      if dora {
        return Err(bad(format!(
          "{p}: SwitchLinear (MoE experts) doesn't support DoRA (as mlx-lm); use lora, or \
           lora_parameters.keys without the expert layers"
        )));
      }
      (vec![*e, rank, *inp], vec![*e, *out, rank], 0)
    }
    (k, _) => {
      return Err(bad(format!(
        "{p}: unexpected {} weight shape {s:?}",
        k.name()
      )));
    }
  };
  if dora && target.kind == AdapterKind::Embedding && target.quantized {
    return Err(bad(format!(
      "{p}: DoRA on a quantized embedding is not supported (mlx-lm refuses it too)"
    )));
  }
  let mut out = vec![(format!("{p}.lora_a"), a), (format!("{p}.lora_b"), b)];
  if dora {
    out.push((format!("{p}.m"), vec![m]));
  }
  Ok(out)
}

/// The dense weight of the adaptable layer at `path` (`[out, in]`,
/// `[num_embeddings, dims]` or `[experts, out, in]`; dequantized when
/// quantized).
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

/// Fresh adapters for `targets` (python `LoRALinear.from_base`,
/// `LoRASwitchLinear.from_base`, `LoRAEmbedding.from_base` and their DoRA
/// twins): `lora_a` `uniform(±1/sqrt(in))` from `key` (an embedding's:
/// `±1/sqrt(num_embeddings)`), `lora_b` zeros, DoRA's `m` the base
/// weight's row norms.
pub fn init_adapters(
  params: &HashMap<String, Array>,
  quant: Option<&QuantConfig>,
  targets: &[AdaptableLayer],
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
    let shapes = adapter_shapes(t, rank, dora)?;
    let (next, sub) = mlxrs_core::random::split(&key)?;
    key = next;
    let fan_in = match t.kind {
      AdapterKind::Embedding => t.shape[0],
      _ => t.shape[t.shape.len() - 1],
    };
    let s = 1.0 / (fan_in as f32).sqrt();
    for (name, shape) in shapes {
      let v = if name.ends_with(".lora_a") {
        mlxrs_core::random::uniform(
          &Array::scalar(-s),
          &Array::scalar(s),
          &shape,
          Dtype::Float32,
          Some(&sub),
        )?
      } else if name.ends_with(".lora_b") {
        ops::zeros(&shape, Dtype::Float32)?
      } else {
        let w = dense_weight(params, quant, &t.path)?;
        mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?
      };
      out.insert(name, v);
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
  layers: &[AdaptableLayer],
  cfg: &AdapterConfig,
  source: &str,
) -> Result<()> {
  let mut allowed: BTreeMap<String, Vec<i32>> = BTreeMap::new();
  if cfg.fine_tune_type == FineTuneType::Full {
    for (k, v) in params {
      allowed.insert(k.clone(), v.shape());
    }
  } else {
    let dora = cfg.fine_tune_type == FineTuneType::Dora;
    for t in lora_targets(layers, cfg.num_layers, cfg.lora.keys.as_deref())? {
      allowed.extend(adapter_shapes(&t, cfg.lora.rank, dora)?);
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
  let layers = match cfg.fine_tune_type {
    FineTuneType::Full => Vec::new(),
    _ => adaptable_layers(model, quant)?,
  };
  let mut params = parameters(model);
  check_adapters(&weights, &params, &layers, cfg, source)?;
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
  reload(model, params, quant, settings)?;
  Ok(())
}

/// Merge the adapters held in `params` into their layers' weights (python
/// `mlx_lm.fuse`): returns the fused parameter map (no adapter tensors).
/// `layers` ([`adaptable_layers`] of the base model) tells each adapted
/// layer's kind. A quantized layer is re-quantized with its own settings
/// unless `dequantize`, in which case every quantized layer is
/// dequantized.
pub fn fuse_params(
  params: &HashMap<String, Array>,
  layers: &[AdaptableLayer],
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
    let kind = layers
      .iter()
      .find(|l| l.path == *path)
      .map(|l| l.kind)
      .ok_or_else(|| {
        bad(format!(
          "{path} has an adapter but is not an adaptable layer"
        ))
      })?;
    let w = dense_weight(params, quant, path)?;
    let a = &params[&format!("{path}.lora_a")];
    let b = params
      .get(&format!("{path}.lora_b"))
      .ok_or_else(|| bad(format!("{path}.lora_b missing")))?;
    let m = params.get(&format!("{path}.m"));
    let fused = match kind {
      AdapterKind::Linear => mlxrs_nn::fused_weight(&w, a, b, m, scale)?,
      AdapterKind::Embedding => mlxrs_nn::EmbeddingAdapter::fused_weight(&w, a, b, m, scale)?,
      AdapterKind::SwitchLinear => mlxrs_nn::SwitchAdapter::fused_weight(&w, a, b, scale)?,
    };
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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn block_paths() {
    assert_eq!(
      split_layer("model.layers.3.mlp.up_proj.weight"),
      Some(("model.layers", 3, "mlp.up_proj.weight"))
    );
    assert_eq!(
      split_layer("model.h.12.attn.c_attn."),
      Some(("model.h", 12, "attn.c_attn."))
    );
    assert_eq!(
      split_layer("backbone.layers.0.mixer.in_proj.weight"),
      Some(("backbone.layers", 0, "mixer.in_proj.weight"))
    );
    assert_eq!(block_index("model.layers.7"), Some(7));
    assert_eq!(block_index("model.embed_tokens"), None);
    assert_eq!(block_index("lm_head"), None);
    assert_eq!(split_layer("model.my_layers.1.x"), None);
    assert_eq!(split_layer("model.layers.x.y"), None);
    assert_eq!(split_layer("model.layers.2"), None);
  }
}
