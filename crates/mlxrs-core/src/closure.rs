//! [`Closure`]: a Rust function of arrays as an MLX function, the argument
//! and result of the [`transforms`](crate::transforms) (mlx-c `mlx_closure`,
//! C++ `std::function<std::vector<array>(const std::vector<array>&)>`;
//! python: any function of arrays passed to `mx.grad`, `mx.compile`, ...;
//! swift: `([MLXArray]) -> [MLXArray]`), and the typed closures of custom
//! transformations ([`CustomVjp`], [`CustomJvp`], [`CustomVmap`]).
//!
//! # Errors and panics
//!
//! A Rust function returning `Err` makes the C++ wrapper throw, so MLX
//! unwinds its own state (tracing flags, compile caches), and the call that
//! ran it ([`Closure::call`], a transform, `compile`, `export_function`)
//! returns that same error. A panic inside the Rust function is caught
//! (`catch_unwind`, never unwinding through C++) and returned as
//! [`Error::Mlx`] with the panic message; the process keeps working, and so
//! does the closure. (Built with `panic = "abort"`, a panic aborts, as
//! everywhere.)
//!
//! # Threads
//!
//! [`Closure`] is `Send`, not `Sync`, and its Rust function must be `Send`:
//! MLX keeps copies of a function inside transformed and compiled functions
//! and inside the graph nodes of custom functions ([`custom_vjp`],
//! [`checkpoint`]); those nodes belong to arrays, arrays are `Send`, so the
//! function may be called, and is dropped, on whichever thread ends up with
//! them. Calls of one function are serialized by a lock (a re-entrant call
//! from the thread already running it goes through), so it need not be
//! `Sync`: capturing [`Array`]s (`Send`, not `Sync`) is fine. `Rc` and other
//! non-`Send` state cannot be captured; use `Arc`.
//!
//! [`custom_vjp`]: crate::transforms::custom_vjp
//! [`checkpoint`]: crate::transforms::checkpoint

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CString, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use mlxrs_sys::{
  mlx_closure, mlx_closure_custom, mlx_closure_custom_jvp, mlx_closure_custom_vmap,
  mlx_closure_value_and_grad, mlx_vector_array, mlx_vector_int,
};

use crate::array::Array;
use crate::error::{Error, Result, last_error};
use crate::vector::VectorArray;

// ------------------------------------------------------------------ errors

thread_local! {
  /// The error a Rust callback on this thread returned last, until the C call
  /// that ran it reports its failure (so the caller gets the error itself,
  /// not just its message).
  static PENDING: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// [`check`](crate::error::check) for C calls that may run Rust callbacks: a
/// failure caused by a callback's `Err` returns that error unchanged.
pub(crate) fn check_call(rc: c_int) -> Result<()> {
  let pending = PENDING.with(|p| p.borrow_mut().take());
  if rc == 0 {
    return Ok(());
  }
  let msg = last_error();
  match pending {
    Some(e) if e.to_string() == msg => Err(e),
    _ => Err(Error::Mlx(msg)),
  }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
  if let Some(s) = p.downcast_ref::<&str>() {
    (*s).to_string()
  } else if let Some(s) = p.downcast_ref::<String>() {
    s.clone()
  } else {
    "(non-string panic payload)".to_string()
  }
}

/// The end of every callback: `0`, or record the error (for the C layer's
/// message and for [`check_call`]) and return `1`.
fn report(outcome: std::thread::Result<Result<()>>) -> c_int {
  let err = match outcome {
    Ok(Ok(())) => return 0,
    Ok(Err(e)) => e,
    Err(payload) => {
      let msg = panic_message(payload.as_ref());
      // A payload whose own drop panics: the second payload is leaked
      // rather than unwound here.
      if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
      }
      Error::Mlx(format!("a Rust closure panicked: {msg}"))
    }
  };
  let msg = err.to_string();
  let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
  // SAFETY: `c` is a NUL-terminated string alive for the call; the C layer
  // copies it.
  unsafe { mlxrs_sys::mlxrs_closure_set_error(c.as_ptr()) };
  PENDING.with(|p| *p.borrow_mut() = Some(err));
  1
}

