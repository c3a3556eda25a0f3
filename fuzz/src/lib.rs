//! What the fuzz targets run: safetensors / GGUF files (validated, loaded,
//! every array evaluated), model `config.json`, tokenizer folders (with chat
//! templates), audio and image bytes. Any outcome but a crash (or a hang) is
//! a pass: corrupt input must come back as `Err`.

use std::path::PathBuf;

use mlxrs_core::Array;

/// A per-process, per-thread scratch file (the loaders take paths).
fn scratch(ext: &str) -> PathBuf {
  let t = format!("{:?}", std::thread::current().id());
  let t: String = t.chars().filter(char::is_ascii_digit).collect();
  std::env::temp_dir().join(format!("mlxrs-fuzz-{}-{t}.{ext}", std::process::id()))
}

fn eval_all<'a>(arrays: impl Iterator<Item = &'a mut Array>) {
  for a in arrays {
    // Evaluation errors are fine; crashes are not.
    let _ = a.eval();
  }
}

/// `read_safetensors_header` and `load_safetensors` on `data`.
pub fn safetensors(data: &[u8]) {
  let p = scratch("safetensors");
  if std::fs::write(&p, data).is_err() {
    return;
  }
  let _ = mlxrs_core::io::read_safetensors_header(&p);
  if let Ok((mut arrays, _)) = mlxrs_core::io::load_safetensors(&p) {
    eval_all(arrays.values_mut());
  }
}

/// `read_gguf_header` and `load_gguf` (MLX's loader) on `data`, and the
/// Rust reader the model loader uses: `read_gguf`, then every tensor with
/// `load_gguf_tensor`, quantized and dequantized (every block type).
pub fn gguf(data: &[u8]) {
  let p = scratch("gguf");
  if std::fs::write(&p, data).is_err() {
    return;
  }
  let _ = mlxrs_core::io::read_gguf_header(&p);
  if let Ok((h, _)) = mlxrs_core::io::read_gguf(&p) {
    for info in h.tensors.values() {
      for dequantize in [false, true] {
        match mlxrs_core::io::load_gguf_tensor(&p, info, dequantize) {
          Ok(mlxrs_core::io::GgufTensor::Dense(mut a)) => {
            let _ = a.eval();
          }
          Ok(mlxrs_core::io::GgufTensor::Quantized {
            mut weight,
            mut scales,
            mut biases,
            ..
          }) => eval_all([&mut weight, &mut scales, &mut biases].into_iter()),
          Err(_) => {}
        }
      }
    }
  }
  if let Ok((mut arrays, mut meta)) = mlxrs_core::io::load_gguf(&p) {
    eval_all(arrays.values_mut());
    eval_all(meta.values_mut().filter_map(|m| match m {
      mlxrs_core::io::GgufMeta::Array(a) => Some(a),
      _ => None,
    }));
  }
}

/// A model `config.json`: parse, read the typed fields, run the config
/// check and build the model (layers are lazy arrays: nothing is allocated
/// for absurd sizes unless it passes the check).
pub fn config(data: &[u8]) {
  let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
    return;
  };
  let Ok(c) = mlxrs_lm::ModelConfig::from_value("config.json", v) else {
    return;
  };
  let _ = c.model_type();
  let _ = c.head_dim();
  let _ = c.eos_token_ids();
  let _ = c.quantization();
  let _ = c.max_position_embeddings();
  let text = c.text_config();
  if mlxrs_lm::validate::validate_text_config(&text).is_ok() {
    let _ = mlxrs_lm::build_model(&text);
  }
}

