//! Crash-safe file writes: write a temporary file in the target's directory,
//! `fsync` it, rename it over the target, then `fsync` the directory
//! (python's `tempfile.NamedTemporaryFile(dir=...)` + `os.replace`).
//!
//! A writer killed mid-write leaves the previous file intact (and at most a
//! stale `.NAME.tmp-PID-N` file beside it); two writers to one path never
//! interleave: the target is always one complete version, the last renamed.
//! Every file mlxrs writes (prompt caches, safetensors, transcripts, dumped
//! configs) goes through [`atomic_write`] or [`atomic_write_with`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

fn io_err(path: &Path, e: std::io::Error) -> Error {
  Error::Io {
    path: path.display().to_string(),
    source: e,
  }
}

/// Checks that `path` can name a file to write: not a directory, and its
/// parent directory exists. Errors name the path.
pub fn check_writable_target(path: &Path) -> Result<()> {
  if path.as_os_str().is_empty() {
    return Err(Error::InvalidArgument("empty output path".into()));
  }
  if path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/') {
    return Err(io_err(
      path,
      std::io::Error::new(
        std::io::ErrorKind::IsADirectory,
        "is a directory; give a file name",
      ),
    ));
  }
  let dir = parent_dir(path);
  if !dir.is_dir() {
    return Err(io_err(
      path,
      std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("the directory {} does not exist", dir.display()),
      ),
    ));
  }
  Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
  match path.parent() {
    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
    _ => PathBuf::from("."),
  }
}

/// A temporary path beside `path`, unique to this process and call. It keeps
/// `path`'s extension (some writers key on it).
fn temp_path(path: &Path) -> PathBuf {
  static COUNTER: AtomicU64 = AtomicU64::new(0);
  let n = COUNTER.fetch_add(1, Ordering::Relaxed);
  let name = path
    .file_name()
    .map(|s| s.to_string_lossy().into_owned())
    .unwrap_or_else(|| "out".into());
  let tmp = format!(".{name}.tmp-{}-{n}", std::process::id());
  let tmp = match path.extension() {
    Some(e) => format!("{tmp}.{}", e.to_string_lossy()),
    None => tmp,
  };
  parent_dir(path).join(tmp)
}

/// Removes the temporary file unless disarmed (on success it was renamed).
struct TempGuard(Option<PathBuf>);
impl Drop for TempGuard {
  fn drop(&mut self) {
    if let Some(p) = self.0.take() {
      let _ = std::fs::remove_file(p);
    }
  }
}

/// Write `path` atomically with `write`, which fills the open temporary file.
/// The temporary file is flushed and `fsync`ed, renamed over `path` and the
/// directory is `fsync`ed; on any error the temporary file is removed and
/// `path` is left as it was.
pub fn atomic_write_with<F>(path: impl AsRef<Path>, write: F) -> Result<()>
where
  F: FnOnce(&mut File) -> Result<()>,
{
  let path = path.as_ref();
  check_writable_target(path)?;
  let tmp = temp_path(path);
  let mut guard = TempGuard(Some(tmp.clone()));
  let mut f = std::fs::OpenOptions::new()
    .write(true)
    .create_new(true)
    .open(&tmp)
    .map_err(|e| io_err(&tmp, e))?;
  write(&mut f)?;
  f.flush().map_err(|e| io_err(&tmp, e))?;
  f.sync_all().map_err(|e| io_err(&tmp, e))?;
  drop(f);
  std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
  guard.0 = None;
  // Make the rename itself durable (best effort: not every platform or
  // filesystem can open a directory for syncing).
  if let Ok(d) = File::open(parent_dir(path)) {
    let _ = d.sync_all();
  }
  Ok(())
}

/// [`atomic_write_with`] for writers that take a path (MLX's GGUF and `.npy`
/// savers): `write` creates the temporary file at the path it is given
/// (which keeps `path`'s extension); it is then `fsync`ed and renamed.
pub fn atomic_write_to_path<F>(path: impl AsRef<Path>, write: F) -> Result<()>
where
  F: FnOnce(&Path) -> Result<()>,
{
  let path = path.as_ref();
  check_writable_target(path)?;
  let tmp = temp_path(path);
  let mut guard = TempGuard(Some(tmp.clone()));
  write(&tmp)?;
  let f = File::open(&tmp).map_err(|e| io_err(&tmp, e))?;
  f.sync_all().map_err(|e| io_err(&tmp, e))?;
  drop(f);
  std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
  guard.0 = None;
  if let Ok(d) = File::open(parent_dir(path)) {
    let _ = d.sync_all();
  }
  Ok(())
}

/// Write `bytes` to `path` atomically (see [`atomic_write_with`]).
pub fn atomic_write(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
  let path = path.as_ref();
  atomic_write_with(path, |f| {
    f.write_all(bytes.as_ref()).map_err(|e| io_err(path, e))
  })
}

#[cfg(test)]
mod tests {
  use super::*;

  fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlxrs-atomic-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
  }

  #[test]
  fn replaces_and_leaves_no_temp() {
    let d = dir("replace");
    let p = d.join("a.txt");
    atomic_write(&p, "one").unwrap();
    atomic_write(&p, "two").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
  }

  #[test]
  fn failed_write_keeps_old_file() {
    let d = dir("fail");
    let p = d.join("a.txt");
    atomic_write(&p, "good").unwrap();
    let r = atomic_write_with(&p, |f| {
      f.write_all(b"half").unwrap();
      Err(Error::InvalidArgument("boom".into()))
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "good");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
  }

  #[test]
  fn bad_targets_name_the_path() {
    let d = dir("bad");
    let e = atomic_write(&d, "x").unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
    let missing = d.join("nope").join("a.txt");
    let e = atomic_write(&missing, "x").unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
  }
}
