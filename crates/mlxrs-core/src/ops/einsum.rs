//! Einstein summation (`mlx/einsum.h`): python `mx.einsum`,
//! `mx.einsum_path`; swift `einsum`.

use crate::array::Array;
use crate::error::{Error, Result, check, cstring};
use crate::stream::default_stream;
use crate::vector::VectorArray;

/// Einstein summation over `operands` as described by `subscripts`
/// (numpy's notation, e.g. `"ij,jk->ik"`, `"bii->bi"`, `"...ij,...jk"`).
///
/// Python: `mx.einsum(subscripts, *operands)`. C: `mlx_einsum`; C++:
/// `mlx::core::einsum` (einsum.h). Malformed subscripts or operands that do
/// not match them are an [`Error::Mlx`].
pub fn einsum(subscripts: &str, operands: &[Array]) -> Result<Array> {
  let subs = cstring(subscripts)?;
  let ops = VectorArray::from_arrays(operands)?;
  let mut res = Array::null();
  // SAFETY: `subs` and the operand vector live across the call and are only
  // read; the out-handle is fresh and owned by `res`.
  check(unsafe { mlxrs_sys::mlx_einsum(&mut res.0, subs.as_ptr(), ops.0, default_stream()) })?;
  Ok(res)
}

/// The contraction order MLX would use for [`einsum`]: the list of steps
/// (each the indices of the operands contracted at that step, numbered as
/// numpy's `einsum_path` does) and MLX's printed summary of the path.
///
/// Python: `mx.einsum_path(subscripts, *operands)`. C: `mlxrs_einsum_path`;
/// C++: `mlx::core::einsum_path` (einsum.h). Computes nothing on the arrays.
pub fn einsum_path(subscripts: &str, operands: &[Array]) -> Result<(Vec<Vec<i32>>, String)> {
  struct VecInt(mlxrs_sys::mlx_vector_int);
  impl Drop for VecInt {
    fn drop(&mut self) {
      // SAFETY: owned handle; NULL ctx accepted.
      unsafe { mlxrs_sys::mlx_vector_int_free(self.0) };
    }
  }
  impl VecInt {
    fn to_vec(&self) -> Result<Vec<i32>> {
      // SAFETY: query on an owned handle (NULL ctx yields 0).
      let n = unsafe { mlxrs_sys::mlx_vector_int_size(self.0) };
      let mut out = Vec::with_capacity(n);
      for i in 0..n {
        let mut v = 0;
        // SAFETY: `i < size`; `v` is a local out-value.
        check(unsafe { mlxrs_sys::mlx_vector_int_get(&mut v, self.0, i) })?;
        out.push(v);
      }
      Ok(out)
    }
  }
  let subs = cstring(subscripts)?;
  let ops = VectorArray::from_arrays(operands)?;
  let null = || mlxrs_sys::mlx_vector_int {
    ctx: std::ptr::null_mut(),
  };
  let (mut flat, mut lens) = (VecInt(null()), VecInt(null()));
  let mut report = crate::string::MlxString::new();
  // SAFETY: `subs` and the operand vector live across the call and are only
  // read; the three out-handles are fresh and owned by the guards above.
  check(unsafe {
    mlxrs_sys::mlxrs_einsum_path(
      &mut flat.0,
      &mut lens.0,
      &mut report.0,
      subs.as_ptr(),
      ops.0,
    )
  })?;
  let (flat, lens) = (flat.to_vec()?, lens.to_vec()?);
  let mut path = Vec::with_capacity(lens.len());
  let mut at = 0usize;
  for l in lens {
    let end = at + l.max(0) as usize;
    let step = flat
      .get(at..end)
      .ok_or_else(|| Error::Mlx("einsum_path: inconsistent path lengths".into()))?;
    path.push(step.to_vec());
    at = end;
  }
  Ok((path, report.as_str().into_owned()))
}

#[cfg(test)]
mod tests {
  use super::*;

  /// `[[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]]`; the
  /// trace `ii` of the first is 5; `ij->ji` transposes.
  #[test]
  fn matmul_trace_transpose() {
    let a = Array::from_slice::<f32>(&[1.0, 2.0, 3.0, 4.0], &(2, 2)).unwrap();
    let b = Array::from_slice::<f32>(&[5.0, 6.0, 7.0, 8.0], &(2, 2)).unwrap();
    let mut c = einsum("ij,jk->ik", &[a.clone(), b]).unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![19.0, 22.0, 43.0, 50.0]);
    let mut t = einsum("ii", std::slice::from_ref(&a)).unwrap();
    assert_eq!(t.item::<f32>().unwrap(), 5.0);
    let mut tr = einsum("ij->ji", &[a]).unwrap();
    assert_eq!(tr.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
  }

  /// Three operands: python `mx.einsum_path("ij,jk,kl->il", a, b, c)` with
  /// shapes (2, 3), (3, 4), (4, 5) gives `[(1, 2), (0, 1)]`: `b` with `c`
  /// first, then `a` with that result.
  #[test]
  fn path_of_three() {
    let a = Array::from_slice::<f32>(&[1.0; 6], &(2, 3)).unwrap();
    let b = Array::from_slice::<f32>(&[1.0; 12], &(3, 4)).unwrap();
    let c = Array::from_slice::<f32>(&[1.0; 20], &(4, 5)).unwrap();
    let (path, report) = einsum_path("ij,jk,kl->il", &[a.clone(), b.clone(), c.clone()]).unwrap();
    assert_eq!(path, vec![vec![1, 2], vec![0, 1]]);
    assert!(
      report.contains("Complete contraction:  ij,jk,kl->il"),
      "{report}"
    );
    let mut r = einsum("ij,jk,kl->il", &[a, b, c]).unwrap();
    assert_eq!(r.shape(), vec![2, 5]);
    assert_eq!(r.to_vec::<f32>().unwrap(), vec![12.0; 10]);
  }

  #[test]
  fn bad_subscripts_are_errors() {
    let a = Array::from_slice::<f32>(&[1.0; 6], &(2, 3)).unwrap();
    // Wrong operand count, rank mismatch, invalid characters, mismatched
    // sizes of a shared index, empty operand list, NUL byte.
    assert!(einsum("ij,jk->ik", std::slice::from_ref(&a)).is_err());
    assert!(einsum("ijk->i", std::slice::from_ref(&a)).is_err());
    assert!(einsum("i#->i", std::slice::from_ref(&a)).is_err());
    assert!(
      einsum(
        "ij,ij->ij",
        &[
          a.clone(),
          Array::from_slice::<f32>(&[1.0; 6], &(3, 2)).unwrap()
        ]
      )
      .is_err()
    );
    assert!(einsum("ij->ik", std::slice::from_ref(&a)).is_err());
    assert!(einsum("", &[]).is_err());
    assert!(einsum("i\0j", std::slice::from_ref(&a)).is_err());
    assert!(einsum_path("ij,jk->ik", &[a]).is_err());
  }
}
