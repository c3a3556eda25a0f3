//! Python-style indexing: [`Array::index`] is python `a[idx]`
//! (`mlx.core.array.__getitem__`) and [`Array::index_put`] is python
//! `a[idx] = v` (`__setitem__`), returning a new array.
//!
//! An index is one item or a tuple of items, written as in python:
//!
//! | python                 | Rust                                         |
//! |------------------------|----------------------------------------------|
//! | `a[2]`, `a[-1]`        | `a.index(2)`, `a.index(-1)`                  |
//! | `a[1:3]`, `a[1:]`, `a[:3]`, `a[:]` | `a.index(1..3)`, `a.index(1..)`, `a.index(..3)`, `a.index(..)` |
//! | `a[1:4]` as `1..=3`    | `a.index(1..=3)` (`..=-1` reaches the end)   |
//! | `a[::2]`, `a[::-1]`, `a[5:1:-2]` | `a.index((..).step(2))`, `a.index((..).step(-1))`, `a.index((5..1).step(-2))` |
//! | `a[None]`              | `a.index(NewAxis)`                           |
//! | `a[..., 0]`            | `a.index((Ellipsis, 0))`                     |
//! | `a[idx]` (int array)   | `a.index(&idx)` (take along axis 0)          |
//! | `a[..., 1:3, None, ::2, -1]` | `a.index((Ellipsis, 1..3, NewAxis, (..).step(2), -1))` |
//!
//! Semantics are mlx's (numpy's basic and advanced indexing): integers drop
//! their axis, slices keep it and clamp out-of-range bounds like python's
//! `slice.indices`, `NewAxis` inserts a size-1 axis, `Ellipsis` stands for
//! the axes not indexed, integer arrays gather (several broadcast together;
//! their result axes go where numpy puts them: in place if the array indices
//! are adjacent, first otherwise).
//!
//! Differences from python mlx, all to keep the API memory-safe:
//! - an integer index outside `-n..n` is an [`Error::InvalidArgument`]
//!   (python mlx does not check and reads out of bounds; numpy raises
//!   `IndexError`);
//! - integer *array* indices are wrapped once (`-1` is the last) and then
//!   clamped into range (as JAX does), because checking them would force an
//!   evaluation;
//! - boolean / float arrays, a zero slice step, more than one `Ellipsis` and
//!   more indices than axes are errors (python mlx raises too).

use std::fmt;
use std::ops::{Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::ops;

/// `None` in a python index: insert a size-1 axis (`np.newaxis`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewAxis;

/// `...` in a python index: all the axes not otherwise indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ellipsis;

/// A python slice `start:stop:step`; `None` fields take python's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slice {
  /// First index (python default: `0`, or the last element for a negative step).
  pub start: Option<i64>,
  /// One past the last index (python default: the end, or before the first
  /// element for a negative step).
  pub stop: Option<i64>,
  /// Step (python default `1`); `0` is an error.
  pub step: Option<i64>,
}

impl Slice {
  /// python `slice(start, stop, step)`.
  pub fn new(start: Option<i64>, stop: Option<i64>, step: Option<i64>) -> Slice {
    Slice { start, stop, step }
  }

  /// The same slice with a step (python `a[start:stop:step]`).
  pub fn step(self, step: i64) -> Slice {
    Slice {
      step: Some(step),
      ..self
    }
  }

  /// python `slice.indices(n)`: the clamped `(start, stop, step)` for an
  /// axis of size `n`, and the number of elements selected.
  pub fn indices(&self, n: i64) -> Result<(i64, i64, i64, i64)> {
    let step = self.step.unwrap_or(1);
    if step == 0 {
      return Err(Error::InvalidArgument("slice step cannot be zero".into()));
    }
    let (lower, upper) = if step > 0 { (0, n) } else { (-1, n - 1) };
    let fix = |v: Option<i64>, default: i64| match v {
      None => default,
      Some(v) if v < 0 => (v + n).max(lower),
      Some(v) => v.min(upper),
    };
    let start = fix(self.start, if step > 0 { lower } else { upper });
    let stop = fix(self.stop, if step > 0 { upper } else { lower });
    let len = if step > 0 {
      if stop > start {
        (stop - start + step - 1) / step
      } else {
        0
      }
    } else if start > stop {
      (start - stop + (-step) - 1) / (-step)
    } else {
      0
    };
    Ok((start, stop, step, len))
  }
}