/// Run a callback body: nothing unwinds out of it.
pub(crate) fn guarded(body: impl FnOnce() -> Result<()>) -> c_int {
  catch_unwind(AssertUnwindSafe(|| {
    report(catch_unwind(AssertUnwindSafe(body)))
  }))
  .unwrap_or(1)
}

// ------------------------------------------------------------------ payload

/// A unique token of the calling thread (the address of a thread-local).
fn thread_token() -> usize {
  thread_local! {
    static TOKEN: u8 = const { 0 };
  }
  TOKEN.with(|t| t as *const u8 as usize)
}

/// A Rust function owned by the C layer (through a closure's payload), with a
/// re-entrant lock serializing its calls across threads.
pub(crate) struct Payload<F> {
  f: F,
  lock: Mutex<()>,
  /// [`thread_token`] of the thread holding `lock`, 0 when none.
  owner: AtomicUsize,
}

impl<F> Payload<F> {
  fn new(f: F) -> Self {
    Payload {
      f,
      lock: Mutex::new(()),
      owner: AtomicUsize::new(0),
    }
  }

  pub(crate) fn with<R>(&self, g: impl FnOnce(&F) -> R) -> R {
    let me = thread_token();
    if self.owner.load(Ordering::Acquire) == me {
      // Re-entrant call from the thread running `f` (it holds the lock).
      return g(&self.f);
    }
    // A panic is caught inside the callback, but a poisoned lock is still
    // usable: `f` is only ever borrowed shared.
    let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
    struct Owner<'a>(&'a AtomicUsize);
    impl Drop for Owner<'_> {
      fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
      }
    }
    self.owner.store(me, Ordering::Release);
    let _owner = Owner(&self.owner);
    g(&self.f)
  }
}

/// Leak `f` as a C payload.
pub(crate) fn into_payload<F>(f: F) -> *mut c_void {
  Box::into_raw(Box::new(Payload::new(f))).cast()
}

/// The payload destructor given to the C layer.
pub(crate) unsafe extern "C" fn drop_payload<F>(p: *mut c_void) {
  // SAFETY: `p` came from `into_payload::<F>` and the C layer calls this
  // once, when the last copy of the closure is gone.
  let b = unsafe { Box::from_raw(p.cast::<Payload<F>>()) };
  // A panicking drop leaks the rest rather than unwinding into C++.
  let _ = catch_unwind(AssertUnwindSafe(move || drop(b)));
}

/// The payload of a callback, borrowed.
///
/// # Safety
/// `p` must come from `into_payload::<F>` and still be alive (the C layer
/// keeps it while any copy of the closure exists, which includes the call
/// running now).
pub(crate) unsafe fn payload<'a, F>(p: *mut c_void) -> &'a Payload<F> {
  // SAFETY: see the function's contract.
  unsafe { &*p.cast::<Payload<F>>() }
}

// ------------------------------------------------------------------ vectors

/// The arrays of a borrowed C vector (new references; the vector is not
/// freed).
pub(crate) fn arrays_of(v: mlx_vector_array) -> Result<Vec<Array>> {
  // SAFETY: `v` is a live vector handle for the call (NULL ctx yields 0).
  let n = unsafe { mlxrs_sys::mlx_vector_array_size(v) };
  let mut out = Vec::with_capacity(n);
  for i in 0..n {
    let mut a = Array::null();
    // SAFETY: `i < len`; the out-handle is owned by `a`.
    crate::error::check(unsafe { mlxrs_sys::mlx_vector_array_get(&mut a.0, v, i) })?;
    out.push(a);
  }
  Ok(out)
}

