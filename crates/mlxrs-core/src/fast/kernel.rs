//! Custom GPU kernels written in CUDA or Metal source: python
//! `mx.fast.cuda_kernel` / `mx.fast.metal_kernel`, C++
//! `mlx::core::fast::cuda_kernel` / `metal_kernel`.
//!
//! Build a [`CustomKernel`] once with [`KernelBuilder`] (the source is the
//! kernel *body*; MLX writes the signature from the input / output names and
//! compiles it on first use), then [`CustomKernel::apply`] it with a
//! [`KernelCall`] (python's keyword arguments of the returned function):
//!
//! ```no_run
//! use mlxrs_core::{Array, Dtype, fast::kernel::{KernelBuilder, KernelCall}};
//! // python: k = mx.fast.cuda_kernel(name="myexp", input_names=["inp"],
//! //           output_names=["out"], source=src)
//! let src = "auto i = cg::this_grid().thread_rank(); if (i < N) out[i] = exp(inp[i]);";
//! let k = KernelBuilder::cuda("myexp", &["inp"], &["out"], src).build()?;
//! let a = Array::from_slice::<f32>(&[0.0, 1.0, 2.0], &[3])?;
//! // python: k(inputs=[a], template=[("N", 3)], grid=(3, 1, 1),
//! //           threadgroup=(256, 1, 1), output_shapes=[a.shape],
//! //           output_dtypes=[a.dtype])
//! let out = k.apply(
//!   &[a],
//!   &KernelCall::new((3, 1, 1), (256, 1, 1)).output(&[3], Dtype::Float32).template_int("N", 3),
//! )?;
//! # Ok::<(), mlxrs_core::Error>(())
//! ```
//!
//! `grid` counts threads (not blocks), as in python; MLX launches
//! `ceil(grid / threadgroup)` blocks, so guard the index. Without a CUDA
//! back-end (the CPU and Metal builds) [`KernelBuilder::build`] of a CUDA
//! kernel is an [`Error::Mlx`] ("No CUDA back-end"); without Metal, a Metal
//! kernel builds but [`CustomKernel::apply`] fails ("No Metal back-end").

use std::ffi::{CString, c_char};

use crate::array::Array;
use crate::dtype::Dtype;
use crate::error::{Error, Result, check, cstring};
use crate::stream::default_stream;
use crate::vector::VectorArray;

/// Which GPU language a kernel is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLanguage {
  /// CUDA C++ (python `mx.fast.cuda_kernel`).
  Cuda,
  /// Metal shading language (python `mx.fast.metal_kernel`).
  Metal,
}

/// A compile-time argument of a kernel (python's `template=[(name, value)]`):
/// an `int` / `bool` constant or a type alias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateArg {
  /// `constexpr int name = value;`
  Int(i32),
  /// `constexpr bool name = value;`
  Bool(bool),
  /// `using name = <the dtype's C type>;`
  Dtype(Dtype),
}

/// How to make a kernel (python `mx.fast.cuda_kernel(...)` /
/// `mx.fast.metal_kernel(...)` arguments).
#[derive(Clone, Debug)]
pub struct KernelBuilder {
  language: KernelLanguage,
  name: String,
  input_names: Vec<String>,
  output_names: Vec<String>,
  source: String,
  header: String,
  ensure_row_contiguous: bool,
  shared_memory: i32,
  atomic_outputs: bool,
}

impl KernelBuilder {
  /// A CUDA kernel (python `mx.fast.cuda_kernel(name, input_names,
  /// output_names, source)`).
  pub fn cuda(
    name: &str,
    input_names: &[&str],
    output_names: &[&str],
    source: &str,
  ) -> KernelBuilder {
    Self::new(
      KernelLanguage::Cuda,
      name,
      input_names,
      output_names,
      source,
    )
  }

