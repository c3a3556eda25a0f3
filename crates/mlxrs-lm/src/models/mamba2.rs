//! Mamba-2 (state-spaces/mamba2, Codestral-Mamba): mlx-lm's
//! `models/mamba2.py` — no attention; each layer is `x + Mixer(RMSNorm(x))`
//! where the mixer projects to a gate, a conv input (x, B, C) and per-head
//! time steps, runs the depthwise causal conv (state: the last
//! `conv_kernel - 1` inputs) and the chunked SSD scan ([`super::ssm::ssd`]),
//! then a gated RMSNorm (`rms_norm(silu(gate) * y)`) and the output
//! projection. Caches: one `ArraysCache(2)` per layer (conv state, SSM
//! state).

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, Conv1d, Embedding, KvCache, Linear, Param, RmsNorm, module, silu};
use serde::Deserialize;
use serde_json::Value;

use super::decoder::Names;
use super::hybrid::{HybridLayer, HybridLm};
use super::mamba::sanitize_conv;
use super::ssm::{causal_conv, ssd};
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's mamba2.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Mamba2Args {
  /// `num_heads`
  pub num_heads: i32,
  /// `head_dim`
  pub head_dim: i32,
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `state_size` (`ssm_state_size` overrides it)
  pub state_size: i32,
  /// `ssm_state_size`
  #[serde(default)]
  pub ssm_state_size: Option<i32>,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `layer_norm_epsilon`
  pub layer_norm_epsilon: f32,
  /// `conv_kernel`
  pub conv_kernel: i32,
  /// `n_groups`
  pub n_groups: i32,
  /// `use_bias` (in_proj, out_proj)
  pub use_bias: bool,
  /// `use_conv_bias`
  pub use_conv_bias: bool,
  /// `tie_word_embeddings`
  pub tie_word_embeddings: bool,
  /// `time_step_limit` `[min, max]` clip of the time steps.
  pub time_step_limit: Vec<f64>,
}

/// The gated RMSNorm (python `MambaRMSNormGated`): `rms_norm(silu(gate) *
/// x) * weight`, over the whole inner dimension (mamba2), or over groups of
/// `group` channels (Nemotron-H, GraniteMoeHybrid); with `before_gate`,
/// `silu(gate) * rms_norm(x) * weight` (Falcon-H1's
/// `mamba_norm_before_gate`).
pub(crate) struct GatedRmsNorm {
  pub weight: Param,
  pub eps: f32,
  pub group: Option<i32>,
  pub before_gate: bool,
}
module!(GatedRmsNorm { weight });

impl GatedRmsNorm {
  pub fn forward(&self, x: &Array, gate: &Array) -> Result<Array> {
    if self.before_gate {
      let n = mlxrs_core::fast::rms_norm(x, Some(&self.weight.value), self.eps)?;
      return mlxrs_nn::swiglu(gate, &n);
    }
    let x = mlxrs_nn::swiglu(gate, x)?;
    match self.group {
      None => mlxrs_core::fast::rms_norm(&x, Some(&self.weight.value), self.eps),
      Some(g) => {
        let x = ops::unflatten(&x, -1, &[-1, g])?;
        let x = mlxrs_core::fast::rms_norm(&x, None, self.eps)?;
        &self.weight.value * &ops::flatten(&x, -2, -1)?
      }
    }
  }
}

/// The Mamba-2 mixer (python `Mamba2Block`), shared with the hybrid
/// families that embed it.
pub(crate) struct Mamba2Mixer {
  pub in_proj: Linear,
  pub conv1d: Conv1d,
  pub dt_bias: Param,
  pub a_log: Param,
  pub d: Param,
  /// `None`: no norm, the output is `silu(gate) * y` (Falcon-H1 without
  /// `mamba_rms_norm`).
  pub norm: Option<GatedRmsNorm>,
  pub out_proj: Linear,
  pub heads: i32,
  pub head_dim: i32,
  pub groups: i32,
  pub state: i32,
  pub time_step_limit: (f32, f32),
}
module!(Mamba2Mixer {
  in_proj,
  conv1d,
  dt_bias,
  a_log => "A_log",
  d => "D",
  norm,
  out_proj
});

impl Mamba2Mixer {
  /// An unloaded mixer.
  #[allow(clippy::too_many_arguments)]
  pub fn new(
    hidden: i32,
    heads: i32,
    head_dim: i32,
    groups: i32,
    state: i32,
    kernel: i32,
    bias: bool,
    conv_bias: bool,
    eps: f32,
    norm_group: Option<i32>,
    time_step_limit: (f32, f32),
  ) -> Result<Mamba2Mixer> {
    let inner = heads * head_dim;
    let conv_dim = inner + 2 * groups * state;
    Ok(Mamba2Mixer {
      in_proj: Linear::new(hidden, inner + conv_dim + heads, bias),
      conv1d: Conv1d::new(conv_dim, conv_dim, kernel, 1, 0, 1, conv_dim, conv_bias)?,
      dt_bias: Param::new(&[heads]),
      a_log: Param::new(&[heads]),
      d: Param::new(&[heads]),
      norm: Some(GatedRmsNorm {
        weight: Param::new(&[inner]),
        eps,
        group: norm_group,
        before_gate: false,
      }),
      out_proj: Linear::new(inner, hidden, bias),
      heads,
      head_dim,
      groups,
      state,
      time_step_limit,
    })
  }

