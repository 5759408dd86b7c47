//! Transfer manager semantics against an in-memory store with slow reads.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xferkit_core::Key;

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
    /// How long a stopped upload's cleanup (its "abort") takes.
    abort_delay: Duration,
    aborts_done: AtomicUsize,
    /// Serves ranges (so big downloads go as ranged, resumable ones).
    ranges: bool,
    /// Bytes handed out by download streams.
    served: Arc<std::sync::atomic::AtomicU64>,
    downloads: AtomicUsize,
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
    order: Mutex<Vec<String>>,
    /// How long the request that makes an upload visible takes (after
    /// `ctx.commit`); `committing` is set while it runs.
    commit_delay: Duration,
    committing: std::sync::atomic::AtomicBool,
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
        let mut c = Capabilities::default();
        c.range = self.ranges;
        c
    }
    fn schemes(&self) -> &[&str] {
        &["s3"]
    }
    fn url_for(&self, key: &Key) -> String {
        object_url("s3", "mem", key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        (url.scheme == "s3" && url.authority == "mem")
            .then(|| Key::new(url.path.as_str()).ok())
            .flatten()
    }
    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        _opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let data = match source {
            UploadSource::Path(p) => {
                std::fs::read(&p).map_err(|e| Error::from_io(p.display().to_string(), e))?
            }
            UploadSource::Stream { mut stream, .. } => {
                let mut v = Vec::new();
                while let Some(c) = stream.next().await {
                    v.extend_from_slice(&c?);
                }
                v
            }
        };
        for chunk in data.chunks(65536) {
            let step = ctx
                .cancellable(key, async {
                    tokio::time::sleep(self.delay).await;
                    Ok(())
                })
                .await;
            if let Err(e) = step {
                // Like a multipart abort: cleanup that takes its time.
                tokio::time::sleep(self.abort_delay).await;
                self.aborts_done.fetch_add(1, Ordering::SeqCst);
                return Err(e);
            }
            ctx.add_progress(chunk.len() as u64);
        }
        let size = data.len() as u64;
        // Like a multipart complete: past this point a stop is too late.
        ctx.commit(key)?;
        self.committing.store(true, Ordering::SeqCst);
        tokio::time::sleep(self.commit_delay).await;
        self.objects.lock().unwrap().insert(key.into(), data.into());
        Ok(RemoteObject::new(self.url_for(key), key, size))
    }
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        self.order.lock().unwrap().push(key.to_string());
        let data = self
            .objects
            .lock()
            .unwrap()
            .get(key.as_str())
            .cloned()
            .ok_or_else(|| Error::not_found(self.url_for(key)))?;
        let mut obj = RemoteObject::new(self.url_for(key), key, data.len() as u64);
        obj.etag = Some(format!("{}", data.len()));
        let data = match range {
            Some(r) => data.slice(
                r.resolve(data.len() as u64, key)?.start as usize..{
                    let span = r.resolve(data.len() as u64, key)?;
                    span.end as usize
                },
            ),
            None => data,
        };
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now, Ordering::SeqCst);
        let guard = ActiveGuard(self.active.clone());
        let delay = self.delay;
        let chunks: Vec<Bytes> = (0..data.len())
            .step_by(65536)
            .map(|i| data.slice(i..(i + 65536).min(data.len())))
            .collect();
        let served = self.served.clone();
        let stream = futures::stream::iter(chunks).then(move |c| {
            let _g = &guard;
            let served = served.clone();
            async move {
                tokio::time::sleep(delay).await;
                served.fetch_add(c.len() as u64, Ordering::SeqCst);
                Ok(c)
            }
        });
        Ok((obj, Box::pin(stream)))
    }
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        let len = self
            .objects
            .lock()
            .unwrap()
            .get(key.as_str())
            .map(Bytes::len)
            .ok_or_else(|| Error::not_found(self.url_for(key)))?;
        let mut obj = RemoteObject::new(self.url_for(key), key, len as u64);
        obj.etag = Some(format!("{len}"));
        Ok(obj)
    }
    fn list(&self, _prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        futures::stream::empty().boxed()
    }
    async fn delete(&self, _key: &Key) -> Result<()> {
        Ok(())
    }
    async fn copy(&self, from: &Key, _to: &Key) -> Result<RemoteObject> {
        Err(Error::not_supported(from, "copy"))
    }
    async fn presign(&self, k: &Key, _m: PresignMethod, _e: Duration) -> Result<PresignedUrl> {
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

/// The registry resolves by the schemes its stores report; another scheme
/// is refused by name, with the URL and the schemes served.
#[test]
fn the_registry_serves_the_schemes_its_stores_report() {
    let mut reg = Registry::new();
    assert!(reg.schemes().is_empty());
    reg.register(Arc::new(MemStore::new(Duration::ZERO)));
    assert_eq!(reg.schemes(), ["s3"]);
    assert_eq!(reg.resolve("s3://mem/a/b").unwrap().1, "a/b");
    let e = reg.resolve("gs://mem/a/b").unwrap_err();
    assert_eq!(e.kind(), xferkit_core::ErrorKind::InvalidUrl);
    assert_eq!(
        e.to_string(),
        "invalid URL \"gs://mem/a/b\": unsupported scheme 'gs': no configured store \
         serves it (stores: mem; schemes served: s3)"
    );
    // The URL's own faults come first (a password is not repeated).
    let e = reg.resolve("gs://u:SECRET@mem/a").unwrap_err();
    assert!(e.to_string().contains("credentials"), "{e}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    // A served scheme with a foreign bucket is still "no store owns it".
    let e = reg.resolve("s3://other/k").unwrap_err();
    assert!(e.to_string().contains("no configured store owns"), "{e}");
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
async fn hundred_callers_of_one_url_each_get_their_file_from_one_download() {
    let store = Arc::new(MemStore::new(Duration::from_millis(5)).with("big", 1 << 20));
    let m = manager(store.clone(), 4);
    let url = store.url_for(&Key::new("big").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (m, url, b) = (m.clone(), url.clone(), barrier.clone());
        let dest = dir.path().join(format!("d{i}"));
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            let t = m
                .file_instance(TransferRequest::download(url, dest))
                .unwrap();
            t.start();
            t
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut handles = Vec::new();
    for t in tasks {
        let t = t.await.unwrap();
        ids.insert(t.id());
        handles.push(t);
    }
    assert_eq!(ids.len(), 100, "each caller has its own handle");
    for t in &handles {
        let fin = t.wait().await.unwrap();
        assert_eq!(fin.transferred, 1 << 20);
        assert_eq!(std::fs::read(&fin.path).unwrap(), vec![7u8; 1 << 20]);
    }
    assert_eq!(store.downloads.load(Ordering::SeqCst), 1, "one GET");
    // Only the 100 files: no temp file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 100);
    // The same URL and destination again, while in flight, is the same
    // handle; once complete, a new request is a new transfer.
    let again = m
        .file_instance(TransferRequest::download(url, dir.path().join("again")))
        .unwrap();
    assert!(!ids.contains(&again.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_url_and_destination_is_the_same_handle() {
    let store = Arc::new(MemStore::new(Duration::from_millis(5)).with("k", 300_000));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let req = || {
        TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("one"),
        )
    };
    let a = m.start(req()).unwrap();
    let b = m.start(req()).unwrap();
    assert_eq!(a.id(), b.id());
    a.wait().await.unwrap();
    assert_eq!(store.downloads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_leaves_the_others_their_download() {
    // 4 MiB at 64 KiB per 10 ms: about 0.6 s.
    let store = Arc::new(MemStore::new(Duration::from_millis(10)).with("k", 4 << 20));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let url = store.url_for(&Key::new("k").unwrap());
    let (a, b) = two_callers(&m, &url, dir.path()).await;
    // The first caller (whose destination names the temp files) stops.
    a.stop();
    assert_eq!(a.info().status, TransferStatus::Cancelled);
    let fin = b.wait().await.unwrap();
    assert_eq!(fin.transferred, 4 << 20);
    assert_eq!(std::fs::read(dir.path().join("b")).unwrap().len(), 4 << 20);
    assert!(
        !dir.path().join("a").exists(),
        "a stopped caller got a file"
    );
    assert_eq!(store.downloads.load(Ordering::SeqCst), 1);
    assert!(m.settled(Duration::from_secs(5)).await);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // When every caller stops, the download stops and leaves nothing.
    let c = m
        .start(TransferRequest::download(&url, dir.path().join("c")))
        .unwrap();
    let d = m
        .start(TransferRequest::download(&url, dir.path().join("d")))
        .unwrap();
    until_transferred(&c, 1).await;
    c.stop();
    d.stop();
    assert_eq!(d.wait().await.unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(m.settled(Duration::from_secs(5)).await);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unwritable_destination_fails_only_its_caller() {
    let store = Arc::new(MemStore::new(Duration::from_millis(2)).with("k", 200_000));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let url = store.url_for(&Key::new("k").unwrap());
    let good = m
        .start(TransferRequest::download(&url, dir.path().join("good")))
        .unwrap();
    let bad_dest = dir.path().join("no-such-dir").join("bad");
    let bad = m.start(TransferRequest::download(&url, &bad_dest)).unwrap();
    assert_eq!(good.wait().await.unwrap().transferred, 200_000);
    let e = bad.wait().await.unwrap_err();
    assert_eq!(e.info().status, TransferStatus::Failed);
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("good")).unwrap().len(),
        200_000
    );
    assert_eq!(store.downloads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_mid_transfer_is_cancelled_within_a_second_and_leaves_no_file() {
    // 16 MiB at 64 KiB per 20 ms would take 5 s.
    let store = Arc::new(MemStore::new(Duration::from_millis(20)).with("slow", 16 << 20));
    let m = manager(store.clone(), 4);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("slow.bin");
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("slow").unwrap()),
            &dest,
        ))
        .unwrap();
    until_transferred(&t, 1).await;
    let at = Instant::now();
    t.stop();
    let fin = t.wait_info().await;
    assert!(
        at.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        at.elapsed()
    );
    assert_eq!(fin.status, TransferStatus::Cancelled);
    assert!(fin.transferred > 0 && fin.transferred < 16 << 20);
    assert!(!dest.exists(), "partial file left under the final name");
    // The temp file goes with the cleanup, which `settled` waits for.
    assert!(m.settled(Duration::from_secs(5)).await);
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
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("k"),
        ))
        .unwrap();
    let fin = t.wait_info().await;
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
                store.url_for(&Key::new(format!("o{i}")).unwrap()),
                dir.path().join(format!("o{i}")),
            ))
            .unwrap()
        })
        .collect();
    for t in ts {
        assert_eq!(t.wait_info().await.status, TransferStatus::Completed);
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
        TransferRequest::download(store.url_for(&Key::new(k).unwrap()), dir.path().join(k))
            .with_priority(p)
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
        assert_eq!(t.wait_info().await.status, TransferStatus::Completed);
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
            store.url_for(&Key::new("missing").unwrap()),
            dir.path().join("x"),
        ))
        .unwrap();
    let fin = t.wait_info().await;
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
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("dst").unwrap()),
        ))
        .unwrap();
    let b = m
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("dst").unwrap()),
        ))
        .unwrap();
    let c = m
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("other").unwrap()),
        ))
        .unwrap();
    assert_eq!(a.id(), b.id());
    assert_ne!(a.id(), c.id());
    assert_eq!(a.wait_info().await.status, TransferStatus::Completed);
    assert_eq!(c.wait_info().await.status, TransferStatus::Completed);
    let fin = a.info();
    assert_eq!((fin.transferred, fin.size), (200_000, Some(200_000)));
}

