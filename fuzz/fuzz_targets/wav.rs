//! `cargo fuzz run wav`: audio headers and decoding (`decode_audio_bytes`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::wav(data);
});
