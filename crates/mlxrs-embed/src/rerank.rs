//! Cross-encoder reranking: a BERT-family sequence classifier scores
//! `(query, document)` pairs (python `sentence_transformers.CrossEncoder
//! (path).predict(pairs)` / `.rank(query, docs)`).
//!
//! Supported heads: `BertForSequenceClassification` (pooler `tanh(W h_cls)`
//! then `classifier`) and the RoBERTa / XLM-R head (`classifier.dense`,
//! `tanh`, `classifier.out_proj` on the first token). Scores go through the
//! model's activation: `sentence_transformers.activation_fn` of
//! `config.json` when set, else sigmoid for one label and identity for
//! several, as sentence-transformers does.

use std::path::{Path, PathBuf};

use mlxrs_core::ops;

use mlxrs_nn::Linear;

use crate::activation::Activation;
use crate::checkpoint::{Checkpoint, Part};
use crate::config::JsonConfig;
use crate::error::{Error, Result};
use crate::models::bert::{self, Bert};
use crate::models::{Encoder, run_batch};
use crate::tokenize::{Encoded, PaddedBatch, TextTokenizer, length_sorted_batches};

/// `out(tanh(dense(h[:, 0])))`: BERT's `pooler.dense` + `classifier`, or the
/// RoBERTa head's `classifier.dense` + `classifier.out_proj`.
struct Head {
  dense: Linear,
  out: Linear,
}

/// Options of [`CrossEncoder::predict`].
#[derive(Debug, Clone, PartialEq)]
pub struct RerankOptions {
  /// Pairs per forward pass (python `batch_size`, default 32).
  pub batch_size: usize,
  /// Cut over-long pairs (`longest_first`, the default); when `false`
  /// they are an [`Error::InputTooLong`].
  pub truncate: bool,
  /// Apply the model's activation (python `activation_fn`); `false` gives
  /// raw logits.
  pub apply_activation: bool,
}

impl Default for RerankOptions {
  fn default() -> Self {
    RerankOptions {
      batch_size: 32,
      truncate: true,
      apply_activation: true,
    }
  }
}

/// A loaded cross-encoder.
pub struct CrossEncoder {
  root: PathBuf,
  encoder: Bert,
  head: Head,
  tokenizer: TextTokenizer,
  num_labels: usize,
  activation: Activation,
}

impl std::fmt::Debug for CrossEncoder {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("CrossEncoder")
      .field("root", &self.root)
      .field("num_labels", &self.num_labels)
      .finish()
  }
}

fn activation_of(cfg: &JsonConfig, num_labels: usize) -> Result<Activation> {
  let path = cfg.opt_str(&[
    "sentence_transformers.activation_fn",
    "sbert_ce_default_activation_function",
  ])?;
  match path {
    None => Ok(if num_labels == 1 {
      Activation::Sigmoid
    } else {
      Activation::Identity
    }),
    Some(p) => match p.rsplit('.').next().unwrap_or(p) {
      "Sigmoid" => Ok(Activation::Sigmoid),
      "Identity" => Ok(Activation::Identity),
      "Tanh" => Ok(Activation::Tanh),
      other => Err(cfg.invalid(
        "sentence_transformers.activation_fn",
        format!("unsupported activation {other:?}"),
      )),
    },
  }
}

impl CrossEncoder {
  /// Load a `*ForSequenceClassification` folder of the BERT family.
  pub fn load(path: impl AsRef<Path>) -> Result<CrossEncoder> {
    let root = path.as_ref().to_path_buf();
    if !root.is_dir() {
      return Err(Error::folder(
        &root,
        "not a directory (expected a model folder)",
      ));
    }
    let cfg_path = root.join("config.json");
    if !cfg_path.is_file() {
      return Err(Error::folder(
        &root,
        "no config.json (not a transformers model folder)",
      ));
    }
    let cfg = JsonConfig::load(&cfg_path)?;
    let model_type = cfg
      .opt_str(&["model_type"])?
      .ok_or_else(|| cfg.invalid("model_type", "missing"))?;
    if !["bert", "roberta", "xlm-roberta", "camembert"].contains(&model_type) {
      return Err(Error::UnsupportedArchitecture {
        path: cfg_path.clone(),
        model_type: model_type.to_string(),
      });
    }
    let hidden = cfg.positive(&["hidden_size"])?;
    let h = i32::try_from(hidden).map_err(|_| cfg.invalid("hidden_size", "too large"))?;
    let ckpt = Checkpoint::read_dir(&root)?.with_quantization(&cfg)?;
    let prefix = ckpt.prefix_of(bert::ANCHOR)?;
    let mut encoder = Bert::new(&cfg, &ckpt, &prefix)?;
    let (dense_path, out_path) = if model_type == "bert" {
      (None, "classifier")
    } else {
      (Some("classifier.dense"), "classifier.out_proj")
    };
    let out_weight = format!("{out_path}.weight");
    let num_labels = match ckpt.shape(&out_weight).and_then(|s| s.first().copied()) {
      Some(n) if n > 0 => n,
      Some(_) => {
        return Err(Error::weight(
          ckpt.path(),
          &out_weight,
          "has no output labels",
        ));
      }
      None => return Err(Error::weight(ckpt.path(), &out_weight, "missing")),
    };
    let mut dense = dense_path.map(|_| Linear::new(h, h, true));
    let mut out = Linear::new(h, num_labels, true);
    let unused = encoder.unused_tensors();
    let path = ckpt.path().to_path_buf();
    {
      let mut parts: Vec<Part<'_>> = vec![(&mut encoder, prefix.as_str()), (&mut out, out_path)];
      if let (Some(d), Some(p)) = (dense.as_mut(), dense_path) {
        parts.push((d, p));
      }
      ckpt.load(&mut parts, &|k| unused.iter().any(|u| k.ends_with(u)))?;
    }
    let dense = match dense {
      Some(d) => d,
      None => encoder.pooler.take().ok_or_else(|| {
        Error::weight(
          &path,
          &mlxrs_nn::join(&prefix, "pooler.dense.weight"),
          "missing (the BERT classification head needs its pooler)",
        )
      })?,
    };
    let head = Head { dense, out };
    let num_labels = num_labels as usize;
    let activation = activation_of(&cfg, num_labels)?;
    let max_pos = encoder.max_positions().unwrap_or(512);
    let tok_max = {
      let p = root.join("tokenizer_config.json");
      if p.is_file() {
        JsonConfig::load(&p)?
          .opt_f64(&["model_max_length"])?
          .filter(|&v| v > 0.0 && v < 1e12)
          .map(|v| v as usize)
      } else {
        None
      }
    };
    let max_length = tok_max.unwrap_or(max_pos).min(max_pos);
    let tokenizer = TextTokenizer::load(&root, false, max_length, encoder.pad_token_id())?;
    Ok(CrossEncoder {
      root,
      encoder,
      head,
      tokenizer,
      num_labels,
      activation,
    })
  }

