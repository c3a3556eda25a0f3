//! Architectures, one file per family, in the shape of mlx-vlm's
//! `mlx_vlm/models/<family>/`.

pub mod gemma3;
pub mod idefics3;
pub mod llava;
pub mod llava_next;
pub mod paligemma;
pub mod qwen2_vl;
