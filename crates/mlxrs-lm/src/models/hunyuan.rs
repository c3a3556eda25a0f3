//! Hunyuan (Hunyuan-A13B, Hunyuan-Large): mlx-lm's `models/hunyuan.py` —
//! cross-layer attention (CLA: with `use_cla`, only every
//! `cla_share_factor`-th layer has `k_proj` / `v_proj`; the layers between
//! reuse its key/value projections), per-head q/k RMSNorm applied *after*
//! RoPE, a DynamicNTK-alpha RoPE (`base * alpha^(d / (d - 2))`), and a
//! softmax top-k MoE (router `gate.wg`, never renormalized) plus a shared
//! MLP (`use_mixed_mlp_moe`); tied embeddings. `sanitize` splits the
//! original fused `qkv_proj` / `gate_and_up_proj` and stacks per-expert
//! tensors.

use std::collections::HashMap;

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{
  AttnMask, Embedding, GluActivation, KvCache, Linear, RmsNorm, Rope, SwitchGlu, module,
};
use serde::Deserialize;
use serde_json::Value;

use super::base::{check_heads, check_moe, last_axis, stack_experts};
use super::decoder::{Decoder, DecoderOpts, Layer};
use super::mlp::SwiGluMlp;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's hunyuan.py.
#[derive(Debug, Clone, Deserialize)]
pub struct HunyuanArgs {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `intermediate_size` (dense MLP; shared MLP per shared expert)
  pub intermediate_size: i32,
  /// `num_attention_heads`
  pub num_attention_heads: i32,
  /// `num_key_value_heads`
  pub num_key_value_heads: i32,
  /// `attention_bias`
  pub attention_bias: bool,
  /// `moe_topk` (an int, or one per layer)
  pub moe_topk: Value,
  /// `num_experts` (1: dense MLPs)
  pub num_experts: i32,
  /// `num_shared_expert` (an int, or one per layer)
  pub num_shared_expert: Value,
  /// `use_mixed_mlp_moe` (a shared MLP beside the experts)
  pub use_mixed_mlp_moe: bool,
  /// `use_qk_norm`
  pub use_qk_norm: bool,
  /// `rms_norm_eps`
  pub rms_norm_eps: f32,
  /// `rope_theta`
  pub rope_theta: f32,
  /// `use_cla`
  pub use_cla: bool,
  /// `cla_share_factor`
  pub cla_share_factor: i32,
  /// `moe_intermediate_size` (an int, or one per layer; default
  /// `intermediate_size`)
  pub moe_intermediate_size: Option<Value>,
  /// `rope_scaling` (its `alpha` is required)
  pub rope_scaling: Option<Value>,
}

fn bad(msg: String) -> Error {
  Error::InvalidArgument(format!("config.json (hunyuan): {msg}"))
}

/// mlx-lm's `_int_or_list(arg, idx)`.
fn int_or_list(v: &Value, idx: i32, field: &str) -> Result<i32> {
  let x = match v {
    Value::Array(a) => a.get(idx as usize).and_then(Value::as_i64),
    other => other.as_i64(),
  };
  x.and_then(|x| i32::try_from(x).ok()).ok_or_else(|| {
    bad(format!(
      "field {field:?} = {v} has no integer for layer {idx}"
    ))
  })
}

/// `Attention` of hunyuan.py.
struct HyAttention {
  q_proj: Linear,
  k_proj: Option<Linear>,
  v_proj: Option<Linear>,
  o_proj: Linear,
  query_layernorm: Option<RmsNorm>,
  key_layernorm: Option<RmsNorm>,
  n_heads: i32,
  n_kv_heads: i32,
  scale: f32,
  rope: Rope,
}
module!(HyAttention {
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  query_layernorm,
  key_layernorm
});

impl HyAttention {
  fn forward(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    shared: &mut Option<(Array, Array)>,
  ) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let q = self.q_proj.forward(x)?;
    let (k, v) = match (&self.k_proj, &self.v_proj, shared.as_ref()) {
      (Some(kp), Some(vp), _) => {
        let kv = (kp.forward(x)?, vp.forward(x)?);
        *shared = Some(kv.clone());
        kv
      }
      (_, _, Some((k, v))) => (k.clone(), v.clone()),
      _ => {
        return Err(Error::InvalidArgument(
          "hunyuan: a cross-layer-attention layer without a preceding k/v layer".into(),
        ));
      }
    };
    let heads = |t: &Array, n: i32| -> Result<Array> {
      ops::transpose_axes(&ops::reshape(t, &[b, l, n, -1])?, &[0, 2, 1, 3])
    };
    let mut q = self.rope.forward(&heads(&q, self.n_heads)?, cache.offset)?;
    let mut k = self
      .rope
      .forward(&heads(&k, self.n_kv_heads)?, cache.offset)?;
    let v = heads(&v, self.n_kv_heads)?;
    if let (Some(qn), Some(kn)) = (&self.query_layernorm, &self.key_layernorm) {
      q = qn.forward(&q)?;
      k = kn.forward(&k)?;
    }
    let o = mlxrs_nn::attention_with_cache_update(&q, &k, &v, cache, self.scale, mask, None)?;
    self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}

