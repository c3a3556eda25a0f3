//! Fine-tuning (python `mlx_lm.lora`, `mlx_lm.tuner`, `mlx_lm.fuse`):
//! LoRA / DoRA adapters or a full fine-tune of the last blocks, on dense
//! or quantized (QLoRA) checkpoints, with files interchangeable with
//! mlx-lm's. See `docs/lora.md`.

pub mod adapters;
pub mod datasets;
pub mod trainer;

pub use adapters::{
  AdapterConfig, FineTuneType, LoraParameters, adaptable_layers, check_adapters, fuse_params,
  init_adapters, load_adapters, lora_targets, quant_config, reload,
};
pub use datasets::{Example, Format, load_local, read_jsonl};
pub use trainer::{Batch, Rng, Trainer, batch_indices, default_loss, make_batch};
