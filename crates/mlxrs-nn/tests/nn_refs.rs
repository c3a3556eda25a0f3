//! mlxrs-nn layers, caches, losses, optimizers and adapters against Python
//! `mlx.nn` / mlx-lm on the same weights and inputs (references made by
//! `scripts/make_nn_refs.py`, in `tests/data/nn_refs.*`).

use std::collections::{BTreeMap, HashMap};

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::optim::{self, Optimizer};
use mlxrs_nn::*;
use serde_json::Value;

struct Refs {
  arrays: HashMap<String, Array>,
  json: Value,
}

fn data(name: &str) -> std::path::PathBuf {
  std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data")
    .join(name)
}

thread_local! {
  // Per test thread: MLX arrays are not shared across threads.
  static REFS: Refs = {
    let (arrays, _) = mlxrs_core::io::load_safetensors(data("nn_refs.safetensors")).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(data("nn_refs.json")).unwrap()).unwrap();
    Refs { arrays, json }
  };
}

fn json() -> Value {
  REFS.with(|r| r.json.clone())
}

/// Reference array `name`.
fn r(name: &str) -> Array {
  REFS
    .with(|refs| refs.arrays.get(name).cloned())
    .unwrap_or_else(|| panic!("no reference array {name}"))
}

fn f32s(a: &Array) -> Vec<f32> {
  let mut a = ops::astype(a, Dtype::Float32).unwrap();
  a.to_vec::<f32>().unwrap()
}

/// Max |a - b|, asserting equal shapes.
fn max_diff(got: &Array, want: &Array) -> f32 {
  assert_eq!(got.shape(), want.shape(), "shape");
  f32s(got)
    .iter()
    .zip(f32s(want))
    .map(|(a, b)| (a - b).abs())
    .fold(0.0, f32::max)
}

fn check(what: &str, got: &Array, want: &str, tol: f32) -> f32 {
  let d = max_diff(got, &r(want));
  eprintln!("{what}: max |diff| {d:.2e}");
  assert!(d <= tol, "{what}: max |diff| {d} > {tol}");
  d
}

fn load<M: Module>(m: &mut M, prefix: &str, names: &[&str]) {
  let map: HashMap<String, Array> = names
    .iter()
    .map(|n| (n.to_string(), r(&format!("{prefix}.{n}"))))
    .collect();
  m.load_weights(map).unwrap();
}

// ------------------------------------------------------------------ layers

#[test]
fn linear_and_quantized_linear() {
  let mut lin = Linear::new(8, 16, true);
  load(&mut lin, "linear", &["weight", "bias"]);
  check(
    "Linear",
    &lin.forward(&r("linear.x")).unwrap(),
    "linear.y",
    1e-5,
  );

  for (gs, bits, mode, tol) in [
    (32, 4, "affine", 1e-4),
    (64, 8, "affine", 1e-4),
    (32, 4, "mxfp4", 1e-4),
  ] {
    let mut q = Linear::new(64, 32, true);
    load(&mut q, "qlinear", &["weight", "bias"]);
    q.quantize(&QuantParams::new(Some(gs), Some(bits), mode).unwrap())
      .unwrap();
    let tag = format!("{mode}_{gs}_{bits}");
    assert_eq!(
      max_diff(&q.weight, &r(&format!("qlinear.{tag}.weight"))),
      0.0,
      "{tag}: packed weights"
    );
    check(
      &format!("QuantizedLinear {tag}"),
      &q.forward(&r("qlinear.x")).unwrap(),
      &format!("qlinear.{tag}.y"),
      tol,
    );
    // Quantized layers are frozen, as python's are.
    assert!(q.trainable_parameters().is_empty());
  }
}

#[test]
fn embedding_and_quantized_embedding() {
  let mut e = Embedding::new(20, 64);
  load(&mut e, "embedding", &["weight"]);
  let ids = r("embedding.ids");
  check("Embedding", &e.forward(&ids).unwrap(), "embedding.y", 0.0);
  check(
    "Embedding.as_linear",
    &e.as_linear(&r("embedding.h")).unwrap(),
    "embedding.as_linear",
    1e-4,
  );
  e.quantize(&QuantParams::new(Some(32), Some(4), "affine").unwrap())
    .unwrap();
  check(
    "QuantizedEmbedding",
    &e.forward(&ids).unwrap(),
    "qembedding.y",
    1e-5,
  );
  check(
    "QuantizedEmbedding.as_linear",
    &e.as_linear(&r("embedding.h")).unwrap(),
    "qembedding.as_linear",
    1e-4,
  );
}

struct Small {
  embed: Embedding,
  layers: Vec<Linear>,
  head: Linear,
}
module!(Small {
  embed,
  layers,
  head
});

impl Small {
  fn forward(&self, ids: &Array) -> Array {
    let mut h = self.embed.forward(ids).unwrap();
    for l in &self.layers {
      h = gelu(&l.forward(&h).unwrap()).unwrap();
    }
    self.head.forward(&h).unwrap()
  }
}

