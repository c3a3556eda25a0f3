//! Checkpoint conversion: Hugging Face (or mlx-community) folder -> MLX
//! folder, with optional dtype cast, quantization (affine / mxfp4 / nvfp4 /
//! mxfp8, mixed-bit recipes) or dequantization (python `mlx_lm.convert`).
//!
//! What is written is what `mlx_lm.convert` writes: the per-architecture
//! `sanitize` of the model code ([`LanguageModel::sanitize`]), the same
//! layers quantized with the same parameters (`mx.quantize` on the same
//! MLX), the same tensors, dtypes and bytes, the same `config.json`
//! (`quantization` / `quantization_config` with per-layer overrides, keys
//! sorted, Python's JSON layout) and `model.safetensors.index.json`
//! (`total_size`, `total_parameters`, sorted `weight_map`), shards of at
//! most 5 GiB named `model-0000i-of-0000N.safetensors` with metadata
//! `{"format": "mlx"}`. The tokenizer files are copied from the source
//! (python re-serializes them through transformers' `save_pretrained`).
//!
//! Memory: every tensor stays lazy (MLX reads safetensors on evaluation)
//! until its output shard is written; each shard is evaluated, saved and
//! dropped in turn, so the peak stays near the largest shard rather than the
//! whole model. The output is written into a hidden temporary folder beside
//! `mlx_path` and renamed into place only once complete, so a failed or
//! interrupted conversion never leaves a folder that looks finished.
//!
//! GGUF input is first unpacked by [`crate::gguf::to_mlx_folder`] into a
//! hidden folder beside the target (quantized tensors stay packed), which is
//! then converted like an mlx-community folder.

mod pyjson;

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{QuantConfig, QuantMode, QuantParams, Weights};
use serde_json::{Map, Value, json};

use crate::config::ModelConfig;
use crate::error::{Error, Result, read_json};
use crate::hub::{ModelFiles, resolve_model};
use crate::load::load_weights;
use crate::model::build_model;

pub use pyjson::{dumps as python_json_dumps, float_repr as python_float_repr};

/// mlx-lm's shard limit (`MAX_FILE_SIZE_GB = 5`, in GiB).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5 << 30;

/// Quantization modes `--q-mode` accepts (python `mx.quantize` modes).
pub const QUANT_MODES: &[&str] = &["affine", "mxfp4", "nvfp4", "mxfp8"];

/// Mixed-bit recipes (python `mlx_lm.convert.QUANT_RECIPES`).
pub const QUANT_RECIPES: &[&str] = &["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"];

/// Output dtypes `--dtype` accepts (python `MODEL_CONVERSION_DTYPES`).
pub const CONVERSION_DTYPES: &[&str] = &["float16", "bfloat16", "float32"];

/// What to convert and how (python `mlx_lm.convert.convert`'s arguments).
#[derive(Debug, Clone)]
pub struct ConvertOptions {
  /// Source: a local folder or a cached Hugging Face repo id (`--hf-path`).
  pub hf_path: String,
  /// Destination folder (`--mlx-path`).
  pub mlx_path: PathBuf,
  /// Dtype of the non-quantized parameters (`--dtype`): float16,
  /// bfloat16 or float32. `None`: config.json's `torch_dtype` (or
  /// `text_config.dtype`), else the weights' own.
  pub dtype: Option<String>,
  /// Quantize (`-q`).
  pub quantize: bool,
  /// Group size (`--q-group-size`; default per mode).
  pub q_group_size: Option<i32>,
  /// Bits (`--q-bits`; default per mode).
  pub q_bits: Option<i32>,
  /// Mode (`--q-mode`): affine, mxfp4, nvfp4, mxfp8.
  pub q_mode: String,
  /// Mixed-bit recipe (`--quant-predicate`), affine only.
  pub quant_predicate: Option<String>,
  /// Dequantize a quantized checkpoint (`-d`).
  pub dequantize: bool,
  /// Replace an existing non-empty `mlx_path` (python refuses any existing
  /// path; here an empty folder is accepted and a non-empty one needs this).
  pub overwrite: bool,
  /// Largest shard in bytes (mlx-lm: 5 GiB); smaller values are for tests.
  pub max_shard_bytes: u64,
  /// Print progress to stderr (a line per shard; `[INFO]` lines as python).
  pub progress: bool,
}

impl Default for ConvertOptions {
  fn default() -> Self {
    ConvertOptions {
      hf_path: String::new(),
      mlx_path: PathBuf::from("mlx_model"),
      dtype: None,
      quantize: false,
      q_group_size: None,
      q_bits: None,
      q_mode: "affine".into(),
      quant_predicate: None,
      dequantize: false,
      overwrite: false,
      max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
      progress: false,
    }
  }
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
  /// The output folder.
  pub mlx_path: PathBuf,
  /// Weight files written, in order.
  pub shards: Vec<String>,
  /// Tensors written.
  pub tensors: usize,
  /// Bytes of tensor data (`total_size`).
  pub total_size: u64,
  /// Parameters (`total_parameters`, python `get_total_parameters`).
  pub total_parameters: u64,
  /// Layers quantized by this run.
  pub quantized_layers: usize,
  /// Layers dequantized by this run.
  pub dequantized_layers: usize,
  /// Layers left dense because their input width is not a multiple of the
  /// group size (as python's `quantize_model` skips them).
  pub skipped_layers: Vec<String>,
  /// The dtype floating parameters were cast to, if any.
  pub dtype: Option<String>,
}

