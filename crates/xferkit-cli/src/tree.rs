//! `xfer cp -r`: a directory to a URL prefix, or a URL prefix to a directory,
//! many files at once through a [`TransferManager`].
//!
//! - `cp -r DIR URL` uploads every regular file under `DIR` (symlinks to
//!   files are followed, symlinked directories are not entered) to the key
//!   `PREFIX/RELATIVE/PATH`, where `PREFIX` is the key prefix `URL` names
//!   (a missing trailing `/` is added).
//! - `cp -r URL DIR` downloads every object under the prefix to
//!   `DIR/RELATIVE/PATH` (`DIR` and subdirectories are created); an existing
//!   file is kept unless `--force`.
//!
//! Up to `--concurrency` files move at once. A file that cannot be copied
//! (a name that is not UTF-8 or not a valid key, a key that would leave
//! `DIR`, an existing destination, a failed transfer) is reported on stderr
//! naming its path or URL, the others go on, and the command ends with a
//! summary and exit code 1 (2 when every failure was an invalid name).

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use xferkit::{
    CancellationToken, Direction, DynHandler, Error, ErrorKind, TransferRequest, TransferStatus,
    validate_key,
};

use crate::commands::Ctx;
use crate::fail::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Failure, one_line};
use crate::output::line;
use crate::target::{self, Location, shown};

/// Files moving at once when `--concurrency` is not given: enough to hide
/// per-request latency for small files (see docs/benchmarks.md).
pub const DEFAULT_TREE_CONCURRENCY: u16 = 16;

const BAR_TEMPLATE: &str =
    "{msg:.bold} [{bar:30}] {pos}/{len} files {binary_bytes_per_sec} eta {eta}";

/// One file to move: where from, where to, and how to name it in messages.
#[derive(Debug)]
struct Item {
    request: TransferRequest,
    /// Local path (upload) or URL (download), for messages.
    label: String,
}

/// A file that could not be moved.
#[derive(Debug)]
struct Problem {
    label: String,
    message: String,
    /// An invalid name (usage-class) rather than a failed transfer.
    invalid: bool,
}

/// `xfer cp -r SRC DST`.
pub async fn cp(
    cx: &Ctx,
    src: &OsStr,
    dst: &OsStr,
    force: bool,
    concurrency: usize,
) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let (items, mut problems) = match (target::classify(src)?, target::classify(dst)?) {
        (Location::Path(s), Location::Url(d)) => {
            let meta =
                std::fs::metadata(&s).map_err(|e| Error::from_io(s.display().to_string(), e))?;
            if !meta.is_dir() {
                return Err(Failure::usage(format!(
                    "{} is not a directory; drop -r to upload one file",
                    s.display()
                )));
            }
            let (store, prefix) = target::prefix(reg, &as_prefix(&d))?;
            upload_items(&s, &store, &prefix).await?
        }
        (Location::Url(s), Location::Path(d)) => {
            let (store, prefix) = target::prefix(reg, &as_prefix(&s))?;
            download_items(&store, &prefix, &d, force).await?
        }
        (Location::Url(_), Location::Url(_)) => {
            return Err(Failure::usage(
                "cp -r between two URLs is not supported; copy through a local directory",
            ));
        }
        (Location::Path(s), Location::Path(d)) => {
            return Err(Failure::usage(format!(
                "both `{}` and `{}` are local paths; use cp(1) to copy local files",
                s.display(),
                d.display()
            )));
        }
    };
    for p in &problems {
        report(cx, p);
    }
    let total = items.len() + problems.len();
    let (moved, interrupted, failed) = run_all(cx, items, concurrency.max(1)).await?;
    for p in &failed {
        report(cx, p);
    }
    problems.extend(failed);
    if interrupted {
        return Err(Failure {
            message: Some(format!(
                "interrupted: {moved} of {total} files copied; the running transfers were stopped and left nothing partial"
            )),
            code: EXIT_INTERRUPTED,
        });
    }
    if problems.is_empty() {
        return Ok(());
    }
    let code = if problems.iter().all(|p| p.invalid) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    };
    Err(Failure {
        message: Some(format!(
            "{} of {total} files failed ({moved} copied); see the messages above",
            problems.len()
        )),
        code,
    })
}

