//! Low-rank adapters (mlx-lm `tuner/lora.py` `LoRALinear` and
//! `tuner/dora.py` `DoRALinear`) over a dense or quantized [`Linear`].
//! Parameter names match mlx-lm's adapter files: `linear.weight` (...),
//! `lora_a` `[in, r]`, `lora_b` `[r, out]`, and DoRA's magnitude `m`.

use mlxrs_core::{Array, Dtype, Error, Result, ops};

use crate::dropout::Dropout;
use crate::linear::{Linear, uniform_init};
use crate::module::{Module, Param};

fn lora_init(in_dims: i32, out_dims: i32, r: i32, key: Option<&Array>) -> Result<(Param, Param)> {
  if r <= 0 || in_dims <= 0 || out_dims <= 0 {
    return Err(Error::InvalidArgument(format!(
      "LoRA: rank {r} and dims {in_dims} -> {out_dims} must be positive"
    )));
  }
  let a = uniform_init(&[in_dims, r], 1.0 / (in_dims as f32).sqrt(), key)?;
  let b = ops::zeros(&[r, out_dims], Dtype::Float32)?;
  Ok((Param::from_value(a), Param::from_value(b)))
}

/// `(dropout(x) @ a) @ b * scale`, cast to `x`'s dtype.
fn low_rank(x: &Array, a: &Array, b: &Array, scale: f32, dropout: &Dropout) -> Result<Array> {
  let z = ops::matmul(&ops::matmul(&dropout.forward(x)?, a)?, b)?;
  ops::astype(
    &ops::multiply(&Array::scalar_as(scale as f64, z.dtype())?, &z)?,
    x.dtype(),
  )
}

/// `(scale * b.T) @ a.T`: the dense `[out, in]` update.
fn delta(a: &Array, b: &Array, scale: f32) -> Result<Array> {
  let bt = ops::transpose(b)?;
  ops::matmul(
    &ops::multiply(&Array::scalar_as(scale as f64, bt.dtype())?, &bt)?,
    &ops::transpose(a)?,
  )
}

fn refuse(lin: &Linear, quant: bool, w: Array) -> Result<Linear> {
  let mut fused = Linear::from_weights(w, lin.bias.clone());
  if let (true, Some(q)) = (quant, &lin.quant) {
    fused.quantize(q)?;
  }
  Ok(fused)
}

/// `linear(x) + scale * (dropout(x) @ a) @ b` (mlx-lm `LoRALinear.__call__`).
fn lora_forward(
  linear: &Linear,
  a: &Array,
  b: &Array,
  scale: f32,
  dropout: &Dropout,
  x: &Array,
) -> Result<Array> {
  let y = linear.forward_base(x)?;
  ops::add(&y, &low_rank(x, a, b, scale, dropout)?)
}

/// mlx-lm `DoRALinear.__call__`: the LoRA output rescaled per output row by
/// `m / ||W + scale * b.T a.T||` (the norm held constant for gradients).
fn dora_forward(
  linear: &Linear,
  a: &Array,
  b: &Array,
  m: &Array,
  scale: f32,
  dropout: &Dropout,
  x: &Array,
) -> Result<Array> {
  let w = linear.dense_weight()?;
  let y = ops::matmul(x, &ops::transpose(&w)?)?;
  let out = ops::add(&y, &low_rank(x, a, b, scale, dropout)?)?;
  let adapted = ops::add(&w, &delta(a, b, scale)?)?;
  let denom = ops::stop_gradient(&mlxrs_core::linalg::norm_l2(&adapted, Some(&[1]), false)?)?;
  let out = ops::multiply(&ops::astype(&ops::divide(m, &denom)?, x.dtype())?, &out)?;
  match &linear.bias {
    Some(bias) => ops::add(&out, bias),
    None => Ok(out),
  }
}

