//! Which C++ overloads get a C entry point, and under which name.
//!
//! mlx-c names the overloads of one C++ function with suffixes
//! (`mlx_sum`, `mlx_sum_axis`, `mlx_sum_axes`). The generator derives those
//! names with four mechanical rules, applied to the overloads of one name
//! (the `MLX_API` declarations plus the header-`inline` ones):
//!
//! - **B, scalar convenience**: an overload taking a number where a sibling
//!   takes an array/shape at the same position (`take(a, int index)` next to
//!   `take(a, const array& indices)`) is covered by that sibling.
//! - **D, single**: an overload taking one `array` + `int axis` where a
//!   sibling takes `std::vector<array>` + `std::vector<int> axes` gets the
//!   suffix `_single` (`mlx_gather_single`, `mlx_scatter_add_single`).
//! - **A, axis family**: overloads equal up to an `int axis` /
//!   `std::vector<int> axes` parameter get `""` / `_axis` / `_axes`; when
//!   no sibling lacks the axis, the `int axis` one is the plain name
//!   (`mlx_expand_dims`, `mlx_expand_dims_axes`).
//! - **Subsumption**: when several overloads land on one name, the one
//!   whose parameters contain every other's (same names, compatible types)
//!   is bound and the others are "covered" (`flatten(a)` is
//!   `flatten(a, 0, -1)`). Exported overloads win over `inline` ones;
//!   `inline` losers are dropped silently (they are header helpers).
//!
//! What the rules cannot decide is in [`OVERRIDES`]; a set of overloads they
//! cannot name is a generation error, so new MLX overloads never get a
//! silently wrong name.
//!
//! Differences from mlx-c (whose tables target an older MLX): the C
//! signatures follow MLX 0.32's headers (`mlx_linspace` has `endpoint`,
//! `mlx_gather_qmm` has `global_scale`); where MLX added a flattening
//! overload ahead of an axis one, the plain name is the flattening one, as
//! mlx-c's own generator picks the first overload (`mlx_cumsum` /
//! `mlx_cumsum_axis`, likewise `cumprod`, `cummax`, `cummin`,
//! `logcumsumexp`, `median`, `fft_fftshift`, `fft_ifftshift`); and overloads
//! mlx-c leaves out but the rules can name are bound (`mlx_flip_axis`,
//! `mlx_fft_fftn_axes`, `mlx_minmax_axes`, ...). mlx-c's `mlx_einsum` lives
//! in `einsum.h`, outside the generator's headers.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::parse::Decl;
use super::types::{self, Kind, Ret};