#[test]
fn quantize_a_model() {
  let mut m = Small {
    embed: Embedding::new(20, 64),
    layers: vec![Linear::new(64, 64, true), Linear::new(64, 48, true)],
    head: Linear::new(48, 10, true),
  };
  let names = [
    "embed.weight",
    "layers.0.weight",
    "layers.0.bias",
    "layers.1.weight",
    "layers.1.bias",
    "head.weight",
    "head.bias",
  ];
  load(&mut m, "small", &names);
  let ids = r("embedding.ids");
  check("Small dense", &m.forward(&ids), "small.y_dense", 1e-5);
  let done = quantize(&mut m, Some(32), Some(4), "affine", None).unwrap();
  let want: Vec<String> = json()["small.quantized_paths"]
    .as_array()
    .unwrap()
    .iter()
    .map(|v| v.as_str().unwrap().to_string())
    .collect();
  let mut got = done.clone();
  got.sort();
  assert_eq!(got, want, "quantized layers");
  check(
    "nn.quantize(model)",
    &m.forward(&ids),
    "small.y_quant",
    1e-4,
  );
  // The head stayed dense and trainable; everything else is frozen.
  let t: Vec<String> = m.trainable_parameters().into_keys().collect();
  assert_eq!(t, vec!["head.bias".to_string(), "head.weight".to_string()]);
  // Predicate and errors.
  let mut m2 = Small {
    embed: Embedding::new(20, 64),
    layers: vec![],
    head: Linear::new(48, 10, false),
  };
  load(&mut m2, "small", &["embed.weight", "head.weight"]);
  let only_embed = |p: &str, _l: &dyn Quantizable| p == "embed";
  assert_eq!(
    quantize(&mut m2, None, Some(8), "affine", Some(&only_embed)).unwrap(),
    vec!["embed".to_string()]
  );
  let e = quantize_with(&mut m2, &|_, _| {
    Some(QuantParams {
      group_size: 32,
      bits: 4,
      mode: mlxrs_nn::QuantMode::Affine,
    })
  })
  .unwrap_err();
  assert!(
    e.to_string().contains("head") && e.to_string().contains("group_size"),
    "{e}"
  );
  assert!(quantize(&mut m2, Some(32), Some(7), "affine", None).is_err());
  assert!(quantize(&mut m2, None, None, "bogus", None).is_err());
}

#[test]
fn norms() {
  let x = r("norm.x");
  let mut rms = RmsNorm::new(16, 1e-5);
  load(&mut rms, "rms", &["weight"]);
  check("RMSNorm", &rms.forward(&x).unwrap(), "rms.y", 1e-5);
  let mut ln = LayerNorm::new(16, 1e-5, true, true);
  load(&mut ln, "ln", &["weight", "bias"]);
  check("LayerNorm", &ln.forward(&x).unwrap(), "ln.y", 1e-5);

  let xg = r("gn.x");
  for (pt, tag) in [(false, "mlx"), (true, "pt")] {
    let mut gn = GroupNorm::new(4, 16, 1e-5, true, pt).unwrap();
    load(&mut gn, &format!("gn_{tag}"), &["weight", "bias"]);
    check(
      &format!("GroupNorm ({tag})"),
      &gn.forward(&xg).unwrap(),
      &format!("gn_{tag}.y"),
      1e-5,
    );
  }
  let gn = GroupNorm::new(2, 16, 1e-5, false, false).unwrap();
  check(
    "GroupNorm (no affine)",
    &gn.forward(&xg).unwrap(),
    "gn_noaffine.y",
    1e-5,
  );
  assert!(GroupNorm::new(3, 16, 1e-5, true, false).is_err());
  assert!(gn.forward(&x.reshape(&[12, 8]).unwrap()).is_err());

  let mut bn = BatchNorm::new(16, 1e-5, 0.1, true, true).unwrap();
  load(
    &mut bn,
    "bn",
    &["weight", "bias", "running_mean", "running_var"],
  );
  check(
    "BatchNorm (eval)",
    &bn.forward(&xg).unwrap(),
    "bn.y_eval",
    1e-5,
  );
  assert_eq!(
    bn.trainable_parameters().into_keys().collect::<Vec<_>>(),
    vec!["bias".to_string(), "weight".to_string()],
    "running stats are frozen"
  );
  bn.unfreeze();
  assert_eq!(
    bn.trainable_parameters().len(),
    2,
    "running stats stay frozen after unfreeze"
  );
  bn.train();
  check(
    "BatchNorm (train)",
    &bn.forward_mut(&xg).unwrap(),
    "bn.y_train",
    1e-5,
  );
  check(
    "BatchNorm running_mean",
    bn.running_mean.as_ref().unwrap(),
    "bn.running_mean_after",
    1e-6,
  );
  check(
    "BatchNorm running_var",
    bn.running_var.as_ref().unwrap(),
    "bn.running_var_after",
    1e-5,
  );
  assert!(
    bn.forward(&r("linear.x").reshape(&[1, 1, 2, 3, 8]).unwrap())
      .is_err()
  );
}

#[test]
fn convolutions() {
  let x = r("conv1d.x");
  let mut c = Conv1d::new(4, 6, 3, 2, 1, 1, 2, true).unwrap();
  load(&mut c, "conv1d", &["weight", "bias"]);
  check(
    "Conv1d (stride 2, pad 1, groups 2)",
    &c.forward(&x).unwrap(),
    "conv1d.y",
    1e-5,
  );
  let mut c = Conv1d::new(4, 5, 3, 1, 2, 2, 1, false).unwrap();
  load(&mut c, "conv1d_dil", &["weight"]);
  check(
    "Conv1d (dilation 2)",
    &c.forward(&x).unwrap(),
    "conv1d_dil.y",
    1e-5,
  );
  let mut c2 = Conv2d::new(3, 4, (3, 2), (1, 2), (1, 0), (1, 1), 1, true).unwrap();
  load(&mut c2, "conv2d", &["weight", "bias"]);
  check(
    "Conv2d",
    &c2.forward(&r("conv2d.x")).unwrap(),
    "conv2d.y",
    1e-5,
  );
  let mut ct = ConvTranspose1d::new(4, 3, 3, 2, 1, 1, 1, true).unwrap();
  load(&mut ct, "convt1d", &["weight", "bias"]);
  check(
    "ConvTranspose1d",
    &ct.forward(&r("convt1d.x")).unwrap(),
    "convt1d.y",
    1e-5,
  );
  let mut ct2 = ConvTranspose2d::new(3, 2, (2, 3), (2, 2), (0, 0), (1, 1), (0, 0), true).unwrap();
  load(&mut ct2, "convt2d", &["weight", "bias"]);
  check(
    "ConvTranspose2d",
    &ct2.forward(&r("conv2d.x")).unwrap(),
    "convt2d.y",
    1e-5,
  );
  // Bad input: wrong channel count / rank, bad construction.
  assert!(c2.forward(&x).is_err());
  assert!(Conv1d::new(5, 6, 3, 1, 0, 1, 2, true).is_err());
  assert!(Conv1d::new(4, 6, 0, 1, 0, 1, 1, true).is_err());
  let mut bad = Conv1d::new(4, 6, 3, 1, 0, 1, 1, true).unwrap();
  let e = bad.load_weights(HashMap::from([
    ("weight".into(), r("conv1d.weight")),
    ("bias".into(), r("conv1d.bias")),
  ]));
  assert!(
    e.unwrap_err()
      .to_string()
      .contains("weight has shape [6, 3, 2], expected [6, 3, 4]")
  );
}

