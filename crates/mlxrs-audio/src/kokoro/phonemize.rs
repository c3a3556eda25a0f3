//! English text -> Kokoro phonemes with espeak-ng (python misaki's
//! `EspeakFallback`, what `KPipeline(lang_code="a" | "b")` uses for words
//! outside its lexicon; phonemizer's `EspeakBackend(with_stress=True,
//! tie="^")`), plus the sentence splitting of `mlxrs speak`.
//!
//! `libespeak-ng` is loaded at run time with `libloading` from, in order:
//! `MLXRS_ESPEAK_LIB` (+ `MLXRS_ESPEAK_DATA`), the PyPI package
//! `espeakng-loader` in the mlxrs cache (`scripts/setup.sh` installs it:
//! `libespeak-ng.so` + `espeak-ng-data`), or the system `libespeak-ng.so.1`.
//! The library keeps global state, so calls are serialised by a mutex.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

type InitFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type SetVoiceFn = unsafe extern "C" fn(*const c_char) -> c_int;
type ToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;

struct Espeak {
  _lib: libloading::Library,
  set_voice: SetVoiceFn,
  to_phonemes: ToPhonemesFn,
  voice: String,
}

// SAFETY: the raw function pointers are only called while holding the
// `ESPEAK` mutex, so the library's global state is never used concurrently.
unsafe impl Send for Espeak {}

static ESPEAK: OnceLock<std::result::Result<Mutex<Espeak>, String>> = OnceLock::new();

fn cache_dir() -> PathBuf {
  if let Some(d) = std::env::var_os("MLXRS_CACHE_DIR") {
    return PathBuf::from(d);
  }
  let base = std::env::var_os("XDG_CACHE_HOME")
    .map(PathBuf::from)
    .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
  base.join("mlxrs")
}

/// `(library, data dir)` candidates in search order.
fn candidates() -> Vec<(PathBuf, Option<PathBuf>)> {
  let mut v = Vec::new();
  if let Some(lib) = std::env::var_os("MLXRS_ESPEAK_LIB") {
    v.push((
      PathBuf::from(lib),
      std::env::var_os("MLXRS_ESPEAK_DATA").map(PathBuf::from),
    ));
  }
  let pkg = cache_dir().join("pypi/espeakng_loader");
  v.push((
    pkg.join("libespeak-ng.so"),
    Some(pkg.join("espeak-ng-data")),
  ));
  v.push((PathBuf::from("libespeak-ng.so.1"), None));
  v
}

fn open() -> std::result::Result<Mutex<Espeak>, String> {
  let mut errors = Vec::new();
  for (lib, data) in candidates() {
    if lib.components().count() > 1 && !lib.is_file() {
      errors.push(format!("{}: not found", lib.display()));
      continue;
    }
    // SAFETY: loading libespeak-ng runs its (trusted, C) initialisers only.
    let l = match unsafe { libloading::Library::new(&lib) } {
      Ok(l) => l,
      Err(e) => {
        errors.push(format!("{}: {e}", lib.display()));
        continue;
      }
    };
    // SAFETY: the symbol types are the espeak-ng 1.5x C API
    // (speak_lib.h): espeak_Initialize, espeak_SetVoiceByName,
    // espeak_TextToPhonemes.
    let syms = unsafe {
      (
        l.get::<InitFn>(b"espeak_Initialize\0").map(|s| *s),
        l.get::<SetVoiceFn>(b"espeak_SetVoiceByName\0").map(|s| *s),
        l.get::<ToPhonemesFn>(b"espeak_TextToPhonemes\0")
          .map(|s| *s),
      )
    };
    let (init, set_voice, to_phonemes) = match syms {
      (Ok(a), Ok(b), Ok(c)) => (a, b, c),
      _ => {
        errors.push(format!("{}: not an espeak-ng library", lib.display()));
        continue;
      }
    };
    let data_c = match data
      .as_ref()
      .map(|d| CString::new(d.to_string_lossy().as_bytes()))
    {
      Some(Ok(c)) => Some(c),
      Some(Err(_)) => {
        errors.push("espeak data path has a NUL byte".into());
        continue;
      }
      None => None,
    };
    // SAFETY: AUDIO_OUTPUT_SYNCHRONOUS (2), no buffer, the data path
    // (or NULL for the built-in default) outlives the call; returns the
    // sample rate or a negative error.
    let rate = unsafe {
      init(
        2,
        0,
        data_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        0,
      )
    };
    if rate <= 0 {
      errors.push(format!(
        "{}: espeak_Initialize failed ({rate}); data {:?}",
        lib.display(),
        data
      ));
      continue;
    }
    return Ok(Mutex::new(Espeak {
      _lib: l,
      set_voice,
      to_phonemes,
      voice: String::new(),
    }));
  }
  Err(format!(
    "espeak-ng is not available ({}); run scripts/setup.sh (PyPI espeakng-loader), set MLXRS_ESPEAK_LIB, or pass --phonemes",
    errors.join("; ")
  ))
}

