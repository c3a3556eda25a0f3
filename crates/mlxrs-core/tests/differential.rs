//! Differential test: every case of `tests/data/op_refs/` (made by
//! `scripts/make_op_refs.py` with Python `mlx.core`) replayed through the
//! Rust wrappers and compared with Python's outputs.
//!
//! The manifest names each case's op (`ops::sum_axes`), its arguments in the
//! Rust wrapper's order, and either the expected output tensors or the error
//! Python raised (Rust must then fail too, at the call or at evaluation).
//! [`table!`] maps op names to wrappers; a name the table does not know fails
//! the test, so the script and this file stay in sync. The summary printed
//! at the end counts the generated wrappers (`pub fn` of the
//! `*/generated.rs` files) that have at least one case
//! (`cargo test -p mlxrs-core --test differential -- --nocapture` shows it).
//! `MLXRS_DIFF_FILTER=<substring of case ids>` replays a subset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};

use mlxrs_core::fft::FftNorm;
use mlxrs_core::{Array, Device, Dtype, fast, fft, linalg, ops, random, with_device};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/op_refs");

/// The generated wrapper files: the denominator of the coverage summary.
const GENERATED: &[(&str, &str)] = &[
  ("ops", include_str!("../src/ops/generated.rs")),
  ("fft", include_str!("../src/fft/generated.rs")),
  ("linalg", include_str!("../src/linalg/generated.rs")),
  ("random", include_str!("../src/random/generated.rs")),
  ("fast", include_str!("../src/fast/generated.rs")),
];

// ------------------------------------------------------------------ arguments

/// A case's argument list, consumed left to right by the table's decoders.
struct Args<'a> {
  vals: &'a [Value],
  at: usize,
  tensors: &'a HashMap<String, Array>,
}

type H<T> = Result<T, String>;

