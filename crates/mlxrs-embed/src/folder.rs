//! The sentence-transformers folder format: which modules run after the
//! transformer and how they are configured.
//!
//! Python: `SentenceTransformer(path)` reads `modules.json` and builds each
//! module from its sub-folder (`Transformer`, `Pooling`, `Dense`,
//! `Normalize`); `sentence_bert_config.json` holds `max_seq_length` /
//! `do_lower_case`, `config_sentence_transformers.json` the prompts and the
//! similarity function.
//!
//! A plain transformers checkpoint (no `modules.json`) gets what
//! sentence-transformers gives it: the transformer followed by **mean
//! pooling**, without normalization.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::JsonConfig;
use crate::error::{Error, Result, read_json};

/// One pooling strategy (python `Pooling.POOLING_MODES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
  /// The first non-padding token (python `"cls"`).
  Cls,
  /// Element-wise max over the non-padding tokens (`"max"`).
  Max,
  /// Mean over the non-padding tokens (`"mean"`).
  Mean,
  /// Sum over the non-padding tokens divided by the square root of their
  /// count (`"mean_sqrt_len_tokens"`).
  MeanSqrtLen,
  /// Mean weighted by position 1, 2, 3, ... (`"weightedmean"`).
  WeightedMean,
  /// The last non-padding token (`"lasttoken"`, e.g. Qwen3-Embedding).
  LastToken,
}

impl PoolingMode {
  /// Parse sentence-transformers' name of the mode.
  pub fn parse(s: &str) -> Option<PoolingMode> {
    Some(match s {
      "cls" => PoolingMode::Cls,
      "max" => PoolingMode::Max,
      "mean" => PoolingMode::Mean,
      "mean_sqrt_len_tokens" => PoolingMode::MeanSqrtLen,
      "weightedmean" => PoolingMode::WeightedMean,
      "lasttoken" => PoolingMode::LastToken,
      _ => return None,
    })
  }

  /// sentence-transformers' name of the mode.
  pub fn name(self) -> &'static str {
    match self {
      PoolingMode::Cls => "cls",
      PoolingMode::Max => "max",
      PoolingMode::Mean => "mean",
      PoolingMode::MeanSqrtLen => "mean_sqrt_len_tokens",
      PoolingMode::WeightedMean => "weightedmean",
      PoolingMode::LastToken => "lasttoken",
    }
  }
}

/// The legacy boolean keys of `1_Pooling/config.json`, in the order
/// sentence-transformers concatenates the modes they enable.
const LEGACY_POOLING_KEYS: [(&str, PoolingMode); 6] = [
  ("pooling_mode_cls_token", PoolingMode::Cls),
  ("pooling_mode_max_tokens", PoolingMode::Max),
  ("pooling_mode_mean_tokens", PoolingMode::Mean),
  (
    "pooling_mode_mean_sqrt_len_tokens",
    PoolingMode::MeanSqrtLen,
  ),
  (
    "pooling_mode_weightedmean_tokens",
    PoolingMode::WeightedMean,
  ),
  ("pooling_mode_lasttoken", PoolingMode::LastToken),
];

/// The pooling module (python `sentence_transformers...Pooling`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolingConfig {
  /// Modes whose outputs are concatenated, in order (usually one).
  pub modes: Vec<PoolingMode>,
  /// When `false`, prompt tokens are left out of the pooling (INSTRUCTOR
  /// style); python `include_prompt`.
  pub include_prompt: bool,
  /// The token-embedding width the config declares, if it does.
  pub embedding_dimension: Option<usize>,
}

impl Default for PoolingConfig {
  /// Mean pooling over the prompt and text: what sentence-transformers uses
  /// for a folder without a pooling config.
  fn default() -> Self {
    PoolingConfig {
      modes: vec![PoolingMode::Mean],
      include_prompt: true,
      embedding_dimension: None,
    }
  }
}

