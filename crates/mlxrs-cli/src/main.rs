//! `mlxrs`: the command line (flags named as mlx_lm's).
//!
//! - `mlxrs generate --model M --prompt P ...` (python `mlx_lm.generate`)
//! - `mlxrs chat --model M` (python `mlx_lm.chat`)
//! - `mlxrs bench --model M | --shape NAME` (python `mlx_lm.benchmark`)
//! - `mlxrs convert --hf-path SRC --mlx-path DST [-q ...]` (python `mlx_lm.convert`)
//! - `mlxrs launch -n N -- generate ...` (python `mlx.launch`; tensor parallel, or pipeline with `--pipeline`)
//! - `mlxrs info` (MLX version and device)
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mlxrs_core::Dtype;
use mlxrs_lm::{
  ChatOptions, GenerateOptions, LoadOptions, LogitsConfig, Message, SamplerConfig, StepConfig,
  TextStream, load, prompt_ids,
};

mod bench;
mod convert;
mod embed;
mod launch;
mod lm_extra;
mod lora;
mod serve;
mod speak;
mod transcribe;
mod validate;
mod vlm;

#[derive(Parser)]
#[command(
  name = "mlxrs",
  version,
  about = "MLX from Rust: generate, chat, embed, bench"
)]
struct Cli {
  #[command(subcommand)]
  cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
  /// Generate text from a prompt (python `mlx_lm.generate`).
  Generate(GenerateArgs),
  /// Multi-turn chat REPL that reuses its KV cache (python `mlx_lm.chat`).
  Chat(ChatArgs),
  /// Time prompt processing and generation (python `mlx_lm.benchmark`).
  Bench(bench::BenchArgs),
  /// Sentence embeddings (python sentence-transformers `encode`).
  Embed(embed::EmbedArgs),
  /// Transcribe audio with Whisper (python faster-whisper / mlx_whisper).
  Transcribe(transcribe::TranscribeArgs),
  /// Text to speech with Kokoro-82M (python `mlx_audio.tts.generate`).
  Speak(speak::SpeakArgs),
  /// Convert the PyPI Kokoro ONNX export to an mlx-audio Kokoro folder.
  ConvertKokoro(speak::ConvertKokoroArgs),
  /// Prefill a prompt and save its KV cache (python `mlx_lm.cache_prompt`).
  CachePrompt(CachePromptArgs),
  /// Convert a checkpoint to MLX: dtype, quantize, dequantize (python
  /// `mlx_lm.convert`).
  Convert(convert::ConvertArgs),
  /// Start N local ranks of a distributed job (python `mlx.launch`);
  /// `generate` under it runs tensor-parallel (`--pipeline`: pipeline-parallel).
  Launch(launch::LaunchArgs),
  /// Fine-tune with LoRA / DoRA / full (python `mlx_lm.lora`).
  Lora(lora::LoraArgs),
  /// Merge adapters into the model weights (python `mlx_lm.fuse`).
  Fuse(lora::FuseArgs),
  /// OpenAI-compatible HTTP server (python `mlx_lm.server`).
  Serve(serve::ServeArgs),
  /// Print the MLX version and default device.
  Info,
}