impl<'a> Args<'a> {
  fn next(&mut self) -> H<&'a Value> {
    let vals: &'a [Value] = self.vals;
    let v = vals
      .get(self.at)
      .ok_or_else(|| format!("missing argument {}", self.at))?;
    self.at += 1;
    Ok(v)
  }
  fn tensor(&self, name: &Value) -> H<Array> {
    let n = name.as_str().ok_or("tensor name is not a string")?;
    self
      .tensors
      .get(n)
      .cloned()
      .ok_or_else(|| format!("no tensor {n:?} in the data file"))
  }
  fn arr(&mut self) -> H<Array> {
    let v = self.next()?;
    let n = v
      .get("t")
      .ok_or_else(|| format!("expected an array, got {v}"))?;
    self.tensor(n)
  }
  fn oarr(&mut self) -> H<Option<Array>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.arr().map(Some)
    }
  }
  fn arrs(&mut self) -> H<Vec<Array>> {
    let v = self.next()?;
    let l = v
      .get("tl")
      .and_then(Value::as_array)
      .ok_or_else(|| format!("expected arrays, got {v}"))?;
    l.iter().map(|n| self.tensor(n)).collect()
  }
  fn peek_null(&mut self) -> bool {
    let null = self.vals.get(self.at).is_some_and(Value::is_null);
    if null {
      self.at += 1;
    }
    null
  }
  fn f64(&mut self) -> H<f64> {
    let v = self.next()?;
    if let Some(s) = v.get("f").and_then(Value::as_str) {
      return s.parse().map_err(|_| format!("bad float {s:?}"));
    }
    v.as_f64()
      .ok_or_else(|| format!("expected a number, got {v}"))
  }
  fn f32(&mut self) -> H<f32> {
    self.f64().map(|x| x as f32)
  }
  fn of32(&mut self) -> H<Option<f32>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.f32().map(Some)
    }
  }
  fn i64(&mut self) -> H<i64> {
    let v = self.next()?;
    v.as_i64()
      .ok_or_else(|| format!("expected an integer, got {v}"))
  }
  fn i32(&mut self) -> H<i32> {
    let x = self.i64()?;
    i32::try_from(x).map_err(|_| format!("{x} does not fit i32"))
  }
  fn oi32(&mut self) -> H<Option<i32>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.i32().map(Some)
    }
  }
  fn u64(&mut self) -> H<u64> {
    let v = self.next()?;
    v.as_u64()
      .ok_or_else(|| format!("expected an unsigned integer, got {v}"))
  }
  fn usize(&mut self) -> H<usize> {
    self.u64().map(|x| x as usize)
  }
  fn bool(&mut self) -> H<bool> {
    let v = self.next()?;
    v.as_bool()
      .ok_or_else(|| format!("expected a bool, got {v}"))
  }
  fn obool(&mut self) -> H<Option<bool>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.bool().map(Some)
    }
  }
  fn str(&mut self) -> H<String> {
    let v = self.next()?;
    v.as_str()
      .map(str::to_string)
      .ok_or_else(|| format!("expected a string, got {v}"))
  }
  fn i64s(&mut self) -> H<Vec<i64>> {
    let v = self.next()?;
    let l = v
      .as_array()
      .ok_or_else(|| format!("expected a list, got {v}"))?;
    l.iter()
      .map(|x| {
        x.as_i64()
          .ok_or_else(|| format!("expected integers, got {v}"))
      })
      .collect()
  }
  fn ints(&mut self) -> H<Vec<i32>> {
    self
      .i64s()?
      .into_iter()
      .map(|x| i32::try_from(x).map_err(|_| format!("{x} does not fit i32")))
      .collect()
  }
  fn oints(&mut self) -> H<Option<Vec<i32>>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.ints().map(Some)
    }
  }
  fn pair(&mut self) -> H<(i32, i32)> {
    match self.ints()?[..] {
      [a, b] => Ok((a, b)),
      ref v => Err(format!("expected 2 ints, got {v:?}")),
    }
  }
  fn triple(&mut self) -> H<(i32, i32, i32)> {
    match self.ints()?[..] {
      [a, b, c] => Ok((a, b, c)),
      ref v => Err(format!("expected 3 ints, got {v:?}")),
    }
  }
  fn dtype(&mut self) -> H<Dtype> {
    let v = self.next()?;
    let s = v
      .get("dtype")
      .and_then(Value::as_str)
      .ok_or_else(|| format!("expected a dtype, got {v}"))?;
    Dtype::parse(s).ok_or_else(|| format!("unknown dtype {s:?}"))
  }
  fn odtype(&mut self) -> H<Option<Dtype>> {
    if self.peek_null() {
      Ok(None)
    } else {
      self.dtype().map(Some)
    }
  }
  fn norm(&mut self) -> H<FftNorm> {
    let v = self.next()?;
    match v.get("norm").and_then(Value::as_str) {
      Some("backward") => Ok(FftNorm::Backward),
      Some("ortho") => Ok(FftNorm::Ortho),
      Some("forward") => Ok(FftNorm::Forward),
      _ => Err(format!("expected an FFT norm, got {v}")),
    }
  }
}

/// A wrapper's result as a list of arrays.
trait Outs {
  fn outs(self) -> Vec<Array>;
}
impl Outs for Array {
  fn outs(self) -> Vec<Array> {
    vec![self]
  }
}
impl Outs for (Array, Array) {
  fn outs(self) -> Vec<Array> {
    vec![self.0, self.1]
  }
}
impl Outs for Vec<Array> {
  fn outs(self) -> Vec<Array> {
    self
  }
}
impl Outs for () {
  fn outs(self) -> Vec<Array> {
    Vec::new()
  }
}

/// One argument of kind `$k`, decoded from `$a` (borrowed where the wrapper
/// borrows).
macro_rules! arg {
  ($a:ident arr) => {
    &$a.arr()?
  };
  ($a:ident arrs) => {
    &$a.arrs()?
  };
  ($a:ident oarr) => {
    $a.oarr()?.as_ref()
  };
  ($a:ident ints) => {
    &$a.ints()?
  };
  ($a:ident oints) => {
    $a.oints()?.as_deref()
  };
  ($a:ident i64s) => {
    &$a.i64s()?
  };
  ($a:ident str) => {
    &$a.str()?
  };
  ($a:ident $k:ident) => {
    $a.$k()?
  };
}

