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

/// SwiGLU gating: `silu(gate) * up` (mlx-lm's `activations.swiglu`, used by
/// its MLPs).
///
/// mlx-lm compiles it (`@partial(mx.compile, shapeless=True)`), so on the GPU
/// it is one fused kernel rather than three (sigmoid, two products): a
/// decode step of a Llama-shaped model issues two kernels fewer per layer.
/// Here too: on a GPU default device, outside [`mlxrs_core::with_stream`],
/// the product runs through a shapeless compiled closure (one per thread,
/// as MLX's compile cache is per thread). Elsewhere (CPU, where MLX would
/// JIT-compile C++ with the system compiler at run time, or an explicit
/// stream, which a compiled tape would not follow) it is the plain
/// expression. `MLX_DISABLE_COMPILE=1` also turns the fusion off.
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array> {
  if fuse_on_gpu() {
    return swiglu_compiled(gate, up);
  }
  swiglu_eager(gate, up)
}

fn swiglu_eager(gate: &Array, up: &Array) -> Result<Array> {
  ops::multiply(&silu(gate)?, up)
}

thread_local! {
  static SWIGLU: std::cell::RefCell<Option<mlxrs_core::closure::Closure>> =
    const { std::cell::RefCell::new(None) };
}

/// [`swiglu`] through this thread's shapeless compiled closure.
fn swiglu_compiled(gate: &Array, up: &Array) -> Result<Array> {
  SWIGLU.with(|f| -> Result<Array> {
    let mut slot = f.borrow_mut();
    let c = match slot.as_ref() {
      Some(c) => c,
      None => slot.insert(mlxrs_core::transforms::compile_fn(
        |a: &[Array]| Ok(vec![swiglu_eager(&a[0], &a[1])?]),
        true,
      )?),
    };
    c.call(&[gate.clone(), up.clone()])?
      .pop()
      .ok_or_else(|| mlxrs_core::Error::Mlx("compiled swiglu returned nothing".into()))
  })
}

/// Whether fused (compiled) activations apply: the ops would run on the
/// default stream of a GPU default device.
fn fuse_on_gpu() -> bool {
  mlxrs_core::default_stream().ctx.is_null() && mlxrs_core::Device::default_is_gpu()
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

#[cfg(test)]
mod tests {
  use super::*;
  use mlxrs_core::{Dtype, random};

  /// The compiled SwiGLU the GPU path takes is the eager expression: the
  /// same values for several shapes through the one shapeless closure (on
  /// the CPU here, where MLX fuses it with the system C++ compiler).
  #[test]
  fn compiled_swiglu_matches_eager() -> Result<()> {
    for (shape, dt) in [
      (vec![1, 1, 64], Dtype::Float32),
      (vec![2, 5, 48], Dtype::Float32),
      (vec![1, 3, 64], Dtype::Bfloat16),
    ] {
      let g = ops::astype(&random::normal(&shape, Dtype::Float32, 0.0, 2.0, None)?, dt)?;
      let u = ops::astype(&random::normal(&shape, Dtype::Float32, 0.0, 1.0, None)?, dt)?;
      let fused = swiglu_compiled(&g, &u)?;
      let eager = swiglu_eager(&g, &u)?;
      assert_eq!(fused.shape(), shape);
      assert_eq!(fused.dtype(), dt);
      let a = ops::astype(&fused, Dtype::Float32)?.to_vec::<f32>()?;
      let b = ops::astype(&eager, Dtype::Float32)?.to_vec::<f32>()?;
      let tol = if dt == Dtype::Float32 { 1e-6 } else { 1e-2 };
      for (x, y) in a.iter().zip(&b) {
        assert!(
          (x - y).abs() <= tol * (1.0 + y.abs()),
          "{x} vs {y} ({dt:?})"
        );
      }
      assert!(a.iter().any(|x| *x != 0.0));
    }
    Ok(())
  }

  /// Training differentiates through the compiled SwiGLU (LoRA on
  /// gate/up): its gradients equal the eager expression's, called
  /// directly and inside a compiled outer step (as the trainer's).
  #[test]
  fn compiled_swiglu_gradients_match_eager() -> Result<()> {
    use mlxrs_core::closure::Closure;
    use mlxrs_core::transforms::{compile, value_and_grad};
    let g = random::normal(&[2, 3, 16], Dtype::Float32, 0.0, 2.0, None)?;
    let u = random::normal(&[2, 3, 16], Dtype::Float32, 0.0, 1.0, None)?;
    let w = random::normal(&[2, 3, 16], Dtype::Float32, 0.0, 1.0, None)?;
    let loss = |fused: bool, w: Array| {
      Closure::new(move |a: &[Array]| {
        let y = if fused {
          swiglu_compiled(&a[0], &a[1])?
        } else {
          swiglu_eager(&a[0], &a[1])?
        };
        Ok(vec![ops::sum(&ops::multiply(&y, &w)?, false)?])
      })
    };
    let grads = |f: &Closure| -> Result<Vec<Vec<f32>>> {
      let (_, mut gs) = value_and_grad(f, &[0, 1])?.call(&[g.clone(), u.clone()])?;
      gs.iter_mut().map(|a| a.to_vec::<f32>()).collect()
    };
    let want = grads(&loss(false, w.clone())?)?;
    for outer_compiled in [false, true] {
      let f = loss(true, w.clone())?;
      let f = if outer_compiled {
        compile(&f, false)?
      } else {
        f
      };
      let got = grads(&f)?;
      for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.iter().zip(b) {
          assert!(
            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
            "gradient {x} vs {y} (outer compiled: {outer_compiled})"
          );
        }
        assert!(a.iter().any(|x| *x != 0.0));
      }
    }
    Ok(())
  }
}
