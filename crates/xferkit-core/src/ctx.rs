//! Per-transfer context handed to a handler: where to report progress and
//! how to learn that the caller stopped the transfer.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result, RetryPolicy};

/// A bandwidth cap in bytes per second, shared by every part of every
/// transfer it is given to: a token bucket kept as one "paid until" time;
/// each request for `n` bytes moves it on by `n / rate` and waits for it, so
/// the average rate of everything under the cap stays at or below it. An
/// idle bucket banks at most [`Bandwidth::BURST`] of credit.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: u64,
    /// When the bytes granted so far have been "paid for".
    paid_until: Mutex<Option<Instant>>,
}

impl Bandwidth {
    /// Credit an idle bucket may bank.
    pub const BURST: Duration = Duration::from_millis(50);

    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Bandwidth {
            bytes_per_sec: bytes_per_sec.max(1),
            paid_until: Mutex::new(None),
        }
    }

    /// The cap, bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Reserve `n` bytes; returns the moment they are paid for, before
    /// which they may not move. (Paying before moving errs on the slow
    /// side: a transfer ends at most one part's own transmission time after
    /// its bytes are paid for, never a part ahead of the cap.)
    fn reserve(&self, n: u64) -> Instant {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let mut paid = self.paid_until.lock().unwrap_or_else(|p| p.into_inner());
        let floor = now.checked_sub(Self::BURST).unwrap_or(now);
        let until = paid.map_or(floor, |p| p.max(floor)) + cost;
        *paid = Some(until);
        until
    }
}

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

/// Progress reporting, cancellation, pausing, bandwidth caps and the retry
/// policy for one transfer.
#[derive(Clone)]
pub struct TransferCtx {
    progress: Arc<dyn ProgressSink>,
    cancel: CancellationToken,
    retry: RetryPolicy,
    /// Set before `cancel` when the stop is a pause.
    pause: Arc<AtomicBool>,
    /// This run only throws away what a paused run kept.
    discard: bool,
    limits: Vec<Arc<Bandwidth>>,
    /// The commit gate shared with the manager ([`commit`](Self::commit)).
    gate: Arc<AtomicU8>,
}

/// [`TransferCtx::commit`]'s gate: the transfer may still be stopped.
const GATE_OPEN: u8 = 0;
/// The request that makes the result visible is on its way: too late to stop.
const GATE_COMMITTING: u8 = 1;
/// Stopped (or paused) before the commit: the commit is refused.
const GATE_STOPPED: u8 = 2;

/// A fresh commit gate for one network transfer.
pub(crate) fn commit_gate() -> Arc<AtomicU8> {
    Arc::new(AtomicU8::new(GATE_OPEN))
}

/// Close `gate` before stopping its transfer: `false` if the transfer
/// already passed its point of no return (it will complete; the stop is too
/// late), `true` if it may be stopped (and may no longer commit).
pub(crate) fn close_gate(gate: &AtomicU8) -> bool {
    match gate.compare_exchange(GATE_OPEN, GATE_STOPPED, Ordering::SeqCst, Ordering::SeqCst) {
        Ok(_) => true,
        Err(state) => state != GATE_COMMITTING,
    }
}

impl fmt::Debug for TransferCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferCtx")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("paused", &self.is_paused())
            .field("discard", &self.discard)
            .field("retry", &self.retry)
            .field("limits", &self.limits)
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
        Self::new(Arc::new(NoProgress), CancellationToken::new())
    }

    /// A context with the default retry policy.
    pub fn new(progress: Arc<dyn ProgressSink>, cancel: CancellationToken) -> Self {
        TransferCtx {
            progress,
            cancel,
            retry: RetryPolicy::default(),
            pause: Arc::new(AtomicBool::new(false)),
            discard: false,
            limits: Vec::new(),
            gate: commit_gate(),
        }
    }

    /// A context for throwing away what a paused transfer kept: the handler
    /// must send nothing, and instead remove the transfer's resumable state
    /// (abort the stored parts' upload, cancel the session, remove the
    /// journal), then return `Cancelled`. The context is already cancelled.
    pub fn for_discard(mut self) -> Self {
        self.discard = true;
        self.cancel.cancel();
        self
    }

    /// Whether this run is a [`for_discard`](Self::for_discard).
    pub fn is_discarding(&self) -> bool {
        self.discard
    }

    /// Cap this transfer's rate with `limit` too (several caps all apply;
    /// one cap may be shared by many transfers).
    pub fn with_bandwidth(mut self, limit: Arc<Bandwidth>) -> Self {
        self.limits.push(limit);
        self
    }

    /// Share the pause flag `flag` (the manager sets it, then cancels).
    pub(crate) fn with_pause_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.pause = flag;
        self
    }

    /// Share the commit gate `gate` (the manager closes it before a stop).
    pub(crate) fn with_commit_gate(mut self, gate: Arc<AtomicU8>) -> Self {
        self.gate = gate;
        self
    }

    /// Pass the point of no return: the request that makes an upload
    /// visible (a multipart complete, a resumable upload's last chunk) is
    /// about to be sent. `Cancelled` if the transfer was stopped first;
    /// after it, a stop through the manager is too late and the transfer
    /// completes (reported `Completed`, not `Cancelled`), so "stopped" never
    /// claims nothing was written while the store makes the object visible.
    pub fn commit(&self, target: &str) -> Result<()> {
        self.check(target)?;
        match self.gate.compare_exchange(
            GATE_OPEN,
            GATE_COMMITTING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Ok(()),
            Err(GATE_COMMITTING) => Ok(()),
            Err(_) => Err(Error::cancelled(target)),
        }
    }

    /// Stop the transfer as a pause: like cancelling its token, but the
    /// handler keeps what resuming needs (the upload journal and the parts
    /// already stored, a partial download and its journal) instead of
    /// cleaning up.
    pub fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Whether the transfer was stopped by [`pause`](Self::pause): a
    /// handler that sees `Cancelled` and this keeps its resumable state.
    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::SeqCst)
    }

    /// Wait until `n` more bytes may be sent or received under every
    /// bandwidth cap of this transfer (at once when there is none). Call it
    /// before each part, range or chunk moves. `Cancelled` if the transfer
    /// is stopped while waiting.
    pub async fn throttle(&self, target: &str, n: u64) -> Result<()> {
        let Some(at) = self.limits.iter().map(|l| l.reserve(n)).max() else {
            return Ok(());
        };
        if at <= Instant::now() {
            return Ok(());
        }
        self.cancellable(target, async {
            tokio::time::sleep_until(at).await;
            Ok(())
        })
        .await
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
