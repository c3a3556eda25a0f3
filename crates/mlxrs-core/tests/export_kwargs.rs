//! Export / import of functions called with keyword arrays
//! (`ClosureKwargs`, `export_function_kwargs`, `import_function_kwargs`,
//! `FunctionExporter::new_kwargs`), against python:
//! `scripts/make_op_refs.py --only export` writes `kw.mlxfn`
//! (`mx.export_function(path, f, x, y=y, z=z)` with
//! `f(x, y, z) = [x * y + sin(z), sum(x - z, axis=1)]`) and python's
//! outputs of the imported function in `kw_io.safetensors`.
//!
//! `callback_events.json` holds the events python's export callback
//! receives (`mx.export_function(callback, g, x, y=y)`).
//!
//! Tolerance: imports of python's file must match python exactly (same
//! graph, same CPU kernels); the Rust-traced function (same ops) within
//! 1e-6 absolute.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use mlxrs_core::closure::{ClosureKwargs, Kwargs};
use mlxrs_core::export::{
  ExportEvent, ExportState, ExportValue, FunctionExporter, export_function_callback,
  export_function_kwargs, import_function_kwargs,
};
use mlxrs_core::io::load_safetensors;
use mlxrs_core::{Array, Dtype, ops};

fn data() -> HashMap<String, Array> {
  let p =
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/op_refs/export/kw_io.safetensors");
  load_safetensors(p).unwrap().0
}

fn py_file() -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/op_refs/export/kw.mlxfn")
}

fn tmp(name: &str) -> PathBuf {
  let d = std::env::temp_dir().join(format!("mlxrs-export-kw-{}", std::process::id()));
  std::fs::create_dir_all(&d).unwrap();
  d.join(name)
}

fn vals(a: &Array) -> Vec<f32> {
  a.clone().to_vec::<f32>().unwrap()
}

fn kw(d: &HashMap<String, Array>, sfx: &str) -> Kwargs {
  HashMap::from([
    ("y".to_string(), d[&format!("y{sfx}")].clone()),
    ("z".to_string(), d[&format!("z{sfx}")].clone()),
  ])
}

fn assert_close(got: &Array, want: &Array, atol: f32) {
  assert_eq!(got.shape(), want.shape());
  for (g, w) in vals(got).iter().zip(vals(want)) {
    assert!((g - w).abs() <= atol, "{g} vs {w}");
  }
}

/// The same function in Rust: positional `x`, keywords `y` and `z`.
fn rust_f() -> ClosureKwargs {
  ClosureKwargs::new(|args: &[Array], kwargs: &Kwargs| {
    let x = &args[0];
    let y = kwargs
      .get("y")
      .ok_or_else(|| mlxrs_core::Error::InvalidArgument("missing y".into()))?;
    let z = kwargs
      .get("z")
      .ok_or_else(|| mlxrs_core::Error::InvalidArgument("missing z".into()))?;
    let a = ops::add(&ops::multiply(x, y)?, &ops::sin(z)?)?;
    let b = ops::sum_axis(&ops::subtract(x, z)?, 1, false)?;
    Ok(vec![a, b])
  })
  .unwrap()
}

#[test]
fn imports_python_kwargs_export() {
  let d = data();
  let g = import_function_kwargs(py_file()).unwrap();
  for sfx in ["", "2"] {
    let x = &d[&format!("x{sfx}")];
    let out = g.call(std::slice::from_ref(x), &kw(&d, sfx)).unwrap();
    let o = if sfx.is_empty() { "" } else { "_2" };
    assert_eq!(out.len(), 2);
    assert_eq!(vals(&out[0]), vals(&d[&format!("out0{o}")]));
    assert_eq!(vals(&out[1]), vals(&d[&format!("out1{o}")]));
  }
  // A missing keyword matches no traced signature: an error, not a panic.
  let only_y = HashMap::from([("y".to_string(), d["y"].clone())]);
  assert!(g.call(std::slice::from_ref(&d["x"]), &only_y).is_err());
}