  /// A Metal kernel (python `mx.fast.metal_kernel(name, input_names,
  /// output_names, source)`).
  pub fn metal(
    name: &str,
    input_names: &[&str],
    output_names: &[&str],
    source: &str,
  ) -> KernelBuilder {
    Self::new(
      KernelLanguage::Metal,
      name,
      input_names,
      output_names,
      source,
    )
  }

  fn new(
    language: KernelLanguage,
    name: &str,
    input_names: &[&str],
    output_names: &[&str],
    source: &str,
  ) -> KernelBuilder {
    KernelBuilder {
      language,
      name: name.into(),
      input_names: input_names.iter().map(|s| s.to_string()).collect(),
      output_names: output_names.iter().map(|s| s.to_string()).collect(),
      source: source.into(),
      header: String::new(),
      ensure_row_contiguous: true,
      shared_memory: 0,
      atomic_outputs: false,
    }
  }

  /// Code placed before the kernel (python `header=`): includes, helpers.
  pub fn header(mut self, header: &str) -> Self {
    self.header = header.into();
    self
  }

  /// Copy inputs to row-contiguous layout first (python
  /// `ensure_row_contiguous=True`, the default).
  pub fn ensure_row_contiguous(mut self, yes: bool) -> Self {
    self.ensure_row_contiguous = yes;
    self
  }

  /// Dynamic shared memory in bytes (CUDA only; python `shared_memory=`).
  pub fn shared_memory(mut self, bytes: i32) -> Self {
    self.shared_memory = bytes;
    self
  }

  /// Outputs are atomic types (Metal only; python `atomic_outputs=`).
  pub fn atomic_outputs(mut self, yes: bool) -> Self {
    self.atomic_outputs = yes;
    self
  }

  /// Make the kernel. Errors: no output names, a name with a NUL byte, or
  /// no back-end for the language (CUDA on a CPU / Metal build).
  pub fn build(self) -> Result<CustomKernel> {
    if self.output_names.is_empty() {
      return Err(Error::InvalidArgument(format!(
        "custom kernel {:?}: at least one output name is needed",
        self.name
      )));
    }
    let to_c = |v: &[String]| {
      v.iter()
        .map(|s| cstring(s))
        .collect::<Result<Vec<CString>>>()
    };
    let (ins, outs) = (to_c(&self.input_names)?, to_c(&self.output_names)?);
    let in_ptrs: Vec<*const c_char> = ins.iter().map(|c| c.as_ptr()).collect();
    let out_ptrs: Vec<*const c_char> = outs.iter().map(|c| c.as_ptr()).collect();
    let (name, source, header) = (
      cstring(&self.name)?,
      cstring(&self.source)?,
      cstring(&self.header)?,
    );
    let handle = match self.language {
      KernelLanguage::Cuda => {
        let mut k = mlxrs_sys::mlx_fast_cuda_kernel {
          ctx: std::ptr::null_mut(),
        };
        // SAFETY: every string and pointer array lives across the call and
        // is only read; `k` is a fresh out-handle, freed by `CustomKernel`.
        check(unsafe {
          mlxrs_sys::mlx_fast_cuda_kernel_new(
            &mut k,
            name.as_ptr(),
            in_ptrs.as_ptr(),
            in_ptrs.len(),
            out_ptrs.as_ptr(),
            out_ptrs.len(),
            source.as_ptr(),
            header.as_ptr(),
            self.ensure_row_contiguous,
            self.shared_memory,
          )
        })?;
        k.ctx
      }
      KernelLanguage::Metal => {
        let mut k = mlxrs_sys::mlx_fast_metal_kernel {
          ctx: std::ptr::null_mut(),
        };
        // SAFETY: as above.
        check(unsafe {
          mlxrs_sys::mlx_fast_metal_kernel_new(
            &mut k,
            name.as_ptr(),
            in_ptrs.as_ptr(),
            in_ptrs.len(),
            out_ptrs.as_ptr(),
            out_ptrs.len(),
            source.as_ptr(),
            header.as_ptr(),
            self.ensure_row_contiguous,
            self.atomic_outputs,
          )
        })?;
        k.ctx
      }
    };
    Ok(CustomKernel {
      language: self.language,
      ctx: handle,
      name: self.name,
      n_inputs: self.input_names.len(),
      n_outputs: self.output_names.len(),
    })
  }
}

