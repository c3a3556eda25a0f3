//! Qwen2-VL and Qwen2.5-VL: mlx-vlm's `models/qwen2_vl/` and
//! `models/qwen2_5_vl/` (`vision.py`, `language.py`, `qwen2_vl.py`).
//!
//! - Vision tower: a Conv3d patch embedding (`[C, T, P, P]` patches), 2-D
//!   rotary embeddings over (row, column) patch positions, pre-norm ViT
//!   blocks attending within each image (Qwen2.5-VL: within windows of
//!   `window_size` pixels, except the `fullatt_block_indexes` blocks), and a
//!   merger that concatenates each `merge_size x merge_size` group of patches
//!   and projects it to the language model's width.
//! - Language model: the Qwen2 decoder with multimodal RoPE (M-RoPE): each
//!   position has a (temporal, height, width) triple, and the rotary
//!   frequencies are split in `mrope_section` chunks, each rotated by one of
//!   the three coordinates. Text tokens use the same value for all three;
//!   image tokens use their grid coordinates (mlx-vlm's `get_rope_index`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_lm::LanguageModel;
use mlxrs_nn::{
  AttnMask, Embedding, KvCache, KvCacheKind, LayerNorm, Linear, Module, Param, RmsNorm, Weights,
  attention_with_cache_update, join, module, swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

fn d_depth() -> i32 {
  32
}
fn d_heads() -> i32 {
  16
}
fn d_patch() -> i32 {
  14
}
fn d_mlp_ratio() -> f32 {
  4.0
}
fn d_three() -> i32 {
  3
}
fn d_two() -> i32 {
  2
}
fn d_window() -> i32 {
  112
}
fn d_fullatt() -> Vec<i32> {
  vec![7, 15, 23, 31]
}
fn d_theta() -> f32 {
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

fn token_id(config: &Value, key: &str, default: u32) -> Result<u32> {
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

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

fn scalar(v: f64, dtype: Dtype) -> Result<Array> {
  Ok(Array::scalar_as(v, dtype)?)
}

/// `rotate_half`: `concat([-x2, x1], -1)` for halves `x1`, `x2` of the last axis.
fn rotate_half(x: &Array) -> Result<Array> {
  let s = x.shape();
  let nd = s.len();
  let d = s[nd - 1];
  let mut start = vec![0; nd];
  let mut stop = s.clone();
  let strides = vec![1; nd];
  stop[nd - 1] = d / 2;
  let x1 = ops::slice(x, &start, &stop, &strides)?;
  start[nd - 1] = d / 2;
  stop[nd - 1] = d;
  let x2 = ops::slice(x, &start, &stop, &strides)?;
  Ok(ops::concatenate_axis(&[ops::negative(&x2)?, x1], -1)?)
}

/// MLX's exact GELU as `nn.GELU()` computes it: `x * (1 + erf(x / sqrt(2))) / 2`.
fn gelu_exact(x: &Array) -> Result<Array> {
  let dt = x.dtype();
  let e = ops::erf(&ops::divide(x, &scalar(std::f64::consts::SQRT_2, dt)?)?)?;
  let y = ops::multiply(x, &ops::add(&scalar(1.0, dt)?, &e)?)?;
  Ok(ops::divide(&y, &scalar(2.0, dt)?)?)
}

/// `nn.GELU(approx="fast")`: `x * sigmoid(1.702 x)`.
fn gelu_fast(x: &Array) -> Result<Array> {
  Ok(mlxrs_nn::gelu_fast_approx(x)?)
}

/// `1 / base ** (arange(0, dim, 2) / dim)` computed by MLX (float32), as
/// mlx-vlm's `compute_inv_freq` / `VisionRotaryEmbedding`.
fn inv_freq(dim: i32, base: f32) -> Result<Array> {
  let idx = ops::arange(0.0, dim as f64, 2.0, Dtype::Float32)?;
  let e = ops::divide(&idx, &scalar(dim as f64, Dtype::Float32)?)?;
  let p = ops::power(&scalar(base as f64, Dtype::Float32)?, &e)?;
  Ok(ops::divide(&scalar(1.0, Dtype::Float32)?, &p)?)
}

enum Norm {
  Layer(LayerNorm),
  Rms(RmsNorm),
}

impl Norm {
  fn new(family: Family, dims: i32) -> Norm {
    match family {
      Family::Qwen2Vl => Norm::Layer(LayerNorm::new(dims, 1e-6, true, true)),
      Family::Qwen25Vl => Norm::Rms(RmsNorm::new(dims, 1e-6)),
    }
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    Ok(match self {
      Norm::Layer(n) => n.forward(x)?,
      Norm::Rms(n) => n.forward(x)?,
    })
  }
}

impl Module for Norm {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    match self {
      Norm::Layer(n) => n.load(w, prefix),
      Norm::Rms(n) => n.load(w, prefix),
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      Norm::Layer(n) => n.visit(prefix, f),
      Norm::Rms(n) => n.visit(prefix, f),
    }
  }
}

// ---------------------------------------------------------------------------
// Vision tower
// ---------------------------------------------------------------------------

struct Conv {
  weight: Param,
}
module!(Conv { weight });

struct PatchEmbed {
  proj: Conv,
}
module!(PatchEmbed { proj });

struct VisionAttention {
  qkv: Linear,
  proj: Linear,
  num_heads: i32,
  scale: f32,
}
module!(VisionAttention { qkv, proj });

/// `apply_rotary_pos_emb_vision(tensor [1, S, H, D], freqs [S, D/2])`.
fn rotary_vision(t: &Array, cos: &Array, sin: &Array) -> Result<Array> {
  let out = ops::add(
    &ops::multiply(t, cos)?,
    &ops::multiply(&rotate_half(t)?, sin)?,
  )?;
  Ok(ops::astype(&out, t.dtype())?)
}

impl VisionAttention {
  fn forward(&self, x: &Array, cu: &[i32], cos: &Array, sin: &Array) -> Result<Array> {
    let s = x.dim(0).unwrap_or(0);
    let qkv = ops::reshape(&self.qkv.forward(x)?, &[s, 3, self.num_heads, -1])?;
    let qkv = ops::transpose_axes(&qkv, &[1, 0, 2, 3])?;
    let parts = ops::split(&qkv, 3, 0)?;
    let q = rotary_vision(&parts[0], cos, sin)?;
    let k = rotary_vision(&parts[1], cos, sin)?;
    let t = |a: &Array| ops::transpose_axes(a, &[0, 2, 1, 3]);
    let (q, k, v) = (t(&q)?, t(&k)?, t(&parts[2])?);
    let mut outs = Vec::new();
    for win in cu.windows(2) {
      let (a, b) = (win[0], win[1]);
      if b <= a {
        continue;
      }
      let sl = |m: &Array| -> Result<Array> {
        let sh = m.shape();
        Ok(ops::slice(
          m,
          &[0, 0, a, 0],
          &[sh[0], sh[1], b, sh[3]],
          &[1, 1, 1, 1],
        )?)
      };
      outs.push(scaled_dot_product_attention(
        &sl(&q)?,
        &sl(&k)?,
        &sl(&v)?,
        self.scale,
        Mask::None,
      )?);
    }
    let o = if outs.len() == 1 {
      outs.pop().unwrap_or(q)
    } else {
      ops::concatenate_axis(&outs, 2)?
    };
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[s, -1])?;
    Ok(self.proj.forward(&o)?)
  }
}

enum VisionMlp {
  /// Qwen2-VL: `fc2(gelu_fast(fc1(x)))`.
  Gelu { fc1: Linear, fc2: Linear },
  /// Qwen2.5-VL: `down(silu(gate(x)) * up(x))`.
  Glu {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
  },
}

impl VisionMlp {
  fn forward(&self, x: &Array) -> Result<Array> {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => Ok(fc2.forward(&gelu_fast(&fc1.forward(x)?)?)?),
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => Ok(down_proj.forward(&swiglu(&gate_proj.forward(x)?, &up_proj.forward(x)?)?)?),
    }
  }
}

