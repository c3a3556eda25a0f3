//! `mlxrs transcribe` as a standalone example (the same source file as the
//! CLI subcommand, crates/mlxrs-cli/src/transcribe.rs), so the command builds
//! and runs from this crate:
//!
//! ```text
//! cargo run --release -p mlxrs-audio --example transcribe_cli -- --model DIR audio.wav
//! ```

#[path = "../../mlxrs-cli/src/transcribe.rs"]
mod transcribe;

use clap::Parser;

#[derive(Parser)]
#[command(name = "mlxrs-transcribe", about = "Whisper speech-to-text on MLX")]
struct Cli {
  #[command(flatten)]
  args: transcribe::TranscribeArgs,
}

fn main() {
  let cli = Cli::parse();
  if let Err(e) = transcribe::run(cli.args) {
    eprintln!("error: {e:#}");
    std::process::exit(1);
  }
}
