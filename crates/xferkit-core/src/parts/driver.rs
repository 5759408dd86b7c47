//! The upload driver: one request or parts, scheduling, per-part retry,
//! the journal, complete, verify, abort.

use std::sync::Arc;

use bytes::Bytes;

use super::resume::{Journaled, Resume, resume};
use super::schedule::{parallel, sequential};
use super::session::{abort, combine, verify};
use super::source::{Chunker, Source, exact_length, shrank};
use super::{Body, Layout, PartStore, Plan};
use crate::journal::{JournalPart, crc32c_of_range};
use crate::{Error, ErrorKind, RemoteObject, Result, TransferCtx, UploadSource};

/// Files up to this size are read into memory for a one-request upload.
const SMALL_IN_MEMORY: u64 = 1024 * 1024;

/// Upload `source` to `store` as `plan` says.
///
/// Resume: an upload of a file with a `state_dir` keeps a journal (the
/// session id, each acknowledged part's number, offset, length, ETag and
/// CRC32C, and a fingerprint of the file). Run again after a crash, it asks
/// the store what it holds of that session and keeps a part only if the
/// store has it at the recorded size (and ETag, where listed) and the file's
/// bytes still have the recorded CRC32C; everything else is sent again and
/// the complete is computed from exactly the parts kept and sent. A session
/// the store no longer knows, or a changed file, starts a fresh upload (the
/// old session aborted, once, and said at info level): a stale journal
/// never fails an upload. The journal goes when the upload completes, fails
/// or is stopped; a pause keeps it (and the session) for `resume()`.
pub async fn upload(
    store: Arc<dyn PartStore>,
    plan: &Plan,
    source: UploadSource,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    let target = store.target().to_string();
    if ctx.is_discarding() {
        // A paused upload that is stopped: abort what it kept.
        if let (UploadSource::Path(path), Some(dir)) = (&source, &plan.state_dir) {
            let file = crate::journal::JournalFile::for_upload(dir, &target, path);
            let aborted = match file.load().await {
                Some(old) if !old.upload_id.is_empty() => {
                    abort(store.as_ref(), &old.upload_id, ctx.retry_policy()).await
                }
                _ => true,
            };
            if aborted {
                file.remove().await;
            }
        }
        return Err(Error::cancelled(&target));
    }
    ctx.check(&target)?;
    match source {
        UploadSource::Path(path) => {
            let shown = path.display().to_string();
            let size = tokio::fs::metadata(&path)
                .await
                .map_err(|e| Error::from_io(&shown, e))?
                .len();
            ctx.set_total(size);
            if size <= plan.threshold {
                let body = if size <= SMALL_IN_MEMORY {
                    let data = tokio::fs::read(&path)
                        .await
                        .map_err(|e| Error::from_io(&shown, e))?;
                    if data.len() as u64 != size {
                        return Err(shrank(&path));
                    }
                    Body::Bytes(Bytes::from(data))
                } else {
                    Body::File(path)
                };
                return single(store.as_ref(), body, size, plan.create_only, ctx).await;
            }
            let src = Source::file(path, size, plan.part_size_for(Some(size)));
            in_parts(store, plan, src, ctx).await
        }
        UploadSource::Stream { stream, size } => {
            if let Some(n) = size {
                ctx.set_total(n);
            }
            let stream = match size {
                Some(n) => exact_length(stream, n, target.clone()),
                None => stream,
            };
            let mut chunker = Chunker::new(stream);
            let limit = usize::try_from(plan.threshold).unwrap_or(usize::MAX);
            // Buffer up to the threshold: a stream that ends by then is one request.
            ctx.cancellable(&target, chunker.fill(limit.saturating_add(1)))
                .await?;
            if chunker.held() <= limit {
                let data = chunker.take_all();
                let n = data.len() as u64;
                return single(store.as_ref(), Body::Bytes(data), n, plan.create_only, ctx).await;
            }
            let part_size = usize::try_from(plan.part_size_for(size)).map_err(|_| {
                Error::invalid_config(format!(
                    "part size {} does not fit in memory on this platform",
                    plan.part_size
                ))
            })?;
            let src = Source::Stream {
                chunker,
                part_size,
                offset: 0,
                declared: size,
            };
            in_parts(store, plan, src, ctx).await
        }
    }
}

/// One request, retried as a whole, also when what the store holds is not
/// what was sent.
///
/// A create-only put that failed in transit looks before it is sent again:
/// a store may answer "exists" as soon as it has the headers and close the
/// connection while the body is still being written (s3s-fs does), which
/// the client sees as a broken pipe, a transient error, on every try. An
/// object found then is `AlreadyExists`, as the conditional put would have
/// answered (also when it is this upload's own first try that landed and
/// only its answer was lost: the retry's condition would refuse it too).
async fn single(
    store: &dyn PartStore,
    body: Body,
    size: u64,
    create_only: bool,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    let target = store.target();
    let crc = match &body {
        Body::Bytes(b) => crc32c::crc32c(b),
        Body::File(path) => crc32c_of_range(path, 0, size)
            .await
            .ok_or_else(|| shrank(path))?,
    };
    ctx.throttle(target, size).await?;
    let obj = ctx
        .retry(target, |attempt| {
            let body = &body;
            async move {
                if create_only && attempt > 1 && store.exists().await? {
                    return Err(Error::already_exists(target));
                }
                let stored = store.put_whole(body, size, crc).await?;
                verify(store, stored, crc, ctx.retry_policy())
                    .await
                    .map_err(|e| match e {
                        Error::ChecksumMismatch {
                            expected, actual, ..
                        } => Error::transient(
                            target,
                            format!(
                                "the store's checksum did not match what was sent (corrupted \
                             in transit): sent {expected}, stored {actual}; the object was deleted"
                            ),
                        ),
                        e => e,
                    })
            }
        })
        .await?;
    ctx.add_progress(size);
    Ok(obj)
}

