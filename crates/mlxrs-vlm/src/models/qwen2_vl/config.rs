//! The Qwen2-VL / Qwen2.5-VL config (mlx-vlm `qwen2_vl/config.py`).

use super::*;

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

pub(super) fn d_depth() -> i32 {
  32
}
pub(super) fn d_heads() -> i32 {
  16
}
pub(super) fn d_patch() -> i32 {
  14
}
pub(super) fn d_mlp_ratio() -> f32 {
  4.0
}
pub(super) fn d_three() -> i32 {
  3
}
pub(super) fn d_two() -> i32 {
  2
}
pub(super) fn d_window() -> i32 {
  112
}
pub(super) fn d_fullatt() -> Vec<i32> {
  vec![7, 15, 23, 31]
}
pub(super) fn d_theta() -> f32 {
  1_000_000.0
}

/// `VisionConfig` of mlx-vlm's `qwen2_vl` / `qwen2_5_vl` (config.json's
/// `vision_config`; defaults as mlx-vlm's).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionArgs {
  /// Blocks.
  #[serde(default = "d_depth")]
  pub depth: i32,
  /// Qwen2-VL: block width (default 1280).
  pub embed_dim: Option<i32>,
  /// Qwen2-VL: the merger's output width (the LM's); Qwen2.5-VL: the block
  /// width.
  pub hidden_size: Option<i32>,
  /// Qwen2.5-VL: MLP width (default 3420).
  pub intermediate_size: Option<i32>,
  /// Qwen2.5-VL: the merger's output width (default 1536).
  pub out_hidden_size: Option<i32>,
  /// Attention heads.
  #[serde(default = "d_heads")]
  pub num_heads: i32,
  /// Spatial patch size.
  #[serde(default = "d_patch")]
  pub patch_size: i32,
  /// Qwen2-VL: MLP width / block width.
  #[serde(default = "d_mlp_ratio")]
  pub mlp_ratio: f32,
  /// Image channels.
  #[serde(default = "d_three")]
  pub in_channels: i32,
  /// Patches merged per side into one LM token.
  #[serde(default = "d_two")]
  pub spatial_merge_size: i32,
  /// Frames per temporal patch.
  #[serde(default = "d_two")]
  pub temporal_patch_size: i32,
  /// Qwen2.5-VL: attention window side in pixels.
  #[serde(default = "d_window")]
  pub window_size: i32,
  /// Qwen2.5-VL: blocks with full (per-image) attention.
  #[serde(default = "d_fullatt")]
  pub fullatt_block_indexes: Vec<i32>,
}

/// The language model's settings (`TextConfig` of mlx-vlm's qwen2_vl).
#[derive(Debug, Clone, Deserialize)]
pub struct TextArgs {
  /// Width.
  pub hidden_size: i32,
  /// Decoder layers.
  pub num_hidden_layers: i32,
  /// MLP width.
  pub intermediate_size: i32,
  /// Query heads.
  pub num_attention_heads: i32,
  /// RMSNorm epsilon.
  pub rms_norm_eps: f32,
  /// Vocabulary size.
  pub vocab_size: i32,
  /// Key/value heads (mlx-vlm's default: 8 for Qwen2-VL, the query heads
  /// for Qwen2.5-VL).
  pub num_key_value_heads: Option<i32>,
  /// RoPE base.
  #[serde(default = "d_theta")]
  pub rope_theta: f32,
  /// `{"type": "mrope" | "default", "mrope_section": [t, h, w]}`.
  pub rope_scaling: Option<Value>,
  /// transformers 5's form: `{"rope_type", "rope_theta", "mrope_section"}`
  /// (used when `rope_scaling` is absent).
  pub rope_parameters: Option<Value>,
  /// Tie the output head to the embedding (mlx-vlm's default: false for
  /// Qwen2-VL, true for Qwen2.5-VL).
  pub tie_word_embeddings: Option<bool>,
}

/// Which of the two families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
  /// `qwen2_vl`.
  Qwen2Vl,
  /// `qwen2_5_vl`.
  Qwen25Vl,
}

/// A parsed Qwen2-VL / Qwen2.5-VL config.json.
#[derive(Debug, Clone)]
pub struct Qwen2VlConfig {
  /// The family.
  pub family: Family,
  /// Vision tower settings.
  pub vision: VisionArgs,
  /// Language model settings.
  pub text: TextArgs,
  /// `<|image_pad|>`'s id.
  pub image_token_id: u32,
  /// `<|video_pad|>`'s id.
  pub video_token_id: u32,
  /// `<|vision_start|>`'s id.
  pub vision_start_token_id: u32,
  /// M-RoPE sections `[t, h, w]` (in frequencies).
  pub mrope_section: [usize; 3],
}

pub(super) fn token_id(config: &Value, key: &str, default: u32) -> Result<u32> {
  match config.get(key) {
    None | Some(Value::Null) => Ok(default),
    Some(v) => v
      .as_u64()
      .filter(|x| *x <= u32::MAX as u64)
      .map(|x| x as u32)
      .ok_or_else(|| Error::invalid(format!("config.json: `{key}` must be a token id, got {v}"))),
  }
}