/// Store `arrays` in a callback's out-vector.
fn write_arrays(res: *mut mlx_vector_array, arrays: &[Array]) -> Result<()> {
  if res.is_null() {
    return Err(Error::InvalidArgument(
      "null out-vector in a closure callback".into(),
    ));
  }
  let v = VectorArray::from_arrays(arrays)?;
  // SAFETY: `res` points to the caller-owned out-handle; `v` is live; the
  // C layer copies the (refcounted) arrays.
  crate::error::check(unsafe { mlxrs_sys::mlx_vector_array_set(res, v.0) })
}

fn ints_of<'a>(p: *const i32, n: usize) -> &'a [i32] {
  if p.is_null() || n == 0 {
    &[]
  } else {
    // SAFETY: the C layer passes `n` ints it keeps alive during the call.
    unsafe { std::slice::from_raw_parts(p, n) }
  }
}

macro_rules! debug_handle {
  ($($t:ident),*) => {$(
    impl std::fmt::Debug for $t {
      fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(stringify!($t)).field("ctx", &self.0.ctx).finish()
      }
    }
  )*};
}
debug_handle!(Closure, ValueAndGrad, CustomVjp, CustomJvp, CustomVmap);

// ------------------------------------------------------------------ Closure

/// A function of arrays MLX can call, transform, compile and export (see
/// the [module docs](self) for errors, panics and threads).
///
/// `Clone` is cheap and shares the function (and, for transformed or
/// compiled closures, the compile cache).
pub struct Closure(pub(crate) mlx_closure);

// SAFETY: the handle owns a C++ std::function whose state is either MLX's
// own (transforms, compile, imports) or a `Payload<F>` with `F: Send`, whose
// calls are serialized by its lock; moving the handle to another thread is
// sound. Not `Sync` (like `Array`).
unsafe impl Send for Closure {}

impl Drop for Closure {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_free(self.0) };
  }
}

impl Clone for Closure {
  fn clone(&self) -> Self {
    let mut out = Closure(mlx_closure {
      ctx: std::ptr::null_mut(),
    });
    if !self.0.ctx.is_null() {
      // SAFETY: live source handle, fresh out-handle owned by `out`; only a
      // NULL source (excluded) or out-of-memory fails, leaving `out` empty.
      unsafe { mlxrs_sys::mlx_closure_set(&mut out.0, self.0) };
    }
    out
  }
}

unsafe extern "C" fn closure_call<F>(
  res: *mut mlx_vector_array,
  input: mlx_vector_array,
  p: *mut c_void,
) -> c_int
where
  F: Fn(&[Array]) -> Result<Vec<Array>> + Send + 'static,
{
  guarded(|| {
    // SAFETY: `p` is this closure's live `Payload<F>` (C-layer contract).
    let p = unsafe { payload::<F>(p) };
    let args = arrays_of(input)?;
    let out = p.with(|f| f(&args))?;
    write_arrays(res, &out)
  })
}

impl Closure {
  /// Wrap a Rust function of arrays (python: a function passed to
  /// `mx.grad` / `mx.compile` / ...; swift: a `([MLXArray]) -> [MLXArray]`
  /// closure). It may be called many times (once per trace for compiled
  /// functions), on any thread (see the module docs).
  pub fn new<F>(f: F) -> Result<Closure>
  where
    F: Fn(&[Array]) -> Result<Vec<Array>> + Send + 'static,
  {
    let p = into_payload(f);
    // SAFETY: the trampoline and destructor match the payload's type; the C
    // layer owns `p` from here (on failure it has already dropped it).
    let raw = unsafe {
      mlxrs_sys::mlx_closure_new_func_payload(Some(closure_call::<F>), p, Some(drop_payload::<F>))
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(Closure(raw))
  }

  /// Call the function (python `f(*args)`).
  pub fn call(&self, args: &[Array]) -> Result<Vec<Array>> {
    let input = VectorArray::from_arrays(args)?;
    let mut out = VectorArray::null();
    // SAFETY: live handles; the out-vector is owned by `out`.
    check_call(unsafe { mlxrs_sys::mlx_closure_apply(&mut out.0, self.0, input.0) })?;
    out.to_vec()
  }

  /// Take ownership of a raw handle.
  ///
  /// # Safety
  /// `raw` must be a valid, non-shared closure handle that nothing else
  /// frees, whose function is safe to call from any thread.
  pub unsafe fn from_raw(raw: mlx_closure) -> Closure {
    Closure(raw)
  }

  /// The raw handle, borrowed (still owned by `self`).
  pub fn as_raw(&self) -> mlx_closure {
    self.0
  }

  /// An empty out-handle.
  pub(crate) fn null() -> Closure {
    Closure(mlx_closure {
      ctx: std::ptr::null_mut(),
    })
  }
}

// ------------------------------------------------------------------ ClosureKwargs

/// A function of positional and keyword arrays (python: a function called
/// as `f(*args, **kwargs)`, as `mx.export_function` accepts; C++
/// `std::function<std::vector<array>(const Args&, const Kwargs&)>`; mlx-c
/// `mlx_closure_kwargs`). Errors, panics and threads as for [`Closure`].
pub struct ClosureKwargs(pub(crate) mlxrs_sys::mlx_closure_kwargs);

// SAFETY: as for `Closure`: MLX's own function (imports) or a `Payload<F>`
// with `F: Send`, calls serialized by its lock.
unsafe impl Send for ClosureKwargs {}

impl Drop for ClosureKwargs {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_kwargs_free(self.0) };
  }
}

