//! Python-style indexing and `pad_pairs` against python mlx: every case of
//! `tests/data/op_refs/index/` (made by `scripts/make_op_refs.py`,
//! `make_index_refs`: python `a[idx]`, `a[idx] = v`,
//! `mx.pad(a, pad_width=[(lo, hi), ...])`) replayed through
//! [`Array::index`], [`Array::index_put`] and [`ops::pad_pairs`].
//!
//! Tolerance: exact. Indexing only moves elements (and casts a float update
//! into an int array, which both sides do the same way), so outputs must be
//! equal element for element, with the same shape and dtype. Cases where
//! Python raised must fail in Rust too (at the call or at evaluation).

use std::collections::HashMap;

use mlxrs_core::index::{Ellipsis, Index, NewAxis, Slice, Stepped};
use mlxrs_core::{Array, Dtype, io, ops};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/op_refs/index");

fn items(v: &Value, t: &HashMap<String, Array>) -> Vec<Index> {
  let o = |x: &Value| x.as_i64();
  v.as_array()
    .expect("index is a list")
    .iter()
    .map(|it| match it {
      Value::String(s) if s == "none" => Index::NewAxis,
      Value::String(s) if s == "..." => Index::Ellipsis,
      _ if it.get("int").is_some() => Index::Int(it["int"].as_i64().expect("int")),
      _ if it.get("slice").is_some() => {
        let s = &it["slice"];
        Index::Slice(Slice::new(o(&s[0]), o(&s[1]), o(&s[2])))
      }
      _ => Index::Array(t[it["arr"].as_str().expect("arr name")].clone()),
    })
    .collect()
}

/// The elements as f64 for comparison, read as float32 / int64 (exact for
/// this data, and available on GPUs, which have no float64).
fn flat(a: &Array) -> mlxrs_core::Result<Vec<f64>> {
  if a.dtype().is_float() {
    Ok(
      ops::astype(a, Dtype::Float32)?
        .to_vec::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect(),
    )
  } else {
    Ok(
      ops::astype(a, Dtype::Int64)?
        .to_vec::<i64>()?
        .into_iter()
        .map(|v| v as f64)
        .collect(),
    )
  }
}

fn run(case: &Value, t: &HashMap<String, Array>) -> Result<Array, String> {
  let src = &t[case["src"].as_str().unwrap_or_default()];
  let r = match case["kind"].as_str() {
    Some("get") => src.index(items(&case["index"], t)),
    Some("put") => src.index_put(
      items(&case["index"], t),
      &t[case["value"].as_str().unwrap_or_default()],
    ),
    Some("pad") => {
      let pairs: Vec<(i32, i32)> = case["pairs"]
        .as_array()
        .expect("pairs")
        .iter()
        .map(|p| {
          (
            p[0].as_i64().unwrap_or(0) as i32,
            p[1].as_i64().unwrap_or(0) as i32,
          )
        })
        .collect();
      ops::pad_pairs(
        src,
        &pairs,
        case["pad_value"].as_f64().unwrap_or(0.0),
        case["mode"].as_str().unwrap_or(""),
      )
    }
    k => return Err(format!("unknown kind {k:?}")),
  };
  let mut out = r.map_err(|e| e.to_string())?;
  out.eval().map_err(|e| e.to_string())?;
  Ok(out)
}

