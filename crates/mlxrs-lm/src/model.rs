//! The language-model interface and the architecture registry (mlx-lm's
//! `utils.load_model` + `models/<arch>.py` `Model` classes).

use std::collections::{BTreeSet, HashMap};

use mlxrs_core::{Array, Result};
use mlxrs_nn::{AttnMask, KvCache, Weights};
use serde_json::Value;

/// A causal language model: embeds tokens, runs its layers over per-layer
/// caches, and projects hidden states to vocabulary logits.
pub trait LanguageModel: Send {
  /// Hidden states `[B, T, hidden]` after the final norm, for `tokens`
  /// `[B, T]` (int32), appending to `caches` (one per layer).
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array>;
  /// Vocabulary logits for hidden states `[..., hidden]`.
  fn logits(&self, hidden: &Array) -> Result<Array>;
  /// Fresh caches, one per layer (python `model.make_cache()`); a
  /// `max_kv_size` makes them rotating (mlx-lm's `--max-kv-size`).
  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache>;
  /// Take parameters from `w` (python `model.load_weights`).
  fn load(&mut self, w: &mut Weights);
  /// Per-architecture weight fixes before loading (python
  /// `model.sanitize(weights)`).
  fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    Ok(weights)
  }
  /// Vocabulary size.
  fn vocab_size(&self) -> i32;
  /// Every parameter as `(path, array)`.
  fn visit(&self, f: &mut dyn FnMut(&str, &Array));

  /// Make this model one stage of a pipeline (python mlx-lm
  /// `model.model.pipeline(group)`; see [`crate::pipeline`]): the model
  /// was built with only the stage's layers, and its forward pass now
  /// receives / sends activations over the global distributed group.
  /// Architectures without pipeline support return an `Err`.
  fn set_pipeline(&mut self, stage: crate::pipeline::PipelineStage) -> Result<()> {
    let _ = stage;
    Err(mlxrs_core::Error::InvalidArgument(
      "this architecture has no pipeline support".into(),
    ))
  }

  /// Whether the forward pass evaluates arrays or reads them on the host
  /// (a pipeline stage sends its activations; a mixture of experts that
  /// picks its experts on the host). Such a model's decode steps are built
  /// and queued on one thread (see [`crate::TokenGenerator::set_eval_thread`]).
  /// Default: `false`, the forward pass only builds a graph.
  fn evaluates_in_forward(&self) -> bool {
    false
  }

  /// Stack the projections that always run together (q/k/v, gate/up)
  /// into one matmul each, for inference: a decode step launches fewer
  /// kernels (no Python twin; mlx-lm runs them separately). The separate
  /// layers keep their names and values (views of the stacked weights), and
  /// any change to the weights (`load`, `visit_mut`: training, adapters,
  /// quantization) drops the stacks again. On a GPU it also keeps the dense
  /// weights' transposes as evaluated views (no copy:
  /// `mlxrs_nn::Linear::keep_transposed`), so a step's matmuls need no
  /// transpose nodes. Loading calls it through [`fuse_for_inference`].
  /// Default: nothing to stack.
  fn fuse_projections(&mut self) -> Result<()> {
    Ok(())
  }

  /// Gradient checkpointing of the decoder blocks (python mlx-lm
  /// `tuner/trainer.py` `grad_checkpoint(model.layers[0])`, the
  /// `--grad-checkpoint` of `mlx_lm.lora`): with `Some(trainable)` (the
  /// paths, as [`LanguageModel::visit`] names them, of the parameters
  /// gradients are taken for) every block runs as one
  /// [`mlxrs_core::transforms::checkpoint`]ed function of its input and its
  /// trainable tensors, so the backward pass recomputes the block's
  /// activations instead of keeping them; `None` turns it off. While it is
  /// on, the caches passed to the forward are left unfilled (it is for
  /// training, whose caches are fresh and discarded). Implemented once in
  /// the shared block loops (`Decoder`, `Llama`); other architectures
  /// return an `Err`.
  fn set_grad_checkpoint(&mut self, trainable: Option<BTreeSet<String>>) -> Result<()> {
    match trainable {
      None => Ok(()),
      Some(_) => Err(mlxrs_core::Error::InvalidArgument(
        "gradient checkpointing is not supported by this architecture (it runs its own block loop)"
          .into(),
      )),
    }
  }

  /// Hidden states for a left-padded batch (python `BatchKVCache` with
  /// `left_padding`, used by `batch_generate`): `tokens` `[B, T]`, and per
  /// row `key_valid[b][j]` says whether key position `j` (of the cache's
  /// `offset + T` positions after this call) is a real token rather than
  /// padding. Padding keys are hidden from every other query. Architectures
  /// that do not implement it return an `Err`.
  fn hidden_padded(
    &self,
    tokens: &Array,
    caches: &mut [KvCache],
    key_valid: &[Vec<bool>],
  ) -> Result<Array> {
    let _ = (tokens, caches, key_valid);
    Err(mlxrs_core::Error::InvalidArgument(format!(
      "batched generation (left-padded prompts) is not implemented for this architecture; supported: {}",
      crate::batch::BATCH_MODEL_TYPES.join(", ")
    )))
  }

  /// Caches for a left-padded batch ([`LanguageModel::hidden_padded`]),
  /// when they differ from `make_caches(None)` (`None`: the same).
  /// Models with sliding-window layers return standard caches here and
  /// apply each layer's window in their padded masks, so rows of any
  /// length batch exactly (python `BatchRotatingKVCache` keeps window-sized
  /// buffers instead; these hold the batch's whole width).
  fn make_batch_caches(&self) -> Option<Vec<KvCache>> {
    None
  }

  /// Input embeddings `[B, T, hidden]` of `tokens` `[B, T]` (python
  /// `model.embed_tokens(tokens)` / `get_input_embeddings()`): the raw
  /// table rows, before any scaling the forward applies (Gemma's
  /// `sqrt(hidden)` is applied by [`LanguageModel::hidden_from_embeddings`],
  /// as mlx-lm applies it to `input_embeddings` too). Vision-language
  /// models replace the image tokens' rows and feed the result back.
  /// Architectures that do not implement it return an `Err`.
  fn embed_tokens(&self, tokens: &Array) -> Result<Array> {
    let _ = tokens;
    Err(no_embeddings_entry())
  }

  /// Hidden states `[B, T, hidden]` after the final norm for input
  /// embeddings `[B, T, hidden]` (python `model(inputs, cache,
  /// input_embeddings=embeddings)`), appending to `caches`. `mask`: `None`
  /// builds the model's own causal (and sliding-window) masks from the
  /// caches, as [`LanguageModel::hidden`] does; `Some(m)` uses `m` for
  /// every layer (e.g. [`AttnMask::None`] for PaliGemma's bidirectional
  /// prefix). [`LanguageModel::hidden`] equals this on
  /// [`LanguageModel::embed_tokens`]. Architectures that do not implement
  /// it return an `Err`.
  fn hidden_from_embeddings(
    &self,
    embeddings: &Array,
    caches: &mut [KvCache],
    mask: Option<&AttnMask>,
  ) -> Result<Array> {
    let _ = (embeddings, caches, mask);
    Err(no_embeddings_entry())
  }

  /// Logits `[B, T, V]` for `tokens` (python `model(tokens, cache)`).
  fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    let h = self.hidden(tokens, caches)?;
    self.logits(&h)
  }
}

