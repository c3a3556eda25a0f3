//! Image processors, one file per family, in the shape of transformers'
//! `image_processing_<family>.py` / mlx-vlm's `processing_<family>.py`.

pub mod clip;
pub mod idefics3;
pub mod llava_next;
pub mod qwen2_vl;

pub use clip::{ClipImageProcessor, ClipPixels};
pub use idefics3::Idefics3ImageProcessor;
pub use llava_next::LlavaNextImageProcessor;
pub use qwen2_vl::{PixelValues, Qwen2VlImageProcessor};