/// Make a stepped slice from a range: `(1..5).step(2)` is python `1:5:2`,
/// `(..).step(-1)` is `::-1`.
pub trait Stepped {
  /// The range as a [`Slice`] with `step`.
  fn step(self, step: i64) -> Slice;
}

impl<T: Into<Slice>> Stepped for T {
  fn step(self, step: i64) -> Slice {
    self.into().step(step)
  }
}

impl From<RangeFull> for Slice {
  fn from(_: RangeFull) -> Slice {
    Slice::default()
  }
}

/// An inclusive end `e` as an exclusive python stop (`..=-1` is the end).
fn inclusive_stop(e: i64) -> Option<i64> {
  if e == -1 { None } else { Some(e + 1) }
}

macro_rules! range_slices {
  ($($t:ty),*) => {$(
    impl From<Range<$t>> for Slice {
      fn from(r: Range<$t>) -> Slice {
        Slice::new(Some(r.start as i64), Some(r.end as i64), None)
      }
    }
    impl From<RangeFrom<$t>> for Slice {
      fn from(r: RangeFrom<$t>) -> Slice {
        Slice::new(Some(r.start as i64), None, None)
      }
    }
    impl From<RangeTo<$t>> for Slice {
      fn from(r: RangeTo<$t>) -> Slice {
        Slice::new(None, Some(r.end as i64), None)
      }
    }
    impl From<RangeInclusive<$t>> for Slice {
      fn from(r: RangeInclusive<$t>) -> Slice {
        Slice::new(Some(*r.start() as i64), inclusive_stop(*r.end() as i64), None)
      }
    }
    impl From<RangeToInclusive<$t>> for Slice {
      fn from(r: RangeToInclusive<$t>) -> Slice {
        Slice::new(None, inclusive_stop(r.end as i64), None)
      }
    }
  )*};
}
range_slices!(i32, i64);

/// One item of an index (python: an `int`, a `slice`, `None`, `...` or an
/// `mx.array`).
#[derive(Clone)]
pub enum Index {
  /// An integer: selects one element and drops the axis.
  Int(i64),
  /// A slice: keeps the axis.
  Slice(Slice),
  /// `None`: a new size-1 axis.
  NewAxis,
  /// `...`: the remaining axes.
  Ellipsis,
  /// An integer array: gathers (advanced indexing).
  Array(Array),
}

impl fmt::Debug for Index {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match self {
      Index::Int(i) => write!(f, "{i}"),
      Index::Slice(s) => {
        let o = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        write!(f, "{}:{}", o(s.start), o(s.stop))?;
        if let Some(st) = s.step {
          write!(f, ":{st}")?;
        }
        Ok(())
      }
      Index::NewAxis => write!(f, "None"),
      Index::Ellipsis => write!(f, "..."),
      Index::Array(a) => write!(f, "array(shape={:?}, dtype={:?})", a.shape(), a.dtype()),
    }
  }
}

macro_rules! index_from {
  ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {$(
    impl From<$t> for Index {
      fn from($v: $t) -> Index {
        $e
      }
    }
  )*};
}
index_from!(
  i32 => |v| Index::Int(v as i64),
  i64 => |v| Index::Int(v),
  usize => |v| Index::Int(v as i64),
  Slice => |v| Index::Slice(v),
  RangeFull => |v| Index::Slice(v.into()),
  Range<i32> => |v| Index::Slice(v.into()),
  RangeFrom<i32> => |v| Index::Slice(v.into()),
  RangeTo<i32> => |v| Index::Slice(v.into()),
  RangeInclusive<i32> => |v| Index::Slice(v.into()),
  RangeToInclusive<i32> => |v| Index::Slice(v.into()),
  Range<i64> => |v| Index::Slice(v.into()),
  RangeFrom<i64> => |v| Index::Slice(v.into()),
  RangeTo<i64> => |v| Index::Slice(v.into()),
  RangeInclusive<i64> => |v| Index::Slice(v.into()),
  RangeToInclusive<i64> => |v| Index::Slice(v.into()),
  NewAxis => |_v| Index::NewAxis,
  Ellipsis => |_v| Index::Ellipsis,
  Array => |v| Index::Array(v),
  &Array => |v| Index::Array(v.clone()),
);