  /// Outputs per pair (1 for rerankers).
  pub fn num_labels(&self) -> usize {
    self.num_labels
  }

  /// Max tokens per pair.
  pub fn max_length(&self) -> usize {
    self.tokenizer.max_length()
  }

  /// Tokenize pairs as [`CrossEncoder::predict`] does.
  pub fn tokenize<A: AsRef<str>, B: AsRef<str>>(
    &self,
    pairs: &[(A, B)],
    truncate: bool,
  ) -> Result<Vec<Encoded>> {
    let owned: Vec<(String, String)> = pairs
      .iter()
      .map(|(a, b)| (a.as_ref().to_string(), b.as_ref().to_string()))
      .collect();
    self.tokenizer.encode_pairs(&owned, truncate)
  }

  /// Scores of each pair: `num_labels` values each (python
  /// `CrossEncoder.predict(pairs)`).
  pub fn predict<A: AsRef<str>, B: AsRef<str>>(
    &self,
    pairs: &[(A, B)],
    opts: &RerankOptions,
  ) -> Result<Vec<Vec<f32>>> {
    if opts.batch_size == 0 {
      return Err(Error::InvalidArgument("batch size must be positive".into()));
    }
    let encs = self.tokenize(pairs, opts.truncate)?;
    let lens: Vec<usize> = encs.iter().map(|e| e.ids.len()).collect();
    let mut out = vec![Vec::new(); pairs.len()];
    for idx in length_sorted_batches(&lens, opts.batch_size) {
      let rows: Vec<&Encoded> = idx.iter().map(|&i| &encs[i]).collect();
      let batch = PaddedBatch::new(&rows, self.tokenizer.pad_id());
      let h = run_batch(&self.encoder, &batch)?;
      let hidden = h.dim(2).unwrap_or(0);
      let first = ops::slice(&h, &[0, 0, 0], &[batch.batch as i32, 1, hidden], &[1, 1, 1])?;
      let first = ops::reshape(&first, &[batch.batch as i32, hidden])?;
      let mut logits = self
        .head
        .out
        .forward(&ops::tanh(&self.head.dense.forward(&first)?)?)?;
      if opts.apply_activation {
        logits = self.activation.forward(&logits)?;
      }
      let v = logits.to_vec::<f32>()?;
      for (j, &i) in idx.iter().enumerate() {
        out[i] = v[j * self.num_labels..(j + 1) * self.num_labels].to_vec();
      }
    }
    Ok(out)
  }

  /// One score per pair (models with a single label).
  pub fn score<A: AsRef<str>, B: AsRef<str>>(
    &self,
    pairs: &[(A, B)],
    opts: &RerankOptions,
  ) -> Result<Vec<f32>> {
    if self.num_labels != 1 {
      return Err(Error::InvalidArgument(format!(
        "score() needs a one-label model; this one has {} labels (use predict)",
        self.num_labels
      )));
    }
    Ok(
      self
        .predict(pairs, opts)?
        .into_iter()
        .map(|v| v[0])
        .collect(),
    )
  }

  /// Documents ordered by their score for `query`, best first: `(index,
  /// score)` (python `CrossEncoder.rank(query, documents)`).
  pub fn rank<S: AsRef<str>>(
    &self,
    query: &str,
    docs: &[S],
    opts: &RerankOptions,
  ) -> Result<Vec<(usize, f32)>> {
    let pairs: Vec<(&str, &str)> = docs.iter().map(|d| (query, d.as_ref())).collect();
    let mut r: Vec<(usize, f32)> = self.score(&pairs, opts)?.into_iter().enumerate().collect();
    r.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(r)
  }
}