impl Clone for ClosureKwargs {
  fn clone(&self) -> Self {
    let mut out = ClosureKwargs::null();
    if !self.0.ctx.is_null() {
      // SAFETY: live source handle, fresh out-handle owned by `out`.
      unsafe { mlxrs_sys::mlx_closure_kwargs_set(&mut out.0, self.0) };
    }
    out
  }
}

impl std::fmt::Debug for ClosureKwargs {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("ClosureKwargs")
      .field("ctx", &self.0.ctx)
      .finish()
  }
}

/// Keyword arrays by name.
pub type Kwargs = std::collections::HashMap<String, Array>;

unsafe extern "C" fn closure_kwargs_call<F>(
  res: *mut mlx_vector_array,
  args: mlx_vector_array,
  kwargs: mlxrs_sys::mlx_map_string_to_array,
  p: *mut c_void,
) -> c_int
where
  F: Fn(&[Array], &Kwargs) -> Result<Vec<Array>> + Send + 'static,
{
  guarded(|| {
    // SAFETY: `p` is this closure's live `Payload<F>` (C-layer contract).
    let p = unsafe { payload::<F>(p) };
    let args = arrays_of(args)?;
    let kwargs = crate::io::map_entries_raw(kwargs, 4)?;
    let out = p.with(|f| f(&args, &kwargs))?;
    write_arrays(res, &out)
  })
}

impl ClosureKwargs {
  /// Wrap a Rust function of positional and keyword arrays.
  pub fn new<F>(f: F) -> Result<ClosureKwargs>
  where
    F: Fn(&[Array], &Kwargs) -> Result<Vec<Array>> + Send + 'static,
  {
    let p = into_payload(f);
    // SAFETY: the trampoline and destructor match the payload's type; the C
    // layer owns `p` from here (on failure it has already dropped it).
    let raw = unsafe {
      mlxrs_sys::mlx_closure_kwargs_new_func_payload(
        Some(closure_kwargs_call::<F>),
        p,
        Some(drop_payload::<F>),
      )
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(ClosureKwargs(raw))
  }

  /// Call the function (python `f(*args, **kwargs)`).
  pub fn call(&self, args: &[Array], kwargs: &Kwargs) -> Result<Vec<Array>> {
    let input = VectorArray::from_arrays(args)?;
    let map = crate::io::c_array_map(kwargs)?;
    let mut out = VectorArray::null();
    // SAFETY: live handles; the out-vector is owned by `out`.
    check_call(unsafe { mlxrs_sys::mlx_closure_kwargs_apply(&mut out.0, self.0, input.0, map.0) })?;
    out.to_vec()
  }

  /// An empty out-handle.
  pub(crate) fn null() -> ClosureKwargs {
    ClosureKwargs(mlxrs_sys::mlx_closure_kwargs {
      ctx: std::ptr::null_mut(),
    })
  }
}

// ------------------------------------------------------------------ ValueAndGrad

/// The result of [`value_and_grad`](crate::transforms::value_and_grad):
/// inputs -> (outputs of the function, gradients of its first output with
/// respect to the chosen inputs). Python: the function `mx.value_and_grad`
/// returns; swift: `valueAndGrad`'s result.
pub struct ValueAndGrad(pub(crate) mlx_closure_value_and_grad);

// SAFETY: as for `Closure`: MLX's own closure over a `Closure`'s function.
unsafe impl Send for ValueAndGrad {}

impl Drop for ValueAndGrad {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_value_and_grad_free(self.0) };
  }
}