/// `url` with a trailing `/`, so that it names a prefix of whole segments.
fn as_prefix(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

fn report(cx: &Ctx, p: &Problem) {
    if cx.json {
        let _ = line(json!({ "path": p.label, "error": p.message }));
    } else {
        eprintln!("xfer: {}", one_line(&format!("{}: {}", p.label, p.message)));
    }
}

/// Every regular file under `dir`, as upload requests to `prefix` + relative path.
async fn upload_items(
    dir: &Path,
    store: &DynHandler,
    prefix: &str,
) -> Result<(Vec<Item>, Vec<Problem>), Failure> {
    let root = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || walk(&root))
        .await
        .map_err(|e| Failure::failed(format!("walking {}: {e}", dir.display())))?;
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for entry in files {
        let (path, rel) = match entry {
            Ok(x) => x,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let shown_path = path.display().to_string();
        match key_for(&rel).and_then(|k| {
            let key = format!("{prefix}{k}");
            validate_key(&key).map_err(|e| e.to_string())?;
            Ok(key)
        }) {
            Ok(key) => items.push(Item {
                // A tree copy copies files, as `aws s3 cp --recursive` does:
                // no thumbnails next to them.
                request: TransferRequest::upload(&path, store.url_for(&key)).without_thumbnail(),
                label: shown_path,
            }),
            Err(message) => problems.push(Problem {
                label: shown_path,
                message,
                invalid: true,
            }),
        }
    }
    Ok((items, problems))
}

/// The key for a relative path: its components joined with `/`; each must be UTF-8.
fn key_for(rel: &Path) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return Err("file name is not valid UTF-8; it cannot be a key".into()),
            },
            _ => return Err("unexpected path component".into()),
        }
    }
    Ok(parts.join("/"))
}

/// Regular files under `root` (sorted, depth first) with their path relative
/// to `root`; unreadable entries become problems naming their path.
fn walk(root: &Path) -> Vec<Result<(PathBuf, PathBuf), Problem>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(io_problem(&dir, e)));
                continue;
            }
        };
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names.into_iter().rev() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            // Follow a symlink only to a regular file.
            let is_file = if ft.is_symlink() {
                std::fs::metadata(&path).is_ok_and(|m| m.is_file())
            } else {
                ft.is_file()
            };
            if !is_file {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            out.push(Ok((path, rel)));
        }
    }
    // The stack visits in reverse; present files in path order.
    out.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => a.1.cmp(&b.1),
        (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
        (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        (Err(a), Err(b)) => a.label.cmp(&b.label),
    });
    out
}

fn io_problem(path: &Path, e: std::io::Error) -> Problem {
    Problem {
        label: path.display().to_string(),
        message: Error::from_io(path.display().to_string(), e).to_string(),
        invalid: false,
    }
}

/// Every object under `prefix`, as download requests into `dir`.
async fn download_items(
    store: &DynHandler,
    prefix: &str,
    dir: &Path,
    force: bool,
) -> Result<(Vec<Item>, Vec<Problem>), Failure> {
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::failed(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::from_io(dir.display().to_string(), e))?;
    let mut items = Vec::new();
    let mut problems = Vec::new();
    let mut objects = store.list(prefix);
    while let Some(obj) = objects.next().await {
        let obj = obj?;
        let url = store.url_for(&obj.key);
        let Some(rel) = obj.key.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || rel.ends_with('/') {
            continue; // a "directory marker" object
        }
        let invalid = |message: String| Problem {
            label: shown(&url),
            message,
            invalid: true,
        };
        let path = match local_path_for(dir, rel) {
            Ok(p) => p,
            Err(m) => {
                problems.push(invalid(m));
                continue;
            }
        };
        if let Err(m) = prepare_parent(dir, &path) {
            problems.push(Problem {
                label: shown(&url),
                message: m,
                invalid: false,
            });
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                problems.push(Problem {
                    label: shown(&url),
                    message: format!("{} is a directory", path.display()),
                    invalid: false,
                });
                continue;
            }
            Ok(_) if !force => {
                problems.push(Problem {
                    label: shown(&url),
                    message: format!(
                        "{} already exists (use --force to overwrite it)",
                        path.display()
                    ),
                    invalid: false,
                });
                continue;
            }
            _ => {}
        }
        items.push(Item {
            request: TransferRequest::download(url.clone(), &path),
            label: shown(&url),
        });
    }
    Ok((items, problems))
}

/// `dir/rel`, refusing any segment that would not stay a plain name inside `dir`.
fn local_path_for(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let mut path = dir.to_path_buf();
    for seg in rel.split('/') {
        let bad = seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.contains('\\')
            || seg.chars().any(char::is_control);
        if bad {
            return Err(format!(
                "key segment {seg:?} cannot be a local file name (it would not stay inside {})",
                dir.display()
            ));
        }
        path.push(seg);
    }
    Ok(path)
}

