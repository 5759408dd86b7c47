//! `xfer sync`, `xfer rm -r` and `xfer mv`.
//!
//! **sync SRC DST**: a directory to a URL prefix, a prefix to a directory,
//! or a prefix to a prefix (in one store: server-side copies; across
//! stores: through a temp file). Both sides are listed; a source file is
//! sent when the destination lacks it, when the sizes differ, or when the
//! source is newer than the destination, modification times compared to
//! the whole second (S3 and HTTP dates have no finer grain) — the rule of
//! `aws s3 sync`. A download gets the object's last-modified time as its
//! mtime, so a second sync in either direction sends nothing. With
//! `--checksum` the checksums decide (CRC32C or SHA-256, as the store
//! reports it; a local file is hashed to match; a store that lists none is
//! asked per object), and where one side has none, size and time do.
//! `--include`/`--exclude` globs match the path relative to SRC/DST; a
//! path they leave out is neither sent nor deleted. `--delete` removes
//! destination files the source lacks, after the transfers, and only when
//! every one succeeded (as rclone does). Transfers, copies and deletes run
//! through [`crate::batch`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::json;
use xferkit::{DynHandler, Error, Key, ShareRequestExt, TransferRequest};

use crate::batch::{self, Job, Meta, Outcome, Problem, Work};
use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::output::{self, line};
use crate::target::{self, Location, shown};
use crate::tree::{as_prefix, download_path, ensure_dir, key_for, objects, plan, walk};

/// Objects `rm -r` deletes without `--force`.
pub const RM_LIMIT: usize = 1000;

/// `sync`'s flags.
#[derive(Debug)]
pub struct Options {
    pub checksum: bool,
    pub delete: bool,
    pub dry_run: bool,
    pub filter: Filter,
    pub concurrency: usize,
}

/// `--include`/`--exclude`: a path is considered when it matches an include
/// (or none were given) and no exclude. `*` matches across `/`.
#[derive(Debug)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, Failure> {
        let set = |globs: &[String], flag: &str| -> Result<GlobSet, Failure> {
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g).map_err(|e| {
                    Failure::usage(format!("{flag} {g:?} is not a valid glob: {e}"))
                })?);
            }
            b.build()
                .map_err(|e| Failure::usage(format!("{flag}: {e}")))
        };
        Ok(Filter {
            include: (!include.is_empty())
                .then(|| set(include, "--include"))
                .transpose()?,
            exclude: set(exclude, "--exclude")?,
        })
    }

    pub fn admits(&self, rel: &str) -> bool {
        self.include.as_ref().is_none_or(|i| i.is_match(rel)) && !self.exclude.is_match(rel)
    }
}

/// One side of a sync.
#[derive(Debug)]
enum End {
    Dir(PathBuf),
    Prefix { store: DynHandler, prefix: String },
}

impl End {
    /// The path or URL of `rel` on this side, for messages.
    fn shown(&self, rel: &str) -> String {
        match self {
            End::Dir(d) => d.join(rel).display().to_string(),
            End::Prefix { store, prefix } => {
                shown(&target::prefix_url(store, &format!("{prefix}{rel}")))
            }
        }
    }
}

/// A file on one side, by its path relative to that side.
#[derive(Debug, Clone)]
struct Entry {
    size: u64,
    mtime: Option<SystemTime>,
    /// `algorithm:value`, as listed (stores only).
    checksum: Option<String>,
    /// The local file (directories).
    path: Option<PathBuf>,
}