impl Module for VisionMlp {
  fn load(&mut self, w: &mut Weights, prefix: &str) {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => {
        fc1.load(w, &join(prefix, "fc1"));
        fc2.load(w, &join(prefix, "fc2"));
      }
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => {
        gate_proj.load(w, &join(prefix, "gate_proj"));
        up_proj.load(w, &join(prefix, "up_proj"));
        down_proj.load(w, &join(prefix, "down_proj"));
      }
    }
  }
  fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    match self {
      VisionMlp::Gelu { fc1, fc2 } => {
        fc1.visit(&join(prefix, "fc1"), f);
        fc2.visit(&join(prefix, "fc2"), f);
      }
      VisionMlp::Glu {
        gate_proj,
        up_proj,
        down_proj,
      } => {
        gate_proj.visit(&join(prefix, "gate_proj"), f);
        up_proj.visit(&join(prefix, "up_proj"), f);
        down_proj.visit(&join(prefix, "down_proj"), f);
      }
    }
  }
}

struct VisionBlock {
  norm1: Norm,
  norm2: Norm,
  attn: VisionAttention,
  mlp: VisionMlp,
}
module!(VisionBlock {
  norm1,
  norm2,
  attn,
  mlp
});

impl VisionBlock {
  fn forward(&self, x: &Array, cu: &[i32], cos: &Array, sin: &Array) -> Result<Array> {
    let h = ops::add(
      x,
      &self.attn.forward(&self.norm1.forward(x)?, cu, cos, sin)?,
    )?;
    Ok(ops::add(&h, &self.mlp.forward(&self.norm2.forward(&h)?)?)?)
  }
}

struct Merger {
  ln_q: Norm,
  mlp0: Linear,
  mlp2: Linear,
  hidden: i32,
}
module!(Merger { ln_q, mlp0 => "mlp.0", mlp2 => "mlp.2" });

impl Merger {
  fn forward(&self, x: &Array) -> Result<Array> {
    let x = ops::reshape(&self.ln_q.forward(x)?, &[-1, self.hidden])?;
    Ok(self.mlp2.forward(&gelu_exact(&self.mlp0.forward(&x)?)?)?)
  }
}

/// The vision tower (mlx-vlm's `VisionModel`): pixel patches in, one
/// LM-width feature per merged patch group out.
pub struct VisionTower {
  patch_embed: PatchEmbed,
  blocks: Vec<VisionBlock>,
  merger: Merger,
  args: VisionArgs,
  family: Family,
  width: i32,
  rot_inv_freq: Array,
}
module!(VisionTower {
  patch_embed,
  blocks,
  merger
});

/// `(hpos, wpos)` per patch in the processor's (block, sub-block) order
/// (mlx-vlm's `rot_pos_emb` position ids), for all images.
fn patch_positions(grids: &[[u32; 3]], ms: usize) -> Vec<[i32; 2]> {
  let mut out = Vec::new();
  for &[t, h, w] in grids {
    let (h, w) = (h as usize, w as usize);
    let mut one = Vec::with_capacity(h * w);
    for bh in 0..h / ms {
      for bw in 0..w / ms {
        for mh in 0..ms {
          for mw in 0..ms {
            one.push([(bh * ms + mh) as i32, (bw * ms + mw) as i32]);
          }
        }
      }
    }
    for _ in 0..t {
      out.extend_from_slice(&one);
    }
  }
  out
}