/// `module { wrapper(arg kinds...); ... }`: the op names (`module::wrapper`)
/// and a dispatcher calling each wrapper with decoded arguments.
macro_rules! table {
  ($($m:ident { $($f:ident($($k:ident),*);)* })*) => {
    const TABLE: &[&str] = &[$($(concat!(stringify!($m), "::", stringify!($f)),)*)*];
    fn dispatch(name: &str, a: &mut Args) -> H<mlxrs_core::Result<Vec<Array>>> {
      $($(
        if name == concat!(stringify!($m), "::", stringify!($f)) {
          return Ok($m::$f($(arg!(a $k)),*).map(Outs::outs));
        }
      )*)*
      Err(format!("unknown op {name:?}: add it to the table in tests/differential.rs"))
    }
  };
}

table! {
  ops {
    arange(f64, f64, f64, dtype); linspace(f64, f64, i32, bool, dtype); astype(arr, dtype);
    as_strided(arr, ints, i64s, usize); copy(arr); full(ints, arr, dtype); full_like(arr, arr, dtype);
    zeros(ints, dtype); zeros_like(arr); ones(ints, dtype); ones_like(arr); eye(i32, i32, i32, dtype);
    identity(i32, dtype); tri(i32, i32, i32, dtype); tril(arr, i32); triu(arr, i32);
    reshape(arr, ints); unflatten(arr, i32, ints); flatten(arr, i32, i32); hadamard_transform(arr, of32);
    squeeze_axes(arr, ints); squeeze_axis(arr, i32); squeeze(arr); expand_dims_axes(arr, ints);
    expand_dims(arr, i32); flip_axes(arr, ints); flip_axis(arr, i32); flip(arr);
    slice(arr, ints, ints, ints); slice_dynamic(arr, arr, ints, ints);
    slice_update(arr, arr, ints, ints, ints); slice_update_dynamic(arr, arr, arr, ints);
    slice_update_add(arr, arr, ints, ints, ints); slice_update_prod(arr, arr, ints, ints, ints);
    slice_update_max(arr, arr, ints, ints, ints); slice_update_min(arr, arr, ints, ints, ints);
    split(arr, i32, i32); split_sections(arr, ints, i32); unstack_axis(arr, i32); unstack(arr);
    meshgrid(arrs, bool, str); clip(arr, oarr, oarr); concatenate_axis(arrs, i32); concatenate(arrs);
    stack_axis(arrs, i32); stack(arrs); repeat_axis(arr, i32, i32); repeat(arr, i32); tile(arr, ints);
    transpose_axes(arr, ints); transpose(arr); matrix_transpose(arr); swapaxes(arr, i32, i32);
    moveaxis(arr, i32, i32); pad(arr, ints, ints, ints, arr, str); pad_symmetric(arr, i32, arr, str);
    broadcast_to(arr, ints); broadcast_arrays(arrs);
    equal(arr, arr); not_equal(arr, arr); greater(arr, arr); greater_equal(arr, arr); less(arr, arr);
    less_equal(arr, arr); array_equal(arr, arr, bool); isnan(arr); isinf(arr); isfinite(arr);
    isposinf(arr); isneginf(arr); where_(arr, arr, arr); nan_to_num(arr, f32, of32, of32);
    all(arr, bool); all_axes(arr, ints, bool); all_axis(arr, i32, bool);
    allclose(arr, arr, f64, f64, bool); isclose(arr, arr, f64, f64, bool);
    any(arr, bool); any_axes(arr, ints, bool); any_axis(arr, i32, bool);
    sum(arr, bool); sum_axes(arr, ints, bool); sum_axis(arr, i32, bool);
    count_nonzero(arr, bool); count_nonzero_axis(arr, i32, bool); count_nonzero_axes(arr, ints, bool);
    mean(arr, bool); mean_axes(arr, ints, bool); mean_axis(arr, i32, bool);
    median(arr, bool); median_axes(arr, ints, bool); median_axis(arr, i32, bool);
    var(arr, bool, i32); var_axes(arr, ints, bool, i32); var_axis(arr, i32, bool, i32);
    std(arr, bool, i32); std_axes(arr, ints, bool, i32); std_axis(arr, i32, bool, i32);
    prod(arr, bool); prod_axes(arr, ints, bool); prod_axis(arr, i32, bool);
    max(arr, bool); max_axes(arr, ints, bool); max_axis(arr, i32, bool);
    min(arr, bool); min_axes(arr, ints, bool); min_axis(arr, i32, bool);
    minmax(arr, bool); minmax_axes(arr, ints, bool); minmax_axis(arr, i32, bool);
    hanning(i32); hamming(i32); bartlett(i32); blackman(i32);
    argmin(arr, bool); argmin_axis(arr, i32, bool); argmax(arr, bool); argmax_axis(arr, i32, bool);
    sort(arr); sort_axis(arr, i32); argsort(arr); argsort_axis(arr, i32); partition(arr, i32);
    partition_axis(arr, i32, i32); argpartition(arr, i32); argpartition_axis(arr, i32, i32);
    searchsorted(arr, arr, str); topk(arr, i32); topk_axis(arr, i32, i32);
    unique(arr, i32, bool, bool, bool, oarr);
    logcumsumexp(arr, bool, bool); logcumsumexp_axis(arr, i32, bool, bool);
    logsumexp(arr, bool); logsumexp_axes(arr, ints, bool); logsumexp_axis(arr, i32, bool);
    abs(arr); positive(arr); negative(arr); sign(arr); logical_not(arr); logical_and(arr, arr);
    logical_or(arr, arr); logical_xor(arr, arr); reciprocal(arr); add(arr, arr); subtract(arr, arr);
    multiply(arr, arr); divide(arr, arr); divmod(arr, arr); floor_divide(arr, arr); remainder(arr, arr);
    maximum(arr, arr); minimum(arr, arr); floor(arr); ceil(arr); trunc(arr); square(arr); exp(arr);
    sin(arr); cos(arr); tan(arr); arcsin(arr); arccos(arr); arctan(arr); arctan2(arr, arr); sinh(arr);
    cosh(arr); tanh(arr); arcsinh(arr); arccosh(arr); arctanh(arr); degrees(arr); radians(arr);
    log(arr); log2(arr); log10(arr); log1p(arr); logaddexp(arr, arr); sigmoid(arr); erf(arr);
    erfinv(arr); expm1(arr); stop_gradient(arr); round(arr, i32); matmul(arr, arr);
    gather(arr, arrs, ints, ints); gather_single(arr, arr, i32, ints); kron(arr, arr);
    take_axis(arr, arr, i32); take(arr, arr); take_along_axis(arr, arr, i32);
    put_along_axis(arr, arr, arr, i32); scatter_add_axis(arr, arr, arr, i32);
    scatter(arr, arrs, arr, ints); scatter_single(arr, arr, arr, i32);
    scatter_add(arr, arrs, arr, ints); scatter_add_single(arr, arr, arr, i32);
    scatter_prod(arr, arrs, arr, ints); scatter_prod_single(arr, arr, arr, i32);
    scatter_max(arr, arrs, arr, ints); scatter_max_single(arr, arr, arr, i32);
    scatter_min(arr, arrs, arr, ints); scatter_min_single(arr, arr, arr, i32);
    masked_scatter(arr, arr, arr); sqrt(arr); rsqrt(arr);
    softmax_axes(arr, ints, bool); softmax(arr, bool); softmax_axis(arr, i32, bool); power(arr, arr);
    cumsum(arr, bool, bool, odtype); cumsum_axis(arr, i32, bool, bool, odtype);
    cumprod(arr, bool, bool, odtype); cumprod_axis(arr, i32, bool, bool, odtype);
    cummax(arr, bool, bool); cummax_axis(arr, i32, bool, bool);
    cummin(arr, bool, bool); cummin_axis(arr, i32, bool, bool); diff(arr, i32, i32);
    conv_general(arr, arr, ints, ints, ints, ints, ints, i32, bool);
    conv1d(arr, arr, i32, i32, i32, i32); conv2d(arr, arr, pair, pair, pair, i32);
    conv3d(arr, arr, triple, triple, triple, i32);
    conv_transpose1d(arr, arr, i32, i32, i32, i32, i32);
    conv_transpose2d(arr, arr, pair, pair, pair, pair, i32);
    conv_transpose3d(arr, arr, triple, triple, triple, triple, i32);
    quantized_matmul(arr, arr, arr, oarr, bool, oi32, oi32, str);
    quantize(arr, oi32, oi32, str, oarr);
    dequantize(arr, arr, oarr, oi32, oi32, str, oarr, odtype);
    qqmm(arr, arr, oarr, oi32, oi32, str, oarr, oarr); from_fp8(arr, dtype); to_fp8(arr);
    gather_qmm(arr, arr, arr, oarr, oarr, oarr, bool, oi32, oi32, str, oarr, bool);
    gather_qqmm(arr, arr, oarr, oarr, oarr, oi32, oi32, str, oarr, oarr, bool);
    tensordot_axis(arr, arr, i32); tensordot(arr, arr, ints, ints); outer(arr, arr); inner(arr, arr);
    vecdot(arr, arr, i32); addmm(arr, arr, arr, f32, f32);
    block_masked_mm(arr, arr, i32, oarr, oarr, oarr); gather_mm(arr, arr, oarr, oarr, bool);
    segmented_mm(arr, arr, arr); diagonal(arr, i32, i32, i32); diag(arr, i32);
    trace(arr, i32, i32, i32, dtype); depends(arrs, arrs); atleast_1d(arr); atleast_2d(arr);
    atleast_3d(arr); number_of_elements(arr, ints, bool, dtype); conjugate(arr);
    bitwise_and(arr, arr); bitwise_or(arr, arr); bitwise_xor(arr, arr); left_shift(arr, arr);
    right_shift(arr, arr); bitwise_invert(arr); view(arr, dtype); roll(arr, ints);
    roll_axis(arr, ints, i32); roll_axes(arr, ints, ints); real(arr); imag(arr);
    contiguous(arr, bool); einsum(str, arrs);
  }
  fft {
    fftn(arr, ints, ints, norm); fftn_axes(arr, ints, norm); ifftn(arr, ints, ints, norm);
    ifftn_axes(arr, ints, norm); fft(arr, i32, i32, norm); ifft(arr, i32, i32, norm);
    fft2(arr, ints, ints, norm); ifft2(arr, ints, ints, norm); rfftn(arr, ints, ints, norm);
    rfftn_axes(arr, ints, norm); irfftn(arr, ints, ints, norm); irfftn_axes(arr, ints, norm);
    rfft(arr, i32, i32, norm); irfft(arr, i32, i32, norm); rfft2(arr, ints, ints, norm);
    irfft2(arr, ints, ints, norm); fftfreq(i32, f64); rfftfreq(i32, f64); fftshift(arr);
    fftshift_axes(arr, ints); ifftshift(arr); ifftshift_axes(arr, ints);
    stft(arr, i32, oi32, oi32, oarr, bool, str, norm, obool);
    istft(arr, oi32, oi32, oi32, oarr, bool, norm, obool, oi32);
  }
  linalg {
    norm(arr, f64, oints, bool); norm_matrix(arr, str, oints, bool); norm_l2(arr, oints, bool);
    qr(arr); svd(arr, bool); inv(arr); tri_inv(arr, bool); cholesky(arr, bool); pinv(arr);
    cholesky_inv(arr, bool); lu(arr); lu_factor(arr); solve(arr, arr); solve_triangular(arr, arr, bool);
    cross(arr, arr, i32); eig(arr); eigvals(arr); eigvalsh(arr, str); eigh(arr, str); det(arr);
    slogdet(arr);
  }
  random {
    key(u64); seed(u64); bits(ints, i32, oarr); split(arr); split_num(arr, i32);
    uniform(arr, arr, ints, dtype, oarr); normal_broadcast(ints, dtype, oarr, oarr, oarr);
    normal(ints, dtype, f32, f32, oarr); multivariate_normal(arr, arr, ints, dtype, oarr);
    randint(arr, arr, ints, dtype, oarr); bernoulli(arr, ints, oarr);
    truncated_normal(arr, arr, ints, dtype, oarr); gumbel(ints, dtype, oarr);
    categorical_shape(arr, i32, ints, oarr); categorical_num_samples(arr, i32, i32, oarr);
    categorical(arr, i32, oarr); laplace(ints, dtype, f32, f32, oarr); permutation(arr, i32, oarr);
    permutation_arange(i32, oarr);
  }
  fast {
    rms_norm(arr, oarr, f32); layer_norm(arr, oarr, oarr, f32); cross_entropy(arr, arr);
    rope(arr, i32, bool, of32, f32, i32, oarr); rope_dynamic(arr, i32, bool, of32, f32, arr, oarr);
    gated_delta_update(arr, arr, arr, arr, arr, oarr, oarr);
    scaled_dot_product_attention_full(arr, arr, arr, f32, str, oarr, oarr);
  }
}

