//! Architectures, one short file each, in the shape of mlx-lm's
//! `mlx_lm/models/<arch>.py`.

pub mod llama;
pub mod qwen2;
pub mod qwen3;
