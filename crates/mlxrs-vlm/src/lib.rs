//! Vision-language model pipelines.