// ------------------------------------------------------------------ comparison

/// An array's elements, widened for comparison.
enum Vals {
  Int(Vec<i128>),
  Float(Vec<f64>),
  Complex(Vec<(f64, f64)>),
}

fn vals(a: &Array) -> mlxrs_core::Result<Vals> {
  let d = a.dtype();
  Ok(match d {
    Dtype::Uint64 => Vals::Int(
      a.clone()
        .to_vec::<u64>()?
        .into_iter()
        .map(i128::from)
        .collect(),
    ),
    // Widen on the host, never through an MLX float64 cast: MLX's CUDA
    // back-end has no float64, and float16 / bfloat16 / float32 values are
    // exact in f32 (so the comparison is the same).
    Dtype::Complex64 => {
      let re = ops::real(a)?.to_vec::<f32>()?;
      let im = ops::imag(a)?.to_vec::<f32>()?;
      Vals::Complex(
        re.into_iter()
          .zip(im)
          .map(|(r, i)| (f64::from(r), f64::from(i)))
          .collect(),
      )
    }
    Dtype::Float64 => Vals::Float(a.clone().to_vec::<f64>()?),
    _ if d.is_float() => Vals::Float(
      ops::astype(a, Dtype::Float32)?
        .to_vec::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect(),
    ),
    _ => Vals::Int(
      ops::astype(a, Dtype::Int64)?
        .to_vec::<i64>()?
        .into_iter()
        .map(i128::from)
        .collect(),
    ),
  })
}

