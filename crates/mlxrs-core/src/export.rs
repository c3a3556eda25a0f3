//! Function export and graph printing: python `mx.export_function`,
//! `mx.import_function`, `mx.exporter`, `mx.export_to_dot`; swift
//! `exportFunction(to:shapeless:_:)`, `exportFunctions(to:shapeless:_:build:)`,
//! `importFunction(from:)`.
//!
//! An exported function (`.mlxfn` file) is the traced graph of a
//! [`Closure`] with its captured arrays as constants; importing it gives a
//! closure computing the same outputs, without the Rust code, that can be
//! called, transformed and compiled like any other. Inputs must match a
//! traced signature (dtypes and shapes; dtypes and ranks for a shapeless
//! export).

use std::ffi::CString;
use std::path::Path;

use crate::array::Array;
use crate::closure::{Closure, ClosureKwargs, Kwargs, check_call};
use crate::error::{Error, Result, cstring, last_error};
use crate::string::MlxString;
use crate::vector::VectorArray;

fn path_cstring(path: &Path) -> Result<CString> {
  let s = path
    .to_str()
    .ok_or_else(|| Error::InvalidArgument(format!("path is not UTF-8: {}", path.display())))?;
  cstring(s)
}

/// Trace `f` at `example_args` and write its graph to `path` (python
/// `mx.export_function(path, f, *example_args, shapeless=...)`, swift
/// `exportFunction(to:shapeless:_:)`). With `shapeless`, the import accepts
/// inputs of any shape with the same dtypes and ranks.
pub fn export_function(
  path: impl AsRef<Path>,
  f: &Closure,
  example_args: &[Array],
  shapeless: bool,
) -> Result<()> {
  let c_path = path_cstring(path.as_ref())?;
  let args = VectorArray::from_arrays(example_args)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live handles and NUL-terminated path for the call.
  check_call(unsafe { mlxrs_sys::mlx_export_function(c_path.as_ptr(), f.0, args.0, shapeless) })
}

/// The function exported to `path`, as a [`Closure`] (python
/// `mx.import_function(path)`, swift `importFunction(from:)`). Calling it
/// with inputs matching none of the exported signatures is an error that
/// lists them.
///
/// The file is read now (a bad file fails here) and once more by each
/// other thread that calls the closure: MLX 0.32 binds imported ops to the
/// stream of the first thread that used MLX, so each calling thread gets
/// its own copy, with its ops moved to that thread's default streams. The
/// file must therefore stay in place while the closure is used from new
/// threads.
pub fn import_function(path: impl AsRef<Path>) -> Result<Closure> {
  let path = path.as_ref();
  if let Err(e) = std::fs::metadata(path) {
    return Err(Error::Io {
      path: path.display().to_string(),
      source: e,
    });
  }
  let c_path = path_cstring(path)?;
  let mut res = Closure::null();
  // SAFETY: NUL-terminated path for the call; out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlx_import_function(&mut res.0, c_path.as_ptr()) })?;
  Ok(res)
}

/// Trace `f` at positional `example_args` and keyword `example_kwargs` and
/// write its graph to `path` (python `mx.export_function(path, f,
/// *example_args, shapeless=..., **example_kwargs)`; C
/// `mlx_export_function_kwargs`). The import must be called with the same
/// keyword names; a keyword-only function takes `example_args = &[]`.
pub fn export_function_kwargs(
  path: impl AsRef<Path>,
  f: &ClosureKwargs,
  example_args: &[Array],
  example_kwargs: &Kwargs,
  shapeless: bool,
) -> Result<()> {
  let c_path = path_cstring(path.as_ref())?;
  let args = VectorArray::from_arrays(example_args)?;
  let kwargs = crate::io::c_array_map(example_kwargs)?;
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: live handles and NUL-terminated path for the call.
  check_call(unsafe {
    mlxrs_sys::mlx_export_function_kwargs(c_path.as_ptr(), f.0, args.0, kwargs.0, shapeless)
  })
}

/// [`import_function`] as a [`ClosureKwargs`], for functions exported with
/// keyword arrays (python `imported(*args, **kwargs)`; mlx-c
/// `mlx_imported_function_apply_kwargs`). Also calls functions exported
/// without keywords (pass an empty map).
pub fn import_function_kwargs(path: impl AsRef<Path>) -> Result<ClosureKwargs> {
  let path = path.as_ref();
  if let Err(e) = std::fs::metadata(path) {
    return Err(Error::Io {
      path: path.display().to_string(),
      source: e,
    });
  }
  let c_path = path_cstring(path)?;
  let mut res = ClosureKwargs::null();
  // SAFETY: NUL-terminated path for the call; out-handle owned by `res`.
  check_call(unsafe { mlxrs_sys::mlxrs_import_function_kwargs(&mut res.0, c_path.as_ptr()) })?;
  Ok(res)
}

