//! Encoder architectures: token ids in, last hidden states `[B, T, H]` out
//! (python `AutoModel.from_pretrained(path)(**features).last_hidden_state`).
//!
//! One short file per family; [`load_encoder`] picks it from
//! `config.json`'s `model_type`.

use std::path::Path;

use mlxrs_core::Array;

use crate::config::JsonConfig;
use crate::error::{Error, Result};
use crate::tokenize::PaddedBatch;
use crate::weights::Weights;

pub mod bert;
pub mod gemma3;
pub mod modernbert;
pub mod nomic_bert;
pub mod qwen3;

/// `model_type`s of `config.json` that mlxrs-embed implements.
pub const SUPPORTED: &[&str] = &[
  "bert",
  "roberta",
  "xlm-roberta",
  "camembert",
  "modernbert",
  "nomic_bert",
  "qwen3",
  "gemma3_text",
];

/// What an encoder gets for one padded batch.
pub struct ModelInput<'a> {
  /// `[B, T]` int32 token ids (padding holds the pad id).
  pub ids: &'a Array,
  /// `[B, T]` int32 segment ids.
  pub type_ids: &'a Array,
  /// `[B, T]` int32 attention mask (1 = real token).
  pub mask: &'a Array,
  /// The same ids on the host (row-major), for position ids computed from
  /// them (RoBERTa).
  pub host_ids: &'a [i32],
  /// Rows.
  pub batch: usize,
  /// Padded length.
  pub seq: usize,
}

