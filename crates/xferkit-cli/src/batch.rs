//! Many files' work at once: the one scheduler behind `cp -r`, `sync`,
//! `rm -r` and `mv`'s relay.
//!
//! Each [`Job`] is one file: a transfer through a [`TransferManager`] of the
//! run's own (`--concurrency` at once), a server-side copy, a copy between
//! stores through a temp file, or a delete. Up to `concurrency` jobs run at
//! once; one that fails is reported on stderr naming its path or URL and the
//! others go on. Ctrl-C stops the running ones (which leave nothing partial)
//! and starts no more.

use std::path::PathBuf;
use std::time::SystemTime;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use xferkit::{
    CancellationToken, DynHandler, Error, ErrorKind, FileInfo, Key, PutOptions, RemoteObject,
    ShareRequestExt, TransferManager, TransferRequest, TransferStatus,
};

use crate::ctx::Ctx;
use crate::fail::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Failure, one_line};
use crate::output::line;
use crate::target::shown;

/// Files moving at once when `--concurrency` is not given: enough to hide
/// per-request latency for small files (see docs/benchmarks.md).
pub const DEFAULT_CONCURRENCY: u16 = 16;

const BAR_TEMPLATE: &str =
    "{msg:.bold} [{bar:30}] {pos}/{len} files {binary_bytes_per_sec} eta {eta}";

/// A file that could not be moved (or deleted).
#[derive(Debug)]
pub struct Problem {
    /// Its local path or URL, for the message.
    pub label: String,
    pub message: String,
    /// An invalid name (usage-class) rather than a failed transfer.
    pub invalid: bool,
}

impl Problem {
    pub fn failed(label: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            label: label.into(),
            message: message.into(),
            invalid: false,
        }
    }

    pub fn invalid(label: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            invalid: true,
            ..Problem::failed(label, message)
        }
    }
}

/// `xfer: LABEL: MESSAGE` on stderr, or `{"path", "error"}` with `--json`.
pub fn report(cx: &Ctx, p: &Problem) {
    if cx.json {
        let _ = line(json!({ "path": p.label, "error": p.message }));
    } else {
        eprintln!("xfer: {}", one_line(&format!("{}: {}", p.label, p.message)));
    }
}

/// What one job does.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per queued job, moved once: not worth a Box
pub enum Work {
    /// An upload or a download through the manager.
    Transfer(TransferRequest),
    /// A server-side copy within one store.
    Copy {
        store: DynHandler,
        from: Key,
        to: Key,
    },
    /// A copy between stores: download to a temp file, upload it (content
    /// type and metadata kept).
    Relay {
        from: DynHandler,
        from_key: Key,
        to: DynHandler,
        to_key: Key,
    },
    /// Delete an object (a missing one is fine).
    Delete { store: DynHandler, key: Key },
    /// Delete many objects of one store in one call (S3: one DeleteObjects
    /// request), each reported on its own as if it were a job.
    DeleteMany { store: DynHandler, keys: Vec<Key> },
    /// Delete a local file (a missing one is fine).
    RemoveFile(PathBuf),
    /// Nothing to do: the object's name is no valid key (one written by
    /// another tool), so it cannot be addressed; reported as an invalid name
    /// (`InvalidKey` naming it) when the job runs, as any job's failure is.
    Invalid(Error),
}

/// The work that copies `from_key` of `from` to `to_key` of `to`: a
/// server-side copy within one store that can, else through a temp file.
pub fn copy_work(from: &DynHandler, from_key: Key, to: &DynHandler, to_key: Key) -> Work {
    if from.name() == to.name() && from.capabilities().copy {
        Work::Copy {
            store: from.clone(),
            from: from_key,
            to: to_key,
        }
    } else {
        Work::Relay {
            from: from.clone(),
            from_key,
            to: to.clone(),
            to_key,
        }
    }
}

/// Objects one batch delete takes at most (S3's DeleteObjects limit).
pub const DELETE_BATCH: usize = 1000;

/// `jobs` with each run of object deletes in one store (in the order
/// given) merged into [`Work::DeleteMany`] jobs of up to [`DELETE_BATCH`]
/// keys, their action kept; other jobs as they are.
pub fn batched(jobs: Vec<Job>) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::new();
    for job in jobs {
        if let Work::Delete { store, key } = job.work {
            if let Some(Job {
                work: Work::DeleteMany { store: s, keys },
                ..
            }) = out.last_mut()
                && s.name() == store.name()
                && keys.len() < DELETE_BATCH
            {
                keys.push(key);
                continue;
            }
            let label = shown(&store.url_for(&key));
            let work = Work::DeleteMany {
                store,
                keys: vec![key],
            };
            let mut merged = Job::new(work, label, 0);
            merged.meta.action = job.meta.action;
            out.push(merged);
        } else {
            out.push(job);
        }
    }
    out
}

/// One file's work.
#[derive(Debug)]
pub struct Job {
    pub work: Work,
    pub meta: Meta,
}

