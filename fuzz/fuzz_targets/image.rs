//! `cargo fuzz run image`: image headers and decoding (`mlxrs_vlm::decode_image`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::image(data);
});
