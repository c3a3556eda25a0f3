//! The CLIP ViT vision tower (python mlx-vlm `llava/vision.py`
//! `VisionModel`, transformers `CLIPVisionModel`): a Conv2d patch
//! embedding without bias, a class token, learned position embeddings,
//! `pre_layrnorm` and pre-norm encoder layers (fast-GELU MLP). LLaVA and
//! LLaVA-NeXT use it.

use mlxrs_core::fast::{Mask, scaled_dot_product_attention};
use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::{Conv2d, Embedding, LayerNorm, Linear, Module, Param, module};
use serde::Deserialize;

use crate::error::{Error, Result};

fn d_layers() -> i32 {
  24
}
fn d_hidden() -> i32 {
  1024
}
fn d_inter() -> i32 {
  4096
}
fn d_heads() -> i32 {
  16
}
fn d_image() -> i32 {
  336
}
fn d_patch() -> i32 {
  14
}
fn d_channels() -> i32 {
  3
}
fn d_ln_eps() -> f32 {
  1e-5
}

/// `VisionConfig` of mlx-vlm's `llava/config.py` (CLIP).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionArgs {
  /// `model_type` (`clip_vision_model`)
  #[serde(default)]
  pub model_type: String,
  /// `num_hidden_layers`
  #[serde(default = "d_layers")]
  pub num_hidden_layers: i32,
  /// `hidden_size`
  #[serde(default = "d_hidden")]
  pub hidden_size: i32,
  /// `intermediate_size`
  #[serde(default = "d_inter")]
  pub intermediate_size: i32,
  /// `num_attention_heads`
  #[serde(default = "d_heads")]
  pub num_attention_heads: i32,
  /// `image_size`
  #[serde(default = "d_image")]
  pub image_size: i32,
  /// `patch_size`
  #[serde(default = "d_patch")]
  pub patch_size: i32,
  /// `num_channels`
  #[serde(default = "d_channels")]
  pub num_channels: i32,
  /// `layer_norm_eps`
  #[serde(default = "d_ln_eps")]
  pub layer_norm_eps: f32,
}

struct ClipAttention {
  q_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  out_proj: Linear,
  heads: i32,
  scale: f32,
}
module!(ClipAttention {
  q_proj,
  k_proj,
  v_proj,
  out_proj
});

impl ClipAttention {
  fn forward(&self, x: &Array) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let heads = |t: Array| -> Result<Array> {
      Ok(ops::transpose_axes(
        &ops::reshape(&t, &[b, l, self.heads, -1])?,
        &[0, 2, 1, 3],
      )?)
    };
    let q = heads(self.q_proj.forward(x)?)?;
    let k = heads(self.k_proj.forward(x)?)?;
    let v = heads(self.v_proj.forward(x)?)?;
    let o = scaled_dot_product_attention(&q, &k, &v, self.scale, Mask::None)?;
    let o = ops::reshape(&ops::transpose_axes(&o, &[0, 2, 1, 3])?, &[b, l, -1])?;
    Ok(self.out_proj.forward(&o)?)
  }
}

struct ClipMlp {
  fc1: Linear,
  fc2: Linear,
}
module!(ClipMlp { fc1, fc2 });

struct ClipLayer {
  self_attn: ClipAttention,
  layer_norm1: LayerNorm,
  mlp: ClipMlp,
  layer_norm2: LayerNorm,
}
module!(ClipLayer {
  self_attn,
  layer_norm1,
  mlp,
  layer_norm2
});

impl ClipLayer {
  fn forward(&self, x: &Array) -> Result<Array> {
    let y = self.self_attn.forward(&self.layer_norm1.forward(x)?)?;
    let x = ops::add(x, &y)?;
    let y = self.layer_norm2.forward(&x)?;
    let y = self
      .mlp
      .fc2
      .forward(&mlxrs_nn::gelu_fast_approx(&self.mlp.fc1.forward(&y)?)?)?;
    Ok(ops::add(&x, &y)?)
  }
}

struct ClipEncoder {
  layers: Vec<ClipLayer>,
}
module!(ClipEncoder { layers });

struct ClipEmbeddings {
  class_embedding: Param,
  patch_embedding: Conv2d,
  position_embedding: Embedding,
}
module!(ClipEmbeddings {
  class_embedding,
  patch_embedding,
  position_embedding
});

struct ClipInner {
  embeddings: ClipEmbeddings,
  pre_layrnorm: LayerNorm,
  encoder: ClipEncoder,
  post_layernorm: LayerNorm,
}
module!(ClipInner {
  embeddings,
  pre_layrnorm,
  encoder,
  post_layernorm
});

