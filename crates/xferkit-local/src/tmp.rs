//! Temp files under `ROOT/.xferkit/tmp`, and how a stale one (left by a
//! process that died) is told from a live one (still being written).
//!
//! # The rule
//!
//! Whoever writes a temp file here holds an exclusive advisory lock on it
//! (`flock(2)` through [`std::fs::File::lock`]) from just after creating it
//! until it is renamed into place or removed. The lock belongs to the open
//! file, so the kernel drops it when the last descriptor closes, and that
//! includes the process dying by `kill -9`, a crash or a power cut. Hence:
//!
//! - a temp file that can be locked ([`std::fs::File::try_lock`]) has no
//!   live writer: it is **stale**, and is removed (while holding the lock);
//! - a temp file that cannot be locked is **live**: it is never touched;
//! - when locking cannot be done at all (a filesystem without `flock`), it
//!   cannot be told, so the file is kept.
//!
//! Age plays no part: a dead writer's file is stale at once, a live one
//! stays live however long it takes.
//!
//! Between creating a file and locking it there is a moment in which a
//! sweeper could lock and remove it. So a writer checks, once it holds the
//! lock, that the name still leads to the file it locked, and starts over
//! with a new name if not; a sweeper likewise removes a name only while it
//! leads to the file it locked.
//!
//! Writers of xferkit versions before this rule do not lock: do not run
//! those at the same time as a sweeping one on the same store.

use std::fs::{File, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tempfile::NamedTempFile;

/// Attempts at a locked temp file before giving up (each lost only to a
/// sweeper that removed the fresh file before it was locked).
const ATTEMPTS: usize = 8;

/// A temp file being written, locked by this process.
pub(crate) struct Temp {
    pub file: NamedTempFile,
    /// What a file created here gets from the umask (and a default ACL):
    /// `0o666 & !umask`, as `cp` and `curl` leave a new file. The temp file
    /// is 0600 (at most) while being written; [`Temp::publish`] gives the
    /// final file this mode.
    mode: u32,
}

impl Temp {
    /// A new temp file in `dir`, named `PREFIX` + random, locked.
    pub fn new(dir: &Path, prefix: &str) -> io::Result<Temp> {
        for _ in 0..ATTEMPTS {
            let file = tempfile::Builder::new()
                .prefix(prefix)
                // The kernel applies the umask (or a default ACL) to this.
                .permissions(Permissions::from_mode(0o666))
                .tempfile_in(dir)?;
            let mode = file.as_file().metadata()?.permissions().mode() & 0o777;
            file.as_file()
                .set_permissions(Permissions::from_mode(mode & 0o600))?;
            if let Err(e) = lock(file.as_file()) {
                // No flock here (e.g. NFS without a lock manager): no
                // sweeper can take the lock to remove it either.
                tracing::debug!(path = %file.path().display(), error = %e, "temp file not locked");
                return Ok(Temp { file, mode });
            }
            if names(file.path(), file.as_file())? {
                return Ok(Temp { file, mode });
            }
            // A sweeper took the name before the lock: it is gone already
            // (or someone else's now), so do not remove it on drop.
            let _ = file.keep();
        }
        Err(io::Error::other(format!(
            "no temp file in {} stayed ours for {ATTEMPTS} attempts",
            dir.display()
        )))
    }

    /// Give the file its final permissions (see [`Temp::mode`]), before
    /// it is renamed into place.
    pub fn publish(&self) -> io::Result<()> {
        self.file
            .as_file()
            .set_permissions(Permissions::from_mode(self.mode))
    }
}

/// What [`remove_if_stale`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// Stale, and removed now.
    Removed,
    /// Locked by a live process (or not lockable here): kept.
    Live,
    /// Not there (any more), or not a regular file.
    Gone,
}