/// The per-call arguments (python: the keyword arguments of the kernel
/// function: `output_shapes`, `output_dtypes`, `grid`, `threadgroup`,
/// `template`, `init_value`, `verbose`).
#[derive(Clone, Debug)]
pub struct KernelCall {
  outputs: Vec<(Vec<i32>, Dtype)>,
  grid: (i32, i32, i32),
  threadgroup: (i32, i32, i32),
  template: Vec<(String, TemplateArg)>,
  init_value: Option<f32>,
  verbose: bool,
}

impl KernelCall {
  /// A call over `grid` threads in blocks of `threadgroup` threads.
  pub fn new(grid: (i32, i32, i32), threadgroup: (i32, i32, i32)) -> KernelCall {
    KernelCall {
      outputs: Vec::new(),
      grid,
      threadgroup,
      template: Vec::new(),
      init_value: None,
      verbose: false,
    }
  }

  /// Add the next output's shape and dtype (python `output_shapes`,
  /// `output_dtypes`), in the order of the output names.
  pub fn output(mut self, shape: &[i32], dtype: Dtype) -> Self {
    self.outputs.push((shape.to_vec(), dtype));
    self
  }

  /// A compile-time argument (python `template=[(name, value)]`).
  pub fn template(mut self, name: &str, value: TemplateArg) -> Self {
    self.template.push((name.into(), value));
    self
  }

  /// `template(name, TemplateArg::Int(value))`.
  pub fn template_int(self, name: &str, value: i32) -> Self {
    self.template(name, TemplateArg::Int(value))
  }

  /// `template(name, TemplateArg::Dtype(dtype))`.
  pub fn template_dtype(self, name: &str, dtype: Dtype) -> Self {
    self.template(name, TemplateArg::Dtype(dtype))
  }

  /// Fill the outputs with `value` before the kernel runs (python
  /// `init_value=`); otherwise they are uninitialised.
  pub fn init_value(mut self, value: f32) -> Self {
    self.init_value = Some(value);
    self
  }

  /// Print the generated source (python `verbose=True`).
  pub fn verbose(mut self, yes: bool) -> Self {
    self.verbose = yes;
    self
  }
}

/// Owns the C config handle while a call is prepared.
struct Config(mlxrs_sys::mlx_fast_cuda_kernel_config);

impl Drop for Config {
  fn drop(&mut self) {
    // SAFETY: owned handle; NULL ctx accepted.
    unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_free(self.0) };
  }
}

impl Config {
  fn from_call(call: &KernelCall) -> Result<Config> {
    // SAFETY: allocates a fresh config owned by the guard (NULL on failure).
    let c = Config(unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_new() });
    if c.0.ctx.is_null() {
      return Err(Error::Mlx(crate::error::last_error()));
    }
    for (shape, dt) in &call.outputs {
      // SAFETY: live config; `shape` outlives the call and is copied.
      check(unsafe {
        mlxrs_sys::mlx_fast_cuda_kernel_config_add_output_arg(
          c.0,
          shape.as_ptr(),
          shape.len(),
          dt.to_raw(),
        )
      })?;
    }
    let (g, t) = (call.grid, call.threadgroup);
    // SAFETY: plain values on a live config.
    check(unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_set_grid(c.0, g.0, g.1, g.2) })?;
    // SAFETY: plain values on a live config.
    check(unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_set_thread_group(c.0, t.0, t.1, t.2) })?;
    if let Some(v) = call.init_value {
      // SAFETY: plain value on a live config.
      check(unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_set_init_value(c.0, v) })?;
    }
    // SAFETY: plain value on a live config.
    check(unsafe { mlxrs_sys::mlx_fast_cuda_kernel_config_set_verbose(c.0, call.verbose) })?;
    for (name, arg) in &call.template {
      let n = cstring(name)?;
      // SAFETY: `n` lives across the call and is copied; live config.
      check(unsafe {
        match *arg {
          TemplateArg::Int(v) => {
            mlxrs_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(c.0, n.as_ptr(), v)
          }
          TemplateArg::Bool(v) => {
            mlxrs_sys::mlx_fast_cuda_kernel_config_add_template_arg_bool(c.0, n.as_ptr(), v)
          }
          TemplateArg::Dtype(d) => mlxrs_sys::mlx_fast_cuda_kernel_config_add_template_arg_dtype(
            c.0,
            n.as_ptr(),
            d.to_raw(),
          ),
        }
      })?;
    }
    Ok(c)
  }
}

