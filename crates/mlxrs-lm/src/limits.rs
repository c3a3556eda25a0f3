//! The one rule bounding generation by the model's context, shared by
//! `generate`, `chat`, `cache-prompt`, batch generation and the server.
//!
//! A model's context is its `max_position_embeddings`. A prompt (plus any
//! cached positions it continues) longer than that is refused; the number of
//! new tokens is clamped so that cached + prompt + generated never exceeds
//! it, with a note saying so. (python mlx-lm applies no such bound and
//! happily generates past the trained positions.) `TextStream` applies it
//! itself ([`crate::TextStream::clamp_note`]); other front ends (batch, the
//! server) call [`bound_generation`].
//!
//! Also here: [`check_affine_quant`], the range check of quantization
//! settings (`--kv-bits`, bench `-q`) against what MLX supports.

use crate::error::{Error, Result};

fn invalid(msg: String) -> Error {
  Error::Core(mlxrs_core::Error::InvalidArgument(msg))
}

/// The outcome of [`bound_generation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationBound {
  /// Tokens to generate at most (`max_tokens`, or less when clamped).
  pub max_tokens: usize,
  /// Set when `max_tokens` was clamped: a message for the user.
  pub note: Option<String>,
}

/// Refuse a prompt that does not fit the context: `cached` positions already
/// in the KV cache plus `prompt` new tokens must be at most `context`
/// (`None`: the model declares no context; anything fits).
pub fn check_prompt(context: Option<usize>, cached: usize, prompt: usize) -> Result<()> {
  let Some(ctx) = context else {
    return Ok(());
  };
  let used = cached.saturating_add(prompt);
  if used > ctx {
    let what = if cached > 0 {
      format!("the prompt has {prompt} tokens after {cached} cached ones ({used} in all)")
    } else {
      format!("the prompt has {prompt} tokens")
    };
    return Err(invalid(format!(
      "{what}, more than the model's context of {ctx} (max_position_embeddings)"
    )));
  }
  Ok(())
}

/// Bound a generation of `max_tokens` new tokens after `cached + prompt`
/// positions by the model's `context`: refuses a prompt that does not fit
/// ([`check_prompt`]) and clamps `max_tokens` to the room left, with a note.
pub fn bound_generation(
  context: Option<usize>,
  cached: usize,
  prompt: usize,
  max_tokens: usize,
) -> Result<GenerationBound> {
  check_prompt(context, cached, prompt)?;
  let Some(ctx) = context else {
    return Ok(GenerationBound {
      max_tokens,
      note: None,
    });
  };
  let used = cached + prompt;
  let room = ctx - used;
  if max_tokens <= room || max_tokens == 0 {
    return Ok(GenerationBound {
      max_tokens,
      note: None,
    });
  }
  if room == 0 {
    return Err(invalid(format!(
      "no room to generate: the prompt fills the model's context of {ctx} tokens (max_position_embeddings)"
    )));
  }
  Ok(GenerationBound {
    max_tokens: room,
    note: Some(format!(
      "max_tokens {max_tokens} clamped to {room}: the model's context is {ctx} tokens (max_position_embeddings) and {used} are used by the prompt"
    )),
  })
}

/// Bits MLX's affine `quantize` supports (python `mx.quantize(bits=...)`).
pub const AFFINE_BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes MLX's affine `quantize` supports.
pub const AFFINE_GROUP_SIZES: [i32; 3] = [32, 64, 128];

/// Check an affine quantization's `bits` and `group_size` against what MLX
/// supports, naming the two settings (`bits_name`, `group_name`: the flag or
/// field names the caller exposes, e.g. `--kv-bits`).
pub fn check_affine_quant(
  bits_name: &str,
  bits: i32,
  group_name: &str,
  group_size: i32,
) -> Result<()> {
  if !AFFINE_BITS.contains(&bits) {
    return Err(invalid(format!(
      "{bits_name} {bits}: MLX quantizes to 2, 3, 4, 5, 6 or 8 bits"
    )));
  }
  if !AFFINE_GROUP_SIZES.contains(&group_size) {
    return Err(invalid(format!(
      "{group_name} {group_size}: MLX quantizes in groups of 32, 64 or 128"
    )));
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_rule() {
    let b = bound_generation(Some(100), 0, 10, 5).unwrap();
    assert_eq!((b.max_tokens, b.note.is_none()), (5, true));
    let b = bound_generation(Some(100), 20, 10, 1_000_000_000_000).unwrap();
    assert_eq!(b.max_tokens, 70);
    assert!(b.note.unwrap().contains("clamped to 70"));
    assert!(bound_generation(Some(100), 0, 101, 5).is_err());
    let e = bound_generation(Some(100), 90, 11, 5)
      .unwrap_err()
      .to_string();
    assert!(e.contains("after 90 cached"), "{e}");
    assert!(bound_generation(Some(100), 0, 100, 5).is_err());
    assert_eq!(
      bound_generation(Some(100), 0, 100, 0).unwrap().max_tokens,
      0
    );
    assert_eq!(bound_generation(None, 0, 10, 7).unwrap().max_tokens, 7);
    assert!(check_affine_quant("--kv-bits", 3, "--kv-group-size", 64).is_ok());
    let e = check_affine_quant("-q", 17, "--group-size", 64).unwrap_err();
    assert!(e.to_string().contains("-q 17"), "{e}");
    let e = check_affine_quant("-q", 4, "--group-size", 0).unwrap_err();
    assert!(e.to_string().contains("--group-size 0"), "{e}");
  }
}