impl PoolingConfig {
  /// Parse a `1_Pooling/config.json` (both the `pooling_mode` form of
  /// sentence-transformers >= 5 and the legacy `pooling_mode_*_tokens`
  /// booleans).
  pub fn from_config(c: &JsonConfig) -> Result<PoolingConfig> {
    let mut modes = Vec::new();
    match c.get("pooling_mode") {
      Some(Value::String(s)) => modes.push(parse_mode(c, s)?),
      Some(Value::Array(items)) => {
        for v in items {
          let s = v
            .as_str()
            .ok_or_else(|| c.invalid("pooling_mode", format!("expected mode names, found {v}")))?;
          modes.push(parse_mode(c, s)?);
        }
      }
      Some(v) => {
        return Err(c.invalid(
          "pooling_mode",
          format!("expected a string or a list, got {v}"),
        ));
      }
      None => {
        let mut present = false;
        for (key, mode) in LEGACY_POOLING_KEYS {
          present |= c.get(key).is_some();
          if c.bool_or(&[key], false)? {
            modes.push(mode);
          }
        }
        if present && modes.is_empty() {
          // sentence-transformers' `_convert_legacy_pooling_kwargs` silently
          // mean-pools here; a config that turns every mode off is more
          // likely a mistake than a request for mean pooling.
          return Err(
            c.invalid(
              "pooling_mode_*",
              "no pooling mode is enabled (every pooling_mode_* flag is false); set one to true, \
             e.g. \"pooling_mode_mean_tokens\": true"
                .to_string(),
            ),
          );
        }
      }
    }
    if modes.is_empty() {
      if matches!(c.get("pooling_mode"), Some(Value::Array(_))) {
        return Err(c.invalid(
          "pooling_mode",
          "the list of pooling modes is empty".to_string(),
        ));
      }
      // No pooling keys at all: sentence-transformers' default, mean.
      modes.push(PoolingMode::Mean);
    }
    Ok(PoolingConfig {
      modes,
      include_prompt: c.bool_or(&["include_prompt"], true)?,
      embedding_dimension: c.opt_usize(&["embedding_dimension", "word_embedding_dimension"])?,
    })
  }
}

fn parse_mode(c: &JsonConfig, s: &str) -> Result<PoolingMode> {
  PoolingMode::parse(s).ok_or_else(|| {
    c.invalid(
      "pooling_mode",
      format!(
        "unknown pooling mode {s:?}; valid: cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken"
      ),
    )
  })
}

/// Activation of a [`DenseConfig`] (python `activation_function`, a torch
/// module path such as `torch.nn.modules.activation.Tanh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
  /// `torch.nn.modules.linear.Identity`.
  Identity,
  /// `torch.nn.modules.activation.Tanh` (sentence-transformers' default).
  Tanh,
  /// `torch.nn.modules.activation.ReLU`.
  Relu,
  /// `torch.nn.modules.activation.GELU` (exact, erf based).
  Gelu,
  /// `torch.nn.modules.activation.Sigmoid`.
  Sigmoid,
  /// `torch.nn.modules.activation.SiLU`.
  Silu,
}

impl DenseActivation {
  fn parse(s: &str) -> Option<DenseActivation> {
    let last = s.rsplit('.').next().unwrap_or(s);
    Some(match last {
      "Identity" => DenseActivation::Identity,
      "Tanh" => DenseActivation::Tanh,
      "ReLU" => DenseActivation::Relu,
      "GELU" => DenseActivation::Gelu,
      "Sigmoid" => DenseActivation::Sigmoid,
      "SiLU" => DenseActivation::Silu,
      _ => return None,
    })
  }
}

/// A `Dense` module: `activation(x @ W.T + b)` (+ a residual when
/// `use_residual`). Python `sentence_transformers...Dense`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseConfig {
  /// The module folder.
  pub dir: PathBuf,
  /// Input width.
  pub in_features: usize,
  /// Output width.
  pub out_features: usize,
  /// Whether `linear.bias` exists.
  pub bias: bool,
  /// The activation after the linear layer.
  pub activation: DenseActivation,
  /// Add the input (projected by `residual.weight` when the widths differ).
  pub use_residual: bool,
}