/// Waits for `t` to end, failing (not hanging) if a listener deadlocked it.
async fn ended(t: &xferkit_core::Transfer) -> FileInfo {
    tokio::time::timeout(Duration::from_secs(10), t.wait_info())
        .await
        .expect("the transfer did not end within 10 s: a listener deadlocked it?")
}

/// A listener for the transfer in `slot` that, on that transfer's first
/// progress snapshot, calls `act` once.
fn on_first_progress(
    m: &TransferManager,
    slot: Arc<std::sync::OnceLock<xferkit_core::Transfer>>,
    act: impl Fn(&xferkit_core::Transfer) + Send + Sync + 'static,
) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    m.add_listener(Arc::new(move |i: &FileInfo| {
        if let Some(t) = slot.get()
            && t.id() == i.id
            && i.transferred > 0
            && c.fetch_add(1, Ordering::SeqCst) == 0
        {
            act(t);
        }
    }));
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_may_call_info_start_and_stop_on_its_own_transfer() {
    let store = Arc::new(MemStore::new(Duration::from_millis(5)).with("k", 2 << 20));
    let dir = tempfile::tempdir().unwrap();

    // info() and start() from inside the listener.
    let m = manager(store.clone(), 2);
    let slot = Arc::new(std::sync::OnceLock::new());
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    on_first_progress(&m, slot.clone(), move |t| {
        *s2.lock().unwrap() = Some(t.info().transferred);
        t.start();
    });
    let t = m
        .file_instance(TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("a"),
        ))
        .unwrap();
    slot.set(t.clone()).unwrap();
    t.start();
    assert_eq!(ended(&t).await.status, TransferStatus::Completed);
    assert!(seen.lock().unwrap().is_some_and(|n| n > 0));

    // stop() from inside the listener: Cancelled, and the listener hears it.
    let m = manager(store.clone(), 2);
    let log = recorder(&m);
    let slot = Arc::new(std::sync::OnceLock::new());
    on_first_progress(&m, slot.clone(), |t| t.stop());
    let t = m
        .file_instance(TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("b"),
        ))
        .unwrap();
    slot.set(t.clone()).unwrap();
    t.start();
    assert_eq!(ended(&t).await.status, TransferStatus::Cancelled);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.last().unwrap().status, TransferStatus::Cancelled);
    let mut last = 0;
    for i in &log {
        assert!(i.transferred >= last, "snapshots out of order");
        last = i.transferred;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_may_start_and_stop_other_transfers_and_add_listeners() {
    let store = Arc::new(
        MemStore::new(Duration::from_millis(5))
            .with("k", 1 << 20)
            .with("other", 300_000)
            .with("victim", 4 << 20),
    );
    let dir = tempfile::tempdir().unwrap();
    let m = manager(store.clone(), 4);
    let victim = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("victim").unwrap()),
            dir.path().join("victim"),
        ))
        .unwrap();
    let started = Arc::new(std::sync::OnceLock::new());
    let added = Arc::new(AtomicUsize::new(0));
    let slot = Arc::new(std::sync::OnceLock::new());
    let (m2, st2, add2, v2) = (m.clone(), started.clone(), added.clone(), victim.clone());
    let other = TransferRequest::download(
        store.url_for(&Key::new("other").unwrap()),
        dir.path().join("other"),
    );
    on_first_progress(&m, slot.clone(), move |_| {
        // Start another transfer, stop a third, and add a listener.
        st2.set(m2.start(other.clone()).unwrap()).unwrap();
        v2.stop();
        let a = add2.clone();
        m2.add_listener(Arc::new(move |_: &FileInfo| {
            a.fetch_add(1, Ordering::SeqCst);
        }));
    });
    let t = m
        .file_instance(TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("k"),
        ))
        .unwrap();
    slot.set(t.clone()).unwrap();
    t.start();
    assert_eq!(ended(&t).await.status, TransferStatus::Completed);
    let other = started.get().expect("the listener started no transfer");
    assert_eq!(ended(other).await.status, TransferStatus::Completed);
    assert_eq!(ended(&victim).await.status, TransferStatus::Cancelled);
    assert!(
        added.load(Ordering::SeqCst) > 0,
        "the added listener heard nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_after_every_listener_saw_the_end() {
    let store = Arc::new(MemStore::new(Duration::from_millis(1)).with("k", 300_000));
    let m = manager(store.clone(), 2);
    let finals = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let f = finals.clone();
        m.add_listener(Arc::new(move |i: &FileInfo| {
            if i.status.is_terminal() {
                // A slow listener: wait() must still come after it.
                std::thread::sleep(Duration::from_millis(50));
                f.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("k"),
        ))
        .unwrap();
    t.wait().await.unwrap();
    assert_eq!(finals.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_does_not_stop_the_transfer() {
    let store = Arc::new(MemStore::new(Duration::from_millis(1)).with("k", 300_000));
    let m = manager(store.clone(), 2);
    m.add_listener(Arc::new(|_: &FileInfo| panic!("listener bug")));
    let log = recorder(&m);
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("k").unwrap()),
            dir.path().join("k"),
        ))
        .unwrap();
    assert_eq!(ended(&t).await.status, TransferStatus::Completed);
    assert_eq!(
        log.lock().unwrap().last().unwrap().status,
        TransferStatus::Completed
    );
}

#[tokio::test]
async fn wait_gives_the_typed_error() {
    let store = Arc::new(MemStore::new(Duration::ZERO));
    let m = manager(store.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("missing").unwrap()),
            dir.path().join("x"),
        ))
        .unwrap();
    let e = t.wait().await.unwrap_err();
    assert!(matches!(e.error(), Error::NotFound { target, .. } if target == "s3://mem/missing"));
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(e.info().status, TransferStatus::Failed);
    let src: &dyn std::error::Error = &e;
    assert!(src.source().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_streams_and_readers_upload_through_the_manager() {
    let store = Arc::new(MemStore::new(Duration::ZERO));
    let m = manager(store.clone(), 2);
    let log = recorder(&m);
    let a = m
        .start(TransferRequest::upload_bytes(
            vec![1u8; 100_000],
            store.url_for(&Key::new("bytes").unwrap()),
        ))
        .unwrap();
    let chunks: Vec<Result<Bytes>> = (0..10)
        .map(|_| Ok(Bytes::from(vec![2u8; 10_000])))
        .collect();
    let b = m
        .start(TransferRequest::upload_stream(
            Box::pin(futures::stream::iter(chunks)),
            None,
            store.url_for(&Key::new("stream").unwrap()),
        ))
        .unwrap();
    let c = m
        .start(TransferRequest::upload_reader(
            std::io::Cursor::new(vec![3u8; 70_000]),
            Some(70_000),
            store.url_for(&Key::new("reader").unwrap()),
        ))
        .unwrap();
    // The same bytes to the same URL twice are two transfers.
    let d = m
        .start(TransferRequest::upload_bytes(
            vec![1u8; 100_000],
            store.url_for(&Key::new("bytes").unwrap()),
        ))
        .unwrap();
    assert_ne!(a.id(), d.id());
    for (t, key, len, byte) in [
        (&a, "bytes", 100_000, 1u8),
        (&b, "stream", 100_000, 2),
        (&c, "reader", 70_000, 3),
    ] {
        let fin = t.wait().await.unwrap();
        assert_eq!(fin.transferred, len as u64, "{key}");
        assert_eq!(
            store.objects.lock().unwrap()[key],
            Bytes::from(vec![byte; len])
        );
    }
    d.wait().await.unwrap();
    let log = log.lock().unwrap();
    let of_b: Vec<_> = log.iter().filter(|i| i.id == b.id()).collect();
    assert_eq!(of_b.last().unwrap().status, TransferStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_at_once_and_the_slow_cleanup_finishes_in_the_background() {
    let mut store = MemStore::new(Duration::from_millis(20));
    store.abort_delay = Duration::from_millis(1500);
    let store = Arc::new(store);
    let m = manager(store.clone(), 1);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s");
    std::fs::write(&src, vec![1u8; 4 << 20]).unwrap();
    let t = m
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("up").unwrap()),
        ))
        .unwrap();
    until_transferred(&t, 1).await;
    let at = Instant::now();
    t.stop();
    let e = t.wait().await.unwrap_err();
    assert!(
        at.elapsed() < Duration::from_millis(200),
        "{:?}",
        at.elapsed()
    );
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(store.aborts_done.load(Ordering::SeqCst), 0);
    // The cleanup keeps its slot: a transfer queued behind it waits.
    let next = m
        .start(TransferRequest::upload_bytes(
            vec![0u8; 10],
            store.url_for(&Key::new("next").unwrap()),
        ))
        .unwrap();
    assert_eq!(next.info().status, TransferStatus::Queued);
    // shutdown stops the queued one and waits for the cleanup.
    assert!(m.shutdown(Duration::from_secs(10)).await);
    assert_eq!(store.aborts_done.load(Ordering::SeqCst), 1);
    assert!(at.elapsed() >= Duration::from_millis(1500));
    assert_eq!(next.info().status, TransferStatus::Cancelled);
    // Nothing starts after a shutdown.
    let late = m
        .start(TransferRequest::upload_bytes(
            vec![0u8; 10],
            store.url_for(&Key::new("late").unwrap()),
        ))
        .unwrap();
    assert_eq!(late.info().status, TransferStatus::Cancelled);
}

