//! Write the weights of any Whisper folder mlxrs loads (CTranslate2
//! `model.bin`, Hugging Face, mlx-community) as one safetensors file with
//! Hugging Face names (`model.encoder.layers.0.fc1.weight`, conv weights as
//! mlxrs holds them) plus `dims.json` with the model dimensions in
//! openai-whisper / mlx-whisper names (`n_mels`, `n_audio_ctx`, ...).
//!
//! `scripts/bench_whisper_mlx.py convert` turns that into an mlx-whisper
//! folder, so Python mlx-whisper can run the very weights mlxrs runs (the
//! side-by-side benchmark in `scripts/bench_whisper.sh`):
//!
//! `cargo run --release -p mlxrs-audio --example export_whisper -- MODEL_DIR OUT_DIR`

use std::collections::HashMap;

use mlxrs_audio::Whisper;
use mlxrs_nn::Module;

fn main() {
  if let Err(e) = run() {
    eprintln!("error: {e}");
    std::process::exit(1);
  }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
  let args: Vec<String> = std::env::args().skip(1).collect();
  let [model, out] = args.as_slice() else {
    return Err("usage: export_whisper MODEL_DIR OUT_DIR".into());
  };
  let w = Whisper::load(model)?;
  let mut tensors = HashMap::new();
  w.model.visit("", &mut |name, a| {
    tensors.insert(name.to_string(), a.clone());
  });
  std::fs::create_dir_all(out)?;
  let out = std::path::Path::new(out);
  mlxrs_core::io::save_safetensors(
    out.join("hf_weights.safetensors"),
    &tensors,
    &HashMap::new(),
  )?;
  let c = w.config();
  let dims = serde_json::json!({
    "n_mels": c.n_mels,
    "n_audio_ctx": c.n_audio_ctx,
    "n_audio_state": c.n_audio_state,
    "n_audio_head": c.n_audio_head,
    "n_audio_layer": c.n_audio_layer,
    "n_vocab": c.n_vocab,
    "n_text_ctx": c.n_text_ctx,
    "n_text_state": c.n_text_state,
    "n_text_head": c.n_text_head,
    "n_text_layer": c.n_text_layer,
  });
  std::fs::write(out.join("dims.json"), serde_json::to_string_pretty(&dims)?)?;
  println!("{} tensors -> {}", tensors.len(), out.display());
  Ok(())
}
