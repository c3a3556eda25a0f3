//! Batch order as mlx-lm's: `tuner::Rng` draws numpy's legacy
//! `np.random.seed(s); np.random.permutation(n)` sequences exactly
//! (references from `scripts/make_permutation_refs.py`).

use mlxrs_lm::tuner::Rng;

#[test]
fn permutations_equal_numpy() {
  let path =
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/numpy_permutations.json");
  let refs: serde_json::Value =
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
  let mut draws = 0;
  for case in refs["cases"].as_array().unwrap() {
    let seed = case["seed"].as_u64().unwrap() as u32;
    let mut rng = Rng::new(seed);
    for want in case["draws"].as_array().unwrap() {
      let want: Vec<usize> = serde_json::from_value(want.clone()).unwrap();
      assert_eq!(
        rng.permutation(want.len()),
        want,
        "seed {seed}, n {}",
        want.len()
      );
      draws += 1;
    }
  }
  assert!(draws >= 10, "every reference draw compared ({draws})");
}