#[test]
fn dropout() {
  let x = r("dropout.x");
  let key = r("dropout.key");
  let mut d = Dropout::new(0.3).unwrap();
  // Evaluation mode (the default here): identity.
  assert_eq!(
    max_diff(&d.forward_with_key(&x, Some(&key)).unwrap(), &x),
    0.0
  );
  d.train();
  check(
    "Dropout",
    &d.forward_with_key(&x, Some(&key)).unwrap(),
    "dropout.y",
    1e-6,
  );
  let mut d2 = Dropout::new_2d(0.3).unwrap();
  d2.set_training(true);
  check(
    "Dropout2d",
    &d2.forward_with_key(&r("dropout2d.x"), Some(&key)).unwrap(),
    "dropout2d.y",
    1e-6,
  );
  assert!(d2.forward(&x).is_err());
  assert!(Dropout::new(1.0).is_err());
}

#[test]
fn multi_head_attention() {
  let opts = MhaDims {
    key_input_dims: Some(12),
    ..MhaDims::default()
  };
  let mut mha = MultiHeadAttention::new(16, 4, opts, true).unwrap();
  let names = [
    "query_proj.weight",
    "query_proj.bias",
    "key_proj.weight",
    "key_proj.bias",
    "value_proj.weight",
    "value_proj.bias",
    "out_proj.weight",
    "out_proj.bias",
  ];
  load(&mut mha, "mha", &names);
  let (q, kv, m) = (r("mha.q"), r("mha.kv"), r("mha.mask"));
  check(
    "MultiHeadAttention (mask)",
    &mha.forward(&q, &kv, &kv, Some(&m)).unwrap(),
    "mha.y",
    1e-5,
  );
  check(
    "MultiHeadAttention",
    &mha.forward(&q, &kv, &kv, None).unwrap(),
    "mha.y_nomask",
    1e-5,
  );
  check(
    "create_additive_causal_mask",
    &MultiHeadAttention::create_additive_causal_mask(5, Dtype::Float32).unwrap(),
    "mha.causal",
    0.0,
  );
  assert!(MultiHeadAttention::new(16, 5, MhaDims::default(), false).is_err());
  let fresh = MultiHeadAttention::init(16, 4, MhaDims::default(), false, None).unwrap();
  assert_eq!(fresh.num_parameters(), 4 * 16 * 16);
}

#[test]
fn sinusoidal_encoding() {
  let pos = r("sin.pos");
  check(
    "SinusoidalPositionalEncoding",
    &SinusoidalPositionalEncoding::with_defaults(16)
      .unwrap()
      .forward(&pos)
      .unwrap(),
    "sin.y",
    1e-6,
  );
  let pe = SinusoidalPositionalEncoding::new(16, 1e-4, 1.0, Some(1.0), true, true).unwrap();
  check(
    "SinusoidalPositionalEncoding (cos_first, full_turns)",
    &pe.forward(&pos).unwrap(),
    "sin.y2",
    1e-5,
  );
  assert!(SinusoidalPositionalEncoding::with_defaults(15).is_err());
}

#[test]
fn pooling() {
  let (x1, x2) = (r("pool.x1"), r("pool.x2"));
  check(
    "MaxPool1d(3, 2, 1)",
    &Pool::max1d(3, Some(2), 1).unwrap().forward(&x1).unwrap(),
    "pool.max1d",
    0.0,
  );
  check(
    "AvgPool1d(2)",
    &Pool::avg1d(2, None, 0).unwrap().forward(&x1).unwrap(),
    "pool.avg1d",
    1e-6,
  );
  check(
    "AvgPool1d(3, 2, 1)",
    &Pool::avg1d(3, Some(2), 1).unwrap().forward(&x1).unwrap(),
    "pool.avg1d_pad",
    1e-6,
  );
  check(
    "MaxPool2d((2,3), (1,2), (1,1))",
    &Pool::max2d((2, 3), Some((1, 2)), (1, 1))
      .unwrap()
      .forward(&x2)
      .unwrap(),
    "pool.max2d",
    0.0,
  );
  check(
    "AvgPool2d(2)",
    &Pool::avg2d((2, 2), None, (0, 0))
      .unwrap()
      .forward(&x2)
      .unwrap(),
    "pool.avg2d",
    1e-6,
  );
  check(
    "MaxPool2d(3) tiled",
    &Pool::max2d((3, 3), None, (0, 0))
      .unwrap()
      .forward(&r("pool.x3"))
      .unwrap(),
    "pool.max2d_tiled",
    0.0,
  );
  assert!(Pool::max1d(0, None, 0).is_err());
  assert!(Pool::max1d(3, None, 0).unwrap().forward(&x2).is_err());
  assert!(Pool::max1d(20, None, 0).unwrap().forward(&x1).is_err());
}

