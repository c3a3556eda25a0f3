//! `mlxrs lora` against mlx-lm's trainer (`scripts/make_lora_refs.py`):
//! the same initial adapters and batches give the same per-step training
//! losses for lora, dora, full, a 4-bit base (QLoRA), gradient
//! accumulation, MoE experts (dense and 4-bit) and embeddings / heads named
//! by `lora_parameters.keys` (tied and untied); an adapter trained by mlx-lm loads and gives mlx-lm's
//! greedy tokens; fusing keeps the outputs; bad adapters are refused.
//! With gradient checkpointing (`--grad-checkpoint`) the losses are the
//! same (mlx-lm's for the llama / qwen3 cases, the run without it for a
//! `Decoder`-loop architecture and Hunyuan's cross-layer state).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::fixture;
use mlxrs_core::{Array, Dtype};
use mlxrs_lm::tuner::{self, AdapterConfig, Batch, FineTuneType, LoraParameters, Trainer};
use mlxrs_lm::{StepConfig, TokenGenerator, load_model_dir};
use mlxrs_nn::AdapterSettings;
use mlxrs_nn::optim::Adam;
use serde_json::Value;

/// Absolute tolerance on each step's loss (float32 on the CPU; measured
/// differences are <= 6e-6 over 20 steps at learning rate 1e-3; at 1e-2 the
/// tiny random model's Adam steps amplify float rounding differences (1e-6
/// at step 4, 0.35 at step 8), so the references use 1e-3).
const TOL: f32 = 1e-4;

/// The same for a bfloat16 base: the first steps agree to float32
/// rounding, then bf16 rounding of the layer outputs (8-bit mantissa,
/// ~0.04 at a loss of 10) makes the two runs drift apart by up to 0.025
/// over the 20 steps, with no trend.
const TOL_BF16: f32 = 5e-2;

fn data(name: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data/lora")
    .join(name)
}