/// The merged dense weight `[out, in]` of a base weight `w` (dense,
/// dequantized) and its adapter (python `LoRALinear.fuse` /
/// `DoRALinear.fuse` before re-quantizing): `w + scale * b.T a.T`, and for
/// DoRA rescaled per row to the norms `m`.
pub fn fused_weight(
  w: &Array,
  a: &Array,
  b: &Array,
  m: Option<&Array>,
  scale: f32,
) -> Result<Array> {
  let d = ops::astype(&delta(a, b, scale)?, w.dtype())?;
  let w = ops::add(w, &d)?;
  match m {
    None => Ok(w),
    Some(m) => {
      let ns = ops::divide(m, &mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?)?;
      ops::astype(&ops::multiply(&ops::expand_dims(&ns, 1)?, &w)?, w.dtype())
    }
  }
}

/// How [`crate::Weights`] attaches adapters while loading (mlx-lm's
/// `lora_parameters`: `scale`, `dropout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSettings {
  /// Update scale (mlx-lm default 20).
  pub scale: f32,
  /// Dropout probability on the adapter's input (mlx-lm default 0).
  pub dropout: f32,
  /// Whether dropout is active (training).
  pub training: bool,
}

/// The kinds of layer low-rank adapters wrap (mlx-lm's
/// `linear_to_lora_layers`: `LoRALinear` / `DoRALinear`,
/// `LoRASwitchLinear`, `LoRAEmbedding` / `DoRAEmbedding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
  /// [`Linear`] (dense or quantized).
  Linear,
  /// [`crate::Embedding`] (dense or quantized).
  Embedding,
  /// [`crate::SwitchLinear`]: one linear layer per expert.
  SwitchLinear,
}

impl AdapterKind {
  /// The layer's type name (`"Linear"`, ...).
  pub fn name(self) -> &'static str {
    match self {
      AdapterKind::Linear => "Linear",
      AdapterKind::Embedding => "Embedding",
      AdapterKind::SwitchLinear => "SwitchLinear",
    }
  }
}

/// A layer of a loaded model that adapters can wrap (recorded by
/// [`crate::Weights::layers`] as the model loads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptableLayer {
  /// Module path (`model.layers.1.self_attn.q_proj`).
  pub path: String,
  /// The layer's kind.
  pub kind: AdapterKind,
  /// The dense weight's shape: `[out, in]` (Linear), `[num_embeddings,
  /// dims]` (Embedding), `[experts, out, in]` (SwitchLinear).
  pub shape: Vec<i32>,
  /// Whether the layer was loaded quantized.
  pub quantized: bool,
}

/// The tensors and settings of one low-rank adapter, whatever layer holds
/// it ([`LinearAdapter`], [`EmbeddingAdapter`], [`SwitchAdapter`], which
/// dereference to it), under mlx-lm's names `<path>.lora_a`,
/// `<path>.lora_b` and DoRA's `<path>.m`.
pub struct LowRank {
  /// Down projection (shape per layer kind).
  pub lora_a: Array,
  /// Up projection (shape per layer kind).
  pub lora_b: Array,
  /// DoRA's magnitude per output row (`None`: plain LoRA).
  pub m: Option<Array>,
  /// Update scale.
  pub scale: f32,
  /// Dropout on the adapter's input.
  pub dropout: Dropout,
}