/// Anything usable as a whole index: one item (`2`, `1..3`, `NewAxis`,
/// `&idx`, ...), a tuple of up to 10 items (python `a[i, j, ...]`), or a
/// `Vec<Index>` / `&[Index]` built at run time.
pub trait IntoIndex {
  /// The items, in order.
  fn into_items(self) -> Vec<Index>;
}

macro_rules! single_index {
  ($($t:ty),*) => {$(
    impl IntoIndex for $t {
      fn into_items(self) -> Vec<Index> {
        vec![self.into()]
      }
    }
  )*};
}
single_index!(
  i32,
  i64,
  usize,
  Slice,
  RangeFull,
  Range<i32>,
  RangeFrom<i32>,
  RangeTo<i32>,
  RangeInclusive<i32>,
  RangeToInclusive<i32>,
  Range<i64>,
  RangeFrom<i64>,
  RangeTo<i64>,
  RangeInclusive<i64>,
  RangeToInclusive<i64>,
  NewAxis,
  Ellipsis,
  Array,
  &Array
);

impl IntoIndex for Index {
  fn into_items(self) -> Vec<Index> {
    vec![self]
  }
}
impl IntoIndex for Vec<Index> {
  fn into_items(self) -> Vec<Index> {
    self
  }
}
impl IntoIndex for &[Index] {
  fn into_items(self) -> Vec<Index> {
    self.to_vec()
  }
}
impl IntoIndex for () {
  fn into_items(self) -> Vec<Index> {
    Vec::new()
  }
}

macro_rules! tuple_index {
  ($($n:ident),+) => {
    impl<$($n: Into<Index>),+> IntoIndex for ($($n,)+) {
      #[allow(non_snake_case)]
      fn into_items(self) -> Vec<Index> {
        let ($($n,)+) = self;
        vec![$($n.into()),+]
      }
    }
  };
}
tuple_index!(A);
tuple_index!(A, B);
tuple_index!(A, B, C);
tuple_index!(A, B, C, D);
tuple_index!(A, B, C, D, E);
tuple_index!(A, B, C, D, E, F);
tuple_index!(A, B, C, D, E, F, G);
tuple_index!(A, B, C, D, E, F, G, H);
tuple_index!(A, B, C, D, E, F, G, H, I);
tuple_index!(A, B, C, D, E, F, G, H, I, J);

// ------------------------------------------------------------------ internals

/// An index item after `...` expansion and validation against the shape.
#[derive(Clone)]
enum It {
  /// In range, non-negative.
  Int(i64),
  /// Clamped `(start, stop, step, len)` for its axis.
  Slice(i64, i64, i64, i64),
  None,
  /// Wrapped and clamped into range.
  Arr(Array),
}

impl It {
  fn is_gather(&self) -> bool {
    matches!(self, It::Int(_) | It::Arr(_))
  }
  fn full(n: i64) -> It {
    It::Slice(0, n, 1, n)
  }
}

fn scalar_of(v: f64, dt: Dtype) -> Result<Array> {
  Array::scalar_as(v, dt)
}

/// Wrap negative entries once and clamp into `0..n` (see the module docs).
fn prep_array(a: &Array, n: i64, axis: usize) -> Result<Array> {
  let dt = a.dtype();
  if dt == Dtype::Bool {
    return Err(Error::InvalidArgument(
      "boolean array indices are not supported (python mlx: \"boolean indices are not yet supported\")".into(),
    ));
  }
  if !dt.is_integer() {
    return Err(Error::InvalidArgument(format!(
      "array indices must be integers, got {dt:?} for axis {axis}"
    )));
  }
  if n == 0 {
    if a.size() > 0 {
      return Err(Error::InvalidArgument(format!(
        "index array into axis {axis} of size 0"
      )));
    }
    return Ok(a.clone());
  }
  let signed = matches!(dt, Dtype::Int8 | Dtype::Int16 | Dtype::Int32 | Dtype::Int64);
  let mut a = a.clone();
  if signed {
    let neg = ops::less(&a, &scalar_of(0.0, dt)?)?;
    let wrapped = ops::add(&a, &scalar_of(n as f64, dt)?)?;
    a = ops::where_(&neg, &wrapped, &a)?;
  }
  let lo = scalar_of(0.0, dt)?;
  let hi = scalar_of((n - 1) as f64, dt)?;
  ops::clip(&a, Some(&lo), Some(&hi))
}

