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

/// How a [`DeepseekMoe`] router scores and picks its experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Routing {
  /// mlx-lm's `group_expert_select` (DeepSeek-V3 `noaux_tc`, GLM-4.5):
  /// sigmoid scores; `e_score_correction_bias` added only to select; groups
  /// ranked by the sum of their top-2; the chosen sigmoid scores optionally
  /// renormalized.
  NoauxTc {
    /// `norm_topk_prob`
    norm_topk_prob: bool,
  },
  /// DeepSeek-V2 `greedy` / `group_limited_greedy`: softmax scores, groups
  /// (when `group_limited`) ranked by their maximum, never renormalized.
  Softmax {
    /// `topk_method == "group_limited_greedy"`
    group_limited: bool,
  },
}

/// `MoEGate` of mlx-lm's deepseek_v2.py / deepseek_v3.py / glm4_moe.py: a
/// bare router weight (never quantized), with the grouped top-k selection.
pub(crate) struct DeepseekGate {
  weight: mlxrs_nn::Param,
  e_score_correction_bias: Option<mlxrs_nn::Param>,
  routing: Routing,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  routed_scaling_factor: f32,
}
module!(DeepseekGate {
  weight,
  e_score_correction_bias
});

/// Router settings of a [`DeepseekMoe`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeepseekRouter {
  /// Scoring / selection rule.
  pub routing: Routing,
  /// `num_experts_per_tok`
  pub top_k: i32,
  /// `n_group` (1: no groups)
  pub n_group: i32,
  /// `topk_group`
  pub topk_group: i32,
  /// `routed_scaling_factor`
  pub routed_scaling_factor: f32,
}

/// Check `n_group` / `topk_group` against `experts` (they must split into
/// equal groups of at least 2 for the top-2 group scores, and
/// `0 < topk_group <= n_group`).
pub(crate) fn check_groups(arch: &str, experts: i32, n_group: i32, topk_group: i32) -> Result<()> {
  if n_group > 1 && (experts % n_group != 0 || experts / n_group < 2) {
    return Err(mlxrs_core::Error::InvalidArgument(format!(
      "config ({arch}): n_routed_experts ({experts}) must split into n_group ({n_group}) groups \
       of >= 2"
    )));
  }
  if n_group > 1 && (topk_group <= 0 || topk_group > n_group) {
    return Err(mlxrs_core::Error::InvalidArgument(format!(
      "config ({arch}): topk_group ({topk_group}) must be in 1..={n_group}"
    )));
  }
  Ok(())
}

/// mlx-lm's `group_expert_select` (deepseek_v3.py, glm4_moe.py,
/// bailing_moe.py) over activated router `scores` `[..., experts]`:
/// experts chosen by `scores + bias`, groups (`n_group > 1`) ranked by the
/// sum of their top-2 with all but `topk_group` zeroed, the top `top_k`
/// taken; their *unbiased* scores renormalized (`norm_eps`: divide by the
/// sum plus it; `None`: no renormalization; only for `top_k > 1`) and
/// times `scale`. Returns `(indices, weights)`.
pub(crate) fn group_expert_select(
  scores: &Array,
  bias: Option<&Array>,
  top_k: i32,
  n_group: i32,
  topk_group: i32,
  norm_eps: Option<f32>,
  scale: f32,
) -> Result<(Array, Array)> {
  use super::base::slice_axis;
  let orig = scores;
  let mut sel = match bias {
    Some(b) => ops::add(orig, b)?,
    None => orig.clone(),
  };
  if n_group > 1 {
    sel = ops::unflatten(&sel, -1, &[n_group, -1])?;
    let group_scores = ops::sum_axis(&ops::topk_axis(&sel, 2, -1)?, -1, true)?;
    let k = n_group - topk_group;
    if k > 0 {
      let group_idx = slice_axis(&ops::argpartition_axis(&group_scores, k - 1, -2)?, -2, 0, k)?;
      let zero = mlxrs_core::Array::scalar_as(0.0, sel.dtype())?;
      sel = ops::put_along_axis(&sel, &ops::stop_gradient(&group_idx)?, &zero, -2)?;
    }
    sel = ops::flatten(&sel, -2, -1)?;
  }
  let inds = ops::stop_gradient(&slice_axis(
    &ops::argpartition_axis(&ops::negative(&sel)?, top_k - 1, -1)?,
    -1,
    0,
    top_k,
  )?)?;
  let mut w = ops::take_along_axis(orig, &inds, -1)?;
  if let Some(eps) = norm_eps
    && top_k > 1
  {
    let mut denom = ops::sum_axis(&w, -1, true)?;
    if eps != 0.0 {
      denom = ops::add(
        &denom,
        &mlxrs_core::Array::scalar_as(eps as f64, denom.dtype())?,
      )?;
    }
    w = ops::divide(&w, &denom)?;
  }
  let w = ops::multiply(&w, &mlxrs_core::Array::scalar_as(scale as f64, w.dtype())?)?;
  Ok((inds, w))
}