fn invalid(msg: impl Into<String>) -> Error {
  Error::InvalidArgument(msg.into())
}

fn mode_of(mode: &str) -> Result<QuantMode> {
  QuantMode::parse(mode).ok_or_else(|| {
    invalid(format!(
      "--q-mode {mode:?}: expected one of {}",
      QUANT_MODES.join(", ")
    ))
  })
}

/// How one layer is quantized, and what config.json records for it.
#[derive(Debug, Clone)]
struct LayerChoice {
  /// Effective parameters (`to_quantized`'s defaults applied).
  params: QuantParams,
  /// The per-layer config entry, when python records one.
  record: Option<Value>,
}

/// python `quantize_model`'s predicate result: `True` or a dict.
enum Pred {
  Yes,
  Dict(Value),
}

/// A mixed-bit recipe (python `mixed_quant_predicate_builder`).
struct Mixed {
  low_bits: i32,
  high_bits: i32,
  group_size: Option<i32>,
  layer_location: usize,
  num_layers: i64,
}

impl Mixed {
  fn new(
    recipe: &str,
    group_size: Option<i32>,
    layers: &[String],
    num_layers: i64,
  ) -> Result<Mixed> {
    let (low_bits, high_bits) = match recipe {
      "mixed_2_6" => (2, 6),
      "mixed_3_4" => (3, 4),
      "mixed_3_6" => (3, 6),
      "mixed_4_6" => (4, 6),
      other => {
        return Err(invalid(format!(
          "--quant-predicate {other:?}: expected one of {}",
          QUANT_RECIPES.join(", ")
        )));
      }
    };
    let first = layers
      .iter()
      .find(|k| k.contains("down_proj"))
      .ok_or_else(|| invalid("Model does not have expected keys for mixed quant."))?;
    let parts: Vec<&str> = first.split('.').collect();
    // python: the loop variable keeps the last index when no part is a digit
    let layer_location = parts
      .iter()
      .position(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
      .unwrap_or(parts.len().saturating_sub(1));
    Ok(Mixed {
      low_bits,
      high_bits,
      group_size,
      layer_location,
      num_layers,
    })
  }

  fn predicate(&self, path: &str) -> Result<Value> {
    let parts: Vec<&str> = path.split('.').collect();
    let index: i64 = if parts.len() > self.layer_location {
      parts[self.layer_location].parse().map_err(|_| {
        invalid(format!(
          "mixed quantization: {path:?} has no layer index at position {}",
          self.layer_location
        ))
      })?
    } else {
      0
    };
    let n = self.num_layers;
    // python floor division / modulo on possibly negative values
    let use_more_bits = index < n.div_euclid(8)
      || index >= (7 * n).div_euclid(8)
      || (index - n.div_euclid(8)).rem_euclid(3) == 2;
    let v_like = path.contains("v_proj") || path.contains("v_a_proj") || path.contains("v_b_proj");
    let high = use_more_bits && (v_like || path.contains("down_proj")) || path.contains("lm_head");
    let bits = if high { self.high_bits } else { self.low_bits };
    Ok(json!({"group_size": self.group_size, "bits": bits, "mode": "affine"}))
  }
}

/// The model's own `quant_predicate` (python `Model.quant_predicate`), for
/// the architectures of the registry that define one.
fn model_predicate(model_type: &str, path: &str) -> Pred {
  match model_type {
    "qwen3_moe" if path.ends_with("mlp.gate") => Pred::Dict(json!({"group_size": 64, "bits": 8})),
    "gpt_oss" if path.ends_with("router") => Pred::Dict(json!({"group_size": 64, "bits": 8})),
    _ => Pred::Yes,
  }
}

/// The model's `cast_predicate` (python `Model.cast_predicate`).
fn cast_predicate(model_type: &str, key: &str) -> bool {
  match model_type {
    "deepseek_v3" => !key.contains("e_score_correction_bias"),
    _ => true,
  }
}

/// Parameters `to_quantized(**dict)` ends up with (missing / null values
/// take the mode's defaults; the mode defaults to affine).
fn params_from_dict(d: &Value, path: &str) -> Result<QuantParams> {
  let mode = match d.get("mode") {
    None | Some(Value::Null) => QuantMode::Affine,
    Some(Value::String(s)) => mode_of(s)?,
    Some(other) => {
      return Err(invalid(format!(
        "{path}: quantization mode {other} is not a string"
      )));
    }
  };
  let (dg, db) = mode.defaults();
  let int = |k: &str, def: i32| -> Result<i32> {
    match d.get(k) {
      None | Some(Value::Null) => Ok(def),
      Some(v) => v
        .as_i64()
        .and_then(|x| i32::try_from(x).ok())
        .ok_or_else(|| invalid(format!("{path}: quantization {k} {v} is not an integer"))),
    }
  };
  let p = QuantParams {
    group_size: int("group_size", dg)?,
    bits: int("bits", db)?,
    mode,
  };
  p.validate().map_err(|e| invalid(format!("{path}: {e}")))?;
  Ok(p)
}

/// The checkpoint's MLX quantization block (`quantization`, or an MLX-form
/// `quantization_config`), if any. Hugging Face methods (awq, gptq, fp8,
/// compressed-tensors...) are refused.
fn input_quantization(raw: &Value, path: &Path) -> Result<Option<Value>> {
  if let Some(q) = raw.get("quantization").filter(|q| !q.is_null()) {
    return Ok(Some(q.clone()));
  }
  let qc = raw.get("quantization_config").or_else(|| {
    raw
      .get("text_config")
      .and_then(|t| t.get("quantization_config"))
  });
  match qc {
    None | Some(Value::Null) => Ok(None),
    Some(q) => match q.get("quant_method").and_then(Value::as_str) {
      None if q.get("group_size").is_some() || q.get("bits").is_some() => Ok(Some(q.clone())),
      None => Ok(None),
      Some(m) => Err(Error::config(
        path,
        "quantization_config.quant_method",
        format!(
          "converting a checkpoint quantized with {m:?} is not supported; convert the unquantized (or MLX-quantized) checkpoint"
        ),
      )),
    },
  }
}

/// Convert a checkpoint (python `mlx_lm.convert.convert`). See the module
/// docs for what is written.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport> {
  let info = |msg: &str| {
    if opts.progress {
      eprintln!("[INFO] {msg}");
    }
  };
  // ---- arguments (checked before anything is read) ----
  if opts.quantize && opts.dequantize {
    return Err(invalid("Choose either quantize or dequantize, not both."));
  }
  let q_mode = mode_of(&opts.q_mode)?;
  let (def_gs, def_bits) = q_mode.defaults();
  if opts.quant_predicate.is_some() && opts.q_mode != "affine" {
    return Err(invalid(
      "Quant predicates only support 'affine' quantization.",
    ));
  }
  if let Some(r) = &opts.quant_predicate {
    if !QUANT_RECIPES.contains(&r.as_str()) {
      return Err(invalid(format!(
        "--quant-predicate {r:?}: expected one of {}",
        QUANT_RECIPES.join(", ")
      )));
    }
  }
  if let Some(d) = &opts.dtype {
    if !CONVERSION_DTYPES.contains(&d.as_str()) {
      return Err(invalid(format!(
        "--dtype {d:?}: expected one of {}",
        CONVERSION_DTYPES.join(", ")
      )));
    }
  }
  let gs = opts.q_group_size.unwrap_or(def_gs);
  let bits = opts.q_bits.unwrap_or(def_bits);
  let global = QuantParams {
    group_size: gs,
    bits,
    mode: q_mode,
  };
  if opts.quantize {
    global.validate().map_err(Error::Core)?;
  }
  if opts.max_shard_bytes == 0 {
    return Err(invalid("max shard size must be > 0"));
  }
  check_destination(&opts.mlx_path, opts.overwrite)?;

