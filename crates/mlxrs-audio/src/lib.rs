//! Audio pipelines (speech-to-text).