impl DenseConfig {
  fn load(dir: &Path) -> Result<DenseConfig> {
    let c = JsonConfig::load(dir.join("config.json"))?;
    for key in ["module_input_name", "module_output_name"] {
      if let Some(name) = c.opt_str(&[key])? {
        if name != "sentence_embedding" {
          return Err(c.invalid(
            key,
            format!("only `sentence_embedding` is supported, got {name:?}"),
          ));
        }
      }
    }
    let activation = match c.opt_str(&["activation_function"])? {
      None => DenseActivation::Tanh,
      Some(s) => DenseActivation::parse(s).ok_or_else(|| {
        c.invalid(
          "activation_function",
          format!(
            "unsupported activation {s:?}; supported: Identity, Tanh, ReLU, GELU, Sigmoid, SiLU"
          ),
        )
      })?,
    };
    Ok(DenseConfig {
      dir: dir.to_path_buf(),
      in_features: c.positive(&["in_features"])?,
      out_features: c.positive(&["out_features"])?,
      bias: c.bool_or(&["bias"], true)?,
      activation,
      use_residual: c.bool_or(&["use_residual"], false)?,
    })
  }

  /// The module's weights file (`model.safetensors`), or an error when the
  /// folder only has the pickle format.
  pub fn weights_file(&self) -> Result<PathBuf> {
    let st = self.dir.join("model.safetensors");
    if st.is_file() {
      return Ok(st);
    }
    if self.dir.join("pytorch_model.bin").is_file() {
      return Err(Error::folder(
        &self.dir,
        "Dense weights are only in pytorch_model.bin (pickle); convert them to model.safetensors",
      ));
    }
    Err(Error::folder(
      &self.dir,
      "Dense module has no model.safetensors",
    ))
  }
}

/// A module after pooling, in pipeline order.
#[derive(Debug, Clone, PartialEq)]
pub enum PostModule {
  /// A `Dense` projection.
  Dense(DenseConfig),
  /// `Normalize`: L2 normalization (python `F.normalize(x, p=2, dim=-1)`).
  Normalize,
}

/// How two embeddings are compared (python `similarity_fn_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimilarityFn {
  /// Cosine similarity (the default).
  #[default]
  Cosine,
  /// Dot product.
  Dot,
  /// Negative Euclidean distance.
  Euclidean,
  /// Negative Manhattan distance.
  Manhattan,
}

impl SimilarityFn {
  /// Parse sentence-transformers' name.
  pub fn parse(s: &str) -> Option<SimilarityFn> {
    Some(match s {
      "cosine" => SimilarityFn::Cosine,
      "dot" => SimilarityFn::Dot,
      "euclidean" => SimilarityFn::Euclidean,
      "manhattan" => SimilarityFn::Manhattan,
      _ => return None,
    })
  }
}

/// Everything a sentence-transformers folder says around the transformer.
#[derive(Debug, Clone)]
pub struct StFolder {
  /// The model folder.
  pub root: PathBuf,
  /// Where `config.json`, the weights and the tokenizer are (the
  /// Transformer module's path; usually `root`).
  pub transformer_dir: PathBuf,
  /// Whether `modules.json` exists (false: a plain transformers folder).
  pub has_modules: bool,
  /// The pooling module.
  pub pooling: PoolingConfig,
  /// Modules after pooling, in order.
  pub post: Vec<PostModule>,
  /// `max_seq_length` of `sentence_bert_config.json` (or its
  /// `processor_kwargs.model_max_length`), if set.
  pub max_seq_length: Option<usize>,
  /// `do_lower_case` of `sentence_bert_config.json`.
  pub do_lower_case: bool,
  /// Named prompts of `config_sentence_transformers.json` (e.g.
  /// `query` -> `"query: "`).
  pub prompts: BTreeMap<String, String>,
  /// The prompt applied when the caller names none.
  pub default_prompt_name: Option<String>,
  /// The similarity function the model was trained for.
  pub similarity: SimilarityFn,
}