  // ---- the source ----
  if crate::gguf::is_gguf_path(&opts.hf_path) {
    return convert_gguf(opts);
  }
  let src = resolve_model(&opts.hf_path)?;
  info("Loading");
  let files = ModelFiles::scan(&src)?;
  let mc = ModelConfig::from_dir(&src)?;
  let mut config = read_json(&files.config)?;
  let Some(config_obj) = config.as_object_mut() else {
    return Err(Error::config(&files.config, "<root>", "expected an object"));
  };
  // python `load_config`: generation_config.json's eos_token_id wins.
  let gen_path = src.join("generation_config.json");
  if gen_path.is_file() {
    if let Ok(g) = read_json(&gen_path) {
      if let Some(eos) = g.get("eos_token_id").filter(|v| truthy(v)) {
        config_obj.insert("eos_token_id".into(), eos.clone());
      }
    }
  }
  // python `load_model`: a text_config's quantization_config moves up.
  if !config_obj.contains_key("quantization_config") {
    if let Some(qc) = config_obj
      .get("text_config")
      .and_then(|t| t.get("quantization_config"))
      .cloned()
    {
      config_obj.insert("quantization_config".into(), qc);
    }
  }
  let text_cfg = mc.text_config();
  let model_type = text_cfg
    .get("model_type")
    .and_then(Value::as_str)
    .unwrap_or("")
    .to_string();
  let model = build_model(&text_cfg).map_err(|e| match e {
    mlxrs_core::Error::InvalidArgument(m) if m.contains("is not supported") => {
      Error::unsupported_model_type(&model_type, &crate::model::supported_model_types())
    }
    e => Error::Core(e),
  })?;
  let in_quant = input_quantization(&config, &files.config)?;
  let in_qcfg = match &in_quant {
    Some(q) => Some(
      QuantConfig::from_json(q)
        .map_err(|e| Error::config(&files.config, "quantization", e.to_string()))?,
    ),
    None => None,
  };
  if opts.dequantize && in_quant.is_none() {
    return Err(invalid(format!(
      "{}: the checkpoint is not quantized (config.json has no quantization block); nothing to dequantize",
      src.display()
    )));
  }

