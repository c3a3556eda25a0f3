//! `cargo fuzz run config`: `config.json` parsing and checks + `build_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::config(data);
});