fn close(g: f64, w: f64, (rtol, atol): (f64, f64)) -> bool {
  if g.is_nan() || w.is_nan() {
    return g.is_nan() && w.is_nan();
  }
  if g.is_infinite() || w.is_infinite() {
    return g == w;
  }
  (g - w).abs() <= atol + rtol * w.abs()
}

/// `Ok(max abs error)` or a description of the mismatch.
fn compare(got: &Array, want: &Array, tol: (f64, f64), meta_only: bool) -> Result<f64, String> {
  if got.dtype() != want.dtype() {
    return Err(format!(
      "dtype {} != expected {}",
      got.dtype(),
      want.dtype()
    ));
  }
  if got.shape() != want.shape() {
    return Err(format!(
      "shape {:?} != expected {:?}",
      got.shape(),
      want.shape()
    ));
  }
  if meta_only {
    return Ok(0.0);
  }
  let cpu = |a: &Array| {
    with_device(Device::CPU, || vals(a))
      .and_then(|r| r)
      .map_err(|e| e.to_string())
  };
  let (g, w) = (cpu(got)?, cpu(want)?);
  let mut worst = 0f64;
  let bad = |i: usize, g: &dyn std::fmt::Debug, w: &dyn std::fmt::Debug| {
    format!(
      "element {i}: got {g:?}, expected {w:?} (rtol {}, atol {})",
      tol.0, tol.1
    )
  };
  match (g, w) {
    (Vals::Int(g), Vals::Int(w)) => {
      if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        return Err(bad(i, &g[i], &w[i]));
      }
    }
    (Vals::Float(g), Vals::Float(w)) => {
      for i in 0..g.len() {
        if !close(g[i], w[i], tol) {
          return Err(bad(i, &g[i], &w[i]));
        }
        if g[i].is_finite() {
          worst = worst.max((g[i] - w[i]).abs());
        }
      }
    }
    (Vals::Complex(g), Vals::Complex(w)) => {
      for i in 0..g.len() {
        if !close(g[i].0, w[i].0, tol) || !close(g[i].1, w[i].1, tol) {
          return Err(bad(i, &g[i], &w[i]));
        }
        worst = worst
          .max((g[i].0 - w[i].0).abs())
          .max((g[i].1 - w[i].1).abs());
      }
    }
    _ => return Err("value kinds differ".into()),
  }
  Ok(worst)
}