/// Qwen2.5-VL's `get_window_index`: the permutation of merged-patch groups
/// into windows, and the cumulative window lengths (in patches, deduplicated).
pub fn window_index(
  grids: &[[u32; 3]],
  window_size: i32,
  merge: i32,
  patch: i32,
) -> (Vec<i32>, Vec<i32>) {
  let vws = (window_size / merge / patch).max(1) as usize;
  let unit = merge * merge;
  let mut index = Vec::new();
  let mut cu = vec![0i32];
  let mut id0 = 0i32;
  for &[t, h, w] in grids {
    let (lh, lw) = (h as usize / merge as usize, w as usize / merge as usize);
    let pad_h = vws - lh % vws;
    let pad_w = vws - lw % vws;
    let (nwh, nww) = ((lh + pad_h) / vws, (lw + pad_w) / vws);
    for ti in 0..t as usize {
      for wy in 0..nwh {
        for wx in 0..nww {
          let mut n = 0;
          for y in wy * vws..(wy + 1) * vws {
            for x in wx * vws..(wx + 1) * vws {
              if y < lh && x < lw {
                index.push(id0 + (ti * lh * lw + y * lw + x) as i32);
                n += 1;
              }
            }
          }
          let last = *cu.last().unwrap_or(&0);
          cu.push(last + n * unit);
        }
      }
    }
    id0 += (t as usize * lh * lw) as i32;
  }
  cu.dedup();
  (index, cu)
}

impl VisionTower {
  fn new(c: &Qwen2VlConfig) -> Result<VisionTower> {
    let v = &c.vision;
    let fam = c.family;
    let width = match fam {
      Family::Qwen2Vl => v.embed_dim.unwrap_or(1280),
      Family::Qwen25Vl => v.hidden_size.unwrap_or(1280),
    };
    let out_dim = match fam {
      Family::Qwen2Vl => v.hidden_size.unwrap_or(1536),
      Family::Qwen25Vl => v.out_hidden_size.unwrap_or(1536),
    };
    if out_dim != c.text.hidden_size {
      return Err(Error::invalid(format!(
        "config.json: the vision merger outputs {out_dim} features but the language model is {} wide",
        c.text.hidden_size
      )));
    }
    let head_dim = width / v.num_heads;
    let mut blocks = Vec::new();
    for _ in 0..v.depth {
      let mlp = match fam {
        Family::Qwen2Vl => {
          let hid = (width as f32 * v.mlp_ratio) as i32;
          VisionMlp::Gelu {
            fc1: Linear::new(width, hid, true),
            fc2: Linear::new(hid, width, true),
          }
        }
        Family::Qwen25Vl => {
          let hid = v.intermediate_size.unwrap_or(3420);
          VisionMlp::Glu {
            gate_proj: Linear::new(width, hid, true),
            up_proj: Linear::new(width, hid, true),
            down_proj: Linear::new(hid, width, true),
          }
        }
      };
      blocks.push(VisionBlock {
        norm1: Norm::new(fam, width),
        norm2: Norm::new(fam, width),
        attn: VisionAttention {
          qkv: Linear::new(width, 3 * width, true),
          proj: Linear::new(width, width, true),
          num_heads: v.num_heads,
          scale: (head_dim as f32).powf(-0.5),
        },
        mlp,
      });
    }
    let merged = width * v.spatial_merge_size * v.spatial_merge_size;
    Ok(VisionTower {
      patch_embed: PatchEmbed {
        proj: Conv {
          weight: Param::new(&[
            width,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
            v.in_channels,
          ]),
        },
      },
      blocks,
      merger: Merger {
        ln_q: Norm::new(fam, width),
        mlp0: Linear::new(merged, merged, true),
        mlp2: Linear::new(merged, out_dim, true),
        hidden: merged,
      },
      rot_inv_freq: inv_freq(head_dim / 2, 10000.0)?,
      args: v.clone(),
      family: fam,
      width,
    })
  }

  /// The dtype pixel values are cast to (the patch embedding's).
  pub fn dtype(&self) -> Dtype {
    self.patch_embed.proj.weight.value.dtype()
  }

  /// Values per patch the tower expects (`C * T * P * P`).
  pub fn patch_dim(&self) -> i32 {
    let a = &self.args;
    a.in_channels * a.temporal_patch_size * a.patch_size * a.patch_size
  }