  // Lazy: nothing is read from the shards until a tensor is evaluated.
  let weights = load_weights(&files.weights)?;
  let mut weights = model.sanitize(weights)?;

  // ---- which layers are quantizable, and the parameter order ----
  // A probe copy of the model built with every quantizable layer quantized
  // (random lazy weights, never evaluated) names the layers python's
  // `hasattr(m, "to_quantized")` finds, in module order.
  let quantizable = probe(&text_cfg)?;

  // Validate names and shapes now, before any work: load into the model;
  // its parameters in module order are the output order.
  let order = validate_against_model(&text_cfg, &weights, in_qcfg.as_ref(), &src)?;

  // ---- dtype (python: before quantizing / dequantizing) ----
  let dtype_name = opts.dtype.clone().or_else(|| {
    let c = config.get("torch_dtype").and_then(Value::as_str);
    let c = c.or_else(|| {
      config
        .get("text_config")
        .and_then(|t| t.get("dtype"))
        .and_then(Value::as_str)
    });
    c.filter(|d| CONVERSION_DTYPES.contains(d))
      .map(str::to_string)
  });
  if let Some(name) = &dtype_name {
    info(&format!("Using dtype: {name}"));
    let dt = Dtype::parse(name).ok_or_else(|| invalid(format!("unknown dtype {name}")))?;
    for (k, v) in weights.iter_mut() {
      if cast_predicate(&model_type, k) && v.dtype().is_float() {
        *v = ops::astype(v, dt)?;
      }
    }
  }

  let mut report = ConvertReport {
    mlx_path: opts.mlx_path.clone(),
    shards: Vec::new(),
    tensors: 0,
    total_size: 0,
    total_parameters: 0,
    quantized_layers: 0,
    dequantized_layers: 0,
    skipped_layers: Vec::new(),
    dtype: dtype_name.clone(),
  };
  // bits of every quantized layer in the output (for total_parameters)
  let mut layer_bits: HashMap<String, i32> = HashMap::new();
  if let Some(q) = &in_qcfg {
    for l in &quantizable {
      if weights.contains_key(&format!("{l}.scales")) {
        let b = layer_params_in(q, in_quant.as_ref(), l)?.bits;
        layer_bits.insert(l.clone(), b);
      }
    }
  }

  // ---- quantize (python `quantize_model`) ----
  if opts.quantize {
    info("Quantizing");
    let mixed = match &opts.quant_predicate {
      Some(r) => {
        let n = text_cfg
          .get("num_hidden_layers")
          .and_then(Value::as_i64)
          .unwrap_or(0);
        Some(Mixed::new(r, opts.q_group_size, &quantizable, n)?)
      }
      None => None,
    };
    let fine_grained = in_quant.is_some();
    let global_json = json!({"group_size": gs, "bits": bits, "mode": opts.q_mode});
    let mut qblock: Map<String, Value> = match &in_quant {
      Some(Value::Object(o)) => o.clone(),
      _ => global_json.as_object().cloned().unwrap_or_default(),
    };
    let mut n = 0;
    for l in &quantizable {
      let wkey = format!("{l}.weight");
      let Some(w) = weights.get(&wkey) else {
        continue;
      };
      if weights.contains_key(&format!("{l}.scales")) {
        continue; // already quantized: python's quantized layers lack to_quantized
      }
      let cols = w.shape().last().copied().unwrap_or(0);
      if cols % gs != 0 {
        report.skipped_layers.push(l.clone());
        continue;
      }
      let pred = match &mixed {
        Some(m) => Pred::Dict(m.predicate(l)?),
        None => model_predicate(&model_type, l),
      };
      let choice = match pred {
        Pred::Yes => LayerChoice {
          params: global,
          record: fine_grained.then(|| global_json.clone()),
        },
        Pred::Dict(d) => LayerChoice {
          params: params_from_dict(&d, l)?,
          record: Some(d),
        },
      };
      let w = w.clone();
      let parts = ops::quantize(
        &w,
        Some(choice.params.group_size),
        Some(choice.params.bits),
        choice.params.mode.as_str(),
        None,
      )
      .map_err(|e| invalid(format!("quantize {l}: {e}")))?;
      let mut it = parts.into_iter();
      let (Some(wq), Some(sc)) = (it.next(), it.next()) else {
        return Err(invalid(format!(
          "quantize {l}: MLX returned too few arrays"
        )));
      };
      weights.insert(wkey, wq);
      weights.insert(format!("{l}.scales"), sc);
      if choice.params.has_biases() {
        let b = it
          .next()
          .ok_or_else(|| invalid(format!("quantize {l}: MLX returned no biases")))?;
        weights.insert(format!("{l}.biases"), b);
      }
      if let Some(r) = choice.record {
        qblock.insert(l.clone(), r);
      }
      layer_bits.insert(l.clone(), choice.params.bits);
      n += 1;
    }
    if n == 0 && !report.skipped_layers.is_empty() {
      return Err(invalid(format!(
        "nothing to quantize: no quantizable layer's input dimension is a multiple of group size {gs}{}",
        if report.skipped_layers.is_empty() {
          String::new()
        } else {
          format!(" (skipped: {})", list_some(&report.skipped_layers))
        }
      )));
    }
    if !report.skipped_layers.is_empty() {
      info(&format!(
        "Left {} layer(s) unquantized (input dimension not a multiple of {gs}): {}",
        report.skipped_layers.len(),
        list_some(&report.skipped_layers)
      ));
    }
    report.quantized_layers = n;
    let obj = config
      .as_object_mut()
      .ok_or_else(|| invalid("config.json is not a JSON object"))?;
    obj.insert("quantization".into(), Value::Object(qblock.clone()));
    obj.insert("quantization_config".into(), Value::Object(qblock));
  }