/// Expand `...`, check the count, normalise ints / slices / arrays for the
/// axis each applies to.
fn expand(shape: &[i32], items: &[Index]) -> Result<Vec<It>> {
  let ndim = shape.len();
  let ell: Vec<usize> = items
    .iter()
    .enumerate()
    .filter(|(_, i)| matches!(i, Index::Ellipsis))
    .map(|(k, _)| k)
    .collect();
  if ell.len() > 1 {
    return Err(Error::InvalidArgument(
      "an index can only have a single ellipsis (...)".into(),
    ));
  }
  let (before, after) = match ell.first() {
    Some(&p) => (&items[..p], &items[p + 1..]),
    None => (items, &items[..0]),
  };
  let count = |s: &[Index]| s.iter().filter(|i| !matches!(i, Index::NewAxis)).count();
  let (nb, na) = (count(before), count(after));
  if nb + na > ndim {
    return Err(Error::InvalidArgument(format!(
      "too many indices for array: array is {ndim}-dimensional, but {} were indexed ({items:?})",
      nb + na
    )));
  }
  let mut out = Vec::with_capacity(items.len() + ndim);
  let mut axis = 0usize;
  let push = |it: &Index, axis: &mut usize, out: &mut Vec<It>| -> Result<()> {
    match it {
      Index::NewAxis => out.push(It::None),
      Index::Ellipsis => unreachable_ellipsis()?,
      Index::Int(i) => {
        let n = shape[*axis] as i64;
        if *i < -n || *i >= n {
          return Err(Error::InvalidArgument(format!(
            "index {i} is out of bounds for axis {} with size {n}",
            *axis
          )));
        }
        out.push(It::Int(if *i < 0 { i + n } else { *i }));
        *axis += 1;
      }
      Index::Slice(s) => {
        let (a, b, c, l) = s.indices(shape[*axis] as i64)?;
        out.push(It::Slice(a, b, c, l));
        *axis += 1;
      }
      Index::Array(a) => {
        out.push(It::Arr(prep_array(a, shape[*axis] as i64, *axis)?));
        *axis += 1;
      }
    }
    Ok(())
  };
  for it in before {
    push(it, &mut axis, &mut out)?;
  }
  while axis < ndim - na {
    out.push(It::full(shape[axis] as i64));
    axis += 1;
  }
  for it in after {
    push(it, &mut axis, &mut out)?;
  }
  Ok(out)
}

fn unreachable_ellipsis() -> Result<()> {
  Err(Error::InvalidArgument(
    "an index can only have a single ellipsis (...)".into(),
  ))
}

/// Stop value for MLX's `slice` op: MLX reads a negative stop as counted from
/// the end, so "before element 0" (python's normalised `-1` for a negative
/// step) is passed as `-(n + 1)`.
fn mlx_stop(stop: i64, n: i64) -> i32 {
  if stop < 0 {
    (-(n + 1)) as i32
  } else {
    stop as i32
  }
}

/// Whether array-like items (ints / arrays) are separated by a slice or a
/// new axis: numpy then puts the gathered axes first.
fn gathered_first(items: &[It]) -> bool {
  let (mut have_array, mut have_non_array) = (false, false);
  for it in items {
    if it.is_gather() {
      if have_array && have_non_array {
        return true;
      }
      have_array = true;
    } else {
      have_non_array |= have_array;
    }
  }
  false
}

fn i32_scalar(v: i64) -> Array {
  Array::scalar::<i32>(v as i32)
}

fn arange_i32(start: i64, stop: i64, step: i64) -> Result<Array> {
  ops::arange(start as f64, stop as f64, step as f64, Dtype::Int32)
}

