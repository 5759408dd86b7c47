//! Transfer manager semantics against an in-memory store with slow reads.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use xferkit_core::url::{ObjectUrl, object_url};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, ErrorKind, FileInfo, FileTransferHandler,
    PendingUpload, PresignMethod, PresignedUrl, PutOptions, Registry, RemoteObject, Result,
    TransferCtx, TransferManager, TransferRequest, TransferStatus, UploadSource, async_trait,
};

/// An in-memory store whose downloads trickle out in 64 KiB chunks, one
/// every `delay`, and which counts calls and concurrent readers.
#[derive(Debug, Default)]
struct MemStore {
    objects: Mutex<HashMap<String, Bytes>>,
    delay: Duration,
    downloads: AtomicUsize,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    order: Mutex<Vec<String>>,
}

impl MemStore {
    fn new(delay: Duration) -> Self {
        MemStore {
            delay,
            ..Default::default()
        }
    }
    fn with(self, key: &str, len: usize) -> Self {
        self.objects
            .lock()
            .unwrap()
            .insert(key.into(), Bytes::from(vec![7u8; len]));
        self
    }
}

struct ActiveGuard(Arc<AtomicUsize>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl FileTransferHandler for MemStore {
    fn name(&self) -> &str {
        "mem"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn url_for(&self, key: &str) -> String {
        object_url("s3", "mem", key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<String> {
        (url.scheme == "s3" && url.authority == "mem").then(|| url.path.clone())
    }
    async fn upload(
        &self,
        key: &str,
        source: UploadSource,
        _opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let UploadSource::Path(p) = source else {
            return Err(Error::not_supported("mem", "stream upload"));
        };
        let data = std::fs::read(&p).map_err(|e| Error::from_io(p.display().to_string(), e))?;
        for chunk in data.chunks(65536) {
            ctx.cancellable(key, async {
                tokio::time::sleep(self.delay).await;
                Ok(())
            })
            .await?;
            ctx.add_progress(chunk.len() as u64);
        }
        let size = data.len() as u64;
        self.objects.lock().unwrap().insert(key.into(), data.into());
        Ok(RemoteObject::new(self.url_for(key), key, size))
    }
    async fn download_stream(
        &self,
        key: &str,
        _range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        self.order.lock().unwrap().push(key.to_string());
        let data = self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found(self.url_for(key)))?;
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let guard = ActiveGuard(self.active.clone());
        let delay = self.delay;
        let chunks: Vec<Bytes> = (0..data.len())
            .step_by(65536)
            .map(|i| data.slice(i..(i + 65536).min(data.len())))
            .collect();
        let stream = futures::stream::iter(chunks).then(move |c| {
            let _g = &guard;
            async move {
                tokio::time::sleep(delay).await;
                Ok(c)
            }
        });
        let obj = RemoteObject::new(self.url_for(key), key, data.len() as u64);
        Ok((obj, Box::pin(stream)))
    }
    async fn stat(&self, key: &str) -> Result<RemoteObject> {
        Err(Error::not_found(self.url_for(key)))
    }
    fn list(&self, _prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        futures::stream::empty().boxed()
    }
    async fn delete(&self, _key: &str) -> Result<()> {
        Ok(())
    }
    async fn copy(&self, from: &str, _to: &str) -> Result<RemoteObject> {
        Err(Error::not_supported(from, "copy"))
    }
    async fn presign(&self, k: &str, _m: PresignMethod, _e: Duration) -> Result<PresignedUrl> {
        Err(Error::not_supported(k, "presign"))
    }
    async fn list_pending_uploads(&self, _p: &str) -> Result<Vec<PendingUpload>> {
        Ok(vec![])
    }
}

fn manager(store: Arc<MemStore>, concurrency: usize) -> TransferManager {
    let mut reg = Registry::new();
    reg.register(store);
    TransferManager::with_concurrency(Arc::new(reg), concurrency)
}

fn recorder(m: &TransferManager) -> Arc<Mutex<Vec<FileInfo>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    m.add_listener(Arc::new(move |i: &FileInfo| {
        l.lock().unwrap().push(i.clone())
    }));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_instances_for_one_url_download_once() {
    let store = Arc::new(MemStore::new(Duration::from_millis(5)).with("big", 1 << 20));
    let m = manager(store.clone(), 4);
    let url = store.url_for("big");
    let dir = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (m, url) = (m.clone(), url.clone());
        let dest = dir.path().join(format!("d{i}"));
        tasks.push(tokio::spawn(async move {
            let t = m
                .file_instance(TransferRequest::download(url, dest))
                .unwrap();
            t.start();
            t
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut any = None;
    for t in tasks {
        let t = t.await.unwrap();
        ids.insert(t.id());
        any = Some(t);
    }
    let fin = any.unwrap().wait().await;
    assert_eq!(fin.status, TransferStatus::Completed, "{:?}", fin.error);
    assert_eq!(ids.len(), 1, "one transfer for one URL");
    assert_eq!(store.downloads.load(Ordering::SeqCst), 1);
    // Once complete, a new request is a new transfer.
    let again = m
        .file_instance(TransferRequest::download(url, dir.path().join("again")))
        .unwrap();
    assert!(!ids.contains(&again.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_transfer_is_cancelled_within_a_second_and_leaves_no_file() {
    // 16 MiB at 64 KiB per 20 ms would take 5 s.
    let store = Arc::new(MemStore::new(Duration::from_millis(20)).with("slow", 16 << 20));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("slow.bin");
    let t = m
        .start(TransferRequest::download(store.url_for("slow"), &dest))
        .unwrap();
    let mut rx = t.subscribe();
    while rx.borrow_and_update().transferred == 0 {
        rx.changed().await.unwrap();
    }
    let at = Instant::now();
    t.stop();
    let fin = t.wait().await;
    assert!(
        at.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        at.elapsed()
    );
    assert_eq!(fin.status, TransferStatus::Cancelled);
    assert!(fin.transferred > 0 && fin.transferred < 16 << 20);
    assert!(!dest.exists(), "partial file left under the final name");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_see_ordered_monotonic_progress_ending_at_size() {
    let store = Arc::new(MemStore::new(Duration::from_millis(1)).with("k", 1_000_000));
    let m = manager(store.clone(), 4);
    let log = recorder(&m);
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for("k"),
            dir.path().join("k"),
        ))
        .unwrap();
    let fin = t.wait().await;
    assert_eq!(fin.status, TransferStatus::Completed);
    let log = log.lock().unwrap().clone();
    let statuses: Vec<TransferStatus> = log.iter().map(|i| i.status).collect();
    assert_eq!(statuses.first(), Some(&TransferStatus::Queued));
    assert_eq!(statuses.last(), Some(&TransferStatus::Completed));
    let first_progress = statuses
        .iter()
        .position(|s| *s == TransferStatus::InProgress)
        .unwrap();
    assert!(
        statuses[first_progress..statuses.len() - 1]
            .iter()
            .all(|s| *s == TransferStatus::InProgress)
    );
    let mut last = 0;
    for i in &log {
        assert!(i.transferred >= last, "progress went back");
        last = i.transferred;
    }
    assert_eq!(last, 1_000_000);
    assert_eq!(fin.size, Some(1_000_000));
    assert!(
        log.len() > 10,
        "progress reported per chunk, got {} events",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_cap_is_respected() {
    let mut store = MemStore::new(Duration::from_millis(2));
    for i in 0..6 {
        store = store.with(&format!("o{i}"), 300_000);
    }
    let store = Arc::new(store);
    let m = manager(store.clone(), 2);
    let dir = tempfile::tempdir().unwrap();
    let ts: Vec<_> = (0..6)
        .map(|i| {
            m.start(TransferRequest::download(
                store.url_for(&format!("o{i}")),
                dir.path().join(format!("o{i}")),
            ))
            .unwrap()
        })
        .collect();
    for t in ts {
        assert_eq!(t.wait().await.status, TransferStatus::Completed);
    }
    assert_eq!(store.max_active.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_transfers_start_by_priority_and_stop_while_queued() {
    let store = Arc::new(
        MemStore::new(Duration::from_millis(1))
            .with("low", 10)
            .with("high", 10)
            .with("mid", 10)
            .with("never", 10),
    );
    let m = manager(store.clone(), 1);
    m.set_enabled(false);
    assert!(!m.is_enabled());
    let dir = tempfile::tempdir().unwrap();
    let req = |k: &str, p| {
        TransferRequest::download(store.url_for(k), dir.path().join(k)).with_priority(p)
    };
    let low = m.start(req("low", 1)).unwrap();
    let never = m.start(req("never", 9)).unwrap();
    let high = m.start(req("high", 10)).unwrap();
    let mid = m.start(req("mid", 5)).unwrap();
    assert_eq!(low.info().status, TransferStatus::Queued);
    never.stop();
    assert_eq!(never.info().status, TransferStatus::Cancelled);
    // start is idempotent
    high.start();
    m.set_enabled(true);
    for t in [&low, &high, &mid] {
        assert_eq!(t.wait().await.status, TransferStatus::Completed);
    }
    assert_eq!(*store.order.lock().unwrap(), vec!["high", "mid", "low"]);
    assert!(!dir.path().join("never").exists());
}

#[tokio::test]
async fn failures_are_reported_with_the_error() {
    let store = Arc::new(MemStore::new(Duration::ZERO));
    let m = manager(store.clone(), 1);
    let log = recorder(&m);
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for("missing"),
            dir.path().join("x"),
        ))
        .unwrap();
    let fin = t.wait().await;
    assert_eq!(fin.status, TransferStatus::Failed);
    assert_eq!(fin.error_kind, Some(ErrorKind::NotFound));
    assert!(fin.error.unwrap().contains("s3://mem/missing"));
    assert_eq!(
        log.lock().unwrap().last().unwrap().status,
        TransferStatus::Failed
    );

    let e = m
        .file_instance(TransferRequest::download(
            "gs://elsewhere/k",
            dir.path().join("y"),
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidUrl);
    let e = m
        .file_instance(TransferRequest::download("not a url", dir.path().join("y")))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidUrl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_upload_source_and_destination_is_one_transfer() {
    let store = Arc::new(MemStore::new(Duration::from_millis(5)));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s");
    std::fs::write(&src, vec![1u8; 200_000]).unwrap();
    let a = m
        .start(TransferRequest::upload(&src, store.url_for("dst")))
        .unwrap();
    let b = m
        .start(TransferRequest::upload(&src, store.url_for("dst")))
        .unwrap();
    let c = m
        .start(TransferRequest::upload(&src, store.url_for("other")))
        .unwrap();
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), c.id());
    assert_eq!(a.wait().await.status, TransferStatus::Completed);
    assert_eq!(c.wait().await.status, TransferStatus::Completed);
    let fin = a.info();
    assert_eq!((fin.transferred, fin.size), (200_000, Some(200_000)));
}