impl LowRank {
  /// Take `<prefix>.lora_a` (shape `a_shape(r)`, the rank `r` read from
  /// its axis 1 in every layer kind), `<prefix>.lora_b` (`b_shape(r)`)
  /// and, where the layer allows DoRA (`m_dims`), `<prefix>.m` `[m_dims]`.
  /// `None` when `w.adapter` is unset or the layer has no adapter in `w`.
  fn load(
    w: &mut crate::Weights,
    prefix: &str,
    a_shape: &dyn Fn(i32) -> Vec<i32>,
    b_shape: &dyn Fn(i32) -> Vec<i32>,
    m_dims: Option<i32>,
  ) -> Option<LowRank> {
    let settings = w.adapter?;
    let ka = crate::join(prefix, "lora_a");
    if !w.has(&ka) {
      return None;
    }
    let a = w.take(&ka, None);
    let r = a.shape().get(1).copied().unwrap_or(0);
    let want = a_shape(r);
    if a.shape() != want {
      w.problem(format!(
        "adapter {ka} has shape {:?}, expected {want:?}",
        a.shape()
      ));
    }
    let b = w.take(&crate::join(prefix, "lora_b"), Some(&b_shape(r)));
    let km = crate::join(prefix, "m");
    let m = match m_dims {
      Some(d) => w.take_opt(&km, Some(&[d])),
      None => {
        if w.has(&km) {
          w.problem(format!(
            "adapter {km}: DoRA is not supported on this layer kind (mlx-lm: \"doesn't support DoRA yet\")"
          ));
        }
        None
      }
    };
    let mut dropout = match Dropout::new(settings.dropout) {
      Ok(d) => d,
      Err(e) => {
        w.problem(format!("adapter {prefix}: {e}"));
        return None;
      }
    };
    dropout.training = settings.training;
    Some(LowRank {
      lora_a: a,
      lora_b: b,
      m,
      scale: settings.scale,
      dropout,
    })
  }

  pub(crate) fn visit_tensors(&self, prefix: &str, f: &mut dyn FnMut(&str, &Array)) {
    f(&crate::join(prefix, "lora_a"), &self.lora_a);
    f(&crate::join(prefix, "lora_b"), &self.lora_b);
    if let Some(m) = &self.m {
      f(&crate::join(prefix, "m"), m);
    }
  }

  pub(crate) fn visit_tensors_mut(
    &mut self,
    prefix: &str,
    f: &mut dyn FnMut(&str, &mut Array, &mut bool),
  ) {
    let mut fz = false;
    f(&crate::join(prefix, "lora_a"), &mut self.lora_a, &mut fz);
    f(&crate::join(prefix, "lora_b"), &mut self.lora_b, &mut fz);
    if let Some(m) = &mut self.m {
      f(&crate::join(prefix, "m"), m, &mut fz);
    }
  }
}

/// The wrapper types dereference to their [`LowRank`] tensors.
macro_rules! low_rank_wrapper {
  ($t:ident) => {
    impl std::ops::Deref for $t {
      type Target = LowRank;
      fn deref(&self) -> &LowRank {
        &self.0
      }
    }
    impl std::ops::DerefMut for $t {
      fn deref_mut(&mut self) -> &mut LowRank {
        &mut self.0
      }
    }
  };
}

/// `scale * z` cast to `dtype`.
fn scaled(z: &Array, scale: f32, dtype: Dtype) -> Result<Array> {
  ops::astype(
    &ops::multiply(&Array::scalar_as(scale as f64, z.dtype())?, z)?,
    dtype,
  )
}

/// A LoRA adapter held inside a [`crate::SwitchLinear`] (mlx-lm
/// `LoRASwitchLinear`): per expert `e`, `lora_a[e]` `[r, in]` and
/// `lora_b[e]` `[out, r]`; stored as `<path>.lora_a` `[experts, r, in]`,
/// `<path>.lora_b` `[experts, out, r]`. No DoRA (as mlx-lm).
pub struct SwitchAdapter(pub LowRank);
low_rank_wrapper!(SwitchAdapter);

impl SwitchAdapter {
  pub(crate) fn load(
    w: &mut crate::Weights,
    prefix: &str,
    experts: i32,
    in_dims: i32,
    out_dims: i32,
  ) -> Option<Box<SwitchAdapter>> {
    let p = LowRank::load(
      w,
      prefix,
      &|r| vec![experts, r, in_dims],
      &|r| vec![experts, out_dims, r],
      None,
    )?;
    Some(Box::new(SwitchAdapter(p)))
  }

