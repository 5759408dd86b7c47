//! Per-transfer context handed to a handler: where to report progress and
//! how to learn that the caller stopped the transfer.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result, RetryPolicy};

/// Receives progress from a handler (mesibo's `updateFileTransferProgress`).
///
/// `add` is called with the number of bytes newly acknowledged by the store
/// (upload) or written locally (download). Implementations must be cheap and
/// non-blocking; they may be called from several tasks at once.
pub trait ProgressSink: Send + Sync {
    /// `n` more bytes are done.
    fn add(&self, n: u64);
    /// The total size became known.
    fn set_total(&self, total: u64);
    /// A request failed transiently: `Some(t)` when the transfer waits to
    /// try again at `t`, `None` when it tries again (each `Some` is followed
    /// by exactly one `None`). Several parts may wait at once.
    fn retry_at(&self, _at: Option<SystemTime>) {}
}

struct NoProgress;
impl ProgressSink for NoProgress {
    fn add(&self, _: u64) {}
    fn set_total(&self, _: u64) {}
}

/// Progress reporting, cancellation and the retry policy for one transfer.
#[derive(Clone)]
pub struct TransferCtx {
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
    retry: RetryPolicy,
}

impl fmt::Debug for TransferCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferCtx")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Default for TransferCtx {
    fn default() -> Self {
        Self::none()
    }
}

impl TransferCtx {
    /// No progress, never cancelled, the default retry policy.
    pub fn none() -> Self {
        TransferCtx {
            progress: Arc::new(NoProgress),
            cancel: CancellationToken::new(),
            retry: RetryPolicy::default(),
        }
    }

    /// A context with the default retry policy.
    pub fn new(progress: Arc<dyn ProgressSink>, cancel: CancellationToken) -> Self {
        TransferCtx {
            progress,
            cancel,
            retry: RetryPolicy::default(),
        }
    }

    /// Use `policy` for [`retry`](Self::retry).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The retry policy of this transfer.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Run one request under this transfer's [`RetryPolicy`]: `op(attempt)`
    /// (attempt counts from 1) until it succeeds, fails with an error that
    /// is not [`Error::is_retryable`], or the budget is spent (then
    /// [`Error::RetriesExhausted`] naming `what`, the attempts and the time,
    /// with the last error as source). Each try is bounded by the policy's
    /// `attempt_timeout` (a `Transient` failure naming `what`). Waits use
    /// full-jitter exponential backoff, or the error's `retry_after`, and
    /// are announced through [`ProgressSink::retry_at`] (the manager shows
    /// them as `RetryLater`). Stopping the transfer ends a wait or a try at
    /// once with `Cancelled` (the try's future is dropped).
    ///
    /// Wrap exactly one request (one part, one range, one page), so that a
    /// failure repeats only that request. `what` names it in errors and
    /// logs (e.g. `s3://b/k part 3`).
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        crate::retry::run(
            &self.retry,
            what,
            Some(&self.cancel),
            Some(self.progress.as_ref()),
            op,
        )
        .await
    }

    /// Report `n` more bytes done.
    pub fn add_progress(&self, n: u64) {
        if n > 0 {
            self.progress.add(n);
        }
    }

    /// Report the total size.
    pub fn set_total(&self, total: u64) {
        self.progress.set_total(total);
    }

    /// The cancellation token (clone it into spawned part tasks).
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` if the transfer was stopped.
    pub fn check(&self, target: &str) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::cancelled(target))
        } else {
            Ok(())
        }
    }

    /// Run `fut`, or return `Cancelled` as soon as the transfer is stopped
    /// (dropping `fut`). Use it around requests whose abandonment leaves
    /// nothing visible (a single PUT, a part upload, a GET).
    pub async fn cancellable<T>(
        &self,
        target: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Error::cancelled(target)),
            r = fut => r,
        }
    }
}