/// What to do with one overload (matched by its parameter-kind signature).
#[derive(Debug, Clone, Copy)]
pub enum Action {
  /// Bind with this suffix (`""` = the plain name).
  Bind(&'static str),
  /// Bind with this suffix, passing fixed C++ literals for the named
  /// parameters (which the C function then does not take).
  BindFixed(&'static str, &'static [(&'static str, &'static str)]),
  /// Not bound: a special case of the sibling with this suffix.
  Cover(&'static str),
}

/// One entry of the override table.
pub struct Override {
  /// Namespace below `mlx::core` (`""`, `fast`, `fft`, `linalg`, `random`).
  pub ns: &'static str,
  /// C++ function name.
  pub name: &'static str,
  /// The overload's parameter kinds (see `Kind::short`), stream excluded.
  pub sig: &'static str,
  pub action: Action,
  /// Why the mechanical rules are not used.
  pub why: &'static str,
}

macro_rules! ov {
  ($ns:literal, $name:literal, $sig:literal, $action:expr, $why:literal) => {
    Override {
      ns: $ns,
      name: $name,
      sig: $sig,
      action: $action,
      why: $why,
    }
  };
}

use Action::{Bind, BindFixed, Cover};

/// Overload sets the rules cannot name (or would name unlike mlx-c). When a
/// function has entries here, they decide all its overloads: an exported
/// overload without an entry is an error, an `inline` one is dropped.
#[rustfmt::skip]
pub const OVERRIDES: &[Override] = &[
  // ops.h
  ov!("", "split", "array,int,int", Bind(""), "mlx-c names: split / split_sections"),
  ov!("", "split", "array,int", Cover(""), "axis defaults to 0"),
  ov!("", "split", "array,shape,int", Bind("sections"), "mlx-c names: split / split_sections"),
  ov!("", "split", "array,shape", Cover("sections"), "axis defaults to 0"),
  ov!("", "slice", "array,shape,shape,shape", Bind(""), "mlx-c names: slice / slice_dynamic"),
  ov!("", "slice", "array,shape,shape", Cover(""), "strides default to 1"),
  ov!("", "slice", "array,array,ints,shape", Bind("dynamic"), "array start: mlx-c's slice_dynamic"),
  ov!("", "slice_update", "array,array,shape,shape,shape", Bind(""), "mlx-c names"),
  ov!("", "slice_update", "array,array,shape,shape", Cover(""), "strides default to 1"),
  ov!("", "slice_update", "array,array,array,ints", Bind("dynamic"), "array start: mlx-c's slice_update_dynamic"),
  ov!("", "tensordot", "array,array,int", Bind("axis"), "two axes lists: not an axis family; mlx-c names"),
  ov!("", "tensordot", "array,array,ints,ints", Bind(""), "two axes lists: not an axis family; mlx-c names"),
  ov!("", "pad", "array,ints,shape,shape,array,string", Bind(""), "mlx-c names: pad / pad_symmetric"),
  ov!("", "pad", "array,int2,array,string", Cover(""), "(low, high) for every axis: pass all axes"),
  ov!("", "pad", "array,int,array,string", Bind("symmetric"), "mlx-c names: pad / pad_symmetric"),
  ov!("", "zeros_like", "array", Bind(""), "mlx-c binds the first overload, (a)"),
  ov!("", "zeros_like", "array,dtype", Cover(""), "another dtype: zeros(shape, dtype)"),
  ov!("", "ones_like", "array", Bind(""), "mlx-c binds the first overload, (a)"),
  ov!("", "ones_like", "array,dtype", Cover(""), "another dtype: ones(shape, dtype)"),
  ov!("", "atleast_1d", "array", Bind(""), "list overload would clash with the array one"),
  ov!("", "atleast_1d", "arrays", Cover(""), "list overload: apply the array version to each"),
  ov!("", "atleast_2d", "array", Bind(""), "list overload would clash with the array one"),
  ov!("", "atleast_2d", "arrays", Cover(""), "list overload: apply the array version to each"),
  ov!("", "atleast_3d", "array", Bind(""), "list overload would clash with the array one"),
  ov!("", "atleast_3d", "arrays", Cover(""), "list overload: apply the array version to each"),
  // fast.h
  ov!("fast", "rope", "array,int,bool,opt_float,float,int,opt_array", Bind(""), "int vs array offset are distinct ops (mlx-c: rope / rope_dynamic)"),
  ov!("fast", "rope", "array,int,bool,opt_float,float,array,opt_array", Bind("dynamic"), "array offset (mlx-c's rope_dynamic)"),
  ov!("fast", "scaled_dot_product_attention", "array,array,array,float,string,opt_array,opt_array,bool", BindFixed("", &[("force_fused", "false")]), "mlx-c's signature has no force_fused: pass false (fast::sdpa calls the 9-argument form)"),
  // linalg.h
  ov!("linalg", "norm", "array,double,opt_ints,bool", Bind(""), "three ord kinds: mlx-c's norm / norm_matrix / norm_l2"),
  ov!("linalg", "norm", "array,string,opt_ints,bool", Bind("matrix"), "string ord (\"fro\", \"nuc\")"),
  ov!("linalg", "norm", "array,opt_ints,bool", Bind("l2"), "no ord: 2-norm / Frobenius"),
  // random.h
  ov!("random", "split", "array", Bind(""), "pair vs n keys (mlx-c: split / split_num)"),
  ov!("random", "split", "array,int", Bind("num"), "pair vs n keys (mlx-c: split / split_num)"),
  ov!("random", "uniform", "array,array,shape,dtype,opt_array", Bind(""), "mlx-c binds the bounded form only"),
  ov!("random", "uniform", "shape,dtype,opt_array", Cover(""), "= uniform(0, 1, shape, dtype, key)"),
  ov!("random", "normal", "shape,dtype,opt_array,opt_array,opt_array", Bind("broadcast"), "array loc/scale (mlx-c: normal_broadcast)"),
  ov!("random", "normal", "shape,dtype,float,float,opt_array", Bind(""), "float loc/scale: the inline helper, as mlx-c binds it"),
  ov!("random", "categorical", "array,int,shape,opt_array", Bind("shape"), "mlx-c names: categorical_shape"),
  ov!("random", "categorical", "array,int,int,opt_array", Bind("num_samples"), "mlx-c names: categorical_num_samples"),
  ov!("random", "categorical", "array,int,opt_array", Bind(""), "mlx-c names: categorical"),
  ov!("random", "permutation", "array,int,opt_array", Bind(""), "mlx-c names: permutation / permutation_arange"),
  ov!("random", "permutation", "int,opt_array", Bind("arange"), "a permutation of arange(x)"),
];

/// Reasons for overloads whose types have no C mapping (by function).
#[rustfmt::skip]
pub const UNMAPPABLE: &[(&str, &str, &str)] = &[
  ("", "pad", "pad widths as std::vector<std::pair<int, int>>: not generated; bound by hand as mlxrs_pad_pairs (csrc/io_memory.cpp)"),
  ("fast", "metal_kernel", "custom-kernel builder: returns a C++ closure (CustomKernelFunction); not generated: bound by hand as a kernel object (csrc/custom_kernel.cpp)"),
  ("fast", "cuda_kernel", "custom-kernel builder: returns a C++ closure (CustomKernelFunction); not generated: bound by hand as a kernel object (csrc/custom_kernel.cpp)"),
  ("fast", "precompiled_cuda_kernel", "takes lists of shapes, dtypes and variant scalars (std::vector<Shape>, std::vector<ScalarArg>): not generated; bound by hand (csrc/custom_kernel.cpp); CUDA only"),
];

/// Unmappable overloads bound by hand: (namespace, function, C symbol in a
/// hand-written `csrc/*.cpp`). Counted as bound only while csrc defines it.
#[rustfmt::skip]
pub const UNMAPPABLE_HAND: &[(&str, &str, &str)] = &[
  ("", "pad", "mlxrs_pad_pairs"),
  ("fast", "precompiled_cuda_kernel", "mlx_fast_precompiled_cuda_kernel"),
];

/// C functions that get no generated Rust wrapper, and why.
pub const NO_RUST: &[(&str, &str)] = &[(
  "mlx_fast_scaled_dot_product_attention",
  "hand-written: mlxrs_core::fast::scaled_dot_product_attention (fast/sdpa.rs)",
)];

/// A bound overload.
#[derive(Debug, Clone)]
pub struct Binding {
  pub decl: Decl,
  /// Kind of each parameter (same order as `decl.params`).
  pub kinds: Vec<Kind>,
  pub ret: Ret,
  /// `mlx_sum_axes`.
  pub c_name: String,
  /// `sum_axes`.
  pub short: String,
  /// Parameters passed as fixed C++ literals.
  pub fixed: Vec<(String, String)>,
  /// The comment of the overload set, when this overload has none.
  pub doc: Option<String>,
}

/// What happened to one exported declaration.
#[derive(Debug, Clone)]
pub enum Status {
  /// Bound by the generator under this C name.
  Bound(String),
  /// Bound by a hand-written C function of this name.
  HandWritten(String),
  /// Not bound itself; a special case of this bound C function.
  Covered { by: String, why: String },
  /// Not bound.
  Unbound(String),
}

/// The C name prefix of a namespace.
pub fn c_prefix(ns: &str) -> String {
  if ns.is_empty() {
    "mlx_".into()
  } else {
    format!("mlx_{ns}_")
  }
}

struct Cand {
  idx: usize,
  kinds: Vec<Kind>,
}

impl Cand {
  /// Parameters without the stream.
  fn params<'a>(&self, d: &'a Decl) -> Vec<(&'a str, Kind)> {
    d.params
      .iter()
      .zip(&self.kinds)
      .filter(|(_, k)| **k != Kind::Stream)
      .map(|(p, k)| (p.name.as_str(), *k))
      .collect()
  }
  fn sig(&self) -> String {
    self
      .kinds
      .iter()
      .filter(|k| **k != Kind::Stream)
      .map(|k| k.short())
      .collect::<Vec<_>>()
      .join(",")
  }
}

/// Whether `x`'s parameters are a subsequence of `w`'s (same names, types
/// that fit).
fn subsumed(x: &[(&str, Kind)], w: &[(&str, Kind)]) -> bool {
  let mut wi = w.iter();
  x.iter()
    .all(|(n, k)| wi.any(|(wn, wk)| wn == n && k.fits(*wk)))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
  None,
  Axis,
  Axes,
}

fn role(ps: &[(&str, Kind)]) -> (Role, Vec<(String, Kind)>) {
  let mut r = Role::None;
  let mut rest = Vec::new();
  for (n, k) in ps {
    if r == Role::None && *n == "axis" && *k == Kind::Int {
      r = Role::Axis;
    } else if r == Role::None && *n == "axes" && matches!(k, Kind::Ints | Kind::Shape) {
      r = Role::Axes;
    } else {
      rest.push((n.to_string(), *k));
    }
  }
  (r, rest)
}

/// Outcome of naming one overload set: per declaration index, a suffix,
/// a cover (by suffix) or nothing (dropped inline).
#[derive(Debug, Clone)]
enum Outcome {
  Bind(String, Vec<(String, String)>),
  Cover(String, String),
  Unbound(String),
  Drop,
}

/// Name the overloads `decls` (all of one namespace and name).
fn name_set(ns: &str, name: &str, decls: &[Decl]) -> Result<Vec<Outcome>> {
  let mut out = vec![Outcome::Drop; decls.len()];
  let mut cands = Vec::new();
  for (i, d) in decls.iter().enumerate() {
    let ks: Option<Vec<Kind>> = d.params.iter().map(|p| types::kind(&p.ty)).collect();
    match (ks, types::ret(&d.ret)) {
      (Some(kinds), Some(_)) => cands.push(Cand { idx: i, kinds }),
      (_, r) => {
        if d.exported {
          let reason = UNMAPPABLE
            .iter()
            .find(|(n, f, _)| *n == ns && *f == name)
            .map(|(_, _, r)| r.to_string())
            .unwrap_or_else(|| {
              if r.is_none() {
                format!("return type `{}` has no C mapping", d.ret)
              } else {
                let bad = d
                  .params
                  .iter()
                  .find(|p| types::kind(&p.ty).is_none())
                  .unwrap();
                format!(
                  "parameter `{}` of type `{}` has no C mapping",
                  bad.name, bad.ty
                )
              }
            });
          out[i] = Outcome::Unbound(reason);
        }
      }
    }
  }

  // The override table.
  let table: Vec<&Override> = OVERRIDES
    .iter()
    .filter(|o| o.ns == ns && o.name == name)
    .collect();
  if !table.is_empty() {
    for c in &cands {
      let d = &decls[c.idx];
      let sig = c.sig();
      match table.iter().find(|o| o.sig == sig) {
        Some(o) => {
          out[c.idx] = match o.action {
            Action::Bind(s) => Outcome::Bind(s.to_string(), Vec::new()),
            Action::BindFixed(s, f) => Outcome::Bind(
              s.to_string(),
              f.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ),
            Action::Cover(s) => Outcome::Cover(s.to_string(), o.why.to_string()),
          }
        }
        None if d.exported => {
          bail!(
            "override table has entries for {ns}::{name} but none for signature `{sig}` ({})",
            d.pretty()
          )
        }
        None => {}
      }
    }
    for o in &table {
      if !cands.iter().any(|c| c.sig() == o.sig) {
        bail!(
          "override for {ns}::{name} `{}` matches no overload (MLX changed?)",
          o.sig
        );
      }
    }
    return Ok(out);
  }

  let params: Vec<Vec<(&str, Kind)>> = cands.iter().map(|c| c.params(&decls[c.idx])).collect();
  let mut alive: Vec<bool> = vec![true; cands.len()];
  let mut suffix: Vec<Option<String>> = vec![None; cands.len()];

  // Rule B: scalar convenience.
  for x in 0..cands.len() {
    for y in 0..cands.len() {
      if x == y || params[x].len() != params[y].len() || !alive[y] {
        continue;
      }
      let mut scalar_diff = false;
      let ok = params[x].iter().zip(&params[y]).all(|((_, kx), (_, ky))| {
        if kx.fits(*ky) {
          true
        } else if kx.is_scalar() && matches!(ky, Kind::Array | Kind::Shape) {
          scalar_diff = true;
          true
        } else {
          false
        }
      });
      if ok && scalar_diff {
        alive[x] = false;
        out[cands[x].idx] = Outcome::Cover(
          format!("\u{0}{y}"),
          "scalar convenience overload: pass the number as an array".into(),
        );
        break;
      }
    }
  }

  // Rule D: single-array/axis form of a list/axes op.
  for x in 0..cands.len() {
    if !alive[x] {
      continue;
    }
    for y in 0..cands.len() {
      if x == y || params[x].len() != params[y].len() {
        continue;
      }
      let (mut arr, mut ax) = (false, false);
      let ok = params[x]
        .iter()
        .zip(&params[y])
        .all(|((nx, kx), (ny, ky))| {
          if nx == ny && kx == ky {
            true
          } else if nx == ny && *kx == Kind::Array && *ky == Kind::Arrays {
            arr = true;
            true
          } else if *nx == "axis" && *ny == "axes" && *kx == Kind::Int && *ky == Kind::Ints {
            ax = true;
            true
          } else {
            false
          }
        });
      if ok && arr && ax {
        suffix[x] = Some("single".into());
      }
    }
  }

  // Rule A: axis families.
  type Sig = Vec<(String, Kind)>;
  let mut groups: BTreeMap<Sig, Vec<(usize, Role)>> = BTreeMap::new();
  for x in 0..cands.len() {
    if alive[x] && suffix[x].is_none() {
      let (r, rest) = role(&params[x]);
      groups
        .entry(rest.iter().map(|(n, k)| (n.clone(), *k)).collect())
        .or_default()
        .push((x, r));
    }
  }
  for members in groups.values() {
    let has_none = members.iter().any(|(_, r)| *r == Role::None);
    for (x, r) in members {
      let s = match (members.len(), r, has_none) {
        (1, _, _) => "",
        (_, Role::None, _) => "",
        (_, Role::Axis, true) => "axis",
        (_, Role::Axis, false) => "",
        (_, Role::Axes, _) => "axes",
      };
      suffix[*x] = Some(s.to_string());
    }
  }

  // Subsumption among overloads that share a name.
  let mut by_suffix: BTreeMap<String, Vec<usize>> = BTreeMap::new();
  for x in 0..cands.len() {
    if let (true, Some(s)) = (alive[x], &suffix[x]) {
      by_suffix.entry(s.clone()).or_default().push(x);
    }
  }
  for (s, xs) in &by_suffix {
    let exported: Vec<usize> = xs
      .iter()
      .copied()
      .filter(|x| decls[cands[*x].idx].exported)
      .collect();
    let pool = if exported.is_empty() {
      xs.clone()
    } else {
      exported.clone()
    };
    let winner = pool
      .iter()
      .copied()
      .find(|w| pool.iter().all(|x| subsumed(&params[*x], &params[*w])));
    let Some(w) = winner else {
      let list: Vec<String> = pool
        .iter()
        .map(|x| format!("  {}", decls[cands[*x].idx].pretty()))
        .collect();
      bail!(
        "cannot name the overloads of {ns}::{name}: these would all be `{}{name}{}`; add them to \
         the OVERRIDES table:\n{}",
        c_prefix(ns),
        if s.is_empty() {
          String::new()
        } else {
          format!("_{s}")
        },
        list.join("\n")
      );
    };
    for &x in xs {
      let i = cands[x].idx;
      if x == w {
        out[i] = Outcome::Bind(s.clone(), Vec::new());
      } else if decls[i].exported {
        out[i] = Outcome::Cover(
          s.clone(),
          "special case (pass the defaults explicitly)".into(),
        );
      }
    }
  }
  // Resolve rule-B covers (recorded by candidate index) to suffixes.
  for o in out.iter_mut() {
    if let Outcome::Cover(s, why) = o
      && let Some(y) = s.strip_prefix('\u{0}')
    {
      let y: usize = y.parse().unwrap();
      *s = suffix[y].clone().unwrap_or_default();
      why.push_str(" (see the array overload)");
    }
  }
  // Covers must point at a bound name.
  for o in &out {
    if let Outcome::Cover(s, _) = o
      && !by_suffix.contains_key(s)
    {
      bail!("{ns}::{name}: an overload is covered by `{s}`, which is not bound");
    }
  }
  Ok(out)
}

/// The bound overloads, and the status of each declaration.
pub type Selection = (Vec<Binding>, Vec<(Decl, Status)>);

/// Bind every declaration of the generator's headers. Returns the bindings
/// (in header order) and the status of every exported declaration.
pub fn select(decls: &[Decl], hand_written: &BTreeMap<String, String>) -> Result<Selection> {
  // Overload sets in order of first appearance.
  let mut order: Vec<(String, String)> = Vec::new();
  let mut sets: BTreeMap<(String, String), Vec<Decl>> = BTreeMap::new();
  for d in decls {
    let key = (d.ns.clone(), d.name.clone());
    if !sets.contains_key(&key) {
      order.push(key.clone());
    }
    sets.entry(key).or_default().push(d.clone());
  }
  let mut bindings = Vec::new();
  let mut status: Vec<(Decl, Status)> = Vec::new();
  for key in &order {
    let set = &sets[key];
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let outcomes = name_set(ns, name, set)?;
    let set_doc = set.iter().find_map(|d| d.doc.clone());
    let c_of = |s: &str| -> String {
      if s.is_empty() {
        format!("{}{name}", c_prefix(ns))
      } else {
        format!("{}{name}_{s}", c_prefix(ns))
      }
    };
    for (d, o) in set.iter().zip(outcomes) {
      let st = match o {
        Outcome::Drop => None,
        // A hand-written kernel-object binding (`mlx_<ns>_<name>_new`, as
        // mlx-c's `mlx_fast_cuda_kernel_new`) binds what the generator
        // cannot.
        Outcome::Unbound(r) => {
          let by_table = UNMAPPABLE_HAND
            .iter()
            .find(|(n, f, _)| *n == ns && *f == name)
            .and_then(|(_, _, c)| hand_written.get_key_value(*c));
          Some(
            match by_table.or_else(|| hand_written.get_key_value(&format!("{}_new", c_of("")))) {
              Some((k, _)) => Status::HandWritten(k.clone()),
              None => Status::Unbound(r),
            },
          )
        }
        Outcome::Cover(s, why) => Some(Status::Covered { by: c_of(&s), why }),
        Outcome::Bind(s, fixed) => {
          let c_name = c_of(&s);
          if hand_written.contains_key(&c_name) {
            Some(Status::HandWritten(c_name))
          } else {
            let kinds: Vec<Kind> = d
              .params
              .iter()
              .map(|p| types::kind(&p.ty).unwrap())
              .collect();
            let short = c_name.strip_prefix(&c_prefix(ns)).unwrap().to_string();
            bindings.push(Binding {
              decl: d.clone(),
              kinds,
              ret: types::ret(&d.ret).unwrap(),
              c_name: c_name.clone(),
              short,
              fixed,
              doc: d.doc.clone().or_else(|| set_doc.clone()),
            });
            Some(Status::Bound(c_name))
          }
        }
      };
      if let Some(st) = st {
        // Inline helpers appear in coverage only when bound.
        if d.exported || matches!(st, Status::Bound(_) | Status::HandWritten(_)) {
          status.push((d.clone(), st));
        }
      }
    }
  }
  // C names must be unique.
  let mut seen = BTreeMap::new();
  for b in &bindings {
    if let Some(prev) = seen.insert(b.c_name.clone(), b.decl.pretty()) {
      bail!(
        "two overloads bind to {}: {prev} and {}",
        b.c_name,
        b.decl.pretty()
      );
    }
  }
  Ok((bindings, status))
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::opgen::parse::parse_header;

  fn names(ns: &str, src: &str) -> Vec<(String, String)> {
    let decls = parse_header("t.h", ns, src).unwrap();
    let (_, status) = select(&decls, &BTreeMap::new()).unwrap();
    status
      .into_iter()
      .map(|(d, s)| {
        let s = match s {
          Status::Bound(c) => c,
          Status::HandWritten(c) => format!("hand:{c}"),
          Status::Covered { by, .. } => format!("covered:{by}"),
          Status::Unbound(_) => "unbound".into(),
        };
        (format!("{}/{}", d.name, d.params.len()), s)
      })
      .collect()
  }

  #[test]
  fn rules_name_overloads_like_mlx_c() {
    let src = r#"
MLX_API array sum(const array& a, bool keepdims, StreamOrDevice s = {});
inline array sum(const array& a, StreamOrDevice s = {}) { return sum(a, false, s); }
MLX_API array sum(const array& a, const std::vector<int>& axes, bool keepdims = false, StreamOrDevice s = {});
MLX_API array sum(const array& a, int axis, bool keepdims = false, StreamOrDevice s = {});
MLX_API array expand_dims(const array& a, const std::vector<int>& axes, StreamOrDevice s = {});
MLX_API array expand_dims(const array& a, int axis, StreamOrDevice s = {});
MLX_API array take(const array& a, const array& indices, StreamOrDevice s = {});
MLX_API array take(const array& a, int index, StreamOrDevice s = {});
MLX_API array gather(const array& a, const std::vector<array>& indices, const std::vector<int>& axes, const Shape& slice_sizes, StreamOrDevice s = {});
inline array gather(const array& a, const array& indices, int axis, const Shape& slice_sizes, StreamOrDevice s = {}) { return a; }
MLX_API array flatten(const array& a, int start_axis, int end_axis = -1, StreamOrDevice s = {});
MLX_API array flatten(const array& a, StreamOrDevice s = {});
MLX_API array weird(const std::vector<std::pair<int, int>>& w);
"#;
    let got = names("", src);
    let want = [
      ("sum/3", "mlx_sum"),
      ("sum/4", "mlx_sum_axes"),
      ("sum/4", "mlx_sum_axis"),
      ("expand_dims/3", "mlx_expand_dims_axes"),
      ("expand_dims/3", "mlx_expand_dims"),
      ("take/3", "mlx_take"),
      ("take/3", "covered:mlx_take"),
      ("gather/5", "mlx_gather"),
      ("gather/5", "mlx_gather_single"),
      ("flatten/4", "mlx_flatten"),
      ("flatten/2", "covered:mlx_flatten"),
      ("weird/1", "unbound"),
    ];
    let want: Vec<(String, String)> = want
      .iter()
      .map(|(a, b)| (a.to_string(), b.to_string()))
      .collect();
    assert_eq!(got, want);
  }

  #[test]
  fn unnameable_overloads_are_an_error() {
    let src = r#"
MLX_API array f(const array& a, int x, StreamOrDevice s = {});
MLX_API array f(const array& a, bool y, StreamOrDevice s = {});
"#;
    let decls = parse_header("t.h", "", src).unwrap();
    let err = select(&decls, &BTreeMap::new()).unwrap_err().to_string();
    assert!(err.contains("OVERRIDES"), "{err}");
  }
}