impl Espeak {
  /// IPA with stress marks and `^` ties, clause by clause joined by spaces.
  fn ipa(&mut self, voice: &str, text: &str) -> Result<String> {
    if self.voice != voice {
      let v = CString::new(voice)
        .map_err(|_| Error::InvalidArgument("voice name has a NUL byte".into()))?;
      // SAFETY: `v` is a valid C string for the duration of the call.
      let r = unsafe { (self.set_voice)(v.as_ptr()) };
      if r != 0 {
        return Err(Error::InvalidArgument(format!(
          "espeak-ng has no voice {voice:?} (error {r})"
        )));
      }
      self.voice = voice.to_string();
    }
    let c = CString::new(text).map_err(|_| Error::InvalidArgument("text has a NUL byte".into()))?;
    let mut ptr: *const c_void = c.as_ptr().cast();
    let mut out = Vec::new();
    // phoneme mode: IPA (bit 1) with a tie (bit 7) '^' in bits 8..23
    let mode: c_int = 0x02 | 0x80 | ((b'^' as c_int) << 8);
    let mut guard = 0usize;
    while !ptr.is_null() {
      guard += 1;
      if guard > text.len() + 16 {
        break;
      }
      // SAFETY: `ptr` points into `c` (NUL terminated, alive); espeak
      // advances it clause by clause and sets it to NULL at the end; the
      // returned string is owned by espeak and copied before the next call.
      let p = unsafe { (self.to_phonemes)(&mut ptr, 1, mode) };
      if p.is_null() {
        break;
      }
      // SAFETY: espeak returns a NUL-terminated UTF-8 string.
      let s = unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string();
      if !s.is_empty() {
        out.push(s);
      }
    }
    Ok(out.join(" "))
  }
}

/// Raw espeak-ng IPA of `text` for an espeak voice (`en-us`, `en-gb`, ...).
pub fn espeak_ipa(voice: &str, text: &str) -> Result<String> {
  let e = ESPEAK
    .get_or_init(open)
    .as_ref()
    .map_err(|e| Error::Model(e.clone()))?;
  let mut g = e
    .lock()
    .map_err(|_| Error::Model("espeak-ng mutex poisoned".into()))?;
  g.ipa(voice, text)
}

/// misaki `EspeakFallback.E2M`, longest first.
const E2M: &[(&str, &str)] = &[
  ("ʔˌn\u{329}", "ʔn"),
  ("ʔn\u{329}", "ʔn"),
  ("a^ɪ", "I"),
  ("a^ʊ", "W"),
  ("d^ʒ", "ʤ"),
  ("e^ɪ", "A"),
  ("t^ʃ", "ʧ"),
  ("ɔ^ɪ", "Y"),
  ("ə^l", "ᵊl"),
  ("ʲo", "jo"),
  ("ʲə", "jə"),
  ("e", "A"),
  ("ʲ", ""),
  ("ɚ", "əɹ"),
  ("r", "ɹ"),
  ("x", "k"),
  ("ç", "k"),
  ("ɐ", "ə"),
  ("ɬ", "l"),
  ("\u{303}", ""),
];