/// A transformer encoder.
pub trait Encoder: Send {
  /// Last hidden states `[B, T, hidden]` (float32).
  fn forward(&self, input: &ModelInput<'_>) -> Result<Array>;
  /// Hidden width.
  fn hidden_size(&self) -> usize;
  /// The longest input its position encoding allows (learned absolute
  /// positions), `None` when unbounded (rotary).
  fn max_positions(&self) -> Option<usize>;
  /// The `model_type` it implements.
  fn model_type(&self) -> &str;
  /// The pad token id of `config.json`, if any.
  fn pad_token_id(&self) -> Option<u32>;
}

/// Run `encoder` on a padded batch: last hidden states `[B, T, hidden]`.
pub fn run_batch(encoder: &dyn Encoder, batch: &PaddedBatch) -> Result<Array> {
  let shape = [batch.batch as i32, batch.seq as i32];
  let ids = Array::from_slice(&batch.ids, &shape)?;
  let type_ids = Array::from_slice(&batch.type_ids, &shape)?;
  let mask = Array::from_slice(&batch.mask, &shape)?;
  let input = ModelInput {
    ids: &ids,
    type_ids: &type_ids,
    mask: &mask,
    host_ids: &batch.ids,
    batch: batch.batch,
    seq: batch.seq,
  };
  encoder.forward(&input)
}

/// Read `dir/config.json` and build the encoder it describes from
/// `dir`'s weights.
pub fn load_encoder(dir: &Path) -> Result<Box<dyn Encoder>> {
  let cfg_path = dir.join("config.json");
  if !cfg_path.is_file() {
    return Err(Error::folder(
      dir,
      "no config.json (not a transformers model folder)",
    ));
  }
  let cfg = JsonConfig::load(&cfg_path)?;
  let model_type = cfg
    .opt_str(&["model_type"])?
    .ok_or_else(|| cfg.invalid("model_type", "missing"))?
    .to_string();
  if !SUPPORTED.contains(&model_type.as_str()) {
    return Err(Error::UnsupportedArchitecture {
      path: cfg_path,
      model_type,
    });
  }
  let mut w = Weights::load_dir(dir)?;
  Ok(match model_type.as_str() {
    "bert" | "roberta" | "xlm-roberta" | "camembert" => Box::new(bert::Bert::load(&cfg, &mut w)?),
    "modernbert" => Box::new(modernbert::ModernBert::load(&cfg, &mut w)?),
    "nomic_bert" => Box::new(nomic_bert::NomicBert::load(&cfg, &mut w)?),
    "qwen3" => Box::new(qwen3::Qwen3::load(&cfg, &mut w)?),
    "gemma3_text" => Box::new(gemma3::Gemma3::load(&cfg, &mut w)?),
    _ => unreachable!("checked against SUPPORTED"),
  })
}

/// `hidden_act`-style field parsed into an activation.
pub(crate) fn activation(
  cfg: &JsonConfig,
  names: &[&str],
  default: &str,
) -> Result<crate::layers::Activation> {
  let name = cfg.str_or(names, default)?;
  crate::layers::Activation::parse(name)
    .ok_or_else(|| cfg.invalid(names[0], format!("unsupported activation {name:?}")))
}

/// The RoPE theta of `rope_parameters` (transformers >= 5, optionally per
/// layer type) or the legacy field names, plus the position scale of a
/// `linear` rope type.
pub(crate) fn rope_theta(
  cfg: &JsonConfig,
  layer_type: Option<&str>,
  legacy: &[&str],
  default: f64,
) -> Result<(f32, f32)> {
  let base = match layer_type {
    Some(t) if cfg.get(&format!("rope_parameters.{t}")).is_some() => format!("rope_parameters.{t}"),
    _ => "rope_parameters".to_string(),
  };
  let theta_key = format!("{base}.rope_theta");
  let mut names: Vec<&str> = vec![theta_key.as_str()];
  names.extend_from_slice(legacy);
  let theta = cfg.f64_or(&names, default)?;
  let type_key = format!("{base}.rope_type");
  let legacy_type = "rope_scaling.rope_type";
  let legacy_type2 = "rope_scaling.type";
  let rope_type = cfg.str_or(&[type_key.as_str(), legacy_type, legacy_type2], "default")?;
  let scale = match rope_type {
    "default" => 1.0,
    "linear" => {
      let fk = format!("{base}.factor");
      let factor = cfg.f64_or(&[fk.as_str(), "rope_scaling.factor"], 1.0)?;
      if factor <= 0.0 {
        return Err(cfg.invalid(&fk, "must be positive"));
      }
      (1.0 / factor) as f32
    }
    other => {
      return Err(cfg.invalid(
        &type_key,
        format!("unsupported rope type {other:?} (default and linear are)"),
      ));
    }
  };
  Ok((theta as f32, scale))
}

/// `hidden_size / num_attention_heads`, or `head_dim` when given.
pub(crate) fn head_dim(cfg: &JsonConfig, hidden: usize, heads: usize) -> Result<usize> {
  match cfg.opt_usize(&["head_dim"])? {
    Some(d) if d > 0 => Ok(d),
    _ => {
      if hidden % heads != 0 {
        return Err(cfg.invalid(
          "num_attention_heads",
          format!("hidden size {hidden} is not a multiple of {heads} heads"),
        ));
      }
      Ok(hidden / heads)
    }
  }
}

/// Layer types (`"full_attention"` / `"sliding_attention"`): `layer_types`
/// when present, else `sliding(i)` per layer.
pub(crate) fn layer_types(
  cfg: &JsonConfig,
  n: usize,
  sliding: impl Fn(usize) -> bool,
) -> Result<Vec<bool>> {
  match cfg.opt_str_list("layer_types")? {
    Some(list) => {
      if list.len() != n {
        return Err(cfg.invalid(
          "layer_types",
          format!("{} entries for {n} layers", list.len()),
        ));
      }
      list
        .iter()
        .map(|t| match t.as_str() {
          "full_attention" => Ok(false),
          "sliding_attention" => Ok(true),
          other => Err(cfg.invalid("layer_types", format!("unknown layer type {other:?}"))),
        })
        .collect()
    }
    None => Ok((0..n).map(sliding).collect()),
  }
}
