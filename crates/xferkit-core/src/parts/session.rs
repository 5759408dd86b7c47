//! The ends of a session, shared by the first run of an upload
//! (`driver`), its resume (`resume`) and the part schedulers (`schedule`):
//! the combined CRC32C of the parts, the check of what the store reports
//! against what was sent, and the abort of a session given up.

use std::time::Duration;

use super::{PartStore, Stored};
use crate::journal::{JournalPart, crc32c_label};
use crate::{Error, ErrorKind, RemoteObject, Result, RetryPolicy};

/// Longest time spent aborting a failed or stopped upload. The transfer
/// manager reports a stopped transfer `Cancelled` at once and lets this run
/// to its end in the background (`TransferManager::settled`).
pub const ABORT_BUDGET: Duration = Duration::from_secs(15);

/// The CRC32C of the parts' bytes in order (`parts` sorted by number).
pub(crate) fn combine(parts: &[JournalPart]) -> u32 {
    parts.iter().fold(0u32, |crc, p| {
        crc32c::crc32c_combine(crc, p.crc32c, usize::try_from(p.len).unwrap_or(usize::MAX))
    })
}

/// Check the CRC32C the store reports against `sent`, the one of the bytes
/// sent. A store that checks none itself (emulators compute their own) may
/// hold a part corrupted on the way: then the object, already visible, is
/// deleted, so no wrong object stays under the key.
pub(crate) async fn verify(
    store: &dyn PartStore,
    stored: Stored,
    sent: u32,
    policy: &RetryPolicy,
) -> Result<RemoteObject> {
    let target = store.target();
    match stored.crc32c {
        Some(got) if got != sent => {
            tracing::warn!(target = %target, sent = %crc32c_label(sent), stored = %crc32c_label(got), "the stored object does not match what was sent; deleting it");
            if let Err(e) = policy
                .retry(target, |_| store.discard(&stored.object))
                .await
            {
                tracing::warn!(target = %target, error = %e.chain(), "could not delete the corrupted object");
            }
            Err(Error::ChecksumMismatch {
                target: target.to_string(),
                expected: crc32c_label(sent),
                actual: crc32c_label(got),
            })
        }
        _ => Ok(stored.object),
    }
}

/// Abort `session`, retrying transient failures for at most
/// [`ABORT_BUDGET`]; one that still fails is logged and left to the next
/// run of the upload (and `xfer gc`). Whether it is gone.
pub(crate) async fn abort(store: &dyn PartStore, session: &str, policy: &RetryPolicy) -> bool {
    let target = store.target();
    let policy = policy
        .clone()
        .with_max_elapsed(ABORT_BUDGET.min(policy.max_elapsed))
        .with_attempt_timeout(ABORT_BUDGET.min(policy.attempt_timeout));
    match policy.retry(target, |_| store.abort(session)).await {
        Ok(()) => true,
        // Already gone (completed or aborted meanwhile).
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(target = %target, error = %e.chain(), "could not abort the upload; `xfer gc` lists it, and the next run of this upload resumes or aborts it");
            false
        }
    }
}