#[test]
fn upsample() {
  let x = r("up.x");
  let nearest = |s: &[f64]| Upsample::new(s, UpsampleMode::Nearest, false).unwrap();
  let linear = |s: &[f64], ac| Upsample::new(s, UpsampleMode::Linear, ac).unwrap();
  check(
    "Upsample nearest x2",
    &nearest(&[2.0]).forward(&x).unwrap(),
    "up.nearest2",
    0.0,
  );
  check(
    "Upsample nearest (1.5, 2.5)",
    &nearest(&[1.5, 2.5]).forward(&x).unwrap(),
    "up.nearest_frac",
    0.0,
  );
  check(
    "Upsample nearest x0.5",
    &nearest(&[0.5]).forward(&r("up.xd")).unwrap(),
    "up.nearest_down",
    0.0,
  );
  check(
    "Upsample linear x2",
    &linear(&[2.0], false).forward(&x).unwrap(),
    "up.linear2",
    1e-6,
  );
  check(
    "Upsample linear x2 align_corners",
    &linear(&[2.0], true).forward(&x).unwrap(),
    "up.linear2_ac",
    1e-6,
  );
  check(
    "Upsample linear (1.5, 0.75)",
    &linear(&[1.5, 0.75], false).forward(&x).unwrap(),
    "up.linear_frac",
    1e-6,
  );
  check(
    "Upsample linear 1-D x3",
    &linear(&[3.0], false).forward(&r("up.x1")).unwrap(),
    "up.linear1d",
    1e-6,
  );
  assert!(nearest(&[2.0, 2.0, 2.0]).forward(&x).is_err());
  assert!(Upsample::new(&[0.0], UpsampleMode::Nearest, false).is_err());
  assert!(nearest(&[2.0]).forward(&r("act.x")).is_err());
}

#[test]
fn activations() {
  let x = r("act.x");
  for n in [
    "gelu",
    "gelu_approx",
    "gelu_fast_approx",
    "silu",
    "softplus",
    "mish",
    "relu",
    "relu2",
    "sigmoid",
  ] {
    let y = match n {
      "gelu" => gelu(&x),
      "gelu_approx" => gelu_approx(&x),
      "gelu_fast_approx" => gelu_fast_approx(&x),
      "silu" => silu(&x),
      "softplus" => softplus(&x),
      "mish" => mish(&x),
      "relu" => relu(&x),
      "relu2" => relu2(&x),
      _ => sigmoid(&x),
    }
    .unwrap();
    check(n, &y, &format!("act.{n}"), 2e-6);
  }
}

#[test]
fn rope_families_match_mlx_lm() {
  let x = r("rope.x");
  let j = json();
  let cfgs = j["rope"].as_object().unwrap();
  for (tag, c) in cfgs {
    let scaling = c.get("config").filter(|v| !v.is_null());
    let maxpos = c["max_position_embeddings"].as_i64().map(|v| v as i32);
    let rope = Rope::from_config(
      16,
      10000.0,
      c["traditional"].as_bool().unwrap(),
      scaling,
      maxpos,
    )
    .unwrap();
    check(
      &format!("RoPE {tag}"),
      &rope.forward(&x, 3).unwrap(),
      &format!("rope.{tag}"),
      2e-5,
    );
  }
}

// ------------------------------------------------------------------ caches

#[test]
fn quantized_cache_attention_matches_mlx_lm() {
  let (q, k, v) = (r("qsdpa.q"), r("qsdpa.k"), r("qsdpa.v"));
  let sl = |a: &Array, lo: i32, hi: i32| {
    let s = a.shape();
    ops::slice(a, &[0, 0, lo, 0], &[s[0], s[1], hi, s[3]], &[1, 1, 1, 1]).unwrap()
  };
  let mut cache = KvCache::quantized(64, 8).unwrap();
  assert_eq!(cache.class_name(), "QuantizedKVCache");
  let scale = 64f32.powf(-0.5);
  let y1 = attention_with_cache_update(
    &q,
    &sl(&k, 0, 5),
    &sl(&v, 0, 5),
    &mut cache,
    scale,
    &AttnMask::Causal,
    None,
  )
  .unwrap();
  check("quantized SDPA (prefill, causal)", &y1, "qsdpa.y1", 1e-5);
  let y2 = attention_with_cache_update(
    &sl(&q, 0, 1),
    &sl(&k, 5, 6),
    &sl(&v, 5, 6),
    &mut cache,
    scale,
    &AttnMask::None,
    None,
  )
  .unwrap();
  check("quantized SDPA (decode)", &y2, "qsdpa.y2", 1e-5);
  assert_eq!(cache.offset, 6);
  // Sinks are refused with a quantized cache, as in python.
  let sinks = Array::from_slice(&[0.0f32; 4], &[4]).unwrap();
  assert!(
    attention_with_cache_update(
      &q,
      &sl(&k, 0, 1),
      &sl(&v, 0, 1),
      &mut cache,
      scale,
      &AttnMask::None,
      Some(&sinks)
    )
    .is_err()
  );
  // The dense view (update_and_fetch) is the dequantized cache.
  let mut c2 = KvCache::quantized(64, 8).unwrap();
  let (kd, _) = c2.update_and_fetch(&k, &v).unwrap();
  assert_eq!(kd.shape(), vec![1, 2, 6, 64]);
  assert!(max_diff(&kd, &k) < 0.05);
  // A dense cache converts (python `to_quantized`), trims, and rejects bad updates.
  let mut d = KvCache::standard();
  d.update_and_fetch(&k, &v).unwrap();
  let mut qd = d.to_quantized(64, 4).unwrap();
  assert_eq!(qd.offset, 6);
  assert_eq!(qd.trim(2), 2);
  assert_eq!(qd.offset, 4);
  assert!(
    qd.update_and_fetch(
      &sl(&k, 0, 1).reshape(&[1, 1, 2, 64]).unwrap(),
      &sl(&v, 0, 1).reshape(&[1, 1, 2, 64]).unwrap()
    )
    .is_err()
  );
  assert!(KvCache::quantized(64, 7).is_err());
}

#[test]
fn chunked_cache_matches_mlx_lm() {
  let (k, v) = (r("qsdpa.k"), r("qsdpa.v"));
  let sl = |a: &Array, lo: i32, hi: i32| {
    ops::slice(a, &[0, 0, lo, 0], &[1, 2, hi, 64], &[1, 1, 1, 1]).unwrap()
  };
  let mut c = KvCache::chunked(4).unwrap();
  let (k1, _) = c.update_and_fetch(&sl(&k, 0, 3), &sl(&v, 0, 3)).unwrap();
  c.maybe_trim_front().unwrap();
  let (k2, _) = c.update_and_fetch(&sl(&k, 3, 5), &sl(&v, 3, 5)).unwrap();
  c.maybe_trim_front().unwrap();
  let (k3, _) = c.update_and_fetch(&sl(&k, 5, 6), &sl(&v, 5, 6)).unwrap();
  check("ChunkedKVCache step 1", &k1, "chunked.k1", 0.0);
  check("ChunkedKVCache step 2", &k2, "chunked.k2", 0.0);
  check("ChunkedKVCache step 3", &k3, "chunked.k3", 0.0);
  assert_eq!(
    c.start_position() as i64,
    json()["chunked.start_position"].as_i64().unwrap()
  );
  assert_eq!(c.offset as i64, json()["chunked.offset"].as_i64().unwrap());
  assert_eq!(c.class_name(), "ChunkedKVCache");
  assert!(KvCache::chunked(0).is_err());
}