impl ValueAndGrad {
  /// `(values, gradients)` at `args`: all outputs of the function, and one
  /// gradient per `argnums` entry (in increasing argument order).
  pub fn call(&self, args: &[Array]) -> Result<(Vec<Array>, Vec<Array>)> {
    let input = VectorArray::from_arrays(args)?;
    let mut values = VectorArray::null();
    let mut grads = VectorArray::null();
    // SAFETY: live handles; out-vectors owned by `values` / `grads`.
    check_call(unsafe {
      mlxrs_sys::mlx_closure_value_and_grad_apply(&mut values.0, &mut grads.0, self.0, input.0)
    })?;
    Ok((values.to_vec()?, grads.to_vec()?))
  }
}

// ------------------------------------------------------------------ custom

/// A custom vector-Jacobian product: `(primals, cotangents, outputs) -> one
/// cotangent per primal`. Python: the function decorated with
/// `@f.vjp` of an `mx.custom_function`.
pub struct CustomVjp(pub(crate) mlx_closure_custom);

// SAFETY: as for `Closure` (`F: Send`, calls serialized).
unsafe impl Send for CustomVjp {}

impl Drop for CustomVjp {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_custom_free(self.0) };
  }
}

unsafe extern "C" fn custom_vjp_call<F>(
  res: *mut mlx_vector_array,
  primals: mlx_vector_array,
  cotangents: mlx_vector_array,
  outputs: mlx_vector_array,
  p: *mut c_void,
) -> c_int
where
  F: Fn(&[Array], &[Array], &[Array]) -> Result<Vec<Array>> + Send + 'static,
{
  guarded(|| {
    // SAFETY: `p` is this closure's live `Payload<F>` (C-layer contract).
    let p = unsafe { payload::<F>(p) };
    let (a, b, c) = (
      arrays_of(primals)?,
      arrays_of(cotangents)?,
      arrays_of(outputs)?,
    );
    let out = p.with(|f| f(&a, &b, &c))?;
    write_arrays(res, &out)
  })
}

impl CustomVjp {
  /// Wrap `f(primals, cotangents, outputs)`, which returns one cotangent per
  /// primal (shaped like it).
  pub fn new<F>(f: F) -> Result<CustomVjp>
  where
    F: Fn(&[Array], &[Array], &[Array]) -> Result<Vec<Array>> + Send + 'static,
  {
    let p = into_payload(f);
    // SAFETY: trampoline and destructor match the payload's type; the C
    // layer owns `p` from here (on failure it has already dropped it).
    let raw = unsafe {
      mlxrs_sys::mlx_closure_custom_new_func_payload(
        Some(custom_vjp_call::<F>),
        p,
        Some(drop_payload::<F>),
      )
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(CustomVjp(raw))
  }
}

/// A custom Jacobian-vector product: `(primals, tangents, argnums) -> one
/// tangent per output`, where `tangents[i]` is the tangent of
/// `primals[argnums[i]]` (the other primals have none). Python: `@f.jvp` of
/// an `mx.custom_function`.
pub struct CustomJvp(pub(crate) mlx_closure_custom_jvp);

// SAFETY: as for `Closure` (`F: Send`, calls serialized).
unsafe impl Send for CustomJvp {}

impl Drop for CustomJvp {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_custom_jvp_free(self.0) };
  }
}

