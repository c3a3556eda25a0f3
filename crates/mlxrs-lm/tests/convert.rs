//! `mlxrs_lm::convert` against Python `mlx_lm.convert`: for every case in
//! `tests/data/convert/refs.json` (made by `scripts/make_convert_refs.py`:
//! a tiny fixture + the same flags for both tools) the converted folder has
//! the same tensors (names, dtypes, shapes, SHA-256 of the stored bytes),
//! the same config.json (parsed, and byte for byte) and the same
//! model.safetensors.index.json. Plus the refusals and the sharded output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlxrs_core::Array;
use mlxrs_lm::convert::{ConvertOptions, convert};
use serde_json::Value;

fn tiny(name: &str) -> PathBuf {
  PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    .join("../../models/tiny")
    .join(name)
}

fn refs() -> Value {
  let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/convert/refs.json");
  serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// SHA-256 (FIPS 180-4), small and dependency-free, for tensor bytes.
fn sha256(data: &[u8]) -> String {
  const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ];
  let mut h: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ];
  let mut msg = data.to_vec();
  let bit_len = (data.len() as u64).wrapping_mul(8);
  msg.push(0x80);
  while msg.len() % 64 != 56 {
    msg.push(0);
  }
  msg.extend_from_slice(&bit_len.to_be_bytes());
  for chunk in msg.chunks(64) {
    let mut w = [0u32; 64];
    for i in 0..16 {
      w[i] = u32::from_be_bytes([
        chunk[4 * i],
        chunk[4 * i + 1],
        chunk[4 * i + 2],
        chunk[4 * i + 3],
      ]);
    }
    for i in 16..64 {
      let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
      let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16]
        .wrapping_add(s0)
        .wrapping_add(w[i - 7])
        .wrapping_add(s1);
    }
    let mut v = h;
    for i in 0..64 {
      let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
      let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
      let t1 = v[7]
        .wrapping_add(s1)
        .wrapping_add(ch)
        .wrapping_add(K[i])
        .wrapping_add(w[i]);
      let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
      let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
      let t2 = s0.wrapping_add(maj);
      v = [
        t1.wrapping_add(t2),
        v[0],
        v[1],
        v[2],
        v[3].wrapping_add(t1),
        v[4],
        v[5],
        v[6],
      ];
    }
    for (a, b) in h.iter_mut().zip(v) {
      *a = a.wrapping_add(b);
    }
  }
  h.iter().map(|x| format!("{x:08x}")).collect()
}

/// name -> {dtype, shape, sha256, file} of every safetensors file in `dir`
/// (the same record the Python script makes), plus each file's metadata.
fn tensor_records(dir: &Path) -> (HashMap<String, Value>, HashMap<String, Value>) {
  let mut out = HashMap::new();
  let mut meta = HashMap::new();
  let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
    .unwrap()
    .map(|e| e.unwrap().path())
    .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
    .collect();
  files.sort();
  for f in files {
    let data = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&data[8..8 + n]).unwrap();
    let fname = f.file_name().unwrap().to_str().unwrap().to_string();
    for (name, info) in header {
      if name == "__metadata__" {
        meta.insert(fname.clone(), info);
        continue;
      }
      let off = info["data_offsets"].as_array().unwrap();
      let (a, b) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
      );
      out.insert(
        name,
        serde_json::json!({
          "dtype": info["dtype"], "shape": info["shape"],
          "sha256": sha256(&data[8 + n + a..8 + n + b]), "file": fname,
        }),
      );
    }
  }
  (out, meta)
}

fn options(src: &Path, dst: &Path, flags: &[String]) -> ConvertOptions {
  let mut o = ConvertOptions {
    hf_path: src.to_str().unwrap().to_string(),
    mlx_path: dst.to_path_buf(),
    ..ConvertOptions::default()
  };
  let mut it = flags.iter();
  while let Some(f) = it.next() {
    let mut val = || it.next().unwrap().clone();
    match f.as_str() {
      "-q" => o.quantize = true,
      "-d" => o.dequantize = true,
      "--dtype" => o.dtype = Some(val()),
      "--q-bits" => o.q_bits = Some(val().parse().unwrap()),
      "--q-group-size" => o.q_group_size = Some(val().parse().unwrap()),
      "--q-mode" => o.q_mode = val(),
      "--quant-predicate" => o.quant_predicate = Some(val()),
      other => panic!("flag {other} not handled by the test"),
    }
  }
  o
}

