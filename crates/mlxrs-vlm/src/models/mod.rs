//! Architectures, one file per family, in the shape of mlx-vlm's
//! `mlx_vlm/models/<family>/`.

pub mod qwen2_vl;
