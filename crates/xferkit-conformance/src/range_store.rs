//! An in-memory store for the download engine's tests: it serves one object
//! with or without ranges, counts what it serves and every GET, can cut a
//! response short (`cut`), change the object mid-download, or stall; and the
//! helpers those tests share (core's `tests/download.rs`, and the encrypted
//! downloads' in xferkit-share).

// A test fixture: a poisoned lock or a failed read of a test directory is a
// test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use xferkit_core::Key;
use xferkit_core::url::{ObjectUrl, object_url};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, DownloadOptions, Error, FileTransferHandler,
    PendingUpload, PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, RetryPolicy,
    TransferCtx, UploadSource, async_trait,
};

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;
pub const CHUNK: usize = 64 * KIB;

/// How the store reports a checksum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sum {
    None,
    Crc32c,
    Sha256,
    /// A crc32c of other bytes: every download must fail verification.
    WrongCrc32c,
}

/// One planned failure: the next GET whose range starts at `start` serves
/// `after` bytes, then fails with a transient error.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    pub start: u64,
    pub after: usize,
}

#[derive(Debug)]
pub struct RangeStore {
    pub data: Mutex<Bytes>,
    pub etag: Mutex<String>,
    pub sum: Sum,
    pub range: bool,
    /// Bytes handed out in stream chunks (as they are read), over all requests.
    pub served: Arc<AtomicU64>,
    /// (start, end) of every GET.
    pub gets: Mutex<Vec<(u64, u64)>>,
    pub cuts: Mutex<Vec<Cut>>,
    /// Replace the object (new data, new etag) when the n-th GET (1-based) arrives.
    pub change_at_get: Mutex<Option<(usize, Bytes)>>,
    pub get_count: AtomicUsize,
    /// A GET whose range starts here sends one chunk, then nothing, forever.
    pub hang_at: Mutex<Option<u64>>,
}

/// [`testkit::data`](crate::testkit::data) as `Bytes`.
pub fn random_bytes(n: usize, seed: u64) -> Bytes {
    crate::support::data(n, seed).into()
}

impl RangeStore {
    pub fn new(data: Bytes, sum: Sum) -> Self {
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
    pub fn cut(&self, start: usize, after: usize) {
        self.cuts.lock().unwrap().push(Cut {
            start: start as u64,
            after,
        });
    }
    pub fn replace(&self, data: Bytes, etag: &str) {
        *self.data.lock().unwrap() = data;
        *self.etag.lock().unwrap() = etag.into();
    }
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
    pub fn gets(&self) -> Vec<(u64, u64)> {
        self.gets.lock().unwrap().clone()
    }
    /// The ranged GETs: every GET but the whole-object ones (the first GET
    /// of a download, dropped unread when the object is fetched in ranges).
    pub fn range_gets(&self) -> Vec<(u64, u64)> {
        let size = self.data.lock().unwrap().len() as u64;
        let mut v: Vec<_> = self
            .gets()
            .into_iter()
            .filter(|g| *g != (0, size))
            .collect();
        v.sort();
        v
    }
    pub fn record(&self, key: &Key) -> RemoteObject {
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
    fn url_for(&self, key: &Key) -> String {
        object_url("s3", "mem", key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        if url.scheme == "s3" && url.authority == "mem" {
            Key::new(url.path.as_str()).ok()
        } else {
            None
        }
    }
    async fn upload(
        &self,
        _key: &Key,
        _source: UploadSource,
        _opts: &PutOptions,
        _ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        Err(Error::not_supported("mem", "upload"))
    }
    async fn download_stream(
        &self,
        key: &Key,
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
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        Ok(self.record(key))
    }
    fn list(&self, _prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        Box::pin(futures::stream::empty())
    }
    async fn delete(&self, _key: &Key) -> Result<()> {
        Ok(())
    }
    async fn copy(&self, _from: &Key, _to: &Key) -> Result<RemoteObject> {
        Err(Error::not_supported("mem", "copy"))
    }
    async fn presign(
        &self,
        _key: &Key,
        _method: PresignMethod,
        _expires_in: Duration,
    ) -> Result<PresignedUrl> {
        Err(Error::not_supported("mem", "presign"))
    }
    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported("mem", "list_pending_uploads"))
    }
}

pub fn opts(part: usize, concurrency: usize) -> DownloadOptions {
    DownloadOptions::default()
        .with_part_size(part as u64)
        .with_concurrency(concurrency)
        .with_parallel_threshold(0)
}

/// The download tests' one call: `store.download_to_path_with` of the
/// whole object `key` (which must be valid) to `dest`.
pub async fn fetch<H: FileTransferHandler + ?Sized>(
    store: &H,
    key: &str,
    dest: &Path,
    opts: &DownloadOptions,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    use xferkit_core::FileTransferExt;
    let key = Key::new(key).expect("a test key is valid");
    store
        .download_to_path_with(&key, dest, None, opts, ctx)
        .await
}

pub fn fast_retries() -> TransferCtx {
    TransferCtx::none().with_retry_policy(
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(5)),
    )
}

pub fn no_retries() -> TransferCtx {
    TransferCtx::none().with_retry_policy(RetryPolicy::none())
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
