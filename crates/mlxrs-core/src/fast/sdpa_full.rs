//! The general form of fused attention: any mask mode string plus attention
//! sinks (python `mx.fast.scaled_dot_product_attention(q, k, v, scale=,
//! mask=, sinks=)`). [`super::sdpa`] is the common-case wrapper.

use std::ffi::CString;

use crate::{
  array::Array,
  error::{Error, Result, check},
  stream::default_stream,
};

/// `O = softmax(Q @ K.T * scale [+ mask], with sinks) @ V`.
///
/// - `mask_mode`: `""` (none), `"causal"`, or `"array"` (then `mask` is the
///   mask array).
/// - `sinks`: per-query-head sink logits `[N_q]` (gpt-oss), or `None`.
pub fn scaled_dot_product_attention_full(
  q: &Array,
  k: &Array,
  v: &Array,
  scale: f32,
  mask_mode: &str,
  mask: Option<&Array>,
  sinks: Option<&Array>,
) -> Result<Array> {
  let mode = match mask_mode {
    "" | "causal" | "array" => CString::new(mask_mode).expect("no NUL"),
    other => {
      return Err(Error::InvalidArgument(format!(
        "unknown mask mode {other:?}"
      )));
    }
  };
  if (mask_mode == "array") != mask.is_some() {
    return Err(Error::InvalidArgument(
      "mask array given iff mask_mode is \"array\"".into(),
    ));
  }
  let null = Array::null();
  let mut out = Array::null();
  // SAFETY: every handle is live for the call (absent optionals are the
  // NULL-ctx `null` guard); `mode` outlives the call; the out-handle is
  // owned by `out`; MLX's validation errors come back through `check`.
  check(unsafe {
    mlxrs_sys::mlx_fast_scaled_dot_product_attention(
      &mut out.0,
      q.0,
      k.0,
      v.0,
      scale,
      mode.as_ptr(),
      mask.map(|m| m.0).unwrap_or(null.0),
      sinks.map(|s| s.0).unwrap_or(null.0),
      default_stream(),
    )
  })?;
  Ok(out)
}
