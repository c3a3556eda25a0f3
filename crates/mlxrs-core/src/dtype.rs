//! Element types: [`Dtype`] mirrors python `mx.Dtype` (`mx.float32`, ...) and
//! swift `DType`; [`ArrayElement`] ties each Rust element type to its dtype so
//! typed reads check the type at run time and never reinterpret memory.

use half::{bf16, f16};
use mlxrs_sys::mlx_dtype;
use num_complex::Complex32;

/// An MLX element type. Python: `mx.bool_`, `mx.uint8` .. `mx.complex64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
  /// `mx.bool_`
  Bool,
  /// `mx.uint8`
  Uint8,
  /// `mx.uint16`
  Uint16,
  /// `mx.uint32`
  Uint32,
  /// `mx.uint64`
  Uint64,
  /// `mx.int8`
  Int8,
  /// `mx.int16`
  Int16,
  /// `mx.int32`
  Int32,
  /// `mx.int64`
  Int64,
  /// `mx.float16`
  Float16,
  /// `mx.float32`
  Float32,
  /// `mx.float64` (CPU only in MLX)
  Float64,
  /// `mx.bfloat16`
  Bfloat16,
  /// `mx.complex64`
  Complex64,
}

impl Dtype {
  /// Every dtype, in mlx-c's enum order.
  pub const ALL: [Dtype; 14] = [
    Dtype::Bool,
    Dtype::Uint8,
    Dtype::Uint16,
    Dtype::Uint32,
    Dtype::Uint64,
    Dtype::Int8,
    Dtype::Int16,
    Dtype::Int32,
    Dtype::Int64,
    Dtype::Float16,
    Dtype::Float32,
    Dtype::Float64,
    Dtype::Bfloat16,
    Dtype::Complex64,
  ];

  /// The C enum value.
  pub fn to_raw(self) -> mlx_dtype {
    match self {
      Dtype::Bool => mlx_dtype::MLX_BOOL,
      Dtype::Uint8 => mlx_dtype::MLX_UINT8,
      Dtype::Uint16 => mlx_dtype::MLX_UINT16,
      Dtype::Uint32 => mlx_dtype::MLX_UINT32,
      Dtype::Uint64 => mlx_dtype::MLX_UINT64,
      Dtype::Int8 => mlx_dtype::MLX_INT8,
      Dtype::Int16 => mlx_dtype::MLX_INT16,
      Dtype::Int32 => mlx_dtype::MLX_INT32,
      Dtype::Int64 => mlx_dtype::MLX_INT64,
      Dtype::Float16 => mlx_dtype::MLX_FLOAT16,
      Dtype::Float32 => mlx_dtype::MLX_FLOAT32,
      Dtype::Float64 => mlx_dtype::MLX_FLOAT64,
      Dtype::Bfloat16 => mlx_dtype::MLX_BFLOAT16,
      Dtype::Complex64 => mlx_dtype::MLX_COMPLEX64,
    }
  }

  /// From the C enum value.
  pub fn from_raw(raw: mlx_dtype) -> Dtype {
    match raw {
      mlx_dtype::MLX_BOOL => Dtype::Bool,
      mlx_dtype::MLX_UINT8 => Dtype::Uint8,
      mlx_dtype::MLX_UINT16 => Dtype::Uint16,
      mlx_dtype::MLX_UINT32 => Dtype::Uint32,
      mlx_dtype::MLX_UINT64 => Dtype::Uint64,
      mlx_dtype::MLX_INT8 => Dtype::Int8,
      mlx_dtype::MLX_INT16 => Dtype::Int16,
      mlx_dtype::MLX_INT32 => Dtype::Int32,
      mlx_dtype::MLX_INT64 => Dtype::Int64,
      mlx_dtype::MLX_FLOAT16 => Dtype::Float16,
      mlx_dtype::MLX_FLOAT32 => Dtype::Float32,
      mlx_dtype::MLX_FLOAT64 => Dtype::Float64,
      mlx_dtype::MLX_BFLOAT16 => Dtype::Bfloat16,
      mlx_dtype::MLX_COMPLEX64 => Dtype::Complex64,
    }
  }