  /// Features `[sum(t*h*w) / merge^2, lm_hidden]` for `pixel_values
  /// [sum(t*h*w), C*T*P*P]` and per-image grids (mlx-vlm's
  /// `VisionModel.__call__`).
  pub fn forward(&self, pixel_values: &Array, grids: &[[u32; 3]]) -> Result<Array> {
    let a = &self.args;
    let ms = a.spatial_merge_size as u32;
    let n: i64 = grids
      .iter()
      .map(|g| g[0] as i64 * g[1] as i64 * g[2] as i64)
      .sum();
    if grids.is_empty()
      || grids
        .iter()
        .any(|g| g.contains(&0) || g[1] % ms != 0 || g[2] % ms != 0)
    {
      return Err(Error::invalid(format!(
        "image grids {grids:?} must be non-empty with sides that are multiples of spatial_merge_size {ms}"
      )));
    }
    let ps = pixel_values.shape();
    if ps.len() != 2 || ps[0] as i64 != n || ps[1] != self.patch_dim() {
      return Err(Error::invalid(format!(
        "pixel_values has shape {ps:?}, expected [{n}, {}] for grids {grids:?}",
        self.patch_dim()
      )));
    }
    // Patch embedding: [N, C, T, P, P] -> NDHWC -> Conv3d with stride = kernel.
    let x = ops::astype(pixel_values, self.dtype())?;
    let x = ops::reshape(
      &x,
      &[
        -1,
        a.in_channels,
        a.temporal_patch_size,
        a.patch_size,
        a.patch_size,
      ],
    )?;
    let x = ops::moveaxis(&x, 1, 4)?;
    let k = (a.temporal_patch_size, a.patch_size, a.patch_size);
    let x = ops::conv3d(
      &x,
      &self.patch_embed.proj.weight.value,
      k,
      (0, 0, 0),
      (1, 1, 1),
      1,
    )?;
    let mut x = ops::reshape(&x, &[-1, self.width])?;
    // 2-D rotary embedding: (row, column) per patch.
    let pos = patch_positions(grids, ms as usize);
    let max_grid = grids.iter().map(|g| g[1].max(g[2])).max().unwrap_or(1);
    let seq = ops::arange(0.0, max_grid as f64, 1.0, Dtype::Float32)?;
    let full = ops::outer(&seq, &self.rot_inv_freq)?;
    let flat: Vec<i32> = pos.iter().flat_map(|p| [p[0], p[1]]).collect();
    let ids = Array::from_slice(&flat, &[pos.len() as i32, 2])?;
    let mut rot = ops::reshape(&ops::take_axis(&full, &ids, 0)?, &[pos.len() as i32, -1])?;
    // Full-attention segments: one per image frame.
    let mut cu = vec![0i32];
    for g in grids {
      for _ in 0..g[0] {
        let last = *cu.last().unwrap_or(&0);
        cu.push(last + (g[1] * g[2]) as i32);
      }
    }
    let unit = a.spatial_merge_size * a.spatial_merge_size;
    let mut windows = None;
    if self.family == Family::Qwen25Vl {
      let (idx, cu_w) = window_index(grids, a.window_size, a.spatial_merge_size, a.patch_size);
      let s = n as i32;
      let ia = Array::from_slice(&idx, &[idx.len() as i32])?;
      let perm = |m: &Array| -> Result<Array> {
        let m = ops::reshape(m, &[s / unit, unit, -1])?;
        Ok(ops::reshape(&ops::take_axis(&m, &ia, 0)?, &[s, -1])?)
      };
      x = perm(&x)?;
      rot = perm(&rot)?;
      windows = Some((idx, cu_w));
    }
    // cos / sin [1, S, 1, D] (tile the D/2 frequencies twice).
    let prep = |f: &Array| -> Result<Array> {
      let f = ops::expand_dims(f, 1)?;
      let f = ops::tile(&f, &[1, 1, 2])?;
      Ok(ops::expand_dims(&f, 0)?)
    };
    let cos = prep(&ops::cos(&rot)?)?;
    let sin = prep(&ops::sin(&rot)?)?;
    for (i, blk) in self.blocks.iter().enumerate() {
      let seg = match &windows {
        Some((_, cu_w)) if !a.fullatt_block_indexes.contains(&(i as i32)) => cu_w.as_slice(),
        _ => cu.as_slice(),
      };
      x = blk.forward(&x, seg, &cos, &sin)?;
    }
    let mut out = self.merger.forward(&x)?;
    if let Some((idx, _)) = windows {
      let mut inv = vec![0i32; idx.len()];
      for (pos, &i) in idx.iter().enumerate() {
        inv[i as usize] = pos as i32;
      }
      out = ops::take_axis(&out, &Array::from_slice(&inv, &[inv.len() as i32])?, 0)?;
    }
    Ok(out)
  }
}

// ---------------------------------------------------------------------------
// Language model with M-RoPE
// ---------------------------------------------------------------------------

struct TextAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  n_heads: i32,
  n_kv: i32,
  scale: f32,
}
module!(TextAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj
});

impl TextAttention {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    cos: &Array,
    sin: &Array,
  ) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array, n: i32| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, n, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(self.q_proj.forward(x)?, self.n_heads)?;
    let k = heads(self.k_proj.forward(x)?, self.n_kv)?;
    let v = heads(self.v_proj.forward(x)?, self.n_kv)?;
    let rope = |t: &Array| -> Result<Array> {
      let o = ops::add(
        &ops::multiply(t, cos)?,
        &ops::multiply(&rotate_half(t)?, sin)?,
      )?;
      Ok(ops::astype(&o, t.dtype())?)
    };
    let (q, k) = (rope(&q)?, rope(&k)?);
    // Cache update + fused attention (quantized KV caches included).
    let o = attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    Ok(self.o_proj.forward(&o)?)
  }
}

struct TextMlp {
  gate_proj: Linear,
  up_proj: Linear,
  down_proj: Linear,
}
module!(TextMlp {
  gate_proj,
  up_proj,
  down_proj
});