/// Several traces of one function in one file, e.g. one per input shape or
/// per number of inputs (python `mx.exporter(path, f, shapeless=...)`,
/// swift `exportFunctions(to:shapeless:_:build:)`). The file is complete
/// after each [`trace`](Self::trace); dropping the exporter closes it.
pub struct FunctionExporter(mlxrs_sys::mlx_function_exporter);

// SAFETY: the handle owns a C++ FunctionExporter (an open file and a copy of
// a `Closure`'s function, which is `Send`); it is only used through
// `&mut self`.
unsafe impl Send for FunctionExporter {}

impl Drop for FunctionExporter {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_function_exporter_free(self.0) };
  }
}

impl std::fmt::Debug for FunctionExporter {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.debug_struct("FunctionExporter")
      .field("ctx", &self.0.ctx)
      .finish()
  }
}

impl FunctionExporter {
  /// Create (truncate) `path` for traces of `f`.
  pub fn new(path: impl AsRef<Path>, f: &Closure, shapeless: bool) -> Result<FunctionExporter> {
    let c_path = path_cstring(path.as_ref())?;
    // SAFETY: live closure and NUL-terminated path for the call.
    let raw = unsafe { mlxrs_sys::mlx_function_exporter_new(c_path.as_ptr(), f.0, shapeless) };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(FunctionExporter(raw))
  }

  /// Create (truncate) `path` for traces of a function of positional and
  /// keyword arrays (python `mx.exporter(path, f)` with `f(*args,
  /// **kwargs)`); trace it with [`trace_kwargs`](Self::trace_kwargs).
  pub fn new_kwargs(
    path: impl AsRef<Path>,
    f: &ClosureKwargs,
    shapeless: bool,
  ) -> Result<FunctionExporter> {
    let c_path = path_cstring(path.as_ref())?;
    // SAFETY: live closure and NUL-terminated path for the call.
    let raw =
      unsafe { mlxrs_sys::mlxrs_function_exporter_new_kwargs(c_path.as_ptr(), f.0, shapeless) };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(FunctionExporter(raw))
  }

  /// Trace at positional and keyword arrays and append the trace (python
  /// `exporter(*args, **kwargs)`).
  pub fn trace_kwargs(&mut self, args: &[Array], kwargs: &Kwargs) -> Result<()> {
    let v = VectorArray::from_arrays(args)?;
    let m = crate::io::c_array_map(kwargs)?;
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live handles for the call.
    check_call(unsafe { mlxrs_sys::mlx_function_exporter_apply_kwargs(self.0, v.0, m.0) })
  }

  /// Trace the function at `args` and append the trace (python
  /// `exporter(*args)`). A signature already traced is an error.
  pub fn trace(&mut self, args: &[Array]) -> Result<()> {
    let v = VectorArray::from_arrays(args)?;
    let _lock = crate::eval_lock::eval_guard();
    // SAFETY: live handles for the call.
    check_call(unsafe { mlxrs_sys::mlx_function_exporter_apply(self.0, v.0) })
  }
}

/// The graph computing `outputs` in Graphviz dot format (python
/// `mx.export_to_dot(file, *outputs)`, which writes it to a file; render with
/// `dot -Tsvg`).
pub fn export_to_dot(outputs: &[Array]) -> Result<String> {
  let v = VectorArray::from_arrays(outputs)?;
  let mut s = MlxString::new();
  // SAFETY: live vector; out-handle owned by `s`.
  crate::error::check(unsafe { mlxrs_sys::mlxrs_export_to_dot(&mut s.0, v.0) })?;
  Ok(s.as_str().into_owned())
}

/// The graph computing `outputs` as text, one line per node (C++
/// `print_graph`).
pub fn print_graph(outputs: &[Array]) -> Result<String> {
  let v = VectorArray::from_arrays(outputs)?;
  let mut s = MlxString::new();
  // SAFETY: live vector; out-handle owned by `s`.
  crate::error::check(unsafe { mlxrs_sys::mlxrs_print_graph(&mut s.0, v.0) })?;
  Ok(s.as_str().into_owned())
}

