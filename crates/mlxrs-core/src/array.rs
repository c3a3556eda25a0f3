//! [`Array`]: an RAII handle to an MLX array (python `mx.array`, swift
//! `MLXArray`). Arrays are lazy: ops append to a graph and nothing is computed
//! until [`Array::eval`] (or a read such as [`Array::to_vec`]) runs it.

use std::ffi::CStr;

use mlxrs_sys::mlx_array;

use crate::dtype::{ArrayElement, Dtype};
use crate::error::{Error, Result, check};

/// An N-dimensional MLX array.
///
/// - `Clone` is cheap: it shares the same underlying array (MLX refcount),
///   as assigning a python `mx.array` to a second name does.
/// - `Send`: a handle can move to another thread. An *evaluated* array can
///   be read and used in new ops there. A *lazy* one stays tied to the
///   thread whose stream its ops were recorded on (MLX >= 0.31): evaluating
///   it on another thread is an error ("There is no Stream(...) in current
///   thread"), so evaluate before sending.
/// - Clones share one graph node, so clones sent to several threads can be
///   evaluated at once: every evaluating call (`eval`, `async_eval`, reads,
///   saves, exports) holds one process-wide lock for its duration, so such
///   evaluations run one after the other and never see the graph
///   half-rewritten (MLX's `eval` is not thread-safe; mlx-swift locks the
///   same way). Graph building takes no lock. `docs/threading.md`.
/// - Not `Sync`: shared references must not cross threads (share a clone).
pub struct Array(pub(crate) mlx_array);

// SAFETY: an `Array` exclusively owns one heap `mlx::core::array` handle (a
// shared_ptr to the graph node). Moving that handle to another thread is
// sound; MLX's reference counts are atomic. Clones sharing one node may be
// evaluated from several threads: every evaluating call is serialized by
// `crate::eval_lock`. `Sync` is deliberately not implemented (see the type
// docs).
unsafe impl Send for Array {}

impl Drop for Array {
  fn drop(&mut self) {
    // SAFETY: `self.0` was created by `mlx_array_new*` / an op out-param and
    // is owned by this value; `mlx_array_free` accepts a NULL ctx.
    unsafe { mlxrs_sys::mlx_array_free(self.0) };
  }
}

impl Clone for Array {
  fn clone(&self) -> Self {
    let mut out = Array::null();
    if !self.0.ctx.is_null() {
      // SAFETY: `self.0` is a live non-null handle; `out.0` is a fresh empty
      // out-handle owned by `out`. `mlx_array_set` only fails for a NULL
      // source, excluded above.
      unsafe { mlxrs_sys::mlx_array_set(&mut out.0, self.0) };
    }
    out
  }
}

/// A shape argument: `&(1, 2, 3)`, `&[1, 2, 3]`, `&vec![..]`, `&()` (a
/// scalar). Dimensions are `i32`, as in MLX.
pub trait ShapeLike {
  /// The dimensions.
  fn dims(&self) -> Vec<i32>;
}

impl ShapeLike for () {
  fn dims(&self) -> Vec<i32> {
    Vec::new()
  }
}
impl ShapeLike for [i32] {
  fn dims(&self) -> Vec<i32> {
    self.to_vec()
  }
}
impl<const N: usize> ShapeLike for [i32; N] {
  fn dims(&self) -> Vec<i32> {
    self.to_vec()
  }
}
impl ShapeLike for Vec<i32> {
  fn dims(&self) -> Vec<i32> {
    self.clone()
  }
}
impl ShapeLike for &[i32] {
  fn dims(&self) -> Vec<i32> {
    self.to_vec()
  }
}

macro_rules! tuple_shape {
  ($($n:ident),+) => {
    impl ShapeLike for ($(tuple_shape!(@ty $n),)+) {
      fn dims(&self) -> Vec<i32> {
        let ($($n,)+) = *self;
        vec![$($n),+]
      }
    }
  };
  (@ty $n:ident) => { i32 };
}
tuple_shape!(a);
tuple_shape!(a, b);
tuple_shape!(a, b, c);
tuple_shape!(a, b, c, d);
tuple_shape!(a, b, c, d, e);
tuple_shape!(a, b, c, d, e, f);

