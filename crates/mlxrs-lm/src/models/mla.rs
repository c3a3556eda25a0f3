//! Multi-head latent attention with an explicit `kv_b_proj` (mlx-lm's
//! `DeepseekV2Attention` in deepseek_v2.py and `Attention` in
//! minicpm3.py): queries through a full `q_proj` or the low-rank
//! `q_a_proj -> q_a_layernorm -> q_b_proj`; keys and values from one
//! compressed latent (`kv_a_proj_with_mqa -> kv_a_layernorm -> kv_b_proj`)
//! plus a single roped key part shared by every head. The cache holds the
//! expanded per-head keys `[nope | rope]` and values, as mlx-lm's does.
//! (DeepSeek-V3's absorbed variant, caching the latent, is in
//! `deepseek_v3.rs`.)

use mlxrs_core::{Array, Error, Result, ops};
use mlxrs_nn::{AttnMask, KvCache, Linear, RmsNorm, Rope, module};

/// Shape of an [`MlaAttention`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlaDims {
  /// Model width.
  pub hidden: i32,
  /// Heads.
  pub n_heads: i32,
  /// `q_lora_rank` (`None`: a full-rank `q_proj`).
  pub q_lora_rank: Option<i32>,
  /// `kv_lora_rank`
  pub kv_lora_rank: i32,
  /// `qk_nope_head_dim`
  pub nope: i32,
  /// `qk_rope_head_dim`
  pub rope: i32,
  /// `v_head_dim`
  pub v_head_dim: i32,
  /// Bias on `q_a_proj`, `kv_a_proj_with_mqa` (and `o_proj` when
  /// `o_bias`).
  pub bias: bool,
  /// Bias on `o_proj` (MiniCPM3: `attention_bias`; DeepSeek-V2 too).
  pub o_bias: bool,
  /// Epsilon of the two latent RMSNorms.
  pub latent_eps: f32,
  /// Attention scale.
  pub scale: f32,
}

impl MlaDims {
  /// Check the sizes (all positive, `nope` non-negative).
  pub fn check(&self, arch: &str) -> Result<()> {
    let lora_ok = self.q_lora_rank.is_none_or(|r| r > 0);
    if self.hidden <= 0
      || self.n_heads <= 0
      || self.kv_lora_rank <= 0
      || self.rope <= 0
      || self.nope < 0
      || self.v_head_dim <= 0
      || !lora_ok
    {
      return Err(Error::InvalidArgument(format!(
        "config ({arch}): hidden_size, num_attention_heads, kv_lora_rank, q_lora_rank and the \
         head dims must be positive"
      )));
    }
    Ok(())
  }
}

/// `self_attn` of a DeepSeek-V2 / MiniCPM3 block.
pub(crate) struct MlaAttention {
  q_proj: Option<Linear>,
  q_a_proj: Option<Linear>,
  q_a_layernorm: Option<RmsNorm>,
  q_b_proj: Option<Linear>,
  kv_a_proj_with_mqa: Linear,
  kv_a_layernorm: RmsNorm,
  kv_b_proj: Linear,
  o_proj: Linear,
  d: MlaDims,
  rope: Rope,
}
module!(MlaAttention {
  q_proj,
  q_a_proj,
  q_a_layernorm,
  q_b_proj,
  kv_a_proj_with_mqa,
  kv_a_layernorm,
  kv_b_proj,
  o_proj
});

/// `mx.split(a, [at], axis=-1)`.
fn split2(a: &Array, at: i32) -> Result<(Array, Array)> {
  match <[Array; 2]>::try_from(ops::split_sections(a, &[at], -1)?) {
    Ok([x, y]) => Ok((x, y)),
    Err(_) => Err(Error::Mlx("split did not return two parts".into())),
  }
}

impl MlaAttention {
  /// An unloaded layer of shape `d` rotating its `rope` dims with `rope`.
  pub fn new(d: MlaDims, rope: Rope) -> MlaAttention {
    let q_dim = d.n_heads * (d.nope + d.rope);
    let lora = d.q_lora_rank;
    MlaAttention {
      q_proj: lora.is_none().then(|| Linear::new(d.hidden, q_dim, false)),
      q_a_proj: lora.map(|r| Linear::new(d.hidden, r, d.bias)),
      q_a_layernorm: lora.map(|r| RmsNorm::new(r, d.latent_eps)),
      q_b_proj: lora.map(|r| Linear::new(r, q_dim, false)),
      kv_a_proj_with_mqa: Linear::new(d.hidden, d.kv_lora_rank + d.rope, d.bias),
      kv_a_layernorm: RmsNorm::new(d.kv_lora_rank, d.latent_eps),
      kv_b_proj: Linear::new(d.kv_lora_rank, d.n_heads * (d.nope + d.v_head_dim), false),
      o_proj: Linear::new(d.n_heads * d.v_head_dim, d.hidden, d.o_bias),
      d,
      rope,
    }
  }

  /// Attention over `x` `[B, L, hidden]`, appending to `cache`.
  pub fn forward(&self, x: &Array, mask: &AttnMask, cache: &mut KvCache) -> Result<Array> {
    let s = x.shape();
    let (b, l) = (s[0], s[1]);
    let d = &self.d;
    let q = match (
      &self.q_proj,
      &self.q_a_proj,
      &self.q_a_layernorm,
      &self.q_b_proj,
    ) {
      (Some(p), ..) => p.forward(x)?,
      (None, Some(a), Some(n), Some(bp)) => bp.forward(&n.forward(&a.forward(x)?)?)?,
      _ => return Err(Error::InvalidArgument("mla: no query projection".into())),
    };
    let heads = |t: &Array, n: i32| -> Result<Array> {
      ops::transpose_axes(&ops::reshape(t, &[b, l, n, -1])?, &[0, 2, 1, 3])
    };
    let (q_nope, q_pe) = split2(&heads(&q, d.n_heads)?, d.nope)?;
    let (compressed, k_pe) = split2(&self.kv_a_proj_with_mqa.forward(x)?, d.kv_lora_rank)?;
    let k_pe = heads(&k_pe, 1)?;
    let kv = self
      .kv_b_proj
      .forward(&self.kv_a_layernorm.forward(&compressed)?)?;
    let (k_nope, values) = split2(&heads(&kv, d.n_heads)?, d.nope)?;
    let q_pe = self.rope.forward(&q_pe, cache.offset)?;
    let k_pe = self.rope.forward(&k_pe, cache.offset)?;
    let k_pe = ops::broadcast_to(&k_pe, &[b, d.n_heads, l, d.rope])?;
    let queries = ops::concatenate_axis(&[q_nope, q_pe], -1)?;
    let keys = ops::concatenate_axis(&[k_nope, k_pe], -1)?;
    let o =
      mlxrs_nn::attention_with_cache_update(&queries, &keys, &values, cache, d.scale, mask, None)?;
    self.o_proj.forward(&ops::reshape(
      &ops::transpose_axes(&o, &[0, 2, 1, 3])?,
      &[b, l, -1],
    )?)
  }
}
