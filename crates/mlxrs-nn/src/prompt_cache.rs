//! Prompt-cache files in mlx-lm's layout (python
//! `mlx_lm.models.cache.save_prompt_cache` / `load_prompt_cache`): one
//! safetensors file whose tensors are `tree_flatten([c.state for c in
//! cache])` (keys `"<layer>.<i>..."`), python scalars / strings / `None`
//! stored as arrays (`int32` / `float32` / `bool` scalars, `int32` char
//! codes, empty `float32`), and metadata `tree_flatten([metadata,
//! class_names, scalars])`: `"0.<key>"` user metadata, `"1.<layer>"` class
//! names, `"2.0" = ""` then `"2.<n>.0"` / `"2.<n>.1"` the path and kind
//! (`scalar`, `string`, `none`) of each converted entry. Files written by
//! either side load in the other.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use mlxrs_core::{Array, Dtype, Error, Result};

use crate::cache::{KvCache, LayerCache, StateNode};

fn flatten(
  prefix: &str,
  node: &StateNode,
  arrays: &mut HashMap<String, Array>,
  scalars: &mut Vec<(String, &'static str)>,
) -> Result<()> {
  let leaf = |kind: &'static str,
              a: Array,
              arrays: &mut HashMap<String, Array>,
              scalars: &mut Vec<(String, &'static str)>| {
    arrays.insert(prefix.to_string(), a);
    if !kind.is_empty() {
      scalars.push((prefix.to_string(), kind));
    }
  };
  match node {
    StateNode::List(items) => {
      for (i, it) in items.iter().enumerate() {
        flatten(&crate::join(prefix, &i.to_string()), it, arrays, scalars)?;
      }
    }
    StateNode::Array(a) => leaf("", a.clone(), arrays, scalars),
    StateNode::Int(i) => {
      let v = i32::try_from(*i).map_err(|_| {
        Error::InvalidArgument(format!("cache state {prefix}: {i} does not fit int32"))
      })?;
      leaf("scalar", Array::scalar(v), arrays, scalars)
    }
    StateNode::Float(f) => leaf("scalar", Array::scalar(*f as f32), arrays, scalars),
    StateNode::Bool(b) => leaf("scalar", Array::scalar(*b), arrays, scalars),
    StateNode::Str(s) => {
      let codes: Vec<i32> = s.chars().map(|c| c as i32).collect();
      leaf(
        "string",
        Array::from_slice(&codes, &[codes.len() as i32])?,
        arrays,
        scalars,
      )
    }
    StateNode::None => leaf(
      "none",
      Array::from_slice::<f32>(&[], &[0])?,
      arrays,
      scalars,
    ),
  }
  Ok(())
}

/// Save per-layer caches with string `metadata` (python
/// `save_prompt_cache(file, cache, metadata)`).
pub fn save_prompt_cache(
  path: impl AsRef<Path>,
  caches: &[LayerCache],
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let states = caches
    .iter()
    .map(|c| Ok((c.class_name(), c.to_state()?)))
    .collect::<Result<Vec<_>>>()?;
  save_states(path.as_ref(), states, metadata)
}

/// [`save_prompt_cache`] for a model's key/value caches (what
/// `mlxrs-lm` models use).
pub fn save_kv_caches(
  path: impl AsRef<Path>,
  caches: &[KvCache],
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let states = caches
    .iter()
    .map(|c| Ok((c.class_name(), c.to_state()?)))
    .collect::<Result<Vec<_>>>()?;
  save_states(path.as_ref(), states, metadata)
}

fn save_states(
  path: &Path,
  states: Vec<(&'static str, StateNode)>,
  metadata: &HashMap<String, String>,
) -> Result<()> {
  let mut arrays = HashMap::new();
  let mut scalars = Vec::new();
  let mut meta = HashMap::new();
  for (i, (class, st)) in states.iter().enumerate() {
    flatten(&i.to_string(), st, &mut arrays, &mut scalars)?;
    meta.insert(format!("1.{i}"), class.to_string());
  }
  for (k, v) in metadata {
    meta.insert(format!("0.{k}"), v.clone());
  }
  meta.insert("2.0".into(), String::new());
  for (n, (p, kind)) in scalars.into_iter().enumerate() {
    meta.insert(format!("2.{}.0", n + 1), p);
    meta.insert(format!("2.{}.1", n + 1), kind.to_string());
  }
  mlxrs_core::io::save_safetensors(path, &arrays, &meta)
}

/// A path-keyed tree being rebuilt (python `tree_unflatten`).
#[derive(Default)]
struct Tree {
  leaf: Option<StateNode>,
  children: BTreeMap<usize, Tree>,
}

impl Tree {
  fn insert(&mut self, path: &str, value: StateNode) -> Result<()> {
    let mut t = self;
    if !path.is_empty() {
      for part in path.split('.') {
        let i: usize = part.parse().map_err(|_| {
          Error::InvalidArgument(format!(
            "prompt cache: tensor name {path:?} is not a dotted list path"
          ))
        })?;
        t = t.children.entry(i).or_default();
      }
    }
    t.leaf = Some(value);
    Ok(())
  }

  fn build(self) -> StateNode {
    if let Some(l) = self.leaf {
      return l;
    }
    let mut out = Vec::new();
    for (i, c) in self.children {
      // python fills gaps with `{}`: an empty list here.
      while out.len() < i {
        out.push(StateNode::List(Vec::new()));
      }
      out.push(c.build());
    }
    StateNode::List(out)
  }
}

fn scalar_of(a: Array, key: &str) -> Result<StateNode> {
  let bad = || {
    Error::InvalidArgument(format!(
      "prompt cache: scalar {key} is not a one-element array"
    ))
  };
  if a.size() != 1 {
    return Err(bad());
  }
  let dt = a.dtype();
  if dt == Dtype::Bool {
    return Ok(StateNode::Bool(a.astype(Dtype::Int32)?.item::<i32>()? != 0));
  }
  if dt.is_float() {
    return Ok(StateNode::Float(
      a.astype(Dtype::Float32)?.item::<f32>()? as f64
    ));
  }
  let v = a.astype(Dtype::Int64).and_then(|mut x| x.item::<i64>());
  match v {
    Ok(v) => Ok(StateNode::Int(v)),
    Err(_) => Ok(StateNode::Int(a.astype(Dtype::Int32)?.item::<i32>()? as i64)),
  }
}

/// Load a prompt-cache file (python `load_prompt_cache(file,
/// return_metadata=True)`): the per-layer caches and the user metadata.
/// A malformed file (unknown class, missing entries, bad shapes) is an
/// error naming the problem.
pub fn load_prompt_cache(
  path: impl AsRef<Path>,
) -> Result<(Vec<LayerCache>, HashMap<String, String>)> {
  let path = path.as_ref();
  let (mut arrays, meta) = mlxrs_core::io::load_safetensors(path)?;
  let bad = |m: String| Error::InvalidArgument(format!("prompt cache {}: {m}", path.display()));
  let mut user = HashMap::new();
  let mut classes: BTreeMap<usize, String> = BTreeMap::new();
  let mut scalar_paths: BTreeMap<usize, (Option<String>, Option<String>)> = BTreeMap::new();
  for (k, v) in &meta {
    if let Some(rest) = k.strip_prefix("0.") {
      user.insert(rest.to_string(), v.clone());
    } else if let Some(rest) = k.strip_prefix("1.") {
      let i: usize = rest
        .parse()
        .map_err(|_| bad(format!("metadata key {k:?} is not a layer index")))?;
      classes.insert(i, v.clone());
    } else if let Some(rest) = k.strip_prefix("2.") {
      if rest == "0" {
        continue;
      }
      let (n, which) = rest
        .split_once('.')
        .ok_or_else(|| bad(format!("metadata key {k:?} is malformed")))?;
      let n: usize = n
        .parse()
        .map_err(|_| bad(format!("metadata key {k:?} is malformed")))?;
      let e = scalar_paths.entry(n).or_default();
      match which {
        "0" => e.0 = Some(v.clone()),
        "1" => e.1 = Some(v.clone()),
        _ => return Err(bad(format!("metadata key {k:?} is malformed"))),
      }
    }
  }
  if classes.is_empty() {
    return Err(bad(
      "no cache class names in the metadata (not an mlx-lm prompt cache?)".into(),
    ));
  }
  if classes.keys().copied().ne(0..classes.len()) {
    return Err(bad("cache class indices are not 0..n".into()));
  }
  let mut nodes: HashMap<String, StateNode> = HashMap::new();
  for (_, (p, kind)) in scalar_paths {
    let (p, kind) = match (p, kind) {
      (Some(p), Some(k)) => (p, k),
      _ => return Err(bad("incomplete scalar entry in the metadata".into())),
    };
    let a = arrays
      .remove(&p)
      .ok_or_else(|| bad(format!("scalar {p} has no tensor")))?;
    let node = match kind.as_str() {
      "scalar" => scalar_of(a, &p)?,
      "string" => {
        let mut a = a.astype(Dtype::Int32)?;
        let codes = a.to_vec::<i32>()?;
        StateNode::Str(
          codes
            .iter()
            .map(|&c| {
              char::from_u32(c as u32)
                .ok_or_else(|| bad(format!("string {p} has invalid char code {c}")))
            })
            .collect::<Result<String>>()?,
        )
      }
      "none" => StateNode::None,
      other => return Err(bad(format!("[load_prompt_cache] Unknown type {other}"))),
    };
    nodes.insert(p, node);
  }
  let mut root = Tree::default();
  for (k, a) in arrays {
    root.insert(&k, StateNode::Array(a))?;
  }
  for (k, n) in nodes {
    root.insert(&k, n)?;
  }
  let mut layers = match root.build() {
    StateNode::List(l) => l,
    _ => return Err(bad("cache state is not a per-layer list".into())),
  };
  if layers.len() > classes.len() {
    return Err(bad(format!(
      "{} layer states but {} class names",
      layers.len(),
      classes.len()
    )));
  }
  layers.resize_with(classes.len(), || StateNode::List(Vec::new()));
  let caches = classes
    .into_values()
    .zip(layers)
    .enumerate()
    .map(|(i, (c, st))| LayerCache::from_state(&c, st).map_err(|e| bad(format!("layer {i}: {e}"))))
    .collect::<Result<Vec<_>>>()?;
  Ok((caches, user))
}

/// [`load_prompt_cache`] as the cache type `mlxrs-lm` models take
/// ([`KvCache`], which also holds `ArraysCache` / `CacheList` recurrent
/// state, see [`KvCache::from_layer`]).
pub fn load_kv_caches(path: impl AsRef<Path>) -> Result<(Vec<KvCache>, HashMap<String, String>)> {
  let (caches, meta) = load_prompt_cache(path)?;
  Ok((caches.into_iter().map(KvCache::from_layer).collect(), meta))
}
