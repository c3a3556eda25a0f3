//! `cargo fuzz run tokenizer`: tokenizer.json / tokenizer_config.json (chat template) loading, encoding and template rendering.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
  mlxrs_fuzz::tokenizer(data);
});
