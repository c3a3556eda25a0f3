//! Audio pipelines: Whisper speech-to-text and Kokoro text-to-speech on MLX.
//!
//! - [`audio`]: decode wav / flac / mp3 / ogg, mono mix, resample to 16 kHz
//!   (python `faster_whisper.decode_audio`).
//! - [`mel`]: Whisper's log-mel features on MLX ops
//!   (`faster_whisper.feature_extractor.FeatureExtractor`).
//! - [`ct2`]: a reader for CTranslate2 `model.bin` files.
//! - [`whisper`]: the encoder / decoder, loaded from Hugging Face
//!   (`WhisperForConditionalGeneration` safetensors) or CTranslate2 /
//!   faster-whisper folders.
//! - [`transcribe`]: decoding as faster-whisper does (`WhisperModel.transcribe`):
//!   timestamp rules, token suppression, long-form seek, thresholds and
//!   temperature fallback.
//! - [`output`]: txt / json / srt / vtt writers.
//! - [`timing`]: word-level timestamps (cross-attention DTW, python
//!   `word_timestamps=True`).
//! - [`kokoro`]: Kokoro-82M text-to-speech (python `mlx_audio.tts`), with
//!   [`onnx`] to read its ONNX export.
// Unsafe code is denied except in `kokoro::phonemize` (the espeak-ng FFI,
// each block with a SAFETY comment).
#![deny(unsafe_code)]

pub mod audio;
pub mod ct2;
pub mod error;
pub mod kokoro;
pub mod mel;
pub mod onnx;
pub mod output;
pub mod timing;
pub mod tokenizer;
pub mod transcribe;
pub mod vad;
pub mod whisper;

pub use audio::{Audio, SAMPLE_RATE, load_audio};
pub use error::{Error, Result};
pub use timing::Word;
pub use tokenizer::WhisperTokenizer;
pub use transcribe::{Segment, Task, TranscribeOptions, Transcription, parse_clip_timestamps};
pub use whisper::{Whisper, WhisperConfig};
