//! [`Embedder`]: a sentence-transformers model folder, loaded (python
//! `SentenceTransformer(path)`), and [`Embedder::embed`] (python
//! `model.encode(texts)`).

use std::path::Path;

use mlxrs_core::{Array, ops};

use crate::config::JsonConfig;
use crate::error::{Error, Result};
use crate::folder::{PostModule, SimilarityFn, StFolder};
use crate::models::{Encoder, load_encoder, run_batch};
use crate::pooling::{Dense, Post, check_widths, l2_normalize, pool};
use crate::similarity;
use crate::tokenize::{Encoded, PaddedBatch, TextTokenizer, length_sorted_batches};

/// Options of one [`Embedder::embed_with`] call (python `encode`'s keyword
/// arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedOptions {
  /// Texts per forward pass (python `batch_size`, default 32). Texts are
  /// sorted by length first so each batch pads little.
  pub batch_size: usize,
  /// `None`: the folder decides (its `Normalize` module). `Some(true)`:
  /// L2-normalize the output (python `normalize_embeddings=True`).
  /// `Some(false)`: skip the folder's `Normalize` module too.
  pub normalize: Option<bool>,
  /// Cut texts longer than the max length (the default, as
  /// sentence-transformers does); when `false` such a text is an
  /// [`Error::InputTooLong`].
  pub truncate: bool,
  /// Max tokens per text, special tokens included; `None`: the model's
  /// `max_seq_length`. Must not exceed the model's position limit.
  pub max_length: Option<usize>,
  /// Name of a prompt of `config_sentence_transformers.json` to prepend
  /// (python `prompt_name`, e.g. `"query"`).
  pub prompt_name: Option<String>,
  /// A literal prompt to prepend (python `prompt`); wins over
  /// `prompt_name`.
  pub prompt: Option<String>,
  /// Keep only the first `n` dimensions (python `truncate_dim`, for
  /// Matryoshka models); applied before `normalize: Some(true)`.
  pub truncate_dim: Option<usize>,
}

impl Default for EmbedOptions {
  fn default() -> Self {
    EmbedOptions {
      batch_size: 32,
      normalize: None,
      truncate: true,
      max_length: None,
      prompt_name: None,
      prompt: None,
      truncate_dim: None,
    }
  }
}

/// A loaded embedding model: tokenizer, transformer encoder, pooling and
/// the modules after it.
pub struct Embedder {
  folder: StFolder,
  encoder: Box<dyn Encoder>,
  tokenizer: TextTokenizer,
  post: Vec<Post>,
  max_seq_length: usize,
  dim: usize,
  vocab_size: usize,
}

impl std::fmt::Debug for Embedder {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("Embedder")
      .field("root", &self.folder.root)
      .field("model_type", &self.encoder.model_type())
      .field("pooling", &self.folder.pooling.modes)
      .field("max_seq_length", &self.max_seq_length)
      .field("dim", &self.dim)
      .finish()
  }
}

/// The default max length: sentence-transformers' `max_seq_length`, else
/// the tokenizer's `model_max_length` capped at `max_position_embeddings`,
/// else `max_position_embeddings`, else 512; never above the encoder's
/// position limit.
fn default_max_length(folder: &StFolder, encoder: &dyn Encoder) -> Result<usize> {
  let dir = &folder.transformer_dir;
  let model_max_pos = JsonConfig::load(dir.join("config.json"))?
    .opt_usize(&["max_position_embeddings", "n_positions"])?;
  let tok_max = {
    let p = dir.join("tokenizer_config.json");
    if p.is_file() {
      // Tokenizers without a limit store a huge sentinel (int(1e30)).
      JsonConfig::load(&p)?
        .opt_f64(&["model_max_length"])?
        .filter(|&v| v > 0.0 && v < 1e12)
        .map(|v| v as usize)
    } else {
      None
    }
  };
  let from_tok = match (tok_max, model_max_pos) {
    (Some(t), Some(m)) => Some(t.min(m)),
    (t, m) => t.or(m),
  };
  let mut n = folder.max_seq_length.or(from_tok).unwrap_or(512);
  if let Some(limit) = encoder.max_positions() {
    n = n.min(limit);
  }
  Ok(n.max(1))
}