fn json(name: &str) -> Value {
  serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<i32> {
  v.as_array()
    .unwrap()
    .iter()
    .flat_map(|x| match x.as_array() {
      Some(row) => row.iter().map(|y| y.as_i64().unwrap() as i32).collect(),
      None => vec![x.as_i64().unwrap() as i32],
    })
    .collect()
}

fn batches() -> Vec<Batch> {
  json("batches.json")
    .as_array()
    .unwrap()
    .iter()
    .map(|b| {
      let rows = b["tokens"].as_array().unwrap().len() as i32;
      let toks = ints(&b["tokens"]);
      Batch {
        tokens: Array::from_slice(&toks, &[rows, toks.len() as i32 / rows]).unwrap(),
        lengths: Array::from_slice(&ints(&b["lengths"]), &[rows, 2]).unwrap(),
      }
    })
    .collect()
}

fn run_case(name: &str, compile: bool) {
  run_case_with(name, compile, false);
}

/// [`run_case`], optionally with gradient checkpointing; returns the
/// losses.
fn run_case_with(name: &str, compile: bool, ckpt: bool) -> Vec<f32> {
  let refs = json("losses.json");
  let case = &refs["cases"][name];
  let lp = LoraParameters::from_json(&refs["lora_parameters"]).unwrap();
  let dir = fixture(case["model"].as_str().unwrap());
  // A bfloat16 fixture keeps its dtype (as on the GPU); others run float32.
  let dtype = (!case["model"].as_str().unwrap().ends_with("-bf16")).then_some(Dtype::Float32);
  let (mut model, cfg) = load_model_dir(&dir, dtype).unwrap();
  let quant = tuner::quant_config(&cfg).unwrap();
  let ft = FineTuneType::parse(case["fine_tune_type"].as_str().unwrap()).unwrap();
  let (trainable, settings): (BTreeMap<String, Array>, _) = if ft == FineTuneType::Full {
    let params = tuner::adapters::parameters(model.as_ref());
    let names: Vec<String> =
      serde_json::from_value(json(&format!("{name}_trainable.json"))).unwrap();
    (
      names
        .iter()
        .map(|n| (n.clone(), params[n].clone()))
        .collect(),
      None,
    )
  } else {
    // The adapted layers are the ones mlxrs would pick itself.
    let nl = case["num_layers"].as_i64().unwrap() as i32;
    let keys: Option<Vec<String>> = case
      .get("keys")
      .map(|k| serde_json::from_value(k.clone()).unwrap());
    let layers = tuner::adaptable_layers(model.as_mut(), quant.as_ref()).unwrap();
    let params = tuner::adapters::parameters(model.as_ref());
    let targets = tuner::lora_targets(&layers, nl, keys.as_deref()).unwrap();
    let (init, _) =
      mlxrs_core::io::load_safetensors(data(&format!("{name}_init.safetensors"))).unwrap();
    let mine = tuner::init_adapters(
      &params,
      quant.as_ref(),
      &targets,
      lp.rank,
      ft == FineTuneType::Dora,
      &mlxrs_core::random::key(0).unwrap(),
    )
    .unwrap();
    let mut a: Vec<&String> = init.keys().collect();
    let mut b: Vec<&String> = mine.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{name}: adapted layers");
    for (k, v) in &mine {
      assert_eq!(v.shape(), init[k].shape(), "{name}: {k}");
    }
    let s = AdapterSettings {
      scale: lp.scale,
      dropout: lp.dropout,
      training: false,
    };
    (init.into_iter().collect(), Some(s))
  };
  let mut trainer = Trainer::new(model, trainable, quant, settings).unwrap();
  trainer.set_compile(compile);
  trainer.set_grad_checkpoint(ckpt).unwrap();
  let mut opt = Adam::new(case["learning_rate"].as_f64().unwrap() as f32);
  let accum = case["grad_accumulation_steps"].as_u64().unwrap() as usize;
  let want: Vec<f64> = serde_json::from_value(case["losses"].clone()).unwrap();
  let mut worst = 0f32;
  let mut losses = Vec::new();
  for (i, (b, w)) in batches().iter().zip(&want).enumerate() {
    let it = i + 1;
    let (loss, _) = trainer.step(b, &mut opt, it % accum == 0, accum).unwrap();
    losses.push(loss);
    let d = (loss - *w as f32).abs();
    worst = worst.max(d);
    let tol = if dtype.is_none() { TOL_BF16 } else { TOL };
    assert!(
      d <= tol,
      "{name} step {it}: loss {loss} vs mlx-lm {w} (|d| {d})"
    );
  }
  assert_eq!(want.len(), 20);
  eprintln!(
    "{name} (compiled step: {compile}, grad checkpoint: {ckpt}): 20 steps, max |loss - mlx-lm| = \
     {worst:.2e} (tol {:.0e})",
    if dtype.is_none() { TOL_BF16 } else { TOL }
  );
  losses
}

#[test]
fn losses_match_mlx_lm_lora() {
  run_case("lora", true);
}

/// The step without compilation (mlx-lm's is compiled; both must agree).
#[test]
fn losses_match_mlx_lm_lora_uncompiled() {
  run_case("lora", false);
}

#[test]
fn losses_match_mlx_lm_qlora_4bit_uncompiled() {
  run_case("qlora", false);
}

#[test]
fn losses_match_mlx_lm_dora() {
  run_case("dora", true);
}

#[test]
fn losses_match_mlx_lm_full() {
  run_case("full", true);
}

#[test]
fn losses_match_mlx_lm_qlora_4bit() {
  run_case("qlora", true);
}

#[test]
fn losses_match_mlx_lm_grad_accumulation() {
  run_case("lora_accum", true);
}

/// gpt2: blocks named `h.N`.
#[test]
fn losses_match_mlx_lm_lora_gpt2_blocks() {
  run_case("lora_gpt2", true);
}

/// A bfloat16 base, the dtype models train in on the GPU.
#[test]
fn losses_match_mlx_lm_lora_bf16_base() {
  run_case("lora_bf16", true);
}

/// MoE experts: mlx-lm adapts every `SwitchLinear` (`LoRASwitchLinear`,
/// `lora_a` `[experts, r, in]`, `lora_b` `[experts, out, r]`).
#[test]
fn losses_match_mlx_lm_lora_moe_experts() {
  run_case("lora_moe", true);
}

#[test]
fn losses_match_mlx_lm_qlora_moe_experts_4bit() {
  run_case("qlora_moe", true);
}

/// `lora_parameters.keys` naming the embedding and the head
/// (`LoRAEmbedding`, model-level keys).
#[test]
fn losses_match_mlx_lm_lora_embedding_and_head() {
  run_case("lora_embed", true);
}

/// A tied head: the adapted embedding is also the output projection
/// (`LoRAEmbedding.as_linear`).
#[test]
fn losses_match_mlx_lm_lora_tied_embedding() {
  run_case("lora_embed_tied", true);
}

#[test]
fn losses_match_mlx_lm_dora_tied_embedding() {
  run_case("dora_embed_tied", true);
}

// Gradient checkpointing (`--grad-checkpoint`): the same losses as
// mlx-lm's run (whose checkpointing only changes what is kept for the
// backward pass), with the compiled step, for lora, dora, full and a 4-bit
// base, and with the uncompiled one (gradient accumulation, qwen3).

#[test]
fn grad_checkpoint_losses_match_mlx_lm_lora() {
  run_case_with("lora", true, true);
}

#[test]
fn grad_checkpoint_losses_match_mlx_lm_dora() {
  run_case_with("dora", true, true);
}

#[test]
fn grad_checkpoint_losses_match_mlx_lm_full() {
  run_case_with("full", true, true);
}

#[test]
fn grad_checkpoint_losses_match_mlx_lm_qlora_4bit() {
  run_case_with("qlora", true, true);
}

/// A model with its own block loop (qwen3_moe: `checkpoint::block`), with
/// expert adapters.
#[test]
fn grad_checkpoint_losses_match_mlx_lm_lora_moe() {
  run_case_with("lora_moe", true, true);
}

#[test]
fn grad_checkpoint_losses_match_mlx_lm_grad_accumulation_uncompiled() {
  run_case_with("lora_accum", false, true);
}

/// Per-step losses of LoRA (rank 4, scale 10, the last `num_layers`
/// blocks) on `fixture`, with and without gradient checkpointing, over the
/// reference batches: for the architectures of the shared `Decoder` block
/// loop (no mlx-lm reference here, the run without checkpointing is the
/// reference). Also returns the untrained model's loss on each batch.
fn lora_losses(
  fixture_name: &str,
  num_layers: i32,
  ckpt: bool,
  steps: usize,
) -> (Vec<f32>, Vec<f32>) {
  let (mut model, cfg) = load_model_dir(&fixture(fixture_name), Some(Dtype::Float32)).unwrap();
  let quant = tuner::quant_config(&cfg).unwrap();
  let layers = tuner::adaptable_layers(model.as_mut(), quant.as_ref()).unwrap();
  let params = tuner::adapters::parameters(model.as_ref());
  let targets = tuner::lora_targets(&layers, num_layers, None).unwrap();
  let key = mlxrs_core::random::key(7).unwrap();
  let init = tuner::init_adapters(&params, quant.as_ref(), &targets, 4, false, &key).unwrap();
  // lora_b starts at zero: give it values so that every adapter tensor
  // gets a gradient from the first step.
  let init: BTreeMap<String, Array> = init
    .into_iter()
    .map(|(k, v)| {
      let v = if k.ends_with("lora_b") {
        mlxrs_core::random::normal(&v.shape(), Dtype::Float32, 0.0, 0.01, Some(&key)).unwrap()
      } else {
        v
      };
      (k, v)
    })
    .collect();
  let settings = AdapterSettings {
    scale: 10.0,
    dropout: 0.0,
    training: false,
  };
  let mut trainer = Trainer::new(model, init, quant, Some(settings)).unwrap();
  trainer.set_grad_checkpoint(ckpt).unwrap();
  let mut opt = Adam::new(1e-3);
  let bs: Vec<Batch> = batches().into_iter().take(steps).collect();
  let untrained = bs
    .iter()
    .map(|b| trainer.evaluate(std::slice::from_ref(b)).unwrap())
    .collect();
  let losses = bs
    .iter()
    .map(|b| trainer.step(b, &mut opt, true, 1).unwrap().0)
    .collect();
  (losses, untrained)
}

fn same_losses_with_checkpoint(fixture_name: &str, num_layers: i32) {
  let steps = 8;
  let (plain, untrained) = lora_losses(fixture_name, num_layers, false, steps);
  let (ckpt, _) = lora_losses(fixture_name, num_layers, true, steps);
  let worst = plain
    .iter()
    .zip(&ckpt)
    .map(|(a, b)| (a - b).abs())
    .fold(0f32, f32::max);
  assert!(
    worst <= TOL,
    "{fixture_name}: losses {plain:?} vs {ckpt:?} with checkpointing"
  );
  // The adapters did train (so equal losses mean equal gradients).
  let moved = plain
    .iter()
    .zip(&untrained)
    .map(|(a, b)| (a - b).abs())
    .fold(0f32, f32::max);
  assert!(
    moved > 100.0 * TOL,
    "{fixture_name}: training changed the losses by only {moved}"
  );
  eprintln!(
    "{fixture_name}: {steps} steps, max |loss - loss with grad checkpoint| = {worst:.2e} \
     (training moved the losses by up to {moved:.2e})"
  );
}

#[test]
fn grad_checkpoint_same_losses_decoder_loop_starcoder2() {
  same_losses_with_checkpoint("starcoder2", 2);
}

/// Hunyuan hands k/v from layer to layer (cross-layer attention): the
/// checkpointed block passes them through.
#[test]
fn grad_checkpoint_same_losses_hunyuan_cross_layer() {
  same_losses_with_checkpoint("hunyuan", 2);
}

/// Models with their own block loops that go through
/// `checkpoint::block` (qwen3_moe against mlx-lm above).
#[test]
fn grad_checkpoint_same_losses_own_loops() {
  for (name, layers) in [
    ("mixtral", 2),
    ("gemma2", 2),
    ("gemma3_text", 2),
    ("phi3", 2),
    ("olmo2", 2),
    ("olmo3", 2),
    ("smollm3", 2),
    ("gpt_oss", 2),
  ] {
    same_losses_with_checkpoint(name, layers);
  }
}

#[test]
fn grad_checkpoint_unsupported_architecture_is_an_error() {
  let (mut model, cfg) = load_model_dir(&fixture("deepseek_v3"), Some(Dtype::Float32)).unwrap();
  let quant = tuner::quant_config(&cfg).unwrap();
  let layers = tuner::adaptable_layers(model.as_mut(), quant.as_ref()).unwrap();
  let params = tuner::adapters::parameters(model.as_ref());
  let targets = tuner::lora_targets(&layers, 1, None).unwrap();
  let key = mlxrs_core::random::key(0).unwrap();
  let init = tuner::init_adapters(&params, quant.as_ref(), &targets, 4, false, &key).unwrap();
  let settings = AdapterSettings {
    scale: 10.0,
    dropout: 0.0,
    training: false,
  };
  let mut trainer = Trainer::new(model, init.into_iter().collect(), quant, Some(settings)).unwrap();
  let e = trainer.set_grad_checkpoint(true).unwrap_err().to_string();
  assert!(e.contains("gradient checkpointing is not supported"), "{e}");
  // Off is always fine.
  trainer.set_grad_checkpoint(false).unwrap();
}

fn greedy(model: &dyn mlxrs_lm::LanguageModel, prompt: &[i32], n: usize) -> Vec<i32> {
  let cfg = StepConfig {
    max_tokens: n,
    ..StepConfig::default()
  };
  TokenGenerator::new(model, prompt, &cfg, None)
    .unwrap()
    .map(|s| s.unwrap().token)
    .collect()
}

#[test]
fn mlx_lm_trained_adapter_gives_mlx_lm_tokens_and_fuses() {
  let (mut model, cfg) = load_model_dir(&fixture("llama"), Some(Dtype::Float32)).unwrap();
  let quant = tuner::quant_config(&cfg).unwrap();
  let before = greedy(model.as_ref(), &[5, 17, 99, 240, 3], 12);
  let layers = tuner::adaptable_layers(model.as_mut(), quant.as_ref()).unwrap();
  let ac = tuner::load_adapters(model.as_mut(), quant.as_ref(), &data("mlx_adapter")).unwrap();
  let exp = json("mlx_adapter/expected.json");
  let prompt = ints(&exp["prompt"]);
  let got = greedy(model.as_ref(), &prompt, 12);
  assert_eq!(
    got,
    ints(&exp["tokens"]),
    "greedy tokens with the mlx-lm adapter"
  );
  assert_ne!(got, before, "the adapter changes the output");

  // Fused weights give the adapted model's logits.
  let toks = Array::from_slice(&prompt, &[1, prompt.len() as i32]).unwrap();
  let mut caches = model.make_caches(None);
  let mut want = model.forward(&toks, &mut caches).unwrap();
  let params = tuner::adapters::parameters(model.as_ref());
  let fused = tuner::fuse_params(&params, &layers, quant.as_ref(), ac.lora.scale, false).unwrap();
  assert!(fused.keys().all(|k| !k.contains("lora")));
  tuner::reload(model.as_mut(), fused, quant.as_ref(), None).unwrap();
  let mut caches = model.make_caches(None);
  let mut got = model.forward(&toks, &mut caches).unwrap();
  let (g, w) = (got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
  let d = g
    .iter()
    .zip(&w)
    .map(|(a, b)| (a - b).abs())
    .fold(0f32, f32::max);
  assert!(d < 1e-4, "fused logits differ by {d}");
}

#[test]
fn adapters_for_another_model_are_refused_listing_keys() {
  // The llama adapter on qwen3 (other dims, other layer names).
  let (mut model, cfg) = load_model_dir(&fixture("qwen3"), Some(Dtype::Float32)).unwrap();
  let quant = tuner::quant_config(&cfg).unwrap();
  let err = tuner::load_adapters(model.as_mut(), quant.as_ref(), &data("mlx_adapter"))
    .expect_err("must fail")
    .to_string();
  assert!(err.contains("incompatible tensors"), "{err}");
  assert!(
    err.contains("model.layers.0.self_attn.q_proj.lora_b"),
    "{err}"
  );
  assert!(
    err.contains("does not match model parameter shape"),
    "{err}"
  );
  // A missing folder.
  let e = tuner::load_adapters(model.as_mut(), quant.as_ref(), &data("nope"))
    .err()
    .unwrap();
  assert!(e.to_string().contains("does not exist"), "{e}");
  let c = AdapterConfig::read(&data("mlx_adapter")).unwrap();
  assert_eq!(c.fine_tune_type, FineTuneType::Lora);
}

#[test]
fn bad_data_is_reported_with_line_numbers() {
  let dir = tempfile::tempdir().unwrap();
  let tok = mlxrs_lm::Tokenizer::from_dir(fixture("llama")).unwrap();
  // A malformed line names its number.
  let p = dir.path().join("train.jsonl");
  std::fs::write(
    &p,
    "{\"text\": \"ok\"}\n{\"text\": \"fine\"}\n{\"text\": oops}\n",
  )
  .unwrap();
  let e = tuner::datasets::load_split(&p, &tok, false)
    .unwrap_err()
    .to_string();
  assert!(e.contains("train.jsonl:3: invalid JSON"), "{e}");
  // A line of another format names its number.
  std::fs::write(&p, "{\"text\": \"ok\"}\n{\"prompt\": \"p\"}\n").unwrap();
  let e = tuner::datasets::load_split(&p, &tok, false)
    .unwrap_err()
    .to_string();
  assert!(e.contains("line 2: missing \"text\""), "{e}");
  // An empty file.
  std::fs::write(&p, "\n").unwrap();
  let e = tuner::datasets::load_split(&p, &tok, false)
    .unwrap_err()
    .to_string();
  assert!(e.contains("the dataset is empty"), "{e}");
  // An unknown format, and --mask-prompt on text.
  std::fs::write(&p, "{\"foo\": 1}\n").unwrap();
  let e = tuner::datasets::load_split(&p, &tok, false)
    .unwrap_err()
    .to_string();
  assert!(e.contains("unsupported data format"), "{e}");
  std::fs::write(&p, "{\"text\": \"a\"}\n").unwrap();
  let e = tuner::datasets::load_split(&p, &tok, true)
    .unwrap_err()
    .to_string();
  assert!(e.contains("not supported for a {\"text\"} dataset"), "{e}");
  // Fewer examples than the batch size.
  let ex = tuner::datasets::load_split(&p, &tok, false).unwrap();
  let e = tuner::batch_indices(&ex, 4).unwrap_err().to_string();
  assert!(e.contains("at least batch_size=4"), "{e}");
}

#[test]
fn formats_mask_prompt_and_truncation_follow_mlx_lm() {
  let dir = tempfile::tempdir().unwrap();
  let tok = mlxrs_lm::Tokenizer::from_dir(fixture("llama")).unwrap();
  let p = dir.path().join("train.jsonl");
  std::fs::write(
    &p,
    "{\"prompt\": \"What is two plus two?\", \"completion\": \"Four.\"}\n",
  )
  .unwrap();
  let ex = tuner::datasets::load_split(&p, &tok, true).unwrap();
  // The prompt (with the assistant header) is masked; the answer is not.
  let user_only = tok
    .apply_chat_template_ids(
      &[mlxrs_lm::Message::user("What is two plus two?")],
      &mlxrs_lm::ChatOptions {
        add_generation_prompt: true,
        ..Default::default()
      },
    )
    .unwrap();
  assert_eq!(ex[0].offset, user_only.len());
  assert!(ex[0].tokens.len() > ex[0].offset);
  assert_eq!(&ex[0].tokens[..ex[0].offset], &user_only[..]);
  // Truncation: widths round up to 32k+1 and are capped at max_seq_length.
  let long = tuner::Example {
    tokens: (1..=40).collect(),
    offset: 0,
  };
  let short = tuner::Example {
    tokens: vec![1, 2, 3],
    offset: 1,
  };
  let (b, longest) = tuner::make_batch(&[&short, &long], 1000).unwrap();
  assert_eq!(b.tokens.shape(), vec![2, 65]);
  assert_eq!(longest, None);
  let (mut b, longest) = tuner::make_batch(&[&short, &long], 16).unwrap();
  assert_eq!(b.tokens.shape(), vec![2, 16]);
  assert_eq!(longest, Some(40));
  assert_eq!(b.lengths.to_vec::<i32>().unwrap(), vec![1, 3, 0, 16]);
}

#[test]
fn dataset_tokens_and_offsets_equal_mlx_lm() {
  let dir = tempfile::tempdir().unwrap();
  let tok = mlxrs_lm::Tokenizer::from_dir(fixture("llama")).unwrap();
  let refs = json("datasets.json");
  for (name, case) in refs.as_object().unwrap() {
    let p = dir.path().join(format!("{name}.jsonl"));
    let lines: Vec<String> = case["rows"]
      .as_array()
      .unwrap()
      .iter()
      .map(|r| r.to_string())
      .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    let mask = case["mask_prompt"].as_bool().unwrap();
    let got = tuner::datasets::load_split(&p, &tok, mask).unwrap();
    for (g, want) in got.iter().zip(case["examples"].as_array().unwrap()) {
      let mut w = ints(want);
      let off = w.pop().unwrap() as usize;
      let toks: Vec<i32> = g.tokens.iter().map(|&t| t as i32).collect();
      assert_eq!(toks, w, "{name}: tokens");
      assert_eq!(g.offset, off, "{name}: prompt offset");
    }
  }
}