impl DeepseekGate {
  /// `(indices [..., k], weights [..., k])` for `x` `[..., hidden]`.
  fn forward(&self, x: &Array) -> Result<(Array, Array)> {
    use super::base::slice_axis;
    let gates = ops::matmul(x, &ops::transpose(&self.weight.value)?)?;
    if let Routing::NoauxTc { norm_topk_prob } = self.routing {
      let scores = ops::sigmoid(&ops::astype(&gates, mlxrs_core::Dtype::Float32)?)?;
      return group_expert_select(
        &scores,
        self.e_score_correction_bias.as_ref().map(|b| &b.value),
        self.top_k,
        self.n_group,
        self.topk_group,
        norm_topk_prob.then_some(0.0),
        self.routed_scaling_factor,
      );
    }
    // DeepSeek-V2: softmax, groups ranked by their maximum, picked from the
    // group-masked scores, never renormalized.
    let mut scores = ops::softmax_axis(&gates, -1, true)?;
    if matches!(
      self.routing,
      Routing::Softmax {
        group_limited: true
      }
    ) {
      scores = ops::unflatten(&scores, -1, &[self.n_group, -1])?;
      let group_scores = ops::max_axis(&scores, -1, true)?;
      let k = self.n_group - self.topk_group;
      if k > 0 {
        let group_idx = slice_axis(&ops::argpartition_axis(&group_scores, k - 1, -2)?, -2, 0, k)?;
        let zero = mlxrs_core::Array::scalar_as(0.0, scores.dtype())?;
        scores = ops::put_along_axis(&scores, &ops::stop_gradient(&group_idx)?, &zero, -2)?;
      }
      scores = ops::flatten(&scores, -2, -1)?;
    }
    let k = self.top_k;
    let inds = ops::stop_gradient(&slice_axis(
      &ops::argpartition_axis(&ops::negative(&scores)?, k - 1, -1)?,
      -1,
      0,
      k,
    )?)?;
    let w = ops::take_along_axis(&scores, &inds, -1)?;
    let w = ops::multiply(
      &w,
      &mlxrs_core::Array::scalar_as(self.routed_scaling_factor as f64, w.dtype())?,
    )?;
    Ok((inds, w))
  }
}

/// `DeepseekV2MoE` / `DeepseekV3MoE` / glm4_moe's `MoE`: routed SwiGLU
/// experts (`switch_mlp`) weighted by a [`DeepseekGate`], plus ungated
/// shared experts (`shared_experts`).
pub(crate) struct DeepseekMoe {
  switch_mlp: SwitchGlu,
  gate: DeepseekGate,
  shared_experts: Option<SwiGluMlp>,
  /// Cast the weighted sum back to the experts' dtype (V3 / GLM; V2 does
  /// not).
  cast_back: bool,
}
module!(DeepseekMoe {
  switch_mlp,
  gate,
  shared_experts
});

impl DeepseekMoe {
  /// An unloaded block: `experts` experts of width `inter`, shared experts
  /// of width `shared` (`moe_intermediate_size * n_shared_experts`).
  pub fn new(
    hidden: i32,
    inter: i32,
    experts: i32,
    shared: Option<i32>,
    r: DeepseekRouter,
  ) -> DeepseekMoe {
    let noaux = matches!(r.routing, Routing::NoauxTc { .. });
    DeepseekMoe {
      switch_mlp: SwitchGlu::new(hidden, inter, experts, GluActivation::SwiGlu, false),
      gate: DeepseekGate {
        weight: mlxrs_nn::Param::new(&[experts, hidden]),
        // mlx-lm's cast_predicate keeps this one in float32.
        e_score_correction_bias: noaux.then(|| mlxrs_nn::Param::new_uncast(&[experts])),
        routing: r.routing,
        top_k: r.top_k,
        n_group: r.n_group,
        topk_group: r.topk_group,
        routed_scaling_factor: r.routed_scaling_factor,
      },
      shared_experts: shared.map(|s| SwiGluMlp::new(hidden, s, false)),
      cast_back: noaux,
    }
  }

  /// The block over `x` `[..., hidden]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    let (inds, scores) = self.gate.forward(x)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    let mut y = ops::sum_axis(
      &ops::multiply(&y, &ops::expand_dims(&scores, -1)?)?,
      -2,
      false,
    )?;
    if self.cast_back {
      y = ops::astype(&y, dt)?;
    }
    match &self.shared_experts {
      Some(s) => ops::add(&y, &s.forward(x)?),
      None => Ok(y),
    }
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