  /// The adapted output: the base layer's output `y` plus `scale *
  /// (x @ lora_a[e].T) @ lora_b[e].T` for each row's expert `e` (python
  /// `LoRASwitchLinear.__call__`).
  pub fn forward(&self, y: &Array, x: &Array, indices: &Array, sorted: bool) -> Result<Array> {
    let z = ops::gather_mm(
      &self.dropout.forward(x)?,
      &ops::swapaxes(&self.lora_a, -1, -2)?,
      None,
      Some(indices),
      sorted,
    )?;
    let z = ops::gather_mm(
      &z,
      &ops::swapaxes(&self.lora_b, -1, -2)?,
      None,
      Some(indices),
      sorted,
    )?;
    ops::add(y, &scaled(&z, self.scale, x.dtype())?)
  }

  /// The merged `[experts, out, in]` weight of a dense (dequantized) base
  /// `w` (python `LoRASwitchLinear.fuse` before re-quantizing).
  pub fn fused_weight(w: &Array, a: &Array, b: &Array, scale: f32) -> Result<Array> {
    let d = ops::matmul(
      &ops::multiply(&Array::scalar_as(scale as f64, b.dtype())?, b)?,
      a,
    )?;
    ops::add(w, &ops::astype(&d, w.dtype())?)
  }
}

/// A LoRA or DoRA adapter held inside a [`crate::Embedding`] (mlx-lm
/// `LoRAEmbedding` / `DoRAEmbedding`): `<path>.lora_a` `[num_embeddings,
/// r]`, `<path>.lora_b` `[r, dims]`, DoRA's magnitude `<path>.m`
/// `[num_embeddings]`.
pub struct EmbeddingAdapter(pub LowRank);
low_rank_wrapper!(EmbeddingAdapter);

impl EmbeddingAdapter {
  pub(crate) fn load(
    w: &mut crate::Weights,
    prefix: &str,
    num: i32,
    dims: i32,
  ) -> Option<Box<EmbeddingAdapter>> {
    let p = LowRank::load(w, prefix, &|r| vec![num, r], &|r| vec![r, dims], Some(num))?;
    Some(Box::new(EmbeddingAdapter(p)))
  }

  /// Rows for `ids` with the update (python `LoRAEmbedding.__call__` /
  /// `DoRAEmbedding.__call__`); `y` is the base table's lookup.
  pub fn forward(&self, y: &Array, ids: &Array) -> Result<Array> {
    let z = ops::matmul(&ops::take_axis(&self.lora_a, ids, 0)?, &self.lora_b)?;
    match &self.m {
      None => ops::add(
        y,
        &scaled(&self.dropout.forward(&z)?, self.scale, y.dtype())?,
      ),
      Some(m) => {
        let z = scaled(&z, self.scale, z.dtype())?;
        let out = ops::add(y, &ops::astype(&self.dropout.forward(&z)?, y.dtype())?)?;
        let adapted = ops::add(y, &z)?;
        let denom =
          ops::stop_gradient(&mlxrs_core::linalg::norm_l2(&adapted, Some(&[-1]), false)?)?;
        let ratio = ops::divide(&ops::take_axis(m, ids, 0)?, &denom)?;
        ops::multiply(&ops::expand_dims(&ratio, -1)?, &out)
      }
    }
  }

  /// The table as an output projection with the update (python
  /// `LoRAEmbedding.as_linear` / `DoRAEmbedding.as_linear`); `y` is the
  /// base table's `as_linear(x)`, `table` its dense weight (DoRA only).
  pub fn as_linear(&self, y: &Array, x: &Array, table: Option<&Array>) -> Result<Array> {
    let z = ops::matmul(
      &ops::matmul(&self.dropout.forward(x)?, &ops::transpose(&self.lora_b)?)?,
      &ops::transpose(&self.lora_a)?,
    )?;
    let out = ops::add(y, &scaled(&z, self.scale, x.dtype())?)?;
    match (&self.m, table) {
      (None, _) => Ok(out),
      (Some(m), Some(t)) => {
        let adapted = Self::lora_weight(t, &self.lora_a, &self.lora_b, self.scale)?;
        let denom = ops::stop_gradient(&mlxrs_core::linalg::norm_l2(&adapted, Some(&[1]), false)?)?;
        ops::multiply(&ops::divide(m, &denom)?, &out)
      }
      (Some(_), None) => Err(Error::InvalidArgument(
        "DoRA embedding needs the dense table".into(),
      )),
    }
  }

