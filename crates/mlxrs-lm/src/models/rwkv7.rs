//! RWKV-7 ("Goose"): mlx-lm's `models/rwkv7.py` — attention-free. Each
//! layer is time mixing (token-shift interpolations, low-rank `w` / `a` /
//! `v` / `g` projections, the WKV-7 state update `S = S * w + v k^T +
//! (S a) b^T`, `y = S r`, a per-head LayerNorm, the `r k` bonus term) and
//! channel mixing (token shift, squared-ReLU MLP); the first layer's values
//! (`v_first`) feed every later layer. Caches: one `ArraysCache(3)` per
//! layer (time-mixing token shift, WKV state, channel-mixing token shift).
//! mlx-lm runs a Metal kernel for the WKV recurrence on the GPU and the same
//! per-step ops elsewhere; these are those ops.

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, Error, Result, ops};
use mlxrs_nn::{
  ArraysCache, Embedding, KvCache, LayerNorm, Linear, Module, Param, Weights, join, module, relu2,
};
use serde::Deserialize;
use serde_json::Value;

use super::ssm::slice_axis;
use crate::model::{LanguageModel, parse_args};

/// `ModelArgs` of mlx-lm's rwkv7.py.
#[derive(Debug, Clone, Deserialize)]
pub struct Rwkv7Args {
  /// `vocab_size`
  pub vocab_size: i32,
  /// `hidden_size`
  pub hidden_size: i32,
  /// `intermediate_size`
  pub intermediate_size: i32,
  /// `norm_eps`
  pub norm_eps: f32,
  /// `head_dim`
  pub head_dim: i32,
  /// `num_hidden_layers`
  pub num_hidden_layers: i32,
  /// `a_low_rank_dim`
  pub a_low_rank_dim: i32,
  /// `v_low_rank_dim`
  pub v_low_rank_dim: i32,
  /// `gate_low_rank_dim`
  pub gate_low_rank_dim: i32,
  /// `decay_low_rank_dim`
  pub decay_low_rank_dim: i32,
  /// `tie_word_embeddings`
  #[serde(default)]
  pub tie_word_embeddings: bool,
}

#[derive(Clone, Copy)]
enum Act {
  None,
  Tanh,
  Sigmoid,
}

/// python `LoRA`: `lora.2(act(lora.0(x)))`.
struct Lora {
  down: Linear,
  up: Linear,
  act: Act,
}
module!(Lora {
  down => "lora.0",
  up => "lora.2"
});

impl Lora {
  fn new(dim: i32, rank: i32, act: Act, bias: bool) -> Lora {
    Lora {
      down: Linear::new(dim, rank, false),
      up: Linear::new(rank, dim, bias),
      act,
    }
  }
  fn forward(&self, x: &Array) -> Result<Array> {
    let h = self.down.forward(x)?;
    let h = match self.act {
      Act::None => h,
      Act::Tanh => ops::tanh(&h)?,
      Act::Sigmoid => ops::sigmoid(&h)?,
    };
    self.up.forward(&h)
  }
}

/// python `LayerNormPerHead`: `weight * layer_norm(x) + bias` per head.
struct HeadNorm {
  weight: Param,
  bias: Param,
  eps: f32,
}
module!(HeadNorm { weight, bias });

/// python `TokenShift`: the previous position's input (`state` for the
/// first one; zeros without a state).
fn token_shift(x: &Array, state: Option<&Array>) -> Result<Array> {
  let s = x.shape();
  let st = match state {
    Some(st) => st.clone(),
    None => ops::zeros(&[s[0], 1, s[2]], x.dtype())?,
  };
  if s[1] == 1 {
    return Ok(st);
  }
  ops::concatenate_axis(&[st, slice_axis(x, 1, 0, s[1] - 1)?], 1)
}

/// python `addcmul`: `x + y * z`.
fn addcmul(x: &Array, y: &Array, z: &Array) -> Result<Array> {
  x + &(y * z)?
}

/// python `l2_norm`: `x / max(||x||, 1e-7)` over the last axis.
fn l2_norm(x: &Array) -> Result<Array> {
  let n = ops::sqrt(&ops::sum_axis(&ops::square(x)?, -1, true)?)?;
  x / &ops::maximum(&n, &Array::scalar_as(1e-7, n.dtype())?)?
}

