//! The one retry layer every backend goes through.
//!
//! Backends never loop on errors themselves (and turn their SDK's own retries
//! off): each request that may fail transiently (a single PUT, one part or
//! block or chunk, one GET or range open, a stat, a list page, a delete, a
//! copy) runs inside [`crate::TransferCtx::retry`] (or
//! [`RetryPolicy::retry`] where there is no transfer), so a failure repeats
//! only that request, never the whole file.
//!
//! Whether to retry is decided by [`Error::is_retryable`] alone: a backend
//! that maps 5xx, throttling, timeouts and connection resets to
//! [`Error::Transient`] gets retries; everything else fails at once.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::{Error, ProgressSink, Result};

/// How often and how long to retry a failed request.
///
/// Backoff is *full-jitter exponential*: before try `n + 1` the caller waits
/// a uniformly random time in `[0, min(max_backoff, initial_backoff * 2^(n-1))]`,
/// or exactly the server's `Retry-After` when the error carries one
/// ([`Error::Transient`]'s `retry_after`). Retrying stops at the first
/// success, the first non-retryable error, after `max_attempts` tries, or
/// when the next wait would end later than `max_elapsed` after the first try
/// started. Each try is cut off after `attempt_timeout` (a retryable
/// failure).
///
/// Defaults ([`RetryPolicy::default`]):
///
/// | field | default | config key (`[retry]`) |
/// |---|---|---|
/// | `max_attempts` | 6 (1 try + 5 retries) | `max_attempts` |
/// | `initial_backoff` | 200 ms | `initial_backoff` |
/// | `max_backoff` | 10 s | `max_backoff` |
/// | `max_elapsed` | 2 min | `max_elapsed` |
/// | `attempt_timeout` | 120 s | `attempt_timeout` |
///
/// Six tries with a 200 ms base wait at most 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s
/// (6.2 s, about half of that on average): enough to ride out a dropped
/// connection, a load balancer restart or an S3 `SlowDown` burst, short
/// enough that a dead endpoint is reported within seconds. The 120 s
/// attempt timeout bounds one request (one part: 8 MiB even at 1 Mbit/s
/// takes about 70 s) so a stalled connection is noticed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Tries in total, including the first (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff computed from the attempt number
    /// (a server's `Retry-After` is honoured even when longer).
    pub max_backoff: Duration,
    /// No retry is started whose wait would end later than this after the
    /// first try began. A try already running is not cut short by it.
    pub max_elapsed: Duration,
    /// Each try is abandoned (as a retryable failure) after this long.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// One try, no retries (the other values are the defaults).
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    pub fn with_initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }
    pub fn with_max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }
    pub fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }
    pub fn with_attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// The upper bound of the wait after failed try number `attempt`
    /// (1-based): `min(max_backoff, initial_backoff * 2^(attempt-1))`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.initial_backoff
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// A full-jitter wait after failed try number `attempt`.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.backoff_cap(attempt).as_nanos();
        if cap == 0 {
            return Duration::ZERO;
        }
        let r = u128::from(random_u64()) % (cap + 1);
        Duration::from_nanos(u64::try_from(r).unwrap_or(u64::MAX))
    }

    /// Run `op` under this policy without a transfer: no progress reporting,
    /// no cancellation. For requests made outside a transfer (stat, list,
    /// delete, copy, cleanup) and for cleanup after a transfer was stopped.
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        run(self, what, None, None, op).await
    }
}

/// A cheap random number for jitter: std's per-process random hasher keys
/// over a counter. Not cryptographic; it only has to spread retries out.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STATE: RandomState = RandomState::new();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    STATE.with(|s| s.hash_one(n))
}