/// Number of elements of `dims`, or an error for negative / overflowing dims.
pub(crate) fn checked_numel(dims: &[i32]) -> Result<usize> {
  let mut n: usize = 1;
  for &d in dims {
    if d < 0 {
      return Err(Error::InvalidArgument(format!(
        "negative dimension {d} in shape {dims:?}"
      )));
    }
    n = n
      .checked_mul(d as usize)
      .ok_or_else(|| Error::InvalidArgument(format!("shape {dims:?} overflows usize")))?;
  }
  Ok(n)
}

impl Array {
  /// An empty handle (no array). Used as an op out-parameter and as the
  /// "absent" value of optional array arguments.
  pub(crate) fn null() -> Array {
    // SAFETY: `mlx_array_new` returns a NULL-ctx handle; no allocation.
    Array(unsafe { mlxrs_sys::mlx_array_new() })
  }

  /// Take ownership of a raw handle (e.g. from `mlxrs-sys`).
  ///
  /// # Safety
  /// `raw` must be a valid handle that nothing else frees.
  pub unsafe fn from_raw(raw: mlx_array) -> Array {
    Array(raw)
  }

  /// The raw handle, borrowed (still owned by `self`).
  pub fn as_raw(&self) -> mlx_array {
    self.0
  }

  /// Whether this is an empty handle (no array), e.g. a default-constructed
  /// optional output.
  pub fn is_null(&self) -> bool {
    self.0.ctx.is_null()
  }

  fn ensure(&self) -> Result<()> {
    if self.is_null() {
      Err(Error::InvalidArgument("empty array handle".into()))
    } else {
      Ok(())
    }
  }

  /// A new array copying `data`, row-major, with `shape`. Python:
  /// `mx.array(np_data.reshape(shape))`; swift: `MLXArray(data, shape)`.
  /// Errors if `data.len()` is not the product of `shape`.
  pub fn from_slice<T: ArrayElement>(
    data: &[T],
    shape: &(impl ShapeLike + ?Sized),
  ) -> Result<Array> {
    let dims = shape.dims();
    let n = checked_numel(&dims)?;
    if n != data.len() {
      return Err(Error::InvalidArgument(format!(
        "data has {} elements but shape {dims:?} needs {n}",
        data.len()
      )));
    }
    let mut out = Array::null();
    // SAFETY: `data` holds `n` initialised `T`s whose layout is the dtype's
    // (`ArrayElement` is sealed to exactly such types); `dims` lives across
    // the call; the C layer copies the data and writes the owned out-handle.
    check(unsafe {
      mlxrs_sys::mlxrs_array_new_data(
        &mut out.0,
        data.as_ptr().cast(),
        dims.as_ptr(),
        dims.len() as i32,
        T::DTYPE.to_raw(),
      )
    })?;
    Ok(out)
  }

  /// A 0-d array holding `value`. Python: `mx.array(value)`.
  pub fn scalar<T: ArrayElement>(value: T) -> Array {
    // A 1-element, 0-d construction cannot fail except on allocation
    // failure, which MLX reports by throwing: surface that as an empty
    // handle rather than a panic.
    Array::from_slice(&[value], &()).unwrap_or_else(|_| Array::null())
  }

  /// A 0-d array of `dtype` holding `value` cast by MLX (e.g. an `f64`
  /// literal as a `bf16` scalar). Python: `mx.array(value, dtype=dtype)`.
  pub fn scalar_as(value: f64, dtype: Dtype) -> Result<Array> {
    let mut out = Array::null();
    // SAFETY: plain value arguments; the out-handle is owned by `out`.
    check(unsafe { mlxrs_sys::mlxrs_array_new_scalar(&mut out.0, value, dtype.to_raw()) })?;
    Ok(out)
  }