/// The router (`gate.wg`).
struct Gate {
  wg: Linear,
}
module!(Gate { wg });

/// `MoeBlock` of hunyuan.py.
struct HyMoe {
  gate: Gate,
  switch_mlp: SwitchGlu,
  shared_mlp: Option<SwiGluMlp>,
  top_k: i32,
}
module!(HyMoe {
  gate,
  switch_mlp,
  shared_mlp
});

impl HyMoe {
  fn forward(&self, x: &Array) -> Result<Array> {
    let gates = ops::softmax_axis(&self.gate.wg.forward(x)?, -1, true)?;
    let k = self.top_k;
    let inds = ops::stop_gradient(&last_axis(
      &ops::argpartition_axis(&ops::negative(&gates)?, k - 1, -1)?,
      0,
      k,
    )?)?;
    let scores = ops::take_along_axis(&gates, &inds, -1)?;
    let y = self.switch_mlp.forward(x, &inds)?;
    let dt = y.dtype();
    let scores = ops::astype(&ops::expand_dims(&scores, -1)?, mlxrs_core::Dtype::Float32)?;
    let y = ops::astype(&ops::sum_axis(&ops::multiply(&y, &scores)?, -2, false)?, dt)?;
    match &self.shared_mlp {
      Some(s) => ops::add(&y, &s.forward(x)?),
      None => Ok(y),
    }
  }
}

/// `DecoderLayer`.
struct Block {
  self_attn: HyAttention,
  dense: Option<SwiGluMlp>,
  moe: Option<HyMoe>,
  input_layernorm: RmsNorm,
  post_attention_layernorm: RmsNorm,
  /// (kv heads, query heads per kv head, head_dim) for the qkv split.
  qkv: (i32, i32, i32),
  num_experts: i32,
}
module!(Block { self_attn, dense => "mlp", moe => "mlp", input_layernorm, post_attention_layernorm });

impl Layer for Block {
  fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    self.forward_shared(x, mask, cache, &mut None)
  }

  fn forward_shared(
    &self,
    x: &Array,
    mask: &AttnMask,
    cache: &mut KvCache,
    shared: &mut Option<(Array, Array)>,
  ) -> Result<Array> {
    let r = self
      .self_attn
      .forward(&self.input_layernorm.forward(x)?, mask, cache, shared)?;
    let h = ops::add(x, &r)?;
    let n = self.post_attention_layernorm.forward(&h)?;
    let r = match (&self.moe, &self.dense) {
      (Some(m), _) => m.forward(&n)?,
      (None, Some(d)) => d.forward(&n)?,
      (None, None) => return Err(bad("layer without an MLP".into())),
    };
    ops::add(&h, &r)
  }

  /// hunyuan.py's sanitize for this layer: fused `qkv_proj` (per kv head:
  /// its query heads, then k, then v) and `gate_and_up_proj` (up | gate)
  /// split; per-expert tensors stacked.
  fn sanitize(&self, prefix: &str, w: &mut HashMap<String, Array>) -> Result<()> {
    let (nkv, groups, hd) = self.qkv;
    let keys: Vec<String> = w
      .keys()
      .filter(|k| {
        k.starts_with(&format!("{prefix}."))
          && (k.contains("qkv_proj") || k.contains("gate_and_up_proj"))
      })
      .cloned()
      .collect();
    for k in keys {
      let Some(v) = w.remove(&k) else { continue };
      if k.contains("qkv_proj") {
        let v = ops::reshape(&v, &[nkv, groups + 2, hd, -1])?;
        let parts = ops::split_sections(&v, &[groups, groups + 1], 1)?;
        for (name, p) in ["q_proj", "k_proj", "v_proj"].iter().zip(parts) {
          w.insert(k.replace("qkv_proj", name), ops::flatten(&p, 0, 2)?);
        }
      } else {
        let parts = ops::split(&v, 2, 0)?;
        for (name, p) in ["up_proj", "gate_proj"].iter().zip(parts) {
          w.insert(k.replace("gate_and_up_proj", name), p);
        }
      }
    }
    if self.moe.is_some() {
      stack_experts(
        w,
        &[format!("{prefix}.mlp")],
        self.num_experts,
        &[
          ("up_proj", "up_proj"),
          ("down_proj", "down_proj"),
          ("gate_proj", "gate_proj"),
        ],
      )?;
    }
    Ok(())
  }
}

