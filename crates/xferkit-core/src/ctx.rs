//! Per-transfer context handed to a handler: where to report progress and
//! how to learn that the caller stopped the transfer.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

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
}

struct NoProgress;
impl ProgressSink for NoProgress {
    fn add(&self, _: u64) {}
    fn set_total(&self, _: u64) {}
}

/// Progress reporting and cancellation for one transfer.
#[derive(Clone)]
pub struct TransferCtx {
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
}

impl fmt::Debug for TransferCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferCtx")
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Default for TransferCtx {
    fn default() -> Self {
        Self::none()
    }
}

impl TransferCtx {
    /// No progress, never cancelled.
    pub fn none() -> Self {
        TransferCtx {
            progress: Arc::new(NoProgress),
            cancel: CancellationToken::new(),
        }
    }

    pub fn new(progress: Arc<dyn ProgressSink>, cancel: CancellationToken) -> Self {
        TransferCtx { progress, cancel }
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
