//! A checkpoint folder's `config.json` and `generation_config.json`, as
//! mlx-lm's `mlx_lm.utils.load_config` / `load_model` read them.
//!
//! [`ModelConfig`] keeps the raw JSON (each model deserializes its own args
//! struct from it with [`ModelConfig::args`], like mlx-lm's
//! `ModelArgs.from_dict`) and offers typed accessors for the fields the
//! pipeline itself needs. VLM-style checkpoints nest the language model's
//! fields under `text_config`; the accessors and [`ModelConfig::text_config`]
//! look there first, as mlx-lm's models merge it (`{**config,
//! **config["text_config"]}`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, Result, read_json};

/// File name of the model configuration.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the generation defaults.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// File name of NVIDIA ModelOpt's separate quantization metadata.
pub const HF_QUANT_CONFIG_FILE: &str = "hf_quant_config.json";

// ---------------------------------------------------------------------------
// Value helpers shared by the config readers.

/// transformers' tag for non-finite floats (`{"__float__": "Infinity"}`),
/// decoded as mlx-lm's `_decode_tagged_floats` does.
fn tagged_float(v: &Value) -> Option<f64> {
  let obj = v.as_object()?;
  if obj.len() != 1 {
    return None;
  }
  match obj.get("__float__")?.as_str()? {
    "Infinity" => Some(f64::INFINITY),
    "-Infinity" => Some(f64::NEG_INFINITY),
    "NaN" => Some(f64::NAN),
    _ => None,
  }
}

fn kind(v: &Value) -> &'static str {
  match v {
    Value::Null => "null",
    Value::Bool(_) => "a boolean",
    Value::Number(_) => "a number",
    Value::String(_) => "a string",
    Value::Array(_) => "a list",
    Value::Object(_) => "an object",
  }
}

pub(crate) fn value_usize(path: &Path, field: &str, v: &Value) -> Result<usize> {
  v.as_u64()
    .and_then(|n| usize::try_from(n).ok())
    .ok_or_else(|| {
      Error::config(
        path,
        field,
        format!("expected a non-negative integer, got {v}"),
      )
    })
}

pub(crate) fn value_u32(path: &Path, field: &str, v: &Value) -> Result<u32> {
  v.as_u64()
    .and_then(|n| u32::try_from(n).ok())
    .ok_or_else(|| {
      Error::config(
        path,
        field,
        format!("expected a token id (0..2^32), got {v}"),
      )
    })
}

pub(crate) fn value_f64(path: &Path, field: &str, v: &Value) -> Result<f64> {
  v.as_f64()
    .or_else(|| tagged_float(v))
    .ok_or_else(|| Error::config(path, field, format!("expected a number, got {}", kind(v))))
}

pub(crate) fn value_bool(path: &Path, field: &str, v: &Value) -> Result<bool> {
  v.as_bool()
    .ok_or_else(|| Error::config(path, field, format!("expected a boolean, got {}", kind(v))))
}

pub(crate) fn value_str<'a>(path: &Path, field: &str, v: &'a Value) -> Result<&'a str> {
  v.as_str()
    .ok_or_else(|| Error::config(path, field, format!("expected a string, got {}", kind(v))))
}

/// An `eos_token_id`-style field: one id, a list of ids, or null (none).
pub(crate) fn value_token_ids(path: &Path, field: &str, v: &Value) -> Result<Vec<u32>> {
  match v {
    Value::Null => Ok(Vec::new()),
    Value::Array(items) => items
      .iter()
      .enumerate()
      .map(|(i, item)| value_u32(path, &format!("{field}[{i}]"), item))
      .collect(),
    _ => Ok(vec![value_u32(path, field, v)?]),
  }
}

/// Python truthiness of a JSON value (`if value:`), used where mlx-lm tests
/// a config value with the walrus operator.
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

fn as_object<'a>(path: &Path, field: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
  v.as_object()
    .ok_or_else(|| Error::config(path, field, format!("expected an object, got {}", kind(v))))
}

// ---------------------------------------------------------------------------
// Quantization.

pub use mlxrs_nn::{QuantMode, QuantParams};

/// A per-layer entry of the `quantization` block, keyed by module path
/// (`model.layers.0.mlp.gate_proj`), as mlx-lm's `class_predicate` returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerQuantization {
  /// `false`: keep this layer unquantized.
  Skip,
  /// `true`: quantize with the block's default parameters.
  Default,
  /// An object: quantize with these parameters (fields it leaves out take
  /// MLX's defaults for its mode, as `to_quantized(**params)` does).
  Params(QuantParams),
}