// ------------------------------------------------------------------ runner

fn tol_for(case: &Value, defaults: &Value, dtype: Dtype) -> (f64, f64) {
  let name = dtype.to_string();
  let pick = |v: &Value| {
    v.get(&name)
      .and_then(Value::as_array)
      .and_then(|p| Some((p.first()?.as_f64()?, p.get(1)?.as_f64()?)))
  };
  case
    .get("tol")
    .and_then(pick)
    .or_else(|| pick(defaults))
    .unwrap_or((0.0, 0.0))
}

/// Run one case; `Err` describes a failure.
fn run_case(case: &Value, tensors: &HashMap<String, Array>, tols: &Value) -> Result<(), String> {
  let op = case["op"].as_str().ok_or("case without op")?;
  let args = case["args"].as_array().ok_or("case without args")?;
  let mut a = Args {
    vals: args,
    at: 0,
    tensors,
  };
  // linalg needs the CPU stream (as does multivariate_normal, via svd).
  let cpu = op.starts_with("linalg::") || op == "random::multivariate_normal";
  let mut call = || -> H<mlxrs_core::Result<Vec<Array>>> {
    let r = dispatch(op, &mut a)?;
    Ok(r.and_then(|mut outs| {
      for o in &mut outs {
        o.eval()?;
      }
      Ok(outs)
    }))
  };
  let result = catch_unwind(AssertUnwindSafe(|| {
    if cpu {
      with_device(Device::CPU, &mut call).map_err(|e| e.to_string())?
    } else {
      call()
    }
  }))
  .map_err(|p| {
    let msg = p
      .downcast_ref::<String>()
      .cloned()
      .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
    format!("PANICKED: {}", msg.unwrap_or_default())
  })??;
  if a.at != args.len() {
    return Err(format!(
      "harness: {} arguments given, the wrapper takes {}",
      args.len(),
      a.at
    ));
  }
  if let Some(err) = case.get("error").and_then(Value::as_str) {
    return match result {
      Err(_) => Ok(()),
      Ok(_) => Err(format!("Python raised {err:?} but Rust returned Ok")),
    };
  }
  let outs = result.map_err(|e| format!("Rust failed where Python did not: {e}"))?;
  let want: Vec<&str> = case["out"]
    .as_array()
    .ok_or("case without out")?
    .iter()
    .filter_map(Value::as_str)
    .collect();
  if outs.len() != want.len() {
    return Err(format!("{} outputs, expected {}", outs.len(), want.len()));
  }
  let meta_only = case.get("check").and_then(Value::as_str) == Some("meta");
  for (k, (g, w)) in outs.iter().zip(&want).enumerate() {
    let w = tensors
      .get(*w)
      .ok_or_else(|| format!("no expected tensor {w:?}"))?;
    compare(g, w, tol_for(case, tols, w.dtype()), meta_only)
      .map_err(|e| format!("output {k}: {e}"))?;
  }
  Ok(())
}

