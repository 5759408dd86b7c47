//! `xfer cp -r` and `xfer cp GLOB`: many files at once through a
//! [`TransferManager`].
//!
//! - `cp -r DIR URL` uploads every regular file under `DIR` (symlinks to
//!   files are followed, symlinked directories are not entered) to the key
//!   `PREFIX/RELATIVE/PATH`, where `PREFIX` is the key prefix `URL` names
//!   (a missing trailing `/` is added).
//! - `cp -r URL DIR` downloads every object under the prefix to
//!   `DIR/RELATIVE/PATH` (`DIR` and subdirectories are created); an existing
//!   file is kept unless `--force`.
//! - `cp -r URL URL` copies every object under a prefix to another prefix
//!   (server-side within a store, through a temp file between stores).
//! - A source with `*` or `?` is a glob, as s5cmd has them: `'s3://b/photos/*.jpg'`,
//!   `'dir/**/*.txt'`. The longest literal prefix is listed (or the
//!   directory before the first wildcard walked), then filtered: `*` and `?`
//!   stay within one path segment, `**` spans segments. What matches is
//!   copied as `-r` copies, its path relative to the glob's last literal
//!   directory (`photos/`, `dir/`) kept below DST.
//!
//! `--dry-run` prints what would be copied (`(dryrun) upload: PATH to URL`)
//! and copies nothing.
//!
//! Up to `--concurrency` files move at once ([`crate::batch`]). A file that cannot be copied
//! (a name that is not UTF-8 or not a valid key, a key that would leave
//! `DIR`, an existing destination, a failed transfer) is reported on stderr
//! naming its path or URL, the others go on, and the command ends with a
//! summary and exit code 1 (2 when every failure was an invalid name).

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use globset::{GlobBuilder, GlobMatcher};
use percent_encoding::percent_decode_str;
use serde_json::json;
use xferkit::{Direction, DynHandler, Error, Key, ShareRequestExt, TransferRequest};

use crate::batch::{self, Job, Problem, Work};
use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::output::line;
use crate::single::is_stdio;
use crate::target::{self, Location, shown};

/// What a tree copy reads: everything under a directory or URL prefix, or
/// what a glob below one matches.
struct Tree {
    /// Paths and keys are relative to this directory or key prefix.
    base: Base,
    /// Only relative paths this matches (a glob); `None`: all.
    only: Option<GlobMatcher>,
    /// The original operand, for messages.
    shown: String,
}

enum Base {
    /// A local directory, walked at most `depth` levels down (`None`: all).
    Dir { dir: PathBuf, depth: Option<usize> },
    /// A key prefix of `store`; the listing asks for `list` (which starts
    /// with `prefix`: the literal part of a glob).
    Prefix {
        store: DynHandler,
        prefix: String,
        list: String,
    },
}

impl Tree {
    fn admits(&self, rel: &str) -> bool {
        self.only.as_ref().is_none_or(|g| g.is_match(rel))
    }
}

/// Whether a `cp` source is a glob: it has `*` or `?` (plain http(s) links,
/// whose `?` starts a query, never are).
pub fn is_glob(arg: &OsStr) -> bool {
    let s = arg.to_string_lossy();
    let lower = s.to_ascii_lowercase();
    !(lower.starts_with("http://") || lower.starts_with("https://")) && s.contains(['*', '?'])
}

/// `text` up to and including its last `/` before the first wildcard, and the rest.
fn split_glob(text: &str) -> (&str, &str) {
    let first = text.find(['*', '?']).unwrap_or(text.len());
    let cut = text[..first].rfind('/').map_or(0, |i| i + 1);
    text.split_at(cut)
}

/// The matcher for a glob `pattern` (relative to its literal directory):
/// `*` and `?` as wildcards, other glob syntax (`[`, `{`) literal.
fn matcher(pattern: &str, operand: &str) -> Result<GlobMatcher, Failure> {
    let mut escaped = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '[' | ']' | '{' | '}' => {
                escaped.push('[');
                escaped.push(c);
                escaped.push(']');
            }
            c => escaped.push(c),
        }
    }
    GlobBuilder::new(&escaped)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| Failure::usage(format!("{operand:?} is not a valid glob: {e}")))
}