  /// `table + (scale * lora_a) @ lora_b`.
  fn lora_weight(table: &Array, a: &Array, b: &Array, scale: f32) -> Result<Array> {
    let d = ops::matmul(
      &ops::multiply(&Array::scalar_as(scale as f64, a.dtype())?, a)?,
      b,
    )?;
    ops::add(table, &ops::astype(&d, table.dtype())?)
  }

  /// The merged `[num_embeddings, dims]` table of a dense (dequantized)
  /// base `table` (python `LoRAEmbedding.fuse` / `DoRAEmbedding.fuse`
  /// before re-quantizing).
  pub fn fused_weight(
    table: &Array,
    a: &Array,
    b: &Array,
    m: Option<&Array>,
    scale: f32,
  ) -> Result<Array> {
    let w = Self::lora_weight(table, a, b, scale)?;
    match m {
      None => Ok(w),
      Some(m) => {
        let ns = ops::divide(m, &mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?)?;
        ops::astype(&ops::multiply(&ops::expand_dims(&ns, 1)?, &w)?, w.dtype())
      }
    }
  }
}

/// A LoRA or DoRA adapter held inside a [`Linear`] (so that any model built
/// from `Linear` layers can be adapted without changing it). Its
/// parameters sit next to the layer's own, under mlx-lm's adapter names:
/// `<path>.lora_a` `[in, r]`, `<path>.lora_b` `[r, out]`, DoRA `<path>.m`
/// `[out]`.
pub struct LinearAdapter(pub LowRank);
low_rank_wrapper!(LinearAdapter);

impl LinearAdapter {
  /// Take `<prefix>.lora_a`, `.lora_b` (and `.m`) from `w` when present and
  /// `w.adapter` is set; shape problems are recorded in `w`.
  pub(crate) fn load(
    w: &mut crate::Weights,
    prefix: &str,
    in_dims: i32,
    out_dims: i32,
  ) -> Option<Box<LinearAdapter>> {
    let p = LowRank::load(
      w,
      prefix,
      &|r| vec![in_dims, r],
      &|r| vec![r, out_dims],
      Some(out_dims),
    )?;
    Some(Box::new(LinearAdapter(p)))
  }

  /// The adapted layer's output for `x` (`linear` is the base layer).
  pub fn forward(&self, linear: &Linear, x: &Array) -> Result<Array> {
    match &self.m {
      None => lora_forward(
        linear,
        &self.lora_a,
        &self.lora_b,
        self.scale,
        &self.dropout,
        x,
      ),
      Some(m) => dora_forward(
        linear,
        &self.lora_a,
        &self.lora_b,
        m,
        self.scale,
        &self.dropout,
        x,
      ),
    }
  }
}

/// A linear layer plus a trainable low-rank update (mlx-lm `LoRALinear`):
/// `linear(x) + scale * (dropout(x) @ lora_a) @ lora_b`.
pub struct LoRALinear {
  /// The base layer (frozen by [`LoRALinear::from_base`]).
  pub linear: Linear,
  /// Down projection `[in, r]`.
  pub lora_a: Param,
  /// Up projection `[r, out]` (zeros at init, so the adapter starts as the
  /// identity).
  pub lora_b: Param,
  /// Update scale.
  pub scale: f32,
  /// Dropout on the adapter's input.
  pub dropout: Dropout,
}

crate::module!(LoRALinear {
  linear,
  lora_a,
  lora_b,
  dropout
});