  // ---- dequantize (python `dequantize_model`) ----
  if opts.dequantize {
    info("Dequantizing");
    let q = in_qcfg
      .as_ref()
      .ok_or_else(|| invalid("the checkpoint is not quantized"))?;
    let mut n = 0;
    for l in &quantizable {
      let Some(sc) = weights.remove(&format!("{l}.scales")) else {
        continue;
      };
      let p = layer_params_in(q, in_quant.as_ref(), l)?;
      let wkey = format!("{l}.weight");
      let w = weights
        .get(&wkey)
        .ok_or_else(|| invalid(format!("{l}.scales without {l}.weight")))?
        .clone();
      let b = weights.remove(&format!("{l}.biases"));
      let d = ops::dequantize(
        &w,
        &sc,
        b.as_ref(),
        Some(p.group_size),
        Some(p.bits),
        p.mode.as_str(),
        None,
        None,
      )
      .map_err(|e| invalid(format!("dequantize {l}: {e}")))?;
      weights.insert(wkey, d);
      layer_bits.remove(l);
      n += 1;
    }
    report.dequantized_layers = n;
    let obj = config
      .as_object_mut()
      .ok_or_else(|| invalid("config.json is not a JSON object"))?;
    obj.remove("quantization");
    obj.remove("quantization_config");
  }

  // ---- the output ----
  let mut names: Vec<String> = Vec::with_capacity(weights.len());
  let mut seen = HashSet::new();
  let in_order: HashSet<&String> = order.iter().collect();
  for n in &order {
    if weights.contains_key(n) && seen.insert(n.clone()) {
      names.push(n.clone());
    }
    // a layer quantized here: python's QuantizedLinear holds weight,
    // scales, biases (then bias)
    if let Some(l) = n.strip_suffix(".weight") {
      for extra in ["scales", "biases"] {
        let k = format!("{l}.{extra}");
        if weights.contains_key(&k) && !seen.contains(&k) && !in_order.contains(&k) {
          seen.insert(k.clone());
          names.push(k);
        }
      }
    }
  }
  let mut rest: Vec<String> = weights
    .keys()
    .filter(|k| !seen.contains(*k))
    .cloned()
    .collect();
  rest.sort();
  names.extend(rest);

  report.tensors = names.len();
  report.total_size = names
    .iter()
    .map(|n| weights.get(n).map_or(0, |a| a.nbytes() as u64))
    .sum();
  report.total_parameters = total_parameters(&weights, &layer_bits);

  // shards (python `make_shards`)
  let mut shards: Vec<Vec<String>> = Vec::new();
  let mut size = 0u64;
  for n in &names {
    let nb = weights.get(n).map_or(0, |a| a.nbytes() as u64);
    if shards.is_empty() || size + nb > opts.max_shard_bytes {
      shards.push(Vec::new());
      size = 0;
    }
    if let Some(s) = shards.last_mut() {
      s.push(n.clone());
    }
    size += nb;
  }
  let count = shards.len();
  let shard_name = |i: usize| {
    if count > 1 {
      format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
    } else {
      "model.safetensors".to_string()
    }
  };