/// The retry loop behind [`crate::TransferCtx::retry`] and
/// [`RetryPolicy::retry`].
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    cancel: Option<&CancellationToken>,
    sink: Option<&dyn ProgressSink>,
    mut op: F,
) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt: u32 = 1;
    loop {
        if cancel.is_some_and(|c| c.is_cancelled()) {
            return Err(Error::cancelled(what));
        }
        let attempt_fut = tokio::time::timeout(policy.attempt_timeout, op(attempt));
        let result = match cancel {
            Some(c) => tokio::select! {
                biased;
                _ = c.cancelled() => return Err(Error::cancelled(what)),
                r = attempt_fut => r,
            },
            None => attempt_fut.await,
        };
        let err = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_elapsed) => Error::Transient {
                target: what.to_string(),
                retry_after: None,
                source: Some(
                    format!(
                        "no answer within {} (attempt timeout)",
                        humanize(policy.attempt_timeout)
                    )
                    .into(),
                ),
            },
        };
        if !err.is_retryable() {
            return Err(err);
        }
        let elapsed = started.elapsed();
        let delay = match &err {
            Error::Transient {
                retry_after: Some(d),
                ..
            } => *d,
            _ => policy.backoff(attempt),
        };
        if attempt >= max_attempts || elapsed + delay > policy.max_elapsed {
            return Err(Error::RetriesExhausted {
                target: what.to_string(),
                attempts: attempt,
                elapsed,
                source: Box::new(err),
            });
        }
        tracing::debug!(
            target: "xferkit::retry",
            what,
            attempt,
            delay_ms = delay.as_millis() as u64,
            error = %err.chain(),
            "transient failure; retrying"
        );
        if let Some(s) = sink {
            s.retry_at(Some(SystemTime::now() + delay));
        }
        let slept = match cancel {
            Some(c) => tokio::select! {
                biased;
                _ = c.cancelled() => false,
                _ = tokio::time::sleep(delay) => true,
            },
            None => {
                tokio::time::sleep(delay).await;
                true
            }
        };
        if let Some(s) = sink {
            s.retry_at(None);
        }
        if !slept {
            return Err(Error::cancelled(what));
        }
        attempt += 1;
    }
}