/// Gather over the leading `items.len()` axes (no `None` among them).
/// Returns the result and the number of broadcast array-index axes.
fn gather_nd(src: &Array, items: &[It], first: bool) -> Result<(Array, usize)> {
  let mut idx = Vec::with_capacity(items.len());
  let mut is_slice = vec![false; items.len()];
  let mut num_slices = 0usize;
  let mut max_dims = 0usize;
  for (k, it) in items.iter().enumerate() {
    match it {
      It::Slice(a, b, c, _) => {
        idx.push(arange_i32(*a, *b, *c)?);
        is_slice[k] = true;
        num_slices += 1;
      }
      It::Int(i) => idx.push(i32_scalar(*i)),
      It::Arr(a) => {
        max_dims = max_dims.max(a.ndim());
        idx.push(a.clone());
      }
      It::None => {
        return Err(Error::InvalidArgument(
          "internal: new axis inside a gather".into(),
        ));
      }
    }
  }
  let total = max_dims + num_slices;
  if first {
    let mut s = 0usize;
    for k in 0..idx.len() {
      if is_slice[k] {
        let mut shape = vec![1i32; total];
        shape[max_dims + s] = idx[k].shape()[0];
        idx[k] = idx[k].reshape(&shape)?;
        s += 1;
      } else {
        let mut shape = idx[k].shape();
        shape.extend(std::iter::repeat_n(1, num_slices));
        idx[k] = idx[k].reshape(&shape)?;
      }
    }
  } else {
    // The slices all come before the array-like items here.
    for (k, ix) in idx.iter_mut().enumerate().take(num_slices) {
      let mut shape = vec![1i32; total];
      shape[k] = ix.shape()[0];
      *ix = ix.reshape(&shape)?;
    }
  }
  let n = items.len();
  let axes: Vec<i32> = (0..n as i32).collect();
  let mut sizes = src.shape();
  for s in sizes.iter_mut().take(n) {
    *s = 1;
  }
  let g = ops::gather(src, &idx, &axes, &sizes)?;
  let gs = g.shape();
  let mut out: Vec<i32> = gs[..total].to_vec();
  out.extend_from_slice(&gs[total + n..]);
  Ok((g.reshape(&out)?, max_dims))
}

/// `Some(slice)` / `None` (new axis) items applied with MLX's `slice` and a
/// reshape.
fn apply_slices(src: Array, rest: &[Option<(i64, i64, i64)>]) -> Result<Array> {
  let shape = src.shape();
  let (mut starts, mut stops, mut strides) = (
    vec![0i32; shape.len()],
    shape.clone(),
    vec![1i32; shape.len()],
  );
  let mut trivial = true;
  for (axis, r) in rest.iter().flatten().enumerate() {
    let n = shape[axis] as i64;
    let (a, b, c) = *r;
    if !(a == 0 && b == n && c == 1) {
      trivial = false;
    }
    starts[axis] = a as i32;
    stops[axis] = mlx_stop(b, n);
    strides[axis] = c as i32;
  }
  let mut src = if trivial {
    src
  } else {
    ops::slice(&src, &starts, &stops, &strides)?
  };
  if rest.len() > src.ndim() {
    let s = src.shape();
    let mut out = Vec::with_capacity(rest.len());
    let mut axis = 0usize;
    for r in rest {
      if r.is_none() {
        out.push(1);
      } else {
        out.push(s[axis]);
        axis += 1;
      }
    }
    out.extend_from_slice(&s[axis..]);
    src = src.reshape(&out)?;
  }
  Ok(src)
}

fn full_slice(n: i32) -> Option<(i64, i64, i64)> {
  Some((0, n as i64, 1))
}

fn get_item(src: &Array, items: &[Index]) -> Result<Array> {
  if items.is_empty() {
    return Ok(src.clone());
  }
  let shape = src.shape();
  let idx = expand(&shape, items)?;
  let Some(last) = idx.iter().rposition(It::is_gather) else {
    let rest: Vec<_> = idx
      .iter()
      .map(|it| match it {
        It::Slice(a, b, c, _) => Some((*a, *b, *c)),
        _ => None,
      })
      .collect();
    return apply_slices(src.clone(), &rest);
  };
  let first = gathered_first(&idx);
  let gitems: Vec<It> = idx[..=last]
    .iter()
    .filter(|i| !matches!(i, It::None))
    .cloned()
    .collect();
  let (g, max_dims) = gather_nd(src, &gitems, first)?;
  let gs = g.shape();
  // The gathered array's axes, in order, and how the rest is applied to them.
  let mut rest: Vec<Option<(i64, i64, i64)>> = Vec::new();
  let mut at = 0usize;
  let full = |rest: &mut Vec<_>, at: &mut usize| {
    rest.push(full_slice(gs[*at]));
    *at += 1;
  };
  if first {
    for _ in 0..max_dims {
      full(&mut rest, &mut at);
    }
    for it in &idx[..last] {
      match it {
        It::None => rest.push(None),
        It::Slice(..) => full(&mut rest, &mut at),
        _ => {}
      }
    }
  } else {
    for it in &idx[..last] {
      match it {
        It::None => rest.push(None),
        It::Slice(..) => full(&mut rest, &mut at),
        _ => break,
      }
    }
    for _ in 0..max_dims {
      full(&mut rest, &mut at);
    }
  }
  for it in &idx[last + 1..] {
    match it {
      It::None => rest.push(None),
      It::Slice(a, b, c, _) => rest.push(Some((*a, *b, *c))),
      _ => {}
    }
  }
  if rest.is_empty() {
    return Ok(g);
  }
  apply_slices(g, &rest)
}

