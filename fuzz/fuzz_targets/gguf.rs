//! `cargo fuzz run gguf`: `read_gguf_header` + `load_gguf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::gguf(data);
});
