//! Helium (Kyutai): mlx-lm's `models/helium.py` — the Llama block with
//! interleaved (traditional) RoPE, biases on q/k/v only (never o_proj), and
//! always an untied `lm_head`.

use mlxrs_core::Result;
use serde_json::{Value, json};

use super::base::reject_unhandled;
use super::llama::{Llama, LlamaArgs, Variant};
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `helium`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // helium.py uses a plain RoPE: a scaled checkpoint would be computed wrong.
  reject_unhandled(config, "helium", "rope_scaling", |_| false)?;
  let mut cfg = config.clone();
  if let Some(o) = cfg.as_object_mut() {
    // helium.py: head_dim = hidden / heads, traditional rope, an lm_head.
    o.remove("head_dim");
    o.insert("rope_traditional".into(), json!(true));
    o.insert("tie_word_embeddings".into(), json!(false));
  }
  let args: LlamaArgs = parse_args(&cfg)?;
  let bias = args.attention_bias;
  Ok(Box::new(Llama::new(
    args,
    Variant {
      qkv_bias: bias,
      o_bias: false,
      ..Variant::default()
    },
  )?))
}