/// Where a [`Quantization`] was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantSource {
  /// mlx-lm's own `quantization` block (or an mlx-vlm style
  /// `quantization_config` without `quant_method`).
  Mlx,
  /// A Hugging Face `quantization_config` (or `hf_quant_config.json`) whose
  /// `quant_method` maps to an MLX mode. `awq` / `gptq` weights still need
  /// repacking (mlx-lm's `_transform_awq_weights`).
  Hf {
    /// The `quant_method` (`mxfp4`, `mxfp8`, `fp8`, `compressed-tensors`,
    /// `modelopt`, `awq`, `gptq`).
    quant_method: String,
  },
}

/// A checkpoint's quantization, as mlx-lm's `load_model` passes it to
/// `nn.quantize`.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantization {
  /// The default parameters (`group_size`, `bits`, `mode`).
  pub default: QuantParams,
  /// Per-layer overrides keyed by module path.
  pub layers: BTreeMap<String, LayerQuantization>,
  /// Where the block came from.
  pub source: QuantSource,
}

impl Quantization {
  /// The override for module `path`, if the block names it. Layers it does
  /// not name are quantized when the weights hold `{path}.scales` (mlx-lm
  /// then infers their parameters from the tensor shapes).
  pub fn layer(&self, path: &str) -> Option<LayerQuantization> {
    self.layers.get(path).copied()
  }

  /// The parameters module `path` is quantized with when its weights are
  /// quantized: its override, else the default. `None` when the block
  /// says to skip it.
  pub fn params_for(&self, path: &str) -> Option<QuantParams> {
    match self.layer(path) {
      Some(LayerQuantization::Skip) => None,
      Some(LayerQuantization::Params(p)) => Some(p),
      Some(LayerQuantization::Default) | None => Some(self.default),
    }
  }

  fn fixed(group_size: i32, bits: i32, mode: QuantMode, quant_method: &str) -> Self {
    Quantization {
      default: QuantParams {
        group_size,
        bits,
        mode,
      },
      layers: BTreeMap::new(),
      source: QuantSource::Hf {
        quant_method: quant_method.to_string(),
      },
    }
  }
}

fn parse_mode(path: &Path, field: &str, v: Option<&Value>) -> Result<QuantMode> {
  match v {
    None | Some(Value::Null) => Ok(QuantMode::Affine),
    Some(v) => {
      let name = value_str(path, field, v)?;
      QuantMode::parse(name).ok_or_else(|| {
        let valid: Vec<_> = QuantMode::ALL.iter().map(|m| m.as_str()).collect();
        Error::config(
          path,
          field,
          format!(
            "unknown quantization mode `{name}` (valid: {})",
            valid.join(", ")
          ),
        )
      })
    }
  }
}

fn positive_i32(path: &Path, field: &str, v: &Value) -> Result<i32> {
  match v.as_u64().and_then(|n| i32::try_from(n).ok()) {
    Some(n) if n > 0 => Ok(n),
    _ => Err(Error::config(
      path,
      field,
      format!("expected a positive integer, got {v}"),
    )),
  }
}

/// Parse mlx-lm's `quantization` block at `field` of `path`.
fn parse_mlx_quantization(path: &Path, field: &str, block: &Value) -> Result<Quantization> {
  let obj = as_object(path, field, block)?;
  let mode = parse_mode(path, &format!("{field}.mode"), obj.get("mode"))?;
  let get = |key: &str| -> Result<i32> {
    let f = format!("{field}.{key}");
    let v = obj
      .get(key)
      .ok_or_else(|| Error::config(path, &f, "missing"))?;
    positive_i32(path, &f, v)
  };
  let default = QuantParams {
    group_size: get("group_size")?,
    bits: get("bits")?,
    mode,
  };
  let mut layers = BTreeMap::new();
  for (key, v) in obj {
    let f = format!("{field}.{key}");
    let entry = match v {
      Value::Bool(false) => LayerQuantization::Skip,
      Value::Bool(true) => LayerQuantization::Default,
      Value::Object(o) => {
        let mode = parse_mode(path, &format!("{f}.mode"), o.get("mode"))?;
        let (dg, db) = mode.defaults();
        let opt = |k: &str, d: i32| -> Result<i32> {
          match o.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(v) => positive_i32(path, &format!("{f}.{k}"), v),
          }
        };
        LayerQuantization::Params(QuantParams {
          group_size: opt("group_size", dg)?,
          bits: opt("bits", db)?,
          mode,
        })
      }
      // `group_size`, `bits`, `mode` and other scalar settings.
      _ => continue,
    };
    layers.insert(key.clone(), entry);
  }
  Ok(Quantization {
    default,
    layers,
    source: QuantSource::Mlx,
  })
}

