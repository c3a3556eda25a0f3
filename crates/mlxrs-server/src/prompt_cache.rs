//! The cross-request prompt cache (python `mlx_lm.server`'s
//! `LRUPromptCache`): KV caches keyed by the token sequence they hold,
//! least recently used first out, bounded in entries and bytes. A new
//! request reuses the entry sharing the longest token prefix with its
//! prompt (a multi-turn chat's previous turns), trimmed to that prefix.

use std::collections::VecDeque;

use mlxrs_core::{Result, ops};
use mlxrs_nn::KvCache;

struct Entry {
  tokens: Vec<i32>,
  caches: Vec<KvCache>,
  bytes: usize,
}

/// An LRU of `(tokens, per-layer caches)`.
pub struct PromptCache {
  entries: VecDeque<Entry>,
  max_entries: usize,
  max_bytes: Option<usize>,
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
  a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A standard cache holding the first `n` positions of `c`.
fn cut(c: &KvCache, n: i32) -> Result<KvCache> {
  let mut out = KvCache::standard();
  if let Some((k, v)) = c.state()? {
    let sl = |a: &mlxrs_core::Array| {
      let mut stop = a.shape();
      stop[2] = n;
      ops::slice(a, &[0, 0, 0, 0], &stop, &[1, 1, 1, 1])
    };
    out.set_state(sl(&k)?, sl(&v)?, n)?;
  }
  Ok(out)
}

impl PromptCache {
  /// At most `max_entries` caches (0 disables the cache) and, if given,
  /// `max_bytes` bytes in all.
  pub fn new(max_entries: usize, max_bytes: Option<usize>) -> PromptCache {
    PromptCache {
      entries: VecDeque::new(),
      max_entries,
      max_bytes,
    }
  }

  /// Entries held.
  pub fn len(&self) -> usize {
    self.entries.len()
  }

  /// Whether nothing is held.
  pub fn is_empty(&self) -> bool {
    self.entries.is_empty()
  }

  /// Bytes held.
  pub fn bytes(&self) -> usize {
    self.entries.iter().map(|e| e.bytes).sum()
  }

  /// Whether [`PromptCache::lookup`] would reuse a cached prefix of
  /// `prompt` (nothing is copied or reordered).
  pub fn reuses(&self, prompt: &[i32]) -> bool {
    let limit = prompt.len().saturating_sub(1);
    self
      .entries
      .iter()
      .any(|e| common_prefix(&e.tokens, prompt).min(limit) > 0)
  }

  /// Caches for the longest cached prefix of `prompt`, leaving at least one
  /// prompt token to process: `(caches, positions reused)`; the entry
  /// becomes the most recently used.
  pub fn lookup(&mut self, prompt: &[i32]) -> Result<Option<(Vec<KvCache>, usize)>> {
    let limit = prompt.len().saturating_sub(1);
    let best = self
      .entries
      .iter()
      .enumerate()
      .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
      .max_by_key(|&(_, n)| n);
    let Some((i, n)) = best else {
      return Ok(None);
    };
    if n == 0 {
      return Ok(None);
    }
    let Some(e) = self.entries.remove(i) else {
      return Ok(None);
    };
    let caches = e
      .caches
      .iter()
      .map(|c| cut(c, n as i32))
      .collect::<Result<Vec<_>>>()?;
    self.entries.push_back(e);
    Ok(Some((caches, n)))
  }

  /// Store `caches` holding `tokens`; entries that are prefixes of
  /// `tokens` are dropped (this one extends them), then the least recently
  /// used go until the bounds hold.
  pub fn insert(&mut self, tokens: Vec<i32>, caches: Vec<KvCache>) {
    // Recurrent state (SSM / linear-attention layers) cannot be cut back to
    // a shorter prefix the way keys/values can: such caches are not reused.
    if self.max_entries == 0 || tokens.is_empty() || caches.iter().any(KvCache::is_recurrent) {
      return;
    }
    self
      .entries
      .retain(|e| !(e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens)));
    let bytes = caches.iter().map(KvCache::nbytes).sum();
    self.entries.push_back(Entry {
      tokens,
      caches,
      bytes,
    });
    while self.entries.len() > self.max_entries
      || self
        .max_bytes
        .is_some_and(|m| self.bytes() > m && !self.entries.is_empty())
    {
      self.entries.pop_front();
    }
  }

  /// Drop everything.
  pub fn clear(&mut self) {
    self.entries.clear();
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Recurrent (SSM) state cannot be cut back to a shorter prefix, so such
  /// caches are not stored (a lookup would otherwise hand back empty
  /// key/value caches in their place); key/value caches are.
  #[test]
  fn recurrent_caches_are_not_reused() {
    let mut pc = PromptCache::new(4, None);
    pc.insert(vec![1, 2, 3], vec![KvCache::arrays(2), KvCache::standard()]);
    assert!(pc.is_empty());
    assert!(pc.lookup(&[1, 2, 3, 4]).unwrap().is_none());
    pc.insert(vec![1, 2, 3], vec![KvCache::standard()]);
    assert_eq!(pc.len(), 1);
  }
}