#[test]
fn rust_kwargs_export_round_trips() {
  let d = data();
  let f = rust_f();
  // Called directly it already computes python's outputs.
  let direct = f.call(std::slice::from_ref(&d["x"]), &kw(&d, "")).unwrap();
  assert_close(&direct[0], &d["out0"], 1e-6);
  let p = tmp("rust_kw.mlxfn");
  export_function_kwargs(&p, &f, std::slice::from_ref(&d["x"]), &kw(&d, ""), false).unwrap();
  let g = import_function_kwargs(&p).unwrap();
  let out = g
    .call(std::slice::from_ref(&d["x2"]), &kw(&d, "2"))
    .unwrap();
  assert_close(&out[0], &d["out0_2"], 1e-6);
  assert_close(&out[1], &d["out1_2"], 1e-6);
  // An error inside the function surfaces from the export.
  let bad = ClosureKwargs::new(|_: &[Array], _: &Kwargs| {
    Err(mlxrs_core::Error::InvalidArgument("nope".into()))
  })
  .unwrap();
  let e = export_function_kwargs(tmp("bad.mlxfn"), &bad, &[], &kw(&d, ""), false).unwrap_err();
  assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn kwargs_exporter_keeps_several_traces() {
  let d = data();
  let f = rust_f();
  let p = tmp("multi_kw.mlxfn");
  {
    let mut ex = FunctionExporter::new_kwargs(&p, &f, false).unwrap();
    ex.trace_kwargs(std::slice::from_ref(&d["x"]), &kw(&d, ""))
      .unwrap();
    // A second signature: one row of each input.
    let row = |a: &Array| ops::slice(a, &[0, 0], &[1, 3], &[1, 1]).unwrap();
    let k1 = HashMap::from([
      ("y".to_string(), row(&d["y"])),
      ("z".to_string(), row(&d["z"])),
    ]);
    ex.trace_kwargs(&[row(&d["x"])], &k1).unwrap();
  }
  let g = import_function_kwargs(&p).unwrap();
  let full = g
    .call(std::slice::from_ref(&d["x2"]), &kw(&d, "2"))
    .unwrap();
  assert_close(&full[0], &d["out0_2"], 1e-6);
  let row = |a: &Array| ops::slice(a, &[0, 0], &[1, 3], &[1, 1]).unwrap();
  let k2 = HashMap::from([
    ("y".to_string(), row(&d["y2"])),
    ("z".to_string(), row(&d["z2"])),
  ]);
  let one = g.call(&[row(&d["x2"])], &k2).unwrap();
  assert_close(&one[0], &row(&d["out0_2"]), 1e-6);
  assert_eq!(one[1].shape(), vec![1]);
  assert_close(
    &one[1],
    &ops::slice(&d["out1_2"], &[0], &[1], &[1]).unwrap(),
    1e-6,
  );
}

/// An event encoded as `make_op_refs.py` encodes python's (tuples as lists,
/// dtypes as `{"dtype": name}`, arrays as `{"array": values, "dtype": name}`).
fn encode(ev: &ExportEvent) -> serde_json::Value {
  use serde_json::{Value, json};
  let dt = |d: Dtype| json!({ "dtype": d.to_string() });
  let state = |s: &ExportState| -> Value {
    match s {
      ExportState::Bool(b) => json!(b),
      ExportState::Int(i) => json!(i),
      ExportState::Size(i) => json!(i),
      ExportState::Float(f) => json!(f),
      ExportState::Double(f) => json!(f),
      ExportState::Dtype(d) => dt(*d),
      ExportState::Shape(v) | ExportState::Ints(v) => json!(v),
      ExportState::Strides(v) => json!(v),
      ExportState::Sizes(v) => json!(v),
      ExportState::OptionalFloat(f) => json!(f),
      ExportState::String(s) => json!(s),
      other => json!(format!("{other:?}")),
    }
  };
  let mut m = serde_json::Map::new();
  for (k, v) in ev {
    let x = match v {
      ExportValue::TensorSpecs(t) => {
        Value::Array(t.iter().map(|(n, s, d)| json!([n, s, dt(*d)])).collect())
      }
      ExportValue::NamedArrays(t) => Value::Array(
        t.iter()
          .map(|(n, a)| {
            let vals: Vec<f64> = vals(&ops::astype(a, Dtype::Float32).unwrap())
              .into_iter()
              .map(f64::from)
              .collect();
            json!([n, { "array": vals, "dtype": a.dtype().to_string() }])
          })
          .collect(),
      ),
      ExportValue::NamedStrings(t) => Value::Array(t.iter().map(|(a, b)| json!([a, b])).collect()),
      ExportValue::States(t) => Value::Array(t.iter().map(state).collect()),
      ExportValue::String(s) => json!(s),
    };
    m.insert(k.clone(), x);
  }
  Value::Object(m)
}

/// python's `mx.export_function(callback, g, x, y=y)` events, replayed:
/// the Rust trace of the same function must give the same events in the
/// same order (tensor names, shapes, dtypes, constants, primitive names and
/// arguments).
#[test]
fn export_callback_events_match_python() {
  let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("tests/data/op_refs/export/callback_events.json");
  let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
  let g = ClosureKwargs::new(|args: &[Array], kwargs: &Kwargs| {
    let x = &args[0];
    let y = &kwargs["y"];
    let a = ops::add(
      &ops::multiply(&ops::exp(x)?, y)?,
      &Array::from_slice::<f32>(&[2.0], &[]).unwrap(),
    )?;
    Ok(vec![
      a,
      ops::sum_axis(x, 1, false)?,
      ops::astype(x, Dtype::Int32)?,
    ])
  })
  .unwrap();
  let ones = || ops::ones(&[2, 3], Dtype::Float32).unwrap();
  let events = Arc::new(Mutex::new(Vec::new()));
  let sink = events.clone();
  let kw = HashMap::from([("y".to_string(), ones())]);
  export_function_callback(
    move |ev: &ExportEvent| {
      sink.lock().unwrap().push(encode(ev));
      Ok(())
    },
    &g,
    &[ones()],
    &kw,
    false,
  )
  .unwrap();
  let got = serde_json::Value::Array(events.lock().unwrap().clone());
  assert_eq!(got, want);

  // An error from the callback stops the export and is returned as is.
  let e = export_function_callback(
    |_: &ExportEvent| Err(mlxrs_core::Error::InvalidArgument("stop here".into())),
    &g,
    &[ones()],
    &kw,
    false,
  )
  .unwrap_err();
  assert!(e.to_string().contains("stop here"), "{e}");

  // The exporter form: one "inputs" event per trace.
  let n = Arc::new(Mutex::new(0usize));
  let n2 = n.clone();
  {
    let mut ex = FunctionExporter::new_callback(
      move |ev: &ExportEvent| {
        if matches!(ev.get("type"), Some(ExportValue::String(t)) if t == "inputs") {
          *n2.lock().unwrap() += 1;
        }
        Ok(())
      },
      &g,
      false,
    )
    .unwrap();
    ex.trace_kwargs(&[ones()], &kw).unwrap();
    let k1 = HashMap::from([("y".to_string(), ops::ones(&[1, 3], Dtype::Float32).unwrap())]);
    ex.trace_kwargs(&[ops::ones(&[1, 3], Dtype::Float32).unwrap()], &k1)
      .unwrap();
  }
  assert_eq!(*n.lock().unwrap(), 2);
}