/// Registry entry for `hunyuan`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: HunyuanArgs = parse_args(config)?;
  let (h, nh, nkv) = (a.hidden_size, a.num_attention_heads, a.num_key_value_heads);
  check_heads("hunyuan", h, nh, nkv, a.num_hidden_layers)?;
  if a.use_cla && a.cla_share_factor <= 0 {
    return Err(bad("field \"cla_share_factor\" must be positive".into()));
  }
  let alpha = a
    .rope_scaling
    .as_ref()
    .and_then(|r| r.get("alpha"))
    .and_then(Value::as_f64)
    .ok_or_else(|| bad("field \"rope_scaling\" needs a numeric \"alpha\"".into()))?;
  let hd = h / nh;
  if hd <= 2 {
    return Err(bad(format!("head_dim ({hd}) must be > 2")));
  }
  // DynamicNTKAlphaRoPE.
  let base = a.rope_theta as f64 * alpha.powf(hd as f64 / (hd as f64 - 2.0));
  let eps = a.rms_norm_eps;
  let mut layers: Vec<Box<dyn Layer>> = Vec::new();
  for i in 0..a.num_hidden_layers {
    let kv_proj = !a.use_cla || i % a.cla_share_factor == 0;
    let bias = a.attention_bias;
    let self_attn = HyAttention {
      q_proj: Linear::new(h, nh * hd, bias),
      k_proj: kv_proj.then(|| Linear::new(h, nkv * hd, bias)),
      v_proj: kv_proj.then(|| Linear::new(h, nkv * hd, bias)),
      o_proj: Linear::new(nh * hd, h, bias),
      query_layernorm: a.use_qk_norm.then(|| RmsNorm::new(hd, eps)),
      key_layernorm: a.use_qk_norm.then(|| RmsNorm::new(hd, eps)),
      n_heads: nh,
      n_kv_heads: nkv,
      scale: (hd as f32).powf(-0.5),
      rope: Rope::new(hd, false, base as f32, 1.0),
    };
    let moe = if a.num_experts == 1 {
      None
    } else {
      let top_k = int_or_list(&a.moe_topk, i, "moe_topk")?;
      check_moe("hunyuan", a.num_experts, top_k)?;
      let inter = match &a.moe_intermediate_size {
        Some(v) if !v.is_null() => int_or_list(v, i, "moe_intermediate_size")?,
        _ => a.intermediate_size,
      };
      let shared = if a.use_mixed_mlp_moe {
        Some(a.intermediate_size * int_or_list(&a.num_shared_expert, i, "num_shared_expert")?)
      } else {
        None
      };
      Some(HyMoe {
        gate: Gate {
          wg: Linear::new(h, a.num_experts, false),
        },
        switch_mlp: SwitchGlu::new(h, inter, a.num_experts, GluActivation::SwiGlu, false),
        shared_mlp: shared.map(|s| SwiGluMlp::new(h, s, false)),
        top_k,
      })
    };
    layers.push(Box::new(Block {
      self_attn,
      dense: moe
        .is_none()
        .then(|| SwiGluMlp::new(h, a.intermediate_size, false)),
      moe,
      input_layernorm: RmsNorm::new(h, eps),
      post_attention_layernorm: RmsNorm::new(h, eps),
      qkv: (nkv, nh / nkv, hd),
      num_experts: a.num_experts,
    }));
  }
  Ok(Box::new(
    Decoder::new(
      Embedding::new(a.vocab_size, h),
      layers,
      Box::new(RmsNorm::new(h, eps)),
      "norm",
      None,
      DecoderOpts {
        vocab_size: a.vocab_size,
        window: None,
        logit_scale: None,
        embed_scale: None,
        tied: true,
        stack_experts: None,
        sanitize: None,
      },
    )
    .without_padded_batches(
      "its q/k norms come after RoPE, so attention depends on absolute positions",
    ),
  ))
}