/// The error of the default [`LanguageModel::embed_tokens`] /
/// [`LanguageModel::hidden_from_embeddings`].
fn no_embeddings_entry() -> mlxrs_core::Error {
  mlxrs_core::Error::InvalidArgument(format!(
    "this architecture has no input-embeddings entry point; supported: {}",
    EMBEDDINGS_MODEL_TYPES.join(", ")
  ))
}

/// The `model_type`s whose models take input embeddings
/// ([`LanguageModel::hidden_from_embeddings`]), i.e. can be the text side
/// of a vision-language model.
pub const EMBEDDINGS_MODEL_TYPES: &[&str] = &[
  "apertus",
  "bailing_moe",
  "cohere",
  "cohere2",
  "dbrx",
  "deepseek_v2",
  "ernie4_5",
  "ernie4_5_moe",
  "exaone",
  "exaone4",
  "gemma",
  "gemma2",
  "gemma3_text",
  "glm4",
  "glm4_moe",
  "gpt2",
  "gpt_bigcode",
  "gpt_neox",
  "granite",
  "granitemoe",
  "helium",
  "hunyuan",
  "internlm2",
  "internlm3",
  "llama",
  "llama4_text",
  "mimo",
  "minicpm",
  "minicpm3",
  "ministral3",
  "mistral",
  "nemotron",
  "olmoe",
  "phi",
  "phimoe",
  "qwen2",
  "qwen2_moe",
  "qwen3",
  "seed_oss",
  "stablelm",
  "starcoder2",
];

/// Builds a model from its (merged) config.json.
pub type Builder = fn(&Value) -> Result<Box<dyn LanguageModel>>;

/// `model_type` aliases (mlx-lm's `MODEL_REMAPPING`).
pub const ALIASES: &[(&str, &str)] = &[("mistral", "llama"), ("falcon_mamba", "mamba")];

