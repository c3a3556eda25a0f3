//! Similarity helpers (python `sentence_transformers.util`: `cos_sim`,
//! `dot_score`, `euclidean_sim`, `manhattan_sim`, and
//! `SentenceTransformer.similarity`).
//!
//! The `Vec<Vec<f32>>` versions work on what [`crate::Embedder::embed`]
//! returns; [`cos_sim_array`] does the same on MLX arrays.

use mlxrs_core::{Array, ops};

use crate::error::{Error, Result};
use crate::folder::SimilarityFn;
use crate::pooling::l2_normalize;

fn check_widths(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<()> {
  let w = a.first().or(b.first()).map(Vec::len).unwrap_or(0);
  for (name, set) in [("a", a), ("b", b)] {
    if let Some((i, v)) = set.iter().enumerate().find(|(_, v)| v.len() != w) {
      return Err(Error::InvalidArgument(format!(
        "embedding {name}[{i}] has {} dimensions, expected {w}",
        v.len()
      )));
    }
  }
  Ok(())
}

fn pairwise(
  a: &[Vec<f32>],
  b: &[Vec<f32>],
  f: impl Fn(&[f32], &[f32]) -> f32,
) -> Result<Vec<Vec<f32>>> {
  check_widths(a, b)?;
  Ok(
    a.iter()
      .map(|x| b.iter().map(|y| f(x, y)).collect())
      .collect(),
  )
}

fn dot(x: &[f32], y: &[f32]) -> f32 {
  x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(x: &[f32], y: &[f32]) -> f32 {
  let n = dot(x, x).sqrt() * dot(y, y).sqrt();
  if n == 0.0 { 0.0 } else { dot(x, y) / n }
}

/// The `a.len() x b.len()` cosine-similarity matrix (python `util.cos_sim`).
pub fn cosine_matrix(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
  pairwise(a, b, cosine)
}

/// Dot products (python `util.dot_score`).
pub fn dot_matrix(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
  pairwise(a, b, dot)
}

/// Negative Euclidean distances (python `util.euclidean_sim`).
pub fn euclidean_matrix(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
  pairwise(a, b, |x, y| {
    -x.iter()
      .zip(y)
      .map(|(a, b)| (a - b) * (a - b))
      .sum::<f32>()
      .sqrt()
  })
}

/// Negative Manhattan distances (python `util.manhattan_sim`).
pub fn manhattan_matrix(a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
  pairwise(a, b, |x, y| {
    -x.iter().zip(y).map(|(a, b)| (a - b).abs()).sum::<f32>()
  })
}

/// Pairwise similarities with `f` (python `model.similarity(a, b)`).
pub fn similarity(f: SimilarityFn, a: &[Vec<f32>], b: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
  match f {
    SimilarityFn::Cosine => cosine_matrix(a, b),
    SimilarityFn::Dot => dot_matrix(a, b),
    SimilarityFn::Euclidean => euclidean_matrix(a, b),
    SimilarityFn::Manhattan => manhattan_matrix(a, b),
  }
}

/// Cosine-similarity matrix of `[N, D]` and `[M, D]` arrays: `[N, M]`
/// (python `util.cos_sim` on tensors).
pub fn cos_sim_array(a: &Array, b: &Array) -> Result<Array> {
  let (a, b) = (l2_normalize(a)?, l2_normalize(b)?);
  Ok(ops::matmul(&a, &ops::transpose(&b)?)?)
}

/// Indices of the `k` most similar rows of `corpus` for each query, best
/// first, with their scores (python `util.semantic_search`, cosine).
pub fn top_k(
  queries: &[Vec<f32>],
  corpus: &[Vec<f32>],
  k: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
  let m = cosine_matrix(queries, corpus)?;
  Ok(
    m.into_iter()
      .map(|row| {
        let mut r: Vec<(usize, f32)> = row.into_iter().enumerate().collect();
        r.sort_by(|x, y| y.1.total_cmp(&x.1));
        r.truncate(k);
        r
      })
      .collect(),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn matrices() {
    let a = vec![vec![1.0, 0.0], vec![0.0, 2.0]];
    let b = vec![vec![1.0, 1.0], vec![3.0, 0.0], vec![0.0, 0.0]];
    let c = cosine_matrix(&a, &b).unwrap();
    assert!((c[0][0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    assert_eq!(c[0][1], 1.0);
    assert_eq!(c[1][1], 0.0);
    assert_eq!(c[1][2], 0.0);
    assert_eq!(dot_matrix(&a, &b).unwrap()[1][0], 2.0);
    assert_eq!(euclidean_matrix(&a, &b).unwrap()[0][1], -2.0);
    assert_eq!(manhattan_matrix(&a, &b).unwrap()[1][0], -2.0);
    let t = top_k(&a, &b, 2).unwrap();
    assert_eq!(t[0][0].0, 1);
    assert_eq!(t[0].len(), 2);
    let e = cosine_matrix(&a, &[vec![1.0]]).unwrap_err().to_string();
    assert!(e.contains("b[0]") && e.contains("1 dimensions"), "{e}");
  }
}