/// The `mixtral` fixture in the Hugging Face layout (per-expert
/// `block_sparse_moe.experts.{e}.w1/w2/w3`), as the Python script builds it.
fn make_hf_mixtral(dst: &Path) {
  let src = tiny("mixtral");
  let (w, _) = mlxrs_core::io::load_safetensors(src.join("model.safetensors")).unwrap();
  let mut out: HashMap<String, Array> = HashMap::new();
  for (k, v) in w {
    if let Some((pre, rest)) = k.split_once(".switch_mlp.") {
      let (proj, leaf) = rest.split_once('.').unwrap();
      let n = match proj {
        "gate_proj" => "w1",
        "down_proj" => "w2",
        "up_proj" => "w3",
        _ => unreachable!(),
      };
      for e in 0..v.shape()[0] {
        let s = mlxrs_core::ops::take_axis(&v, &Array::scalar(e), 0).unwrap();
        out.insert(format!("{pre}.experts.{e}.{n}.{leaf}"), s);
      }
    } else {
      out.insert(k, v);
    }
  }
  std::fs::create_dir_all(dst).unwrap();
  mlxrs_core::io::save_safetensors(dst.join("model.safetensors"), &out, &HashMap::new()).unwrap();
  for e in std::fs::read_dir(&src).unwrap() {
    let p = e.unwrap().path();
    let n = p.file_name().unwrap().to_str().unwrap();
    if n.ends_with(".json") && n != "model.safetensors.index.json" && !n.starts_with("reference") {
      std::fs::copy(&p, dst.join(n)).unwrap();
    }
  }
}