struct TextBlock {
  self_attn: TextAttention,
  mlp: TextMlp,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
}
module!(TextBlock {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl TextBlock {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    cos: &Array,
    sin: &Array,
  ) -> Result<Array> {
    let h = ops::add(
      x,
      &self
        .self_attn
        .forward(&self.input_layernorm.forward(x)?, mask, cache, cos, sin)?,
    )?;
    let m = &self.mlp;
    let y = self.post_attention_layernorm.forward(&h)?;
    let y = m
      .down_proj
      .forward(&swiglu(&m.gate_proj.forward(&y)?, &m.up_proj.forward(&y)?)?)?;
    Ok(ops::add(&h, &y)?)
  }
}

struct TextInner {
  embed_tokens: Embedding,
  layers: Vec<TextBlock>,
  norm: RmsNorm,
}
module!(TextInner {
  embed_tokens,
  layers,
  norm
});

/// The multimodal part of the prompt being generated from, shared between
/// [`crate::VlmModel`] (which sets it) and the language model (which reads
/// it while the prompt is prefilled).
pub struct MultimodalPrompt {
  /// The expanded prompt ids.
  pub ids: Vec<u32>,
  /// Image features `[n_image_tokens, hidden]` (lazy), in prompt order.
  pub features: Option<Array>,
  /// Per prompt position: the feature row of an image token, else -1.
  pub feature_row: Vec<i32>,
  /// M-RoPE positions `[3][len]` (temporal, height, width).
  pub positions: [Vec<i32>; 3],
  /// `max(position) + 1 - len`: added to the cache offset after the prompt.
  pub rope_delta: i32,
}

/// The slot through which a prompt's multimodal data reaches the LM.
pub type PromptSlot = Arc<Mutex<Option<MultimodalPrompt>>>;

/// The Qwen2-VL language model (mlx-vlm's `LanguageModel`): the Qwen2
/// decoder with M-RoPE. As an [`mlxrs_lm::LanguageModel`] it runs in
/// mlxrs-lm's generation loop; while a [`MultimodalPrompt`] is set, prompt
/// positions take their embeddings (image features merged in) and M-RoPE
/// positions from it, and later positions continue at
/// `offset + rope_delta`, as mlx-vlm's `_rope_deltas` bookkeeping does.
pub struct Qwen2VlText {
  model: TextInner,
  lm_head: Option<Linear>,
  vocab: i32,
  tie: bool,
  inv_freq: Vec<f32>,
  selector: Vec<usize>,
  slot: PromptSlot,
}
module!(Qwen2VlText { model, lm_head });

impl Qwen2VlText {
  fn new(c: &Qwen2VlConfig, slot: PromptSlot) -> Result<Qwen2VlText> {
    let t = &c.text;
    let h = t.hidden_size;
    let nh = t.num_attention_heads;
    let nkv = t.num_key_value_heads.unwrap_or(nh);
    let hd = h / nh;
    let layers = (0..t.num_hidden_layers)
      .map(|_| TextBlock {
        self_attn: TextAttention {
          q_proj: Linear::new(h, nh * hd, true),
          k_proj: Linear::new(h, nkv * hd, true),
          v_proj: Linear::new(h, nkv * hd, true),
          o_proj: Linear::new(nh * hd, h, false),
          n_heads: nh,
          n_kv: nkv,
          scale: (hd as f32).powf(-0.5),
        },
        mlp: TextMlp {
          gate_proj: Linear::new(h, t.intermediate_size, false),
          up_proj: Linear::new(h, t.intermediate_size, false),
          down_proj: Linear::new(t.intermediate_size, h, false),
        },
        input_layernorm: RmsNorm::new(h, t.rms_norm_eps),
        post_attention_layernorm: RmsNorm::new(h, t.rms_norm_eps),
      })
      .collect();
    let tie = c.tie_word_embeddings();
    let mut f = inv_freq(hd, t.rope_theta)?;
    let inv = f.to_vec::<f32>()?;
    // mlx-vlm's chunked selector: frequency i rotates by coordinate
    // 0 (t) below section[0], 1 (h) in the next section[1], 2 (w) in the
    // next section[2]; anything past the sections stays temporal.
    let fdim = inv.len();
    let mut selector = vec![0usize; fdim];
    let mut off = c.mrope_section[0];
    for (dim, &len) in c.mrope_section.iter().enumerate().skip(1) {
      for s in selector
        .iter_mut()
        .take((off + len).min(fdim))
        .skip(off.min(fdim))
      {
        *s = dim;
      }
      off += len;
    }
    Ok(Qwen2VlText {
      model: TextInner {
        embed_tokens: Embedding::new(t.vocab_size, h),
        layers,
        norm: RmsNorm::new(h, t.rms_norm_eps),
      },
      lm_head: (!tie).then(|| Linear::new(h, t.vocab_size, false)),
      vocab: t.vocab_size,
      tie,
      inv_freq: inv,
      selector,
      slot,
    })
  }

  /// cos / sin `[1, 1, L, head_dim]` for M-RoPE positions `[3][L]`.
  fn cos_sin(&self, pos: [&[i32]; 3], dtype: Dtype) -> Result<(Array, Array)> {
    let l = pos[0].len();
    let f = self.inv_freq.len();
    let mut freqs = Vec::with_capacity(l * 2 * f);
    for (i, _) in pos[0].iter().enumerate() {
      let row: Vec<f32> = (0..f)
        .map(|j| pos[self.selector[j]][i] as f32 * self.inv_freq[j])
        .collect();
      freqs.extend_from_slice(&row);
      freqs.extend_from_slice(&row);
    }
    let emb = Array::from_slice(&freqs, &[1, 1, l as i32, (2 * f) as i32])?;
    Ok((
      ops::astype(&ops::cos(&emb)?, dtype)?,
      ops::astype(&ops::sin(&emb)?, dtype)?,
    ))
  }

  fn embed(&self, tokens: &Array, offset: i32, n: i32) -> Result<(Array, [Vec<i32>; 3])> {
    let h = self.model.embed_tokens.forward(tokens)?;
    let guard = self
      .slot
      .lock()
      .map_err(|_| Error::invalid("the multimodal prompt slot is poisoned"))?;
    let Some(st) = guard.as_ref() else {
      let p: Vec<i32> = (offset..offset + n).collect();
      return Ok((h, [p.clone(), p.clone(), p]));
    };
    let (start, end) = (offset as usize, (offset + n) as usize);
    if start < st.ids.len() && end > st.ids.len() {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} run past the end of the multimodal prompt ({} tokens)",
        st.ids.len()
      )));
    }
    if end > st.ids.len() {
      // After the prompt: all three coordinates continue at offset + delta.
      let p: Vec<i32> = (offset..offset + n).map(|x| x + st.rope_delta).collect();
      return Ok((h, [p.clone(), p.clone(), p]));
    }
    let mut tk = tokens.clone();
    let got = tk.to_vec::<i32>()?;
    let want = &st.ids[start..end];
    if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| *a as u32 != *b) {
      return Err(Error::invalid(format!(
        "tokens at positions {start}..{end} differ from the multimodal prompt prepared by VlmModel; \
         generate through VlmModel, or clear the prompt (VlmModel::clear_prompt) before text-only use"
      )));
    }
    let rows = &st.feature_row[start..end];
    let h = match (&st.features, rows.iter().any(|&r| r >= 0)) {
      (Some(feat), true) => {
        let idx: Vec<i32> = rows.iter().map(|&r| r.max(0)).collect();
        let mask: Vec<bool> = rows.iter().map(|&r| r >= 0).collect();
        let idx = Array::from_slice(&idx, &[n])?;
        let mask = Array::from_slice(&mask, &[1, n, 1])?;
        let gathered = ops::expand_dims(&ops::take_axis(feat, &idx, 0)?, 0)?;
        ops::where_(&mask, &gathered, &h)?
      }
      _ => h,
    };
    let p = [
      st.positions[0][start..end].to_vec(),
      st.positions[1][start..end].to_vec(),
      st.positions[2][start..end].to_vec(),
    ];
    Ok((h, p))
  }

  fn hidden_inner(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    if caches.len() != self.model.layers.len() {
      return Err(Error::invalid(format!(
        "{} caches for {} layers",
        caches.len(),
        self.model.layers.len()
      )));
    }
    let s = tokens.shape();
    if s.len() != 2 || s[0] != 1 {
      return Err(Error::invalid(format!("tokens must be [1, T], got {s:?}")));
    }
    let n = s[1];
    let offset = caches.first().map(|c| c.offset).unwrap_or(0);
    let (mut h, pos) = self.embed(tokens, offset, n)?;
    let (cos, sin) = self.cos_sin([&pos[0], &pos[1], &pos[2]], h.dtype())?;
    let mask = match caches.first() {
      Some(c) => c.make_mask(n, None)?,
      None => AttnMask::None,
    };
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      h = layer.forward(&h, &mask, cache, &cos, &sin)?;
    }
    Ok(self.model.norm.forward(&h)?)
  }
}

