//! Language-model pipelines (load HF / mlx-community checkpoints, generate, chat).
