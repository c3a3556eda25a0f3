//! Llama / Mistral / Qwen2 / Qwen3 (float32, 4-bit, bf16 weights) against
//! mlx-lm 0.32.2 on the same checkpoints.
//!
//! Tolerance: logits are compared in float32 with |diff| <= 1e-4 (the
//! references' max |logit| is ~10, so this is ~1e-5 relative: summation order
//! differences between MLX's CPU kernels called from Python and from Rust are
//! the same kernels, so diffs are usually exactly 0).

mod common;

#[test]
fn llama() {
  common::check_fixture("llama", 1e-4);
}
#[test]
fn llama_4bit() {
  common::check_fixture("llama-4bit", 1e-4);
}
#[test]
fn llama_bf16_weights() {
  common::check_fixture("llama-bf16", 1e-4);
}
#[test]
fn mistral() {
  common::check_fixture("mistral", 1e-4);
}
#[test]
fn mistral_4bit() {
  common::check_fixture("mistral-4bit", 1e-4);
}
#[test]
fn qwen2() {
  common::check_fixture("qwen2", 1e-4);
}
#[test]
fn qwen2_4bit() {
  common::check_fixture("qwen2-4bit", 1e-4);
}
#[test]
fn qwen3() {
  common::check_fixture("qwen3", 1e-4);
}
#[test]
fn qwen3_4bit() {
  common::check_fixture("qwen3-4bit", 1e-4);
}