/// The WKV-7 recurrence (python `_wkv7_step_ops` over every position): `r`,
/// `w`, `k`, `v`, `a`, `b` `[B, L, H, D]`, `state` `[B, H, D, D]`.
fn wkv7(
  r: &Array,
  w: &Array,
  k: &Array,
  v: &Array,
  a: &Array,
  b: &Array,
  state: Array,
) -> Result<(Array, Array)> {
  let l = r.dim(1).unwrap_or(0);
  let at =
    |t_: &Array, t: i32| -> Result<Array> { ops::squeeze_axis(&slice_axis(t_, 1, t, t + 1)?, 1) };
  let mut state = state;
  let mut ys = Vec::with_capacity(l as usize);
  for t in 0..l {
    let (rt, wt, kt, vt, a_t, bt) = (
      at(r, t)?,
      at(w, t)?,
      at(k, t)?,
      at(v, t)?,
      at(a, t)?,
      at(b, t)?,
    );
    let sab = state
      .matmul(&a_t.expand_dims(-1)?)?
      .matmul(&bt.expand_dims(-2)?)?;
    let vk = vt.expand_dims(-1)?.matmul(&kt.expand_dims(-2)?)?;
    state = (((&state * &wt.expand_dims(2)?)? + &vk)? + &sab)?;
    ys.push(ops::squeeze_axis(&state.matmul(&rt.expand_dims(-1)?)?, -1)?);
  }
  Ok((ops::astype(&ops::stack_axis(&ys, 1)?, r.dtype())?, state))
}

struct TimeMixing {
  x_r: Param,
  x_w: Param,
  x_k: Param,
  x_v: Param,
  x_a: Param,
  x_g: Param,
  k_k: Param,
  k_a: Param,
  r_k: Param,
  r_proj: Linear,
  k_proj: Linear,
  v_proj: Linear,
  o_proj: Linear,
  g_norm: HeadNorm,
  w_lora: Lora,
  v_lora: Option<Lora>,
  a_lora: Lora,
  g_lora: Lora,
  heads: i32,
  head_dim: i32,
}
module!(TimeMixing {
  x_r,
  x_w,
  x_k,
  x_v,
  x_a,
  x_g,
  k_k,
  k_a,
  r_k,
  r_proj,
  k_proj,
  v_proj,
  o_proj,
  g_norm,
  w_lora,
  v_lora,
  a_lora,
  g_lora
});

impl TimeMixing {
  fn forward(
    &self,
    x: &Array,
    v_first: Option<Array>,
    c: &mut ArraysCache,
  ) -> Result<(Array, Array)> {
    let s = x.shape();
    let (bsz, l, d) = (s[0], s[1], s[2]);
    let heads = |t: Array| t.reshape(&[bsz, l, self.heads, self.head_dim]);
    let x_prev = token_shift(x, c.get(0))?;
    let xx = (&x_prev - x)?;
    let mix = |p: &Param| addcmul(x, &xx, &p.value);
    let (xr, xw, xk, xv, xa, xg) = (
      mix(&self.x_r)?,
      mix(&self.x_w)?,
      mix(&self.x_k)?,
      mix(&self.x_v)?,
      mix(&self.x_a)?,
      mix(&self.x_g)?,
    );
    let key = heads(self.k_proj.forward(&xk)?)?;
    let mut value = heads(self.v_proj.forward(&xv)?)?;
    let receptance = heads(self.r_proj.forward(&xr)?)?;
    let iclr = heads(ops::sigmoid(&self.a_lora.forward(&xa)?)?)?;
    let gate = self.g_lora.forward(&xg)?;
    let v_first = match (&self.v_lora, v_first) {
      (Some(vl), Some(vf)) => {
        let vv = heads(ops::sigmoid(&vl.forward(&xv)?)?)?;
        value = addcmul(&value, &(&vf - &value)?, &vv)?;
        vf
      }
      (None, _) => value.clone(),
      (Some(_), None) => {
        return Err(Error::InvalidArgument(
          "rwkv7: a later layer ran without v_first".into(),
        ));
      }
    };
    let decay = ops::astype(
      &ops::sigmoid(&heads(self.w_lora.forward(&xw)?)?)?,
      Dtype::Float32,
    )?;
    let decay = ops::astype(&ops::exp(&(&decay * -0.606531)?)?, receptance.dtype())?;
    let kk = l2_norm(&(&key * &self.k_k.value)?)?;
    let key = (&key * &(1.0 + &(&(&iclr - 1.0)? * &self.k_a.value)?)?)?;
    let a = ops::negative(&kk)?;
    let b = (&kk * &iclr)?;
    let state = match c.get(1) {
      Some(st) => st.clone(),
      None => ops::zeros(
        &[bsz, self.heads, self.head_dim, self.head_dim],
        receptance.dtype(),
      )?,
    };
    let (out, state) = wkv7(&receptance, &decay, &key, &value, &a, &b, state)?;
    let g = &self.g_norm;
    let out = out.reshape(&[bsz, l, self.heads, self.head_dim])?;
    let out = (&(&g.weight.value * &mlxrs_core::fast::layer_norm(&out, None, None, g.eps)?)?
      + &g.bias.value)?;
    let bonus = ops::sum_axis(&(&(&receptance * &key)? * &self.r_k.value)?, -1, true)?;
    let out = (out + &(&bonus * &value)?)?.reshape(&[bsz, l, d])?;
    c.set(0, slice_axis(x, 1, l - 1, l)?)?;
    c.set(1, state)?;
    Ok((self.o_proj.forward(&(&out * &gate)?)?, v_first))
  }
}

