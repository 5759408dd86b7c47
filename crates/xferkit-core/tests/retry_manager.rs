//! The manager shows a transfer's retry waits to listeners: `RetryLater`
//! with the time of the next try, then back to `InProgress`, then the end.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use xferkit_core::Key;

use futures::stream::BoxStream;
use xferkit_core::url::{ObjectUrl, object_url};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, ErrorKind, FileInfo, FileTransferHandler,
    PendingUpload, PresignMethod, PresignedUrl, PutOptions, Registry, RemoteObject, Result,
    RetryPolicy, TransferCtx, TransferManager, TransferRequest, TransferStatus, UploadSource,
    async_trait,
};

/// A store whose uploads fail transiently `fail_first` times (each try goes
/// through `ctx.retry`, as every backend's requests do).
#[derive(Debug)]
struct Flaky {
    fail_first: u32,
    tries: AtomicU32,
}

#[async_trait]
impl FileTransferHandler for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn schemes(&self) -> &[&str] {
        &["s3"]
    }
    fn url_for(&self, key: &Key) -> String {
        object_url("s3", "flaky", key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        (url.scheme == "s3" && url.authority == "flaky")
            .then(|| Key::new(url.path.as_str()).ok())
            .flatten()
    }
    async fn upload(
        &self,
        key: &Key,
        _source: UploadSource,
        _opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let url = self.url_for(key);
        ctx.retry(&format!("{url} part 1"), |_| async {
            let n = self.tries.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.fail_first {
                Err(Error::Transient {
                    target: url.clone(),
                    retry_after: None,
                    source: Some("503 SlowDown".into()),
                })
            } else {
                ctx.add_progress(3);
                Ok(RemoteObject::new(url.clone(), key, 3))
            }
        })
        .await
    }
    async fn download_stream(
        &self,
        key: &Key,
        _range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        Err(Error::not_found(key))
    }
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        Err(Error::not_found(key))
    }
    fn list(&self, _prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        Box::pin(futures::stream::empty())
    }
    async fn delete(&self, _key: &Key) -> Result<()> {
        Ok(())
    }
    async fn copy(&self, from: &Key, _to: &Key) -> Result<RemoteObject> {
        Err(Error::not_found(from))
    }
    async fn presign(&self, _: &Key, _: PresignMethod, _: Duration) -> Result<PresignedUrl> {
        Err(Error::not_supported("flaky", "presign"))
    }
    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported("flaky", "list pending uploads"))
    }
}

fn setup(fail_first: u32, policy: RetryPolicy) -> (TransferManager, Arc<Mutex<Vec<FileInfo>>>) {
    let mut reg = Registry::new();
    reg.register(Arc::new(Flaky {
        fail_first,
        tries: AtomicU32::new(0),
    }));
    let m = TransferManager::new(Arc::new(reg)).with_retry_policy(policy);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    m.add_listener(Arc::new(move |i: &FileInfo| {
        s.lock().unwrap().push(i.clone())
    }));
    (m, seen)
}

fn source() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), b"abc").unwrap();
    f
}

fn quick() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(50))
}

#[tokio::test]
async fn listener_sees_retry_later_with_a_time_then_completed() {
    let (m, seen) = setup(2, quick());
    assert_eq!(m.retry_policy(), quick());
    let src = source();
    let before = SystemTime::now();
    let t = m
        .start(TransferRequest::upload(src.path(), "s3://flaky/k"))
        .unwrap();
    let end = t.wait_info().await;
    assert_eq!(end.status, TransferStatus::Completed, "{:?}", end.error);
    assert_eq!(end.retry_at, None);

    let seen = seen.lock().unwrap();
    let statuses: Vec<TransferStatus> = seen.iter().map(|i| i.status).collect();
    let waits: Vec<&FileInfo> = seen
        .iter()
        .filter(|i| i.status == TransferStatus::RetryLater)
        .collect();
    assert_eq!(waits.len(), 2, "{statuses:?}");
    for w in &waits {
        let at = w.retry_at.expect("RetryLater carries the next try's time");
        assert!(at >= before, "retry_at is in the future of the first try");
    }
    // Each wait is followed by a return to InProgress before the end.
    let pos = |from: usize, s: TransferStatus| {
        statuses[from..]
            .iter()
            .position(|x| *x == s)
            .map(|p| p + from)
    };
    let first = pos(0, TransferStatus::RetryLater).unwrap();
    let resumed = pos(first, TransferStatus::InProgress).unwrap();
    assert!(seen[resumed].retry_at.is_none());
    assert_eq!(*statuses.last().unwrap(), TransferStatus::Completed);
}

#[tokio::test]
async fn failures_that_never_clear_fail_the_transfer_after_the_budget() {
    let (m, seen) = setup(u32::MAX, quick().with_max_attempts(3));
    let src = source();
    let t = m
        .start(TransferRequest::upload(src.path(), "s3://flaky/k"))
        .unwrap();
    let end = t.wait_info().await;
    assert_eq!(end.status, TransferStatus::Failed);
    assert_eq!(end.error_kind, Some(ErrorKind::RetriesExhausted));
    let msg = end.error.unwrap();
    assert!(msg.contains("3 attempts"), "{msg}");
    assert!(msg.contains("503 SlowDown"), "{msg}");
    let waits = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i.status == TransferStatus::RetryLater)
        .count();
    assert_eq!(waits, 2);
}