/// `xfer sync SRC DST`.
pub async fn sync(cx: &Ctx, src: &OsStr, dst: &OsStr, opts: &Options) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let end = |loc: Location| -> Result<End, Failure> {
        Ok(match loc {
            Location::Path(p) => End::Dir(p),
            Location::Url(u) => {
                let (store, prefix) = target::prefix(reg, &as_prefix(&u))?;
                End::Prefix { store, prefix }
            }
        })
    };
    let (from, to) = (end(target::classify(src)?)?, end(target::classify(dst)?)?);
    match (&from, &to) {
        (End::Dir(a), End::Dir(b)) => {
            return Err(Failure::usage(format!(
                "both `{}` and `{}` are local paths; use rsync(1) between directories",
                a.display(),
                b.display()
            )));
        }
        (End::Dir(d), _) if !d.is_dir() => {
            std::fs::metadata(d).map_err(|e| Error::from_io(d.display().to_string(), e))?;
            return Err(Failure::usage(format!(
                "{} is not a directory; sync copies a directory or a URL prefix",
                d.display()
            )));
        }
        (
            End::Prefix {
                store: s,
                prefix: a,
            },
            End::Prefix {
                store: t,
                prefix: b,
            },
        ) if s.name() == t.name() && (a.starts_with(b.as_str()) || b.starts_with(a.as_str())) => {
            return Err(Failure::usage(format!(
                "{} and {} overlap; sync between prefixes that do not contain each other",
                from.shown(""),
                to.shown("")
            )));
        }
        (_, End::Dir(d)) => ensure_dir(d, opts.dry_run)?,
        _ => {}
    }

    let (sources, mut problems) = list(&from, &opts.filter, true).await?;
    let (dests, _) = list(&to, &opts.filter, false).await?;
    for p in &problems {
        batch::report(cx, p);
    }

    // Which source files to send.
    let common: Vec<(&String, &Entry, &Entry)> = sources
        .iter()
        .filter_map(|(rel, s)| dests.get(rel).map(|d| (rel, s, d)))
        .collect();
    let verdicts: Vec<Result<bool, Problem>> = futures::stream::iter(
        common
            .iter()
            .map(|(rel, s, d)| differs(&from, &to, rel, s, d, opts.checksum)),
    )
    .buffered(opts.concurrency.max(1))
    .collect()
    .await;
    let mut changed: BTreeMap<&str, bool> = BTreeMap::new();
    for ((rel, _, _), v) in common.iter().zip(verdicts) {
        match v {
            Ok(d) => {
                changed.insert(rel.as_str(), d);
            }
            Err(p) => {
                batch::report(cx, &p);
                problems.push(p);
                changed.insert(rel.as_str(), false);
            }
        }
    }
    let mut jobs = Vec::new();
    let mut skipped = 0usize;
    for (rel, entry) in &sources {
        if !changed.get(rel.as_str()).copied().unwrap_or(true) {
            skipped += 1;
            continue;
        }
        match job_for(&from, &to, rel, entry, opts.dry_run) {
            Ok(j) => jobs.push(j),
            Err(p) => {
                batch::report(cx, &p);
                problems.push(p);
            }
        }
    }
    let deletes: Vec<Job> = if opts.delete {
        dests
            .iter()
            .filter(|(rel, _)| !sources.contains_key(*rel))
            .map(|(rel, e)| delete_job(&to, rel, e))
            .collect()
    } else {
        Vec::new()
    };

    let total = jobs.len() + problems.len();
    let mut summary = Summary {
        sent: 0,
        bytes: 0,
        skipped,
        deleted: 0,
        failed: problems.len(),
        dry_run: opts.dry_run,
    };
    if opts.dry_run {
        summary.sent = jobs.len();
        summary.bytes = jobs.iter().map(|j| j.meta.size).sum();
        summary.deleted = deletes.len();
        plan(cx, &jobs)?;
        plan(cx, &deletes)?;
        summary.print(cx)?;
        let planned = Outcome {
            done: jobs.len(),
            ..Outcome::default()
        };
        return batch::finish(&planned, &problems, total, "to send");
    }

    let print = |meta: &Meta, _: Option<&xferkit::FileInfo>| done_line(cx, meta);
    let sent = batch::run(cx, jobs, opts.concurrency, "syncing", print).await?;
    summary.sent = sent.done;
    summary.bytes = sent.bytes;
    summary.failed += sent.failed.len();
    let mut deleted = Outcome::default();
    if !deletes.is_empty() && !sent.interrupted {
        if summary.failed == 0 {
            let deletes = batch::batched(deletes);
            deleted = batch::run(cx, deletes, opts.concurrency, "deleting", print).await?;
            summary.deleted = deleted.done;
            summary.failed += deleted.failed.len();
        } else if !cx.quiet {
            crate::note(&format!(
                "not deleting {} destination files the source lacks: {} files failed",
                deletes.len(),
                summary.failed
            ));
        }
    }
    summary.print(cx)?;
    problems.extend(deleted.failed);
    let outcome = Outcome {
        interrupted: sent.interrupted || deleted.interrupted,
        ..sent
    };
    batch::finish(&outcome, &problems, total, "sent")
}