/// Map a Hugging Face `quantization_config` to MLX parameters, as mlx-lm's
/// `load_model` does for its "legacy" quantization configs. `Ok(None)` for
/// methods that have no MLX packed form (e.g. `bitnet`, block-scaled `fp8`,
/// which models dequantize in their `sanitize`).
fn parse_hf_quantization(path: &Path, field: &str, qc: &Value) -> Result<Option<Quantization>> {
  let obj = as_object(path, field, qc)?;
  let Some(method) = obj.get("quant_method") else {
    // mlx-vlm writes its own block as `quantization_config` too.
    if obj.contains_key("group_size") && obj.contains_key("bits") {
      return parse_mlx_quantization(path, field, qc).map(Some);
    }
    return Err(Error::config(
      path,
      format!("{field}.quant_method"),
      "missing",
    ));
  };
  let method = value_str(path, &format!("{field}.quant_method"), method)?;
  let q = match method {
    "mxfp4" => Quantization::fixed(32, 4, QuantMode::Mxfp4, method),
    "mxfp8" => Quantization::fixed(32, 8, QuantMode::Mxfp8, method),
    "fp8" => {
      let ue8m0 = obj.get("scale_fmt").and_then(Value::as_str) == Some("ue8m0");
      let block = obj.get("weight_block_size").and_then(Value::as_array);
      let b32 = block.is_some_and(|b| b.len() == 2 && b.iter().all(|x| x.as_u64() == Some(32)));
      if !(ue8m0 && b32) {
        return Ok(None);
      }
      Quantization::fixed(32, 8, QuantMode::Mxfp8, method)
    }
    "compressed-tensors" => {
      let f = format!("{field}.format");
      match obj.get("format").and_then(Value::as_str) {
        Some("nvfp4-pack-quantized") => Quantization::fixed(16, 4, QuantMode::Nvfp4, method),
        Some("mxfp4-pack-quantized") => Quantization::fixed(32, 4, QuantMode::Mxfp4, method),
        Some("pack-quantized") => Quantization::fixed(32, 4, QuantMode::Affine, method),
        other => {
          return Err(Error::config(
            path,
            f,
            format!(
              "unsupported compressed-tensors format {other:?}; dequantize to bf16 before converting"
            ),
          ));
        }
      }
    }
    "modelopt" => {
      let settings = obj.get("quantization").unwrap_or(qc);
      let sf = if obj.contains_key("quantization") {
        format!("{field}.quantization")
      } else {
        field.to_string()
      };
      let algo = settings.get("quant_algo").and_then(Value::as_str);
      if algo != Some("NVFP4") {
        return Err(Error::config(
          path,
          format!("{sf}.quant_algo"),
          format!("unsupported modelopt quant_algo {algo:?}"),
        ));
      }
      let gs = match settings.get("group_size") {
        None | Some(Value::Null) => 16,
        Some(v) => positive_i32(path, &format!("{sf}.group_size"), v)?,
      };
      Quantization::fixed(gs, 4, QuantMode::Nvfp4, method)
    }
    "awq" | "gptq" => {
      let bits = match obj.get("bits") {
        None | Some(Value::Null) => 4,
        Some(v) => positive_i32(path, &format!("{field}.bits"), v)?,
      };
      if bits != 4 {
        return Err(Error::config(
          path,
          format!("{field}.bits"),
          format!("only 4-bit AWQ/GPTQ is supported, got {bits}"),
        ));
      }
      let gs = match obj.get("group_size") {
        None | Some(Value::Null) => 128,
        Some(v) => positive_i32(path, &format!("{field}.group_size"), v)?,
      };
      Quantization::fixed(gs, 4, QuantMode::Affine, method)
    }
    _ => return Ok(None),
  };
  Ok(Some(q))
}

// ---------------------------------------------------------------------------
// generation_config.json

/// A checkpoint's `generation_config.json` (transformers'
/// `GenerationConfig`): EOS ids and sampling defaults.
#[derive(Clone, Debug)]
pub struct GenerationConfig {
  path: PathBuf,
  raw: Value,
}

