//! The speech-synthesis layers (Lstm, instance_norm1d, AdaIn1d,
//! AdaLayerNorm, weight_norm, Stft) against PyTorch on the same inputs
//! (`scripts/make_tts_nn_refs.py` -> `tests/data/tts_nn_refs.safetensors`).

use std::collections::HashMap;

use mlxrs_core::{Array, Dtype, ops};
use mlxrs_nn::*;

fn refs() -> HashMap<String, Array> {
  let p =
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tts_nn_refs.safetensors");
  mlxrs_core::io::load_safetensors(p).unwrap().0
}

fn get(r: &HashMap<String, Array>, k: &str) -> Array {
  r.get(k)
    .cloned()
    .unwrap_or_else(|| panic!("no reference {k}"))
}

fn max_diff(got: &Array, want: &Array) -> f32 {
  assert_eq!(got.shape(), want.shape(), "shape");
  let mut g = ops::astype(got, Dtype::Float32).unwrap();
  let mut w = ops::astype(want, Dtype::Float32).unwrap();
  let (g, w) = (g.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
  g.iter()
    .zip(&w)
    .map(|(a, b)| (a - b).abs())
    .fold(0.0, f32::max)
}

#[test]
fn lstm_bidirectional_matches_torch() {
  let r = refs();
  let dir = |sfx: &str| {
    LstmDirection::new(
      get(&r, &format!("lstm.weight_ih_l0{sfx}")),
      get(&r, &format!("lstm.weight_hh_l0{sfx}")),
      Some(get(&r, &format!("lstm.bias_ih_l0{sfx}"))),
      Some(get(&r, &format!("lstm.bias_hh_l0{sfx}"))),
    )
    .unwrap()
  };
  let lstm = Lstm {
    forward: dir(""),
    backward: Some(dir("_reverse")),
  };
  let y = lstm.forward(&get(&r, "lstm.x")).unwrap();
  let d = max_diff(&y, &get(&r, "lstm.y"));
  assert!(d < 1e-5, "lstm max diff {d}");
  // bad input: wrong width
  assert!(
    lstm
      .forward(&Array::zeros(&[1, 2, 3], Dtype::Float32).unwrap())
      .is_err()
  );
}

#[test]
fn style_norms_match_torch() {
  let r = refs();
  let x = get(&r, "in.x");
  let d = max_diff(&instance_norm1d(&x, 1e-5).unwrap(), &get(&r, "in.y"));
  assert!(d < 1e-5, "instance norm {d}");
  let fc = || Linear::from_weights(get(&r, "adain.fc.weight"), Some(get(&r, "adain.fc.bias")));
  let s = get(&r, "adain.s");
  let ada = AdaIn1d { fc: fc() };
  let d = max_diff(&ada.forward(&x, &s).unwrap(), &get(&r, "adain.y"));
  assert!(d < 1e-5, "adain {d}");
  let nlc = ada
    .forward_nlc(&ops::swapaxes(&x, 1, 2).unwrap(), &s)
    .unwrap();
  let d = max_diff(&ops::swapaxes(&nlc, 1, 2).unwrap(), &get(&r, "adain.y"));
  assert!(d < 1e-5, "adain nlc {d}");
  let ln = AdaLayerNorm {
    fc: fc(),
    eps: 1e-5,
  };
  let d = max_diff(
    &ln.forward(&get(&r, "adaln.x"), &s).unwrap(),
    &get(&r, "adaln.y"),
  );
  assert!(d < 1e-5, "ada layer norm {d}");
  assert!(instance_norm1d(&Array::zeros(&[3, 4], Dtype::Float32).unwrap(), 1e-5).is_err());
}

#[test]
fn weight_norm_matches_torch_and_round_trips() {
  let r = refs();
  let w = weight_norm(&get(&r, "wn.v"), &get(&r, "wn.g")).unwrap();
  let d = max_diff(&w, &get(&r, "wn.w"));
  assert!(d < 1e-6, "weight_norm {d}");
  let (g, v) = weight_norm_split(&get(&r, "wn.w")).unwrap();
  let d = max_diff(&weight_norm(&v, &g).unwrap(), &get(&r, "wn.w"));
  assert!(d < 1e-6, "split round trip {d}");
  assert!(
    weight_norm(
      &get(&r, "wn.v"),
      &Array::zeros(&[2], Dtype::Float32).unwrap()
    )
    .is_err()
  );
}

#[test]
fn stft_and_inverse_match_torch() {
  let r = refs();
  let st = Stft::new(20, 5, 20).unwrap();
  let (mag, phase) = st.transform(&get(&r, "stft.x")).unwrap();
  let d = max_diff(&mag, &get(&r, "stft.mag"));
  assert!(d < 1e-4, "stft magnitude {d}");
  // phases are compared where the bin is not ~0 (angle is ill-conditioned there)
  let mut m = get(&r, "stft.mag");
  let m = m.to_vec::<f32>().unwrap();
  let mut p = phase;
  let mut q = get(&r, "stft.phase");
  let (p, q) = (p.to_vec::<f32>().unwrap(), q.to_vec::<f32>().unwrap());
  let mut worst = 0.0f32;
  for ((a, b), mm) in p.iter().zip(&q).zip(&m) {
    if *mm > 1e-3 {
      let d = (a - b).abs();
      let d = d.min((2.0 * std::f32::consts::PI - d).abs());
      worst = worst.max(d);
    }
  }
  assert!(worst < 1e-3, "stft phase {worst}");
  let y = st
    .inverse(&get(&r, "istft.mag"), &get(&r, "istft.phase"))
    .unwrap();
  let d = max_diff(&y, &get(&r, "istft.y"));
  assert!(d < 1e-4, "istft {d}");
  assert!(Stft::new(20, 0, 20).is_err());
  assert!(
    st.inverse(&get(&r, "stft.mag"), &get(&r, "istft.phase"))
      .is_err()
  );
}

#[test]
fn gemm_convolutions_match_mlx_convolutions() {
  let key = mlxrs_core::random::key(7).unwrap();
  let x = mlxrs_core::random::normal(&[2, 23, 6], Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
  let w = mlxrs_core::random::normal(&[5, 7, 6], Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
  for (s, p, d) in [(1, 3, 1), (1, 9, 3), (2, 1, 1), (3, 0, 2)] {
    let want = ops::conv1d(&x, &w, s, p, d, 1).unwrap();
    let got = mlxrs_nn::conv::conv1d_im2col(&x, &w, s, p, d).unwrap();
    assert!(max_diff(&got, &want) < 1e-4, "conv1d s{s} p{p} d{d}");
  }
  for (s, p, op, k) in [(10, 5, 0, 20), (6, 3, 0, 12), (2, 1, 1, 3), (3, 0, 0, 7)] {
    let w = mlxrs_core::random::normal(&[5, k, 6], Dtype::Float32, 0.0, 1.0, Some(&key)).unwrap();
    let want = ops::conv_transpose1d(&x, &w, s, p, 1, op, 1).unwrap();
    let got = mlxrs_nn::conv::conv_transpose1d_gemm(&x, &w, s, p, op).unwrap();
    assert!(
      max_diff(&got, &want) < 1e-4,
      "conv_transpose1d s{s} p{p} op{op} k{k}"
    );
  }
}