struct ChannelMixing {
  key: Linear,
  value: Linear,
  x_k: Param,
}
module!(ChannelMixing { key, value, x_k });

impl ChannelMixing {
  fn forward(&self, x: &Array, c: &mut ArraysCache) -> Result<Array> {
    let x_prev = token_shift(x, c.get(2))?;
    let xx = addcmul(x, &(&x_prev - x)?, &self.x_k.value)?;
    let l = x.dim(1).unwrap_or(1);
    c.set(2, slice_axis(x, 1, l - 1, l)?)?;
    self.value.forward(&relu2(&self.key.forward(&xx)?)?)
  }
}

struct Layer {
  pre_norm: Option<LayerNorm>,
  attn: TimeMixing,
  ffn: ChannelMixing,
  attn_norm: LayerNorm,
  ffn_norm: LayerNorm,
}
module!(Layer {
  pre_norm,
  attn,
  ffn,
  attn_norm,
  ffn_norm
});

struct Inner {
  embeddings: Embedding,
  layers: Vec<Layer>,
  norm: LayerNorm,
}
module!(Inner {
  embeddings,
  layers,
  norm
});

/// The RWKV-7 language model.
pub struct Rwkv7 {
  model: Inner,
  lm_head: Option<Linear>,
  args: Rwkv7Args,
}
module!(Rwkv7 { model, lm_head });

impl LanguageModel for Rwkv7 {
  fn hidden(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
    super::base::check_caches(caches.len(), self.model.layers.len())?;
    let mut x = self.model.embeddings.forward(tokens)?;
    let t = x.dim(1).unwrap_or(0);
    let mut v_first = None;
    for (layer, cache) in self.model.layers.iter().zip(caches.iter_mut()) {
      if let Some(pn) = &layer.pre_norm {
        x = pn.forward(&x)?;
      }
      let c = cache.arrays_mut()?;
      let (h, vf) = layer
        .attn
        .forward(&layer.attn_norm.forward(&x)?, v_first.take(), c)?;
      v_first = Some(vf);
      let h = (&x + &h)?;
      let f = layer.ffn.forward(&layer.ffn_norm.forward(&h)?, c)?;
      x = (&h + &f)?;
      cache.offset += t;
    }
    self.model.norm.forward(&x)
  }
  fn logits(&self, hidden: &Array) -> Result<Array> {
    match &self.lm_head {
      Some(h) => h.forward(hidden),
      None => self.model.embeddings.as_linear(hidden),
    }
  }
  /// mlx-lm's `make_cache`: `ArraysCache(3)` per layer (`max_kv_size` is
  /// refused by generation for recurrent models).
  fn make_caches(&self, _max_kv_size: Option<i32>) -> Vec<KvCache> {
    (0..self.model.layers.len())
      .map(|_| KvCache::arrays(3))
      .collect()
  }
  fn load(&mut self, w: &mut Weights) {
    Module::load(self, w, "");
  }
  /// mlx-lm rwkv7.py's `sanitize`: `k_k`, `k_a`, `g_norm` as `[heads,
  /// head_dim]`; a tied checkpoint's `lm_head` is dropped.
  fn sanitize(&self, mut weights: HashMap<String, Array>) -> Result<HashMap<String, Array>> {
    let (h, hd) = (self.args.hidden_size, self.args.head_dim);
    for (k, v) in weights.iter_mut() {
      if (k.contains("k_k") || k.contains("k_a") || k.contains("g_norm")) && v.size() == h as usize
      {
        *v = v.reshape(&[h / hd, hd])?;
      }
    }
    if self.lm_head.is_none() {
      for kind in ["weight", "scales", "biases"] {
        weights.remove(&join("lm_head", kind));
      }
    }
    Ok(weights)
  }
  fn vocab_size(&self) -> i32 {
    self.args.vocab_size
  }
  fn visit(&self, f: &mut dyn FnMut(&str, &Array)) {
    Module::visit(self, "", f);
  }
}