/// The tree a `cp` source names: with `glob`, the directory or prefix
/// before its first wildcard and the pattern after it; else all of the
/// directory or (`/`-terminated) prefix.
fn source(reg: &xferkit::Registry, loc: &Location, glob: bool) -> Result<Tree, Failure> {
    match loc {
        Location::Path(p) if glob => {
            let text = p.to_str().ok_or_else(|| {
                Failure::usage(format!("glob {} is not valid UTF-8", p.display()))
            })?;
            let (dir, pattern) = split_glob(text);
            let dir = if dir.is_empty() { "." } else { dir };
            is_dir(Path::new(dir))?;
            // Without `**`, a match is never deeper than the pattern's segments.
            let depth = (!pattern.contains("**")).then(|| pattern.matches('/').count() + 1);
            Ok(Tree {
                base: Base::Dir {
                    dir: PathBuf::from(dir),
                    depth,
                },
                only: Some(matcher(pattern, text)?),
                shown: text.to_string(),
            })
        }
        Location::Path(p) => {
            is_dir(p)?;
            Ok(Tree {
                base: Base::Dir {
                    dir: p.clone(),
                    depth: None,
                },
                only: None,
                shown: p.display().to_string(),
            })
        }
        Location::Url(u) if glob => {
            let (dir, pattern) = split_glob(u);
            let (store, prefix) = target::prefix(reg, dir)?;
            let (literal, _) = pattern.split_at(pattern.find(['*', '?']).unwrap_or(0));
            let list = format!(
                "{prefix}{}",
                percent_decode_str(literal).decode_utf8_lossy()
            );
            let pattern = percent_decode_str(pattern).decode_utf8_lossy();
            Ok(Tree {
                base: Base::Prefix {
                    store,
                    prefix,
                    list,
                },
                only: Some(matcher(&pattern, &shown(u))?),
                shown: shown(u),
            })
        }
        Location::Url(u) => {
            let (store, prefix) = target::prefix(reg, &as_prefix(u))?;
            Ok(Tree {
                base: Base::Prefix {
                    store,
                    list: prefix.clone(),
                    prefix,
                },
                only: None,
                shown: shown(u),
            })
        }
    }
}

/// `dir` is a directory (else a failure naming it).
fn is_dir(dir: &Path) -> Result<(), Failure> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::from_io(dir.display().to_string(), e))?;
    if !meta.is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a directory; drop -r to upload one file",
            dir.display()
        )));
    }
    Ok(())
}

/// `xfer cp -r SRC DST`, or `xfer cp GLOB DST`.
pub async fn cp(
    cx: &Ctx,
    src: &OsStr,
    dst: &OsStr,
    force: bool,
    concurrency: usize,
    dry_run: bool,
) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let glob = is_glob(src);
    let (from, to) = (target::classify(src)?, target::classify(dst)?);
    for loc in [&from, &to] {
        if let Location::Path(p) = loc
            && is_stdio(p)
        {
            return Err(Failure::usage(
                "cp -r and globs copy many files; `-` (stdin or stdout) holds one",
            ));
        }
    }
    if let (Location::Path(s), Location::Path(d)) = (&from, &to) {
        return Err(Failure::usage(format!(
            "both `{}` and `{}` are local paths; use cp(1) to copy local files",
            s.display(),
            d.display()
        )));
    }
    let tree = source(reg, &from, glob)?;
    let (items, problems) = match (&tree.base, &to) {
        (Base::Dir { dir, depth }, Location::Url(d)) => {
            let (store, prefix) = target::prefix(reg, &as_prefix(d))?;
            upload_items(dir, *depth, &tree, &store, &prefix).await?
        }
        (Base::Prefix { .. }, Location::Path(d)) => {
            download_items(&tree, d, force, dry_run).await?
        }
        (Base::Prefix { .. }, Location::Url(d)) => {
            let (store, prefix) = target::prefix(reg, &as_prefix(d))?;
            copy_items(&tree, &store, &prefix).await?
        }
        (Base::Dir { .. }, Location::Path(_)) => unreachable!("refused above"),
    };
    if glob && items.is_empty() && problems.is_empty() {
        return Err(Failure::failed(format!("nothing matches {}", tree.shown)));
    }
    for p in &problems {
        batch::report(cx, p);
    }
    let total = items.len() + problems.len();
    if dry_run {
        plan(cx, &items)?;
        let planned = batch::Outcome {
            done: items.len(),
            ..Default::default()
        };
        return batch::finish(&planned, &problems, total, "to copy");
    }
    let outcome = batch::run(cx, items, concurrency, "copying", |meta, info| {
        match info.filter(|_| meta.action != "copy") {
            Some(info) => {
                let path = info.path.display().to_string();
                if cx.json {
                    line(json!({ "url": shown(&info.url), "path": path, "size": info.size }))
                } else if info.direction == Direction::Upload {
                    line(shown(&info.url))
                } else {
                    line(path)
                }
            }
            // A copy between or within stores.
            None if cx.json => {
                line(json!({ "url": meta.dst, "src": meta.label, "size": meta.size }))
            }
            None => line(&meta.dst),
        }
    })
    .await?;
    batch::finish(&outcome, &problems, total, "copied")
}