/// `up` without its leading size-1 axes (python mlx does this to updates).
fn strip_leading_ones(up: &Array) -> Result<Array> {
  let s = up.shape();
  let k = s.iter().take_while(|&&d| d == 1).count();
  if k == 0 {
    Ok(up.clone())
  } else {
    up.reshape(&s[k..])
  }
}

fn broadcast(up: &Array, shape: &[i32]) -> Result<Array> {
  ops::broadcast_to(up, shape).map_err(|e| match e {
    Error::Mlx(m) => Error::InvalidArgument(format!(
      "cannot assign a value of shape {:?} to an index selecting shape {shape:?}: {m}",
      up.shape()
    )),
    e => e,
  })
}

fn put_item(src: &Array, items: &[Index], value: &Array) -> Result<Array> {
  let shape = src.shape();
  let ellipsis = [Index::Ellipsis];
  let items = if items.is_empty() {
    &ellipsis[..]
  } else {
    items
  };
  let idx = expand(&shape, items)?;
  let up = strip_leading_ones(&ops::astype(value, src.dtype())?)?;

  if !idx.iter().any(|i| matches!(i, It::Arr(_))) {
    // Basic index: one `slice_update` over the selected box.
    let (mut starts, mut stops, mut strides) = (Vec::new(), Vec::new(), Vec::new());
    let (mut view, mut region) = (Vec::new(), Vec::new());
    for (axis, it) in idx.iter().filter(|i| !matches!(i, It::None)).enumerate() {
      let n = shape[axis] as i64;
      match it {
        It::Int(i) => {
          starts.push(*i as i32);
          stops.push((*i + 1) as i32);
          strides.push(1);
          region.push(1);
        }
        It::Slice(a, b, c, l) => {
          starts.push(*a as i32);
          stops.push(mlx_stop(*b, n));
          strides.push(*c as i32);
          region.push(*l as i32);
        }
        _ => {}
      }
    }
    for it in &idx {
      match it {
        It::None => view.push(1),
        It::Slice(.., l) => view.push(*l as i32),
        _ => {}
      }
    }
    let up = broadcast(&up, &view)?.reshape(&region)?;
    if region.contains(&0) {
      return Ok(src.clone());
    }
    return ops::slice_update(src, &up, &starts, &stops, &strides);
  }

  // Advanced index: a scatter, with the index / update layout of python
  // mlx's `__setitem__`.
  let non_none = shape.len();
  let mut max_dim = 0usize;
  let mut arrays_first = false;
  let (mut num_none, mut num_slices, mut num_strided, mut num_arrays) =
    (0usize, 0usize, 0i64, 0usize);
  // Unit-step slices after the last array / strided slice: these are
  // written as blocks (a start index), the others expanded to index lists.
  let mut simple_post = 0usize;
  {
    let (mut have_array, mut have_non_array) = (false, false);
    for it in &idx {
      match it {
        It::None => {
          have_non_array = have_array;
          num_none += 1;
        }
        It::Slice(_, _, c, _) => {
          have_non_array = have_array;
          num_slices += 1;
          if *c != 1 {
            num_strided += 1;
            simple_post = 0;
          } else {
            simple_post += 1;
          }
        }
        It::Arr(a) => {
          have_array = true;
          if have_non_array {
            arrays_first = true;
          }
          max_dim = max_dim.max(a.ndim());
          num_arrays += 1;
          simple_post = 0;
        }
        It::Int(_) => {}
      }
    }
  }
  let idx_ndim = (max_dim + num_none + num_slices - simple_post).max(1);
  let mut arr_idx: Vec<Array> = Vec::new();
  let (mut slice_num, mut array_num, mut ax) = (0usize, 0usize, 0usize);
  let mut update_shape = vec![1i32; non_none];
  let mut slice_shapes: Vec<i32> = Vec::new();
  for it in &idx {
    match it {
      It::Slice(a, b, c, l) => {
        ax += 1;
        let mut ishape = vec![1i32; idx_ndim];
        if array_num >= num_arrays && num_strided <= 0 && *c == 1 {
          arr_idx.push(Array::from_slice::<i32>(&[*a as i32], &ishape)?);
          slice_shapes.push(*l as i32);
          update_shape[ax - 1] = *l as i32;
        } else {
          let r = arange_i32(*a, *b, *c)?;
          let loc = slice_num + if arrays_first { max_dim } else { 0 };
          ishape[loc] = *l as i32;
          arr_idx.push(r.reshape(&ishape)?);
          slice_num += 1;
          num_strided -= 1;
          update_shape[ax - 1] = 1;
        }
      }
      It::Int(i) => {
        arr_idx.push(i32_scalar(*i));
        ax += 1;
        update_shape[ax - 1] = 1;
      }
      It::None => slice_num += 1,
      It::Arr(a) => {
        ax += 1;
        let mut ishape = vec![1i32; idx_ndim];
        let st = if arrays_first { 0 } else { slice_num } + max_dim - a.ndim();
        for (j, d) in a.shape().into_iter().enumerate() {
          ishape[st + j] = d;
        }
        arr_idx.push(a.reshape(&ishape)?);
        if !arrays_first {
          array_num += 1;
          if array_num == num_arrays {
            slice_num += max_dim;
          }
        }
        update_shape[ax - 1] = 1;
      }
    }
  }
  let arr_idx = ops::broadcast_arrays(&arr_idx)?;
  let ishape = arr_idx[0].shape();
  let mut bshape = ishape.clone();
  bshape.extend_from_slice(&slice_shapes);
  bshape.extend_from_slice(&shape[non_none..]);
  let up = broadcast(&up, &bshape)?;
  let mut rshape = ishape;
  rshape.extend_from_slice(&update_shape);
  rshape.extend_from_slice(&shape[non_none..]);
  let up = up.reshape(&rshape)?;
  let axes: Vec<i32> = (0..arr_idx.len() as i32).collect();
  ops::scatter(src, &arr_idx, &up, &axes)
}