  /// The dimensions (python `a.shape`).
  pub fn shape(&self) -> Vec<i32> {
    if self.is_null() {
      return Vec::new();
    }
    // SAFETY: the handle is live and non-null; the returned pointer refers
    // to `ndim` ints owned by the array, copied out before `self` can change.
    unsafe {
      let nd = mlxrs_sys::mlx_array_ndim(self.0);
      let p = mlxrs_sys::mlx_array_shape(self.0);
      if nd == 0 || p.is_null() {
        Vec::new()
      } else {
        std::slice::from_raw_parts(p, nd).to_vec()
      }
    }
  }

  /// Size of dimension `axis` (negative counts from the end), or `None` if
  /// out of range. Python: `a.shape[axis]`.
  pub fn dim(&self, axis: i32) -> Option<i32> {
    let s = self.shape();
    let nd = s.len() as i32;
    let a = if axis < 0 { axis + nd } else { axis };
    (0..nd).contains(&a).then(|| s[a as usize])
  }

  /// Number of dimensions (python `a.ndim`).
  pub fn ndim(&self) -> usize {
    // SAFETY: a query on a live handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlx_array_ndim(self.0) }
  }

  /// Number of elements (python `a.size`).
  pub fn size(&self) -> usize {
    // SAFETY: a query on a live handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlx_array_size(self.0) }
  }

  /// Bytes of the elements (python `a.nbytes`).
  pub fn nbytes(&self) -> usize {
    // SAFETY: a query on a live handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlx_array_nbytes(self.0) }
  }

  /// Bytes per element (python `a.itemsize`).
  pub fn itemsize(&self) -> usize {
    // SAFETY: a query on a live handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlx_array_itemsize(self.0) }
  }

  /// The element type (python `a.dtype`).
  pub fn dtype(&self) -> Dtype {
    // SAFETY: a query on a live handle.
    Dtype::from_raw(unsafe { mlxrs_sys::mlx_array_dtype(self.0) })
  }

  /// The identity of the array's graph node, shared by every clone of
  /// this handle (C++ `array::id()`; python compares `a is b`). Two arrays
  /// alive at the same time have the same id only if they are the same
  /// array; an id may be reused once every handle to it is dropped.
  pub fn id(&self) -> usize {
    // SAFETY: a query on a live handle (NULL ctx yields 0).
    unsafe { mlxrs_sys::mlxrs_array_id(self.0) }
  }

  /// Whether a function transformation in progress (grad, vjp, vmap,
  /// compile) traces this array (C++ `array::is_tracer()`; python has no
  /// public twin); `false` for a null handle.
  pub fn is_tracer(&self) -> bool {
    // SAFETY: a query on a live handle (NULL ctx yields false).
    unsafe { mlxrs_sys::mlxrs_array_is_tracer(self.0) }
  }

  /// Compute this array (python `mx.eval(a)`, swift `a.eval()`). Takes
  /// `&mut self`: evaluation replaces the graph node's inputs with data.
  pub fn eval(&mut self) -> Result<()> {
    self.ensure()?;
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live non-null handle; failures come back as a return code.
    check(unsafe { mlxrs_sys::mlx_array_eval(self.0) })
  }

  /// Start computing this array without waiting (python `mx.async_eval`).
  pub fn async_eval(&mut self) -> Result<()> {
    crate::transforms::async_eval(std::slice::from_ref(self))
  }