impl StFolder {
  /// Read the sentence-transformers files of `root` (the transformer's own
  /// `config.json` is read by the model loader).
  pub fn load(root: impl AsRef<Path>) -> Result<StFolder> {
    let root = root.as_ref().to_path_buf();
    if !root.is_dir() {
      return Err(Error::folder(
        &root,
        "not a directory (expected a model folder)",
      ));
    }
    let mut f = StFolder {
      transformer_dir: root.clone(),
      has_modules: false,
      pooling: PoolingConfig::default(),
      post: Vec::new(),
      max_seq_length: None,
      do_lower_case: false,
      prompts: BTreeMap::new(),
      default_prompt_name: None,
      similarity: SimilarityFn::Cosine,
      root,
    };
    let modules_path = f.root.join("modules.json");
    if modules_path.is_file() {
      f.has_modules = true;
      f.read_modules(&modules_path)?;
    }
    f.read_sbert_config()?;
    f.read_st_config()?;
    Ok(f)
  }

  fn read_modules(&mut self, path: &Path) -> Result<()> {
    let v = read_json(path)?;
    let items = v
      .as_array()
      .ok_or_else(|| Error::folder(path, "expected a JSON list of modules"))?;
    let mut seen_transformer = false;
    let mut seen_pooling = false;
    for (i, m) in items.iter().enumerate() {
      let field = |k: &str| format!("[{i}].{k}");
      let ty = m
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config(path, &field("type"), "missing module type"))?;
      let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
      let dir = self.root.join(sub);
      let kind = ty.rsplit('.').next().unwrap_or(ty);
      match kind {
        "Transformer" => {
          if seen_transformer || i != 0 {
            return Err(Error::config(
              path,
              &field("type"),
              "the Transformer must be the first and only one",
            ));
          }
          seen_transformer = true;
          self.transformer_dir = dir;
        }
        "Pooling" => {
          if !seen_transformer || seen_pooling || !self.post.is_empty() {
            return Err(Error::config(
              path,
              &field("type"),
              "Pooling must directly follow the Transformer",
            ));
          }
          seen_pooling = true;
          let cfg = dir.join("config.json");
          if !cfg.is_file() {
            return Err(Error::folder(
              &cfg,
              "modules.json lists a Pooling module but its config.json is missing",
            ));
          }
          self.pooling = PoolingConfig::from_config(&JsonConfig::load(&cfg)?)?;
        }
        "Dense" => self.post.push(PostModule::Dense(DenseConfig::load(&dir)?)),
        "Normalize" => {
          let cfg = dir.join("config.json");
          if cfg.is_file() {
            let c = JsonConfig::load(&cfg)?;
            for key in ["module_input_name", "module_output_name"] {
              if let Some(name) = c.opt_str(&[key])? {
                if name != "sentence_embedding" {
                  return Err(c.invalid(
                    key,
                    format!("only `sentence_embedding` is supported, got {name:?}"),
                  ));
                }
              }
            }
          }
          self.post.push(PostModule::Normalize);
        }
        _ => {
          return Err(Error::config(
            path,
            &field("type"),
            format!(
              "unsupported sentence-transformers module {ty:?}; supported: Transformer, Pooling, Dense, Normalize"
            ),
          ));
        }
      }
    }
    if !seen_transformer {
      return Err(Error::folder(path, "no Transformer module listed"));
    }
    Ok(())
  }

  fn read_sbert_config(&mut self) -> Result<()> {
    let p = self.transformer_dir.join("sentence_bert_config.json");
    if !p.is_file() {
      return Ok(());
    }
    let c = JsonConfig::load(&p)?;
    self.max_seq_length = c.opt_usize(&[
      "max_seq_length",
      "processor_kwargs.model_max_length",
      "tokenizer_args.model_max_length",
    ])?;
    self.do_lower_case = c.bool_or(&["do_lower_case"], false)?;
    if let Some(task) = c.opt_str(&["transformer_task"])? {
      if task != "feature-extraction" {
        return Err(c.invalid(
          "transformer_task",
          format!("only \"feature-extraction\" models embed sentences, got {task:?}"),
        ));
      }
    }
    if let Some(Value::Object(m)) = c.get("modality_config") {
      if let Some(other) = m.keys().find(|k| k.as_str() != "text") {
        return Err(c.invalid(
          "modality_config",
          format!("only the plain \"text\" modality is supported, found {other:?}"),
        ));
      }
    }
    Ok(())
  }

  fn read_st_config(&mut self) -> Result<()> {
    let p = self.root.join("config_sentence_transformers.json");
    if !p.is_file() {
      return Ok(());
    }
    let c = JsonConfig::load(&p)?;
    if let Some(v) = c.get("prompts") {
      let m = v
        .as_object()
        .ok_or_else(|| c.invalid("prompts", "expected an object of strings"))?;
      for (k, v) in m {
        let s = v
          .as_str()
          .ok_or_else(|| c.invalid(&format!("prompts.{k}"), "expected a string"))?;
        self.prompts.insert(k.clone(), s.to_string());
      }
    }
    self.default_prompt_name = c.opt_str(&["default_prompt_name"])?.map(str::to_string);
    if let Some(name) = &self.default_prompt_name {
      if !self.prompts.contains_key(name) {
        return Err(c.invalid(
          "default_prompt_name",
          format!("{name:?} is not one of the prompts"),
        ));
      }
    }
    if let Some(s) = c.opt_str(&["similarity_fn_name"])? {
      self.similarity = SimilarityFn::parse(s).ok_or_else(|| {
        c.invalid(
          "similarity_fn_name",
          format!("unknown {s:?}; expected cosine, dot, euclidean or manhattan"),
        )
      })?;
    }
    Ok(())
  }

  /// Whether the pipeline ends with `Normalize` (embeddings have unit norm).
  pub fn normalizes(&self) -> bool {
    matches!(self.post.last(), Some(PostModule::Normalize))
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  fn write(dir: &Path, rel: &str, v: &Value) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
  }

  #[test]
  fn legacy_and_new_pooling_configs() {
    let legacy = JsonConfig::from_value(
      "p.json",
      json!({"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
             "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
             "pooling_mode_mean_sqrt_len_tokens": false}),
    );
    let p = PoolingConfig::from_config(&legacy).unwrap();
    assert_eq!(p.modes, vec![PoolingMode::Mean]);
    assert_eq!(p.embedding_dimension, Some(384));
    assert!(p.include_prompt);
    // Legacy keys concatenate in sentence-transformers' fixed order.
    let both = JsonConfig::from_value(
      "p.json",
      json!({"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true, "pooling_mode_lasttoken": true}),
    );
    assert_eq!(
      PoolingConfig::from_config(&both).unwrap().modes,
      vec![PoolingMode::Cls, PoolingMode::Mean, PoolingMode::LastToken]
    );
    let new = JsonConfig::from_value(
      "p.json",
      json!({"embedding_dimension": 32, "pooling_mode": ["max", "mean_sqrt_len_tokens"], "include_prompt": false}),
    );
    let p = PoolingConfig::from_config(&new).unwrap();
    assert_eq!(p.modes, vec![PoolingMode::Max, PoolingMode::MeanSqrtLen]);
    assert!(!p.include_prompt);
    // Every legacy flag false, or an empty list: an error, not a silent mean.
    let none = JsonConfig::from_value(
      "p.json",
      json!({"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": false}),
    );
    let e = PoolingConfig::from_config(&none).unwrap_err().to_string();
    assert!(e.contains("no pooling mode is enabled"), "{e}");
    let empty = JsonConfig::from_value("p.json", json!({"pooling_mode": []}));
    let e = PoolingConfig::from_config(&empty).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    // No pooling keys at all: sentence-transformers' default, mean.
    let bare = JsonConfig::from_value("p.json", json!({"embedding_dimension": 8}));
    assert_eq!(
      PoolingConfig::from_config(&bare).unwrap().modes,
      vec![PoolingMode::Mean]
    );
    let none = JsonConfig::from_value("p.json", json!({"word_embedding_dimension": 8}));
    assert_eq!(
      PoolingConfig::from_config(&none).unwrap().modes,
      vec![PoolingMode::Mean]
    );
    let bad = JsonConfig::from_value("p.json", json!({"pooling_mode": "median"}));
    let e = PoolingConfig::from_config(&bad).unwrap_err().to_string();
    assert!(e.contains("median") && e.contains("pooling_mode"), "{e}");
  }

  #[test]
  fn plain_folder_defaults_to_mean_pooling() {
    let d = tempfile::tempdir().unwrap();
    let f = StFolder::load(d.path()).unwrap();
    assert!(!f.has_modules);
    assert_eq!(f.pooling, PoolingConfig::default());
    assert!(f.post.is_empty() && !f.normalizes());
    assert_eq!(f.transformer_dir, d.path());
  }

  #[test]
  fn full_folder() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(
      root,
      "modules.json",
      &json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}
      ]),
    );
    write(
      root,
      "1_Pooling/config.json",
      &json!({"pooling_mode": "lasttoken"}),
    );
    write(
      root,
      "2_Dense/config.json",
      &json!({"in_features": 8, "out_features": 4, "bias": false,
              "activation_function": "torch.nn.modules.linear.Identity"}),
    );
    write(
      root,
      "sentence_bert_config.json",
      &json!({"max_seq_length": 128, "do_lower_case": true}),
    );
    write(
      root,
      "config_sentence_transformers.json",
      &json!({"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": "query",
              "similarity_fn_name": "dot"}),
    );
    let f = StFolder::load(root).unwrap();
    assert!(f.has_modules && f.normalizes());
    assert_eq!(f.pooling.modes, vec![PoolingMode::LastToken]);
    assert_eq!(f.max_seq_length, Some(128));
    assert!(f.do_lower_case);
    assert_eq!(f.prompts["query"], "query: ");
    assert_eq!(f.default_prompt_name.as_deref(), Some("query"));
    assert_eq!(f.similarity, SimilarityFn::Dot);
    match &f.post[0] {
      PostModule::Dense(d) => {
        assert_eq!((d.in_features, d.out_features, d.bias), (8, 4, false));
        assert_eq!(d.activation, DenseActivation::Identity);
        let e = d.weights_file().unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "{e}");
      }
      other => panic!("{other:?}"),
    }
  }

  #[test]
  fn broken_folders_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    // Pooling listed but its folder missing.
    write(
      root,
      "modules.json",
      &json!([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
      ]),
    );
    let e = StFolder::load(root).unwrap_err().to_string();
    assert!(
      e.contains("1_Pooling") && e.contains("config.json is missing"),
      "{e}"
    );
    // An unknown module type.
    write(
      root,
      "modules.json",
      &json!([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_LSTM", "type": "sentence_transformers.models.LSTM"}
      ]),
    );
    let e = StFolder::load(root).unwrap_err().to_string();
    assert!(e.contains("LSTM") && e.contains("unsupported"), "{e}");
    // Not a list.
    write(root, "modules.json", &json!({"a": 1}));
    assert!(
      StFolder::load(root)
        .unwrap_err()
        .to_string()
        .contains("list of modules")
    );
    // Unknown default prompt.
    std::fs::remove_file(root.join("modules.json")).unwrap();
    write(
      root,
      "config_sentence_transformers.json",
      &json!({"prompts": {}, "default_prompt_name": "q"}),
    );
    assert!(
      StFolder::load(root)
        .unwrap_err()
        .to_string()
        .contains("default_prompt_name")
    );
    std::fs::remove_file(root.join("config_sentence_transformers.json")).unwrap();
    // A cross-encoder / message-format folder.
    write(
      root,
      "sentence_bert_config.json",
      &json!({"transformer_task": "sequence-classification"}),
    );
    assert!(
      StFolder::load(root)
        .unwrap_err()
        .to_string()
        .contains("feature-extraction")
    );
    write(
      root,
      "sentence_bert_config.json",
      &json!({"modality_config": {"message": {}}}),
    );
    assert!(
      StFolder::load(root)
        .unwrap_err()
        .to_string()
        .contains("message")
    );
    // Not a folder at all.
    assert!(
      StFolder::load(root.join("nope"))
        .unwrap_err()
        .to_string()
        .contains("not a directory")
    );
  }
}
