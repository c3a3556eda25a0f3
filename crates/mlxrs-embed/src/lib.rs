//! Text-embedding pipelines (sentence-transformers checkpoints).