  /// Bytes per element (`mx.Dtype.size`).
  pub fn size(self) -> usize {
    match self {
      Dtype::Bool | Dtype::Uint8 | Dtype::Int8 => 1,
      Dtype::Uint16 | Dtype::Int16 | Dtype::Float16 | Dtype::Bfloat16 => 2,
      Dtype::Uint32 | Dtype::Int32 | Dtype::Float32 => 4,
      Dtype::Uint64 | Dtype::Int64 | Dtype::Float64 | Dtype::Complex64 => 8,
    }
  }

  /// Floating point (incl. half types), as `mx.issubdtype(t, mx.floating)`.
  pub fn is_float(self) -> bool {
    matches!(
      self,
      Dtype::Float16 | Dtype::Float32 | Dtype::Float64 | Dtype::Bfloat16
    )
  }

  /// Signed or unsigned integer (not bool).
  pub fn is_integer(self) -> bool {
    matches!(
      self,
      Dtype::Uint8
        | Dtype::Uint16
        | Dtype::Uint32
        | Dtype::Uint64
        | Dtype::Int8
        | Dtype::Int16
        | Dtype::Int32
        | Dtype::Int64
    )
  }

  /// Parse the names used by python (`"float32"`, `"bfloat16"`, `"bool"`...)
  /// and safetensors (`"F32"`, `"BF16"`, `"I64"`...).
  pub fn parse(name: &str) -> Option<Dtype> {
    Some(match name {
      "bool" | "bool_" | "BOOL" => Dtype::Bool,
      "uint8" | "U8" => Dtype::Uint8,
      "uint16" | "U16" => Dtype::Uint16,
      "uint32" | "U32" => Dtype::Uint32,
      "uint64" | "U64" => Dtype::Uint64,
      "int8" | "I8" => Dtype::Int8,
      "int16" | "I16" => Dtype::Int16,
      "int32" | "I32" => Dtype::Int32,
      "int64" | "I64" => Dtype::Int64,
      "float16" | "F16" | "half" => Dtype::Float16,
      "float32" | "F32" | "float" => Dtype::Float32,
      "float64" | "F64" | "double" => Dtype::Float64,
      "bfloat16" | "BF16" => Dtype::Bfloat16,
      "complex64" | "C64" => Dtype::Complex64,
      _ => return None,
    })
  }
}

impl std::fmt::Display for Dtype {
  fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let s = match self {
      Dtype::Bool => "bool",
      Dtype::Uint8 => "uint8",
      Dtype::Uint16 => "uint16",
      Dtype::Uint32 => "uint32",
      Dtype::Uint64 => "uint64",
      Dtype::Int8 => "int8",
      Dtype::Int16 => "int16",
      Dtype::Int32 => "int32",
      Dtype::Int64 => "int64",
      Dtype::Float16 => "float16",
      Dtype::Float32 => "float32",
      Dtype::Float64 => "float64",
      Dtype::Bfloat16 => "bfloat16",
      Dtype::Complex64 => "complex64",
    };
    f.write_str(s)
  }
}

mod sealed {
  pub trait Sealed {}
}

/// A Rust type whose values have exactly the in-memory layout of one MLX
/// dtype's elements. Sealed: implemented for `bool`, `u8`..`u64`,
/// `i8`..`i64`, [`f16`], [`bf16`], `f32`, `f64` and [`Complex32`].
pub trait ArrayElement: sealed::Sealed + Copy + Default + 'static {
  /// The matching dtype.
  const DTYPE: Dtype;
}

macro_rules! element {
  ($($t:ty => $d:ident),* $(,)?) => {$(
    impl sealed::Sealed for $t {}
    impl ArrayElement for $t {
      const DTYPE: Dtype = Dtype::$d;
    }
  )*};
}

element!(
  bool => Bool,
  u8 => Uint8,
  u16 => Uint16,
  u32 => Uint32,
  u64 => Uint64,
  i8 => Int8,
  i16 => Int16,
  i32 => Int32,
  i64 => Int64,
  f16 => Float16,
  bf16 => Bfloat16,
  f32 => Float32,
  f64 => Float64,
  Complex32 => Complex64,
);

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn raw_round_trip_and_sizes_match_mlx() {
    for d in Dtype::ALL {
      assert_eq!(Dtype::from_raw(d.to_raw()), d);
      // SAFETY: `mlx_dtype_size` is a pure query on a valid enum value.
      let mlx_size = unsafe { mlxrs_sys::mlx_dtype_size(d.to_raw()) };
      assert_eq!(mlx_size, d.size(), "{d}");
      assert_eq!(Dtype::parse(&d.to_string()), Some(d));
    }
  }
}
