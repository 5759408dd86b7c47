//! Small helpers the backends' own integration tests share (fault, resume
//! tests): reproducible data, a unique key prefix per run, a retry policy
//! that does not make tests wait, and the check of a spent retry budget.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xferkit_core::{Error, Key, RetryPolicy};

pub use crate::support::data;

/// `xk-KIND-TEST-NANOS`: a prefix no other run (or test) of the suite uses,
/// so tests on one shared emulator never see each other's objects.
pub fn unique_prefix(kind: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("xk-{kind}-{test}-{nanos:x}")
}

/// Retries that do not make the tests wait: `attempts` tries, 10–100 ms
/// apart, 60 s per attempt.
pub fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(100))
        .with_attempt_timeout(Duration::from_secs(60))
}

/// `k` as a [`Key`]; panics naming the rule it breaks (test helper, for
/// keys a test spells out).
pub fn valid_key(k: &str) -> Key {
    Key::new(k).unwrap_or_else(|e| panic!("{e}"))
}

/// Write `bytes` to `dir/name`; panics on failure (test helper).
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Err(e) = std::fs::write(&p, bytes) {
        panic!("cannot write {}: {e}", p.display());
    }
    p
}

/// Check a failure after the budget: `RetriesExhausted` after exactly
/// `attempts` tries, naming `names`, over a retryable last error.
pub fn assert_exhausted(e: &Error, attempts: u32, names: &str) {
    let Error::RetriesExhausted {
        attempts: n,
        source,
        ..
    } = e
    else {
        panic!("expected RetriesExhausted, got {}", e.chain());
    };
    assert_eq!(*n, attempts, "{}", e.chain());
    assert!(source.is_retryable(), "{}", e.chain());
    assert!(e.to_string().contains(names), "{}", e.chain());
    assert!(e.chain().contains("gave up after"), "{}", e.chain());
}

/// A manager over `store` alone (default concurrency and retry policy).
pub fn manager_over(store: xferkit_core::DynHandler) -> xferkit_core::TransferManager {
    let mut reg = xferkit_core::Registry::new();
    reg.register(store);
    xferkit_core::TransferManager::new(std::sync::Arc::new(reg))
}

/// Wait until `t` reports at least `bytes` done (at least one byte for 0),
/// panicking with `what` after `limit`.
pub async fn until_transferred(t: &xferkit_core::Transfer, bytes: u64, limit: Duration) {
    let mut rx = t.subscribe();
    let reached = tokio::time::timeout(limit, async {
        while rx.borrow_and_update().transferred < bytes.max(1) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{bytes} bytes not acknowledged within {limit:?} ({:?})",
        t.info().status
    );
}