impl Embedder {
  /// Load a sentence-transformers folder (or a plain transformers folder:
  /// then mean pooling, no normalization). Python:
  /// `SentenceTransformer(path, device="cpu")`.
  ///
  /// Weights are converted to float32 and evaluated here.
  pub fn load(path: impl AsRef<Path>) -> Result<Embedder> {
    let folder = StFolder::load(path)?;
    let encoder = load_encoder(&folder.transformer_dir)?;
    let hidden = encoder.hidden_size();
    if let Some(d) = folder.pooling.embedding_dimension {
      if d != hidden {
        return Err(Error::folder(
          &folder.root,
          format!(
            "the pooling config expects {d}-wide token embeddings but the model's hidden size is {hidden}"
          ),
        ));
      }
    }
    let max_seq_length = default_max_length(&folder, encoder.as_ref())?;
    let tokenizer = TextTokenizer::load(
      &folder.transformer_dir,
      folder.do_lower_case,
      max_seq_length,
      encoder.pad_token_id(),
    )?;
    let mut post = Vec::new();
    for m in &folder.post {
      post.push(match m {
        PostModule::Dense(c) => Post::Dense(Box::new(Dense::load(c)?)),
        PostModule::Normalize => Post::Normalize,
      });
    }
    let dim = check_widths(hidden * folder.pooling.modes.len(), &post, &folder.root)?;
    let tok_vocab = tokenizer.inner().get_vocab_size(true);
    let vocab_size = JsonConfig::load(folder.transformer_dir.join("config.json"))?
      .opt_usize(&["vocab_size"])?
      .map_or(tok_vocab, |v| v.min(tok_vocab.max(1)));
    Ok(Embedder {
      vocab_size,
      folder,
      encoder,
      tokenizer,
      post,
      max_seq_length,
      dim,
    })
  }

  /// Embedding width (python `get_sentence_embedding_dimension()`).
  pub fn dim(&self) -> usize {
    self.dim
  }

  /// Default max tokens per text (python `max_seq_length`).
  pub fn max_seq_length(&self) -> usize {
    self.max_seq_length
  }

  /// Token ids below this are valid input of [`Embedder::embed_ids_with`]
  /// (the smaller of the config's `vocab_size` and the tokenizer's).
  pub fn vocab_size(&self) -> usize {
    self.vocab_size
  }

  /// The encoder's `model_type`.
  pub fn model_type(&self) -> &str {
    self.encoder.model_type()
  }

  /// Paths of the encoder's layers that run quantized (an MLX-quantized
  /// checkpoint: their `scales` were in the file), sorted; empty for a
  /// float checkpoint.
  pub fn quantized_layers(&self) -> Vec<String> {
    let mut out = Vec::new();
    self.encoder.visit("", &mut |k, _| {
      if let Some(layer) = k.strip_suffix(".scales") {
        out.push(layer.to_string());
      }
    });
    out.sort();
    out
  }

  /// The parsed sentence-transformers configuration.
  pub fn folder(&self) -> &StFolder {
    &self.folder
  }

  /// The model folder.
  pub fn root(&self) -> &Path {
    &self.folder.root
  }

  /// The tokenizer.
  pub fn tokenizer(&self) -> &TextTokenizer {
    &self.tokenizer
  }

  /// Whether embeddings come out unit-length by default.
  pub fn normalizes(&self) -> bool {
    self.folder.normalizes()
  }

  /// The similarity function the model was trained with (python
  /// `similarity_fn_name`).
  pub fn similarity_fn(&self) -> SimilarityFn {
    self.folder.similarity
  }

  /// Pairwise similarities of two sets of embeddings with the model's
  /// similarity function (python `model.similarity(a, b)`).
  pub fn similarity(&self, a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    similarity::similarity(self.folder.similarity, a, b)
  }

