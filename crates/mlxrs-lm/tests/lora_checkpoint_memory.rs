//! Peak memory of a LoRA training step with and without gradient
//! checkpointing (`mlxrs lora --grad-checkpoint`, python mlx-lm's
//! `grad_checkpoint`), on a shape where the activations dominate: the tiny
//! llama fixture's blocks repeated into an 8-block model (hidden 64), LoRA
//! on every block, batch 4 x 512 tokens. Its own test binary, so that no
//! other test allocates while the peak is measured.
//!
//! `cargo test -p mlxrs-lm --test lora_checkpoint_memory -- --nocapture`

mod common;

use std::collections::{BTreeMap, HashMap};

use common::fixture;
use mlxrs_core::{Array, memory};
use mlxrs_lm::tuner::{self, Batch, Trainer};
use mlxrs_nn::AdapterSettings;
use mlxrs_nn::optim::Adam;

const BLOCKS: usize = 8;
const ROWS: i32 = 4;
const WIDTH: i32 = 513;

/// The fixture's two blocks repeated into `BLOCKS` blocks.
fn deep_llama() -> Box<dyn mlxrs_lm::LanguageModel> {
  let dir = fixture("llama");
  let (small, _) = mlxrs_lm::load_model_dir(&dir, Some(mlxrs_core::Dtype::Float32)).unwrap();
  let mut cfg: serde_json::Value =
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
  cfg["num_hidden_layers"] = BLOCKS.into();
  let mut model = mlxrs_lm::model::build_model(&cfg).unwrap();
  let mut w = HashMap::new();
  for (k, v) in tuner::adapters::parameters(small.as_ref()) {
    match k.strip_prefix("model.layers.") {
      Some(rest) => {
        let (i, tail) = rest.split_once('.').unwrap();
        let i: usize = i.parse().unwrap();
        for j in (0..BLOCKS).filter(|j| j % 2 == i) {
          w.insert(format!("model.layers.{j}.{tail}"), v.clone());
        }
      }
      None => {
        w.insert(k, v);
      }
    }
  }
  tuner::reload(model.as_mut(), w, None, None).unwrap();
  model
}

/// `(loss, peak bytes, bytes live before the step)` of the second compiled
/// LoRA step (the first one traces).
fn measure(ckpt: bool, batch: &Batch) -> (f32, usize, usize) {
  let mut model = deep_llama();
  let layers = tuner::adaptable_layers(model.as_mut(), None).unwrap();
  let params = tuner::adapters::parameters(model.as_ref());
  let targets = tuner::lora_targets(&layers, BLOCKS as i32, None).unwrap();
  let key = mlxrs_core::random::key(0).unwrap();
  let init = tuner::init_adapters(&params, None, &targets, 8, false, &key).unwrap();
  let init: BTreeMap<String, Array> = init.into_iter().collect();
  let settings = AdapterSettings {
    scale: 20.0,
    dropout: 0.0,
    training: false,
  };
  let mut trainer = Trainer::new(model, init, None, Some(settings)).unwrap();
  trainer.set_grad_checkpoint(ckpt).unwrap();
  let mut opt = Adam::new(1e-4);
  trainer.step(batch, &mut opt, true, 1).unwrap();
  memory::clear_cache().unwrap();
  let live = memory::active_memory().unwrap();
  memory::reset_peak_memory().unwrap();
  let (loss, _) = trainer.step(batch, &mut opt, true, 1).unwrap();
  let peak = memory::peak_memory().unwrap();
  (loss, peak, live)
}

#[test]
fn grad_checkpoint_lowers_peak_memory() {
  let n = (ROWS * WIDTH) as usize;
  let toks: Vec<i32> = (0..n).map(|i| ((i * 7919 + 13) % 511) as i32 + 1).collect();
  let lens: Vec<i32> = (0..ROWS).flat_map(|_| [0, WIDTH - 1]).collect();
  let batch = Batch {
    tokens: Array::from_slice(&toks, &[ROWS, WIDTH]).unwrap(),
    lengths: Array::from_slice(&lens, &[ROWS, 2]).unwrap(),
  };
  let (l0, p0, a0) = measure(false, &batch);
  let (l1, p1, a1) = measure(true, &batch);
  let mb = |b: usize| b as f64 / 1e6;
  eprintln!(
    "LoRA step, llama {BLOCKS} blocks (hidden 64), batch {ROWS} x {}: peak {:.1} MB without \
     checkpointing, {:.1} MB with ({:.0}% less; live before the step {:.1} / {:.1} MB); \
     loss {l0} / {l1}",
    WIDTH - 1,
    mb(p0),
    mb(p1),
    100.0 * (1.0 - p1 as f64 / p0 as f64),
    mb(a0),
    mb(a1)
  );
  assert!((l0 - l1).abs() <= 1e-4, "same loss: {l0} vs {l1}");
  assert!(
    (p1 as f64) < 0.8 * p0 as f64,
    "checkpointing lowers the peak: {p1} vs {p0} bytes"
  );
}