#[derive(Args, Clone)]
struct ModelArgs {
  /// Model folder, Hugging Face repo id (cached repos load offline) or `.gguf` file.
  #[arg(long)]
  model: String,
  /// Compute dtype for float weights: float32, bfloat16, float16 (default:
  /// float32 on CPU, the checkpoint's on GPU).
  #[arg(long)]
  dtype: Option<String>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
  /// Maximum tokens to generate.
  #[arg(long = "max-tokens", short = 'm', default_value_t = 256)]
  max_tokens: usize,
  /// Sampling temperature (0 = greedy).
  #[arg(long, default_value_t = 0.0)]
  temp: f32,
  /// Nucleus sampling mass (0 = off).
  #[arg(long = "top-p", default_value_t = 0.0)]
  top_p: f32,
  /// Top-k sampling (0 = off).
  #[arg(long = "top-k", default_value_t = 0)]
  top_k: i32,
  /// Min-p sampling (0 = off).
  #[arg(long = "min-p", default_value_t = 0.0)]
  min_p: f32,
  /// XTC probability (0 = off).
  #[arg(long = "xtc-probability", default_value_t = 0.0)]
  xtc_probability: f32,
  /// XTC threshold.
  #[arg(long = "xtc-threshold", default_value_t = 0.1)]
  xtc_threshold: f32,
  /// Random seed (reproducible sampling).
  #[arg(long)]
  seed: Option<u64>,
  /// Repetition penalty (> 0; 1 = off).
  #[arg(long = "repetition-penalty")]
  repetition_penalty: Option<f32>,
  /// Tokens considered by the repetition penalty.
  #[arg(long = "repetition-context-size", default_value_t = 20)]
  repetition_context_size: usize,
  /// Presence penalty.
  #[arg(long = "presence-penalty")]
  presence_penalty: Option<f32>,
  /// Frequency penalty.
  #[arg(long = "frequency-penalty")]
  frequency_penalty: Option<f32>,
  /// Rotating KV cache of at most this many positions.
  #[arg(long = "max-kv-size")]
  max_kv_size: Option<i32>,
  /// Stop when this string is generated (repeatable).
  #[arg(long = "stop")]
  stop: Vec<String>,
  /// Quantize the KV cache to this many bits (2, 3, 4, 6, 8).
  #[arg(long = "kv-bits")]
  kv_bits: Option<i32>,
  /// Group size for KV-cache quantization.
  #[arg(long = "kv-group-size", default_value_t = 64)]
  kv_group_size: i32,
  /// Start quantizing the KV cache once it holds this many positions.
  #[arg(long = "quantized-kv-start", default_value_t = 5000)]
  quantized_kv_start: i32,
  /// Keep generating (with a warning) when the model's logits are NaN/Inf;
  /// by default that stops with an error.
  #[arg(long = "allow-nan")]
  allow_nan: bool,
}

#[derive(Args)]
struct GenerateArgs {
  #[command(flatten)]
  model: ModelArgs,
  /// The prompt ("-" reads stdin). Repeat it to generate for several
  /// prompts as one batch (python `mlx_lm.batch_generate`).
  #[arg(long, short = 'p', conflicts_with_all = ["prompt_file", "prompts_file"])]
  prompt: Vec<String>,
  /// Read the prompt from a UTF-8 file.
  #[arg(long = "prompt-file", conflicts_with = "prompts_file")]
  prompt_file: Option<PathBuf>,
  /// LoRA / DoRA / full adapters to apply (python `--adapter-path`).
  #[arg(long = "adapter-path")]
  adapter_path: Option<PathBuf>,
  /// Batch generation: one prompt per line of this UTF-8 file (empty lines
  /// skipped).
  #[arg(long = "prompts-file")]
  prompts_file: Option<PathBuf>,
  /// Also report the N most likely tokens and their log-probabilities at
  /// each step (in `--json`: `top_logprobs`). Each token's own logprob is
  /// always in `--json`'s `logprobs`.
  #[arg(long = "top-logprobs", default_value_t = 0)]
  top_logprobs: usize,
  /// Draft model for speculative decoding (python `mlx_lm.generate
  /// --draft-model`); must share the main model's tokenizer.
  #[arg(long = "draft-model")]
  draft_model: Option<String>,
  /// Draft tokens proposed per speculative step (python
  /// `--num-draft-tokens`).
  #[arg(long = "num-draft-tokens", default_value_t = 3)]
  num_draft_tokens: usize,
  /// System prompt (with the chat template).
  #[arg(long = "system-prompt", alias = "system")]
  system_prompt: Option<String>,
  /// Encode the prompt as plain text, without the chat template.
  #[arg(long = "ignore-chat-template")]
  ignore_chat_template: bool,
  #[command(flatten)]
  sampling: SamplingArgs,
  /// Print one JSON object (text, tokens, timings) instead of streaming.
  #[arg(long)]
  json: bool,
  /// Image file(s) for a vision-language model, one per image, in prompt order.
  #[arg(long = "image", num_args = 1..)]
  image: Vec<PathBuf>,
  /// Continue from a KV cache saved by `mlxrs cache-prompt` (or mlx-lm's
  /// `cache_prompt`): the prompt is appended after the cached context.
  #[arg(long = "prompt-cache-file")]
  prompt_cache_file: Option<PathBuf>,
  /// Under `mlxrs launch`: split the model's layers over the ranks
  /// (pipeline parallel, python `mlx_lm.generate --pipeline`) instead of
  /// splitting every layer (tensor parallel).
  #[arg(long)]
  pipeline: bool,
  /// Print timing figures after the text.
  #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
  verbose: bool,
}