#[test]
fn matches_mlx_lm_convert() {
  let r = refs();
  let tmp = tempfile::tempdir().unwrap();
  let hf_mixtral = tmp.path().join("hf_mixtral");
  make_hf_mixtral(&hf_mixtral);
  let mut failures = Vec::new();
  let cases = r["cases"].as_object().unwrap();
  assert!(cases.len() >= 20, "refs.json has {} cases", cases.len());
  for (name, case) in cases {
    let fixture = case["fixture"].as_str().unwrap();
    let src = if fixture == "hf_mixtral" {
      hf_mixtral.clone()
    } else {
      tiny(fixture)
    };
    let flags: Vec<String> = case["flags"]
      .as_array()
      .unwrap()
      .iter()
      .map(|f| f.as_str().unwrap().to_string())
      .collect();
    let dst = tmp.path().join(format!("out_{name}"));
    if let Err(e) = convert(&options(&src, &dst, &flags)) {
      failures.push(format!("{name}: convert failed: {e}"));
      continue;
    }
    let (tensors, meta) = tensor_records(&dst);
    let want = case["tensors"].as_object().unwrap();
    if tensors.len() != want.len() {
      failures.push(format!(
        "{name}: {} tensors, python wrote {}",
        tensors.len(),
        want.len()
      ));
    }
    for (k, w) in want {
      match tensors.get(k) {
        None => failures.push(format!("{name}: missing tensor {k}")),
        Some(g) if g != w => failures.push(format!("{name}: tensor {k}: got {g}, python {w}")),
        _ => {}
      }
    }
    for (f, m) in &meta {
      if case["metadata"][f] != *m {
        failures.push(format!("{name}: {f} metadata {m}"));
      }
    }
    let cfg_text = std::fs::read_to_string(dst.join("config.json")).unwrap();
    let cfg: Value = serde_json::from_str(&cfg_text).unwrap();
    if cfg != case["config"] {
      failures.push(format!(
        "{name}: config.json differs:\n  got {cfg}\n  python {}",
        case["config"]
      ));
    } else if sha256(cfg_text.as_bytes()) != case["config_sha256"].as_str().unwrap() {
      failures.push(format!(
        "{name}: config.json text differs (same JSON value)"
      ));
    }
    let index: Value = serde_json::from_str(
      &std::fs::read_to_string(dst.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    if index != case["index"] {
      failures.push(format!(
        "{name}: index differs: got {}, python {}",
        index["metadata"], case["index"]["metadata"]
      ));
    }
  }
  assert!(
    failures.is_empty(),
    "{} problem(s):\n{}",
    failures.len(),
    failures.join("\n")
  );
}

/// The output loads back in mlxrs and splits into shards at the size limit
/// (python `make_shards`), with an index naming every tensor's shard.
#[test]
fn sharded_output_loads() {
  let tmp = tempfile::tempdir().unwrap();
  let dst = tmp.path().join("sharded");
  let mut o = options(&tiny("qwen3"), &dst, &["-q".to_string()]);
  o.max_shard_bytes = 20_000;
  let rep = convert(&o).unwrap();
  assert!(rep.shards.len() > 1, "{:?}", rep.shards);
  let n = rep.shards.len();
  for (i, s) in rep.shards.iter().enumerate() {
    assert_eq!(s, &format!("model-{:05}-of-{:05}.safetensors", i + 1, n));
    let size = std::fs::metadata(dst.join(s)).unwrap().len();
    // a shard holds at most the limit of tensor data (+ its header)
    assert!(size < 20_000 + 8_000, "{s}: {size} bytes");
  }
  let index: Value = serde_json::from_str(
    &std::fs::read_to_string(dst.join("model.safetensors.index.json")).unwrap(),
  )
  .unwrap();
  let map = index["weight_map"].as_object().unwrap();
  assert_eq!(map.len(), rep.tensors);
  let keys: Vec<&String> = map.keys().collect();
  let mut sorted = keys.clone();
  sorted.sort();
  assert_eq!(keys, sorted, "weight_map is sorted");
  // the same tensors as the single-file conversion
  let single = tmp.path().join("single");
  convert(&options(&tiny("qwen3"), &single, &["-q".to_string()])).unwrap();
  let (a, _) = tensor_records(&dst);
  let (b, _) = tensor_records(&single);
  let strip = |m: HashMap<String, Value>| -> HashMap<String, Value> {
    m.into_iter()
      .map(|(k, mut v)| {
        v.as_object_mut().unwrap().remove("file");
        (k, v)
      })
      .collect()
  };
  assert_eq!(strip(a), strip(b));
  // and it loads
  let (model, _) = mlxrs_lm::load_model_dir(&dst, None).unwrap();
  assert!(model.vocab_size() > 0);
}

fn err(o: &ConvertOptions) -> String {
  convert(o).expect_err("expected an error").to_string()
}

/// Bad input: a clear error, and no output folder left behind.
#[test]
fn refusals_leave_no_output() {
  let tmp = tempfile::tempdir().unwrap();
  let dst = tmp.path().join("out");
  let no_out = |what: &str| {
    let left: Vec<_> = std::fs::read_dir(tmp.path())
      .unwrap()
      .map(|e| e.unwrap().file_name())
      .filter(|n| n.to_string_lossy().contains("out"))
      .collect();
    assert!(left.is_empty(), "{what}: left {left:?}");
  };

  // missing weights
  let src = tmp.path().join("src_noweights");
  std::fs::create_dir(&src).unwrap();
  for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
    std::fs::copy(tiny("qwen3").join(f), src.join(f)).unwrap();
  }
  let e = err(&options(&src, &dst, &[]));
  assert!(e.contains("missing weights"), "{e}");
  no_out("missing weights");

  // unsupported model_type
  let src2 = tmp.path().join("src_badtype");
  std::fs::create_dir(&src2).unwrap();
  for f in ["model.safetensors", "tokenizer.json"] {
    std::fs::copy(tiny("qwen3").join(f), src2.join(f)).unwrap();
  }
  let cfg = std::fs::read_to_string(tiny("qwen3").join("config.json"))
    .unwrap()
    .replace("\"qwen3\"", "\"no_such_arch\"");
  std::fs::write(src2.join("config.json"), cfg).unwrap();
  let e = err(&options(&src2, &dst, &[]));
  assert!(e.contains("no_such_arch") && e.contains("supported"), "{e}");
  no_out("unsupported model_type");

  // a group size that divides no layer's input width
  let e = err(&options(
    &tiny("qwen3"),
    &dst,
    &["-q".into(), "--q-group-size".into(), "256".into()],
  ));
  assert!(
    e.contains("nothing to quantize") && e.contains("256"),
    "{e}"
  );
  no_out("group size");

  // quantize + dequantize; recipe with a non-affine mode; dequantize a dense model
  let e = err(&options(&tiny("qwen3"), &dst, &["-q".into(), "-d".into()]));
  assert!(e.contains("not both"), "{e}");
  let e = err(&options(
    &tiny("qwen3"),
    &dst,
    &[
      "-q".into(),
      "--q-mode".into(),
      "mxfp4".into(),
      "--quant-predicate".into(),
      "mixed_3_6".into(),
    ],
  ));
  assert!(e.contains("affine"), "{e}");
  let e = err(&options(&tiny("qwen3"), &dst, &["-d".into()]));
  assert!(e.contains("not quantized"), "{e}");
  // GGUF input: not yet
  let e = err(&options(&tmp.path().join("x.gguf"), &dst, &[]));
  assert!(e.contains("GGUF"), "{e}");
  no_out("argument errors");

  // a truncated weight file: the error comes while writing; nothing left
  let src3 = tmp.path().join("src_truncated");
  std::fs::create_dir(&src3).unwrap();
  for f in ["config.json", "tokenizer.json"] {
    std::fs::copy(tiny("qwen3").join(f), src3.join(f)).unwrap();
  }
  let bytes = std::fs::read(tiny("qwen3").join("model.safetensors")).unwrap();
  std::fs::write(src3.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
  let e = err(&options(&src3, &dst, &[]));
  assert!(e.contains("model.safetensors"), "{e}");
  no_out("truncated weights");

  // an existing non-empty destination is refused, then replaced on request
  std::fs::create_dir(&dst).unwrap();
  std::fs::write(dst.join("keep.txt"), "x").unwrap();
  let e = err(&options(&tiny("qwen3"), &dst, &[]));
  assert!(e.contains("not empty") && e.contains("--overwrite"), "{e}");
  assert!(dst.join("keep.txt").exists());
  let mut o = options(&tiny("qwen3"), &dst, &[]);
  o.overwrite = true;
  convert(&o).unwrap();
  assert!(!dst.join("keep.txt").exists() && dst.join("model.safetensors").exists());
  // an existing empty folder is fine
  let empty = tmp.path().join("empty_dst");
  std::fs::create_dir(&empty).unwrap();
  convert(&options(&tiny("qwen3"), &empty, &[])).unwrap();
  assert!(empty.join("config.json").exists());
  // no temp folders remain anywhere
  let partial: Vec<_> = std::fs::read_dir(tmp.path())
    .unwrap()
    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
    .filter(|n| n.contains("partial"))
    .collect();
  assert!(partial.is_empty(), "{partial:?}");
}