// ------------------------------------------------------------------ callbacks

/// One argument of a traced primitive (C++ `StateT`), in an
/// [`ExportValue::States`] list.
#[derive(Clone, Debug, PartialEq)]
pub enum ExportState {
  /// `bool`.
  Bool(bool),
  /// `int`.
  Int(i32),
  /// `size_t`.
  Size(u64),
  /// `float`.
  Float(f32),
  /// `double`.
  Double(f64),
  /// A dtype.
  Dtype(crate::Dtype),
  /// A shape (python: a tuple).
  Shape(Vec<i32>),
  /// Strides.
  Strides(Vec<i64>),
  /// `std::vector<int>` (e.g. axes).
  Ints(Vec<i32>),
  /// `std::vector<size_t>`.
  Sizes(Vec<u64>),
  /// `std::vector<std::tuple<bool, bool, bool>>`.
  BoolTriples(Vec<(bool, bool, bool)>),
  /// `std::vector<std::variant<bool, int, float>>`.
  Scalars(Vec<crate::fast::ScalarArg>),
  /// `std::optional<float>`.
  OptionalFloat(Option<f32>),
  /// A string.
  String(String),
}

/// One value of an [`ExportEvent`] (C++ `ExportCallbackInput`'s variant).
#[derive(Clone, Debug)]
pub enum ExportValue {
  /// `(name, shape, dtype)` of graph tensors (python: a list of tuples).
  TensorSpecs(Vec<(String, Vec<i32>, crate::Dtype)>),
  /// Named arrays (the `"constants"`).
  NamedArrays(Vec<(String, Array)>),
  /// Pairs of strings (the `"keywords"`: keyword name, tensor name).
  NamedStrings(Vec<(String, String)>),
  /// A primitive's `"arguments"`.
  States(Vec<ExportState>),
  /// A string (`"type"`, a primitive's `"name"`).
  String(String),
}

/// One event of a traced graph, as python's export callback receives it: a
/// dict with `"type"` = `"inputs"`, `"keyword_inputs"`, `"outputs"`,
/// `"constants"` or `"primitive"` and the matching entries.
pub type ExportEvent = std::collections::HashMap<String, ExportValue>;

fn bad_event(msg: impl std::fmt::Display) -> Error {
  Error::Mlx(format!(
    "export callback: malformed event from the C layer: {msg}"
  ))
}

fn json_f64(v: &serde_json::Value) -> Result<f64> {
  match v {
    serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| bad_event("number")),
    serde_json::Value::String(s) => match s.as_str() {
      "nan" => Ok(f64::NAN),
      "inf" => Ok(f64::INFINITY),
      "-inf" => Ok(f64::NEG_INFINITY),
      _ => Err(bad_event(format!("number {s:?}"))),
    },
    _ => Err(bad_event("number")),
  }
}

fn json_i64s(v: &serde_json::Value) -> Result<Vec<i64>> {
  v.as_array()
    .ok_or_else(|| bad_event("list"))?
    .iter()
    .map(|x| x.as_i64().ok_or_else(|| bad_event("integer")))
    .collect()
}

fn json_u64s(v: &serde_json::Value) -> Result<Vec<u64>> {
  v.as_array()
    .ok_or_else(|| bad_event("list"))?
    .iter()
    .map(|x| x.as_u64().ok_or_else(|| bad_event("size")))
    .collect()
}

fn json_i32s(v: &serde_json::Value) -> Result<Vec<i32>> {
  json_i64s(v)?
    .into_iter()
    .map(|x| i32::try_from(x).map_err(|_| bad_event("int32")))
    .collect()
}

fn json_dtype(v: &serde_json::Value) -> Result<crate::Dtype> {
  use mlxrs_sys::mlx_dtype as D;
  const ALL: [D; 14] = [
    D::MLX_BOOL,
    D::MLX_UINT8,
    D::MLX_UINT16,
    D::MLX_UINT32,
    D::MLX_UINT64,
    D::MLX_INT8,
    D::MLX_INT16,
    D::MLX_INT32,
    D::MLX_INT64,
    D::MLX_FLOAT16,
    D::MLX_FLOAT32,
    D::MLX_FLOAT64,
    D::MLX_BFLOAT16,
    D::MLX_COMPLEX64,
  ];
  let i = v.as_u64().ok_or_else(|| bad_event("dtype"))?;
  ALL
    .into_iter()
    .find(|d| *d as u64 == i)
    .map(crate::Dtype::from_raw)
    .ok_or_else(|| bad_event(format!("dtype {i}")))
}

