//! Whisper's tokenizer: the special tokens (sot, languages, tasks,
//! timestamps), text decoding, and the non-speech token list. Python:
//! `faster_whisper.tokenizer.Tokenizer` (openai `whisper.tokenizer`).
//!
//! Text comes from `tokenizer.json` (the `tokenizers` crate, as
//! faster-whisper does) or, for CTranslate2 folders without one, from
//! `vocabulary.txt` (byte-level BPE tokens, decoded through GPT-2's byte map;
//! such a folder can decode but not encode text).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result, io_err};

/// Language codes in Whisper's token order (python `whisper.tokenizer.LANGUAGES`).
pub const LANGUAGES: [&str; 100] = [
  "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
  "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
  "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
  "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
  "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
  "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha",
  "ba", "jw", "su", "yue",
];

/// English names of [`LANGUAGES`], same order (python
/// `whisper.tokenizer.LANGUAGES` values; what OpenAI's `verbose_json`
/// reports as `language`).
pub const LANGUAGE_NAMES: [&str; 100] = [
  "english",
  "chinese",
  "german",
  "spanish",
  "russian",
  "korean",
  "french",
  "japanese",
  "portuguese",
  "turkish",
  "polish",
  "catalan",
  "dutch",
  "arabic",
  "swedish",
  "italian",
  "indonesian",
  "hindi",
  "finnish",
  "vietnamese",
  "hebrew",
  "ukrainian",
  "greek",
  "malay",
  "czech",
  "romanian",
  "danish",
  "hungarian",
  "tamil",
  "norwegian",
  "thai",
  "urdu",
  "croatian",
  "bulgarian",
  "lithuanian",
  "latin",
  "maori",
  "malayalam",
  "welsh",
  "slovak",
  "telugu",
  "persian",
  "latvian",
  "bengali",
  "serbian",
  "azerbaijani",
  "slovenian",
  "kannada",
  "estonian",
  "macedonian",
  "breton",
  "basque",
  "icelandic",
  "armenian",
  "nepali",
  "mongolian",
  "bosnian",
  "kazakh",
  "albanian",
  "swahili",
  "galician",
  "marathi",
  "punjabi",
  "sinhala",
  "khmer",
  "shona",
  "yoruba",
  "somali",
  "afrikaans",
  "occitan",
  "georgian",
  "belarusian",
  "tajik",
  "sindhi",
  "gujarati",
  "amharic",
  "yiddish",
  "lao",
  "uzbek",
  "faroese",
  "haitian creole",
  "pashto",
  "turkmen",
  "nynorsk",
  "maltese",
  "sanskrit",
  "luxembourgish",
  "myanmar",
  "tibetan",
  "tagalog",
  "malagasy",
  "assamese",
  "tatar",
  "hawaiian",
  "lingala",
  "hausa",
  "bashkir",
  "javanese",
  "sundanese",
  "cantonese",
];

/// The English name of a Whisper language code (`"en"` -> `"english"`).
pub fn language_name(code: &str) -> Option<&'static str> {
  LANGUAGES
    .iter()
    .position(|&c| c == code)
    .map(|i| LANGUAGE_NAMES[i])
}

/// Special token ids of a Whisper vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
  /// `<|endoftext|>`
  pub eot: u32,
  /// `<|startoftranscript|>`
  pub sot: u32,
  /// `<|translate|>`
  pub translate: u32,
  /// `<|transcribe|>`
  pub transcribe: u32,
  /// `<|startoflm|>`
  pub sot_lm: u32,
  /// `<|startofprev|>`
  pub sot_prev: u32,
  /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies)
  pub no_speech: u32,
  /// `<|notimestamps|>`
  pub no_timestamps: u32,
  /// Language tokens, in [`LANGUAGES`] order, as many as the vocabulary has.
  pub languages: Vec<(String, u32)>,
}

impl SpecialTokens {
  /// `<|0.00|>`: the first timestamp token (`no_timestamps + 1`).
  pub fn timestamp_begin(&self) -> u32 {
    self.no_timestamps + 1
  }

  /// The id of `<|lang|>`.
  pub fn language(&self, code: &str) -> Option<u32> {
    self
      .languages
      .iter()
      .find(|(c, _)| c == code)
      .map(|(_, i)| *i)
  }
}

enum Text {
  Hf(Box<tokenizers::Tokenizer>),
  Vocab(Vec<String>),
}

/// A Whisper tokenizer.
pub struct WhisperTokenizer {
  text: Text,
  /// The special tokens.
  pub special: SpecialTokens,
}

/// GPT-2's byte-level map: unicode char -> byte.
fn byte_decoder() -> HashMap<char, u8> {
  let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
  bs.extend(0xA1..=0xAC);
  bs.extend(0xAE..=0xFF);
  let mut cs = bs.clone();
  let mut n = 0;
  for b in 0..256u32 {
    if !bs.contains(&b) {
      bs.push(b);
      cs.push(256 + n);
      n += 1;
    }
  }
  bs.into_iter()
    .zip(cs)
    .map(|(b, c)| (char::from_u32(c).expect("valid char"), b as u8))
    .collect()
}