/// The registry: `model_type` -> builder.
pub fn registry() -> Vec<(&'static str, Builder)> {
  vec![
    ("llama", crate::models::llama::build as Builder),
    ("gemma", crate::models::gemma::build),
    ("qwen2", crate::models::qwen2::build),
    ("qwen3", crate::models::qwen3::build),
    ("gemma2", crate::models::gemma2::build),
    ("gemma3_text", crate::models::gemma3_text::build),
    ("olmo2", crate::models::olmo2::build),
    ("phi3", crate::models::phi3::build),
    ("smollm3", crate::models::smollm3::build),
    ("qwen3_moe", crate::models::qwen3_moe::build),
    ("mixtral", crate::models::mixtral::build),
    ("gpt_oss", crate::models::gpt_oss::build),
    ("deepseek_v3", crate::models::deepseek_v3::build),
    ("granite", crate::models::granite::build),
    ("helium", crate::models::helium::build),
    ("internlm3", crate::models::internlm3::build),
    ("olmo3", crate::models::olmo3::build),
    ("starcoder2", crate::models::starcoder2::build),
    ("stablelm", crate::models::stablelm::build),
    ("phi", crate::models::phi::build),
    ("cohere", crate::models::cohere::build),
    ("glm4", crate::models::glm4::build),
    ("minicpm", crate::models::minicpm::build),
    ("seed_oss", crate::models::seed_oss::build),
    ("ernie4_5", crate::models::ernie4_5::build),
    ("gpt2", crate::models::gpt2::build),
    ("gpt_bigcode", crate::models::gpt2::build_bigcode),
    ("qwen2_moe", crate::models::qwen2_moe::build),
    ("exaone", crate::models::exaone::build),
    ("gpt_neox", crate::models::gpt_neox::build),
    ("mimo", crate::models::mimo::build),
    ("exaone4", crate::models::exaone4::build),
    ("cohere2", crate::models::cohere::build2),
    ("internlm2", crate::models::internlm2::build),
    ("nemotron", crate::models::nemotron::build),
    ("granitemoe", crate::models::granitemoe::build),
    ("olmoe", crate::models::olmoe::build),
    ("mamba", crate::models::mamba::build),
    ("mamba2", crate::models::mamba2::build),
    ("lfm2", crate::models::lfm2::build),
    ("qwen3_next", crate::models::qwen3_next::build),
    ("qwen3_5", crate::models::qwen3_5::build),
    ("nemotron_h", crate::models::nemotron_h::build),
    ("falcon_h1", crate::models::falcon_h1::build),
    ("jamba", crate::models::jamba::build),
    ("granitemoehybrid", crate::models::granitemoehybrid::build),
    ("recurrent_gemma", crate::models::recurrent_gemma::build),
    ("rwkv7", crate::models::rwkv7::build),
    ("kimi_linear", crate::models::kimi_linear::build),
    ("qwen3_5_moe", crate::models::qwen3_5::build),
    ("deepseek_v2", crate::models::deepseek_v2::build),
    ("glm4_moe", crate::models::glm4_moe::build),
    ("phimoe", crate::models::phimoe::build),
    ("minicpm3", crate::models::minicpm3::build),
    ("hunyuan", crate::models::hunyuan::build),
    ("ministral3", crate::models::ministral3::build),
    ("llama4_text", crate::models::llama4_text::build),
    ("apertus", crate::models::apertus::build),
    ("ernie4_5_moe", crate::models::ernie4_5_moe::build),
    ("bailing_moe", crate::models::bailing_moe::build),
    ("dbrx", crate::models::dbrx::build),
    ("gemma4_text", crate::models::gemma4_text::build),
    ("gemma3n", crate::models::gemma3n::build),
    ("phi3small", crate::models::phi3small::build),
  ]
}

/// Supported `model_type` names (incl. aliases), sorted.
pub fn supported_model_types() -> Vec<&'static str> {
  let mut v: Vec<&str> = registry()
    .iter()
    .map(|(n, _)| *n)
    .chain(ALIASES.iter().map(|(a, _)| *a))
    .collect();
  v.sort();
  v.dedup();
  v
}

/// [`LanguageModel::fuse_projections`], unless `MLXRS_FUSE_PROJECTIONS=0`
/// (for side-by-side timing of the unstacked model). The loaders call it
/// (`load`, `load_model_dir*`, GGUF, the benchmark's random models).
pub fn fuse_for_inference(model: &mut dyn LanguageModel) -> Result<()> {
  if std::env::var_os("MLXRS_FUSE_PROJECTIONS").is_some_and(|v| v == "0") {
    return Ok(());
  }
  model.fuse_projections()?;
  // The unstacked weights' buffers went to MLX's cache: give them back.
  mlxrs_core::memory::clear_cache()
}

/// Build the model for `config` (its `model_type`, after aliases).
pub fn build_model(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let mt = config
    .get("model_type")
    .and_then(Value::as_str)
    .ok_or_else(|| {
      mlxrs_core::Error::InvalidArgument("config.json has no \"model_type\"".into())
    })?;
  let resolved = ALIASES
    .iter()
    .find(|(a, _)| *a == mt)
    .map(|(_, t)| *t)
    .unwrap_or(mt);
  match registry().into_iter().find(|(n, _)| *n == resolved) {
    Some((_, b)) => {
      crate::validate::validate_text_config(config)?;
      b(config)
    }
    None => Err(mlxrs_core::Error::InvalidArgument(format!(
      "model type {mt:?} is not supported; supported: {}",
      supported_model_types().join(", ")
    ))),
  }
}

/// Deserialize a model's args struct from config.json, with an error naming
/// the model type and the field.
pub fn parse_args<T: serde::de::DeserializeOwned>(config: &Value) -> Result<T> {
  serde_json::from_value(config.clone()).map_err(|e| {
    mlxrs_core::Error::InvalidArgument(format!(
      "config.json ({}): {e}",
      config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("?")
    ))
  })
}
