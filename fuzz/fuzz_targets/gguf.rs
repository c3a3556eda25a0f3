//! `cargo fuzz run gguf`: `read_gguf_header` + `load_gguf`, `read_gguf` + `load_gguf_tensor`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::gguf(data);
});
