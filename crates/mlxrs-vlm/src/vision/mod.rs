//! Vision towers shared by the VLM families (python mlx-vlm's per-family
//! `vision.py` files, which repeat them).

pub mod clip;
pub mod siglip;

pub use clip::{ClipVision, ClipVisionArgs};
pub use siglip::{SiglipVision, SiglipVisionArgs};