/// A custom kernel made by [`KernelBuilder::build`] (python: the function
/// `mx.fast.cuda_kernel(...)` returns). Calling it is lazy like any op.
pub struct CustomKernel {
  language: KernelLanguage,
  ctx: *mut std::ffi::c_void,
  name: String,
  n_inputs: usize,
  n_outputs: usize,
}

// SAFETY: the handle owns a heap `std::function` that MLX calls to build a
// graph node; it captures only values (strings, flags), so moving it to
// another thread is sound. Not `Sync`.
unsafe impl Send for CustomKernel {}

impl Drop for CustomKernel {
  fn drop(&mut self) {
    // SAFETY: `ctx` was made by the matching `_new` and is owned here.
    unsafe {
      match self.language {
        KernelLanguage::Cuda => {
          mlxrs_sys::mlx_fast_cuda_kernel_free(mlxrs_sys::mlx_fast_cuda_kernel { ctx: self.ctx })
        }
        KernelLanguage::Metal => {
          mlxrs_sys::mlx_fast_metal_kernel_free(mlxrs_sys::mlx_fast_metal_kernel { ctx: self.ctx })
        }
      };
    }
  }
}

impl CustomKernel {
  /// The kernel's language.
  pub fn language(&self) -> KernelLanguage {
    self.language
  }

  /// Run the kernel on `inputs` (in the order of the input names); returns
  /// one array per output name. Python: `kernel(inputs=..., **call)`.
  pub fn apply(&self, inputs: &[Array], call: &KernelCall) -> Result<Vec<Array>> {
    if inputs.len() != self.n_inputs {
      return Err(Error::InvalidArgument(format!(
        "custom kernel {:?} takes {} inputs, got {}",
        self.name,
        self.n_inputs,
        inputs.len()
      )));
    }
    if call.outputs.len() != self.n_outputs {
      return Err(Error::InvalidArgument(format!(
        "custom kernel {:?} has {} outputs but the call gives {} output shapes/dtypes",
        self.name,
        self.n_outputs,
        call.outputs.len()
      )));
    }
    let cfg = Config::from_call(call)?;
    let ins = VectorArray::from_arrays(inputs)?;
    let mut outs = VectorArray::null();
    // SAFETY: kernel, inputs and config are live and only read; the output
    // vector is a fresh out-handle owned by `outs`.
    check(unsafe {
      match self.language {
        KernelLanguage::Cuda => mlxrs_sys::mlx_fast_cuda_kernel_apply(
          &mut outs.0,
          mlxrs_sys::mlx_fast_cuda_kernel { ctx: self.ctx },
          ins.0,
          cfg.0,
          default_stream(),
        ),
        KernelLanguage::Metal => mlxrs_sys::mlx_fast_metal_kernel_apply(
          &mut outs.0,
          mlxrs_sys::mlx_fast_metal_kernel { ctx: self.ctx },
          ins.0,
          cfg.0,
          default_stream(),
        ),
      }
    })?;
    outs.to_vec()
  }
}