impl LoRALinear {
  /// Wrap `linear` (python `LoRALinear.from_base(linear, r, dropout,
  /// scale)`; mlx-lm's defaults are `r 8`, `dropout 0`, `scale 20`):
  /// `lora_a` is `uniform(±1/sqrt(in))` from `key` (or the global key),
  /// `lora_b` zeros. The base layer is frozen, as mlx-lm freezes the model
  /// before adding adapters, so only the adapter trains.
  pub fn from_base(
    mut linear: Linear,
    r: i32,
    dropout: f32,
    scale: f32,
    key: Option<&Array>,
  ) -> Result<LoRALinear> {
    let (a, b) = lora_init(linear.in_dims, linear.out_dims, r, key)?;
    linear.freeze();
    Ok(LoRALinear {
      linear,
      lora_a: a,
      lora_b: b,
      scale,
      dropout: Dropout::new(dropout)?,
    })
  }

  /// `[..., in]` -> `[..., out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    lora_forward(
      &self.linear,
      &self.lora_a.value,
      &self.lora_b.value,
      self.scale,
      &self.dropout,
      x,
    )
  }

  /// Merge the adapter into a plain layer (python `fuse(dequantize)`): a
  /// quantized base gives a re-quantized layer unless `dequantize`.
  pub fn fuse(&self, dequantize: bool) -> Result<Linear> {
    let w = self.linear.dense_weight()?;
    let d = ops::astype(
      &delta(&self.lora_a.value, &self.lora_b.value, self.scale)?,
      w.dtype(),
    )?;
    refuse(&self.linear, !dequantize, ops::add(&w, &d)?)
  }
}

/// Weight-decomposed LoRA (mlx-lm `DoRALinear`): the LoRA output rescaled
/// per output row by `m / ||W + scale * B.T A.T||` (the norm held
/// constant for gradients).
pub struct DoRALinear {
  /// The base layer (frozen by [`DoRALinear::from_base`]).
  pub linear: Linear,
  /// Down projection `[in, r]`.
  pub lora_a: Param,
  /// Up projection `[r, out]`.
  pub lora_b: Param,
  /// Magnitude per output row `[out]` (init: the base weight's row norms).
  pub m: Param,
  /// Update scale.
  pub scale: f32,
  /// Dropout on the adapter's input.
  pub dropout: Dropout,
}

crate::module!(DoRALinear {
  linear,
  lora_a,
  lora_b,
  m,
  dropout
});

impl DoRALinear {
  /// Wrap `linear` (python `DoRALinear.from_base(linear, r, dropout,
  /// scale)`); `m` starts as the row norms of the (dequantized) weight.
  pub fn from_base(
    mut linear: Linear,
    r: i32,
    dropout: f32,
    scale: f32,
    key: Option<&Array>,
  ) -> Result<DoRALinear> {
    let (a, b) = lora_init(linear.in_dims, linear.out_dims, r, key)?;
    let w = ops::astype(&linear.dense_weight()?, Dtype::Float32)?;
    let m = Param::from_value(mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?);
    linear.freeze();
    Ok(DoRALinear {
      linear,
      lora_a: a,
      lora_b: b,
      m,
      scale,
      dropout: Dropout::new(dropout)?,
    })
  }

  /// `[..., in]` -> `[..., out]`.
  pub fn forward(&self, x: &Array) -> Result<Array> {
    dora_forward(
      &self.linear,
      &self.lora_a.value,
      &self.lora_b.value,
      &self.m.value,
      self.scale,
      &self.dropout,
      x,
    )
  }

  /// Merge into a plain layer (python `fuse(dequantize)`).
  pub fn fuse(&self, dequantize: bool) -> Result<Linear> {
    let w = self.linear.dense_weight()?;
    let d = ops::astype(
      &delta(&self.lora_a.value, &self.lora_b.value, self.scale)?,
      w.dtype(),
    )?;
    let w = ops::add(&w, &d)?;
    let ns = ops::divide(
      &self.m.value,
      &mlxrs_core::linalg::norm_l2(&w, Some(&[1]), false)?,
    )?;
    refuse(
      &self.linear,
      !dequantize,
      ops::multiply(&ops::expand_dims(&ns, 1)?, &w)?,
    )
  }
}