#[test]
fn prompt_cache_round_trip_all_kinds() {
  let (k, v) = (r("qsdpa.k"), r("qsdpa.v"));
  let mut std_c = KvCache::standard();
  std_c.update_and_fetch(&k, &v).unwrap();
  let mut rot = KvCache::new(KvCacheKind::Rotating {
    max_size: 4,
    keep: 1,
  });
  rot.update_and_fetch(&k, &v).unwrap();
  let mut qc = KvCache::quantized(32, 4).unwrap();
  qc.update_and_fetch(&k, &v).unwrap();
  let mut ch = KvCache::chunked(3).unwrap();
  ch.update_and_fetch(&k, &v).unwrap();
  ch.maybe_trim_front().unwrap();
  let mut ac = ArraysCache::new(2);
  ac.set(0, Array::from_slice(&[1.0f32, 2.0, 3.0], &[1, 3]).unwrap())
    .unwrap();
  let mut inner = KvCache::standard();
  inner.update_and_fetch(&k, &v).unwrap();
  let list = CacheList {
    caches: vec![inner.into(), ArraysCache::new(1).into()],
  };
  let caches: Vec<LayerCache> = vec![
    std_c.into(),
    rot.into(),
    qc.into(),
    ch.into(),
    ac.into(),
    list.into(),
  ];
  let path = std::env::temp_dir().join(format!("mlxrs-nn-pc-{}.safetensors", std::process::id()));
  let meta = HashMap::from([("model".to_string(), "x".to_string())]);
  save_prompt_cache(&path, &caches, &meta).unwrap();
  let (back, m2) = load_prompt_cache(&path).unwrap();
  std::fs::remove_file(&path).ok();
  assert_eq!(m2, meta);
  let names: Vec<_> = back.iter().map(|c| c.class_name()).collect();
  assert_eq!(
    names,
    [
      "KVCache",
      "RotatingKVCache",
      "QuantizedKVCache",
      "ChunkedKVCache",
      "ArraysCache",
      "CacheList"
    ]
  );
  for (a, b) in caches.iter().zip(&back) {
    if let (Some(a), Some(b)) = (a.as_kv(), b.as_kv()) {
      assert_eq!(a.offset, b.offset);
      let ((ka, va), (kb, vb)) = (a.state().unwrap().unwrap(), b.state().unwrap().unwrap());
      assert_eq!(max_diff(&ka, &kb), 0.0);
      assert_eq!(max_diff(&va, &vb), 0.0);
    }
  }
  match &back[4] {
    LayerCache::Arrays(a) => {
      assert_eq!(a.cache.len(), 2);
      assert!(a.cache[1].is_none() && a.left_padding.is_none());
      assert_eq!(f32s(a.get(0).unwrap()), vec![1.0, 2.0, 3.0]);
    }
    _ => panic!("ArraysCache expected"),
  }
  match &back[5] {
    LayerCache::List(l) => {
      assert_eq!(l.caches.len(), 2);
      assert_eq!(l.caches[0].class_name(), "KVCache");
      assert_eq!(l.caches[1].class_name(), "ArraysCache");
    }
    _ => panic!("CacheList expected"),
  }
  // Trimming: ArraysCache is not trimmable, so the prompt cache isn't.
  let mut back = back;
  assert_eq!(trim_prompt_cache(&mut back, 2), 0);
  let mut kvs: Vec<LayerCache> = back.into_iter().take(1).collect();
  assert_eq!(trim_prompt_cache(&mut kvs, 2), 2);
  assert_eq!(kvs[0].as_kv().unwrap().offset, 4);
}

#[test]
fn prompt_cache_bad_files_are_errors() {
  let dir = std::env::temp_dir();
  let p = dir.join(format!("mlxrs-nn-bad-{}.safetensors", std::process::id()));
  let a = Array::from_slice(&[1.0f32], &[1]).unwrap();
  // No class names.
  mlxrs_core::io::save_safetensors(
    &p,
    &HashMap::from([("0.0".to_string(), a.clone())]),
    &HashMap::new(),
  )
  .unwrap();
  assert!(
    load_prompt_cache(&p)
      .unwrap_err()
      .to_string()
      .contains("class names")
  );
  // Unknown class.
  let meta = HashMap::from([
    ("1.0".to_string(), "MambaCache".to_string()),
    ("2.0".to_string(), String::new()),
  ]);
  mlxrs_core::io::save_safetensors(&p, &HashMap::from([("0.0".to_string(), a.clone())]), &meta)
    .unwrap();
  assert!(
    load_prompt_cache(&p)
      .unwrap_err()
      .to_string()
      .contains("MambaCache")
  );
  // KVCache state with a missing entry.
  let meta = HashMap::from([
    ("1.0".to_string(), "KVCache".to_string()),
    ("2.0".to_string(), String::new()),
  ]);
  mlxrs_core::io::save_safetensors(&p, &HashMap::from([("0.0".to_string(), a)]), &meta).unwrap();
  let e = load_prompt_cache(&p).unwrap_err().to_string();
  assert!(e.contains("layer 0") && e.contains("KVCache"), "{e}");
  std::fs::remove_file(&p).ok();
  assert!(load_prompt_cache(dir.join("no-such-file.safetensors")).is_err());
}

// ------------------------------------------------------------------ module system