macro_rules! opt_accessors {
  ($( $(#[$doc:meta])* $name:ident : $ty:ty = $conv:ident ),* $(,)?) => {
    $(
      $(#[$doc])*
      pub fn $name(&self) -> Result<Option<$ty>> {
        self.opt(stringify!($name), $conv)
      }
    )*
  };
}

impl GenerationConfig {
  /// Read `generation_config.json` from `dir`; `Ok(None)` when the file is
  /// absent.
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
    let path = dir.as_ref().join(GENERATION_CONFIG_FILE);
    if !path.is_file() {
      return Ok(None);
    }
    Self::from_file(path).map(Some)
  }

  /// Read a generation config file.
  pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
    let path = path.as_ref();
    let raw = read_json(path)?;
    Self::from_value(path, raw)
  }

  /// Wrap already-parsed JSON read from `path` (which must be an object).
  pub fn from_value(path: impl AsRef<Path>, raw: Value) -> Result<Self> {
    let path = path.as_ref().to_path_buf();
    as_object(&path, "<root>", &raw)?;
    Ok(GenerationConfig { path, raw })
  }

  /// The file this was read from.
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// The raw JSON object.
  pub fn raw(&self) -> &Value {
    &self.raw
  }

  fn opt<T>(&self, field: &str, conv: fn(&Path, &str, &Value) -> Result<T>) -> Result<Option<T>> {
    match self.raw.get(field) {
      None | Some(Value::Null) => Ok(None),
      Some(v) => conv(&self.path, field, v).map(Some),
    }
  }

  /// `eos_token_id` (one id or a list); empty when absent.
  pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
    match self.raw.get("eos_token_id") {
      None => Ok(Vec::new()),
      Some(v) => value_token_ids(&self.path, "eos_token_id", v),
    }
  }

  opt_accessors! {
    /// `bos_token_id`.
    bos_token_id: u32 = value_u32,
    /// `pad_token_id`.
    pad_token_id: u32 = value_u32,
    /// `temperature`.
    temperature: f64 = value_f64,
    /// `top_p`.
    top_p: f64 = value_f64,
    /// `top_k`.
    top_k: usize = value_usize,
    /// `min_p`.
    min_p: f64 = value_f64,
    /// `repetition_penalty`.
    repetition_penalty: f64 = value_f64,
    /// `do_sample`.
    do_sample: bool = value_bool,
    /// `max_new_tokens`.
    max_new_tokens: usize = value_usize,
    /// `max_length`.
    max_length: usize = value_usize,
  }
}

// ---------------------------------------------------------------------------
// config.json

/// A checkpoint's `config.json` (plus, when read with [`ModelConfig::from_dir`],
/// its `generation_config.json` and `hf_quant_config.json`).
#[derive(Clone, Debug)]
pub struct ModelConfig {
  path: PathBuf,
  raw: Value,
  generation: Option<GenerationConfig>,
  hf_quant_config: Option<(PathBuf, Value)>,
}