/// A scalar argument of a precompiled CUDA kernel (python: an item of
/// `scalars=[...]`; C++ `fast::ScalarArg`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarArg {
  /// `bool`.
  Bool(bool),
  /// `int`.
  Int(i32),
  /// `float`.
  Float(f32),
}

/// Run a kernel already compiled to PTX or cubin (`compiled_source`, raw
/// bytes) on `inputs`: python `mx.fast.precompiled_cuda_kernel(name=...,
/// compiled_source=..., inputs=..., output_shapes=..., output_dtypes=...,
/// scalars=..., grid=..., threadgroup=..., shared_memory=..., init_value=...,
/// ensure_row_contiguous=...)`. `call` gives the outputs, `grid` (in
/// threads), `threadgroup` and `init_value`; its template arguments and
/// `verbose` have no meaning here and must be unset. The kernel's
/// parameters are the inputs, then the outputs, then `scalars`.
///
/// CUDA only: without a CUDA back-end (this CPU build, macOS) it is
/// `Err(Mlx("[cuda_kernel] No CUDA back-end."))`, as in python.
pub fn precompiled_cuda_kernel(
  name: &str,
  compiled_source: &[u8],
  inputs: &[Array],
  scalars: &[ScalarArg],
  call: &KernelCall,
  shared_memory: i32,
  ensure_row_contiguous: bool,
) -> Result<Vec<Array>> {
  if !call.template.is_empty() {
    return Err(Error::InvalidArgument(
      "precompiled_cuda_kernel: template arguments are for kernels compiled from source".into(),
    ));
  }
  if call.outputs.is_empty() {
    return Err(Error::InvalidArgument(
      "precompiled_cuda_kernel: no outputs (add them with KernelCall::output)".into(),
    ));
  }
  let c_name = cstring(name)?;
  let ins = VectorArray::from_arrays(inputs)?;
  let shapes: Vec<i32> = call
    .outputs
    .iter()
    .flat_map(|(s, _)| s.iter().copied())
    .collect();
  let ndims: Vec<usize> = call.outputs.iter().map(|(s, _)| s.len()).collect();
  let dtypes: Vec<mlxrs_sys::mlx_dtype> = call.outputs.iter().map(|(_, d)| d.to_raw()).collect();
  let sc: Vec<mlxrs_sys::mlxrs_scalar_arg> = scalars
    .iter()
    .map(|a| {
      use mlxrs_sys::mlxrs_scalar_kind as K;
      let mut c = mlxrs_sys::mlxrs_scalar_arg {
        kind: K::MLXRS_SCALAR_BOOL,
        b: false,
        i: 0,
        f: 0.0,
      };
      match *a {
        ScalarArg::Bool(b) => c.b = b,
        ScalarArg::Int(i) => (c.kind, c.i) = (K::MLXRS_SCALAR_INT, i),
        ScalarArg::Float(f) => (c.kind, c.f) = (K::MLXRS_SCALAR_FLOAT, f),
      }
      c
    })
    .collect();
  let init = mlxrs_sys::mlx_optional_float {
    value: call.init_value.unwrap_or(0.0),
    has_value: call.init_value.is_some(),
  };
  let (g, t) = (call.grid, call.threadgroup);
  let mut out = VectorArray::null();
  // SAFETY: every pointer covers the length passed with it (`shapes` holds
  // the sum of `ndims`; `dtypes` and `ndims` one entry per output) and lives
  // across the call; `ins` and the stream are live; the out-vector is owned
  // by `out`.
  check(unsafe {
    mlxrs_sys::mlx_fast_precompiled_cuda_kernel(
      &mut out.0,
      c_name.as_ptr(),
      compiled_source.as_ptr().cast::<c_char>(),
      compiled_source.len(),
      ins.0,
      shapes.as_ptr(),
      ndims.as_ptr(),
      dtypes.as_ptr(),
      dtypes.len(),
      sc.as_ptr(),
      sc.len(),
      g.0,
      g.1,
      g.2,
      t.0,
      t.1,
      t.2,
      shared_memory,
      init,
      ensure_row_contiguous,
      default_stream(),
    )
  })?;
  out.to_vec()
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Without CUDA, python's `mx.fast.precompiled_cuda_kernel(...)` raises
  /// `RuntimeError: [cuda_kernel] No CUDA back-end.`; so does this. Bad
  /// arguments are caught before MLX.
  #[test]
  fn precompiled_cuda_kernel_without_cuda_is_an_error() {
    let a = Array::from_slice::<f32>(&[1.0, 2.0], &[2]).unwrap();
    let call = KernelCall::new((2, 1, 1), (2, 1, 1)).output(&[2], Dtype::Float32);
    let scalars = [
      ScalarArg::Int(2),
      ScalarArg::Float(1.5),
      ScalarArg::Bool(true),
    ];
    let r = precompiled_cuda_kernel(
      "k",
      b"not ptx",
      std::slice::from_ref(&a),
      &scalars,
      &call,
      0,
      false,
    );
    if !crate::Device::is_available(crate::DeviceType::Gpu) {
      let e = r.expect_err("no CUDA: must fail");
      assert!(e.to_string().contains("No CUDA back-end"), "{e}");
    } else {
      // Garbage PTX must be an error on a GPU too, never a crash.
      assert!(r.is_err());
    }
    let no_out = KernelCall::new((2, 1, 1), (2, 1, 1));
    assert!(matches!(
      precompiled_cuda_kernel("k", b"", std::slice::from_ref(&a), &[], &no_out, 0, false),
      Err(Error::InvalidArgument(_))
    ));
    let tmpl = call.clone().template_int("N", 2);
    assert!(matches!(
      precompiled_cuda_kernel("k", b"", &[a], &[], &tmpl, 0, false),
      Err(Error::InvalidArgument(_))
    ));
  }

  const SRC: &str = "auto i = cg::this_grid().thread_rank(); if (i < N) out[i] = exp(inp[i]);";

  /// This machine's MLX has no CUDA back-end: building a CUDA kernel is a
  /// clear error carrying MLX's message (python raises the same
  /// `RuntimeError: [cuda_kernel] No CUDA back-end.`). Skipped on a CUDA
  /// build, where `examples/cuda_kernel.rs` checks a real kernel.
  #[test]
  fn cuda_kernel_without_cuda_is_an_error() {
    if crate::Device::is_available(crate::DeviceType::Gpu) {
      return;
    }
    let e = KernelBuilder::cuda("myexp", &["inp"], &["out"], SRC)
      .build()
      .err()
      .expect("no CUDA: must fail");
    assert!(e.to_string().contains("No CUDA back-end"), "{e}");
  }

  /// Metal kernels build anywhere; without Metal, applying one fails with
  /// python's message. Argument-count mistakes are caught first.
  #[test]
  fn metal_kernel_without_metal_and_bad_arguments() {
    let k = KernelBuilder::metal("myexp", &["inp"], &["out"], "out[0] = inp[0];")
      .build()
      .unwrap();
    let a = Array::from_slice::<f32>(&[1.0], &[1]).unwrap();
    let call = KernelCall::new((1, 1, 1), (1, 1, 1)).output(&[1], Dtype::Float32);
    assert!(k.apply(&[], &call).is_err());
    assert!(
      k.apply(
        std::slice::from_ref(&a),
        &KernelCall::new((1, 1, 1), (1, 1, 1))
      )
      .is_err()
    );
    if !cfg!(target_os = "macos") {
      let Err(e) = k.apply(&[a], &call) else {
        panic!("no Metal: must fail")
      };
      assert!(e.to_string().contains("No Metal back-end"), "{e}");
    }
    assert!(KernelBuilder::metal("k", &["a"], &[], "").build().is_err());
    assert!(
      KernelBuilder::cuda("k\0", &["a"], &["o"], "")
        .build()
        .is_err()
    );
  }
}