struct Block {
  l1: Linear,
  norm: RmsNorm,
  l2: Option<Linear>,
  sinks: Param,
}
module!(Block { l1, norm => "ln", l2, sinks });

fn block() -> Block {
  let mut b = Block {
    l1: Linear::init(4, 8, true, Some(&mlxrs_core::random::key(1).unwrap())).unwrap(),
    norm: RmsNorm::init(8, 1e-5).unwrap(),
    l2: Some(Linear::init(8, 4, false, None).unwrap()),
    sinks: Param::from_value(Array::zeros(&[2], Dtype::Float32).unwrap()),
  };
  b.sinks.value = ops::ones(&[2], Dtype::Int32).unwrap();
  b
}

#[test]
fn module_freeze_update_dtype() {
  let mut b = block();
  let all: Vec<String> = b.parameters().into_keys().collect();
  assert_eq!(
    all,
    ["l1.bias", "l1.weight", "l2.weight", "ln.weight", "sinks"]
  );
  assert_eq!(b.trainable_parameters().len(), 5);
  b.freeze();
  assert!(b.trainable_parameters().is_empty());
  b.unfreeze_paths(&["l1"]).unwrap();
  assert_eq!(
    b.trainable_parameters().into_keys().collect::<Vec<_>>(),
    ["l1.bias", "l1.weight"]
  );
  b.unfreeze();
  b.freeze_keys(&["bias", "sinks"]).unwrap();
  assert_eq!(
    b.frozen_paths().into_iter().collect::<Vec<_>>(),
    ["l1.bias", "sinks"]
  );
  // Whole components only; unknown prefixes are errors.
  assert!(b.freeze_paths(&["l"]).is_err());
  assert!(b.freeze_paths(&["l2.weight"]).is_ok());
  assert!(
    b.freeze_keys(&["nope"])
      .unwrap_err()
      .to_string()
      .contains("nope")
  );

  // update: strict rejects unknown paths and wrong shapes, and changes nothing then.
  let w = Array::ones(&[8, 4], Dtype::Float32).unwrap();
  let e = b
    .update(
      [
        ("l1.weight".to_string(), w.clone()),
        ("l9.weight".to_string(), w.clone()),
      ],
      true,
    )
    .unwrap_err();
  assert!(e.to_string().contains("l9.weight"), "{e}");
  assert!(max_diff(&b.l1.weight, &w) > 0.0);
  b.update(
    [
      ("l1.weight".to_string(), w.clone()),
      ("l9.weight".to_string(), w.clone()),
    ],
    false,
  )
  .unwrap();
  assert_eq!(max_diff(&b.l1.weight, &w), 0.0);
  let e = b
    .update([("ln.weight".to_string(), w.clone())], false)
    .unwrap_err();
  assert!(e.to_string().contains("ln.weight"), "{e}");

  // set_dtype casts floats only (python's default predicate).
  b.set_dtype(Dtype::Bfloat16, None).unwrap();
  let dts: BTreeMap<String, Dtype> = b
    .parameters()
    .into_iter()
    .map(|(k, a)| (k, a.dtype()))
    .collect();
  assert_eq!(dts["l1.weight"], Dtype::Bfloat16);
  assert_eq!(dts["ln.weight"], Dtype::Bfloat16);
  assert_eq!(dts["sinks"], Dtype::Int32);
  b.set_dtype(Dtype::Float32, Some(&|_| true)).unwrap();
  assert_eq!(b.sinks.value.dtype(), Dtype::Float32);
}

#[test]
fn strict_loading_names_bad_tensors() {
  let mut b = block();
  let mut w: HashMap<String, Array> = b.parameters().into_iter().collect();
  w.remove("l2.weight");
  w.insert(
    "extra.weight".into(),
    Array::zeros(&[1], Dtype::Float32).unwrap(),
  );
  w.insert(
    "ln.weight".into(),
    Array::zeros(&[7], Dtype::Float32).unwrap(),
  );
  let e = b.load_weights(w).unwrap_err().to_string();
  assert!(e.contains("missing parameter l2.weight"), "{e}");
  assert!(e.contains("unexpected parameter extra.weight"), "{e}");
  assert!(
    e.contains("parameter ln.weight has shape [7], expected [8]"),
    "{e}"
  );
  assert!(e.contains("3 problems"), "{e}");
}

#[test]
fn train_eval_mode_reaches_nested_dropout() {
  struct Net {
    drop: Dropout,
    inner: Vec<Dropout>,
    lin: Linear,
  }
  module!(Net { drop, inner, lin });
  let mut n = Net {
    drop: Dropout::new(0.5).unwrap(),
    inner: vec![Dropout::new(0.1).unwrap()],
    lin: Linear::new(2, 2, false),
  };
  n.train();
  assert!(n.drop.training && n.inner[0].training);
  n.eval();
  assert!(!n.drop.training && !n.inner[0].training);
}

// ------------------------------------------------------------------ losses