unsafe extern "C" fn custom_jvp_call<F>(
  res: *mut mlx_vector_array,
  primals: mlx_vector_array,
  tangents: mlx_vector_array,
  argnums: *const i32,
  argnums_num: usize,
  p: *mut c_void,
) -> c_int
where
  F: Fn(&[Array], &[Array], &[i32]) -> Result<Vec<Array>> + Send + 'static,
{
  guarded(|| {
    // SAFETY: `p` is this closure's live `Payload<F>` (C-layer contract).
    let p = unsafe { payload::<F>(p) };
    let (a, b) = (arrays_of(primals)?, arrays_of(tangents)?);
    let n = ints_of(argnums, argnums_num);
    let out = p.with(|f| f(&a, &b, n))?;
    write_arrays(res, &out)
  })
}

impl CustomJvp {
  /// Wrap `f(primals, tangents, argnums)`.
  pub fn new<F>(f: F) -> Result<CustomJvp>
  where
    F: Fn(&[Array], &[Array], &[i32]) -> Result<Vec<Array>> + Send + 'static,
  {
    let p = into_payload(f);
    // SAFETY: trampoline and destructor match the payload's type; the C
    // layer owns `p` from here (on failure it has already dropped it).
    let raw = unsafe {
      mlxrs_sys::mlx_closure_custom_jvp_new_func_payload(
        Some(custom_jvp_call::<F>),
        p,
        Some(drop_payload::<F>),
      )
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(CustomJvp(raw))
  }
}

/// A custom vectorization: `(inputs, in_axes) -> (outputs, out_axes)`, where
/// an in axis of `-1` marks an input that is not mapped. Python: `@f.vmap`
/// of an `mx.custom_function`.
pub struct CustomVmap(pub(crate) mlx_closure_custom_vmap);

// SAFETY: as for `Closure` (`F: Send`, calls serialized).
unsafe impl Send for CustomVmap {}

impl Drop for CustomVmap {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_closure_custom_vmap_free(self.0) };
  }
}

unsafe extern "C" fn custom_vmap_call<F>(
  res_0: *mut mlx_vector_array,
  res_1: *mut mlx_vector_int,
  inputs: mlx_vector_array,
  axes: *const i32,
  axes_num: usize,
  p: *mut c_void,
) -> c_int
where
  F: Fn(&[Array], &[i32]) -> Result<(Vec<Array>, Vec<i32>)> + Send + 'static,
{
  guarded(|| {
    // SAFETY: `p` is this closure's live `Payload<F>` (C-layer contract).
    let p = unsafe { payload::<F>(p) };
    let a = arrays_of(inputs)?;
    let (out, out_axes) = p.with(|f| f(&a, ints_of(axes, axes_num)))?;
    write_arrays(res_0, &out)?;
    if res_1.is_null() {
      return Err(Error::InvalidArgument(
        "null out-vector in a closure callback".into(),
      ));
    }
    // SAFETY: `res_1` points to the caller-owned out-handle; the slice is
    // live for the call and copied.
    crate::error::check(unsafe {
      mlxrs_sys::mlx_vector_int_set_data(res_1, out_axes.as_ptr(), out_axes.len())
    })
  })
}

impl CustomVmap {
  /// Wrap `f(inputs, in_axes) -> (outputs, out_axes)`.
  pub fn new<F>(f: F) -> Result<CustomVmap>
  where
    F: Fn(&[Array], &[i32]) -> Result<(Vec<Array>, Vec<i32>)> + Send + 'static,
  {
    let p = into_payload(f);
    // SAFETY: trampoline and destructor match the payload's type; the C
    // layer owns `p` from here (on failure it has already dropped it).
    let raw = unsafe {
      mlxrs_sys::mlx_closure_custom_vmap_new_func_payload(
        Some(custom_vmap_call::<F>),
        p,
        Some(drop_payload::<F>),
      )
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(CustomVmap(raw))
  }
}