#[derive(Args)]
struct CachePromptArgs {
  #[command(flatten)]
  model: ModelArgs,
  /// The prompt to prefill ("-" reads stdin).
  #[arg(long, short = 'p')]
  prompt: String,
  /// Encode the prompt as plain text, without the chat template.
  #[arg(long = "ignore-chat-template")]
  ignore_chat_template: bool,
  /// Where to write the cache (safetensors, mlx-lm's prompt-cache layout).
  #[arg(long = "prompt-cache-file")]
  prompt_cache_file: PathBuf,
  /// Rotating cache size.
  #[arg(long = "max-kv-size")]
  max_kv_size: Option<i32>,
}

fn cache_prompt(a: CachePromptArgs) -> Result<()> {
  a.validate()?;
  let prompt = if a.prompt == "-" {
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
      .context("reading the prompt from stdin (must be UTF-8)")?;
    s
  } else {
    a.prompt.clone()
  };
  if prompt.is_empty() {
    bail!("the prompt is empty");
  }
  let dtype = parse_dtype(&a.model.dtype)?;
  let m = load(
    &a.model.model,
    &LoadOptions {
      dtype,
      no_tokenizer: false,
    },
  )?;
  let tok = m.tokenizer.as_ref().expect("tokenizer");
  let ids = prompt_ids(tok, &prompt, None, a.ignore_chat_template)?;
  // The shared context rule (no tokens are generated here).
  mlxrs_lm::limits::check_prompt(m.max_context, 0, ids.len())?;
  let ids: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
  let mut caches = m.model.make_caches(a.max_kv_size);
  for chunk in ids.chunks(2048) {
    let x = mlxrs_core::Array::from_slice(chunk, &[1, chunk.len() as i32])?;
    m.model.hidden(&x, &mut caches)?;
  }
  let mut meta = std::collections::HashMap::new();
  meta.insert("model".to_string(), a.model.model.clone());
  meta.insert("tokens".to_string(), ids.len().to_string());
  // Written atomically (temporary file, fsync, rename): a killed run or a
  // concurrent writer never leaves a torn cache behind.
  mlxrs_nn::save_kv_caches(&a.prompt_cache_file, &caches, &meta).with_context(|| {
    format!(
      "writing --prompt-cache-file {}",
      a.prompt_cache_file.display()
    )
  })?;
  println!(
    "Saved the KV cache of {} prompt tokens to {}",
    ids.len(),
    a.prompt_cache_file.display()
  );
  Ok(())
}

#[derive(Args)]
struct ChatArgs {
  #[command(flatten)]
  model: ModelArgs,
  /// System prompt.
  #[arg(long = "system-prompt", alias = "system")]
  system_prompt: Option<String>,
  /// Vision-language models: image file(s) attached to the first user
  /// message (more with `/image PATH` in the REPL).
  #[arg(long, num_args = 1..)]
  image: Vec<PathBuf>,
  /// Vision-language models: print per-turn cache statistics.
  #[arg(long)]
  verbose: bool,
  #[command(flatten)]
  sampling: SamplingArgs,
}

fn parse_dtype(s: &Option<String>) -> Result<Option<Dtype>> {
  match s.as_deref() {
    None => Ok(None),
    Some(n) => match Dtype::parse(n) {
      Some(d) if d.is_float() => Ok(Some(d)),
      _ => bail!("--dtype {n:?}: expected float32, bfloat16 or float16"),
    },
  }
}