#[test]
fn replay_python_indexing() {
  let (t, _) = io::load_safetensors(format!("{DIR}/index.safetensors")).expect("load tensors");
  let doc: Value =
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/cases.json")).expect("cases"))
      .expect("json");
  let cases = doc["cases"].as_array().expect("cases");
  assert!(cases.len() >= 50, "expected the full case list");
  let mut failures = Vec::new();
  let (mut ok, mut errs) = (0, 0);
  for (k, case) in cases.iter().enumerate() {
    let label = format!(
      "case {k} {} {}",
      case["kind"],
      case
        .get("index")
        .or(case.get("pairs"))
        .unwrap_or(&Value::Null)
    );
    match (run(case, &t), case.get("error")) {
      (Err(e), Some(want)) => {
        errs += 1;
        eprintln!("{label}: error as python ({want}): {e}");
      }
      (Ok(_), Some(want)) => {
        failures.push(format!("{label}: python raised {want}, Rust succeeded"))
      }
      (Err(e), None) => failures.push(format!("{label}: Rust error {e}")),
      (Ok(got), None) => {
        let want = &t[case["out"].as_str().unwrap_or_default()];
        if got.shape() != want.shape() || got.dtype() != want.dtype() {
          failures.push(format!(
            "{label}: shape/dtype {:?} {:?} != python {:?} {:?}",
            got.shape(),
            got.dtype(),
            want.shape(),
            want.dtype()
          ));
          continue;
        }
        match (flat(&got), flat(want)) {
          (Ok(g), Ok(w)) if g == w => ok += 1,
          (Ok(g), Ok(w)) => failures.push(format!("{label}: values {g:?} != python {w:?}")),
          (g, w) => failures.push(format!("{label}: read failed {:?} {:?}", g.err(), w.err())),
        }
      }
    }
  }
  eprintln!(
    "{ok} cases equal to python, {errs} errors as python, {} failures",
    failures.len()
  );
  assert!(
    failures.is_empty(),
    "{} failures:\n{}",
    failures.len(),
    failures.join("\n")
  );
}

/// The tuple syntax builds the same items as the replayed lists: python
/// `a[..., 1:3, None, ::2, -1]` on a (2, 3, 4, 5) arange.
#[test]
fn tuple_syntax() {
  let a = Array::arange(0.0, 120.0, 1.0, Dtype::Int32)
    .unwrap()
    .reshape(&[2, 3, 4, 5])
    .unwrap();
  let mut b = a
    .index((Ellipsis, 1..3, NewAxis, (..).step(2), -1))
    .unwrap();
  assert_eq!(b.shape(), vec![2, 2, 1, 2]);
  // a[0, 1, 0, 4] = 24, a[0, 1, 2, 4] = 34, a[0, 2, 0, 4] = 44, ...
  assert_eq!(
    b.to_vec::<i32>().unwrap(),
    vec![24, 34, 44, 54, 84, 94, 104, 114]
  );
  // Inclusive ranges: 1..=2 is 1:3; ..=-1 reaches the end.
  let mut c = a.index((0, 0, 1..=2, ..=-1)).unwrap();
  assert_eq!(c.shape(), vec![2, 5]);
  assert_eq!(c.to_vec::<i32>().unwrap(), (5..15).collect::<Vec<_>>());
  // Reversed: python a[1, 2, 3, ::-2] = [119, 117, 115].
  let mut d = a.index((1, 2, 3, (..).step(-2))).unwrap();
  assert_eq!(d.to_vec::<i32>().unwrap(), vec![119, 117, 115]);
  // An integer array: a[0, 0, [3, -4], 0] = [15, 0]... -4 wraps to 0.
  let idx = Array::from_slice::<i32>(&[3, -4], &[2]).unwrap();
  let mut e = a.index((0, 0, &idx, 0)).unwrap();
  assert_eq!(e.to_vec::<i32>().unwrap(), vec![15, 0]);
  // Out-of-range array entries are clamped (documented), never read out of bounds.
  let far = Array::from_slice::<i32>(&[100, -100], &[2]).unwrap();
  let mut f = a.index((0, 0, &far, 0)).unwrap();
  assert_eq!(f.to_vec::<i32>().unwrap(), vec![15, 0]);
  // index_put returns a new array; the source is unchanged.
  let g = a.index_fill((1, .., .., 0), -1.0).unwrap();
  let mut g0 = g.index((1, 2, 3, 0..2)).unwrap();
  assert_eq!(g0.to_vec::<i32>().unwrap(), vec![-1, 116]);
  let mut a0 = a.index((1, 2, 3, 0)).unwrap();
  assert_eq!(a0.item::<i32>().unwrap(), 115);
  // Errors, not panics: too many, out of range, zero step, float index.
  assert!(a.index((0, 0, 0, 0, 0)).is_err());
  assert!(a.index(2).is_err());
  assert!(a.index((.., -4)).is_err());
  assert!(a.index((..).step(0)).is_err());
  assert!(
    a.index(Array::from_slice::<f32>(&[0.0], &[1]).unwrap())
      .is_err()
  );
  assert!(a.index((Ellipsis, Ellipsis)).is_err());
  assert!(a.index_fill((0, 0, 0, 0, 0), 1.0).is_err());
}