  /// Embed `texts` with the default options (python `model.encode(texts)`).
  /// One vector of [`Embedder::dim`] floats per text, in input order.
  pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
    self.embed_with(texts, &EmbedOptions::default())
  }

  /// Embed `texts` with `opts`.
  pub fn embed_with<S: AsRef<str>>(
    &self,
    texts: &[S],
    opts: &EmbedOptions,
  ) -> Result<Vec<Vec<f32>>> {
    let (flat, d) = self.embed_flat(texts, opts)?;
    Ok(flat.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
  }

  /// The prompt `opts` selects (python `_resolve_prompt`).
  fn resolve_prompt<'a>(&'a self, opts: &'a EmbedOptions) -> Result<Option<&'a str>> {
    if let Some(p) = &opts.prompt {
      return Ok(Some(p.as_str()));
    }
    let name = opts
      .prompt_name
      .as_ref()
      .or(self.folder.default_prompt_name.as_ref());
    match name {
      None => Ok(None),
      Some(n) => self
        .folder
        .prompts
        .get(n)
        .map(|p| Some(p.as_str()))
        .ok_or_else(|| {
          let known: Vec<&str> = self.folder.prompts.keys().map(String::as_str).collect();
          Error::InvalidArgument(format!(
            "unknown prompt name {n:?}; this model has {known:?}"
          ))
        }),
    }
  }

  /// Tokenize `texts` as [`Embedder::embed_with`] would (prompt prepended,
  /// truncated or rejected by length).
  pub fn tokenize<S: AsRef<str>>(&self, texts: &[S], opts: &EmbedOptions) -> Result<Vec<Encoded>> {
    let (encs, _) = self.tokenize_inner(texts, opts)?;
    Ok(encs)
  }

  fn tokenize_inner<S: AsRef<str>>(
    &self,
    texts: &[S],
    opts: &EmbedOptions,
  ) -> Result<(Vec<Encoded>, usize)> {
    let prompt = self.resolve_prompt(opts)?.filter(|p| !p.is_empty());
    let owned;
    let tok = match opts.max_length {
      Some(n) if n != self.max_seq_length => {
        if n == 0 {
          return Err(Error::InvalidArgument("max length must be positive".into()));
        }
        if let Some(limit) = self.encoder.max_positions() {
          if n > limit {
            return Err(Error::InvalidArgument(format!(
              "max length {n} exceeds the model's {limit} position embeddings"
            )));
          }
        }
        let mut t = self.tokenizer.clone();
        t.set_max_length(n)?;
        owned = t;
        &owned
      }
      _ => &self.tokenizer,
    };
    let full: Vec<String> = match prompt {
      Some(p) => texts.iter().map(|t| format!("{p}{}", t.as_ref())).collect(),
      None => texts.iter().map(|t| t.as_ref().to_string()).collect(),
    };
    let prompt_len = match prompt {
      Some(p) if !self.folder.pooling.include_prompt => tok.prompt_length(p)?,
      _ => 0,
    };
    Ok((tok.encode_all(&full, opts.truncate)?, prompt_len))
  }

  /// Last hidden states for already-tokenized rows, right-padded:
  /// `[B, T, hidden]` (python `model[0].auto_model(**features)
  /// .last_hidden_state`).
  pub fn forward_ids(&self, rows: &[Vec<u32>]) -> Result<Array> {
    let encs: Vec<Encoded> = rows
      .iter()
      .map(|r| Encoded {
        ids: r.clone(),
        type_ids: vec![0; r.len()],
      })
      .collect();
    if encs.is_empty() || encs.iter().any(|e| e.ids.is_empty()) {
      return Err(Error::InvalidArgument(
        "forward_ids needs non-empty rows".into(),
      ));
    }
    let refs: Vec<&Encoded> = encs.iter().collect();
    let batch = PaddedBatch::new(&refs, self.tokenizer.pad_id());
    self.forward_batch(&batch)
  }

  fn forward_batch(&self, batch: &PaddedBatch) -> Result<Array> {
    run_batch(self.encoder.as_ref(), batch)
  }

  /// Embed `texts` into one `[N, dim]` float32 array (python
  /// `model.encode(texts, convert_to_tensor=True)`).
  pub fn embed_array<S: AsRef<str>>(&self, texts: &[S], opts: &EmbedOptions) -> Result<Array> {
    let (flat, d) = self.embed_flat(texts, opts)?;
    Ok(Array::from_slice(&flat, &[texts.len() as i32, d as i32])?)
  }

  /// Embed already-tokenized rows (python `model.encode` fed with
  /// `input_ids` directly; the OpenAI API's token-array input): the ids
  /// are used as given (no special tokens or prompt added), cut to the max
  /// length when `opts.truncate` (else an [`Error::InputTooLong`]). Ids
  /// must be below [`Embedder::vocab_size`] and rows non-empty.
  pub fn embed_ids_with(&self, rows: &[Vec<u32>], opts: &EmbedOptions) -> Result<Vec<Vec<f32>>> {
    let max = match opts.max_length {
      Some(0) => return Err(Error::InvalidArgument("max length must be positive".into())),
      Some(n) => n,
      None => self.max_seq_length,
    };
    if let Some(limit) = self.encoder.max_positions() {
      if max > limit {
        return Err(Error::InvalidArgument(format!(
          "max length {max} exceeds the model's {limit} position embeddings"
        )));
      }
    }
    let mut encs = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
      if r.is_empty() {
        return Err(Error::InvalidArgument(format!("token row {i} is empty")));
      }
      if let Some(&bad) = r.iter().find(|&&t| t as usize >= self.vocab_size) {
        return Err(Error::InvalidArgument(format!(
          "token row {i}: id {bad} is outside the vocabulary (0..{})",
          self.vocab_size
        )));
      }
      if r.len() > max && !opts.truncate {
        return Err(Error::InputTooLong {
          index: i,
          tokens: r.len(),
          limit: max,
        });
      }
      let ids = r[..r.len().min(max)].to_vec();
      encs.push(Encoded {
        type_ids: vec![0; ids.len()],
        ids,
      });
    }
    let (flat, d) = self.embed_encoded(&encs, 0, opts)?;
    Ok(flat.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
  }

  /// Row-major `[N, dim]` embeddings and `dim`.
  fn embed_flat<S: AsRef<str>>(
    &self,
    texts: &[S],
    opts: &EmbedOptions,
  ) -> Result<(Vec<f32>, usize)> {
    if texts.is_empty() {
      return self.embed_encoded(&[], 0, opts);
    }
    let (encs, prompt_len) = self.tokenize_inner(texts, opts)?;
    self.embed_encoded(&encs, prompt_len, opts)
  }

  /// Embed tokenized rows; the first `prompt_len` tokens of each are left
  /// out of pooling.
  fn embed_encoded(
    &self,
    encs: &[Encoded],
    prompt_len: usize,
    opts: &EmbedOptions,
  ) -> Result<(Vec<f32>, usize)> {
    if opts.batch_size == 0 {
      return Err(Error::InvalidArgument("batch size must be positive".into()));
    }
    if let Some(d) = opts.truncate_dim {
      if d == 0 || d > self.dim {
        return Err(Error::InvalidArgument(format!(
          "truncate_dim {d} must be in 1..={}",
          self.dim
        )));
      }
    }
    let out_dim = opts.truncate_dim.unwrap_or(self.dim);
    if encs.is_empty() {
      return Ok((Vec::new(), out_dim));
    }
    let lens: Vec<usize> = encs.iter().map(|e| e.ids.len()).collect();
    let mut result = vec![0f32; encs.len() * out_dim];
    for idx in length_sorted_batches(&lens, opts.batch_size) {
      let rows: Vec<&Encoded> = idx.iter().map(|&i| &encs[i]).collect();
      let batch = PaddedBatch::new(&rows, self.tokenizer.pad_id());
      let h = self.forward_batch(&batch)?;
      let mut pmask = batch.mask.clone();
      if prompt_len > 0 {
        for r in 0..batch.batch {
          for c in 0..prompt_len.min(batch.seq) {
            pmask[r * batch.seq + c] = 0;
          }
        }
      }
      let mut x = pool(&h, &pmask, batch.batch, batch.seq, &self.folder.pooling)?;
      for p in &self.post {
        x = match p {
          Post::Dense(d) => d.forward(&x)?,
          Post::Normalize if opts.normalize == Some(false) => x,
          Post::Normalize => l2_normalize(&x)?,
        };
      }
      if out_dim != self.dim {
        x = ops::slice(&x, &[0, 0], &[batch.batch as i32, out_dim as i32], &[1, 1])?;
      }
      if opts.normalize == Some(true) {
        x = l2_normalize(&x)?;
      }
      let v = x.to_vec::<f32>()?;
      for (j, &i) in idx.iter().enumerate() {
        result[i * out_dim..(i + 1) * out_dim].copy_from_slice(&v[j * out_dim..(j + 1) * out_dim]);
      }
    }
    Ok((result, out_dim))
  }
}