impl LanguageModel for Qwen2VlText {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> mlxrs_core::Result<Array> {
    self.hidden_inner(tokens, caches).map_err(|e| match e {
      Error::Core(c) => c,
      other => mlxrs_core::Error::InvalidArgument(other.to_string()),
    })
  }

  fn logits(&self, hidden: &Array) -> mlxrs_core::Result<Array> {
    match &self.lm_head {
      Some(head) => head.forward(hidden),
      None => self.model.embed_tokens.as_linear(hidden),
    }
  }

  fn make_caches(&self, max_kv_size: Option<i32>) -> Vec<KvCache> {
    self
      .model
      .layers
      .iter()
      .map(|_| match max_kv_size {
        Some(m) => KvCache::new(KvCacheKind::Rotating {
          max_size: m,
          keep: 4,
        }),
        None => KvCache::standard(),
      })
      .collect()
  }

  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "language_model");
  }

  fn vocab_size(&self) -> i32 {
    self.vocab
  }

  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "language_model", f);
  }
}

// ---------------------------------------------------------------------------
// M-RoPE positions (get_rope_index)
// ---------------------------------------------------------------------------

/// mlx-vlm's `get_rope_index` for one prompt with images (no video): M-RoPE
/// positions `[3][len]` and `rope_delta = max + 1 - len`. Images are counted
/// as in mlx-vlm: a `vision_start` token followed by an image token.
pub fn rope_index(
  ids: &[u32],
  grids: &[[u32; 3]],
  c: &Qwen2VlConfig,
) -> Result<([Vec<i32>; 3], i32)> {
  let n = ids.len();
  let ms = c.vision.spatial_merge_size as usize;
  let image_nums = ids
    .windows(2)
    .filter(|w| w[0] == c.vision_start_token_id && w[1] == c.image_token_id)
    .count();
  if grids.is_empty() || image_nums == 0 {
    let p: Vec<i32> = (0..n as i32).collect();
    return Ok(([p.clone(), p.clone(), p], 0));
  }
  let mut pos: [Vec<i32>; 3] = [
    Vec::with_capacity(n),
    Vec::with_capacity(n),
    Vec::with_capacity(n),
  ];
  let mut st = 0usize;
  let mut next = 0i32; // max position so far + 1
  for g in grids.iter().take(image_nums) {
    let ed = ids[st..]
      .iter()
      .position(|&t| t == c.image_token_id)
      .map(|p| p + st)
      .ok_or_else(|| Error::invalid("fewer image tokens than images in the prompt"))?;
    let (lt, lh, lw) = (g[0] as usize, g[1] as usize / ms, g[2] as usize / ms);
    let text_len = ed - st;
    for i in 0..text_len as i32 {
      for p in pos.iter_mut() {
        p.push(next + i);
      }
    }
    let base = next + text_len as i32;
    for ti in 0..lt {
      for hi in 0..lh {
        for wi in 0..lw {
          pos[0].push(base + ti as i32);
          pos[1].push(base + hi as i32);
          pos[2].push(base + wi as i32);
        }
      }
    }
    let m = (lt.max(lh).max(lw) as i32 - 1).max(0);
    next = base + m + 1;
    st = ed + lt * lh * lw;
    if st > n {
      return Err(Error::invalid(format!(
        "image {} needs {} tokens but the prompt ends first",
        pos[0].len(),
        lt * lh * lw
      )));
    }
  }
  for i in 0..(n - st) as i32 {
    for p in pos.iter_mut() {
      p.push(next + i);
    }
  }
  let max = pos
    .iter()
    .flat_map(|p| p.iter())
    .copied()
    .max()
    .unwrap_or(-1);
  Ok((pos, max + 1 - n as i32))
}

// ---------------------------------------------------------------------------
// Build and load
// ---------------------------------------------------------------------------

/// A built (unloaded) Qwen2-VL: vision tower + language model.
pub struct Qwen2Vl {
  /// The vision tower.
  pub vision: VisionTower,
  /// The language model.
  pub text: Qwen2VlText,
  /// The parsed config.
  pub config: Qwen2VlConfig,
}

impl Qwen2Vl {
  /// Build from config.json (`raw`) and its merged text config.
  pub fn new(family: Family, raw: &Value, text: &Value, slot: PromptSlot) -> Result<Qwen2Vl> {
    let config = Qwen2VlConfig::parse(family, raw, text)?;
    Ok(Qwen2Vl {
      vision: VisionTower::new(&config)?,
      text: Qwen2VlText::new(&config, slot)?,
      config,
    })
  }

