//! Graph evaluation and function transformations: python `mx.eval`,
//! `mx.async_eval`, `mx.grad`, `mx.value_and_grad`, `mx.vjp`, `mx.jvp`,
//! `mx.vmap`, `mx.compile`, `mx.checkpoint`, `mx.custom_function`; swift
//! `eval`, `asyncEval`, `grad`, `valueAndGrad`, `vjp`, `jvp`, `vmap`,
//! `compile`.
//!
//! Functions are [`Closure`]s (Rust `Fn(&[Array]) -> Result<Vec<Array>>`);
//! every transform returns a new closure, which can be transformed again
//! (`grad(&grad(&f, &[0])?, &[0])?` is a second derivative). Errors and
//! panics of the Rust functions come back as `Err` from the call that ran
//! them (see [`crate::closure`] for this and for threads).
//!
//! Transforms run the function while building the graph (tracing), on the
//! calling thread; nothing is computed until the results are evaluated.
//! MLX keeps its tracing state per thread, and its compile cache behind a
//! lock; swift additionally serializes all transforms under one global
//! lock, python under the GIL. Running transforms of the *same* closure
//! from several threads at once is not something MLX documents.

use crate::array::Array;
use crate::error::{Result, check};
use crate::vector::VectorArray;

use crate::closure::check_call;
pub use crate::closure::{Closure, CustomJvp, CustomVjp, CustomVmap, ValueAndGrad};

/// Evaluate all `arrays` together (shared subgraphs computed once).
pub fn eval(arrays: &[Array]) -> Result<()> {
  let v = VectorArray::from_arrays(arrays)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live owned vector handle.
  check(unsafe { mlxrs_sys::mlx_eval(v.0) })
}

/// Schedule evaluation of `arrays` and return at once; a later read or
/// [`eval`] waits for it.
pub fn async_eval(arrays: &[Array]) -> Result<()> {
  let v = VectorArray::from_arrays(arrays)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live owned vector handle.
  check(unsafe { mlxrs_sys::mlx_async_eval(v.0) })
}

// ------------------------------------------------------------------ autodiff

/// The outputs of `f` at `primals` and the vector-Jacobian products of the
/// `cotangents` (one per output, shaped like it) with `f`'s Jacobian: one
/// array per primal. Python `mx.vjp(f, primals, cotangents)`, swift
/// `vjp(_:primals:cotangents:)`.
pub fn vjp(
  f: &Closure,
  primals: &[Array],
  cotangents: &[Array],
) -> Result<(Vec<Array>, Vec<Array>)> {
  let p = VectorArray::from_arrays(primals)?;
  let c = VectorArray::from_arrays(cotangents)?;
  let (mut outs, mut vjps) = (VectorArray::null(), VectorArray::null());
  // SAFETY: live handles; out-vectors owned by `outs` / `vjps`.
  check_call(unsafe { mlxrs_sys::mlx_vjp(&mut outs.0, &mut vjps.0, f.0, p.0, c.0) })?;
  Ok((outs.to_vec()?, vjps.to_vec()?))
}

/// The outputs of `f` at `primals` and the Jacobian-vector products of `f`'s
/// Jacobian with the `tangents` (one per primal, shaped like it): one array
/// per output. Python `mx.jvp(f, primals, tangents)`, swift
/// `jvp(_:primals:tangents:)`.
pub fn jvp(f: &Closure, primals: &[Array], tangents: &[Array]) -> Result<(Vec<Array>, Vec<Array>)> {
  let p = VectorArray::from_arrays(primals)?;
  let t = VectorArray::from_arrays(tangents)?;
  let (mut outs, mut jvps) = (VectorArray::null(), VectorArray::null());
  // SAFETY: live handles; out-vectors owned by `outs` / `jvps`.
  check_call(unsafe { mlxrs_sys::mlx_jvp(&mut outs.0, &mut jvps.0, f.0, p.0, t.0) })?;
  Ok((outs.to_vec()?, jvps.to_vec()?))
}

/// A function computing `f`'s outputs and the gradients of its first output
/// (a scalar: the loss) with respect to the inputs numbered `argnums`
/// (negative numbers count from the end). Python
/// `mx.value_and_grad(f, argnums)`, swift `valueAndGrad(_:argumentNumbers:)`.
///
/// An empty `argnums` is an error here; numbers out of range or repeated
/// are errors of the call (the number of inputs is known only then).
pub fn value_and_grad(f: &Closure, argnums: &[i32]) -> Result<ValueAndGrad> {
  let mut res = ValueAndGrad(mlxrs_sys::mlx_closure_value_and_grad {
    ctx: std::ptr::null_mut(),
  });
  // SAFETY: live closure; the slice outlives the call; out-handle owned by
  // `res`.
  check_call(unsafe {
    mlxrs_sys::mlx_value_and_grad(&mut res.0, f.0, argnums.as_ptr(), argnums.len())
  })?;
  Ok(res)
}