  let tmp = TempDir::beside(&opts.mlx_path)?;
  let meta: HashMap<String, String> = [("format".to_string(), "mlx".to_string())].into();
  let mut weight_map: Vec<(String, String)> = Vec::new();
  let tty = opts.progress && std::io::stderr().is_terminal();
  let mut written = 0u64;
  for (i, shard) in shards.into_iter().enumerate() {
    let name = shard_name(i);
    let mut arrays: HashMap<String, Array> = HashMap::with_capacity(shard.len());
    for n in &shard {
      if let Some(a) = weights.remove(n) {
        arrays.insert(n.clone(), a);
      }
    }
    let bytes: u64 = arrays.values().map(|a| a.nbytes() as u64).sum();
    let path = tmp.path().join(&name);
    mlxrs_core::io::save_safetensors(&path, &arrays, &meta).map_err(|e| {
      let msg = match e {
        mlxrs_core::Error::Format { msg, .. } => msg,
        e => e.to_string(),
      };
      Error::io(&path, std::io::Error::other(msg))
    })?;
    drop(arrays);
    // Freed buffers go back to the system, not MLX's cache.
    let _ = mlxrs_core::memory::clear_cache();
    written += bytes;
    if opts.progress {
      let line = format!(
        "[{}/{}] {name}: {} tensors, {:.2} GB ({:.0}%)",
        i + 1,
        count,
        shard.len(),
        bytes as f64 / 1e9,
        100.0 * written as f64 / report.total_size.max(1) as f64
      );
      if tty {
        eprint!("\r\x1b[2K{line}");
        if i + 1 == count {
          eprintln!();
        }
      } else {
        eprintln!("{line}");
      }
    }
    for n in shard {
      weight_map.push((n, name.clone()));
    }
    report.shards.push(name);
  }
  weight_map.sort();
  let index = json!({
    "metadata": {"total_size": report.total_size, "total_parameters": report.total_parameters},
    "weight_map": Value::Object(weight_map.into_iter().map(|(k, v)| (k, Value::String(v))).collect()),
  });
  tmp.write("model.safetensors.index.json", &pyjson::dumps(&index))?;
  tmp.write("config.json", &pyjson::dumps(&saved_config(config)))?;
  copy_side_files(&src, &files, tmp.path())?;
  tmp.write("README.md", &model_card(&opts.hf_path))?;
  tmp.finish(&opts.mlx_path, opts.overwrite)?;
  info(&format!(
    "Saved {} tensors ({:.3} GB, {} parameters) to {}",
    report.tensors,
    report.total_size as f64 / 1e9,
    report.total_parameters,
    opts.mlx_path.display()
  ));
  Ok(report)
}

/// The first few names, then how many more.
fn list_some(names: &[String]) -> String {
  let mut s = names.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
  if names.len() > 6 {
    s.push_str(&format!(" and {} more", names.len() - 6));
  }
  s
}

/// python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
  match v {
    Value::Null => false,
    Value::Bool(b) => *b,
    Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
    Value::String(s) => !s.is_empty(),
    Value::Array(a) => !a.is_empty(),
    Value::Object(o) => !o.is_empty(),
  }
}

/// The parameters a quantized input layer was packed with: its per-layer
/// entry (null fields take the mode's defaults, as python's
/// `to_quantized(**entry)`), else the block's default.
fn layer_params_in(q: &QuantConfig, raw: Option<&Value>, layer: &str) -> Result<QuantParams> {
  if let Some(entry) = raw.and_then(|r| r.get(layer)).filter(|e| e.is_object()) {
    return params_from_dict(entry, layer);
  }
  q.for_layer(layer).ok_or_else(|| {
    invalid(format!(
      "{layer}: has scales but the quantization block marks it unquantized"
    ))
  })
}

/// Build the model with every quantizable layer quantized and random lazy
/// weights; returns the quantizable layer paths in module order.
fn probe(text_cfg: &Value) -> Result<Vec<String>> {
  let mut model = build_model(text_cfg)?;
  // group 1 makes every layer pass the loaders' divisibility filter
  let q = QuantConfig {
    default: QuantParams {
      group_size: 1,
      bits: 8,
      mode: QuantMode::Affine,
    },
    layers: HashMap::new(),
  };
  let mut w = Weights::random(Dtype::Float32, 0, Some(q))?;
  model.load(&mut w);
  let mut layers = Vec::new();
  model.visit(&mut |n, _| {
    if let Some(l) = n.strip_suffix(".scales") {
      layers.push(l.to_string());
    }
  });
  Ok(layers)
}

/// Load the (lazy) sanitized weights into the model to check every name
/// and shape before converting (python `model.load_weights(strict=True)`);
/// returns the parameter names in module order.
fn validate_against_model(
  text_cfg: &Value,
  weights: &HashMap<String, Array>,
  q: Option<&QuantConfig>,
  src: &Path,
) -> Result<Vec<String>> {
  let mut model = build_model(text_cfg)?;
  let mut w = Weights::new(weights.clone());
  w.quant = q.cloned();
  model.load(&mut w);
  w.finish().map_err(|e| {
    Error::Core(mlxrs_core::Error::Format {
      path: src.display().to_string(),
      msg: e.to_string(),
    })
  })?;
  let mut order = Vec::new();
  model.visit(&mut |n, _| order.push(n.to_string()));
  Ok(order)
}