fn step_config(s: &SamplingArgs) -> StepConfig {
  let mut logits = LogitsConfig::new();
  logits.repetition_penalty = s.repetition_penalty;
  logits.repetition_context_size = s.repetition_context_size;
  logits.presence_penalty = s.presence_penalty;
  logits.frequency_penalty = s.frequency_penalty;
  StepConfig {
    max_tokens: s.max_tokens,
    sampler: SamplerConfig {
      temp: s.temp,
      top_p: s.top_p,
      top_k: s.top_k,
      min_p: s.min_p,
      xtc_probability: s.xtc_probability,
      xtc_threshold: s.xtc_threshold,
      seed: s.seed,
      ..SamplerConfig::default()
    },
    logits,
    max_kv_size: s.max_kv_size,
    kv_bits: s.kv_bits,
    kv_group_size: s.kv_group_size,
    quantized_kv_start: s.quantized_kv_start,
    allow_nan: s.allow_nan,
    ..StepConfig::default()
  }
}

fn read_prompt(a: &GenerateArgs) -> Result<String> {
  if let Some(p) = &a.prompt_file {
    let bytes =
      std::fs::read(p).with_context(|| format!("reading --prompt-file {}", p.display()))?;
    return String::from_utf8(bytes).map_err(|e| {
      anyhow::anyhow!(
        "--prompt-file {}: not valid UTF-8 (invalid byte at offset {})",
        p.display(),
        e.utf8_error().valid_up_to()
      )
    });
  }
  match a.prompt.first().map(String::as_str) {
    Some("-") => {
      let mut s = String::new();
      std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("reading the prompt from stdin (must be UTF-8)")?;
      Ok(s)
    }
    Some(p) => Ok(p.to_string()),
    None => bail!("give --prompt TEXT, --prompt - (stdin) or --prompt-file PATH"),
  }
}