async fn in_parts(
    store: Arc<dyn PartStore>,
    plan: &Plan,
    mut src: Source,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    let target = store.target().to_string();
    if plan.create_only {
        // Fail before sending gigabytes. Only a hit counts: the complete's
        // condition still makes the create atomic.
        match ctx.retry(&target, |_| store.exists()).await {
            Ok(true) => return Err(Error::already_exists(&target)),
            Err(e) if e.kind() == ErrorKind::Cancelled => return Err(e),
            _ => {}
        }
    }
    // Owned: a `&Source` (a stream inside) must not be held across an await.
    let file = src.path().map(|(p, size)| (p.to_path_buf(), size));
    // Known for a file and a stream of declared size (GCS announces it).
    let size = src.size();
    let mut journal = match (&file, &plan.state_dir) {
        (Some((path, size)), Some(dir)) => {
            let part_size = plan.part_size_for(Some(*size));
            Journaled::open(dir, &target, path, part_size, plan.create_only).await
        }
        _ => None,
    };
    let found = match (journal.as_mut(), &file) {
        (Some(j), Some((path, size))) => resume(store.as_ref(), j, path, *size, ctx).await,
        _ => Resume::Fresh,
    };
    let (mut session, kept, resumed) = match found {
        Resume::Done(obj) => {
            if let Some(j) = &journal {
                j.file.remove().await;
            }
            ctx.add_progress(obj.size);
            return Ok(obj);
        }
        Resume::Continue { session, kept } => (session, kept, true),
        Resume::Fresh => (
            start(store.as_ref(), &mut journal, size, ctx).await?,
            Vec::new(),
            false,
        ),
    };
    let mut r = send(
        &store,
        plan,
        &mut src,
        &session,
        kept,
        journal.as_mut(),
        ctx,
    )
    .await;
    // The resumed session failed: the store may no longer know it
    // (completed or aborted after the journal was written, or expired: S3
    // NoSuchUpload, s3s-fs AccessDenied or a reset before it reads the
    // part, GCS 404). A stale journal never fails an upload: start one
    // fresh upload, once, and say so.
    if let Err(e) = &r
        && resumed
        && !ctx.is_cancelled()
    {
        tracing::info!(target = %target, error = %e.chain(), "the interrupted upload could not be continued; starting over");
        abort(store.as_ref(), &session, ctx.retry_policy()).await;
        src.skip_to(0);
        session = start(store.as_ref(), &mut journal, size, ctx).await?;
        r = send(
            &store,
            plan,
            &mut src,
            &session,
            Vec::new(),
            journal.as_mut(),
            ctx,
        )
        .await;
    }
    // Paused with a journal: the session and its parts stay for resume().
    if r.is_err() && ctx.is_paused() && journal.is_some() {
        return r;
    }
    if r.is_err() && !abort(store.as_ref(), &session, ctx.retry_policy()).await {
        // The session is still there: its journal stays, so the next run of
        // the same upload finds it (and resumes or aborts it).
        return r;
    }
    // Completed, failed or stopped: nothing to resume.
    if let Some(j) = &journal {
        j.file.remove().await;
    }
    r
}

/// Start a session, recorded in the journal (with no parts yet); a journal
/// that cannot be written is dropped (no resume after a crash). Not raced
/// against cancellation: a session created behind our back could not be
/// aborted. Cancellation is checked right after.
async fn start(
    store: &dyn PartStore,
    journal: &mut Option<Journaled>,
    size: Option<u64>,
    ctx: &TransferCtx,
) -> Result<String> {
    let id = ctx
        .retry_policy()
        .retry(store.target(), |_| store.start(size))
        .await?;
    if let Some(j) = journal.as_mut() {
        j.data.upload_id = id.clone();
        j.data.parts.clear();
        if let Err(e) = j.file.save(&j.data).await {
            tracing::warn!(error = %e.chain(), "upload journal not written; this upload cannot resume after a crash");
            *journal = None;
        }
    }
    Ok(id)
}

/// Send every part not in `kept`, then complete; the verified object.
async fn send(
    store: &Arc<dyn PartStore>,
    plan: &Plan,
    src: &mut Source,
    session: &str,
    kept: Vec<JournalPart>,
    journal: Option<&mut Journaled>,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    let target = store.target();
    ctx.check(target)?;
    let mut done = kept;
    for p in &done {
        ctx.add_progress(p.len);
    }
    let (stored, sent) = match plan.layout {
        Layout::Parallel => {
            let sending = parallel(store, plan, src, session, &mut done, journal, ctx);
            ctx.cancellable(target, sending).await?;
            done.sort_by_key(|p| p.number);
            let total = done.iter().map(|p| p.len).sum();
            let whole = combine(&done);
            // The point of no return: a stop from now on is too late.
            ctx.commit(target)?;
            // Not cancellable (the policy's retry, not the transfer's): a
            // complete dropped mid-flight may still take effect.
            let stored = ctx
                .retry_policy()
                .retry(target, |attempt| {
                    store.complete(session, &done, total, whole, attempt)
                })
                .await?;
            (stored, whole)
        }
        Layout::Sequential => {
            src.skip_to(done.iter().map(|p| p.len).sum());
            let sending = sequential(store.as_ref(), plan, src, session, &mut done, journal, ctx);
            ctx.cancellable(target, sending).await?
        }
    };
    verify(store.as_ref(), stored, sent, ctx.retry_policy()).await
}
