//! The download engine (`download_to_path_with`): concurrent ranges written
//! in place, per-range retries that continue where they stopped, resume from
//! a journal, etag guards and checksum verification, against an in-memory
//! store that counts what it serves and can cut responses short.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use xferkit_core::url::{ObjectUrl, object_url};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, DownloadOptions, Error, ErrorKind, FileTransferExt,
    FileTransferHandler, PendingUpload, PresignMethod, PresignedUrl, PutOptions, RemoteObject,
    Result, RetryPolicy, TransferCtx, UploadSource, async_trait,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * KIB;

/// How the store reports a checksum.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sum {
    None,
    Crc32c,
    Sha256,
    /// A crc32c of other bytes: every download must fail verification.
    WrongCrc32c,
}

/// One planned failure: the next GET whose range starts at `start` serves
/// `after` bytes, then fails with a transient error.
#[derive(Debug, Clone, Copy)]
struct Cut {
    start: u64,
    after: usize,
}

#[derive(Debug)]
struct RangeStore {
    data: Mutex<Bytes>,
    etag: Mutex<String>,
    sum: Sum,
    range: bool,
    /// Bytes handed out in stream chunks (as they are read), over all requests.
    served: Arc<AtomicU64>,
    /// (start, end) of every GET.
    gets: Mutex<Vec<(u64, u64)>>,
    cuts: Mutex<Vec<Cut>>,
    /// Replace the object (new data, new etag) when the n-th GET (1-based) arrives.
    change_at_get: Mutex<Option<(usize, Bytes)>>,
    get_count: AtomicUsize,
    /// A GET whose range starts here sends one chunk, then nothing, forever.
    hang_at: Mutex<Option<u64>>,
}

fn random_bytes(n: usize, seed: u64) -> Bytes {
    // xorshift: deterministic, no dependency
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v.into()
}

impl RangeStore {
    fn new(data: Bytes, sum: Sum) -> Self {
        RangeStore {
            data: Mutex::new(data),
            etag: Mutex::new("v1".into()),
            sum,
            range: true,
            served: Arc::new(AtomicU64::new(0)),
            gets: Mutex::new(Vec::new()),
            cuts: Mutex::new(Vec::new()),
            change_at_get: Mutex::new(None),
            get_count: AtomicUsize::new(0),
            hang_at: Mutex::new(None),
        }
    }
    fn cut(&self, start: usize, after: usize) {
        self.cuts.lock().unwrap().push(Cut {
            start: start as u64,
            after,
        });
    }
    fn replace(&self, data: Bytes, etag: &str) {
        *self.data.lock().unwrap() = data;
        *self.etag.lock().unwrap() = etag.into();
    }
    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
    fn gets(&self) -> Vec<(u64, u64)> {
        self.gets.lock().unwrap().clone()
    }
    /// The ranged GETs: every GET but the whole-object ones (the first GET
    /// of a download, dropped unread when the object is fetched in ranges).
    fn range_gets(&self) -> Vec<(u64, u64)> {
        let size = self.data.lock().unwrap().len() as u64;
        let mut v: Vec<_> = self
            .gets()
            .into_iter()
            .filter(|g| *g != (0, size))
            .collect();
        v.sort();
        v
    }
    fn record(&self, key: &str) -> RemoteObject {
        let data = self.data.lock().unwrap().clone();
        let mut o = RemoteObject::new(self.url_for(key), key, data.len() as u64);
        o.etag = Some(self.etag.lock().unwrap().clone());
        o.checksum = match self.sum {
            Sum::None => None,
            Sum::Crc32c => Some(format!("crc32c:{:08x}", crc32c::crc32c(&data))),
            Sum::WrongCrc32c => Some(format!("crc32c:{:08x}", crc32c::crc32c(b"other"))),
            Sum::Sha256 => Some(format!("sha256:{}", hex::encode(Sha256::digest(&data)))),
        };
        o
    }
}