/// `--dry-run`: one line per job, `(dryrun) ACTION: SRC to DST` (with
/// `--json`, `{"action", "src", "dst", "size", "dry_run": true}`), and nothing done.
pub fn plan(cx: &Ctx, jobs: &[Job]) -> Result<(), Failure> {
    for Job { meta, .. } in jobs {
        if cx.json {
            line(json!({
                "action": meta.action, "src": meta.label, "dst": meta.dst,
                "size": meta.size, "dry_run": true,
            }))?;
        } else if meta.dst.is_empty() {
            line(format!("(dryrun) {}: {}", meta.action, meta.label))?;
        } else {
            line(format!(
                "(dryrun) {}: {} to {}",
                meta.action, meta.label, meta.dst
            ))?;
        }
    }
    Ok(())
}

/// `url` with a trailing `/`, so that it names a prefix of whole segments.
pub fn as_prefix(url: &str) -> String {
    if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    }
}

/// Every regular file under `dir` (at most `depth` levels down) that
/// `tree` admits, as upload requests to `prefix` + relative path.
async fn upload_items(
    dir: &Path,
    depth: Option<usize>,
    tree: &Tree,
    store: &DynHandler,
    prefix: &str,
) -> Result<(Vec<Job>, Vec<Problem>), Failure> {
    let root = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || walk_depth(&root, depth))
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
        if !tree.admits(&rel.to_string_lossy()) {
            continue;
        }
        let shown_path = path.display().to_string();
        match key_for(&rel)
            .and_then(|k| Key::new(format!("{prefix}{k}")).map_err(|e| e.to_string()))
        {
            Ok(key) => {
                let url = store.url_for(&key);
                // A tree copy copies files, as `aws s3 cp --recursive` does:
                // no thumbnails next to them.
                let request = TransferRequest::upload(&path, url.clone()).without_thumbnail();
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                let mut job = Job::new(Work::Transfer(request), shown_path, size);
                job.meta.action = "upload";
                job.meta.dst = shown(&url);
                items.push(job);
            }
            Err(message) => problems.push(Problem::invalid(shown_path, message)),
        }
    }
    Ok((items, problems))
}

/// The key for a relative path: its components joined with `/`; each must be UTF-8.
pub fn key_for(rel: &Path) -> Result<String, String> {
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
pub fn walk(root: &Path) -> Vec<Result<(PathBuf, PathBuf), Problem>> {
    walk_depth(root, None)
}

/// [`walk`], entering at most `depth` levels (1: only `root`'s own files).
fn walk_depth(root: &Path, depth: Option<usize>) -> Vec<Result<(PathBuf, PathBuf), Problem>> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 1)];
    while let Some((dir, level)) = stack.pop() {
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
                if depth.is_none_or(|d| level < d) {
                    stack.push((path, level + 1));
                }
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
    Problem::failed(
        path.display().to_string(),
        Error::from_io(path.display().to_string(), e).to_string(),
    )
}

/// The objects of `store` listed under `list` (which starts with `prefix`),
/// with their keys relative to `prefix`, that `admits` takes; "directory
/// marker" objects (ending in `/`) left out.
pub async fn objects(
    store: &DynHandler,
    list: &str,
    prefix: &str,
    admits: impl Fn(&str) -> bool,
) -> Result<Vec<(xferkit::RemoteObject, String)>, Failure> {
    let mut out = Vec::new();
    let mut listing = store.list(list);
    while let Some(obj) = listing.next().await {
        let obj = obj?;
        let Some(rel) = obj.key.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || rel.ends_with('/') || !admits(rel) {
            continue;
        }
        let rel = rel.to_string();
        out.push((obj, rel));
    }
    Ok(out)
}