fn json_str(v: &serde_json::Value) -> Result<String> {
  v.as_str()
    .map(str::to_string)
    .ok_or_else(|| bad_event("string"))
}

fn json_pairs(v: &serde_json::Value) -> Result<&Vec<serde_json::Value>> {
  v.as_array().ok_or_else(|| bad_event("list"))
}

fn json_state(v: &serde_json::Value) -> Result<ExportState> {
  let (k, x) = v
    .as_object()
    .and_then(|o| o.iter().next())
    .ok_or_else(|| bad_event("state"))?;
  Ok(match k.as_str() {
    "bool" => ExportState::Bool(x.as_bool().ok_or_else(|| bad_event("bool"))?),
    "int" => ExportState::Int(
      x.as_i64()
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(|| bad_event("int"))?,
    ),
    "size" => ExportState::Size(x.as_u64().ok_or_else(|| bad_event("size"))?),
    "float" => ExportState::Float(json_f64(x)? as f32),
    "double" => ExportState::Double(json_f64(x)?),
    "dtype" => ExportState::Dtype(json_dtype(x)?),
    "shape" => ExportState::Shape(json_i32s(x)?),
    "strides" => ExportState::Strides(json_i64s(x)?),
    "ints" => ExportState::Ints(json_i32s(x)?),
    "sizes" => ExportState::Sizes(json_u64s(x)?),
    "bool_triples" => ExportState::BoolTriples(
      json_pairs(x)?
        .iter()
        .map(|t| {
          let b = |i: usize| {
            t.get(i)
              .and_then(|v| v.as_bool())
              .ok_or_else(|| bad_event("bool triple"))
          };
          Ok((b(0)?, b(1)?, b(2)?))
        })
        .collect::<Result<_>>()?,
    ),
    "scalars" => ExportState::Scalars(
      json_pairs(x)?
        .iter()
        .map(|s| match json_state(s)? {
          ExportState::Bool(b) => Ok(crate::fast::ScalarArg::Bool(b)),
          ExportState::Int(i) => Ok(crate::fast::ScalarArg::Int(i)),
          ExportState::Float(f) => Ok(crate::fast::ScalarArg::Float(f)),
          _ => Err(bad_event("scalar")),
        })
        .collect::<Result<_>>()?,
    ),
    "optional_float" => ExportState::OptionalFloat(if x.is_null() {
      None
    } else {
      Some(json_f64(x)? as f32)
    }),
    "string" => ExportState::String(json_str(x)?),
    other => return Err(bad_event(format!("state kind {other:?}"))),
  })
}

/// Decode the C layer's JSON event (see `mlxrs_c.h`).
fn decode_event(json: &str, arrays: &[Array]) -> Result<ExportEvent> {
  let v: serde_json::Value = serde_json::from_str(json).map_err(bad_event)?;
  let obj = v.as_object().ok_or_else(|| bad_event("not an object"))?;
  let mut out = ExportEvent::with_capacity(obj.len());
  for (key, val) in obj {
    let (kind, x) = val
      .as_object()
      .and_then(|o| o.iter().next())
      .ok_or_else(|| bad_event("value"))?;
    let value = match kind.as_str() {
      "tensor_specs" => ExportValue::TensorSpecs(
        json_pairs(x)?
          .iter()
          .map(|t| {
            let name = json_str(t.get(0).ok_or_else(|| bad_event("spec"))?)?;
            let shape = json_i32s(t.get(1).ok_or_else(|| bad_event("spec"))?)?;
            let dtype = json_dtype(t.get(2).ok_or_else(|| bad_event("spec"))?)?;
            Ok((name, shape, dtype))
          })
          .collect::<Result<_>>()?,
      ),
      "named_arrays" => ExportValue::NamedArrays(
        json_pairs(x)?
          .iter()
          .map(|t| {
            let name = json_str(t.get(0).ok_or_else(|| bad_event("named array"))?)?;
            let i = t
              .get(1)
              .and_then(|i| i.as_u64())
              .ok_or_else(|| bad_event("array index"))? as usize;
            let a = arrays
              .get(i)
              .cloned()
              .ok_or_else(|| bad_event("array index out of range"))?;
            Ok((name, a))
          })
          .collect::<Result<_>>()?,
      ),
      "named_strings" => ExportValue::NamedStrings(
        json_pairs(x)?
          .iter()
          .map(|t| {
            let a = json_str(t.get(0).ok_or_else(|| bad_event("pair"))?)?;
            let b = json_str(t.get(1).ok_or_else(|| bad_event("pair"))?)?;
            Ok((a, b))
          })
          .collect::<Result<_>>()?,
      ),
      "states" => ExportValue::States(
        json_pairs(x)?
          .iter()
          .map(json_state)
          .collect::<Result<_>>()?,
      ),
      "string" => ExportValue::String(json_str(x)?),
      other => return Err(bad_event(format!("value kind {other:?}"))),
    };
    out.insert(key.clone(), value);
  }
  Ok(out)
}