  /// The same mixer with `A_log` kept in its checkpoint dtype (python
  /// `cast_predicate` of Nemotron-H / Falcon-H1 / GraniteMoeHybrid).
  pub fn with_raw_a_log(mut self) -> Mamba2Mixer {
    self.a_log = Param::new_uncast(&[self.heads]);
    self
  }

  /// `x` `[B, L, hidden]` over the `ArraysCache(2)` `cache`.
  pub fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
    let slots = cache.arrays_mut()?;
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let inner = self.heads * self.head_dim;
    let gs = self.groups * self.state;
    let p = self.in_proj.forward(x)?;
    let parts = ops::split_sections(&p, &[inner, inner + inner + 2 * gs], -1)?;
    let (gate, conv_in, dt) = (&parts[0], &parts[1], &parts[2]);
    let (conv, conv_state) = causal_conv(&self.conv1d, conv_in, slots.get(0))?;
    let conv = silu(&conv)?;
    let xbc = ops::split_sections(&conv, &[inner, inner + gs], -1)?;
    let hs = xbc[0].reshape(&[b, l, self.heads, self.head_dim])?;
    let bm = xbc[1].reshape(&[b, l, self.groups, self.state])?;
    let cm = xbc[2].reshape(&[b, l, self.groups, self.state])?;
    let (y, state) = ssd(
      &hs,
      &self.a_log.value,
      &bm,
      &cm,
      &self.d.value,
      dt,
      &self.dt_bias.value,
      slots.get(1).cloned(),
      self.time_step_limit,
    )?;
    slots.set(0, conv_state)?;
    slots.set(1, state)?;
    let y = y.reshape(&[b, l, inner])?;
    let y = match &self.norm {
      Some(n) => n.forward(&y, gate)?,
      None => mlxrs_nn::swiglu(gate, &y)?,
    };
    self.out_proj.forward(&y)
  }
}

struct Block {
  mixer: Mamba2Mixer,
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

/// `time_step_limit` as `(min, max)`.
pub(crate) fn time_step_limit(arch: &str, v: &[f64]) -> Result<(f32, f32)> {
  match v {
    [lo, hi] if lo <= hi => Ok((*lo as f32, *hi as f32)),
    _ => Err(Error::InvalidArgument(format!(
      "config.json ({arch}): time_step_limit must be [min, max], got {v:?}"
    ))),
  }
}

/// Registry entry for `mamba2`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  // HF Mamba2Config switches mlx-lm does not implement.
  super::base::reject_unhandled(config, "mamba2", "rms_norm", |v| v == &Value::Bool(true))?;
  super::base::reject_unhandled(config, "mamba2", "norm_before_gate", |v| {
    v == &Value::Bool(false)
  })?;
  let a: Mamba2Args = parse_args(config)?;
  let n = a.ssm_state_size.unwrap_or(a.state_size);
  let h = a.hidden_size;
  if [
    h,
    a.num_heads,
    a.head_dim,
    n,
    a.conv_kernel,
    a.n_groups,
    a.vocab_size,
  ]
  .iter()
  .any(|&v| v <= 0)
    || a.num_heads % a.n_groups != 0
    || a.num_hidden_layers < 0
  {
    return Err(Error::InvalidArgument(format!(
      "config.json (mamba2): hidden_size, num_heads, head_dim, state_size, conv_kernel, n_groups \
       and vocab_size must be positive and num_heads ({}) a multiple of n_groups ({})",
      a.num_heads, a.n_groups
    )));
  }
  let limit = time_step_limit("mamba2", &a.time_step_limit)?;
  let mut layers: Vec<Box<dyn HybridLayer>> = Vec::new();
  for _ in 0..a.num_hidden_layers {
    layers.push(Box::new(Block {
      mixer: Mamba2Mixer::new(
        h,
        a.num_heads,
        a.head_dim,
        a.n_groups,
        n,
        a.conv_kernel,
        a.use_bias,
        a.use_conv_bias,
        a.layer_norm_epsilon,
        None,
        limit,
      )?,
      norm: RmsNorm::new(h, 1e-5),
    }));
  }
  Ok(Box::new(HybridLm::new(
    Embedding::new(a.vocab_size, h),
    layers,
    Box::new(RmsNorm::new(h, a.layer_norm_epsilon)),
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