/// Waits until `t` reports at least `n` bytes.
async fn until_transferred(t: &xferkit_core::Transfer, n: u64) {
    let mut rx = t.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while rx.borrow_and_update().transferred < n {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("no progress within 10 s");
}

fn ranged(store: &Arc<MemStore>, concurrency: usize) -> TransferManager {
    let m = manager(store.clone(), concurrency);
    m.set_download_options(
        xferkit_core::DownloadOptions::default()
            .with_part_size(1 << 20)
            .with_parallel_threshold(2 << 20)
            .with_concurrency(2),
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_download_resumes_from_what_it_kept() {
    let mut store = MemStore::new(Duration::from_millis(4)).with("big", 8 << 20);
    store.ranges = true;
    let store = Arc::new(store);
    let m = ranged(&store, 2);
    let log = recorder(&m);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big");
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("big").unwrap()),
            &dest,
        ))
        .unwrap();
    until_transferred(&t, 3 << 20).await;
    t.pause();
    assert_eq!(t.info().status, TransferStatus::Paused);
    assert!(m.settled(Duration::from_secs(5)).await);
    let before = t.info().transferred;
    assert!(!dest.exists());
    let kept: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter().any(|n| n.ends_with(".xferkit-partial.json")),
        "no journal kept: {kept:?}"
    );
    let served_at_pause = store.served.load(Ordering::SeqCst);
    t.resume();
    let fin = t.wait().await.unwrap();
    assert_eq!(fin.transferred, 8 << 20);
    assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 8 << 20]);
    let resent = store.served.load(Ordering::SeqCst) - served_at_pause;
    assert!(
        resent <= (8 << 20) - before + (2 << 20),
        "resume fetched {resent} bytes; {before} of {} were done",
        8 << 20
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let statuses: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i.id == t.id())
        .map(|i| i.status)
        .collect();
    assert!(statuses.contains(&TransferStatus::Paused));
    let mut last = 0;
    for i in log.lock().unwrap().iter().filter(|i| i.id == t.id()) {
        assert!(i.transferred >= last, "progress went back after resume");
        last = i.transferred;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_paused_download_throws_away_what_it_kept() {
    let mut store = MemStore::new(Duration::from_millis(4)).with("big", 8 << 20);
    store.ranges = true;
    let store = Arc::new(store);
    let m = ranged(&store, 2);
    let dir = tempfile::tempdir().unwrap();
    let t = m
        .start(TransferRequest::download(
            store.url_for(&Key::new("big").unwrap()),
            dir.path().join("big"),
        ))
        .unwrap();
    until_transferred(&t, 3 << 20).await;
    t.pause();
    assert!(m.settled(Duration::from_secs(5)).await);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() > 0);
    t.stop();
    assert_eq!(t.wait().await.unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(m.settled(Duration::from_secs(5)).await);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_one_caller_leaves_the_others_running_and_an_upload_pauses_too() {
    let store = Arc::new(MemStore::new(Duration::from_millis(4)).with("k", 2 << 20));
    let m = manager(store.clone(), 2);
    let dir = tempfile::tempdir().unwrap();
    let url = store.url_for(&Key::new("k").unwrap());
    let (a, b) = two_callers(&m, &url, dir.path()).await;
    a.pause();
    b.wait().await.unwrap();
    assert_eq!(a.info().status, TransferStatus::Paused);
    assert!(!dir.path().join("a").exists());
    a.resume();
    a.wait().await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap().len(), 2 << 20);

    // An upload pauses and resumes (this store keeps nothing: it restarts).
    let src = dir.path().join("src");
    std::fs::write(&src, vec![5u8; 2 << 20]).unwrap();
    let u = m
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("up").unwrap()),
        ))
        .unwrap();
    until_transferred(&u, 1).await;
    u.pause();
    assert_eq!(u.info().status, TransferStatus::Paused);
    // pause and start are no-ops where they do not apply.
    u.pause();
    u.resume();
    assert_eq!(u.wait().await.unwrap().transferred, 2 << 20);
    u.pause();
    assert_eq!(u.info().status, TransferStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_under_both_caps_goes_no_faster_than_the_lower() {
    let mut store = MemStore::new(Duration::ZERO).with("big", 4 << 20);
    store.ranges = true;
    let store = Arc::new(store);
    let m = ranged(&store, 2);
    // 8 MiB/s for the manager, 4 MiB/s for this transfer: 4 MiB in ~1 s.
    m.set_bandwidth_limit(Some(8 << 20));
    assert_eq!(m.bandwidth_limit(), Some(8 << 20));
    let dir = tempfile::tempdir().unwrap();
    let at = Instant::now();
    let t = m
        .start(
            TransferRequest::download(
                store.url_for(&Key::new("big").unwrap()),
                dir.path().join("big"),
            )
            .with_bandwidth_limit(4 << 20),
        )
        .unwrap();
    t.wait().await.unwrap();
    let took = at.elapsed();
    // Not a timing test of the machine: a cap can only slow a transfer, and
    // an uncapped in-memory 4 MiB takes milliseconds.
    assert!(took >= Duration::from_millis(900), "{took:?}");
}

/// Two callers downloading `url` to `dir/a` and `dir/b`, once bytes flow.
async fn two_callers(
    m: &TransferManager,
    url: &str,
    dir: &std::path::Path,
) -> (xferkit_core::Transfer, xferkit_core::Transfer) {
    let a = m
        .start(TransferRequest::download(url, dir.join("a")))
        .unwrap();
    let b = m
        .start(TransferRequest::download(url, dir.join("b")))
        .unwrap();
    until_transferred(&a, 1).await;
    (a, b)
}

/// A stop that arrives while the store is making the upload visible (a
/// multipart complete on the wire) is too late: the transfer completes and
/// says so, instead of reporting `Cancelled` ("nothing was written") for an
/// object the store then shows. A stop before that point still cancels, and
/// the store is never asked to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_commit_is_too_late_and_the_transfer_completes() {
    let mut store = MemStore::new(Duration::from_millis(1));
    store.commit_delay = Duration::from_millis(400);
    let store = Arc::new(store);
    let m = manager(store.clone(), 4);
    let t = m
        .start(TransferRequest::upload_bytes(
            vec![1u8; 100_000],
            store.url_for(&Key::new("late").unwrap()),
        ))
        .unwrap();
    while !store.committing.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t.stop();
    t.pause();
    let fin = ended(&t).await;
    assert_eq!(fin.status, TransferStatus::Completed, "{fin:?}");
    assert!(store.objects.lock().unwrap().contains_key("late"));

    // Stopped before the commit: cancelled, and nothing is made visible.
    let mut slow = MemStore::new(Duration::from_millis(20));
    slow.commit_delay = Duration::from_millis(1);
    let slow = Arc::new(slow);
    let m = manager(slow.clone(), 4);
    let t = m
        .start(TransferRequest::upload_bytes(
            vec![1u8; 1_000_000],
            slow.url_for(&Key::new("early").unwrap()),
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.stop();
    let fin = ended(&t).await;
    assert_eq!(fin.status, TransferStatus::Cancelled, "{fin:?}");
    assert!(m.settled(Duration::from_secs(5)).await);
    assert!(!slow.committing.load(Ordering::SeqCst));
    assert!(!slow.objects.lock().unwrap().contains_key("early"));
}

// ---------- the layer seam (xferkit_core::layer) ----------

/// What the test layer attached to an upload.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Renamed {
    renamed_to: String,
}

/// A layer that moves every upload under `renamed/`, answers a key ending
/// in `known` from the store when it is there (sending nothing), tells
/// `#twin` links apart from the plain URL, and refuses `refuse` URLs.
#[derive(Debug)]
struct Renaming;

#[async_trait]
impl xferkit_core::TransferLayer for Renaming {
    fn prepare(&self, request: &mut TransferRequest) -> Result<()> {
        if request.url.contains("refuse") {
            return Err(Error::invalid_url(&request.url, "refused by the layer"));
        }
        if let Some(url) = request.url.strip_suffix("#twin") {
            request.url = url.to_string();
            request.add_identity("twin");
        }
        Ok(())
    }

    async fn upload(&self, up: &mut xferkit_core::layer::Upload<'_>) -> Result<RemoteObject> {
        up.key = Key::new(format!("renamed/{}", up.key))?;
        let renamed_to = up.key.to_string();
        up.extensions_mut().insert(Renamed { renamed_to });
        if up.key.ends_with("known")
            && let Ok(obj) = up.store.stat(&up.key).await
        {
            return Ok(up.found(obj));
        }
        up.send().await
    }
}

fn layered(store: Arc<MemStore>) -> TransferManager {
    let mut reg = Registry::new();
    reg.register(store);
    reg.set_layer(Arc::new(Renaming));
    TransferManager::new(Arc::new(reg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_chooses_the_key_and_its_extensions_reach_the_final_info() {
    let store = Arc::new(MemStore::new(Duration::ZERO));
    let m = layered(store.clone());
    let log = recorder(&m);
    let t = m
        .start(TransferRequest::upload_bytes(
            vec![1u8; 200_000],
            store.url_for(&Key::new("a").unwrap()),
        ))
        .unwrap();
    let fin = t.wait().await.unwrap();
    assert!(store.objects.lock().unwrap().contains_key("renamed/a"));
    assert_eq!(
        fin.url,
        store.url_for(&Key::new("renamed/a").unwrap()),
        "listeners see the layer's key"
    );
    assert_eq!(fin.transferred, 200_000);
    let want = Renamed {
        renamed_to: "renamed/a".into(),
    };
    assert_eq!(fin.extensions().get::<Renamed>(), Some(&want));
    assert!(format!("{fin:?}").contains("renamed_to"), "{fin:?}");
    let json = serde_json::to_value(&fin).unwrap();
    assert_eq!(json["renamed_to"], "renamed/a", "{json}");
    // Before the end, no snapshot carried the extension.
    let log = log.lock().unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.status, TransferStatus::Completed);
    assert!(
        log[..log.len() - 1]
            .iter()
            .all(|i| i.extensions().is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_a_layer_finds_stored_moves_nothing_and_says_so() {
    let store = Arc::new(MemStore::new(Duration::ZERO).with("renamed/known", 5000));
    let m = layered(store.clone());
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    std::fs::write(&src, vec![9u8; 5000]).unwrap();
    let fin = m
        .start(TransferRequest::upload(
            &src,
            store.url_for(&Key::new("known").unwrap()),
        ))
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(fin.status, TransferStatus::Completed);
    assert_eq!(fin.transferred, 0, "{fin:?}");
    assert_eq!(fin.size, Some(5000));
    assert_eq!(fin.object.unwrap().key, "renamed/known");
    // Untouched: the stored bytes are the 7s it held, not the file's 9s.
    assert_eq!(store.objects.lock().unwrap()["renamed/known"][0], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_prepares_requests_before_they_are_identified() {
    let store = Arc::new(MemStore::new(Duration::from_millis(20)).with("x", 1 << 20));
    let m = layered(store.clone());
    let e = m
        .file_instance(TransferRequest::download(
            store.url_for(&Key::new("refuse").unwrap()),
            "/tmp/x",
        ))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{e}");
    // The same URL and destination, told apart by the layer: two handles and
    // two network transfers; asked again, the same handle.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    let plain = TransferRequest::download(store.url_for(&Key::new("x").unwrap()), &dest);
    let twin = TransferRequest::download(
        format!("{}#twin", store.url_for(&Key::new("x").unwrap())),
        &dest,
    );
    let a = m.file_instance(plain.clone()).unwrap();
    let b = m.file_instance(twin.clone()).unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(
        b.info().url,
        store.url_for(&Key::new("x").unwrap()),
        "the layer's url"
    );
    assert_eq!(m.file_instance(twin).unwrap().id(), b.id());
    assert_eq!(m.file_instance(plain).unwrap().id(), a.id());
    a.start();
    b.start();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    assert_eq!(store.downloads.load(Ordering::SeqCst), 2);
}