/// Registry entry for `rwkv7`.
pub fn build(config: &Value) -> Result<Box<dyn LanguageModel>> {
  let a: Rwkv7Args = parse_args(config)?;
  let (h, hd) = (a.hidden_size, a.head_dim);
  if h <= 0
    || hd <= 0
    || h % hd != 0
    || a.num_hidden_layers < 0
    || [
      a.a_low_rank_dim,
      a.v_low_rank_dim,
      a.gate_low_rank_dim,
      a.decay_low_rank_dim,
      a.intermediate_size,
    ]
    .iter()
    .any(|&v| v <= 0)
  {
    return Err(Error::InvalidArgument(format!(
      "config.json (rwkv7): hidden_size ({h}) must be a positive multiple of head_dim ({hd}); \
       low-rank dims and intermediate_size positive"
    )));
  }
  let nh = h / hd;
  let eps = a.norm_eps;
  let layers = (0..a.num_hidden_layers)
    .map(|i| Layer {
      pre_norm: (i == 0).then(|| LayerNorm::new(h, eps, true, true)),
      attn: TimeMixing {
        x_r: Param::new(&[1, 1, h]),
        x_w: Param::new(&[1, 1, h]),
        x_k: Param::new(&[1, 1, h]),
        x_v: Param::new(&[1, 1, h]),
        x_a: Param::new(&[1, 1, h]),
        x_g: Param::new(&[1, 1, h]),
        k_k: Param::new(&[nh, hd]),
        k_a: Param::new(&[nh, hd]),
        r_k: Param::new(&[nh, hd]),
        r_proj: Linear::new(h, h, false),
        k_proj: Linear::new(h, h, false),
        v_proj: Linear::new(h, h, false),
        o_proj: Linear::new(h, h, false),
        g_norm: HeadNorm {
          weight: Param::new(&[nh, hd]),
          bias: Param::new(&[nh, hd]),
          eps: 64e-5,
        },
        w_lora: Lora::new(h, a.decay_low_rank_dim, Act::Tanh, true),
        v_lora: (i > 0).then(|| Lora::new(h, a.v_low_rank_dim, Act::None, true)),
        a_lora: Lora::new(h, a.a_low_rank_dim, Act::None, true),
        g_lora: Lora::new(h, a.gate_low_rank_dim, Act::Sigmoid, false),
        heads: nh,
        head_dim: hd,
      },
      ffn: ChannelMixing {
        key: Linear::new(h, a.intermediate_size, false),
        value: Linear::new(a.intermediate_size, h, false),
        x_k: Param::new(&[h]),
      },
      attn_norm: LayerNorm::new(h, eps, true, true),
      ffn_norm: LayerNorm::new(h, eps, true, true),
    })
    .collect();
  Ok(Box::new(Rwkv7 {
    model: Inner {
      embeddings: Embedding::new(a.vocab_size, h),
      layers,
      norm: LayerNorm::new(h, eps, true, true),
    },
    lm_head: (!a.tie_word_embeddings).then(|| Linear::new(h, a.vocab_size, false)),
    args: a,
  }))
}
