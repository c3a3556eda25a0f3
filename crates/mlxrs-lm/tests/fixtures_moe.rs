//! Mixture-of-experts architectures (Qwen3-MoE, Mixtral, gpt-oss,
//! DeepSeek-V3; float32 and 4-bit weights) against mlx-lm 0.32.2 on the same
//! checkpoints.
//!
//! Tolerance: logits in float32 with |diff| <= 1e-4 (references' max |logit|
//! is ~10); the 20 greedy tokens of cached decoding must match exactly. The
//! prompts are long enough (59 tokens x top-2) that prefill takes mlx-lm's
//! sort-by-expert path in `SwitchGLU`, while decoding takes the unsorted one.

mod common;

#[test]
fn qwen3_moe() {
  common::check_fixture("qwen3_moe", 1e-4);
}
#[test]
fn qwen3_moe_4bit() {
  common::check_fixture("qwen3_moe-4bit", 1e-4);
}
#[test]
fn mixtral() {
  common::check_fixture("mixtral", 1e-4);
}
#[test]
fn mixtral_4bit() {
  common::check_fixture("mixtral-4bit", 1e-4);
}
#[test]
fn gpt_oss() {
  common::check_fixture("gpt_oss", 1e-4);
}
#[test]
fn gpt_oss_4bit() {
  common::check_fixture("gpt_oss-4bit", 1e-4);
}
#[test]
fn deepseek_v3() {
  common::check_fixture("deepseek_v3", 1e-4);
}
#[test]
fn deepseek_v3_4bit() {
  common::check_fixture("deepseek_v3-4bit", 1e-4);
}