fn generate(a: GenerateArgs) -> Result<()> {
  a.validate()?;
  if a.json {
    // Machine-read output: no download progress bars on stderr.
    mlxrs_lm::hub::set_download_progress(false);
  }
  if a.adapter_path.is_some()
    && (a.prompt.len() > 1 || a.prompts_file.is_some() || !a.image.is_empty())
  {
    bail!("--adapter-path works with a single text prompt (not batches or images) for now");
  }
  if a.prompt.len() > 1 || a.prompts_file.is_some() {
    return lm_extra::batch(&a, &mut std::io::stdout().lock());
  }
  let prompt = read_prompt(&a)?;
  if prompt.is_empty() {
    bail!("the prompt is empty");
  }
  let dtype = parse_dtype(&a.model.dtype)?;
  if !a.image.is_empty() {
    if a.prompt_cache_file.is_some() {
      bail!("--prompt-cache-file cannot be combined with --image");
    }
    let opts = GenerateOptions {
      step: step_config(&a.sampling),
      stop: a.sampling.stop.clone(),
    };
    let args = vlm::VlmArgs {
      model: &a.model.model,
      dtype,
      images: &a.image,
      prompt: &prompt,
      system: a.system_prompt.as_deref(),
      raw: a.ignore_chat_template,
      opts,
      json: a.json,
      verbose: a.verbose,
    };
    return vlm::generate(&args, &mut std::io::stdout().lock());
  }
  // Under `mlxrs launch` / `mlx.launch`: tensor (or with `--pipeline`,
  // pipeline) parallel, rank 0 prints.
  let group = launch::group_from_env()?;
  let mut m = launch::load_lm_split(
    &a.model.model,
    &LoadOptions {
      dtype,
      no_tokenizer: false,
    },
    group.as_ref(),
    a.pipeline,
  )?;
  if let Some(p) = &a.adapter_path {
    lora::apply_adapters(&mut m, p)?;
  }
  let tok = m.tokenizer.as_ref().expect("loaded with a tokenizer");
  let ids = prompt_ids(
    tok,
    &prompt,
    a.system_prompt.as_deref(),
    a.ignore_chat_template,
  )?;
  let mut opts = GenerateOptions {
    step: step_config(&a.sampling),
    stop: a.sampling.stop.clone(),
  };
  opts.step.top_logprobs = a.top_logprobs;
  opts.step.num_draft_tokens = a.num_draft_tokens;
  let draft = lm_extra::load_draft(&a, dtype)?;
  let mut out = launch::rank_stdout(group.as_ref());
  let mut text = String::new();
  let mut tokens = Vec::new();
  let mut per_token = lm_extra::PerToken::default();
  let mut last = None;
  if !a.json && a.verbose {
    writeln!(out, "==========")?;
  }
  let cache = match &a.prompt_cache_file {
    Some(p) => {
      let (c, _meta) = mlxrs_nn::load_kv_caches(p)
        .with_context(|| format!("loading --prompt-cache-file {}", p.display()))?;
      let want = m.model.make_caches(None).len();
      if c.len() != want {
        bail!(
          "{}: the cache has {} layers, the model {want}",
          p.display(),
          c.len()
        );
      }
      Some(c)
    }
    None => None,
  };
  let mut stream = match &draft {
    Some(d) => {
      if cache.is_some() {
        bail!("--prompt-cache-file cannot be combined with --draft-model");
      }
      TextStream::new_speculative(&m, d, &ids, &opts)?
    }
    None => TextStream::new(&m, &ids, &opts, cache)?,
  };
  if let Some(n) = stream.clamp_note() {
    eprintln!("[WARNING] {n}");
  }
  let mut nan_warned = false;
  for r in &mut stream {
    let r = r?;
    warn_nan(&r, &mut nan_warned);
    if !a.json {
      write!(out, "{}", r.text)?;
      out.flush()?;
    }
    text.push_str(&r.text);
    if r.token >= 0 {
      tokens.push(r.token);
      per_token.push(&r);
    }
    last = Some(r);
  }
  let draft_stats = stream.draft_stats();
  let last = last.context("no output")?;
  let device = mlxrs_core::Device::default_device()
    .map(|d| d.to_string())
    .unwrap_or_default();
  let dtype_s = m
    .dtype
    .map(|d| d.to_string())
    .unwrap_or_else(|| "checkpoint".into());
  if a.json {
    let v = serde_json::json!({
      "text": text,
      "tokens": tokens,
      "prompt_ids": ids,
      "finish_reason": last.finish_reason,
      "prompt_tokens": last.prompt_tokens,
      "prompt_tps": last.prompt_tps,
      "generation_tokens": last.generation_tokens,
      "generation_tps": last.generation_tps,
      "peak_memory_gb": last.peak_memory_gb,
      "device": device,
      "dtype": dtype_s,
    });
    let v = per_token.add_to(v, a.top_logprobs > 0, draft_stats);
    writeln!(out, "{}", serde_json::to_string(&v)?)?;
  } else if a.verbose {
    writeln!(out, "\n==========")?;
    writeln!(
      out,
      "Prompt: {} tokens, {:.3} tokens-per-sec",
      last.prompt_tokens, last.prompt_tps
    )?;
    writeln!(
      out,
      "Generation: {} tokens, {:.3} tokens-per-sec",
      last.generation_tokens, last.generation_tps
    )?;
    writeln!(out, "Peak memory: {:.3} GB", last.peak_memory_gb)?;
    if let Some((proposed, accepted)) = draft_stats {
      writeln!(out, "Draft tokens: {accepted} of {proposed} accepted")?;
    }
    writeln!(out, "Device: {device}, compute dtype: {dtype_s}")?;
  }
  Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
  a.validate()?;
  let dtype = parse_dtype(&a.model.dtype)?;
  let is_vlm = (!mlxrs_lm::gguf::is_gguf_path(&a.model.model))
    .then(|| mlxrs_lm::resolve_model(&a.model.model).ok())
    .flatten()
    .map(|p| mlxrs_vlm::is_vlm_dir(&p).unwrap_or(false))
    .unwrap_or(false);
  if is_vlm || !a.image.is_empty() {
    let args = vlm::VlmChatArgs {
      model: &a.model.model,
      dtype,
      images: &a.image,
      system: a.system_prompt.as_deref(),
      opts: GenerateOptions {
        step: step_config(&a.sampling),
        stop: a.sampling.stop.clone(),
      },
      verbose: a.verbose,
    };
    return vlm::chat(
      &args,
      &mut std::io::stdin().lock(),
      &mut std::io::stdout().lock(),
    );
  }
  let m = load(
    &a.model.model,
    &LoadOptions {
      dtype,
      no_tokenizer: false,
    },
  )?;
  let tok = m.tokenizer.as_ref().expect("tokenizer");
  if !tok.has_chat_template() {
    bail!(
      "{}: the tokenizer has no chat template; use `mlxrs generate --ignore-chat-template`",
      m.path.display()
    );
  }
  let opts = GenerateOptions {
    step: step_config(&a.sampling),
    stop: a.sampling.stop.clone(),
  };
  let mut messages: Vec<Message> = Vec::new();
  if let Some(s) = &a.system_prompt {
    messages.push(Message::system(s.clone()));
  }
  // The cache holds the rendered conversation so far; each turn feeds only
  // the new suffix of the rendered prompt (python mlx_lm.chat's
  // prompt_cache reuse).
  let mut cache = None;
  let mut cached_ids: Vec<u32> = Vec::new();
  let stdin = std::io::stdin();
  let mut out = std::io::stdout();
  println!(
    "[INFO] Starting chat session with {}. Type 'q' to exit, 'r' to reset.",
    a.model.model
  );
  loop {
    print!(">> ");
    out.flush()?;
    let mut line = String::new();
    if stdin.lock().read_line(&mut line)? == 0 {
      break;
    }
    let line = line.trim_end_matches(['\n', '\r']);
    match line {
      "q" => break,
      "r" => {
        messages.retain(|m| m.role == "system");
        cache = None;
        cached_ids.clear();
        continue;
      }
      "" => continue,
      _ => {}
    }
    messages.push(Message::user(line));
    let copts = ChatOptions {
      add_generation_prompt: true,
      ..ChatOptions::default()
    };
    let full = tok.apply_chat_template_ids(&messages, &copts)?;
    let reuse = cache.is_some() && full.starts_with(&cached_ids) && full.len() > cached_ids.len();
    let (feed, c) = if reuse {
      (full[cached_ids.len()..].to_vec(), cache.take())
    } else {
      (full.clone(), None)
    };
    let mut stream = TextStream::new(&m, &feed, &opts, c)?;
    if let Some(n) = stream.clamp_note() {
      eprintln!("[WARNING] {n}");
    }
    let mut reply = String::new();
    let mut gen_ids = Vec::new();
    let mut nan_warned = false;
    for r in &mut stream {
      let r = r?;
      warn_nan(&r, &mut nan_warned);
      print!("{}", r.text);
      out.flush()?;
      reply.push_str(&r.text);
      if r.token >= 0 {
        gen_ids.push(r.token as u32);
      }
    }
    println!();
    cache = Some(stream.into_cache());
    cached_ids = full;
    cached_ids.extend(gen_ids);
    messages.push(Message::assistant(reply));
  }
  Ok(())
}

