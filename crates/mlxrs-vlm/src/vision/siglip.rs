//! The SigLIP ViT vision tower (python mlx-vlm `paligemma/vision.py`
//! `VisionModel`, transformers `SiglipVisionModel`): a Conv2d patch
//! embedding with bias, learned positions, pre-norm encoder layers with
//! tanh-GELU MLPs, `post_layernorm` over every patch. PaliGemma, Gemma 3
//! and Idefics3 / SmolVLM use it.

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{Conv2d, Embedding, LayerNorm, Linear, Module, module};
use serde::Deserialize;

use crate::error::{Error, Result};

fn d_v_layers() -> i32 {
  27
}
fn d_v_hidden() -> i32 {
  1152
}
fn d_v_inter() -> i32 {
  4304
}
fn d_heads() -> i32 {
  16
}
fn d_patch() -> i32 {
  14
}
fn d_image() -> i32 {
  224
}
fn d_channels() -> i32 {
  3
}
fn d_eps() -> f32 {
  1e-6
}

/// `VisionConfig` of mlx-vlm's `paligemma/config.py` (SigLIP).
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionArgs {
  /// `num_hidden_layers`
  #[serde(default = "d_v_layers")]
  pub num_hidden_layers: i32,
  /// `hidden_size`
  #[serde(default = "d_v_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default = "d_v_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `patch_size`
  #[serde(default = "d_patch")]
  pub patch_size: i32,
  /// `projection_dim` (default: the top-level `projection_dim`, else 2048)
  pub projection_dim: Option<i32>,
  /// `image_size`
  #[serde(default = "d_image")]
  pub image_size: i32,
  /// `num_channels`
  #[serde(default = "d_channels")]
  pub num_channels: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_eps")]
  pub layer_norm_eps: f32,
}

struct SigAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  out_proj: Linear,
  heads: i32,
  scale: f32,
}
module!(SigAttention {
  q_proj,
  k_proj,
  v_proj,
  out_proj
});

struct SigMlp {
  fc1: Linear,
  fc2: Linear,
}
module!(SigMlp { fc1, fc2 });

struct SigLayer {
  self_attn: SigAttention,
  layer_norm1: LayerNorm,
  mlp: SigMlp,
  layer_norm2: LayerNorm,
}
module!(SigLayer {
  self_attn,
  layer_norm1,
  mlp,
  layer_norm2
});

impl SigLayer {
  fn forward(&self, x: &Array) -> Result<Array> {
    let a = &self.self_attn;
    let y = self.layer_norm1.forward(x)?;
    let s = y.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, a.heads, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(a.q_proj.forward(&y)?)?;
    let k = heads(a.k_proj.forward(&y)?)?;
    let v = heads(a.v_proj.forward(&y)?)?;
    let o = scaled_dot_product_attention(&q, &k, &v, a.scale, Mask::None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    let h = ops::add(x, &a.out_proj.forward(&o)?)?;
    let m = self.layer_norm2.forward(&h)?;
    let m = self
      .mlp
      .fc2
      .forward(&mlxrs_nn::gelu_approx(&self.mlp.fc1.forward(&m)?)?)?;
    Ok(ops::add(&h, &m)?)
  }
}

struct SigEncoder {
  layers: Vec<SigLayer>,
}
module!(SigEncoder { layers });

struct SigEmbeddings {
  patch_embedding: Conv2d,
  position_embedding: Embedding,
}
module!(SigEmbeddings {
  patch_embedding,
  position_embedding
});

struct SigInner {
  embeddings: SigEmbeddings,
  encoder: SigEncoder,
  post_layernorm: LayerNorm,
}
module!(SigInner {
  embeddings,
  encoder,
  post_layernorm
});

/// SigLIP vision tower (python `VisionModel`, weights under
/// `vision_tower.vision_model.*`).
pub struct SiglipVision {
  vision_model: SigInner,
  args: SiglipVisionArgs,
}
module!(SiglipVision { vision_model });

impl SiglipVision {
  /// An unloaded tower.
  pub fn new(a: &SiglipVisionArgs) -> Result<SiglipVision> {
    let d = a.hidden_size;
    let layers = (0..a.num_hidden_layers)
      .map(|_| SigLayer {
        self_attn: SigAttention {
          q_proj: Linear::new(d, d, true),
          k_proj: Linear::new(d, d, true),
          v_proj: Linear::new(d, d, true),
          out_proj: Linear::new(d, d, true),
          heads: a.num_attention_heads,
          scale: ((d / a.num_attention_heads) as f32).powf(-0.5),
        },
        layer_norm1: LayerNorm::new(d, a.layer_norm_eps, true, true),
        mlp: SigMlp {
          fc1: Linear::new(d, a.intermediate_size, true),
          fc2: Linear::new(a.intermediate_size, d, true),
        },
        layer_norm2: LayerNorm::new(d, a.layer_norm_eps, true, true),
      })
      .collect();
    let g = a.image_size / a.patch_size;
    Ok(SiglipVision {
      vision_model: SigInner {
        embeddings: SigEmbeddings {
          patch_embedding: Conv2d::new(
            a.num_channels,
            d,
            (a.patch_size, a.patch_size),
            (a.patch_size, a.patch_size),
            (0, 0),
            (1, 1),
            1,
            true,
          )?,
          position_embedding: Embedding::new(g * g, d),
        },
        encoder: SigEncoder { layers },
        post_layernorm: LayerNorm::new(d, 1e-5, true, true),
      },
      args: a.clone(),
    })
  }

  /// `post_layernorm(encoder(embeddings(x)))` for NHWC pixels: `[N, patches, D]`.
  pub fn forward(&self, pixels: &Array) -> Result<Array> {
    self.forward_with_positions(pixels, None)
  }

  /// Patches per side (`image_size / patch_size`).
  pub fn patches_per_side(&self) -> i32 {
    self.args.image_size / self.args.patch_size
  }

  /// [`SiglipVision::forward`] with explicit position ids `[patches]`
  /// (`None`: `0..patches`; Idefics3 buckets them, see
  /// [`crate::models::idefics3`]).
  pub fn forward_with_positions(&self, pixels: &Array, positions: Option<&Array>) -> Result<Array> {
    let s = pixels.shape();
    let a = &self.args;
    if s.len() != 4 || s[1] != a.image_size || s[2] != a.image_size || s[3] != a.num_channels {
      return Err(Error::invalid(format!(
        "the vision tower takes [N, {0}, {0}, {1}] pixels, got {s:?}",
        a.image_size, a.num_channels
      )));
    }
    let m = &self.vision_model;
    let x = m.embeddings.patch_embedding.forward(pixels)?;
    let ps = x.shape();
    let x = ops::reshape(&x, &[ps[0], ps[1] * ps[2], ps[3]])?;
    let n = x.dim(1).unwrap_or(0);
    let ids = match positions {
      Some(p) => p.clone(),
      None => ops::arange(0.0, n as f64, 1.0, Dtype::Int32)?,
    };
    let mut x = ops::add(
      &x,
      &ops::expand_dims(&m.embeddings.position_embedding.forward(&ids)?, 0)?,
    )?;
    for layer in &m.encoder.layers {
      x = layer.forward(&x)?;
    }
    Ok(m.post_layernorm.forward(&x)?)
  }

  /// Parameter dtype (of the patch embedding).
  pub fn dtype(&self) -> Dtype {
    let mut d = Dtype::Float32;
    self
      .vision_model
      .embeddings
      .patch_embedding
      .visit("", &mut |_, a| d = a.dtype());
    if d.is_float() { d } else { Dtype::Float32 }
  }
}
