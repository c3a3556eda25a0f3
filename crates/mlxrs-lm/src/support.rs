//! What each supported `model_type` can do, from the registry
//! ([`crate::model::registry`]) and the capability lists; renders
//! `docs/models.md` (kept equal to [`models_markdown`] by the
//! `models_doc` test, so the table cannot drift from the code).

use crate::batch::BATCH_MODEL_TYPES;
use crate::model::{ALIASES, EMBEDDINGS_MODEL_TYPES, registry, supported_model_types};

/// `model_type`s whose default caches include sliding-window (rotating)
/// layers: speculative decoding works only until a window wraps; those that
/// batch do so through whole-width caches with the windows in their masks
/// (`LanguageModel::make_batch_caches`). (llama / smollm3 join them when
/// their config's `layer_types` has `sliding_attention`.)
pub const SLIDING_MODEL_TYPES: &[&str] = &[
  "cohere2",
  "exaone4",
  "gemma3_text",
  "gemma3n",
  "gemma4_text",
  "gpt_oss",
  "ministral3",
  "olmo3",
];

/// `model_type`s with recurrent layers (SSM / linear attention / RG-LRU:
/// `ArraysCache` state in their caches): no rotating caches, no
/// speculative rewinding, no left-padded batches (generation refuses each
/// by name).
pub const RECURRENT_MODEL_TYPES: &[&str] = &[
  "falcon_h1",
  "falcon_mamba",
  "granitemoehybrid",
  "jamba",
  "kimi_linear",
  "lfm2",
  "mamba",
  "mamba2",
  "nemotron_h",
  "qwen3_5",
  "qwen3_5_moe",
  "qwen3_next",
  "recurrent_gemma",
  "rwkv7",
];

/// One row of the support table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSupport {
  /// config.json `model_type`.
  pub model_type: &'static str,
  /// The registry entry it resolves to (itself, or an alias target).
  pub implementation: &'static str,
  /// Quantized checkpoints (affine 2..8-bit, mxfp4 ... as the loader reads
  /// them): every architecture.
  pub quantized: bool,
  /// Left-padded batches (`batch_generate`).
  pub batch: bool,
  /// Rotating caches under `max_kv_size` (every architecture without
  /// recurrent layers).
  pub rotating_cache: bool,
  /// Input embeddings entry (a VLM's text side).
  pub embeddings: bool,
  /// Speculative decoding with trimmable caches (false: only until a
  /// sliding window wraps, or not at all with recurrent layers).
  pub speculative: bool,
  /// Recurrent (state-space / linear-attention) layers.
  pub recurrent: bool,
}

/// Every supported `model_type` (incl. aliases) with what it supports,
/// sorted by name.
pub fn model_support() -> Vec<ModelSupport> {
  let reg: Vec<&str> = registry().iter().map(|(n, _)| *n).collect();
  supported_model_types()
    .into_iter()
    .map(|mt| {
      let implementation = ALIASES
        .iter()
        .find(|(a, _)| *a == mt)
        .map(|(_, t)| *t)
        .or_else(|| reg.iter().copied().find(|n| *n == mt))
        .unwrap_or(mt);
      let sliding = SLIDING_MODEL_TYPES.contains(&mt);
      let recurrent = RECURRENT_MODEL_TYPES.contains(&mt);
      ModelSupport {
        model_type: mt,
        implementation,
        quantized: true,
        batch: BATCH_MODEL_TYPES.contains(&mt),
        rotating_cache: !recurrent,
        embeddings: EMBEDDINGS_MODEL_TYPES.contains(&mt),
        speculative: !sliding && !recurrent,
        recurrent,
      }
    })
    .collect()
}

/// `docs/models.md`: the support table in Markdown.
pub fn models_markdown() -> String {
  let yes = |b: bool| if b { "yes" } else { "-" };
  let mut s = String::from(
    "# Supported language-model architectures\n\n\
     Generated from the registry (`mlxrs_lm::support::models_markdown`); the\n\
     `models_doc` test of mlxrs-lm fails when this file differs (regenerate\n\
     with `MLXRS_BLESS=1 cargo test -p mlxrs-lm --test models_doc`).\n\n\
     Columns: **quantized** checkpoints (as `mlx_lm.convert -q` writes them);\n\
     **batch** = several rows at once (`batch_generate`, the server's batches:\n\
     left-padded prompts); **rotating** =\n\
     rotating KV caches under `--max-kv-size`; **embeddings** = input-embeddings\n\
     entry (can be a VLM's text side); **speculative** = draft-model decoding\n\
     with trimmable caches (`-` here: sliding-window layers, which work only\n\
     until a window wraps); **recurrent** = state-space / linear-attention\n\
     layers whose `ArraysCache` state cannot be rotated, rewound or padded\n\
     (those requests fail with an error naming them; prompt caches save and\n\
     load in mlx-lm's layout). Each is implemented after mlx-lm's\n\
     `mlx_lm/models/<implementation>.py` and checked against it on a tiny\n\
     fixture in `models/tiny/`. Any other `model_type` is refused with the\n\
     list of these.\n\n\
     | model_type | implementation | quantized | batch | rotating | embeddings | speculative | recurrent |\n\
     |---|---|---|---|---|---|---|---|\n",
  );
  for m in model_support() {
    s.push_str(&format!(
      "| `{}` | `{}` | {} | {} | {} | {} | {} | {} |\n",
      m.model_type,
      m.implementation,
      yes(m.quantized),
      yes(m.batch),
      yes(m.rotating_cache),
      yes(m.embeddings),
      yes(m.speculative),
      yes(m.recurrent),
    ));
  }
  s.push_str(&format!(
    "\n{} model types ({} implementations).\n",
    supported_model_types().len(),
    registry().len()
  ));
  s
}