/// python `get_total_parameters`: per leaf module, a quantized layer counts
/// its dense weight (`weight.size * 32 // bits`) plus its bias; any other
/// leaf counts all its parameters. A module is a leaf when no parameter
/// lives in a sub-module of it.
fn total_parameters(weights: &HashMap<String, Array>, layer_bits: &HashMap<String, i32>) -> u64 {
  let module_of = |k: &str| {
    k.rsplit_once('.')
      .map_or(String::new(), |(m, _)| m.to_string())
  };
  let modules: HashSet<String> = weights.keys().map(|k| module_of(k)).collect();
  let mut parents: HashSet<String> = HashSet::new();
  for m in &modules {
    let mut cur = m.as_str();
    while let Some((p, _)) = cur.rsplit_once('.') {
      parents.insert(p.to_string());
      cur = p;
    }
    if !m.is_empty() {
      parents.insert(String::new());
    }
  }
  let mut total = 0u64;
  for (k, a) in weights {
    let m = module_of(k);
    if parents.contains(&m) {
      continue; // not a leaf module: python does not count its own params
    }
    let leaf = k.rsplit_once('.').map_or(k.as_str(), |(_, l)| l);
    match layer_bits.get(&m) {
      Some(b) => match leaf {
        "weight" => total += (a.size() as u64) * 32 / (*b as u64),
        "bias" => total += a.size() as u64,
        _ => {}
      },
      None => total += a.size() as u64,
    }
  }
  total
}

/// python `save_config`: drop `_name_or_path` and `vision_config`, mirror
/// `quantization` into `quantization_config`, sort the keys.
fn saved_config(mut config: Value) -> Value {
  if let Some(o) = config.as_object_mut() {
    o.remove("_name_or_path");
    o.remove("vision_config");
    if let Some(q) = o.get("quantization").cloned() {
      o.insert("quantization_config".into(), q);
    }
    let mut entries: Vec<(String, Value)> = std::mem::take(o).into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    *o = entries.into_iter().collect();
  }
  config
}

/// python `create_model_card`: the template for a local source; for a repo
/// id python loads the repo's own card and adds `base_model` (here: the
/// template plus `base_model`).
fn model_card(hf_path: &str) -> String {
  let base = if Path::new(hf_path).exists() {
    String::new()
  } else {
    format!("base_model: {hf_path}\n")
  };
  format!(
    "---\n{base}language: en\nlibrary_name: mlx\npipeline_tag: text-generation\ntags:\n- mlx\n---\n"
  )
}

/// Tokenizer files, generation_config.json and `*.py` files, copied.
fn copy_side_files(src: &Path, files: &ModelFiles, dst: &Path) -> Result<()> {
  let mut names: Vec<PathBuf> = files.tokenizer_files.clone();
  let entries = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
  for e in entries.flatten() {
    let p = e.path();
    let Some(n) = p.file_name().and_then(|n| n.to_str()) else {
      continue;
    };
    let extra = n.ends_with(".py")
      || n.ends_with(".tiktoken")
      || n.ends_with(".jinja")
      || matches!(
        n,
        "tokenizer.model"
          | "vocab.json"
          | "merges.txt"
          | "vocab.txt"
          | "added_tokens.json"
          | "tiktoken.model"
      );
    if extra && p.is_file() && !names.contains(&p) {
      names.push(p);
    }
  }
  for p in names {
    if let Some(n) = p.file_name() {
      std::fs::copy(&p, dst.join(n)).map_err(|e| Error::io(&p, e))?;
    }
  }
  Ok(())
}

/// Refuse a destination that exists and is not an empty folder (unless
/// `overwrite`).
fn check_destination(dst: &Path, overwrite: bool) -> Result<()> {
  match std::fs::symlink_metadata(dst) {
    Err(_) => Ok(()),
    Ok(m) if m.is_dir() => {
      let empty = std::fs::read_dir(dst)
        .map_err(|e| Error::io(dst, e))?
        .next()
        .is_none();
      if empty || overwrite {
        Ok(())
      } else {
        Err(invalid(format!(
          "{}: already exists and is not empty; remove it, choose another --mlx-path, or pass --overwrite",
          dst.display()
        )))
      }
    }
    Ok(_) => Err(invalid(format!(
      "{}: exists and is not a folder",
      dst.display()
    ))),
  }
}

/// A hidden folder beside the destination, removed on drop unless
/// [`TempDir::finish`] renamed it into place.
struct TempDir {
  path: PathBuf,
  done: bool,
}

