//! The seed's `fast::scaled_dot_product_attention` against Python MLX on
//! random inputs (reference: scripts/make_sdpa_refs.py): GQA unmasked, GQA
//! causal, the decode shape T_q = 1 with causal, and a boolean mask.
//! Tolerance 1e-5 absolute (float32, same kernels).

use mlxrs_core::Array;
use mlxrs_core::fast::{Mask, scaled_dot_product_attention};

#[test]
fn matches_python_mlx() {
  let p = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/sdpa_ref.safetensors"
  );
  let (mut m, _) = mlxrs_core::io::load_safetensors(p).unwrap();
  for (name, mode) in [
    ("gqa_none", "none"),
    ("gqa_causal", "causal"),
    ("decode_tq1_causal", "causal"),
    ("bool_mask", "array"),
  ] {
    let get = |m: &std::collections::HashMap<String, Array>, k: &str| {
      m.get(&format!("{name}.{k}")).unwrap().clone()
    };
    let (q, k, v) = (get(&m, "q"), get(&m, "k"), get(&m, "v"));
    let scale = get(&m, "scale").item::<f32>().unwrap();
    let mask_arr = m.get(&format!("{name}.mask")).cloned();
    let mask = match mode {
      "none" => Mask::None,
      "causal" => Mask::Causal,
      _ => Mask::Array(mask_arr.as_ref().unwrap()),
    };
    let mut got = scaled_dot_product_attention(&q, &k, &v, scale, mask).unwrap();
    let want = m
      .get_mut(&format!("{name}.out"))
      .unwrap()
      .to_vec::<f32>()
      .unwrap();
    let got = got.to_vec::<f32>().unwrap();
    assert_eq!(got.len(), want.len(), "{name}");
    let max = got
      .iter()
      .zip(&want)
      .map(|(a, b)| (a - b).abs())
      .fold(0.0f32, f32::max);
    assert!(max <= 1e-5, "{name}: max |diff| {max}");
  }
}
