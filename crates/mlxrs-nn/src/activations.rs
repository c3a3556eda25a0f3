//! Activations (python `mlx.nn.silu`, `gelu`, `gelu_approx`, `gelu_fast_approx`,
//! `relu`, `relu2`, `softplus`, `mish`, `sigmoid`, `swiglu`-style gating,
//! mlx-lm's `xielu`).

use mlxrs_core::{Array, Result, ops};

fn scalar_like(x: &Array, v: f64) -> Result<Array> {
  Array::scalar_as(v, x.dtype())
}

/// `x * sigmoid(x)` (`nn.silu`).
pub fn silu(x: &Array) -> Result<Array> {
  ops::multiply(x, &ops::sigmoid(x)?)
}

/// `sigmoid(x)` (`nn.sigmoid`).
pub fn sigmoid(x: &Array) -> Result<Array> {
  ops::sigmoid(x)
}

/// `max(x, 0)` (`nn.relu`).
pub fn relu(x: &Array) -> Result<Array> {
  ops::maximum(x, &scalar_like(x, 0.0)?)
}

/// `relu(x)^2` (`nn.relu2`).
pub fn relu2(x: &Array) -> Result<Array> {
  ops::square(&relu(x)?)
}

/// Exact GELU: `x * (1 + erf(x / sqrt(2))) / 2` (`nn.gelu`).
pub fn gelu(x: &Array) -> Result<Array> {
  let inner = ops::erf(&ops::multiply(
    x,
    &scalar_like(x, std::f64::consts::FRAC_1_SQRT_2)?,
  )?)?;
  let one = scalar_like(x, 1.0)?;
  ops::multiply(
    &ops::multiply(x, &ops::add(&one, &inner)?)?,
    &scalar_like(x, 0.5)?,
  )
}

/// Tanh-approximated GELU (`nn.gelu_approx`, HF `gelu_pytorch_tanh`):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_approx(x: &Array) -> Result<Array> {
  let c = (2.0 / std::f64::consts::PI).sqrt();
  let x3 = ops::multiply(&ops::multiply(x, x)?, x)?;
  let inner = ops::add(x, &ops::multiply(&x3, &scalar_like(x, 0.044715)?)?)?;
  let t = ops::tanh(&ops::multiply(&inner, &scalar_like(x, c)?)?)?;
  let one = scalar_like(x, 1.0)?;
  ops::multiply(
    &ops::multiply(x, &ops::add(&one, &t)?)?,
    &scalar_like(x, 0.5)?,
  )
}

/// Sigmoid-approximated GELU (`nn.gelu_fast_approx`): `x * sigmoid(1.702 x)`.
pub fn gelu_fast_approx(x: &Array) -> Result<Array> {
  ops::multiply(
    x,
    &ops::sigmoid(&ops::multiply(x, &scalar_like(x, 1.702)?)?)?,
  )
}

/// `log(1 + exp(x))` (`nn.softplus`).
pub fn softplus(x: &Array) -> Result<Array> {
  ops::logaddexp(x, &scalar_like(x, 0.0)?)
}

/// `x * tanh(softplus(x))` (`nn.mish`).
pub fn mish(x: &Array) -> Result<Array> {
  ops::multiply(x, &ops::tanh(&softplus(x)?)?)
}

/// SwiGLU gating: `silu(gate) * up` (mlx-lm's MLP).
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array> {
  ops::multiply(&silu(gate)?, up)
}

/// GPT-OSS's clamped SwiGLU (mlx-lm `activations.swiglu_oai(gate, x,
/// alpha, limit)`): `(clip(x, -limit, limit) + 1) * g * sigmoid(alpha * g)`
/// with `g = min(gate, limit)`.
pub fn swiglu_oai(gate: &Array, x: &Array, alpha: f32, limit: f32) -> Result<Array> {
  let g = ops::minimum(gate, &scalar_like(gate, limit as f64)?)?;
  let x = ops::clip(
    x,
    Some(&scalar_like(x, -limit as f64)?),
    Some(&scalar_like(x, limit as f64)?),
  )?;
  let glu = ops::multiply(
    &g,
    &ops::sigmoid(&ops::multiply(&g, &scalar_like(&g, alpha as f64)?)?)?,
  )?;
  ops::multiply(&ops::add(&x, &scalar_like(&x, 1.0)?)?, &glu)
}

/// xIELU (mlx-lm `activations.xielu(x, alpha_p, alpha_n, beta, eps)`,
/// Apertus) over trained scalars: with `ap = softplus(alpha_p)` and
/// `an = beta + softplus(alpha_n)`, `ap * x^2 + beta * x` for `x > 0`,
/// else `(expm1(min(x, eps)) - x) * an + beta * x`.
pub fn xielu(
  x: &Array,
  alpha_p: &Array,
  alpha_n: &Array,
  beta: &Array,
  eps: &Array,
) -> Result<Array> {
  let ap = softplus(alpha_p)?;
  let an = ops::add(beta, &softplus(alpha_n)?)?;
  let bx = ops::multiply(beta, x)?;
  let pos = ops::add(&ops::multiply(&ap, &ops::square(x)?)?, &bx)?;
  let neg = ops::add(
    &ops::multiply(
      &ops::subtract(&ops::expm1(&ops::minimum(x, eps)?)?, x)?,
      &an,
    )?,
    &bx,
  )?;
  ops::where_(&ops::greater(x, &scalar_like(x, 0.0)?)?, &pos, &neg)
}

/// Activation by HF config name (`hidden_act`): silu/swish, gelu,
/// gelu_pytorch_tanh/gelu_new/gelu_approx, gelu_fast, relu, relu2.
pub fn by_name(name: &str, x: &Array) -> Result<Array> {
  match name {
    "silu" | "swish" => silu(x),
    "gelu" => gelu(x),
    "gelu_pytorch_tanh" | "gelu_new" | "gelu_approx" => gelu_approx(x),
    "gelu_fast" => gelu_fast_approx(x),
    "relu" => relu(x),
    "relu2" => relu2(x),
    "sigmoid" => sigmoid(x),
    other => Err(mlxrs_core::Error::InvalidArgument(format!(
      "unknown activation {other:?}"
    ))),
  }
}