#[async_trait]
impl FileTransferHandler for RangeStore {
    fn name(&self) -> &str {
        "mem"
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.range = self.range;
        c
    }
    fn schemes(&self) -> &[&str] {
        &["s3"]
    }
    fn url_for(&self, key: &str) -> String {
        object_url("s3", "mem", key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<String> {
        (url.scheme == "s3" && url.authority == "mem").then(|| url.path.clone())
    }
    async fn upload(
        &self,
        _key: &str,
        _source: UploadSource,
        _opts: &PutOptions,
        _ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        Err(Error::not_supported("mem", "upload"))
    }
    async fn download_stream(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let n = self.get_count.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut change = self.change_at_get.lock().unwrap();
            if change.as_ref().is_some_and(|(at, _)| *at == n) {
                let (_, data) = change.take().unwrap();
                self.replace(data, "v2");
            }
        }
        let obj = self.record(key);
        let data = self.data.lock().unwrap().clone();
        let span = match range {
            Some(r) => r.resolve(obj.size, &obj.url)?,
            None => 0..obj.size,
        };
        self.gets.lock().unwrap().push((span.start, span.end));
        let cut = {
            let mut cuts = self.cuts.lock().unwrap();
            let i = cuts.iter().position(|c| c.start == span.start);
            i.map(|i| cuts.remove(i))
        };
        let body = data.slice(span.start as usize..span.end as usize);
        let limit = cut.map_or(body.len(), |c| c.after.min(body.len()));
        let mut items: Vec<Result<Bytes>> = (0..limit)
            .step_by(CHUNK)
            .map(|i| Ok(body.slice(i..(i + CHUNK).min(limit))))
            .collect();
        if cut.is_some() {
            items.push(Err(Error::transient(obj.url.clone(), "connection reset")));
        }
        // Count bytes as the reader takes them (a dropped stream costs nothing).
        let served = self.served.clone();
        let count = move |r: &Result<Bytes>| {
            if let Ok(b) = r {
                served.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
        };
        if *self.hang_at.lock().unwrap() == Some(span.start) {
            items.truncate(1);
            let stream = futures::stream::iter(items)
                .inspect(count)
                .chain(futures::stream::pending());
            return Ok((obj, Box::pin(stream)));
        }
        Ok((obj, Box::pin(futures::stream::iter(items).inspect(count))))
    }
    async fn stat(&self, key: &str) -> Result<RemoteObject> {
        Ok(self.record(key))
    }
    fn list(&self, _prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        Box::pin(futures::stream::empty())
    }
    async fn delete(&self, _key: &str) -> Result<()> {
        Ok(())
    }
    async fn copy(&self, _from: &str, _to: &str) -> Result<RemoteObject> {
        Err(Error::not_supported("mem", "copy"))
    }
    async fn presign(
        &self,
        _key: &str,
        _method: PresignMethod,
        _expires_in: Duration,
    ) -> Result<PresignedUrl> {
        Err(Error::not_supported("mem", "presign"))
    }
    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported("mem", "list_pending_uploads"))
    }
}

fn opts(part: usize, concurrency: usize) -> DownloadOptions {
    DownloadOptions::default()
        .with_part_size(part as u64)
        .with_concurrency(concurrency)
        .with_parallel_threshold(0)
}

fn fast_retries() -> TransferCtx {
    TransferCtx::none().with_retry_policy(
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(5)),
    )
}