  /// Evaluate and copy the elements out, row-major (python `a.tolist()` /
  /// `np.array(a).ravel()`, swift `a.asArray(T.self)`). `T` must be the
  /// array's dtype: a mismatch is [`Error::DtypeMismatch`], never a
  /// reinterpretation. Strided / broadcast views are made contiguous first.
  pub fn to_vec<T: ArrayElement>(&mut self) -> Result<Vec<T>> {
    let mut out = self.host_buffer::<T>()?;
    let n = out.len();
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: `out` holds exactly `n` elements of `T`, whose size is the
    // dtype's, so it spans `nbytes` bytes; the C layer evaluates, checks the
    // byte count and copies row-major data of this dtype into it.
    check(unsafe {
      mlxrs_sys::mlxrs_array_copy_data(
        out.as_mut_ptr().cast(),
        n * std::mem::size_of::<T>(),
        self.0,
      )
    })?;
    Ok(out)
  }

  /// A zeroed host buffer for this array's elements as `T`, which must be
  /// its dtype ([`Error::DtypeMismatch`] otherwise).
  fn host_buffer<T: ArrayElement>(&self) -> Result<Vec<T>> {
    self.ensure()?;
    let actual = self.dtype();
    if actual != T::DTYPE {
      return Err(Error::DtypeMismatch {
        actual,
        requested: T::DTYPE,
      });
    }
    Ok(vec![T::default(); self.size()])
  }

  /// [`Array::to_vec`] for an array that an evaluation has already queued
  /// ([`crate::async_eval`] returned, possibly on another thread): waits for
  /// it and copies it out without evaluating anything and without the
  /// process-wide evaluation lock. An array that is still unscheduled or not
  /// row-contiguous is an error. Reached through
  /// [`crate::eval_thread::Ready::read`], whose views satisfy the contract.
  ///
  /// # Safety
  /// No evaluation running on another thread while this is called may take
  /// this very array as a direct input of a node it evaluates: MLX updates
  /// such an input's event and status without synchronization.
  pub(crate) unsafe fn copy_queued<T: ArrayElement>(&mut self) -> Result<Vec<T>> {
    let mut out = self.host_buffer::<T>()?;
    let n = out.len();
    // SAFETY: `out` spans `n * size_of::<T>()` bytes of this dtype; the C
    // layer only waits for the queued array and copies it (the caller
    // upholds that no concurrent evaluation takes it as an input).
    check(unsafe {
      mlxrs_sys::mlxrs_array_copy_queued(
        out.as_mut_ptr().cast(),
        n * std::mem::size_of::<T>(),
        self.0,
      )
    })?;
    Ok(out)
  }

  /// The single element of a 1-element array (python `a.item()`). `T` must
  /// be the dtype.
  pub fn item<T: ArrayElement>(&mut self) -> Result<T> {
    if self.size() != 1 {
      return Err(Error::InvalidArgument(format!(
        "item() needs an array of size 1, got shape {:?}",
        self.shape()
      )));
    }
    Ok(self.to_vec::<T>()?[0])
  }

  /// Python's `str(a)`: evaluates and formats the values.
  pub fn to_string_lossy(&self) -> String {
    if self.is_null() {
      return "array(<empty handle>)".into();
    }
    let mut s = crate::string::MlxString::new();
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live handle; the string out-handle is owned by `s`.
    let rc = unsafe { mlxrs_sys::mlx_array_tostring(&mut s.0, self.0) };
    if rc != 0 {
      return format!("array(<error: {}>)", crate::error::last_error());
    }
    s.as_str().to_string()
  }
}

impl std::fmt::Debug for Array {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(&self.to_string_lossy())
  }
}

impl std::fmt::Display for Array {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str(&self.to_string_lossy())
  }
}

#[allow(dead_code)]
fn _assert_send() {
  fn is_send<T: Send>() {}
  is_send::<Array>();
}