/// Tokenizer folder loading: the first byte picks which file the rest of
/// the input is (even: `tokenizer.json`, odd: `tokenizer_config.json` with
/// its chat template), the other file being the seed tokenizer's. Then
/// encode, decode and render the chat template.
pub fn tokenizer(data: &[u8]) {
  let Some((&sel, body)) = data.split_first() else {
    return;
  };
  let d = scratch("tokdir");
  if std::fs::create_dir_all(&d).is_err() {
    return;
  }
  let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny/llama/");
  let (tj, tc) = if sel % 2 == 0 {
    (
      body.to_vec(),
      std::fs::read(format!("{base}tokenizer_config.json")).unwrap_or_default(),
    )
  } else {
    (
      std::fs::read(format!("{base}tokenizer.json")).unwrap_or_default(),
      body.to_vec(),
    )
  };
  if std::fs::write(d.join("tokenizer.json"), tj).is_err()
    || std::fs::write(d.join("tokenizer_config.json"), tc).is_err()
  {
    return;
  }
  let Ok(tok) = mlxrs_lm::Tokenizer::from_dir(&d) else {
    return;
  };
  if let Ok(ids) = tok.encode("Hello, world! \u{e9}\u{1f600}", true) {
    let _ = tok.decode(&ids, false);
  }
  if tok.has_chat_template() {
    let msgs = [
      mlxrs_lm::Message::system("sys"),
      mlxrs_lm::Message::user("hi"),
    ];
    let opts = mlxrs_lm::ChatOptions {
      add_generation_prompt: true,
      ..Default::default()
    };
    let _ = tok.apply_chat_template_ids(&msgs, &opts);
  }
}

/// Audio bytes: probe, decode, mix to mono and resample to 16 kHz.
pub fn wav(data: &[u8]) {
  for ext in [Some("wav"), None] {
    if let Ok(a) = mlxrs_audio::audio::decode_audio_bytes(data, ext) {
      // Bound the work: resampling a huge decoded stream is not the point.
      if a.samples.len() < 1 << 20 {
        let _ = mlxrs_audio::audio::to_whisper_rate(a);
      }
    }
  }
}

/// Image bytes: decode (PNG, JPEG, WebP, GIF) to RGB.
pub fn image(data: &[u8]) {
  let _ = mlxrs_vlm::decode_image(data, mlxrs_vlm::AlphaMode::Drop);
  let _ = mlxrs_vlm::decode_image(data, mlxrs_vlm::AlphaMode::OverWhite);
}

/// A deterministic mutator (xorshift): flips, overwrites with interesting
/// values, inserts, deletes and truncates bytes of `seed`. Used by the
/// stable-toolchain smoke test (`tests/mutate.rs`) when cargo-fuzz is not
/// available.
pub struct Mutator(u64);

impl Mutator {
  /// A mutator seeded with `seed` (non-zero).
  pub fn new(seed: u64) -> Self {
    Mutator(seed | 1)
  }

  fn next(&mut self) -> u64 {
    let mut x = self.0;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    self.0 = x;
    x
  }

  fn below(&mut self, n: usize) -> usize {
    if n == 0 {
      0
    } else {
      (self.next() % n as u64) as usize
    }
  }

  /// 1 to 4 random edits of `data`.
  pub fn mutate(&mut self, data: &mut Vec<u8>) {
    const INTERESTING: &[u64] = &[
      0,
      1,
      2,
      4,
      7,
      8,
      9,
      12,
      13,
      31,
      32,
      255,
      0x7fff_ffff,
      0x8000_0000,
      0xffff_ffff,
      u64::MAX,
      1 << 40,
    ];
    for _ in 0..1 + self.below(4) {
      let at = self.below(data.len().max(1));
      match self.below(6) {
        0 if !data.is_empty() => data[at] ^= 1 << self.below(8),
        1 if !data.is_empty() => data[at] = self.next() as u8,
        2 => {
          let v = INTERESTING[self.below(INTERESTING.len())];
          let w = [1, 2, 4, 8][self.below(4)];
          for (k, b) in v.to_le_bytes()[..w].iter().enumerate() {
            if let Some(x) = data.get_mut(at + k) {
              *x = *b;
            }
          }
        }
        3 => data.insert(at.min(data.len()), self.next() as u8),
        4 if !data.is_empty() => {
          data.remove(at);
        }
        _ => data.truncate(self.below(data.len() + 1)),
      }
    }
  }
}