fn no_retries() -> TransferCtx {
    TransferCtx::none().with_retry_policy(RetryPolicy::none())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_range_download_is_byte_identical_and_leaves_only_the_file() {
    let data = random_bytes(5 * MIB + 123, 1);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    let obj = store
        .download_to_path_with("big.bin", &dest, None, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    let want: Vec<(u64, u64)> = (0..6u64)
        .map(|i| {
            (
                i * MIB as u64,
                ((i + 1) * MIB as u64).min(data.len() as u64),
            )
        })
        .collect();
    assert_eq!(gets, want, "one GET per part, covering the object once");
    assert_eq!(store.served(), data.len() as u64);
    assert_eq!(names_in(dir.path()), vec!["big.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_range_is_retried_alone_from_the_bytes_it_wrote() {
    let data = random_bytes(12 * MIB, 2);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    // Part 1 (4..8 MiB) breaks after 2.5 MiB: 2 MiB of it are written
    // (1 MiB write buffer), the half-buffer is lost and fetched again.
    store.cut(4 * MIB, 2 * MIB + 512 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    store
        .download_to_path_with("f", &dest, None, &opts(4 * MIB, 3), &fast_retries())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    assert_eq!(gets.len(), 4, "three parts plus one retry: {gets:?}");
    assert!(
        gets.contains(&(6 * MIB as u64, 8 * MIB as u64)),
        "the retry continues after the written 2 MiB: {gets:?}"
    );
    assert_eq!(
        store.served(),
        data.len() as u64 + 512 * KIB as u64,
        "only the unwritten half-buffer is served twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_fetches_only_the_missing_parts() {
    let data = random_bytes(8 * MIB, 3);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    // Concurrency 1: parts 0..=2 finish, part 3 fails and is not retried.
    store.cut(3 * MIB, 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.bin");
    std::fs::write(&dest, b"old version").unwrap();
    let o = opts(MIB, 1);
    let e = store
        .download_to_path_with("r.bin", &dest, None, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Transient | ErrorKind::RetriesExhausted),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"old version",
        "destination untouched"
    );
    assert_eq!(
        names_in(dir.path()),
        vec![
            ".r.bin.xferkit-partial",
            ".r.bin.xferkit-partial.json",
            "r.bin"
        ]
    );

    let before = store.served();
    store.gets.lock().unwrap().clear();
    store
        .download_to_path_with("r.bin", &dest, None, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    let want: Vec<(u64, u64)> = (3..8u64)
        .map(|i| (i * MIB as u64, (i + 1) * MIB as u64))
        .collect();
    assert_eq!(gets, want, "parts 0..=2 are not fetched again");
    assert_eq!(store.served() - before, 5 * MIB as u64);
    assert_eq!(names_in(dir.path()), vec!["r.bin"], "journal removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_etag_restarts_from_zero() {
    let data = random_bytes(6 * MIB, 4);
    let store = RangeStore::new(data, Sum::Crc32c);
    store.cut(2 * MIB, 10 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("c.bin");
    let o = opts(MIB, 1);
    store
        .download_to_path_with("c.bin", &dest, None, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(dir.path().join(".c.bin.xferkit-partial.json").exists());

    let newer = random_bytes(6 * MIB, 5);
    store.replace(newer.clone(), "v2");
    store.gets.lock().unwrap().clear();
    let before = store.served();
    store
        .download_to_path_with("c.bin", &dest, None, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), newer);
    assert_eq!(store.range_gets().len(), 6, "every part fetched again");
    assert_eq!(store.served() - before, 6 * MIB as u64);
    assert_eq!(names_in(dir.path()), vec!["c.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changing_mid_download_fails_and_leaves_nothing() {
    let data = random_bytes(4 * MIB, 6);
    let store = RangeStore::new(data, Sum::None);
    *store.change_at_get.lock().unwrap() = Some((3, random_bytes(4 * MIB, 7)));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.bin");
    let e = store
        .download_to_path_with("m.bin", &dest, None, &opts(MIB, 1), &fast_retries())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{}", e.chain());
    assert!(e.to_string().contains("s3://mem/m.bin"), "{e}");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_is_an_error_and_leaves_nothing() {
    for (sum, part) in [(Sum::WrongCrc32c, MIB), (Sum::WrongCrc32c, 8 * MIB)] {
        let store = RangeStore::new(random_bytes(3 * MIB, 8), sum);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.bin");
        let e = store
            .download_to_path_with("x.bin", &dest, None, &opts(part, 2), &TransferCtx::none())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_is_verified_in_one_stream_and_a_mismatch_leaves_nothing() {
    let data = random_bytes(3 * MIB, 9);
    let store = RangeStore::new(data.clone(), Sum::Sha256);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("s.bin");
    store
        .download_to_path_with("s.bin", &dest, None, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        store.gets(),
        vec![(0, data.len() as u64)],
        "one stream, not ranges"
    );

    // The stored digest is of the old bytes; the data changed under it.
    std::fs::remove_file(&dest).unwrap();
    let wrong = RangeStore::new(data, Sum::Sha256);
    let stale = wrong.record("s.bin").checksum;
    let wrong = WrongSum(wrong, stale);
    wrong.0.replace(random_bytes(3 * MIB, 10), "v1");
    let e = wrong
        .download_to_path_with("s.bin", &dest, None, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_ranges_gets_one_stream() {
    let data = random_bytes(2 * MIB + 5, 11);
    let mut store = RangeStore::new(data.clone(), Sum::Crc32c);
    store.range = false;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("n.bin");
    store
        .download_to_path_with("n.bin", &dest, None, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(store.gets(), vec![(0, data.len() as u64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_download_leaves_nothing() {
    let store = RangeStore::new(random_bytes(4 * MIB, 12), Sum::None);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("stop.bin");
    let ctx = TransferCtx::none();
    ctx.token().cancel();
    let e = store
        .download_to_path_with("stop.bin", &dest, None, &opts(MIB, 2), &ctx)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.chain());
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

/// A store reporting a fixed (stale) checksum.
#[derive(Debug)]
struct WrongSum(RangeStore, Option<String>);

#[async_trait]
impl FileTransferHandler for WrongSum {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn schemes(&self) -> &[&str] {
        self.0.schemes()
    }
    fn url_for(&self, key: &str) -> String {
        self.0.url_for(key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<String> {
        self.0.key_for_url(url)
    }
    async fn upload(
        &self,
        key: &str,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        self.0.upload(key, source, opts, ctx).await
    }
    async fn download_stream(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let (mut o, s) = self.0.download_stream(key, range).await?;
        o.checksum = self.1.clone();
        Ok((o, s))
    }
    async fn stat(&self, key: &str) -> Result<RemoteObject> {
        let mut o = self.0.stat(key).await?;
        o.checksum = self.1.clone();
        Ok(o)
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        self.0.list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.0.delete(key).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<RemoteObject> {
        self.0.copy(from, to).await
    }
    async fn presign(
        &self,
        key: &str,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.0.presign(key, method, expires_in).await
    }
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.0.list_pending_uploads(prefix).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_dropped_mid_way_leaves_nothing() {
    // What the manager does to a stopped transfer that has not returned in
    // time: it drops the future. The partial file and journal go with it.
    let store = RangeStore::new(random_bytes(4 * MIB, 13), Sum::None);
    *store.hang_at.lock().unwrap() = Some(2 * MIB as u64);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("d.bin");
    let o = opts(MIB, 4);
    let ctx = TransferCtx::none();
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        store.download_to_path_with("d.bin", &dest, None, &o, &ctx),
    )
    .await;
    assert!(r.is_err(), "the download should still hang");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_download_to_the_same_destination_leaves_the_first_ones_file_alone() {
    // The first download hangs on one range with its partial file open; a
    // second one to the same destination must neither reuse nor remove it.
    let body = random_bytes(4 * MIB, 14);
    let first = Arc::new(RangeStore::new(body.clone(), Sum::None));
    *first.hang_at.lock().unwrap() = Some(2 * MIB as u64);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("same.bin");
    let o = opts(MIB, 4);
    let ctx = TransferCtx::none();
    let running = {
        let (first, dest, o, ctx) = (first.clone(), dest.clone(), o.clone(), ctx.clone());
        tokio::spawn(async move {
            first
                .download_to_path_with("same.bin", &dest, None, &o, &ctx)
                .await
        })
    };
    // Wait until the first one has its partial file.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !names_in(dir.path())
        .iter()
        .any(|n| n.ends_with(".xferkit-partial"))
    {
        assert!(std::time::Instant::now() < deadline, "no partial file");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = RangeStore::new(random_bytes(4 * MIB, 15), Sum::None);
    let e = second
        .download_to_path_with("same.bin", &dest, None, &o, &TransferCtx::none())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("another download to this destination"),
        "{}",
        e.chain()
    );
    assert!(!dest.exists());
    assert!(
        names_in(dir.path())
            .iter()
            .any(|n| n.ends_with(".xferkit-partial")),
        "the running download's partial file was removed: {:?}",
        names_in(dir.path())
    );
    ctx.token().cancel();
    let _ = running.await;
}

/// `plain` sealed as an encrypted attachment, in a store that serves the
/// ciphertext; the link's secret.
fn sealed_store(plain: &[u8]) -> (Arc<RangeStore>, xferkit_core::e2e::LinkSecret) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plain");
    std::fs::write(&src, plain).unwrap();
    let mut sealed = Vec::new();
    let secret = xferkit_core::e2e::seal_file(&src, &mut sealed).unwrap();
    (Arc::new(RangeStore::new(sealed.into(), Sum::None)), secret)
}

/// Stored offset of the record holding content byte `at`.
fn record_start(at: usize) -> usize {
    use xferkit_core::e2e::{PLAIN_PER_RECORD, RECORD_SIZE};
    21 + at / PLAIN_PER_RECORD as usize * RECORD_SIZE as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_download_resumes_checking_resumed_records_on_disk() {
    use xferkit_core::e2e::Encrypted;
    let data = random_bytes(3 * MIB + 999, 11);
    let (store, secret) = sealed_store(&data);
    // Part 1 (content from 1 MiB) breaks at once: part 0 is kept, with the
    // first bytes of the record that straddles the two parts.
    store.cut(record_start(MIB), 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("e.bin");
    let o = opts(MIB, 1);
    let first = Encrypted::opening(store.clone(), secret.clone());
    let e = first
        .download_to_path_with("e.bin", &dest, None, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Transient | ErrorKind::RetriesExhausted),
        "{e}"
    );
    assert_eq!(
        names_in(dir.path()),
        vec![".e.bin.xferkit-partial", ".e.bin.xferkit-partial.json"]
    );
    store.gets.lock().unwrap().clear();
    // A new process: a new handler, knowing nothing of the first run.
    let second = Encrypted::opening(store.clone(), secret);
    second
        .download_to_path_with("e.bin", &dest, None, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == data, "content differs");
    let starts: Vec<u64> = store.gets().iter().map(|g| g.0).collect();
    assert!(
        !starts.contains(&21),
        "part 0 was fetched again: {starts:?}"
    );
    assert_eq!(names_in(dir.path()), vec!["e.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_changed_between_runs_fails_the_digest_and_leaves_nothing() {
    use xferkit_core::e2e::Encrypted;
    let data = random_bytes(3 * MIB, 12);
    let (store, secret) = sealed_store(&data);
    store.cut(record_start(MIB), 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("e.bin");
    let o = opts(MIB, 1);
    let first = Encrypted::opening(store.clone(), secret.clone());
    first
        .download_to_path_with("e.bin", &dest, None, &o, &no_retries())
        .await
        .unwrap_err();
    // One byte of the kept part 0 changes on disk.
    let partial = dir.path().join(".e.bin.xferkit-partial");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&partial, bytes).unwrap();
    let second = Encrypted::opening(store.clone(), secret);
    let e = second
        .download_to_path_with("e.bin", &dest, None, &o, &TransferCtx::none())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{e}");
    assert!(e.to_string().contains("another ciphertext"), "{e}");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}