/// What a sync did, printed last: on stderr (not with `--quiet`), or as
/// `{"summary": {...}}` on stdout with `--json`.
#[derive(Debug)]
struct Summary {
    sent: usize,
    bytes: u64,
    skipped: usize,
    deleted: usize,
    failed: usize,
    dry_run: bool,
}

impl Summary {
    fn print(&self, cx: &Ctx) -> Result<(), Failure> {
        if cx.json {
            return line(json!({ "summary": {
                "sent": self.sent, "bytes": self.bytes, "skipped": self.skipped,
                "deleted": self.deleted, "failed": self.failed, "dry_run": self.dry_run,
            }}));
        }
        if !cx.quiet {
            let (sent, bytes) = (self.sent, output::size(self.bytes));
            let (skipped, deleted, failed) = (self.skipped, self.deleted, self.failed);
            eprintln!(
                "{}",
                if self.dry_run {
                    format!(
                        "xfer: sync --dry-run: would send {sent} files ({bytes}), skip {skipped} unchanged, delete {deleted}; {failed} failed"
                    )
                } else {
                    format!(
                        "xfer: sync: sent {sent} files ({bytes}), skipped {skipped} unchanged, deleted {deleted}, failed {failed}"
                    )
                }
            );
        }
        Ok(())
    }
}

/// `ACTION: SRC to DST` (`delete: DST`), or its JSON, for a finished job.
fn done_line(cx: &Ctx, meta: &Meta) -> Result<(), Failure> {
    if cx.json {
        line(
            json!({ "action": meta.action, "src": meta.label, "dst": meta.dst, "size": meta.size }),
        )
    } else if meta.dst.is_empty() {
        line(format!("{}: {}", meta.action, meta.label))
    } else {
        line(format!("{}: {} to {}", meta.action, meta.label, meta.dst))
    }
}