fn generated_ops() -> BTreeSet<String> {
  let mut out = BTreeSet::new();
  for (m, text) in GENERATED {
    for line in text.lines() {
      if let Some(rest) = line.strip_prefix("pub fn ") {
        let name: String = rest
          .chars()
          .take_while(|c| c.is_alphanumeric() || *c == '_')
          .collect();
        out.insert(format!("{m}::{name}"));
      }
    }
  }
  out
}

#[test]
fn replay_python_references() {
  let text = std::fs::read_to_string(format!("{DATA}/manifest.json")).expect("manifest.json");
  let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
  let tols = &manifest["tolerances"];
  let mut tensors: HashMap<String, HashMap<String, Array>> = HashMap::new();
  for m in manifest["modules"].as_array().expect("modules") {
    let m = m.as_str().unwrap();
    let (t, _) =
      mlxrs_core::io::load_safetensors(format!("{DATA}/{m}.safetensors")).expect("data file");
    tensors.insert(m.to_string(), t);
  }
  let empty = HashMap::new();
  let cases = manifest["cases"].as_array().expect("cases");
  let known: BTreeSet<&str> = TABLE.iter().copied().collect();
  let mut failures = Vec::new();
  let mut replayed: BTreeMap<String, usize> = BTreeMap::new();
  let (mut n_err, mut n_ok) = (0, 0);
  // `MLXRS_DIFF_FILTER=linalg.` runs only the cases whose id contains it.
  let filter = std::env::var("MLXRS_DIFF_FILTER").unwrap_or_default();
  for case in cases {
    let id = case["id"].as_str().unwrap_or("?");
    let op = case["op"].as_str().unwrap_or("?");
    if !id.contains(&filter) {
      continue;
    }
    if !known.contains(op) {
      failures.push(format!(
        "{id}: unknown op {op:?} (add it to the table in tests/differential.rs)"
      ));
      continue;
    }
    let module = op.split("::").next().unwrap();
    match run_case(case, tensors.get(module).unwrap_or(&empty), tols) {
      Ok(()) => {
        *replayed.entry(op.to_string()).or_default() += 1;
        if case.get("error").is_some() {
          n_err += 1
        } else {
          n_ok += 1
        }
      }
      Err(e) => failures.push(format!("{id}: {e}")),
    }
  }
  let generated = generated_ops();
  let covered: BTreeSet<&String> = generated
    .iter()
    .filter(|o| replayed.contains_key(*o))
    .collect();
  let missing: Vec<&String> = generated
    .iter()
    .filter(|o| !replayed.contains_key(*o))
    .collect();
  let extra: Vec<&String> = replayed
    .keys()
    .filter(|o| !generated.contains(*o))
    .collect();
  println!(
    "differential: {} cases ({n_ok} compared, {n_err} expected errors), {} failed",
    cases.len(),
    failures.len()
  );
  println!(
    "coverage: {} / {} generated wrappers replayed (+ {} hand-written: {})",
    covered.len(),
    generated.len(),
    extra.len(),
    extra
      .iter()
      .map(|s| s.as_str())
      .collect::<Vec<_>>()
      .join(", ")
  );
  for m in ["ops", "fft", "linalg", "random", "fast"] {
    let all = generated
      .iter()
      .filter(|o| o.starts_with(&format!("{m}::")))
      .count();
    let cov = covered
      .iter()
      .filter(|o| o.starts_with(&format!("{m}::")))
      .count();
    println!("  {m}: {cov} / {all}");
  }
  if !missing.is_empty() {
    println!(
      "not replayed: {}",
      missing
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
    );
  }
  let untested: Vec<&&str> = TABLE
    .iter()
    .filter(|o| !replayed.contains_key(**o))
    .collect();
  if !untested.is_empty() {
    println!("in the table without a passing case: {untested:?}");
  }
  assert!(
    failures.is_empty(),
    "{} differential failures:\n{}",
    failures.len(),
    failures.join("\n")
  );
}