/// [`objects`] of `tree` (a prefix), relative to its base.
async fn tree_objects(tree: &Tree) -> Result<Vec<(xferkit::RemoteObject, String)>, Failure> {
    match &tree.base {
        Base::Prefix {
            store,
            prefix,
            list,
        } => objects(store, list, prefix, |rel| tree.admits(rel)).await,
        Base::Dir { .. } => Ok(Vec::new()),
    }
}

/// The objects of `tree` (a prefix), as download requests into `dir`.
async fn download_items(
    tree: &Tree,
    dir: &Path,
    force: bool,
    dry_run: bool,
) -> Result<(Vec<Job>, Vec<Problem>), Failure> {
    let Base::Prefix { store, .. } = &tree.base else {
        return Ok((Vec::new(), Vec::new()));
    };
    ensure_dir(dir, dry_run)?;
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (obj, rel) in tree_objects(tree).await? {
        let key = match obj.to_key() {
            Ok(k) => k,
            Err(e) => {
                problems.push(Problem::invalid(
                    shown(&target::prefix_url(store, &obj.key)),
                    e.to_string(),
                ));
                continue;
            }
        };
        let url = store.url_for(&key);
        let path = match download_path(dir, &rel, &url, !dry_run) {
            Ok(p) => p,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        if !force && std::fs::symlink_metadata(&path).is_ok() {
            problems.push(Problem::failed(
                shown(&url),
                format!(
                    "{} already exists (use --force to overwrite it)",
                    path.display()
                ),
            ));
            continue;
        }
        let mut job = Job::new(
            Work::Transfer(TransferRequest::download(url.clone(), &path)),
            shown(&url),
            obj.size,
        );
        job.meta.action = "download";
        job.meta.dst = path.display().to_string();
        items.push(job);
    }
    Ok((items, problems))
}

/// The objects of `tree` (a prefix), as copies to `prefix` of `to`.
async fn copy_items(
    tree: &Tree,
    to: &DynHandler,
    prefix: &str,
) -> Result<(Vec<Job>, Vec<Problem>), Failure> {
    let Base::Prefix { store: from, .. } = &tree.base else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for (obj, rel) in tree_objects(tree).await? {
        let label = shown(&target::prefix_url(from, &obj.key));
        let keys = obj
            .to_key()
            .and_then(|from_key| Ok((from_key, Key::new(format!("{prefix}{rel}"))?)));
        let (from_key, to_key) = match keys {
            Ok(k) => k,
            Err(e) => {
                problems.push(Problem::invalid(label, e.to_string()));
                continue;
            }
        };
        let dst = shown(&to.url_for(&to_key));
        let mut job = Job::new(
            batch::copy_work(from, from_key, to, to_key),
            label,
            obj.size,
        );
        job.meta.action = "copy";
        job.meta.dst = dst;
        items.push(job);
    }
    Ok((items, problems))
}

/// `dir` exists as a directory afterwards (unless `dry_run`, which only
/// checks that nothing else is in the way).
pub fn ensure_dir(dir: &Path, dry_run: bool) -> Result<(), Failure> {
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::failed(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    if !dry_run {
        std::fs::create_dir_all(dir).map_err(|e| Error::from_io(dir.display().to_string(), e))?;
    }
    Ok(())
}

/// Where the object `url`, `rel` below the listed prefix, downloads to in
/// `dir`: a plain path inside `dir` (else an invalid-name problem), whose
/// parent directories are created when `create` (never through a
/// symlink), and that is not a directory.
pub fn download_path(dir: &Path, rel: &str, url: &str, create: bool) -> Result<PathBuf, Problem> {
    let path = local_path_for(dir, rel).map_err(|m| Problem::invalid(shown(url), m))?;
    if create {
        prepare_parent(dir, &path).map_err(|m| Problem::failed(shown(url), m))?;
    }
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(Problem::failed(
            shown(url),
            format!("{} is a directory", path.display()),
        ));
    }
    Ok(path)
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