/// Create the directories between `dir` and `path`, refusing to go through a symlink.
fn prepare_parent(dir: &Path, path: &Path) -> Result<(), String> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let rel = parent.strip_prefix(dir).unwrap_or(Path::new(""));
    let mut cur = dir.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink; refusing to write through it",
                    cur.display()
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!("{} is not a directory", cur.display()));
            }
            Ok(_) => {}
            Err(_) => {
                std::fs::create_dir(&cur)
                    .or_else(|e| if cur.is_dir() { Ok(()) } else { Err(e) })
                    .map_err(|e| Error::from_io(cur.display().to_string(), e).to_string())?;
            }
        }
    }
    Ok(())
}

/// Run `items`, at most `concurrency` at once; Ctrl-C stops the running ones
/// and starts no more. Returns (copied, interrupted, failures).
async fn run_all(
    cx: &Ctx,
    items: Vec<Item>,
    concurrency: usize,
) -> Result<(usize, bool, Vec<Problem>), Failure> {
    let manager = cx.kit.new_manager(concurrency);
    let stop = CancellationToken::new();
    let bar = cx.progress.then(|| {
        let bar = ProgressBar::new(items.len() as u64).with_message("copying");
        if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut results = futures::stream::iter(items.into_iter().map(|item| {
        let manager = &manager;
        let stop = stop.clone();
        async move {
            if stop.is_cancelled() {
                return None;
            }
            let t = match manager.start(item.request) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(Problem {
                        label: item.label,
                        message: e.chain(),
                        invalid: e.kind() == ErrorKind::InvalidKey,
                    }));
                }
            };
            let info = tokio::select! {
                info = t.wait_info() => info,
                _ = stop.cancelled() => {
                    t.stop();
                    t.wait_info().await
                }
            };
            Some(match info.status {
                TransferStatus::Completed => Ok((item.label, info)),
                TransferStatus::Cancelled if stop.is_cancelled() => return None,
                _ => Err(Problem {
                    label: item.label,
                    message: info.error.unwrap_or_else(|| "transfer failed".into()),
                    invalid: false,
                }),
            })
        }
    }))
    .buffer_unordered(concurrency);

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut listening = true;
    let mut moved = 0;
    let mut failed = Vec::new();
    loop {
        tokio::select! {
            next = results.next() => {
                let Some(r) = next else { break };
                match r {
                    None => {}
                    Some(Ok((_label, info))) => {
                        moved += 1;
                        if let Some(bar) = &bar {
                            bar.inc(1);
                        }
                        let path = info.path.display().to_string();
                        let printed = if cx.json {
                            line(json!({ "url": shown(&info.url), "path": path, "size": info.size }))
                        } else if info.direction == Direction::Upload {
                            line(shown(&info.url))
                        } else {
                            line(path)
                        };
                        printed?;
                    }
                    Some(Err(p)) => {
                        if let Some(bar) = &bar {
                            bar.inc(1);
                        }
                        failed.push(p);
                    }
                }
            }
            signal = &mut ctrl_c, if listening => {
                listening = false;
                if signal.is_ok() {
                    stop.cancel();
                }
            }
        }
    }
    drop(results);
    if stop.is_cancelled() {
        crate::transfer::settle(&manager).await;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok((moved, stop.is_cancelled(), failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_components_with_slashes() {
        assert_eq!(key_for(Path::new("a/b/c.txt")).unwrap(), "a/b/c.txt");
        assert_eq!(key_for(Path::new("x")).unwrap(), "x");
    }

    #[test]
    fn non_utf8_names_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(OsStr::from_bytes(b"dir/bad\xff.bin"));
        assert!(key_for(p).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn keys_that_would_leave_the_directory_are_refused() {
        let d = Path::new("/dest");
        assert_eq!(
            local_path_for(d, "a/b.txt").unwrap(),
            Path::new("/dest/a/b.txt")
        );
        for bad in [
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/..",
            "a\\b",
            "a\u{7}b",
        ] {
            assert!(local_path_for(d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_end_with_a_slash() {
        assert_eq!(as_prefix("s3://b/p"), "s3://b/p/");
        assert_eq!(as_prefix("s3://b/p/"), "s3://b/p/");
    }
}