impl Array {
  /// Python `a[idx]` (`mlx.core.array.__getitem__`): basic and advanced
  /// indexing, see the [module docs](crate::index) for the item syntax.
  ///
  /// ```
  /// use mlxrs_core::{Array, Dtype, index::{Ellipsis, NewAxis, Stepped}};
  /// let a = Array::arange(0.0, 24.0, 1.0, Dtype::Int32)?.reshape(&[2, 3, 4])?;
  /// // python: a[..., 1:3, None, ::2, -1] needs 4 axes; on 3 axes:
  /// let mut b = a.index((Ellipsis, 1..3, NewAxis, (..).step(-2)))?;
  /// assert_eq!(b.shape(), vec![2, 2, 1, 2]);
  /// assert_eq!(b.to_vec::<i32>()?[..2], [7, 5]);
  /// # Ok::<(), mlxrs_core::Error>(())
  /// ```
  pub fn index(&self, idx: impl IntoIndex) -> Result<Array> {
    get_item(self, &idx.into_items())
  }

  /// Python `a[idx] = value` (`__setitem__`), as a new array (`self` is not
  /// changed). `value` is cast to `self`'s dtype and broadcast to the shape
  /// `a[idx]` has (leading size-1 axes of `value` are ignored, as python
  /// mlx does). Basic indices become one `slice_update`, indices with arrays
  /// a `scatter`; with repeated array indices the last write wins, as in
  /// mlx.
  pub fn index_put(&self, idx: impl IntoIndex, value: &Array) -> Result<Array> {
    put_item(self, &idx.into_items(), value)
  }

  /// [`Array::index_put`] with a python scalar (`a[idx] = 0.5`).
  pub fn index_fill(&self, idx: impl IntoIndex, value: f64) -> Result<Array> {
    put_item(
      self,
      &idx.into_items(),
      &Array::scalar_as(value, self.dtype())?,
    )
  }
}