/// `1.5s`, `200ms`, `2m`: short, for messages.
pub(crate) fn humanize(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{ErrorKind, TransferCtx};

    fn transient() -> Error {
        Error::transient("s3://b/k part 3", "connection reset")
    }

    #[derive(Default)]
    struct Rec(Mutex<Vec<Option<SystemTime>>>);
    impl ProgressSink for Rec {
        fn add(&self, _: u64) {}
        fn set_total(&self, _: u64) {}
        fn retry_at(&self, at: Option<SystemTime>) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(at);
        }
    }

    fn ctx(policy: RetryPolicy) -> (TransferCtx, Arc<Rec>, CancellationToken) {
        let rec = Arc::new(Rec::default());
        let token = CancellationToken::new();
        let ctx = TransferCtx::new(rec.clone(), token.clone()).with_retry_policy(policy);
        (ctx, rec, token)
    }

    #[test]
    fn defaults_are_documented_values() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 6);
        assert_eq!(p.initial_backoff, Duration::from_millis(200));
        assert_eq!(p.max_backoff, Duration::from_secs(10));
        assert_eq!(p.max_elapsed, Duration::from_secs(120));
        assert_eq!(p.attempt_timeout, Duration::from_secs(120));
        assert_eq!(RetryPolicy::none().max_attempts, 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_within_it() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_cap(1), Duration::from_millis(200));
        assert_eq!(p.backoff_cap(2), Duration::from_millis(400));
        assert_eq!(p.backoff_cap(6), Duration::from_millis(6400));
        assert_eq!(p.backoff_cap(7), Duration::from_secs(10));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_secs(10));
        let waits: Vec<Duration> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(800)));
        // Full jitter: the waits are spread out, not all equal.
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "{} distinct", distinct.len());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_until_success() {
        let (ctx, rec, _) = ctx(RetryPolicy::default());
        let calls = AtomicU32::new(0);
        let v = ctx
            .retry("part 3", |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt < 3 {
                        Err(transient())
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let seen = rec.0.lock().unwrap().clone();
        // Two waits, each announced with a time and then cleared.
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(seen[0].is_some() && seen[1].is_none());
        assert!(seen[2].is_some() && seen[3].is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_naming_count_and_last_error() {
        let (ctx, _, _) = ctx(RetryPolicy::default().with_max_attempts(4));
        let calls = AtomicU32::new(0);
        let err = ctx
            .retry("s3://b/k part 3", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(transient()) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(err.kind(), ErrorKind::RetriesExhausted);
        assert!(!err.is_retryable(), "an exhausted budget is final");
        let msg = err.chain();
        assert!(msg.contains("4 attempts"), "{msg}");
        assert!(msg.contains("s3://b/k part 3"), "{msg}");
        assert!(msg.contains("connection reset"), "{msg}");
        let Error::RetriesExhausted { source, .. } = &err else {
            unreachable!()
        };
        assert_eq!(source.kind(), ErrorKind::Transient);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_stops_at_once() {
        let (ctx, rec, _) = ctx(RetryPolicy::default());
        let calls = AtomicU32::new(0);
        let err = ctx
            .retry("k", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(Error::not_found("s3://b/k")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn none_policy_tries_once() {
        let (ctx, _, _) = ctx(RetryPolicy::none());
        let calls = AtomicU32::new(0);
        let err = ctx
            .retry("k", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(transient()) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.kind(), ErrorKind::RetriesExhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_even_beyond_max_backoff() {
        let policy = RetryPolicy::default().with_max_backoff(Duration::from_millis(100));
        let (ctx, _, _) = ctx(policy);
        let t0 = tokio::time::Instant::now();
        let times = Mutex::new(Vec::new());
        ctx.retry("k", |attempt| {
            times.lock().unwrap().push(t0.elapsed());
            async move {
                if attempt == 1 {
                    Err(Error::Transient {
                        target: "k".into(),
                        retry_after: Some(Duration::from_secs(7)),
                        source: None,
                    })
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
        let times = times.into_inner().unwrap();
        assert_eq!(times, vec![Duration::ZERO, Duration::from_secs(7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_stops_before_a_wait_that_would_overrun() {
        let policy = RetryPolicy::default()
            .with_max_attempts(100)
            .with_max_elapsed(Duration::from_secs(20));
        let (ctx, _, _) = ctx(policy);
        let t0 = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let err = ctx
            .retry("k", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(Error::Transient {
                        target: "k".into(),
                        retry_after: Some(Duration::from_secs(6)),
                        source: None,
                    })
                }
            })
            .await
            .unwrap_err();
        // Tries at 0, 6, 12, 18 s; a fifth would start at 24 s > 20 s.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(t0.elapsed(), Duration::from_secs(18));
        assert!(err.to_string().contains("18.0s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_during_backoff_returns_cancelled_at_once() {
        let (ctx, rec, token) = ctx(RetryPolicy::default());
        let t0 = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let stopper = tokio::spawn({
            let token = token.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                token.cancel();
            }
        });
        let err = ctx
            .retry("k", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    Err::<(), _>(Error::Transient {
                        target: "k".into(),
                        retry_after: Some(Duration::from_secs(60)),
                        source: None,
                    })
                }
            })
            .await
            .unwrap_err();
        stopper.await.unwrap();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(t0.elapsed(), Duration::from_millis(50));
        let seen = rec.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].is_some() && seen[1].is_none(), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn already_cancelled_does_not_try() {
        let (ctx, _, token) = ctx(RetryPolicy::default());
        token.cancel();
        let calls = AtomicU32::new(0);
        let err = ctx
            .retry("k", |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let policy = RetryPolicy::default().with_attempt_timeout(Duration::from_secs(5));
        let (ctx, _, _) = ctx(policy);
        let calls = AtomicU32::new(0);
        let v = ctx
            .retry("s3://b/k part 2", |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt == 1 {
                        std::future::pending::<()>().await;
                    }
                    Ok(attempt)
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_that_never_clear_name_the_request() {
        let policy = RetryPolicy::default()
            .with_attempt_timeout(Duration::from_secs(1))
            .with_max_attempts(2);
        let (ctx, _, _) = ctx(policy);
        let err = ctx
            .retry("gs://b/k chunk 0", |_| std::future::pending::<Result<()>>())
            .await
            .unwrap_err();
        let msg = err.chain();
        assert!(msg.contains("gs://b/k chunk 0"), "{msg}");
        assert!(msg.contains("attempt timeout"), "{msg}");
        assert!(msg.contains("2 attempts"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn policy_retry_works_without_a_transfer() {
        let calls = AtomicU32::new(0);
        let v = RetryPolicy::default()
            .retry("delete", |a| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { if a < 2 { Err(transient()) } else { Ok(a) } }
            })
            .await
            .unwrap();
        assert_eq!(v, 2);
    }
}