/// Every file on `end` the filter admits, by relative path. A missing
/// directory is empty as a destination; as a source it fails. Names that
/// cannot be keys are problems on the source side and left out on the
/// destination side.
async fn list(
    end: &End,
    filter: &Filter,
    source: bool,
) -> Result<(BTreeMap<String, Entry>, Vec<Problem>), Failure> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    match end {
        End::Dir(dir) => {
            if !dir.exists() {
                if source {
                    std::fs::metadata(dir)
                        .map_err(|e| Error::from_io(dir.display().to_string(), e))?;
                }
                return Ok((out, problems));
            }
            let root = dir.clone();
            let files = tokio::task::spawn_blocking(move || {
                walk(&root)
                    .into_iter()
                    .map(|f| {
                        f.map(|(path, rel)| {
                            let meta = std::fs::metadata(&path);
                            (path, rel, meta)
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| Failure::failed(format!("walking {}: {e}", dir.display())))?;
            for f in files {
                let (path, rel, meta) = match f {
                    Ok(x) => x,
                    Err(p) => {
                        if source {
                            problems.push(p);
                        }
                        continue;
                    }
                };
                let rel = match key_for(&rel) {
                    Ok(r) => r,
                    Err(m) => {
                        if source {
                            problems.push(Problem::invalid(path.display().to_string(), m));
                        }
                        continue;
                    }
                };
                if !filter.admits(&rel) {
                    continue;
                }
                match meta {
                    Ok(m) => {
                        out.insert(
                            rel,
                            Entry {
                                size: m.len(),
                                mtime: m.modified().ok(),
                                checksum: None,
                                path: Some(path),
                            },
                        );
                    }
                    Err(e) if source => problems.push(Problem::failed(
                        path.display().to_string(),
                        Error::from_io(path.display().to_string(), e).to_string(),
                    )),
                    Err(_) => {}
                }
            }
        }
        End::Prefix { store, prefix } => {
            for (obj, rel) in objects(store, prefix, prefix, |rel| filter.admits(rel)).await? {
                out.insert(
                    rel,
                    Entry {
                        size: obj.size,
                        mtime: obj.last_modified,
                        checksum: obj.checksum,
                        path: None,
                    },
                );
            }
        }
    }
    Ok((out, problems))
}

/// Whether the source file `rel` must be sent over the destination's.
async fn differs(
    from: &End,
    to: &End,
    rel: &str,
    s: &Entry,
    d: &Entry,
    checksum: bool,
) -> Result<bool, Problem> {
    if s.size != d.size {
        return Ok(true);
    }
    if checksum && let Some(same) = same_content(from, to, rel, s, d).await? {
        return Ok(!same);
    }
    Ok(match (s.mtime, d.mtime) {
        (Some(a), Some(b)) => seconds(a) > seconds(b),
        _ => true,
    })
}

fn seconds(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::from(d.as_secs()),
        Err(e) => -i128::from(e.duration().as_secs()) - 1,
    }
}

/// Whether the two sides' checksums agree; `None` when they cannot be
/// compared (a store reports none, or the two use different algorithms).
async fn same_content(
    from: &End,
    to: &End,
    rel: &str,
    s: &Entry,
    d: &Entry,
) -> Result<Option<bool>, Problem> {
    let a = remote_checksum(from, rel, s).await?;
    let b = remote_checksum(to, rel, d).await?;
    let computable = |c: &Option<String>| {
        c.as_deref().is_none_or(|c| {
            let alg = c.split_once(':').map_or("", |(a, _)| a);
            alg.eq_ignore_ascii_case("crc32c") || alg.eq_ignore_ascii_case("sha256")
        })
    };
    if !computable(&a) || !computable(&b) {
        if let (Some(a), Some(b)) = (&a, &b) {
            return Ok(checksums_agree(a, b));
        }
        return Ok(None);
    }
    let (a, b) = match (a, b, &s.path, &d.path) {
        (Some(a), Some(b), _, _) => (a, b),
        (Some(a), None, _, Some(path)) => {
            let b = hash_file(path, &a).await?;
            (a, b)
        }
        (None, Some(b), Some(path), _) => {
            let a = hash_file(path, &b).await?;
            (a, b)
        }
        _ => return Ok(None),
    };
    Ok(checksums_agree(&a, &b))
}

/// A store entry's checksum: as listed, else from a stat. `None` for a
/// local file or a store that reports none.
async fn remote_checksum(end: &End, rel: &str, e: &Entry) -> Result<Option<String>, Problem> {
    let End::Prefix { store, prefix } = end else {
        return Ok(None);
    };
    if e.checksum.is_some() {
        return Ok(e.checksum.clone());
    }
    let key = Key::new(format!("{prefix}{rel}"))
        .map_err(|err| Problem::invalid(end.shown(rel), err.to_string()))?;
    let obj = store
        .stat(&key)
        .await
        .map_err(|err| Problem::failed(end.shown(rel), err.chain()))?;
    Ok(obj.checksum)
}

/// `Some(equal)` for two checksums of one algorithm (CRC32C compared as
/// numbers, others as lower-case text), `None` for different algorithms.
pub fn checksums_agree(a: &str, b: &str) -> Option<bool> {
    let (alg_a, va) = a.split_once(':')?;
    let (alg_b, vb) = b.split_once(':')?;
    if !alg_a.eq_ignore_ascii_case(alg_b) {
        return None;
    }
    if alg_a.eq_ignore_ascii_case("crc32c") {
        let n = |v: &str| u32::from_str_radix(v, 16).ok();
        return Some(n(va).is_some() && n(va) == n(vb));
    }
    Some(va.eq_ignore_ascii_case(vb))
}

/// `path`'s checksum in the algorithm of `like` (`crc32c:…` or `sha256:…`).
async fn hash_file(path: &Path, like: &str) -> Result<String, Problem> {
    let alg = like
        .split_once(':')
        .map_or("", |(a, _)| a)
        .to_ascii_lowercase();
    let p = path.to_path_buf();
    let shown_path = path.display().to_string();
    let hashed = tokio::task::spawn_blocking(move || file_checksum(&p, &alg))
        .await
        .map_err(|e| Problem::failed(shown_path.clone(), e.to_string()))?;
    hashed.map_err(|e| Problem::failed(shown_path, e.to_string()))
}

/// The checksum of the file at `path` as `alg:hex` (`crc32c` or `sha256`).
pub fn file_checksum(path: &Path, alg: &str) -> Result<String, Error> {
    use sha2::Digest;
    use std::io::Read;
    let io = |e| Error::from_io(path.display().to_string(), e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut sha = sha2::Sha256::new();
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        match alg {
            "crc32c" => crc = crc32c::crc32c_append(crc, &buf[..n]),
            _ => sha.update(&buf[..n]),
        }
    }
    Ok(match alg {
        "crc32c" => format!("crc32c:{crc:08x}"),
        "sha256" => format!("sha256:{}", hex::encode(sha.finalize())),
        other => {
            return Err(Error::not_supported(
                path.display().to_string(),
                format!("checksum algorithm {other:?}"),
            ));
        }
    })
}

/// The job that sends source file `rel` to the destination.
fn job_for(from: &End, to: &End, rel: &str, e: &Entry, dry_run: bool) -> Result<Job, Problem> {
    let label = from.shown(rel);
    let (work, action, dst, mtime) = match (from, to) {
        (End::Dir(_), End::Prefix { store, prefix }) => {
            let key = Key::new(format!("{prefix}{rel}"))
                .map_err(|err| Problem::invalid(&label, err.to_string()))?;
            let url = store.url_for(&key);
            let path = e.path.clone().unwrap_or_default();
            let request = TransferRequest::upload(path, url.clone()).without_thumbnail();
            (Work::Transfer(request), "upload", shown(&url), None)
        }
        (End::Prefix { store, prefix }, End::Dir(dir)) => {
            let key = Key::new(format!("{prefix}{rel}"))
                .map_err(|err| Problem::invalid(&label, err.to_string()))?;
            let url = store.url_for(&key);
            let path = download_path(dir, rel, &url, !dry_run)?;
            let request = TransferRequest::download(url, &path);
            let dst = path.display().to_string();
            (Work::Transfer(request), "download", dst, e.mtime)
        }
        (
            End::Prefix {
                store: a,
                prefix: pa,
            },
            End::Prefix {
                store: b,
                prefix: pb,
            },
        ) => {
            let key =
                |k: String| Key::new(k).map_err(|err| Problem::invalid(&label, err.to_string()));
            let (from_key, to_key) = (key(format!("{pa}{rel}"))?, key(format!("{pb}{rel}"))?);
            let dst = shown(&b.url_for(&to_key));
            (batch::copy_work(a, from_key, b, to_key), "copy", dst, None)
        }
        (End::Dir(_), End::Dir(_)) => {
            return Err(Problem::invalid(label, "between two directories"));
        }
    };
    Ok(Job {
        work,
        meta: Meta {
            label,
            dst,
            action,
            size: e.size,
            mtime,
        },
    })
}

/// The job that deletes destination file `rel`.
fn delete_job(to: &End, rel: &str, e: &Entry) -> Job {
    let work = match to {
        End::Dir(_) => Work::RemoveFile(e.path.clone().unwrap_or_default()),
        End::Prefix { store, prefix } => match Key::new(format!("{prefix}{rel}")) {
            Ok(key) => Work::Delete {
                store: store.clone(),
                key,
            },
            Err(e) => Work::Invalid(e),
        },
    };
    let mut job = Job::new(work, to.shown(rel), 0);
    job.meta.action = "delete";
    job
}

/// `xfer rm -r URL...`: every object under each prefix, in batches of up to
/// [`batch::DELETE_BATCH`] keys ([`xferkit::FileTransferHandler::delete_many`]:
/// one DeleteObjects request on S3), `concurrency` batches at once. More
/// than [`RM_LIMIT`] objects need `force`.
pub async fn rm_r(
    cx: &Ctx,
    urls: &[String],
    dry_run: bool,
    force: bool,
    concurrency: usize,
) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let mut jobs = Vec::new();
    for url in urls {
        let (store, prefix) = target::prefix(reg, &as_prefix(url))?;
        let before = jobs.len();
        let mut objects = store.list(&prefix);
        while let Some(obj) = objects.next().await {
            let obj = obj?;
            let shown_url = shown(&target::prefix_url(&store, &obj.key));
            let work = match obj.to_key() {
                Ok(key) => Work::Delete {
                    store: store.clone(),
                    key,
                },
                Err(e) => Work::Invalid(e),
            };
            let mut job = Job::new(work, shown_url, obj.size);
            job.meta.action = "delete";
            jobs.push(job);
        }
        if jobs.len() == before && !cx.quiet {
            crate::note(&format!("nothing under {}", shown(&as_prefix(url))));
        }
    }
    if dry_run {
        return plan(cx, &jobs);
    }
    if jobs.len() > RM_LIMIT && !force {
        return Err(Failure::usage(format!(
            "this would delete {} objects (more than {RM_LIMIT}); add --force to delete them, or --dry-run to list them",
            jobs.len()
        )));
    }
    let total = jobs.len();
    let outcome = batch::run(
        cx,
        batch::batched(jobs),
        concurrency,
        "deleting",
        |meta, _| {
            if cx.json {
                line(json!({ "url": meta.label, "deleted": true }))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    batch::finish(&outcome, &[], total, "deleted")
}

/// `xfer mv SRC DST`: copy (upload, download, server-side copy within a
/// store, or through a temp file between stores), check that the copy has
/// the source's size and, where both sides have one of the same algorithm,
/// its checksum, then delete the source.
pub async fn mv(cx: &Ctx, src: &OsStr, dst: &OsStr, force: bool) -> Result<(), Failure> {
    use crate::output::print_object;
    use crate::single::{check_source, destination, key_from_file_name};
    let reg = cx.kit.registry();
    match (target::classify(src)?, target::classify(dst)?) {
        (Location::Path(s), Location::Path(d)) => Err(Failure::usage(format!(
            "both `{}` and `{}` are local paths; use mv(1) to move local files",
            s.display(),
            d.display()
        ))),
        (Location::Path(s), Location::Url(d)) => {
            check_source(&s)?;
            let (store, key) = destination(reg, &d, || key_from_file_name(&s))?;
            let request = TransferRequest::upload(&s, "").without_thumbnail();
            crate::single::upload(cx, &s, &store, &key, request).await?;
            let copy = store.stat(&key).await?;
            verify_file(&s, &s.display().to_string(), &copy).await?;
            std::fs::remove_file(&s).map_err(|e| Error::from_io(s.display().to_string(), e))?;
            print_object(cx, &copy, |o| o.url.clone())
        }
        (Location::Url(s), Location::Path(d)) => {
            let (store, key) = target::object(reg, &s)?;
            let original = store.stat(&key).await?;
            let name = target::file_name_for(&s, &key)?;
            let dest = target::download_dest(Some(&d), &name, force)?;
            let request = TransferRequest::download(store.url_for(&key), &dest);
            crate::transfer::run(cx.kit.manager(), request, &name, cx.progress).await?;
            verify_file(&dest, &shown(&s), &original).await?;
            store.delete(&key).await?;
            line(dest.display())
        }
        (Location::Url(s), Location::Url(d)) => {
            let (from, from_key) = target::object(reg, &s)?;
            let (to, to_key) = destination(reg, &d, || target::file_name_for(&s, &from_key))?;
            if from.name() == to.name() && from_key == to_key {
                return Err(Failure::usage(format!(
                    "{} and {} are the same object",
                    shown(&s),
                    shown(&d)
                )));
            }
            let original = from.stat(&from_key).await?;
            if from.name() == to.name() && from.capabilities().copy {
                from.copy(&from_key, &to_key).await?;
            } else {
                crate::single::relay(cx, &from, &from_key, &s, &to, &to_key).await?;
            }
            let copy = to.stat(&to_key).await?;
            verify(
                &shown(&s),
                original.size,
                original.checksum.as_deref(),
                &copy,
            )?;
            from.delete(&from_key).await?;
            print_object(cx, &copy, |o| o.url.clone())
        }
    }
}

/// The local file at `path` and the object `obj` (one the copy of the
/// other; `source` names the source for the message) have the same size
/// and, where the object has a CRC32C or SHA-256, the same checksum.
async fn verify_file(
    path: &Path,
    source: &str,
    obj: &xferkit::RemoteObject,
) -> Result<(), Failure> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::from_io(path.display().to_string(), e))?
        .len();
    let alg = obj
        .checksum
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .map(|(a, _)| a.to_ascii_lowercase());
    let local = match (alg.as_deref(), &obj.checksum) {
        (Some("crc32c" | "sha256"), Some(like)) => Some(
            hash_file(path, like)
                .await
                .map_err(|p| Failure::failed(p.message))?,
        ),
        _ => None,
    };
    verify(source, size, local.as_deref(), obj)
}

/// A file or object of `size` bytes (and `checksum`) and the object `obj`,
/// one the copy of the other, agree; else a failure saying that `source`
/// was kept.
fn verify(
    source: &str,
    size: u64,
    checksum: Option<&str>,
    obj: &xferkit::RemoteObject,
) -> Result<(), Failure> {
    let bad = |what: String| {
        Failure::failed(format!(
            "{source}: the copy does not match ({what}); the source was kept"
        ))
    };
    if obj.size != size {
        return Err(bad(format!("{} bytes against {size}", obj.size)));
    }
    if let (Some(a), Some(b)) = (checksum, obj.checksum.as_deref())
        && checksums_agree(a, b) == Some(false)
    {
        return Err(bad(format!("checksum {b} against {a}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_include_then_exclude_and_stars_cross_slashes() {
        let f = Filter::new(&[], &["*.tmp".into(), "cache/*".into()]).unwrap();
        assert!(f.admits("a/b.txt"));
        assert!(!f.admits("a/b.tmp"));
        assert!(!f.admits("cache/x/y"));
        let f = Filter::new(&["*.jpg".into()], &["private/*".into()]).unwrap();
        assert!(f.admits("x/y.jpg"));
        assert!(!f.admits("x/y.png"));
        assert!(!f.admits("private/y.jpg"));
        assert!(Filter::new(&[], &["a[".into()]).is_err());
    }

    #[test]
    fn checksums_compare_within_one_algorithm() {
        assert_eq!(
            checksums_agree("crc32c:0000abcd", "crc32c:abcd"),
            Some(true)
        );
        assert_eq!(checksums_agree("crc32c:1", "crc32c:2"), Some(false));
        assert_eq!(checksums_agree("sha256:AB", "sha256:ab"), Some(true));
        assert_eq!(checksums_agree("sha256:ab", "crc32c:ab"), None);
        assert_eq!(checksums_agree("nonsense", "crc32c:ab"), None);
    }

    #[test]
    fn times_compare_to_the_second() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(10_700);
        assert_eq!(seconds(t), 10);
        assert!(seconds(UNIX_EPOCH - std::time::Duration::from_millis(1)) < 0);
    }
}