/// With `--allow-nan`, say once that the logits went NaN/Inf.
fn warn_nan(r: &mlxrs_lm::Response, warned: &mut bool) {
  if !*warned && r.logprob.is_some_and(|l| !l.is_finite()) {
    *warned = true;
    eprintln!(
      "[WARNING] the model's logits are NaN/Inf (token {}): the output is garbage",
      r.generation_tokens
    );
  }
}

fn main() {
  let cli = Cli::parse();
  let r = match cli.cmd {
    Cmd::Generate(a) => generate(a),
    Cmd::Chat(a) => chat(a),
    Cmd::Bench(a) => bench::run(a),
    Cmd::Convert(a) => convert::run(a),
    Cmd::Transcribe(a) => transcribe::run(a),
    Cmd::Speak(a) => speak::run(a),
    Cmd::ConvertKokoro(a) => speak::run_convert(a),
    Cmd::Embed(a) => embed::run(a),
    Cmd::CachePrompt(a) => cache_prompt(a),
    Cmd::Launch(a) => launch::run(a),
    Cmd::Lora(a) => lora::run(a),
    Cmd::Fuse(a) => lora::fuse(a),
    Cmd::Serve(a) => serve::run(a),
    Cmd::Info => {
      let d = mlxrs_core::Device::default_device()
        .map(|d| d.to_string())
        .unwrap_or_else(|e| e.to_string());
      println!(
        "mlx {} ({}), default device {d}",
        mlxrs_core::version(),
        mlxrs_sys::MLX_LIB_DIR
      );
      Ok(())
    }
  };
  if let Err(e) = r {
    eprintln!("error: {e:#}");
    std::process::exit(1);
  }
}