fn specials_from(lookup: &dyn Fn(&str) -> Option<u32>) -> Result<SpecialTokens> {
  let need =
    |t: &str| lookup(t).ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {t} token")));
  let eot = need("<|endoftext|>")?;
  let sot = need("<|startoftranscript|>")?;
  let no_speech = lookup("<|nospeech|>")
    .or_else(|| lookup("<|nocaptions|>"))
    .ok_or_else(|| {
      Error::Tokenizer("the vocabulary has no <|nospeech|> / <|nocaptions|> token".into())
    })?;
  let languages = LANGUAGES
    .iter()
    .filter_map(|c| lookup(&format!("<|{c}|>")).map(|i| (c.to_string(), i)))
    .collect();
  Ok(SpecialTokens {
    eot,
    sot,
    translate: need("<|translate|>")?,
    transcribe: need("<|transcribe|>")?,
    sot_lm: need("<|startoflm|>")?,
    sot_prev: need("<|startofprev|>")?,
    no_speech,
    no_timestamps: need("<|notimestamps|>")?,
    languages,
  })
}

impl WhisperTokenizer {
  /// Load `tokenizer.json`.
  pub fn from_file(path: impl AsRef<Path>) -> Result<WhisperTokenizer> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let tok = tokenizers::Tokenizer::from_bytes(&bytes)
      .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    let special = specials_from(&|t| tok.token_to_id(t))
      .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(WhisperTokenizer {
      text: Text::Hf(Box::new(tok)),
      special,
    })
  }

  /// Load a CTranslate2 `vocabulary.txt` (one token per line, id = line
  /// number), or `vocabulary.json` (a JSON list).
  pub fn from_vocabulary(path: impl AsRef<Path>) -> Result<WhisperTokenizer> {
    let path = path.as_ref();
    let s = std::fs::read_to_string(path).map_err(io_err(path))?;
    let tokens: Vec<String> = if path.extension().is_some_and(|e| e == "json") {
      serde_json::from_str(&s).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?
    } else {
      s.lines().map(str::to_string).collect()
    };
    if tokens.is_empty() {
      return Err(Error::Tokenizer(format!(
        "{}: empty vocabulary",
        path.display()
      )));
    }
    let index: HashMap<&str, u32> = tokens
      .iter()
      .enumerate()
      .map(|(i, t)| (t.as_str(), i as u32))
      .collect();
    let special = specials_from(&|t| index.get(t).copied())
      .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
    Ok(WhisperTokenizer {
      text: Text::Vocab(tokens),
      special,
    })
  }

  /// Whether text can be encoded (a `tokenizer.json` was loaded).
  pub fn can_encode(&self) -> bool {
    matches!(self.text, Text::Hf(_))
  }

  /// Encode text without special tokens (python `tokenizer.encode(text)`).
  pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
    match &self.text {
      Text::Hf(t) => Ok(
        t.encode(text, false)
          .map_err(|e| Error::Tokenizer(e.to_string()))?
          .get_ids()
          .to_vec(),
      ),
      Text::Vocab(_) => Err(Error::Tokenizer(
        "this model folder has only vocabulary.txt, which cannot encode text (add tokenizer.json)"
          .into(),
      )),
    }
  }

  /// Decode the text tokens of `tokens` (ids `>= eot` are dropped): python
  /// `Tokenizer.decode`.
  pub fn decode(&self, tokens: &[u32]) -> Result<String> {
    let text: Vec<u32> = tokens
      .iter()
      .copied()
      .filter(|&t| t < self.special.eot)
      .collect();
    match &self.text {
      Text::Hf(t) => t
        .decode(&text, true)
        .map_err(|e| Error::Tokenizer(e.to_string())),
      Text::Vocab(v) => {
        let map = byte_decoder();
        let mut bytes = Vec::new();
        for id in text {
          let tok = v
            .get(id as usize)
            .ok_or_else(|| Error::Tokenizer(format!("token id {id} out of the vocabulary")))?;
          for c in tok.chars() {
            match map.get(&c) {
              Some(b) => bytes.push(*b),
              None => bytes.extend_from_slice(c.to_string().as_bytes()),
            }
          }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
      }
    }
  }

  /// `tokens` with timestamps written as `<|1.23|>` (python
  /// `decode_with_timestamps`).
  pub fn decode_with_timestamps(&self, tokens: &[u32]) -> Result<String> {
    let tb = self.special.timestamp_begin();
    let mut out = String::new();
    let mut run = Vec::new();
    for &t in tokens {
      if t >= tb {
        out.push_str(&self.decode(&run)?);
        run.clear();
        out.push_str(&format!("<|{:.2}|>", f64::from(t - tb) * 0.02));
      } else {
        run.push(t);
      }
    }
    out.push_str(&self.decode(&run)?);
    Ok(out)
  }

  /// Tokens that only start speaker tags / non-speech annotations (python
  /// `Tokenizer.non_speech_tokens`). Needs a `tokenizer.json`.
  pub fn non_speech_tokens(&self) -> Result<Vec<u32>> {
    let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
      .chars()
      .map(String::from)
      .collect();
    symbols.extend(
      "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
        .split(' ')
        .map(String::from),
    );
    let misc: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
    let mut result = std::collections::BTreeSet::new();
    for s in [" -", " '"] {
      if let Some(&t) = self.encode(s)?.first() {
        result.insert(t);
      }
    }
    for sym in symbols.iter().chain(misc.iter()) {
      let is_misc = misc.contains(sym);
      for toks in [self.encode(sym)?, self.encode(&format!(" {sym}"))?] {
        if toks.len() == 1 || (is_misc && !toks.is_empty()) {
          result.insert(toks[0]);
        }
      }
    }
    Ok(result.into_iter().collect())
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn byte_map_round_trips_gpt2_chars() {
    let m = byte_decoder();
    assert_eq!(m.len(), 256);
    assert_eq!(m[&'Ġ'], b' ');
    assert_eq!(m[&'a'], b'a');
  }
}
