//! OLMo 3: mlx-lm's `models/olmo3.py` — OLMo 2's blocks (post-branch
//! norms, q/k norms over the whole projection) with `layer_types`: sliding-
//! window layers (plain RoPE, rotating caches of `sliding_window`) and full
//! layers (RoPE with `rope_scaling`); default three sliding layers then one
//! full. MLPs have no bias; untied by default.

use mlxrs_core::{Error, Result};
use serde_json::{Value, json};

use super::base::with_default;
use super::llama::LlamaArgs;
use super::olmo2::build_with_sliding;
use crate::model::{LanguageModel, parse_args};

/// Registry entry for `olmo3`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let cfg = with_default(config, &[("tie_word_embeddings", json!(false))]);
  let args: LlamaArgs = parse_args(&cfg)?;
  let n = args.num_hidden_layers.max(0) as usize;
  let types = args.layer_types.clone().unwrap_or_else(|| {
    (0..n)
      .map(|i| {
        if (i + 1) % 4 == 0 {
          "full_attention"
        } else {
          "sliding_attention"
        }
        .to_string()
      })
      .collect()
  });
  let mut sliding = Vec::with_capacity(types.len());
  for t in &types {
    sliding.push(match t.as_str() {
      "sliding_attention" => true,
      "full_attention" => false,
      other => {
        return Err(Error::InvalidArgument(format!(
          "config.json (olmo3): field \"layer_types\" has {other:?}; supported: \
           sliding_attention, full_attention"
        )));
      }
    });
  }
  match args.sliding_window {
    Some(w) if w > 0 => {}
    _ => {
      return Err(Error::InvalidArgument(
        "config.json (olmo3): field \"sliding_window\" must be a positive integer".into(),
      ));
    }
  }
  build_with_sliding(args, &sliding, false)
}
