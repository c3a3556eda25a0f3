//! The softmax top-k sparse MoE MLP of mlx-lm's Qwen-family files
//! (`Qwen3MoeSparseMoeBlock`, `Qwen2MoeSparseMoeBlock`): softmax over all
//! experts' router logits, the top k by probability (optionally
//! renormalized), their [`SwitchGlu`] outputs weighted and summed; Qwen2-MoE
//! adds an always-on shared expert scaled by `sigmoid(shared_expert_gate)`.

use mlxrs_core::{Array, Result, ops};
use mlxrs_nn::{GluActivation, Linear, SwitchGlu, module};

use super::base::last_axis;
use super::mlp::SwiGluMlp;

/// `mlp` of a sparse layer: `gate` (router), `switch_mlp`, and optionally
/// `shared_expert` + `shared_expert_gate`.
pub(crate) struct SparseMoe {
  gate: Linear,
  switch_mlp: SwitchGlu,
  shared_expert: Option<SwiGluMlp>,
  shared_expert_gate: Option<Linear>,
  num_experts: i32,
  top_k: i32,
  norm_topk_prob: bool,
}
module!(SparseMoe {
  gate,
  switch_mlp,
  shared_expert,
  shared_expert_gate
});

impl SparseMoe {
  /// An unloaded block: `experts` SwiGLU experts of width `inter`, `top_k`
  /// per token; `shared` the shared expert's width (Qwen2-MoE).
  pub fn new(
    hidden: i32,
    inter: i32,
    experts: i32,
    top_k: i32,
    norm_topk_prob: bool,
    shared: Option<i32>,
  ) -> SparseMoe {
    SparseMoe {
      gate: Linear::new(hidden, experts, false),
      switch_mlp: SwitchGlu::new(hidden, inter, experts, GluActivation::SwiGlu, false),
      shared_expert: shared.map(|s| SwiGluMlp::new(hidden, s, false)),
      shared_expert_gate: shared.map(|_| Linear::new(hidden, 1, false)),
      num_experts: experts,
      top_k,
      norm_topk_prob,
    }
  }

  /// The block over `x` `[..., hidden]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let gates = ops::softmax_axis(&self.gate.forward(x)?, -1, true)?;
    let (e, k) = (self.num_experts, self.top_k);
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&gates, e - k, -1)?,
      e - k,
      e,
    )?)?;
    let mut scores = ops::take_along_axis(&gates, &inds, -1)?;
    if self.norm_topk_prob {
      scores = ops::divide(&scores, &ops::sum_axis(&scores, -1, true)?)?;
    }
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    let y = ops::astype(
      &ops::sum_axis(
        &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
        -2,
        false,
      )?,
      dt,
    )?;
    match (&self.shared_expert, &self.shared_expert_gate) {
      (Some(s), Some(g)) => ops::add(
        &y,
        &ops::multiply(&ops::sigmoid(&g.forward(x)?)?, &s.forward(x)?)?,
      ),
      _ => Ok(y),
    }
  }
}

/// A pre-norm decoder layer whose MLP is a [`SparseMoe`] (mlx-lm's
/// `qwen2_moe.DecoderLayer`, `olmoe.TransformerBlock`):
/// `h = x + attn(norm(x)); h + moe(norm(h))`.
pub(crate) struct MoeBlock {
  pub self_attn: super::attention::Attention,
  pub mlp: SparseMoe,
  pub input_layernorm: mlxrs_nn::RmsNorm,
  pub post_attention_layernorm: mlxrs_nn::RmsNorm,
}
module!(MoeBlock {
  self_attn,
  mlp,
  input_layernorm,
  post_attention_layernorm
});

impl super::decoder::Layer for MoeBlock {
  fn forward(
    &self,
    x: &Array,
    mask: &mlxrs_nn::AttnMask,
    cache: &mut mlxrs_nn::KvCache,
  ) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache)?;
    let h = ops::add(x, &r)?;
    let r = self
      .mlp
      .forward(&self.post_attention_layernorm.forward(&h)?)?;
    ops::add(&h, &r)
  }
}

/// Routing that softmaxes only the chosen experts' logits (mlx-lm's
/// `JambaSparseMoeBlock` / `GraniteMoeHybridTopKGating`): the `k` largest
/// router logits of `gates` `[..., E]`, their softmax as weights. Returns
/// `(indices [..., k], weights [..., k])`.
pub(crate) fn topk_then_softmax(gates: &Array, k: i32) -> Result<(Array, Array)> {
  let e = gates.dim(-1).unwrap_or(0);
  let inds = ops::stop_gradient(&last_axis(
    &ops::argpartition_axis(gates, e - k, -1)?,
    e - k,
    e,
  )?)?;
  let scores = ops::softmax_axis(&ops::take_along_axis(gates, &inds, -1)?, -1, true)?;
  Ok((inds, scores))
}

/// Grouped top-k selection over router scores (mlx-lm's
/// `group_expert_select` of nemotron_h.py / kimi_linear.py): `scores`
/// `[..., E]` (already sigmoid / softmax), plus the optional correction
/// `bias` for choosing; with `n_group > 1` only the `topk_group` groups with
/// the best top-2 sums compete; the `top_k` chosen experts are weighted by
/// their unbiased scores, renormalised (`+ 1e-20`) when `renormalize` and
/// `top_k > 1`, times `scaling`. Returns `(indices, weights)` `[..., k]`.
pub(crate) fn grouped_topk(
  scores: &Array,
  bias: Option<&Array>,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  renormalize: bool,
  scaling: f32,
) -> Result<(Array, Array)> {
  let orig = scores;
  let mut scores = match bias {
    Some(b) => (orig + &ops::astype(b, orig.dtype())?)?,
    None => orig.clone(),
  };
  if n_group > 1 {
    scores = ops::unflatten(&scores, -1, &[n_group, -1])?;
    let gs = ops::sum_axis(&ops::topk_axis(&scores, 2, -1)?, -1, true)?;
    let k = n_group - topk_group;
    if k > 0 {
      let part = ops::argpartition_axis(&gs, k - 1, -2)?;
      let ps = part.shape();
      let nd = ps.len();
      let mut stop = ps.clone();
      stop[nd - 2] = k;
      let idx = ops::slice(&part, &vec![0; nd], &stop, &vec![1; nd])?;
      scores = ops::put_along_axis(
        &scores,
        &ops::stop_gradient(&idx)?,
        &Array::scalar_as(0.0, scores.dtype())?,
        -2,
      )?;
    }
    scores = ops::flatten(&scores, -2, -1)?;
  }
  let inds = ops::stop_gradient(&last_axis(
    &ops::argpartition_axis(&ops::negative(&scores)?, top_k - 1, -1)?,
    0,
    top_k,
  )?)?;
  let mut w = ops::take_along_axis(orig, &inds, -1)?;
  if top_k > 1 && renormalize {
    let den = (ops::sum_axis(&w, -1, true)? + 1e-20)?;
    w = (&w / &den)?;
  }
  Ok((inds, (w * scaling)?))
}
