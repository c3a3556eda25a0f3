//! Mamba (state-spaces/mamba, Falcon-Mamba): mlx-lm's `models/mamba.py` —
//! no attention; each layer is `x + MambaBlock(RMSNorm(x))` with an input
//! projection into a gated pair, a depthwise causal conv (state: the last
//! `conv_kernel - 1` inputs), the selective scan ([`super::ssm`]) and an
//! output projection. Caches: one `ArraysCache(2)` per layer
//! (conv state, SSM state).

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Conv1d, Embedding, KvCache, Linear, Param, RmsNorm, module, silu, swiglu,
};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::ssm::{causal_conv, selective_scan};
use crate::model::{LanguageModel, parse_args};

fn d_true() -> bool {
  true
}
fn d_mixer_eps() -> f32 {
  1e-6
}

/// `ModelArgs` of mlx-lm's mamba.py (HF names and their `d_model` /
/// `d_inner` / `d_state` / `n_layer` / `d_conv` / `bias` / `conv_bias`
/// aliases).
#[derive(Debug, Clone, Deserialize)]
pub struct MambaArgs {
  /// `model_type` (`falcon_mamba` turns on `use_bcdt_rms`).
  pub model_type: String,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size` / `d_model`
  #[serde(alias = "d_model")]
  pub hidden_size: i32,
  /// `intermediate_size` / `d_inner`
  #[serde(alias = "d_inner")]
  pub intermediate_size: i32,
  /// `state_size` / `d_state`
  #[serde(alias = "d_state")]
  pub state_size: i32,
  /// `num_hidden_layers` / `n_layer` / `n_layers`
  #[serde(alias = "n_layer", alias = "n_layers")]
  pub num_hidden_layers: i32,
  /// `conv_kernel` / `d_conv`
  #[serde(alias = "d_conv")]
  pub conv_kernel: i32,
  /// `use_bias` / `bias` (in_proj, out_proj)
  #[serde(alias = "bias")]
  pub use_bias: bool,
  /// `use_conv_bias` / `conv_bias`
  #[serde(alias = "conv_bias")]
  pub use_conv_bias: bool,
  /// `time_step_rank`: an integer or `"auto"` (`ceil(hidden / 16)`).
  pub time_step_rank: Value,
  /// `tie_word_embeddings` (default true)
  #[serde(default = "d_true")]
  pub tie_word_embeddings: bool,
  /// `use_bcdt_rms`: RMS-normalise delta, B, C (Falcon-Mamba)
  #[serde(default)]
  pub use_bcdt_rms: bool,
  /// `mixer_rms_eps` (default 1e-6)
  #[serde(default = "d_mixer_eps")]
  pub mixer_rms_eps: f32,
}

/// The Mamba-1 mixer (python `MambaBlock`), shared with Jamba
/// (`JambaMambaMixer`: RMSNorms with weights on delta, B, C).
pub(crate) struct Mixer {
  in_proj: Linear,
  conv1d: Conv1d,
  x_proj: Linear,
  dt_proj: Linear,
  a_log: Param,
  d: Param,
  out_proj: Linear,
  dt_layernorm: Option<RmsNorm>,
  b_layernorm: Option<RmsNorm>,
  c_layernorm: Option<RmsNorm>,
  rank: i32,
  state: i32,
  bcdt_rms: Option<f32>,
}
module!(Mixer {
  in_proj,
  conv1d,
  x_proj,
  dt_proj,
  a_log => "A_log",
  d => "D",
  out_proj,
  dt_layernorm,
  b_layernorm,
  c_layernorm
});

impl Mixer {
  /// An unloaded mixer: `hidden` -> `inner` channels, SSM state `n`, conv
  /// kernel `k`, time-step rank `rank`; `bcdt_rms` (Falcon-Mamba) RMS-
  /// normalises delta/B/C without weights, `bcdt_norms` (Jamba) with
  /// weighted RMSNorms of this eps.
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    hidden: i32,
    inner: i32,
    n: i32,
    k: i32,
    rank: i32,
    bias: bool,
    conv_bias: bool,
    bcdt_rms: Option<f32>,
    bcdt_norms: Option<f32>,
  ) -> Result<Mixer> {
    Ok(Mixer {
      in_proj: Linear::new(hidden, 2 * inner, bias),
      conv1d: Conv1d::new(inner, inner, k, 1, 0, 1, inner, conv_bias)?,
      x_proj: Linear::new(inner, rank + 2 * n, false),
      dt_proj: Linear::new(rank, inner, true),
      a_log: Param::new(&[inner, n]),
      d: Param::new(&[inner]),
      out_proj: Linear::new(inner, hidden, bias),
      dt_layernorm: bcdt_norms.map(|e| RmsNorm::new(rank, e)),
      b_layernorm: bcdt_norms.map(|e| RmsNorm::new(n, e)),
      c_layernorm: bcdt_norms.map(|e| RmsNorm::new(n, e)),
      rank,
      state: n,
      bcdt_rms,
    })
  }

  /// `x` `[B, T, hidden]` over the `ArraysCache(2)` `cache`.
  pub fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let slots = cache.arrays_mut()?;
    let xz = self.in_proj.forward(x)?;
    let parts = ops::split(&xz, 2, -1)?;
    let (x, z) = (&parts[0], &parts[1]);
    let (conv, conv_state) = causal_conv(&self.conv1d, x, slots.get(0))?;
    let x = silu(&conv)?;
    let a = ops::negative(&ops::exp(&self.a_log.value)?)?;
    let dbc = self.x_proj.forward(&x)?;
    let p = ops::split_sections(&dbc, &[self.rank, self.rank + self.state], -1)?;
    let (mut delta, mut b, mut c) = (p[0].clone(), p[1].clone(), p[2].clone());
    if let Some(eps) = self.bcdt_rms {
      delta = mlxrs_core::fast::rms_norm(&delta, None, eps)?;
      b = mlxrs_core::fast::rms_norm(&b, None, eps)?;
      c = mlxrs_core::fast::rms_norm(&c, None, eps)?;
    }
    if let (Some(nd), Some(nb), Some(nc)) =
      (&self.dt_layernorm, &self.b_layernorm, &self.c_layernorm)
    {
      delta = nd.forward(&delta)?;
      b = nb.forward(&b)?;
      c = nc.forward(&c)?;
    }
    let delta = mlxrs_nn::softplus(&self.dt_proj.forward(&delta)?)?;
    let (y, state) = selective_scan(&x, &delta, &b, &c, &a, &self.d.value, slots.get(1).cloned())?;
    slots.set(0, conv_state)?;
    slots.set(1, state)?;
    self.out_proj.forward(&swiglu(z, &y)?)
  }
}

struct Block {
  mixer: Mixer,
  norm: RmsNorm,
}
module!(Block { mixer, norm });

impl HybridLayer for Block {
  fn forward(&self, x: &Array, _mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let y = self.mixer.forward(&self.norm.forward(x)?, cache)?;
    cache.offset += x.dim(1).unwrap_or(0);
    ops::add(&y, x)
  }
  fn new_cache(&self) -> Option<KvCache> {
    Some(KvCache::arrays(2))
  }
  fn is_attention(&self) -> bool {
    false
  }
}

/// mlx-lm mamba.py's `sanitize`: HF conv weights `[C, 1, K]` -> MLX
/// `[C, K, 1]`.
pub(crate) fn sanitize_conv(mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
  for (k, v) in weights.iter_mut() {
    if k.contains("conv1d.weight") && v.ndim() == 3 && v.dim(-1) != Some(1) {
      *v = ops::moveaxis(v, 2, 1)?;
    }
  }
  Ok(weights)
}

/// `time_step_rank`: an integer or `"auto"` (`ceil(hidden / 16)`).
pub(crate) fn time_step_rank(arch: &str, v: &Value, hidden: i32) -> Result<i32> {
  match v {
    Value::String(s) if s == "auto" => Ok((hidden + 15) / 16),
    Value::Number(n) if n.as_i64().is_some_and(|r| r > 0 && r <= i32::MAX as i64) => {
      Ok(n.as_i64().unwrap_or(1) as i32)
    }
    other => Err(Error::InvalidArgument(format!(
      "config.json ({arch}): time_step_rank must be a positive integer or \"auto\", got {other}"
    ))),
  }
}

/// Registry entry for `mamba` (and `falcon_mamba`).
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: MambaArgs = parse_args(config)?;
  let (h, inner, n, k) = (
    a.hidden_size,
    a.intermediate_size,
    a.state_size,
    a.conv_kernel,
  );
  if h <= 0 || inner <= 0 || n <= 0 || k <= 0 || a.num_hidden_layers < 0 || a.vocab_size <= 0 {
    return Err(Error::InvalidArgument(format!(
      "config.json (mamba): hidden_size ({h}), intermediate_size ({inner}), state_size ({n}), \
       conv_kernel ({k}) and vocab_size ({}) must be positive",
      a.vocab_size
    )));
  }
  let rank = time_step_rank("mamba", &a.time_step_rank, h)?;
  let bcdt = a.use_bcdt_rms || a.model_type == "falcon_mamba";
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    layers.push(Box::new(Block {
      mixer: Mixer::new(
        h,
        inner,
        n,
        k,
        rank,
        a.use_bias,
        a.use_conv_bias,
        bcdt.then_some(a.mixer_rms_eps),
        None,
      )?,
      norm: RmsNorm::new(h, 1e-5),
    }));
  }
  Ok(Box::new(HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, 1e-5)),
    (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    Names {
      root: "backbone",
      embed: "embeddings",
      layers: "layers",
      norm: "norm_f",
      head: "lm_head",
    },
    a.vocab_size,
    Some(sanitize_conv),
  )))
}