  /// mlx-vlm's `Model.sanitize` + `VisionModel.sanitize`: HF key layouts
  /// (`visual.*`, `model.*`, `lm_head`, transformers 5's
  /// `model.visual.*` / `model.language_model.*`) to mlx-vlm's
  /// (`vision_tower.*`, `language_model.model.*`, `language_model.lm_head`),
  /// PyTorch Conv3d weights `[O, C, T, P, P]` to MLX's `[O, T, P, P, C]`,
  /// unused buffers dropped, and a tied head removed.
  pub fn sanitize(&self, weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let mut out = HashMap::with_capacity(weights.len());
    let c = self.config.vision.in_channels;
    for (k, v) in weights {
      if k.contains("position_ids") || k.contains("rotary_emb.inv_freq") {
        continue;
      }
      let key = if k.starts_with("vision_tower.") || k.starts_with("language_model.") {
        k
      } else if let Some(r) = k
        .strip_prefix("model.visual.")
        .or_else(|| k.strip_prefix("visual."))
      {
        format!("vision_tower.{r}")
      } else if let Some(r) = k.strip_prefix("model.language_model.") {
        format!("language_model.model.{r}")
      } else if let Some(r) = k.strip_prefix("model.") {
        format!("language_model.model.{r}")
      } else if let Some(r) = k.strip_prefix("lm_head.") {
        format!("language_model.lm_head.{r}")
      } else {
        k
      };
      let v = if key == "vision_tower.patch_embed.proj.weight" {
        let s = v.shape();
        if s.len() == 5 && s[4] != c && s[1] == c {
          ops::transpose_axes(&v, &[0, 2, 3, 4, 1])?
        } else {
          v
        }
      } else {
        v
      };
      out.insert(key, v);
    }
    if self.text.tie {
      for s in ["weight", "scales", "biases"] {
        out.remove(&format!("language_model.lm_head.{s}"));
      }
    }
    Ok(out)
  }
}

// ---------------------------------------------------------------------------
// VlmModel glue (processor + feature merge)
// ---------------------------------------------------------------------------

/// The Qwen2-VL / Qwen2.5-VL half of a [`crate::VlmModel`].
pub(crate) struct Qwen2VlFamily {
  vision: VisionTower,
  config: Qwen2VlConfig,
  processor: crate::processors::Qwen2VlImageProcessor,
  slot: PromptSlot,
}

/// Load a `qwen2_vl` / `qwen2_5_vl` checkpoint (python `mlx_vlm.load`).
pub(crate) fn load(
  path: &std::path::Path,
  config: mlxrs_lm::ModelConfig,
  opts: &crate::model::LoadOptions,
) -> Result<crate::family::LoadedFamily> {
  use crate::family::{finish_weights, loaded_model, open_weights, token_name};
  let family = match config.model_type()? {
    "qwen2_5_vl" => Family::Qwen25Vl,
    _ => Family::Qwen2Vl,
  };
  let slot: PromptSlot = Arc::new(Mutex::new(None));
  let mut m = Qwen2Vl::new(family, config.raw(), &config.text_config(), slot.clone())?;
  let mut w = open_weights(path, &config, opts, |w| m.sanitize(w))?;
  LanguageModel::load(&mut m.text, &mut w);
  Module::load(&mut m.vision, &mut w, "vision_tower");
  let mut params = Vec::new();
  LanguageModel::visit(&m.text, &mut |_, a| params.push(a.clone()));
  Module::visit(&m.vision, "", &mut |_, a| params.push(a.clone()));
  finish_weights(path, w, params)?;
  let tokenizer = mlxrs_lm::Tokenizer::from_dir(path)?;
  let image_token = token_name(&tokenizer, path, "image_token_id", m.config.image_token_id)?;
  let processor = crate::processors::Qwen2VlImageProcessor::from_dir(path)?;
  let v = &m.config.vision;
  if processor.patch_size as i32 != v.patch_size
    || processor.merge_size as i32 != v.spatial_merge_size
    || processor.temporal_patch_size as i32 != v.temporal_patch_size
  {
    return Err(Error::config(
      path.join("preprocessor_config.json"),
      "patch_size",
      format!(
        "patch {} / merge {} / temporal {} do not match config.json's vision_config ({} / {} / {})",
        processor.patch_size,
        processor.merge_size,
        processor.temporal_patch_size,
        v.patch_size,
        v.spatial_merge_size,
        v.temporal_patch_size
      ),
    ));
  }
  let Qwen2Vl {
    vision,
    text,
    config: qcfg,
  } = m;
  Ok(crate::family::LoadedFamily {
    lm: loaded_model(path, config, tokenizer, Box::new(text), opts),
    family: Box::new(Qwen2VlFamily {
      vision,
      config: qcfg,
      processor: processor.clone(),
      slot,
    }),
    image_token,
    qwen_processor: Some(processor),
  })
}

impl Qwen2VlFamily {
  fn no_video(&self, s: &crate::family::Shared<'_>, ids: &[u32]) -> Result<()> {
    if ids.contains(&self.config.video_token_id) {
      let tok = s
        .tokenizer
        .id_to_token(self.config.video_token_id)
        .unwrap_or_default();
      return Err(Error::invalid(format!(
        "the prompt holds a video placeholder ({tok}); videos are not supported yet"
      )));
    }
    Ok(())
  }
}