/// Remove the temp file at `path` if it is stale (see the module docs).
pub(crate) fn remove_if_stale(path: &Path) -> io::Result<Sweep> {
    let file = match lock_stale(path)? {
        Ok(file) => file,
        Err(other) => return Ok(other),
    };
    if !names(path, &file)? {
        return Ok(Sweep::Gone);
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Sweep::Removed),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Sweep::Gone),
        Err(e) => Err(e),
    }
    // The lock goes with `file`, after the name.
}

/// Whether the file at `path` is stale, without removing it.
pub(crate) fn is_stale(path: &Path) -> io::Result<bool> {
    Ok(lock_stale(path)?.is_ok())
}

/// The stale temp files directly in `dir`, with their last write time
/// (about when their process died). A missing `dir` has none.
pub(crate) fn stale_in(dir: &Path) -> io::Result<Vec<(PathBuf, Option<SystemTime>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        match is_stale(&path) {
            Ok(true) => {
                let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
                out.push((path, modified));
            }
            Ok(false) => {}
            // Someone else's file we cannot open: not ours to judge.
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "temp file skipped"),
        }
    }
    out.sort();
    Ok(out)
}

/// Remove every stale temp file directly in `dir`; returns how many.
pub(crate) fn sweep(dir: &Path) -> usize {
    let Ok(stale) = stale_in(dir) else { return 0 };
    let mut removed = 0;
    for (path, _) in stale {
        match remove_if_stale(&path) {
            Ok(Sweep::Removed) => {
                tracing::debug!(path = %path.display(), "removed a stale temp file");
                removed += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "cannot remove"),
        }
    }
    removed
}

/// Open the regular file at `path` and take its lock if no one holds it;
/// otherwise say why not: [`Sweep::Live`] (locked, or not lockable here)
/// or [`Sweep::Gone`] (missing, or not a regular file).
fn lock_stale(path: &Path) -> io::Result<Result<File, Sweep>> {
    // Never open a FIFO or a device (that could block), nor follow a link.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(Err(Sweep::Gone)),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Err(Sweep::Gone)),
        Err(e) => return Err(e),
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Err(Sweep::Gone)),
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(Ok(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(Err(Sweep::Live)),
        Err(std::fs::TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
            Ok(Err(Sweep::Live))
        }
        // Cannot tell: the caller keeps the file and reports why.
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn names(path: &Path, file: &File) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == held.dev() && m.ino() == held.ino()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Take `file`'s exclusive lock, waiting only while a sweeper holds it.
fn lock(file: &File) -> io::Result<()> {
    loop {
        match file.lock() {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_file_is_live_and_an_unlocked_one_stale() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let live = Temp::new(dir.path(), "up.").unwrap_or_else(|e| panic!("{e}"));
        let dead = dir.path().join("up.dead");
        std::fs::write(&dead, b"left by a crash").unwrap_or_else(|e| panic!("{e}"));
        let stale: Vec<_> = stale_in(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(stale, std::slice::from_ref(&dead));
        assert_eq!(remove_if_stale(live.file.path()).ok(), Some(Sweep::Live));
        assert_eq!(sweep(dir.path()), 1);
        assert!(!dead.exists() && live.file.path().exists());
        assert_eq!(remove_if_stale(&dead).ok(), Some(Sweep::Gone));
        // Once its writer lets go, it is stale too.
        let path = live.file.path().to_path_buf();
        let (file, _) = live.file.keep().unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        assert_eq!(remove_if_stale(&path).ok(), Some(Sweep::Removed));
    }

    #[test]
    fn temp_files_are_private_until_published_with_the_umask_mode() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let t = Temp::new(dir.path(), "up.").unwrap_or_else(|e| panic!("{e}"));
        let mode = |t: &Temp| {
            t.file
                .as_file()
                .metadata()
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0)
        };
        assert_eq!(mode(&t) & 0o077, 0, "private while written");
        t.publish().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode(&t), t.mode);
        assert_eq!(t.mode & 0o600, 0o600);
    }
}
