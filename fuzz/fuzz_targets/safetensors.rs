//! `cargo fuzz run safetensors`: `read_safetensors_header` + `load_safetensors`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::safetensors(data);
});
