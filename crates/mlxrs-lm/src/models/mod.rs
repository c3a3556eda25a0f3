//! Architectures, one short file each, in the shape of mlx-lm's
//! `mlx_lm/models/<arch>.py`.

pub(crate) mod attention;
pub mod base;
pub mod cohere;
pub(crate) mod decoder;
pub mod deepseek_v3;
pub mod ernie4_5;
pub mod exaone;
pub mod gemma;
pub mod gemma2;
pub mod gemma3_text;
pub mod glm4;
pub mod gpt2;
pub mod gpt_neox;
pub mod gpt_oss;
pub mod granite;
pub mod helium;
pub mod internlm3;
pub mod llama;
pub mod minicpm;
pub mod mixtral;
pub(crate) mod mlp;
pub(crate) mod moe;
pub mod olmo2;
pub mod olmo3;
pub mod phi;
pub mod phi3;
pub mod qwen2;
pub mod qwen2_moe;
pub mod qwen3;
pub mod qwen3_moe;
pub mod seed_oss;
pub mod smollm3;
pub mod stablelm;
pub mod starcoder2;