#[test]
fn losses_match_mlx() {
  use losses::*;
  let (lg, t, probs, w) = (
    r("loss.logits"),
    r("loss.targets"),
    r("loss.probs"),
    r("loss.weights"),
  );
  let ce = |o: CrossEntropy, tg: &Array| cross_entropy(&lg, tg, o).unwrap();
  check(
    "cross_entropy",
    &ce(CrossEntropy::default(), &t),
    "loss.ce_none",
    1e-6,
  );
  check(
    "cross_entropy mean",
    &ce(
      CrossEntropy {
        reduction: Reduction::Mean,
        ..Default::default()
      },
      &t,
    ),
    "loss.ce_mean",
    1e-6,
  );
  check(
    "cross_entropy label_smoothing",
    &ce(
      CrossEntropy {
        label_smoothing: 0.1,
        ..Default::default()
      },
      &t,
    ),
    "loss.ce_ls",
    1e-6,
  );
  check(
    "cross_entropy weights sum",
    &ce(
      CrossEntropy {
        weights: Some(&w),
        reduction: Reduction::Sum,
        ..Default::default()
      },
      &t,
    ),
    "loss.ce_w_sum",
    1e-5,
  );
  check(
    "cross_entropy probs",
    &ce(CrossEntropy::default(), &probs),
    "loss.ce_probs",
    1e-6,
  );
  let ti = r("loss.ti");
  check(
    "cross_entropy ignore_index",
    &ce(
      CrossEntropy {
        ignore_index: Some(-100),
        ..Default::default()
      },
      &ti,
    ),
    "loss.ce_ignore_none",
    1e-6,
  );
  check(
    "cross_entropy ignore_index mean",
    &ce(
      CrossEntropy {
        ignore_index: Some(-100),
        reduction: Reduction::Mean,
        ..Default::default()
      },
      &ti,
    ),
    "loss.ce_ignore_mean",
    1e-6,
  );
  assert!(
    cross_entropy(
      &lg,
      &probs.reshape(&[5, 6]).unwrap(),
      CrossEntropy::default()
    )
    .is_err()
  );
  assert!(
    cross_entropy(
      &lg,
      &t,
      CrossEntropy {
        label_smoothing: 1.0,
        ..Default::default()
      }
    )
    .is_err()
  );

  let (x, y, yb) = (r("loss.x"), r("loss.y"), r("loss.yb"));
  check(
    "binary_cross_entropy logits",
    &binary_cross_entropy(&x, &yb, None, true, Reduction::Mean).unwrap(),
    "loss.bce_logits",
    1e-6,
  );
  let p = sigmoid(&x).unwrap();
  check(
    "binary_cross_entropy probs",
    &binary_cross_entropy(&p, &yb, None, false, Reduction::None).unwrap(),
    "loss.bce_probs",
    1e-5,
  );
  check(
    "mse",
    &mse_loss(&x, &y, Reduction::Mean).unwrap(),
    "loss.mse",
    1e-6,
  );
  check(
    "l1 sum",
    &l1_loss(&x, &y, Reduction::Sum).unwrap(),
    "loss.l1_sum",
    1e-5,
  );
  check(
    "smooth_l1",
    &smooth_l1_loss(&x, &y, 0.5, Reduction::None).unwrap(),
    "loss.smooth_l1",
    1e-6,
  );
  let lp = ops::subtract(&x, &ops::logsumexp_axis(&x, -1, true).unwrap()).unwrap();
  let lq = ops::subtract(&y, &ops::logsumexp_axis(&y, -1, true).unwrap()).unwrap();
  check(
    "kl_div",
    &kl_div_loss(&lp, &lq, -1, Reduction::None).unwrap(),
    "loss.kl",
    1e-6,
  );
  let nt = Array::from_slice(&[0i32, 5, 2, 3], &[4]).unwrap();
  check(
    "nll",
    &nll_loss(&lp, &nt, -1, Reduction::Mean).unwrap(),
    "loss.nll",
    1e-6,
  );
  check(
    "cosine_similarity",
    &cosine_similarity_loss(&x, &y, 1, 1e-8, Reduction::None).unwrap(),
    "loss.cos",
    1e-6,
  );
  check(
    "huber",
    &huber_loss(&x, &y, 0.7, Reduction::Mean).unwrap(),
    "loss.huber",
    1e-6,
  );
  check(
    "hinge",
    &hinge_loss(&x, &ops::sign(&y).unwrap(), Reduction::None).unwrap(),
    "loss.hinge",
    1e-6,
  );
  check(
    "log_cosh",
    &log_cosh_loss(&x, &y, Reduction::Mean).unwrap(),
    "loss.log_cosh",
    1e-6,
  );
  assert!(mse_loss(&x, &lg, Reduction::Mean).is_err());
}

// ------------------------------------------------------------------ optimizers

fn grads(i: usize) -> BTreeMap<String, Array> {
  ["b", "w"]
    .iter()
    .map(|n| (n.to_string(), r(&format!("opt.grad.{i}.{n}"))))
    .collect()
}

#[test]
fn optimizers_match_mlx() {
  let sched = || {
    optim::join_schedules(
      vec![
        optim::linear_schedule(0.0, 0.1, 2).unwrap(),
        optim::cosine_decay(0.1, 3, 0.01).unwrap(),
      ],
      &[2],
    )
    .unwrap()
  };
  type Maker = Box<dyn Fn() -> Box<dyn Optimizer>>;
  let makers: Vec<(&str, Maker)> = vec![
    (
      "sgd",
      Box::new(|| Box::new(optim::Sgd::new(0.1, 0.0, 0.0, 0.0, false).unwrap())),
    ),
    (
      "sgd_momentum",
      Box::new(|| Box::new(optim::Sgd::new(0.1, 0.9, 0.01, 0.1, false).unwrap())),
    ),
    (
      "sgd_nesterov",
      Box::new(|| Box::new(optim::Sgd::new(0.1, 0.9, 0.01, 0.0, true).unwrap())),
    ),
    (
      "sgd_sched",
      Box::new(move || Box::new(optim::Sgd::new(sched(), 0.5, 0.0, 0.0, false).unwrap())),
    ),
    ("adam", Box::new(|| Box::new(optim::Adam::new(0.01)))),
    (
      "adam_bc",
      Box::new(|| {
        Box::new(
          optim::Adam::new(0.01)
            .with_betas(0.8, 0.95)
            .unwrap()
            .with_bias_correction(true),
        )
      }),
    ),
    (
      "adamw",
      Box::new(|| Box::new(optim::Adam::adamw(0.01, 0.1))),
    ),
    (
      "adamw_step",
      Box::new(|| {
        Box::new(optim::Adam::adamw(
          optim::step_decay(0.01, 0.5, 2).unwrap(),
          0.1,
        ))
      }),
    ),
    ("adafactor", Box::new(|| Box::new(optim::Adafactor::new()))),
    (
      "adafactor_lr",
      Box::new(|| {
        let mut a = optim::Adafactor::new().with_learning_rate(0.01);
        a.relative_step = false;
        a.beta_1 = Some(0.9);
        a.weight_decay = 0.01;
        Box::new(a)
      }),
    ),
    (
      "lion",
      Box::new(|| Box::new(optim::Lion::new(0.01, (0.9, 0.99), 0.1).unwrap())),
    ),
    (
      "lion_exp",
      Box::new(|| {
        Box::new(optim::Lion::new(optim::exponential_decay(0.01, 0.9), (0.9, 0.99), 0.0).unwrap())
      }),
    ),
  ];
  for (name, make) in makers {
    let mut opt = make();
    let mut p: BTreeMap<String, Array> = ["b", "w"]
      .iter()
      .map(|n| (n.to_string(), r(&format!("opt.param.{n}"))))
      .collect();
    let mut worst = 0.0f32;
    for i in 0..5 {
      p = opt.apply_gradients(&grads(i), &p).unwrap();
      for (n, a) in &p {
        let d = max_diff(a, &r(&format!("opt.{name}.{i}.{n}")));
        worst = worst.max(d);
      }
    }
    eprintln!("optimizer {name}: 5 steps, max |param diff| {worst:.2e}");
    assert!(worst <= 2e-6, "{name}: {worst}");
    assert_eq!(opt.step(), 5);
  }
  // Errors: gradient without parameter / wrong shape; bad settings.
  let mut o = optim::Sgd::new(0.1, 0.0, 0.0, 0.0, false).unwrap();
  let p: BTreeMap<String, Array> = BTreeMap::from([("w".to_string(), r("opt.param.w"))]);
  assert!(
    o.apply_gradients(&grads(0), &p)
      .unwrap_err()
      .to_string()
      .contains("gradient b has no parameter")
  );
  assert!(optim::Sgd::new(0.1, 0.0, 0.0, 0.0, true).is_err());
  assert!(optim::Adam::new(0.1).with_betas(1.0, 0.9).is_err());
  assert!(optim::cosine_decay(0.1, 0, 0.0).is_err());
  assert!(optim::join_schedules(vec![optim::exponential_decay(0.1, 0.9)], &[3]).is_err());
}