#[allow(dead_code)]
pub(crate) fn cstr_to_string(p: *const std::ffi::c_char) -> String {
  if p.is_null() {
    return String::new();
  }
  // SAFETY: callers pass NUL-terminated strings owned by the C layer.
  unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn construct_and_read_back_every_dtype() {
    let mut a = Array::from_slice::<f32>(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &(2, 3)).unwrap();
    assert_eq!(a.shape(), vec![2, 3]);
    assert_eq!(a.ndim(), 2);
    assert_eq!(a.size(), 6);
    assert_eq!(a.nbytes(), 24);
    assert_eq!(a.dtype(), Dtype::Float32);
    assert_eq!(a.dim(-1), Some(3));
    assert_eq!(a.dim(2), None);
    assert_eq!(
      a.to_vec::<f32>().unwrap(),
      vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );

    macro_rules! rt {
      ($t:ty, $vals:expr) => {{
        let v: Vec<$t> = $vals;
        let mut x = Array::from_slice::<$t>(&v, &[v.len() as i32]).unwrap();
        assert_eq!(x.dtype(), <$t as ArrayElement>::DTYPE);
        assert_eq!(x.to_vec::<$t>().unwrap(), v);
      }};
    }
    rt!(bool, vec![true, false, true]);
    rt!(u8, vec![0, 255]);
    rt!(u16, vec![0, 65535]);
    rt!(u32, vec![0, u32::MAX]);
    rt!(u64, vec![0, u64::MAX]);
    rt!(i8, vec![-128, 127]);
    rt!(i16, vec![-32768, 32767]);
    rt!(i32, vec![i32::MIN, i32::MAX]);
    rt!(i64, vec![i64::MIN, i64::MAX]);
    rt!(
      half::f16,
      vec![half::f16::from_f32(0.5), half::f16::from_f32(-2.0)]
    );
    rt!(
      half::bf16,
      vec![half::bf16::from_f32(0.5), half::bf16::from_f32(-2.0)]
    );
    rt!(f64, vec![1e-300, -1e300]);
    rt!(
      num_complex::Complex32,
      vec![num_complex::Complex32::new(1.0, -1.0)]
    );
  }

  #[test]
  fn scalars_items_and_clone_share_data() {
    let mut s = Array::scalar(2.5f32);
    assert_eq!(s.shape(), Vec::<i32>::new());
    assert_eq!(s.item::<f32>().unwrap(), 2.5);
    let mut c = s.clone();
    assert_eq!(c.item::<f32>().unwrap(), 2.5);
    let mut b = Array::scalar_as(3.0, Dtype::Bfloat16).unwrap();
    assert_eq!(b.item::<half::bf16>().unwrap(), half::bf16::from_f32(3.0));
    assert_eq!(format!("{s}"), "array(2.5, dtype=float32)");
  }

  #[test]
  fn bad_input_is_an_error() {
    // Length does not match the shape.
    assert!(matches!(
      Array::from_slice::<f32>(&[1.0, 2.0, 3.0], &(2, 2)),
      Err(Error::InvalidArgument(_))
    ));
    // Negative dimension.
    assert!(Array::from_slice::<f32>(&[], &[-1]).is_err());
    // Huge dims whose product overflows, with no data.
    assert!(Array::from_slice::<f32>(&[], &[i32::MAX, i32::MAX, i32::MAX]).is_err());
    // Wrong element type on read.
    let mut a = Array::from_slice::<i32>(&[1, 2], &(2,)).unwrap();
    assert!(matches!(
      a.to_vec::<f32>(),
      Err(Error::DtypeMismatch { .. })
    ));
    // item() on more than one element.
    assert!(a.item::<i32>().is_err());
    // Empty arrays are fine.
    let mut e = Array::from_slice::<f32>(&[], &(0, 3)).unwrap();
    assert_eq!(e.to_vec::<f32>().unwrap(), Vec::<f32>::new());
    // An empty handle is an error, not a crash.
    let mut n = Array::null();
    assert!(n.eval().is_err());
    assert!(n.to_vec::<f32>().is_err());
    assert_eq!(n.shape(), Vec::<i32>::new());
  }

  #[test]
  fn arrays_move_across_threads() {
    let a = Array::from_slice::<f32>(&[1.0, 2.0], &(2,)).unwrap();
    let got = std::thread::spawn(move || {
      let mut a = a;
      a.to_vec::<f32>().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(got, vec![1.0, 2.0]);
  }
}
