//! Sending the parts: up to `Plan::concurrency` in flight (each its own
//! task, so a slow stream source never stalls them), or one chunk after
//! another for a `Sequential` store.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::resume::Journaled;
use super::session::combine;
use super::source::{Pool, Source};
use super::{Acked, Part, PartBody, PartStore, Plan, Stored};
use crate::journal::JournalPart;
use crate::{Error, Result, TransferCtx};

/// Up to `plan.concurrency` parts in flight, each its own task.
pub(crate) async fn parallel(
    store: &Arc<dyn PartStore>,
    plan: &Plan,
    src: &mut Source,
    session: &str,
    done: &mut Vec<JournalPart>,
    mut journal: Option<&mut Journaled>,
    ctx: &TransferCtx,
) -> Result<()> {
    let target = store.target();
    let skip: HashSet<u32> = done.iter().map(|p| p.number).collect();
    let session: Arc<str> = Arc::from(session);
    let pool = Pool::new(plan.concurrency);
    // Dropped on a stop or failure: the parts in flight are aborted.
    let mut tasks: JoinSet<Result<(JournalPart, PartBody)>> = JoinSet::new();
    let total = src.size();
    let mut number = 0u32;
    let mut exhausted = false;
    loop {
        while !exhausted && tasks.len() < plan.concurrency {
            let Some((piece, _)) = src.next(&pool).await? else {
                exhausted = true;
                break;
            };
            number = next_number(number, plan, target)?;
            if skip.contains(&number) {
                continue;
            }
            let (store, session, pool, ctx) =
                (store.clone(), session.clone(), pool.clone(), ctx.clone());
            let digest = plan.digest;
            tasks.spawn(async move {
                let l = piece.load(&pool, digest).await?;
                let part = Part {
                    number,
                    offset: l.offset,
                    body: l.body,
                    crc32c: l.crc32c,
                    digest: l.digest,
                    total,
                    last: None,
                };
                let etag = match put_part(store.as_ref(), &session, &part, &ctx).await? {
                    Acked::Part(etag) => etag,
                    Acked::Done(_) => return Err(early(store.target())),
                };
                let jp = JournalPart::new(number, part.offset, part.len(), etag, part.crc32c);
                Ok((jp, part.body))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (jp, body) =
            joined.map_err(|e| Error::backend(target, "a part upload task failed", e))??;
        ctx.add_progress(jp.len);
        pool.give(body);
        if let Some(j) = journal.as_deref_mut() {
            j.record(jp.clone()).await;
        }
        done.push(jp);
    }
}

/// One chunk after another; the last one completes the upload.
pub(crate) async fn sequential(
    store: &dyn PartStore,
    plan: &Plan,
    src: &mut Source,
    session: &str,
    done: &mut Vec<JournalPart>,
    mut journal: Option<&mut Journaled>,
    ctx: &TransferCtx,
) -> Result<(Stored, u32)> {
    let target = store.target();
    let pool = Pool::new(1);
    let mut crc = combine(done);
    let mut total: u64 = done.iter().map(|p| p.len).sum();
    let mut number = done.last().map_or(0, |p| p.number);
    let size = src.size();
    // The journal lags one chunk behind: chunk N is recorded (an fsync)
    // while chunk N+1 is on the wire, not before it is sent. A crash in
    // between loses nothing: the resume asks the store for its offset.
    let mut unrecorded: Option<JournalPart> = None;
    while let Some((piece, last)) = src.next(&pool).await? {
        number = next_number(number, plan, target)?;
        let l = piece.load(&pool, plan.digest).await?;
        let len = l.body.len();
        let whole =
            crc32c::crc32c_combine(crc, l.crc32c, usize::try_from(len).unwrap_or(usize::MAX));
        let part = Part {
            number,
            offset: l.offset,
            body: l.body,
            crc32c: l.crc32c,
            digest: l.digest,
            total: size,
            last: last.then_some((total + len, whole)),
        };
        let record = async {
            if let (Some(j), Some(jp)) = (journal.as_deref_mut(), unrecorded.take()) {
                j.record(jp).await;
            }
        };
        if last {
            // The last chunk completes the upload: the point of no return.
            ctx.commit(target)?;
        }
        let (ack, ()) = tokio::join!(put_part(store, session, &part, ctx), record);
        let ack = ack?;
        ctx.add_progress(len);
        (total, crc) = (total + len, whole);
        match (ack, last) {
            (Acked::Done(stored), true) => return Ok((stored, whole)),
            (Acked::Part(etag), false) => {
                let jp = JournalPart::new(number, part.offset, len, etag, part.crc32c);
                done.push(jp.clone());
                unrecorded = Some(jp);
                pool.give(part.body);
            }
            (Acked::Done(stored), false) => {
                // Not all of it: delete what became visible.
                let r = ctx
                    .retry_policy()
                    .retry(target, |_| store.discard(&stored.object))
                    .await;
                let note = if r.is_ok() {
                    "deleted"
                } else {
                    "could not be deleted"
                };
                return Err(Error::backend(
                    target,
                    format!(
                        "the store completed the upload before its last chunk (the truncated object {note})"
                    ),
                    format!("after {total} bytes"),
                ));
            }
            (Acked::Part(_), true) => {
                return Err(Error::backend(
                    target,
                    "the store did not complete the upload after its last chunk",
                    format!("{total} bytes sent"),
                ));
            }
        }
    }
    Err(Error::backend(
        target,
        "no bytes were left to send",
        "empty upload",
    ))
}

/// Throttle, then put one part under the transfer's retry policy. A try
/// of a file's part that failed because the file shrank or changed (its
/// reader failed, wrapped by the SDK as whatever it makes of a body error)
/// fails with that error, not retried.
async fn put_part(
    store: &dyn PartStore,
    session: &str,
    part: &Part,
    ctx: &TransferCtx,
) -> Result<Acked> {
    let target = store.target();
    ctx.throttle(target, part.len()).await?;
    let what = format!("{target} part {}", part.number);
    ctx.retry(&what, |attempt| async move {
        let r = store.put_part(session, part, attempt).await;
        match (&r, &part.body) {
            (Err(e), PartBody::File(span)) if e.kind() != crate::ErrorKind::Cancelled => {
                match span.changed().await {
                    Some(changed) => Err(changed),
                    None => r,
                }
            }
            _ => r,
        }
    })
    .await
}

fn next_number(number: u32, plan: &Plan, target: &str) -> Result<u32> {
    number
        .checked_add(1)
        .filter(|n| u64::from(*n) <= plan.max_parts)
        .ok_or_else(|| {
            Error::backend(
                target,
                format!(
                    "the upload needs more than {} parts of {} bytes; raise the part size",
                    plan.max_parts, plan.part_size
                ),
                "too many parts",
            )
        })
}

fn early(target: &str) -> Error {
    Error::backend(
        target,
        "the store completed the upload early",
        "unexpected answer to a part",
    )
}