impl ModelConfig {
  /// Read `config.json` from the checkpoint folder `dir`, with its
  /// `generation_config.json` and `hf_quant_config.json` when present
  /// (`mlx_lm.utils.load_config`).
  pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
    let dir = dir.as_ref();
    let mut cfg = Self::from_file(dir.join(CONFIG_FILE))?;
    cfg.generation = GenerationConfig::from_dir(dir)?;
    let hq = dir.join(HF_QUANT_CONFIG_FILE);
    if hq.is_file() {
      let v = read_json(&hq)?;
      as_object(&hq, "<root>", &v)?;
      cfg.hf_quant_config = Some((hq, v));
    }
    Ok(cfg)
  }

  /// Read one `config.json` file (no generation config).
  pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
    let path = path.as_ref();
    let raw = read_json(path)?;
    Self::from_value(path, raw)
  }

  /// Wrap already-parsed JSON read from `path` (which must be an object).
  pub fn from_value(path: impl AsRef<Path>, raw: Value) -> Result<Self> {
    let path = path.as_ref().to_path_buf();
    as_object(&path, "<root>", &raw)?;
    if let Some(tc) = raw.get("text_config") {
      if !tc.is_null() {
        as_object(&path, "text_config", tc)?;
      }
    }
    Ok(ModelConfig {
      path,
      raw,
      generation: None,
      hf_quant_config: None,
    })
  }

  /// The `config.json` this was read from.
  pub fn path(&self) -> &Path {
    &self.path
  }

  /// The raw JSON object, as written.
  pub fn raw(&self) -> &Value {
    &self.raw
  }

  /// The generation config read alongside, if any.
  pub fn generation_config(&self) -> Option<&GenerationConfig> {
    self.generation.as_ref()
  }

  fn text_obj(&self) -> Option<&Map<String, Value>> {
    self.raw.get("text_config").and_then(Value::as_object)
  }

  /// The value of `field`: `text_config.<field>` first, then the top level,
  /// with the dotted name it was found under.
  fn lookup(&self, field: &str) -> Option<(String, &Value)> {
    if let Some(v) = self.text_obj().and_then(|t| t.get(field)) {
      return Some((format!("text_config.{field}"), v));
    }
    self.raw.get(field).map(|v| (field.to_string(), v))
  }

  /// The raw value of `field` (`text_config` first, then the top level).
  pub fn get(&self, field: &str) -> Option<&Value> {
    self.lookup(field).map(|(_, v)| v)
  }

  fn typed<T>(&self, field: &str, conv: fn(&Path, &str, &Value) -> Result<T>) -> Result<Option<T>> {
    match self.lookup(field) {
      None | Some((_, Value::Null)) => Ok(None),
      Some((name, v)) => conv(&self.path, &name, v).map(Some),
    }
  }

  /// `field` as a non-negative integer; `Ok(None)` when absent or null.
  pub fn get_usize(&self, field: &str) -> Result<Option<usize>> {
    self.typed(field, value_usize)
  }

  /// `field` as a float (accepting transformers' tagged non-finite floats).
  pub fn get_f64(&self, field: &str) -> Result<Option<f64>> {
    self.typed(field, value_f64)
  }

  /// `field` as a boolean.
  pub fn get_bool(&self, field: &str) -> Result<Option<bool>> {
    self.typed(field, value_bool)
  }

  /// `field` as a string.
  pub fn get_str(&self, field: &str) -> Result<Option<&str>> {
    match self.lookup(field) {
      None | Some((_, Value::Null)) => Ok(None),
      Some((name, v)) => value_str(&self.path, &name, v).map(Some),
    }
  }

  /// `field` as a non-negative integer, or an error naming the file and
  /// field when it is absent.
  pub fn require_usize(&self, field: &str) -> Result<usize> {
    self
      .get_usize(field)?
      .ok_or_else(|| Error::config(&self.path, field, "missing"))
  }

  /// `model_type`, which selects the architecture (mlx-lm's `_get_classes`).
  /// The top-level value wins; checkpoints that only name it under
  /// `text_config` use that one.
  pub fn model_type(&self) -> Result<&str> {
    if let Some(v) = self.raw.get("model_type") {
      return value_str(&self.path, "model_type", v);
    }
    match self.text_obj().and_then(|t| t.get("model_type")) {
      Some(v) => value_str(&self.path, "text_config.model_type", v),
      None => Err(Error::config(
        &self.path,
        "model_type",
        "missing (the checkpoint's architecture cannot be chosen)",
      )),
    }
  }

  /// `text_config.model_type` (e.g. `gemma3_text` under a `gemma3` config).
  pub fn text_model_type(&self) -> Option<&str> {
    self
      .text_obj()
      .and_then(|t| t.get("model_type"))
      .and_then(Value::as_str)
  }

  /// `architectures` (e.g. `["LlamaForCausalLM"]`); a bare string counts as
  /// one entry, as mlx-lm accepts.
  pub fn architectures(&self) -> Result<Vec<String>> {
    match self.raw.get("architectures") {
      None | Some(Value::Null) => Ok(Vec::new()),
      Some(Value::String(s)) => Ok(vec![s.clone()]),
      Some(Value::Array(a)) => a
        .iter()
        .enumerate()
        .map(|(i, v)| value_str(&self.path, &format!("architectures[{i}]"), v).map(str::to_string))
        .collect(),
      Some(v) => Err(Error::config(
        &self.path,
        "architectures",
        format!("expected a list of strings, got {}", kind(v)),
      )),
    }
  }

  /// The language model's fields: the top level, overridden by
  /// `text_config` when present (as mlx-lm's VLM-style `ModelArgs.from_dict`
  /// merges them), keeping the top-level `model_type`. `text_config` itself
  /// is dropped from the merged object.
  pub fn text_config(&self) -> Value {
    let mut merged = self.raw.as_object().cloned().unwrap_or_default();
    let top_type = merged.get("model_type").cloned();
    if let Some(tc) = merged.remove("text_config") {
      if let Value::Object(tc) = tc {
        for (k, v) in tc {
          merged.insert(k, v);
        }
      }
      if let Some(t) = top_type {
        merged.insert("model_type".into(), t);
      }
    }
    Value::Object(merged)
  }

  /// Deserialize a model's args struct from [`ModelConfig::text_config`]
  /// (mlx-lm's `ModelArgs.from_dict`: unknown fields are ignored unless the
  /// struct denies them). Errors name the file and the offending field.
  pub fn args<T: DeserializeOwned>(&self) -> Result<T> {
    let merged = self.text_config();
    serde_path_to_error::deserialize(merged).map_err(|e| {
      let field = e.path().to_string();
      let field = if field == "." {
        "<root>".to_string()
      } else {
        field
      };
      Error::config(&self.path, field, e.into_inner().to_string())
    })
  }

  /// EOS ids as mlx-lm's `load_config` leaves `config["eos_token_id"]`:
  /// `generation_config.json`'s when it is set (and truthy), else
  /// `config.json`'s (top level, then `text_config`). Empty when neither
  /// names any.
  pub fn eos_token_ids(&self) -> Result<Vec<u32>> {
    if let Some(g) = &self.generation {
      if let Some(v) = g.raw.get("eos_token_id") {
        if truthy(v) {
          return value_token_ids(&g.path, "eos_token_id", v);
        }
      }
    }
    let found = match self.raw.get("eos_token_id") {
      Some(v) => Some(("eos_token_id".to_string(), v)),
      None => self
        .text_obj()
        .and_then(|t| t.get("eos_token_id"))
        .map(|v| ("text_config.eos_token_id".to_string(), v)),
    };
    match found {
      None => Ok(Vec::new()),
      Some((name, v)) => value_token_ids(&self.path, &name, v),
    }
  }

  /// `bos_token_id`.
  pub fn bos_token_id(&self) -> Result<Option<u32>> {
    self.typed("bos_token_id", value_u32)
  }

  /// `hidden_size`.
  pub fn hidden_size(&self) -> Result<Option<usize>> {
    self.get_usize("hidden_size")
  }

  /// `num_hidden_layers`.
  pub fn num_hidden_layers(&self) -> Result<Option<usize>> {
    self.get_usize("num_hidden_layers")
  }

  /// `intermediate_size`.
  pub fn intermediate_size(&self) -> Result<Option<usize>> {
    self.get_usize("intermediate_size")
  }

  /// `num_attention_heads`.
  pub fn num_attention_heads(&self) -> Result<Option<usize>> {
    self.get_usize("num_attention_heads")
  }

  /// `num_key_value_heads`, defaulting to `num_attention_heads` as most
  /// mlx-lm models do.
  pub fn num_key_value_heads(&self) -> Result<Option<usize>> {
    match self.get_usize("num_key_value_heads")? {
      Some(n) => Ok(Some(n)),
      None => self.num_attention_heads(),
    }
  }

  /// `head_dim`, defaulting to `hidden_size / num_attention_heads`.
  pub fn head_dim(&self) -> Result<Option<usize>> {
    if let Some(d) = self.get_usize("head_dim")? {
      return Ok(Some(d));
    }
    match (self.hidden_size()?, self.num_attention_heads()?) {
      (Some(h), Some(n)) if n > 0 => Ok(Some(h / n)),
      _ => Ok(None),
    }
  }

  /// `vocab_size`.
  pub fn vocab_size(&self) -> Result<Option<usize>> {
    self.get_usize("vocab_size")
  }

  /// `max_position_embeddings`.
  pub fn max_position_embeddings(&self) -> Result<Option<usize>> {
    // GPT-2 / GPT-BigCode size their learned position table by
    // `n_positions` (transformers' `attribute_map` maps
    // `max_position_embeddings` to it): the smaller bound wins.
    let a = self.get_usize("max_position_embeddings")?;
    let b = self.get_usize("n_positions")?;
    Ok(match (a, b) {
      (Some(a), Some(b)) => Some(a.min(b)),
      (a, b) => a.or(b),
    })
  }

  /// `rms_norm_eps`.
  pub fn rms_norm_eps(&self) -> Result<Option<f64>> {
    self.get_f64("rms_norm_eps")
  }

  /// `rope_theta` (also read from `rope_parameters.rope_theta`, where newer
  /// transformers configs keep it).
  pub fn rope_theta(&self) -> Result<Option<f64>> {
    if let Some(t) = self.get_f64("rope_theta")? {
      return Ok(Some(t));
    }
    match self.lookup("rope_parameters") {
      Some((name, Value::Object(o))) => match o.get("rope_theta") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => value_f64(&self.path, &format!("{name}.rope_theta"), v).map(Some),
      },
      _ => Ok(None),
    }
  }

  /// `tie_word_embeddings` (absent: `None`, each model has its own default).
  pub fn tie_word_embeddings(&self) -> Result<Option<bool>> {
    self.get_bool("tie_word_embeddings")
  }

  /// The raw Hugging Face `quantization_config` (top level, then
  /// `text_config`, then `hf_quant_config.json`), for loaders that handle
  /// methods without an MLX packed form.
  pub fn quantization_config(&self) -> Option<(&Path, &Value)> {
    if let Some(v) = self.raw.get("quantization_config") {
      return Some((&self.path, v));
    }
    if let Some(v) = self.text_obj().and_then(|t| t.get("quantization_config")) {
      return Some((&self.path, v));
    }
    self.hf_quant_config.as_ref().map(|(p, v)| (p.as_path(), v))
  }

  /// `quant_method` of the Hugging Face quantization config, if any.
  pub fn quant_method(&self) -> Option<&str> {
    self
      .quantization_config()
      .and_then(|(_, v)| v.get("quant_method"))
      .and_then(Value::as_str)
  }

  /// The checkpoint's quantization, as mlx-lm's `load_model` reads it:
  /// the `quantization` block (default `group_size` / `bits` / `mode` plus
  /// per-layer overrides keyed by module path), else a Hugging Face
  /// `quantization_config` whose `quant_method` maps to an MLX mode.
  /// `Ok(None)` for an unquantized checkpoint (or a method with no MLX
  /// packed form; see [`ModelConfig::quant_method`]).
  pub fn quantization(&self) -> Result<Option<Quantization>> {
    if let Some(q) = self.raw.get("quantization") {
      if !q.is_null() {
        return parse_mlx_quantization(&self.path, "quantization", q).map(Some);
      }
    }
    if let Some(q) = self.text_obj().and_then(|t| t.get("quantization")) {
      if !q.is_null() {
        return parse_mlx_quantization(&self.path, "text_config.quantization", q).map(Some);
      }
    }
    let field = if self.raw.get("quantization_config").is_some() {
      "quantization_config"
    } else if self
      .text_obj()
      .is_some_and(|t| t.contains_key("quantization_config"))
    {
      "text_config.quantization_config"
    } else {
      "<root>"
    };
    match self.quantization_config() {
      None | Some((_, Value::Null)) => Ok(None),
      Some((path, v)) if truthy(v) => parse_hf_quantization(path, field, v),
      Some(_) => Ok(None),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  fn cfg(v: Value) -> ModelConfig {
    ModelConfig::from_value("m/config.json", v).unwrap()
  }

  #[test]
  fn text_config_fields_win_and_model_type_stays() {
    let c = cfg(json!({
      "model_type": "gemma3", "vocab_size": 10,
      "text_config": {"model_type": "gemma3_text", "hidden_size": 8, "vocab_size": 12}
    }));
    assert_eq!(c.model_type().unwrap(), "gemma3");
    assert_eq!(c.text_model_type(), Some("gemma3_text"));
    assert_eq!(c.hidden_size().unwrap(), Some(8));
    assert_eq!(c.vocab_size().unwrap(), Some(12));
    let m = c.text_config();
    assert_eq!(m["model_type"], "gemma3");
    assert_eq!(m["hidden_size"], 8);
    assert!(m.get("text_config").is_none());
  }

  #[test]
  fn model_type_only_in_text_config() {
    let c = cfg(json!({"text_config": {"model_type": "llama"}}));
    assert_eq!(c.model_type().unwrap(), "llama");
  }

  #[test]
  fn missing_model_type_names_file_and_field() {
    let e = cfg(json!({"hidden_size": 4}))
      .model_type()
      .unwrap_err()
      .to_string();
    assert!(
      e.contains("m/config.json") && e.contains("`model_type`"),
      "{e}"
    );
  }

  #[test]
  fn wrong_type_names_text_config_field() {
    let c = cfg(json!({"text_config": {"hidden_size": "big"}}));
    let e = c.hidden_size().unwrap_err().to_string();
    assert!(e.contains("text_config.hidden_size"), "{e}");
  }

  #[test]
  fn derived_defaults() {
    let c = cfg(
      json!({"hidden_size": 64, "num_attention_heads": 4, "rope_parameters": {"rope_theta": 1e6}}),
    );
    assert_eq!(c.num_key_value_heads().unwrap(), Some(4));
    assert_eq!(c.head_dim().unwrap(), Some(16));
    assert_eq!(c.rope_theta().unwrap(), Some(1e6));
  }

  #[test]
  fn tagged_floats() {
    let c = cfg(json!({"x": {"__float__": "-Infinity"}}));
    assert_eq!(c.get_f64("x").unwrap(), Some(f64::NEG_INFINITY));
  }

  #[test]
  fn eos_int_or_list() {
    assert_eq!(
      cfg(json!({"eos_token_id": 2})).eos_token_ids().unwrap(),
      vec![2]
    );
    assert_eq!(
      cfg(json!({"eos_token_id": [1, 7]}))
        .eos_token_ids()
        .unwrap(),
      vec![1, 7]
    );
    assert_eq!(
      cfg(json!({"eos_token_id": null})).eos_token_ids().unwrap(),
      Vec::<u32>::new()
    );
    let e = cfg(json!({"eos_token_id": [1, "x"]}))
      .eos_token_ids()
      .unwrap_err()
      .to_string();
    assert!(e.contains("eos_token_id[1]"), "{e}");
  }

  #[test]
  fn generation_eos_overrides_when_truthy() {
    let mut c = cfg(json!({"eos_token_id": 2}));
    c.generation = Some(
      GenerationConfig::from_value("m/generation_config.json", json!({"eos_token_id": [5, 6]}))
        .unwrap(),
    );
    assert_eq!(c.eos_token_ids().unwrap(), vec![5, 6]);
    // `if eos := generation_config.get("eos_token_id", False)` skips 0 / [].
    c.generation = Some(
      GenerationConfig::from_value("m/generation_config.json", json!({"eos_token_id": []}))
        .unwrap(),
    );
    assert_eq!(c.eos_token_ids().unwrap(), vec![2]);
  }

  #[test]
  fn mlx_quantization_with_overrides() {
    let c = cfg(json!({"quantization": {
      "group_size": 64, "bits": 4,
      "model.embed_tokens": {"group_size": 32, "bits": 8},
      "lm_head": false,
      "model.layers.0.mlp.gate_proj": {"bits": 6},
      "model.layers.1.mlp.gate_proj": {"mode": "mxfp4"},
      "model.layers.2.mlp.gate_proj": true
    }}));
    let q = c.quantization().unwrap().unwrap();
    assert_eq!(
      q.default,
      QuantParams {
        group_size: 64,
        bits: 4,
        mode: QuantMode::Affine
      }
    );
    assert_eq!(q.source, QuantSource::Mlx);
    assert_eq!(
      q.params_for("model.embed_tokens"),
      Some(QuantParams {
        group_size: 32,
        bits: 8,
        mode: QuantMode::Affine
      })
    );
    assert_eq!(q.params_for("lm_head"), None);
    assert_eq!(q.layer("lm_head"), Some(LayerQuantization::Skip));
    // Missing fields take MLX's defaults for the layer's mode.
    assert_eq!(
      q.params_for("model.layers.0.mlp.gate_proj")
        .unwrap()
        .group_size,
      64
    );
    assert_eq!(
      q.params_for("model.layers.0.mlp.gate_proj").unwrap().bits,
      6
    );
    assert_eq!(
      q.params_for("model.layers.1.mlp.gate_proj"),
      Some(QuantParams {
        group_size: 32,
        bits: 4,
        mode: QuantMode::Mxfp4
      })
    );
    assert_eq!(
      q.layer("model.layers.2.mlp.gate_proj"),
      Some(LayerQuantization::Default)
    );
    assert_eq!(
      q.params_for("model.layers.9.self_attn.q_proj"),
      Some(q.default)
    );
  }

  #[test]
  fn quantization_errors_name_fields() {
    let e = cfg(json!({"quantization": {"bits": 4}}))
      .quantization()
      .unwrap_err()
      .to_string();
    assert!(e.contains("quantization.group_size"), "{e}");
    let e = cfg(json!({"quantization": {"group_size": 64, "bits": 4, "mode": "int3"}}))
      .quantization()
      .unwrap_err()
      .to_string();
    assert!(e.contains("quantization.mode") && e.contains("int3"), "{e}");
  }

  #[test]
  fn hf_quantization_configs() {
    let q = cfg(json!({"quantization_config": {"quant_method": "mxfp4"}}))
      .quantization()
      .unwrap()
      .unwrap();
    assert_eq!(
      q.default,
      QuantParams {
        group_size: 32,
        bits: 4,
        mode: QuantMode::Mxfp4
      }
    );
    let q = cfg(
      json!({"text_config": {"quantization_config": {"quant_method": "awq", "group_size": 64}}}),
    )
    .quantization()
    .unwrap()
    .unwrap();
    assert_eq!(
      q.default,
      QuantParams {
        group_size: 64,
        bits: 4,
        mode: QuantMode::Affine
      }
    );
    assert_eq!(
      q.source,
      QuantSource::Hf {
        quant_method: "awq".into()
      }
    );
    let c =
      cfg(json!({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}));
    assert!(c.quantization().unwrap().is_none());
    assert_eq!(c.quant_method(), Some("fp8"));
    let q = cfg(json!({"quantization_config": {"quant_method": "fp8", "scale_fmt": "ue8m0", "weight_block_size": [32, 32]}}))
      .quantization()
      .unwrap()
      .unwrap();
    assert_eq!(q.default.mode, QuantMode::Mxfp8);
    let e = cfg(json!({"quantization_config": {"quant_method": "awq", "bits": 8}}))
      .quantization()
      .unwrap_err()
      .to_string();
    assert!(e.contains("quantization_config.bits"), "{e}");
  }

  #[test]
  fn args_errors_name_field() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Args {
      hidden_size: usize,
      rope_scaling: Option<Scaling>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Scaling {
      factor: f64,
    }
    let c = cfg(json!({"hidden_size": 4, "rope_scaling": {"factor": "x"}}));
    let e = c.args::<Args>().unwrap_err().to_string();
    assert!(e.contains("rope_scaling.factor"), "{e}");
    let c = cfg(json!({"model_type": "x"}));
    let e = c.args::<Args>().unwrap_err().to_string();
    assert!(e.contains("hidden_size"), "{e}");
  }
}