impl Qwen2VlConfig {
  /// Parse config.json (`text` is the root merged with `text_config`, as
  /// [`mlxrs_lm::ModelConfig::text_config`] builds it).
  pub fn parse(family: Family, raw: &Value, text: &Value) -> Result<Self> {
    let vision_raw = raw
      .get("vision_config")
      .cloned()
      .unwrap_or_else(|| Value::Object(Default::default()));
    let vision: VisionArgs = serde_json::from_value(vision_raw)
      .map_err(|e| Error::invalid(format!("config.json `vision_config`: {e}")))?;
    let text_args: TextArgs = serde_json::from_value(text.clone())
      .map_err(|e| Error::invalid(format!("config.json (text model): {e}")))?;
    let t = &text_args;
    let kv = t.num_key_value_heads.unwrap_or(match family {
      Family::Qwen2Vl => 8,
      Family::Qwen25Vl => t.num_attention_heads,
    });
    if t.hidden_size <= 0
      || t.num_attention_heads <= 0
      || kv <= 0
      || t.num_attention_heads % kv != 0
      || t.hidden_size % t.num_attention_heads != 0
      || t.num_hidden_layers < 0
      || t.vocab_size <= 0
    {
      return Err(Error::invalid(format!(
        "config.json: inconsistent text model sizes (hidden_size {}, num_attention_heads {}, num_key_value_heads {kv}, vocab_size {})",
        t.hidden_size, t.num_attention_heads, t.vocab_size
      )));
    }
    let head_dim = (t.hidden_size / t.num_attention_heads) as usize;
    if head_dim % 2 != 0 {
      return Err(Error::invalid(format!(
        "config.json: head dim {head_dim} must be even"
      )));
    }
    let mut section = [24usize, 20, 20];
    let mut rope_theta = t.rope_theta;
    let rope = t.rope_scaling.as_ref().filter(|v| !v.is_null());
    let rope = match (rope, t.rope_parameters.as_ref().filter(|v| v.is_object())) {
      (None, Some(rp)) => {
        if text.get("rope_theta").is_none() {
          if let Some(th) = rp.get("rope_theta").and_then(Value::as_f64) {
            rope_theta = th as f32;
          }
        }
        Some(rp)
      }
      (r, _) => r,
    };
    if let Some(rs) = rope {
      let ty = rs
        .get("type")
        .or_else(|| rs.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
      if ty != "mrope" && ty != "default" {
        return Err(Error::invalid(format!(
          "config.json: rope_scaling type must be \"mrope\" or \"default\", got {ty:?}"
        )));
      }
      if let Some(s) = rs.get("mrope_section") {
        let v: Vec<usize> = s
          .as_array()
          .filter(|a| a.len() == 3)
          .map(|a| {
            a.iter()
              .filter_map(Value::as_u64)
              .map(|x| x as usize)
              .collect()
          })
          .filter(|v: &Vec<usize>| v.len() == 3)
          .ok_or_else(|| {
            Error::invalid(format!(
              "config.json: rope_scaling.mrope_section must be 3 integers, got {s}"
            ))
          })?;
        section = [v[0], v[1], v[2]];
      }
    }
    let v = &vision;
    let width = match family {
      Family::Qwen2Vl => v.embed_dim.unwrap_or(1280),
      Family::Qwen25Vl => v.hidden_size.unwrap_or(1280),
    };
    if v.depth < 0
      || v.num_heads <= 0
      || width <= 0
      || width % v.num_heads != 0
      || (width / v.num_heads) % 4 != 0
      || v.patch_size <= 0
      || v.spatial_merge_size <= 0
      || v.temporal_patch_size <= 0
      || v.in_channels <= 0
    {
      return Err(Error::invalid(format!(
        "config.json: inconsistent vision_config (width {width}, num_heads {}, patch_size {}, spatial_merge_size {})",
        v.num_heads, v.patch_size, v.spatial_merge_size
      )));
    }
    if family == Family::Qwen25Vl && v.window_size / v.spatial_merge_size / v.patch_size <= 0 {
      return Err(Error::invalid(format!(
        "config.json: vision_config.window_size {} is smaller than spatial_merge_size * patch_size",
        v.window_size
      )));
    }
    Ok(Qwen2VlConfig {
      family,
      image_token_id: token_id(raw, "image_token_id", 151655)?,
      video_token_id: token_id(raw, "video_token_id", 151656)?,
      vision_start_token_id: token_id(raw, "vision_start_token_id", 151652)?,
      mrope_section: section,
      vision,
      text: TextArgs {
        num_key_value_heads: Some(kv),
        rope_theta,
        ..text_args
      },
    })
  }

  /// Whether the output head is tied to the embedding.
  pub fn tie_word_embeddings(&self) -> bool {
    self
      .text
      .tie_word_embeddings
      .unwrap_or(self.family == Family::Qwen25Vl)
  }
}