impl crate::family::VisionFamily for Qwen2VlFamily {
  /// python `Qwen2VLProcessor.__call__`: each `<|image_pad|>` becomes
  /// `t * h * w / merge_size^2` of them.
  fn process_ids(
    &self,
    s: &crate::family::Shared<'_>,
    ids: Vec<u32>,
    images: &[crate::image::RgbImage],
  ) -> Result<crate::model::VlmInput> {
    let img_id = self.config.image_token_id;
    self.no_video(s, &ids)?;
    let n_ph = ids.iter().filter(|&&t| t == img_id).count();
    if n_ph != images.len() {
      return Err(crate::family::placeholder_mismatch(
        n_ph,
        s.image_token,
        images.len(),
      ));
    }
    if images.is_empty() {
      return Ok(crate::model::VlmInput::text(ids));
    }
    let mut pv = self.processor.preprocess(images)?;
    if pv.cols as i32 != self.vision.patch_dim() {
      return Err(Error::invalid(format!(
        "the image processor makes patches of {} values but the vision tower expects {}",
        pv.cols,
        self.vision.patch_dim()
      )));
    }
    let m2 = (self.processor.merge_size * self.processor.merge_size) as usize;
    let mut out = Vec::with_capacity(ids.len());
    let mut k = 0;
    for t in ids {
      if t == img_id {
        let [gt, gh, gw] = pv.grid_thw[k];
        let n = gt as usize * gh as usize * gw as usize / m2;
        out.extend(std::iter::repeat_n(img_id, n));
        k += 1;
      } else {
        out.push(t);
      }
    }
    pv.grid_thw.shrink_to_fit();
    let mut input = crate::model::VlmInput::text(out);
    input.pixel_values = Some(pv);
    Ok(input)
  }

  /// Vision features in place of the image tokens, M-RoPE positions: put
  /// in the slot the language model reads (its positions are not the
  /// token index, so it keeps the prompt itself), no input embeddings.
  fn prompt_embeddings(
    &self,
    s: &crate::family::Shared<'_>,
    input: &crate::model::VlmInput,
  ) -> Result<Option<mlxrs_lm::PromptEmbeddings>> {
    let config = &self.config;
    let ids = &input.input_ids;
    self.no_video(s, ids)?;
    let img_id = config.image_token_id;
    let n_img_tokens = ids.iter().filter(|&&t| t == img_id).count();
    let state = match &input.pixel_values {
      None => {
        if n_img_tokens > 0 {
          return Err(crate::family::no_pixels(n_img_tokens, s.image_token));
        }
        None
      }
      Some(pv) => {
        let m2 = (config.vision.spatial_merge_size * config.vision.spatial_merge_size) as usize;
        let n_feat: usize = pv
          .grid_thw
          .iter()
          .map(|g| g[0] as usize * g[1] as usize * g[2] as usize / m2)
          .sum();
        if n_feat != n_img_tokens {
          return Err(crate::family::feature_mismatch(n_img_tokens, n_feat));
        }
        let features = s.features(input, || {
          let f = self.vision.forward(&pv.to_array()?, &pv.grid_thw)?;
          Ok(ops::astype(&f, s.dtype)?)
        })?;
        let (positions, rope_delta) = rope_index(ids, &pv.grid_thw, config)?;
        Some(MultimodalPrompt {
          ids: ids.clone(),
          features: Some(features),
          feature_row: crate::family::feature_rows(ids, img_id),
          positions,
          rope_delta,
        })
      }
    };
    crate::family::set_slot(&self.slot, state)?;
    Ok(None)
  }

  fn clear_prompt(&self) {
    crate::family::clear_slot(&self.slot);
  }

  fn images_first(&self) -> bool {
    self.config.family == Family::Qwen25Vl
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn cfg() -> Qwen2VlConfig {
    let raw = serde_json::json!({
      "model_type": "qwen2_vl", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
      "image_token_id": 9, "vision_start_token_id": 8, "video_token_id": 7,
      "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 64, "num_heads": 2}
    });
    Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw).unwrap()
  }

  #[test]
  fn rope_index_text_image_text() {
    let c = cfg();
    // 2 text, vision_start, 4 image tokens (grid 1x4x4 -> 2x2 merged), 2 text.
    let ids = [1, 2, 8, 9, 9, 9, 9, 3, 4];
    let (p, delta) = rope_index(&ids, &[[1, 4, 4]], &c).unwrap();
    assert_eq!(p[0], vec![0, 1, 2, 3, 3, 3, 3, 5, 6]);
    assert_eq!(p[1], vec![0, 1, 2, 3, 3, 4, 4, 5, 6]);
    assert_eq!(p[2], vec![0, 1, 2, 3, 4, 3, 4, 5, 6]);
    assert_eq!(delta, 7 - 9);
    // No images: plain positions.
    let (p, d) = rope_index(&[1, 2, 3], &[], &c).unwrap();
    assert_eq!((p[1].clone(), d), (vec![0, 1, 2], 0));
  }

  #[test]
  fn window_index_partial_windows() {
    // llm grid 3 x 5 (patch grid 6 x 10), windows of 2 x 2 merged tokens.
    let (idx, cu) = window_index(&[[1, 6, 10]], 56, 2, 14);
    assert_eq!(idx.len(), 15);
    assert_eq!(&idx[..4], &[0, 1, 5, 6]);
    assert_eq!(cu, vec![0, 16, 32, 40, 48, 56, 60]);
    let mut sorted = idx.clone();
    sorted.sort();
    assert_eq!(sorted, (0..15).collect::<Vec<_>>());
  }

  #[test]
  fn transformers5_rope_parameters() {
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0, "mrope_section": [4, 2, 2]},
      "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 64, "num_heads": 2}});
    let c = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw).unwrap();
    assert_eq!((c.mrope_section, c.text.rope_theta), ([4, 2, 2], 5000.0));
  }

  #[test]
  fn bad_configs_are_errors() {
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 5, "rms_norm_eps": 1e-6, "vocab_size": 20});
    let e = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw)
      .unwrap_err()
      .to_string();
    assert!(e.contains("inconsistent"), "{e}");
    let raw = serde_json::json!({"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
      "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-6, "vocab_size": 20,
      "rope_scaling": {"type": "yarn"}});
    let e = Qwen2VlConfig::parse(Family::Qwen2Vl, &raw, &raw)
      .unwrap_err()
      .to_string();
    assert!(e.contains("mrope"), "{e}");
  }
}