/// Maps espeak IPA to Kokoro's English symbols as misaki's
/// `EspeakFallback.__call__` does (American unless `british`).
pub fn espeak_to_kokoro(ipa: &str, british: bool) -> String {
  let mut ps = ipa.to_string();
  for (old, new) in E2M {
    ps = ps.replace(old, new);
  }
  // (\S)\u0329 -> ᵊ\1, then drop stray U+0329
  let chars: Vec<char> = ps.chars().collect();
  let mut out = String::with_capacity(ps.len());
  let mut i = 0;
  while i < chars.len() {
    if i + 1 < chars.len() && chars[i + 1] == '\u{329}' && !chars[i].is_whitespace() {
      out.push('ᵊ');
      out.push(chars[i]);
      i += 2;
    } else {
      if chars[i] != '\u{329}' {
        out.push(chars[i]);
      }
      i += 1;
    }
  }
  let mut ps = out;
  if british {
    ps = ps
      .replace("e^ə", "ɛː")
      .replace("iə", "ɪə")
      .replace("ə^ʊ", "Q");
  } else {
    ps = ps
      .replace("o^ʊ", "O")
      .replace("ɜːɹ", "ɜɹ")
      .replace("ɜː", "ɜɹ")
      .replace("ɪə", "iə")
      .replace('ː', "");
  }
  ps = ps.replace('o', "ɔ");
  ps = ps.replace('ɾ', "T").replace('ʔ', "t");
  ps.replace('^', "")
}

/// Punctuation Kokoro keeps as symbols.
const PUNCT: &[char] = &[
  ';', ':', ',', '.', '!', '?', '—', '…', '"', '(', ')', '“', '”',
];

/// English text -> Kokoro phonemes: words through espeak-ng (`en-us`, or
/// `en` when `british`), punctuation kept (python misaki + phonemizer's
/// `preserve_punctuation=True`).
pub fn phonemize_en(text: &str, british: bool) -> Result<String> {
  // espeak-ng voice names: `en` is British English, `en-us` American
  let voice = if british { "en" } else { "en-us" };
  let mut out = String::new();
  let mut word = String::new();
  let flush = |word: &mut String, out: &mut String| -> Result<()> {
    let w = word.trim();
    if !w.is_empty() {
      let ps = espeak_to_kokoro(&espeak_ipa(voice, w)?, british);
      if !out.is_empty() && !out.ends_with(' ') && !out.ends_with(['(', '"', '“']) {
        out.push(' ');
      }
      out.push_str(ps.trim());
    }
    word.clear();
    Ok(())
  };
  for ch in text.chars() {
    if PUNCT.contains(&ch) {
      flush(&mut word, &mut out)?;
      out.push(ch);
    } else {
      word.push(ch);
    }
  }
  flush(&mut word, &mut out)?;
  Ok(out.trim().to_string())
}

/// Splits text into sentences (after `.`, `!`, `?`, `…` followed by
/// whitespace, and at newlines), dropping empty ones.
pub fn split_sentences(text: &str) -> Vec<String> {
  let mut out = Vec::new();
  let mut cur = String::new();
  let chars: Vec<char> = text.chars().collect();
  for (i, &c) in chars.iter().enumerate() {
    if c == '\n' {
      if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
      }
      cur.clear();
      continue;
    }
    cur.push(c);
    let end =
      matches!(c, '.' | '!' | '?' | '…') && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
    if end {
      if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
      }
      cur.clear();
    }
  }
  if !cur.trim().is_empty() {
    out.push(cur.trim().to_string());
  }
  out
}

/// Splits a phoneme string into pieces of at most `max` symbols, at
/// punctuation or spaces when possible (python kokoro's waterfall split).
pub fn chunk_phonemes(ps: &str, max: usize) -> Vec<String> {
  let mut out = Vec::new();
  let mut rest: Vec<char> = ps.chars().collect();
  while rest.len() > max {
    let window = &rest[..max];
    let cut = window
      .iter()
      .rposition(|c| matches!(c, '.' | '!' | '?' | ';' | ':' | ','))
      .or_else(|| window.iter().rposition(|c| *c == ' '))
      .map(|p| p + 1)
      .unwrap_or(max);
    let piece: String = rest[..cut].iter().collect();
    if !piece.trim().is_empty() {
      out.push(piece.trim().to_string());
    }
    rest.drain(..cut);
  }
  let piece: String = rest.iter().collect();
  if !piece.trim().is_empty() {
    out.push(piece.trim().to_string());
  }
  out
}
