//! Argument conversions shared by the generated wrappers (`*/generated.rs`).

use mlxrs_sys::{
  mlx_array, mlx_optional_bool, mlx_optional_dtype, mlx_optional_float, mlx_optional_int,
};

use crate::array::Array;
use crate::dtype::Dtype;

/// `Option<&Array>` as the C layer's optional array: a NULL-ctx handle means
/// absent (C++ `std::nullopt`).
pub(crate) fn opt_array(a: Option<&Array>) -> mlx_array {
  a.map_or(
    mlx_array {
      ctx: std::ptr::null_mut(),
    },
    |a| a.0,
  )
}

pub(crate) fn opt_int(v: Option<i32>) -> mlx_optional_int {
  mlx_optional_int {
    value: v.unwrap_or(0),
    has_value: v.is_some(),
  }
}

pub(crate) fn opt_float(v: Option<f32>) -> mlx_optional_float {
  mlx_optional_float {
    value: v.unwrap_or(0.0),
    has_value: v.is_some(),
  }
}

pub(crate) fn opt_bool(v: Option<bool>) -> mlx_optional_bool {
  mlx_optional_bool {
    value: v.unwrap_or(false),
    has_value: v.is_some(),
  }
}

pub(crate) fn opt_dtype(v: Option<Dtype>) -> mlx_optional_dtype {
  mlx_optional_dtype {
    value: v.unwrap_or(Dtype::Float32).to_raw(),
    has_value: v.is_some(),
  }
}

/// An optional int list: a NULL pointer means absent.
pub(crate) fn opt_ints_ptr(v: Option<&[i32]>) -> *const i32 {
  v.map_or(std::ptr::null(), <[i32]>::as_ptr)
}

pub(crate) fn opt_ints_len(v: Option<&[i32]>) -> usize {
  v.map_or(0, <[i32]>::len)
}