impl TempDir {
  fn beside(dst: &Path) -> Result<TempDir> {
    let name = dst
      .file_name()
      .and_then(|n| n.to_str())
      .ok_or_else(|| invalid(format!("{}: not a folder name", dst.display())))?;
    let parent = match dst.parent() {
      Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
      _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if path.exists() {
      std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
    Ok(TempDir { path, done: false })
  }

  fn path(&self) -> &Path {
    &self.path
  }

  fn write(&self, name: &str, text: &str) -> Result<()> {
    let p = self.path.join(name);
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
  }

  /// Move the finished folder to `dst` (replacing an empty folder, or a
  /// non-empty one with `overwrite`).
  fn finish(mut self, dst: &Path, overwrite: bool) -> Result<()> {
    check_destination(dst, overwrite)?;
    let mut old = None;
    if dst.is_dir() {
      let empty = std::fs::read_dir(dst)
        .map_err(|e| Error::io(dst, e))?
        .next()
        .is_none();
      if empty {
        std::fs::remove_dir(dst).map_err(|e| Error::io(dst, e))?;
      } else {
        let aside = self.path.with_extension("old");
        std::fs::rename(dst, &aside).map_err(|e| Error::io(dst, e))?;
        old = Some(aside);
      }
    }
    std::fs::rename(&self.path, dst).map_err(|e| Error::io(dst, e))?;
    self.done = true;
    if let Some(o) = old {
      std::fs::remove_dir_all(&o).map_err(|e| Error::io(&o, e))?;
    }
    Ok(())
  }
}

impl Drop for TempDir {
  fn drop(&mut self) {
    if !self.done {
      let _ = std::fs::remove_dir_all(&self.path);
    }
  }
}

/// GGUF input: unpack the file with [`crate::gguf::to_mlx_folder_with`] into
/// a hidden folder beside the target, convert that folder with the same
/// options, and remove it (also on error). With `dequantize` or `quantize`
/// the file is unpacked to floats (the exact values of its quantized
/// tensors), so neither works on top of the GGUF-to-MLX requantization.
fn convert_gguf(opts: &ConvertOptions) -> Result<ConvertReport> {
  let gguf = crate::gguf::resolve_gguf(&opts.hf_path)?;
  let parent = match opts.mlx_path.parent() {
    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
    _ => PathBuf::from("."),
  };
  std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
  let name = opts
    .mlx_path
    .file_name()
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_else(|| "out".into());
  let staging = parent.join(format!(".{name}.gguf-{}", std::process::id()));
  let _ = std::fs::remove_dir_all(&staging);
  let read = crate::gguf::GgufReadOptions {
    no_tokenizer: false,
    dequantize: opts.dequantize || opts.quantize,
  };
  let result = crate::gguf::to_mlx_folder_with(&gguf, &staging, &read).and_then(|()| {
    let inner = ConvertOptions {
      hf_path: staging.to_string_lossy().into_owned(),
      dequantize: false,
      ..opts.clone()
    };
    convert(&inner)
  });
  let _ = std::fs::remove_dir_all(&staging);
  result
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn mixed_recipe_bits_follow_python() {
    let layers: Vec<String> = (0..16)
      .flat_map(|i| {
        [
          format!("model.layers.{i}.self_attn.v_proj"),
          format!("model.layers.{i}.mlp.down_proj"),
          format!("model.layers.{i}.mlp.up_proj"),
        ]
      })
      .collect();
    let m = Mixed::new("mixed_3_6", None, &layers, 16).unwrap();
    assert_eq!(m.layer_location, 2);
    let bits = |p: &str| m.predicate(p).unwrap()["bits"].as_i64().unwrap();
    // python `mixed_quant_predicate_builder("mixed_3_6", ...)` on 16 layers
    // gives 6 bits to down_proj of layers [0, 1, 4, 7, 10, 13, 14, 15]
    let more: Vec<i64> = (0..16)
      .filter(|i| bits(&format!("model.layers.{i}.mlp.down_proj")) == 6)
      .collect();
    assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
    assert_eq!(bits("model.layers.4.mlp.up_proj"), 3);
    assert_eq!(bits("lm_head"), 6);
    assert_eq!(bits("model.embed_tokens"), 3);
    assert!(m.predicate("model.layers.4.mlp.up_proj").unwrap()["group_size"].is_null());
    assert!(Mixed::new("mixed_3_6", None, &["a.q_proj".to_string()], 2).is_err());
  }

  #[test]
  fn dict_params_take_mode_defaults() {
    let p = params_from_dict(
      &json!({"group_size": null, "bits": 3, "mode": "affine"}),
      "x",
    )
    .unwrap();
    assert_eq!((p.group_size, p.bits, p.mode.as_str()), (64, 3, "affine"));
    let p = params_from_dict(&json!({"group_size": 64, "bits": 8}), "x").unwrap();
    assert_eq!((p.group_size, p.bits, p.mode.as_str()), (64, 8, "affine"));
    assert!(params_from_dict(&json!({"bits": 7}), "x").is_err());
  }
}