#[test]
fn schedules_and_clipping_match_mlx() {
  let s = &json()["schedules"];
  let scheds: Vec<(&str, optim::Schedule)> = vec![
    (
      "join",
      optim::join_schedules(
        vec![
          optim::linear_schedule(0.0, 0.1, 2).unwrap(),
          optim::cosine_decay(0.1, 3, 0.01).unwrap(),
        ],
        &[2],
      )
      .unwrap(),
    ),
    ("linear", optim::linear_schedule(0.5, 0.1, 4).unwrap()),
    ("cosine", optim::cosine_decay(0.1, 5, 0.001).unwrap()),
    ("step", optim::step_decay(0.1, 0.9, 3).unwrap()),
    ("exp", optim::exponential_decay(0.1, 0.9)),
  ];
  for (name, f) in scheds {
    for (i, want) in s[name].as_array().unwrap().iter().enumerate() {
      let (got, want) = (f(i as u64), want.as_f64().unwrap() as f32);
      assert!(
        (got - want).abs() <= 1e-7,
        "{name}({i}) = {got}, python {want}"
      );
    }
  }
  let (c, norm) = optim::clip_grad_norm(&grads(0), 0.5).unwrap();
  check("clip_grad_norm norm", &norm, "clip.norm", 1e-6);
  check("clip_grad_norm w", &c["w"], "clip.w", 1e-6);
  check("clip_grad_norm b", &c["b"], "clip.b", 1e-6);
  let (c, _) = optim::clip_grad_norm(&grads(0), 100.0).unwrap();
  check("clip_grad_norm (no clip)", &c["w"], "clip.big.w", 1e-6);
  assert!(optim::clip_grad_norm(&grads(0), -1.0).is_err());
}

// ------------------------------------------------------------------ adapters

#[test]
fn lora_and_dora_match_mlx_lm() {
  let mut base = Linear::new(16, 8, true);
  load(&mut base, "lora.base", &["weight", "bias"]);
  let x = r("lora.x");
  let plain = base.forward(&x).unwrap();
  let mut lo = LoRALinear::from_base(base, 4, 0.0, 2.0, None).unwrap();
  assert_eq!(
    lo.trainable_parameters().into_keys().collect::<Vec<_>>(),
    ["lora_a", "lora_b"]
  );
  assert_eq!(
    max_diff(&lo.forward(&x).unwrap(), &plain),
    0.0,
    "LoRA starts as the identity"
  );
  lo.lora_a.value = r("lora.a");
  lo.lora_b.value = r("lora.b");
  check("LoRALinear", &lo.forward(&x).unwrap(), "lora.y", 1e-5);
  check(
    "LoRALinear.fuse",
    &lo.fuse(false).unwrap().weight,
    "lora.fused",
    1e-6,
  );

  let mut base = Linear::new(16, 8, true);
  load(&mut base, "lora.base", &["weight", "bias"]);
  let mut d = DoRALinear::from_base(base, 4, 0.0, 2.0, None).unwrap();
  check("DoRA m", &d.m.value, "dora.m", 1e-6);
  d.lora_a.value = r("lora.a");
  d.lora_b.value = r("lora.b");
  check("DoRALinear", &d.forward(&x).unwrap(), "dora.y", 1e-5);
  check(
    "DoRALinear.fuse",
    &d.fuse(false).unwrap().weight,
    "dora.fused",
    1e-5,
  );

  let mut qbase = Linear::new(64, 8, false);
  load(&mut qbase, "qlora.base", &["weight"]);
  qbase
    .quantize(&QuantParams::new(Some(32), Some(4), "affine").unwrap())
    .unwrap();
  let mut ql = LoRALinear::from_base(qbase, 4, 0.0, 2.0, None).unwrap();
  ql.lora_a.value = r("qlora.a");
  ql.lora_b.value = r("lora.b");
  check(
    "LoRALinear over 4-bit base",
    &ql.forward(&r("qlora.x")).unwrap(),
    "qlora.y",
    1e-4,
  );
  let fused = ql.fuse(false).unwrap();
  assert!(fused.quant.is_some(), "re-quantized after fuse");
}
