//! Encoder architectures: token ids in, last hidden states `[B, T, H]` out
//! (python `AutoModel.from_pretrained(path)(**features).last_hidden_state`).
//!
//! One short file per family, built from `mlxrs-nn` layers (`Linear`,
//! dense or quantized, `Embedding`, `LayerNorm`, `RmsNorm`, `Rope`) and
//! loaded strictly through [`Module::load`]; [`load_encoder`] picks the
//! family from `config.json`'s `model_type`.

use std::path::Path;

use mlxrs_core::Array;
use mlxrs_nn::Module;

use crate::checkpoint::Checkpoint;
use crate::config::JsonConfig;
use crate::error::{Error, Result};
use crate::tokenize::PaddedBatch;

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

/// A transformer encoder: an `mlxrs-nn` module tree whose parameter paths
/// are the checkpoint's tensor names (below its prefix).
pub trait Encoder: Module + Send {
  /// Tensors below the prefix that checkpoints may carry but the model does
  /// not use (buffers such as `embeddings.position_ids`), matched as
  /// suffixes; any other unknown tensor is a load error.
  fn unused_tensors(&self) -> &'static [&'static str] {
    &[]
  }
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
  let mut ckpt = Checkpoint::read_dir(dir)?.with_quantization(&cfg)?;
  match model_type.as_str() {
    "bert" | "roberta" | "xlm-roberta" | "camembert" => {
      let p = ckpt.prefix_of(bert::ANCHOR)?;
      let enc = bert::Bert::new(&cfg, &ckpt, &p)?;
      load_into(ckpt, &p, enc)
    }
    "modernbert" => {
      let p = ckpt.prefix_of(modernbert::ANCHOR)?;
      load_into(ckpt, &p, modernbert::ModernBert::new(&cfg)?)
    }
    "nomic_bert" => {
      let p = ckpt.prefix_of(nomic_bert::ANCHOR)?;
      nomic_bert::sanitize(ckpt.tensors_mut(), &p)?;
      let enc = nomic_bert::NomicBert::new(&cfg, &ckpt, &p)?;
      load_into(ckpt, &p, enc)
    }
    "qwen3" => {
      let p = ckpt.prefix_of(qwen3::ANCHOR)?;
      load_into(ckpt, &p, qwen3::Qwen3::new(&cfg)?)
    }
    "gemma3_text" => {
      let p = ckpt.prefix_of(gemma3::ANCHOR)?;
      load_into(ckpt, &p, gemma3::Gemma3::new(&cfg)?)
    }
    _ => unreachable!("checked against SUPPORTED"),
  }
}

/// Fill `enc` from the tensors of `ckpt` under `prefix`, strictly (tensors
/// outside the prefix belong to task heads and are not read).
pub(crate) fn load_into<E: Encoder + 'static>(
  ckpt: Checkpoint,
  prefix: &str,
  mut enc: E,
) -> Result<Box<dyn Encoder>> {
  let unused = enc.unused_tensors();
  ckpt.load(&mut [(&mut enc, prefix)], &|k| {
    !mlxrs_nn::path_has_prefix(k, prefix) || unused.iter().any(|u| k.ends_with(u))
  })?;
  Ok(Box::new(enc))
}

/// A config size as an MLX dimension (`i32`), or an error naming the field.
pub(crate) fn dim(cfg: &JsonConfig, field: &str, v: usize) -> Result<i32> {
  i32::try_from(v).map_err(|_| cfg.invalid(field, format!("{v} is too large")))
}

/// `hidden_act`-style field parsed into an activation.
pub(crate) fn activation(
  cfg: &JsonConfig,
  names: &[&str],
  default: &str,
) -> Result<crate::activation::Activation> {
  let name = cfg.str_or(names, default)?;
  crate::activation::Activation::parse(name)
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