/// A function computing the gradients of `f`'s first output (a scalar) with
/// respect to the inputs numbered `argnums`: one array per entry, in
/// increasing argument order. Python `mx.grad(f, argnums)`, swift
/// `grad(_:argumentNumbers:)`.
pub fn grad(f: &Closure, argnums: &[i32]) -> Result<Closure> {
  let vg = value_and_grad(f, argnums)?;
  Closure::new(move |args: &[Array]| vg.call(args).map(|(_, grads)| grads))
}

// ------------------------------------------------------------------ vmap

/// `f` vectorized over one axis of its inputs: `in_axes[i]` is the mapped
/// axis of input `i` (`-1`: not mapped, python `None`; empty: all `0`), and
/// `out_axes[j]` where output `j` gets that axis (empty: all `0`). Python
/// `mx.vmap(f, in_axes, out_axes)`, swift `vmap`.
pub fn vmap(f: &Closure, in_axes: &[i32], out_axes: &[i32]) -> Result<Closure> {
  let mut res = Closure::null();
  // SAFETY: live closure; slices outlive the call; out-handle owned by `res`.
  check_call(unsafe {
    mlxrs_sys::mlx_vmap(
      &mut res.0,
      f.0,
      in_axes.as_ptr(),
      in_axes.len(),
      out_axes.as_ptr(),
      out_axes.len(),
    )
  })?;
  Ok(res)
}

// ------------------------------------------------------------------ compile

/// `f`, compiled: the first call with a new input signature runs `f` once
/// on placeholder inputs to record its graph (tracing), which MLX then
/// simplifies and fuses into fewer kernels; later calls with the same
/// signature replay that graph without running `f`. Python
/// `mx.compile(f, shapeless=...)`, swift `compile(inputs:outputs:shapeless:_:)`.
///
/// The signature is the inputs' dtypes and shapes, or only their dtypes and
/// ranks when `shapeless` (one trace serves every shape; `f` must then not
/// bake shapes into the graph, e.g. reshape to sizes read from an input).
///
/// - Arrays `f` captures (weights) are constants of the trace: their values
///   at trace time are used by every later call. Pass anything that changes
///   between calls as an input.
/// - Rust side effects of `f` happen only while tracing.
/// - Dropping every copy of the compiled closure frees its cache entries.
///
/// # A decode step
///
/// A step of autoregressive decoding takes arrays and returns arrays, and
/// runs once per token with the same shapes, which is the case compile is
/// for. Capture the weights, pass the token (and a fixed-size state) as
/// inputs, return the new state with the output:
///
/// ```no_run
/// # use mlxrs_core::{Array, Dtype, Result, ops, transforms};
/// # fn main() -> Result<()> {
/// let w = Array::ones(&[64, 64], Dtype::Float32)?; // captured: a constant
/// let step = transforms::compile_fn(
///   move |args: &[Array]| {
///     let (x, h) = (&args[0], &args[1]);
///     let h = ops::tanh(&(&ops::matmul(x, &w)? + h)?)?;
///     Ok(vec![h.clone(), h])
///   },
///   false,
/// )?;
/// let mut state = Array::zeros(&[1, 64], Dtype::Float32)?;
/// let x = Array::ones(&[1, 64], Dtype::Float32)?;
/// for _ in 0..8 {
///   let mut out = step.call(&[x.clone(), state])?; // traced once, replayed after
///   state = out.pop().unwrap();
///   transforms::eval(&[state.clone()])?;
/// }
/// # Ok(())
/// # }
/// ```
///
/// A state that grows every step (a KV cache concatenated each token)
/// changes the signature every call: either preallocate it and write with
/// [`ops::slice_update_dynamic`](crate::ops::slice_update_dynamic) at an
/// offset passed as an input array, or use `shapeless` when the step has no
/// shape-dependent ops. `MLX_DISABLE_COMPILE=1` or
/// [`disable_compile`] turns compilation off globally (the closure then
/// just calls `f`).
pub fn compile(f: &Closure, shapeless: bool) -> Result<Closure> {
  let mut res = Closure::null();
  // SAFETY: live closure; out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_compile(&mut res.0, f.0, shapeless) })?;
  Ok(res)
}