unsafe extern "C" fn export_callback_call<F>(
  json: *const std::ffi::c_char,
  arrays: mlxrs_sys::mlx_vector_array,
  p: *mut std::ffi::c_void,
) -> std::ffi::c_int
where
  F: FnMut(&ExportEvent) -> Result<()> + Send + 'static,
{
  crate::closure::guarded(|| {
    // SAFETY: `p` is this callback's live payload (C-layer contract).
    let p = unsafe { crate::closure::payload::<std::sync::Mutex<F>>(p) };
    if json.is_null() {
      return Err(bad_event("null"));
    }
    // SAFETY: the C layer passes a NUL-terminated string alive for the call.
    let text = unsafe { std::ffi::CStr::from_ptr(json) }.to_string_lossy();
    let arrays = crate::closure::arrays_of(arrays)?;
    let ev = decode_event(&text, &arrays)?;
    p.with(|m| {
      let mut f = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
      f(&ev)
    })
  })
}

/// Trace `f` at `example_args` / `example_kwargs` and hand the graph to
/// `callback`, one [`ExportEvent`] at a time, instead of writing a file
/// (python `mx.export_function(callback, f, *args, shapeless=...,
/// **kwargs)`; C++ `export_function(ExportCallback, ...)`). Events come in
/// python's order: `"inputs"`, `"keyword_inputs"` (with keywords),
/// `"outputs"`, `"constants"`, then one `"primitive"` per graph node. An
/// `Err` from the callback stops the export and is returned.
pub fn export_function_callback<F>(
  callback: F,
  f: &ClosureKwargs,
  example_args: &[Array],
  example_kwargs: &Kwargs,
  shapeless: bool,
) -> Result<()>
where
  F: FnMut(&ExportEvent) -> Result<()> + Send + 'static,
{
  let args = VectorArray::from_arrays(example_args)?;
  let kwargs = crate::io::c_array_map(example_kwargs)?;
  let p = crate::closure::into_payload(std::sync::Mutex::new(callback));
  let _lock = crate::eval_lock::eval_guard();
  // SAFETY: the trampoline and destructor match the payload's type; the C
  // layer owns `p` from here (and drops it on every path); live handles.
  check_call(unsafe {
    mlxrs_sys::mlxrs_export_function_callback(
      Some(export_callback_call::<F>),
      p,
      Some(crate::closure::drop_payload::<std::sync::Mutex<F>>),
      f.0,
      args.0,
      kwargs.0,
      shapeless,
    )
  })
}

impl FunctionExporter {
  /// An exporter handing each trace's graph to `callback` (python
  /// `mx.exporter(callback, f)`); trace with [`trace`](Self::trace) /
  /// [`trace_kwargs`](Self::trace_kwargs).
  pub fn new_callback<F>(
    callback: F,
    f: &ClosureKwargs,
    shapeless: bool,
  ) -> Result<FunctionExporter>
  where
    F: FnMut(&ExportEvent) -> Result<()> + Send + 'static,
  {
    let p = crate::closure::into_payload(std::sync::Mutex::new(callback));
    // SAFETY: as in `export_function_callback`; NULL ctx on failure, with
    // the payload already dropped.
    let raw = unsafe {
      mlxrs_sys::mlxrs_function_exporter_new_callback(
        Some(export_callback_call::<F>),
        p,
        Some(crate::closure::drop_payload::<std::sync::Mutex<F>>),
        f.0,
        shapeless,
      )
    };
    if raw.ctx.is_null() {
      return Err(Error::Mlx(last_error()));
    }
    Ok(FunctionExporter(raw))
  }
}