/// CLIP vision tower (python `VisionModel`, weights under
/// `vision_tower.vision_model.*`).
pub struct ClipVision {
  vision_model: ClipInner,
  args: ClipVisionArgs,
}
module!(ClipVision { vision_model });

impl ClipVision {
  /// An unloaded tower.
  pub fn new(a: &ClipVisionArgs) -> Result<ClipVision> {
    let d = a.hidden_size;
    let layers = (0..a.num_hidden_layers)
      .map(|_| ClipLayer {
        self_attn: ClipAttention {
          q_proj: Linear::new(d, d, true),
          k_proj: Linear::new(d, d, true),
          v_proj: Linear::new(d, d, true),
          out_proj: Linear::new(d, d, true),
          heads: a.num_attention_heads,
          scale: ((d / a.num_attention_heads) as f32).powf(-0.5),
        },
        layer_norm1: LayerNorm::new(d, a.layer_norm_eps, true, true),
        mlp: ClipMlp {
          fc1: Linear::new(d, a.intermediate_size, true),
          fc2: Linear::new(a.intermediate_size, d, true),
        },
        layer_norm2: LayerNorm::new(d, a.layer_norm_eps, true, true),
      })
      .collect();
    let g = a.image_size / a.patch_size;
    Ok(ClipVision {
      vision_model: ClipInner {
        embeddings: ClipEmbeddings {
          class_embedding: Param::new(&[d]),
          patch_embedding: Conv2d::new(
            a.num_channels,
            d,
            (a.patch_size, a.patch_size),
            (a.patch_size, a.patch_size),
            (0, 0),
            (1, 1),
            1,
            false,
          )?,
          position_embedding: Embedding::new(g * g + 1, d),
        },
        pre_layrnorm: LayerNorm::new(d, 1e-5, true, true),
        encoder: ClipEncoder { layers },
        post_layernorm: LayerNorm::new(d, 1e-5, true, true),
      },
      args: a.clone(),
    })
  }

  /// The hidden states of layer `feature_layer` (python
  /// `vision_tower(x, output_hidden_states=True)[-1][feature_layer]`) for
  /// NHWC pixels `[N, image_size, image_size, C]`: `[N, 1 + patches, D]`.
  pub fn hidden_state(&self, pixels: &Array, feature_layer: i32) -> Result<Array> {
    let s = pixels.shape();
    let a = &self.args;
    if s.len() != 4 || s[1] != a.image_size || s[2] != a.image_size || s[3] != a.num_channels {
      return Err(Error::invalid(format!(
        "the vision tower takes [N, {0}, {0}, {1}] pixels, got {s:?}",
        a.image_size, a.num_channels
      )));
    }
    let m = &self.vision_model;
    let x = ops::astype(pixels, self.dtype())?;
    let p = m.embeddings.patch_embedding.forward(&x)?;
    let ps = p.shape();
    let p = ops::reshape(&p, &[ps[0], ps[1] * ps[2], ps[3]])?;
    let cls = ops::broadcast_to(
      &ops::reshape(&m.embeddings.class_embedding.value, &[1, 1, -1])?,
      &[ps[0], 1, ps[3]],
    )?;
    let x = ops::concatenate_axis(&[ops::astype(&cls, p.dtype())?, p], 1)?;
    let n_pos = x.dim(1).unwrap_or(0);
    let ids = ops::arange(0.0, n_pos as f64, 1.0, Dtype::Int32)?;
    let pos = ops::expand_dims(&m.embeddings.position_embedding.forward(&ids)?, 0)?;
    let mut x = m.pre_layrnorm.forward(&ops::add(&x, &pos)?)?;
    let n_states = m.encoder.layers.len() as i32 + 1;
    let want = if feature_layer < 0 {
      n_states + feature_layer
    } else {
      feature_layer
    };
    if want < 0 || want >= n_states {
      return Err(Error::invalid(format!(
        "vision_feature_layer {feature_layer} out of range"
      )));
    }
    for layer in m.encoder.layers.iter().take(want as usize) {
      x = layer.forward(&x)?;
    }
    Ok(x)
  }

  /// Parameter dtype (of the patch embedding).
  pub fn dtype(&self) -> Dtype {
    let mut d = Dtype::Float32;
    self
      .vision_model
      .embeddings
      .patch_embedding
      .visit("", &mut |_, a| d = a.dtype());
    if !d.is_float() {
      return Dtype::Float32;
    }
    d
  }
}