/// [`compile`] of a Rust function: `compile(&Closure::new(f)?, shapeless)`.
/// The usual way to compile a model step (see [`compile`]).
pub fn compile_fn<F>(f: F, shapeless: bool) -> Result<Closure>
where
  F: Fn(&[Array]) -> Result<Vec<Array>> + Send + 'static,
{
  compile(&Closure::new(f)?, shapeless)
}

/// How much of compilation MLX performs (python / C++ `CompileMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileMode {
  /// No compilation: compiled functions just call the function.
  Disabled,
  /// Trace and fuse, without the graph simplification passes.
  NoSimplify,
  /// Trace and simplify, without kernel fusion.
  NoFuse,
  /// Everything (the default).
  Enabled,
}

/// Turn compilation off globally (python `mx.disable_compile()`, swift
/// `compile(enable: false)`); affects closures compiled later.
pub fn disable_compile() -> Result<()> {
  // SAFETY: no arguments.
  check(unsafe { mlxrs_sys::mlx_disable_compile() })
}

/// Turn compilation back on globally, overriding `MLX_DISABLE_COMPILE`
/// (python `mx.enable_compile()`, swift `compile(enable: true)`).
pub fn enable_compile() -> Result<()> {
  // SAFETY: no arguments.
  check(unsafe { mlxrs_sys::mlx_enable_compile() })
}

/// Set the global [`CompileMode`] (C++ `set_compile_mode`).
pub fn set_compile_mode(mode: CompileMode) -> Result<()> {
  use mlxrs_sys::mlx_compile_mode as M;
  let m = match mode {
    CompileMode::Disabled => M::MLX_COMPILE_MODE_DISABLED,
    CompileMode::NoSimplify => M::MLX_COMPILE_MODE_NO_SIMPLIFY,
    CompileMode::NoFuse => M::MLX_COMPILE_MODE_NO_FUSE,
    CompileMode::Enabled => M::MLX_COMPILE_MODE_ENABLED,
  };
  // SAFETY: a valid enum value.
  check(unsafe { mlxrs_sys::mlx_set_compile_mode(m) })
}

// ------------------------------------------------------------------ custom

/// `f`, recomputing its intermediate arrays in the backward pass instead of
/// keeping them alive from the forward pass (less memory, more compute).
/// Gradients are unchanged. Python `mx.checkpoint(f)` (and `nn.checkpoint`).
pub fn checkpoint(f: &Closure) -> Result<Closure> {
  let mut res = Closure::null();
  // SAFETY: live closure; out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_checkpoint(&mut res.0, f.0) })?;
  Ok(res)
}

/// `f` with its vector-Jacobian product replaced by
/// `vjp(primals, cotangents, outputs)`, which returns one cotangent per
/// primal: gradients through the result use it instead of differentiating
/// `f`. Python `mx.custom_function` + `@f.vjp`, swift
/// `CustomFunction { Forward; VJP }`.
pub fn custom_vjp<V>(f: &Closure, vjp: V) -> Result<Closure>
where
  V: Fn(&[Array], &[Array], &[Array]) -> Result<Vec<Array>> + Send + 'static,
{
  let vjp = CustomVjp::new(vjp)?;
  let mut res = Closure::null();
  // SAFETY: live handles borrowed for the call (the C layer copies them);
  // out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_custom_vjp(&mut res.0, f.0, vjp.0) })?;
  Ok(res)
}

/// `f` with any of its vjp, jvp and vmap replaced (`None`: derived from `f`
/// as usual; all `None`: `f` itself). Python `mx.custom_function` with `@f.vjp`, `@f.jvp`,
/// `@f.vmap`.
///
/// `f` must return at least one array; with a custom jvp or vmap it must
/// return the same number of arrays on every call. The custom functions'
/// results are checked: one cotangent per primal (vjp), one tangent per
/// output (jvp), one array and one axis per output (vmap).
pub fn custom_function(
  f: &Closure,
  vjp: Option<&CustomVjp>,
  jvp: Option<&CustomJvp>,
  vmap: Option<&CustomVmap>,
) -> Result<Closure> {
  let null = std::ptr::null_mut();
  let v = vjp.map_or(mlxrs_sys::mlx_closure_custom { ctx: null }, |c| c.0);
  let j = jvp.map_or(mlxrs_sys::mlx_closure_custom_jvp { ctx: null }, |c| c.0);
  let m = vmap.map_or(mlxrs_sys::mlx_closure_custom_vmap { ctx: null }, |c| c.0);
  let mut res = Closure::null();
  // SAFETY: live (or NULL-ctx, meaning absent) handles borrowed for the
  // call (the C layer copies them); out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_custom_function(&mut res.0, f.0, v, j, m) })?;
  Ok(res)
}