/// What a job is about, for messages, printing and the summary.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Its source path or URL, for messages.
    pub label: String,
    /// Its destination path or URL (empty for a delete).
    pub dst: String,
    /// What it does, for the caller's output (`upload`, `delete`, ...).
    pub action: &'static str,
    /// The bytes it moves, for the summary.
    pub size: u64,
    /// After a download: set the file's modification time to this.
    pub mtime: Option<SystemTime>,
}

impl Job {
    pub fn new(work: Work, label: impl Into<String>, size: u64) -> Self {
        Job {
            work,
            meta: Meta {
                label: label.into(),
                size,
                ..Meta::default()
            },
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Jobs that succeeded, and the bytes they moved.
    pub done: usize,
    pub bytes: u64,
    /// Ctrl-C stopped the run.
    pub interrupted: bool,
    /// Jobs that failed (already reported).
    pub failed: Vec<Problem>,
}

/// Run `jobs`, at most `concurrency` at once, with a bar labelled `verb`;
/// `on_done` gets each finished job (and its transfer's record, for
/// transfers) to print what it did. Failures are reported as they happen.
pub async fn run(
    cx: &Ctx,
    jobs: Vec<Job>,
    concurrency: usize,
    verb: &str,
    mut on_done: impl FnMut(&Meta, Option<&FileInfo>) -> Result<(), Failure>,
) -> Result<Outcome, Failure> {
    let concurrency = concurrency.max(1);
    let manager = cx.kit.new_manager(concurrency);
    let stop = CancellationToken::new();
    let files: usize = jobs
        .iter()
        .map(|j| match &j.work {
            Work::DeleteMany { keys, .. } => keys.len(),
            _ => 1,
        })
        .sum();
    let bar = cx.progress.then(|| {
        let bar = ProgressBar::new(files as u64).with_message(verb.to_string());
        if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let mut results = futures::stream::iter(jobs.into_iter().map(|job| {
        let manager = &manager;
        let stop = stop.clone();
        async move {
            if stop.is_cancelled() {
                return Vec::new();
            }
            let Job { work, meta } = job;
            if let Work::DeleteMany { store, keys } = work {
                return delete_many(&store, &keys, &meta, &stop).await;
            }
            match execute(manager, work, meta.mtime, &stop).await {
                Ok(Some(info)) => vec![Ok((meta, info))],
                Ok(None) => Vec::new(),
                Err((message, invalid)) => vec![Err(Problem {
                    label: meta.label,
                    message,
                    invalid,
                })],
            }
        }
    }))
    .buffer_unordered(concurrency);

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut listening = true;
    let mut out = Outcome::default();
    loop {
        tokio::select! {
            next = results.next() => {
                let Some(done) = next else { break };
                if let Some(bar) = &bar {
                    bar.inc(done.len() as u64);
                }
                for r in done {
                    match r {
                        Ok((meta, info)) => {
                            out.done += 1;
                            out.bytes += meta.size;
                            on_done(&meta, info.as_ref())?;
                        }
                        Err(p) => {
                            report(cx, &p);
                            out.failed.push(p);
                        }
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
    out.interrupted = stop.is_cancelled();
    Ok(out)
}

/// The exit for a run of `total` files of which `outcome` says what
/// happened (`what`: "copied", "sent", "deleted"): success, 130 after
/// Ctrl-C, else 1 (2 when every failure was an invalid name).
pub fn finish(
    outcome: &Outcome,
    problems: &[Problem],
    total: usize,
    what: &str,
) -> Result<(), Failure> {
    let done = outcome.done;
    if outcome.interrupted {
        return Err(Failure {
            message: Some(format!(
                "interrupted: {done} of {total} files {what}; the running transfers were stopped and left nothing partial"
            )),
            code: EXIT_INTERRUPTED,
        });
    }
    let failed: Vec<&Problem> = problems.iter().chain(&outcome.failed).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let code = if failed.iter().all(|p| p.invalid) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    };
    Err(Failure {
        message: Some(format!(
            "{} of {total} files failed ({done} {what}); see the messages above",
            failed.len()
        )),
        code,
    })
}

/// A job's failure: its message, and whether it is an invalid name.
type JobError = (String, bool);

/// What became of one file of a job.
type Done = Result<(Meta, Option<FileInfo>), Problem>;

/// Delete `keys` of `store` with one `delete_many` call: one result per
/// key, labelled with its URL (`meta` gives the action). Stopped by `stop`:
/// none (keys already gone stay gone).
async fn delete_many(
    store: &DynHandler,
    keys: &[Key],
    meta: &Meta,
    stop: &CancellationToken,
) -> Vec<Done> {
    let label = |k: &Key| shown(&store.url_for(k));
    let results = tokio::select! {
        r = store.delete_many(keys) => r,
        _ = stop.cancelled() => return Vec::new(),
    };
    match results {
        Ok(results) => results
            .into_iter()
            .map(|(key, r)| match r {
                Ok(()) => Ok((
                    Meta {
                        label: label(&key),
                        action: meta.action,
                        ..Meta::default()
                    },
                    None,
                )),
                Err(e) => Err(Problem {
                    label: label(&key),
                    message: e.chain(),
                    invalid: e.kind() == ErrorKind::InvalidKey,
                }),
            })
            .collect(),
        Err(e) => keys
            .iter()
            .map(|k| Err(Problem::failed(label(k), e.chain())))
            .collect(),
    }
}

/// Do `job`. `Ok(None)`: stopped by `stop`.
async fn execute(
    manager: &TransferManager,
    work: Work,
    mtime: Option<SystemTime>,
    stop: &CancellationToken,
) -> Result<Option<Option<FileInfo>>, JobError> {
    let store_call =
        |r: Result<(), Error>| r.map_err(|e| (e.chain(), e.kind() == ErrorKind::InvalidKey));
    match work {
        Work::Transfer(request) => {
            let Some(info) = follow(manager, request, stop).await? else {
                return Ok(None);
            };
            if let Some(t) = mtime {
                set_mtime(&info.path, t).map_err(|e| (e.to_string(), false))?;
            }
            Ok(Some(Some(info)))
        }
        Work::Copy { store, from, to } => {
            tokio::select! {
                r = store.copy(&from, &to) => store_call(r.map(drop)).map(|()| Some(None)),
                _ = stop.cancelled() => Ok(None),
            }
        }
        Work::Relay {
            from,
            from_key,
            to,
            to_key,
        } => relay(manager, &from, &from_key, &to, &to_key, stop)
            .await
            .map(|o| o.map(Some)),
        Work::Delete { store, key } => {
            tokio::select! {
                r = store.delete(&key) => store_call(r).map(|()| Some(None)),
                _ = stop.cancelled() => Ok(None),
            }
        }
        // `run` hands these to `delete_many`, which reports each key.
        Work::DeleteMany { .. } => Err(("a batch delete is not one file".into(), false)),
        Work::Invalid(e) => Err((e.chain(), true)),
        Work::RemoveFile(path) => match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(None)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(None)),
            Err(e) => Err((
                Error::from_io(path.display().to_string(), e).to_string(),
                false,
            )),
        },
    }
}

/// Start `request` on `manager` and wait for it. `Ok(None)`: stopped by `stop`.
async fn follow(
    manager: &TransferManager,
    request: TransferRequest,
    stop: &CancellationToken,
) -> Result<Option<FileInfo>, JobError> {
    let t = manager
        .start(request)
        .map_err(|e| (e.chain(), e.kind() == ErrorKind::InvalidKey))?;
    let info = tokio::select! {
        info = t.wait_info() => info,
        _ = stop.cancelled() => {
            t.stop();
            t.wait_info().await
        }
    };
    match info.status {
        TransferStatus::Completed => Ok(Some(info)),
        TransferStatus::Cancelled if stop.is_cancelled() => Ok(None),
        _ => Err((
            info.error.unwrap_or_else(|| "transfer failed".into()),
            false,
        )),
    }
}

/// Copy `from_key` of `from` to `to_key` of `to` through a temp file, both
/// legs through `manager`; the upload keeps the content type and metadata.
/// Returns the upload's record. `Ok(None)`: stopped by `stop`.
pub async fn relay(
    manager: &TransferManager,
    from: &DynHandler,
    from_key: &Key,
    to: &DynHandler,
    to_key: &Key,
    stop: &CancellationToken,
) -> Result<Option<FileInfo>, JobError> {
    let dir = tempfile::Builder::new()
        .prefix("xfer-cp.")
        .tempdir()
        .map_err(|e| (Error::from_io("temporary directory", e).to_string(), false))?;
    let tmp = dir.path().join("object");
    let down = TransferRequest::download(from.url_for(from_key), &tmp);
    let Some(got) = follow(manager, down, stop).await? else {
        return Ok(None);
    };
    let opts = got.object.as_ref().map(options_like).unwrap_or_default();
    let up = TransferRequest::upload(&tmp, to.url_for(to_key))
        .with_options(opts)
        .without_thumbnail();
    follow(manager, up, stop).await
    // `dir` and the temp file in it are removed here, on success or not.
}

/// Upload options that give a copy of `obj` its content type and metadata.
pub fn options_like(obj: &RemoteObject) -> PutOptions {
    let mut opts = PutOptions::default();
    if let Some(ct) = &obj.content_type {
        opts = opts.with_content_type(ct.clone());
    }
    for (k, v) in &obj.metadata {
        opts = opts.with_metadata(k.clone(), v.clone());
    }
    opts
}

/// Set `path`'s modification time to `t`.
pub fn set_mtime(path: &std::path::Path, t: SystemTime) -> Result<(), Error> {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(|e| Error::from_io(path.display().to_string(), e))
}
