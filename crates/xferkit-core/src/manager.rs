//! The transfer manager: the mesibo file-transfer API, in Rust.
//!
//! | mesibo | here |
//! |---|---|
//! | `getFileInstance` | [`TransferManager::file_instance`]: the transfer already in flight for the same URL (download) or source + destination (upload), else a new idle one |
//! | `startFileTransfer` | [`Transfer::start`]: idempotent, queued under a concurrency cap with priority, never blocks |
//! | `stopFileTransfer` | [`Transfer::stop`]: `Cancelled` at once; the store-side cleanup (abort) runs to its end in the background |
//! | `updateFileTransferProgress` / listener | [`FileTransferListener`] and [`Transfer::subscribe`]: [`FileInfo`] snapshots, in order, monotonic |
//! | `isFileTransferEnabled` | [`TransferManager::is_enabled`] / [`TransferManager::set_enabled`] (see below) |
//!
//! # What callers are promised
//!
//! - **One network transfer per file, one handle per caller.** A download is
//!   one network transfer per URL: every caller that asks for the URL while it
//!   is in flight gets its own [`Transfer`] (own id, own status, own
//!   destination) attached to that one download, and every destination
//!   receives the verified file (a hard link where the filesystem allows it,
//!   else a copy made after verification). Asking again for the same URL *and*
//!   destination returns the same handle. An upload is identified by its
//!   source file and destination URL: asking again returns the same handle;
//!   uploads of in-memory bytes or streams are never merged.
//! - **Each caller's outcome is its own.** Failing to write one destination
//!   fails only that caller's handle. Stopping one handle stops the network
//!   transfer only when no other caller still wants it.
//! - **Stop.** [`Transfer::stop`] returns at once and the handle is
//!   `Cancelled` at once. The network transfer, if nobody else wants it, is
//!   told to stop and runs its cleanup (aborting a multipart upload, removing
//!   temp files) to the end in the background, holding its concurrency slot
//!   meanwhile; [`TransferManager::shutdown`] waits for such cleanups.
//! - **Listeners.** Listeners are called with no lock of the manager held, so
//!   a listener may call [`Transfer::info`], [`Transfer::stop`] or
//!   [`Transfer::start`] on any transfer, start new transfers or add
//!   listeners. Each transfer's snapshots reach every listener in order (one
//!   snapshot at a time per transfer), and [`Transfer::wait`] returns only
//!   after every listener has seen the final one. A listener that panics is
//!   logged and skipped; the transfer goes on.
//! - **Outcomes.** [`Transfer::wait`] gives `Ok(FileInfo)` for a completed
//!   transfer and a [`TransferError`] carrying the original typed [`Error`]
//!   otherwise.
//!
//! `is_enabled` / `set_enabled` mirror mesibo's `isFileTransferEnabled`
//! (a global switch for automatic transfers): while disabled, started
//! transfers queue and none begins; transfers already moving bytes go on.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::layer::Upload;
use crate::{
    ByteStream, DownloadOptions, Error, ErrorKind, Extensions, ProgressSink, PutOptions, Registry,
    RemoteObject, Result, RetryPolicy, TransferCtx, UploadSource,
};

/// Default number of transfers running at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Upload or download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
}

/// Where a transfer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Created, not started.
    Idle,
    /// Started, waiting for a slot.
    Queued,
    /// Moving bytes.
    InProgress,
    /// Waiting to retry after a transient failure (see `FileInfo::retry_at`).
    RetryLater,
    /// Paused by [`Transfer::pause`]: what is done is kept for
    /// [`Transfer::resume`].
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl TransferStatus {
    /// Completed, Failed or Cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TransferStatus::Completed | TransferStatus::Failed | TransferStatus::Cancelled
        )
    }
}

/// A snapshot of one transfer, as listeners see it (mesibo's `FileInfo`).
///
/// Its `Debug` shows `url` without its query or fragment (a signature, or
/// the key of an encrypted attachment), and each extension by its own
/// `Debug`, which keeps its secrets out too; `Serialize` shows them whole.
#[derive(Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct FileInfo {
    pub id: u64,
    pub direction: Direction,
    /// Download: the source URL. Upload: the destination URL.
    pub url: String,
    /// Download: the destination file. Upload: the source file (empty for
    /// an upload of bytes or a stream).
    pub path: PathBuf,
    /// Total bytes, once known.
    pub size: Option<u64>,
    /// Bytes done; never decreases.
    pub transferred: u64,
    /// Average rate since the transfer started, bytes per second.
    pub rate: f64,
    pub status: TransferStatus,
    /// When a `RetryLater` transfer tries again.
    #[serde(skip)]
    pub retry_at: Option<SystemTime>,
    /// One-line error for `Failed`.
    pub error: Option<String>,
    #[serde(skip)]
    pub error_kind: Option<ErrorKind>,
    pub content_type: Option<String>,
    /// App metadata carried as object metadata (`title`, `message`).
    pub title: Option<String>,
    pub message: Option<String>,
    /// The stored object, once completed.
    #[serde(skip)]
    pub object: Option<RemoteObject>,
    /// What a layer above core added (the sharing layer's `ShareInfo`: share
    /// URL, thumbnail, dedupe); see [`extensions`](Self::extensions).
    #[serde(flatten)]
    extensions: Extensions,
}

impl FileInfo {
    /// What layers above core attached to this transfer, one value per type,
    /// read with the layer's accessor (`xferkit_share::ShareInfo::of(&info)`).
    /// Serialized with each value's fields beside this struct's own.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }
}

impl fmt::Debug for FileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileInfo")
            .field("id", &self.id)
            .field("direction", &self.direction)
            .field("url", &crate::url::shown(&self.url))
            .field("path", &self.path)
            .field("size", &self.size)
            .field("transferred", &self.transferred)
            .field("rate", &self.rate)
            .field("status", &self.status)
            .field("retry_at", &self.retry_at)
            .field("error", &self.error)
            .field("error_kind", &self.error_kind)
            .field("content_type", &self.content_type)
            .field("title", &self.title)
            .field("message", &self.message)
            .field("object", &self.object)
            .field("extensions", &self.extensions)
            .finish()
    }
}

/// Receives every snapshot of every transfer of a manager.
///
/// Called with no lock of the manager held, on whichever task reported the
/// change: keep it quick. Each transfer's snapshots arrive one at a time and
/// in order; a listener may call back into the manager (see the module docs).
pub trait FileTransferListener: Send + Sync {
    fn on_progress(&self, info: &FileInfo);
}

impl<F: Fn(&FileInfo) + Send + Sync> FileTransferListener for F {
    fn on_progress(&self, info: &FileInfo) {
        self(info)
    }
}

/// What an upload reads.
#[derive(Clone)]
enum Body {
    /// The file at [`TransferRequest::path`].
    File,
    Bytes(Bytes),
    /// Taken by the one network transfer that runs it.
    Stream(Arc<Mutex<Option<ByteStream>>>, Option<u64>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::File => f.write_str("File"),
            Body::Bytes(b) => write!(f, "Bytes({})", b.len()),
            Body::Stream(_, size) => write!(f, "Stream(size: {size:?})"),
        }
    }
}

/// What to transfer.
///
/// Its `Debug` shows `url` without its query or fragment (a signature, or a
/// link's key), and each extension by its own `Debug`.
#[derive(Clone)]
#[non_exhaustive]
pub struct TransferRequest {
    pub direction: Direction,
    pub url: String,
    /// Download: the destination file. Upload: the source file (empty for
    /// [`upload_bytes`](Self::upload_bytes) and
    /// [`upload_stream`](Self::upload_stream)).
    pub path: PathBuf,
    /// Higher runs first when transfers queue.
    pub priority: i32,
    /// Upload options (content type, metadata, create-only).
    pub options: PutOptions,
    /// A cap on this transfer's rate, bytes per second (on top of the
    /// manager's, see [`TransferManager::set_bandwidth_limit`]).
    pub bandwidth: Option<u64>,
    /// What a layer above core reads (the sharing layer's options), see
    /// [`extensions`](Self::extensions).
    extensions: Extensions,
    /// What tells this request apart from another of the same file and URL
    /// (see [`add_identity`](Self::add_identity)).
    identity: String,
    body: Body,
}

impl TransferRequest {
    fn new(direction: Direction, url: String, path: PathBuf, body: Body) -> Self {
        TransferRequest {
            direction,
            url,
            path,
            priority: 0,
            options: PutOptions::default(),
            bandwidth: None,
            extensions: Extensions::new(),
            identity: String::new(),
            body,
        }
    }

    /// Download `url` to the local file `dest`. A layer may take part of
    /// the URL off in [`TransferLayer::prepare`](crate::TransferLayer::prepare):
    /// the sharing layer (`xferkit-share`) takes an encrypted attachment's
    /// `#aes128gcm.…` fragment off, to decrypt with it.
    pub fn download(url: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        Self::new(Direction::Download, url.into(), dest.into(), Body::File)
    }

    /// Upload the local file `source` to `url` (a canonical store URL, see
    /// [`crate::FileTransferHandler::url_for`]).
    pub fn upload(source: impl Into<PathBuf>, url: impl Into<String>) -> Self {
        Self::new(Direction::Upload, url.into(), source.into(), Body::File)
    }

    /// Upload `data` from memory to `url`. Such uploads are never merged
    /// with another caller's (a layer sees no [`file`](crate::layer::Upload::file)
    /// for them: the sharing layer's dedupe and thumbnails apply to files only).
    pub fn upload_bytes(data: impl Into<Bytes>, url: impl Into<String>) -> Self {
        Self::new(
            Direction::Upload,
            url.into(),
            PathBuf::new(),
            Body::Bytes(data.into()),
        )
    }

    /// Upload what `stream` yields to `url`; `size` if known in advance (an
    /// unknown size goes as a multipart/block/resumable upload with bounded
    /// memory, as the store's backend does for streams). The stream is read
    /// once: a second start of an ended transfer of it fails.
    pub fn upload_stream(stream: ByteStream, size: Option<u64>, url: impl Into<String>) -> Self {
        Self::new(
            Direction::Upload,
            url.into(),
            PathBuf::new(),
            Body::Stream(Arc::new(Mutex::new(Some(stream))), size),
        )
    }

    /// Upload everything `reader` yields to `url` (see
    /// [`upload_stream`](Self::upload_stream)).
    pub fn upload_reader(
        reader: impl tokio::io::AsyncRead + Send + 'static,
        size: Option<u64>,
        url: impl Into<String>,
    ) -> Self {
        let url = url.into();
        let shown = url.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)
            .map(move |r| r.map_err(|e| Error::from_io(format!("upload source for {shown}"), e)));
        Self::upload_stream(Box::pin(stream), size, url)
    }

    /// Cap this transfer at `bytes_per_sec` (all its parts together).
    pub fn with_bandwidth_limit(mut self, bytes_per_sec: u64) -> Self {
        self.bandwidth = Some(bytes_per_sec);
        self
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn with_options(mut self, options: PutOptions) -> Self {
        self.options = options;
        self
    }
    /// App title, stored as object metadata `title`.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.options.metadata.insert("title".into(), title.into());
        self
    }
    /// App message, stored as object metadata `message`.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.options
            .metadata
            .insert("message".into(), message.into());
        self
    }

    /// What layers above core attached to this request (the sharing layer's
    /// options: `xferkit_share::ShareRequestExt`), one value per type.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The extensions, to change.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Tell this request apart from others of the same file and URL: requests
    /// with different parts never share a network transfer or a handle. For a
    /// layer's [`prepare`](crate::TransferLayer::prepare) (an encrypted upload,
    /// a link's key by a fingerprint that reveals nothing of it); never put a
    /// secret here.
    pub fn add_identity(&mut self, part: &str) {
        self.identity.push('\0');
        self.identity.push_str(part);
    }

    /// The network transfer this request shares with other callers, and the
    /// handle it shares with callers asking for the very same thing.
    fn identities(&self, unique: u64) -> (String, String) {
        match (self.direction, &self.body) {
            (Direction::Download, _) => {
                let job = format!("D\0{}{}", self.url, self.identity);
                let handle = format!("{job}\0{}", self.path.display());
                (job, handle)
            }
            (Direction::Upload, Body::File) => {
                let job = format!("U\0{}\0{}{}", self.path.display(), self.url, self.identity);
                (job.clone(), job)
            }
            (Direction::Upload, _) => {
                let job = format!("U\0#{unique}\0{}{}", self.url, self.identity);
                (job.clone(), job)
            }
        }
    }
}

impl fmt::Debug for TransferRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferRequest")
            .field("direction", &self.direction)
            .field("url", &crate::url::shown(&self.url))
            .field("path", &self.path)
            .field("priority", &self.priority)
            .field("options", &self.options)
            .field("bandwidth", &self.bandwidth)
            .field("extensions", &self.extensions)
            .field("body", &self.body)
            .finish()
    }
}

/// A transfer that did not complete: its final snapshot and the typed error
/// (`Cancelled` for a stopped one).
#[derive(Debug, Clone)]
pub struct TransferError {
    info: Box<FileInfo>,
    error: Arc<Error>,
}

impl TransferError {
    /// The final snapshot (`Failed` or `Cancelled`).
    pub fn info(&self) -> &FileInfo {
        &self.info
    }
    /// The error, as the store or the filesystem reported it.
    pub fn error(&self) -> &Error {
        &self.error
    }
    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }
    /// The final snapshot, owned.
    pub fn into_info(self) -> FileInfo {
        *self.info
    }
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for TransferError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<FileInfo>,
    /// Some thread is delivering this transfer's snapshots.
    busy: bool,
}

struct TransferInner {
    id: u64,
    /// The network transfer's identity.
    identity: String,
    /// This handle's identity (the same request returns this handle).
    handle_key: String,
    request: TransferRequest,
    manager: Weak<ManagerInner>,
    info: Mutex<FileInfo>,
    outbox: Mutex<Outbox>,
    watch: watch::Sender<FileInfo>,
    /// Set before the terminal snapshot of a failed or stopped transfer.
    error: Mutex<Option<Arc<Error>>>,
    /// The network transfer this handle is attached to, once started.
    job: Mutex<Option<Arc<Job>>>,
}

/// One caller's transfer. Cheap to clone; clones refer to the same handle.
#[derive(Clone)]
pub struct Transfer {
    inner: Arc<TransferInner>,
}

impl fmt::Debug for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfer")
            .field("id", &self.inner.id)
            .field("url", &self.inner.request.url)
            .field("status", &self.info().status)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge every later transfer.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transfer {
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The latest snapshot.
    pub fn info(&self) -> FileInfo {
        lock(&self.inner.info).clone()
    }

    /// A receiver of the latest snapshot (skips intermediate ones when slow).
    /// A snapshot is sent after every listener has seen it.
    pub fn subscribe(&self) -> watch::Receiver<FileInfo> {
        self.inner.watch.subscribe()
    }

    /// Queue the transfer (idempotent; never blocks). If another caller's
    /// network transfer for the same file is in flight, this handle joins
    /// it instead.
    pub fn start(&self) {
        if let Some(m) = self.inner.manager.upgrade() {
            ManagerInner::start(&m, self);
        }
    }

    /// Stop this caller's transfer: its status is `Cancelled` when this
    /// returns, and nothing is ever left under its destination. The network
    /// transfer stops only if no other caller still wants it; its cleanup
    /// then runs to the end in the background.
    pub fn stop(&self) {
        if self.info().status.is_terminal() {
            return;
        }
        let job = lock(&self.inner.job).clone();
        if let Some(job) = job
            && !self.detach(&job, false)
        {
            // Too late: the store is making the upload visible. It completes.
            return;
        }
        let paused = self.info().status == TransferStatus::Paused;
        let err = Error::cancelled(&self.inner.request.url);
        self.finish(TransferStatus::Cancelled, Some(Arc::new(err)), None, |_| {});
        if paused && let Some(m) = self.inner.manager.upgrade() {
            ManagerInner::discard(&m, self);
        }
    }

    /// Pause this caller's transfer: its status becomes `Paused` and what
    /// is done is kept (the upload journal and the parts the store holds,
    /// a partial download and its journal) for [`resume`](Self::resume).
    /// The network transfer pauses only if no other caller still wants it.
    /// Only a queued or running transfer pauses; a transfer that completes
    /// while pausing is `Completed`. [`stop`](Self::stop) on a paused
    /// transfer throws away what it kept.
    ///
    /// What resuming saves depends on the store: a multipart, block or
    /// resumable upload of a file to a store with a state directory, and a
    /// ranged download (objects of at least `parallel_threshold`), continue
    /// where they were; anything else starts over.
    pub fn pause(&self) {
        if !matches!(
            self.info().status,
            TransferStatus::Queued | TransferStatus::InProgress | TransferStatus::RetryLater
        ) {
            return;
        }
        let job = lock(&self.inner.job).clone();
        if let Some(job) = job {
            if !self.detach(&job, true) {
                return; // too late: it completes
            }
            lock(&self.inner.job).take();
        }
        if self.record(|i| {
            i.status = TransferStatus::Paused;
            i.retry_at = None;
            i.rate = 0.0;
        }) {
            self.dispatch();
        }
    }

    /// Take this handle off `job`; the last one out stops the job (as a
    /// pause when `pause`), and no handle may join it any more. `false`, and
    /// nothing changes, when the last one out comes too late: the job is
    /// committing (its upload is being made visible) and will complete.
    fn detach(&self, job: &Arc<Job>, pause: bool) -> bool {
        let Some(m) = self.inner.manager.upgrade() else {
            return true;
        };
        let mut st = lock(&m.state);
        let mut js = lock(&job.m);
        let last = !js.closed
            && js
                .handles
                .iter()
                .all(|h| Arc::ptr_eq(&h.inner, &self.inner));
        if last && !crate::ctx::close_gate(&job.commit) {
            return false;
        }
        js.handles.retain(|h| !Arc::ptr_eq(&h.inner, &self.inner));
        if js.handles.is_empty() && !js.closed {
            js.closed = true;
            if pause {
                job.pause.store(true, Ordering::SeqCst);
            }
            job.cancel.cancel();
            drop(js);
            st.forget(job);
        }
        true
    }

    /// Continue a paused transfer from what it kept (like
    /// [`start`](Self::start) for a paused one).
    pub fn resume(&self) {
        self.start();
    }

    /// Wait for the end: `Ok` with the final snapshot when completed, else
    /// the typed error with the final snapshot.
    pub async fn wait(&self) -> std::result::Result<FileInfo, TransferError> {
        let info = self.wait_info().await;
        if info.status == TransferStatus::Completed {
            return Ok(info);
        }
        let error = lock(&self.inner.error)
            .clone()
            .unwrap_or_else(|| Arc::new(Error::cancelled(&self.inner.request.url)));
        Err(TransferError {
            info: Box::new(info),
            error,
        })
    }

    /// Wait for a terminal status and return the final snapshot, whatever
    /// the outcome.
    pub async fn wait_info(&self) -> FileInfo {
        let mut rx = self.subscribe();
        loop {
            let info = rx.borrow_and_update().clone();
            if info.status.is_terminal() {
                return info;
            }
            if rx.changed().await.is_err() {
                return self.info();
            }
        }
    }

    /// Apply `f` and queue the snapshot for the listeners; true if the
    /// caller must then [`dispatch`](Self::dispatch). Takes only this
    /// handle's own locks, briefly.
    fn record(&self, f: impl FnOnce(&mut FileInfo)) -> bool {
        let mut info = lock(&self.inner.info);
        if info.status.is_terminal() {
            return false;
        }
        f(&mut info);
        let mut out = lock(&self.inner.outbox);
        out.queue.push_back(info.clone());
        !std::mem::replace(&mut out.busy, true)
    }

    /// Deliver queued snapshots, in order, with no lock held while a
    /// listener runs. Snapshots that a listener causes are queued and
    /// delivered by this same loop after it returns.
    fn dispatch(&self) {
        let manager = self.inner.manager.upgrade();
        loop {
            let next = {
                let mut out = lock(&self.inner.outbox);
                match out.queue.pop_front() {
                    Some(i) => i,
                    None => {
                        out.busy = false;
                        return;
                    }
                }
            };
            if let Some(m) = &manager {
                let listeners = m
                    .listeners
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                for l in listeners {
                    let call = std::panic::AssertUnwindSafe(|| l.on_progress(&next));
                    if std::panic::catch_unwind(call).is_err() {
                        tracing::warn!(id = next.id, "a transfer listener panicked");
                    }
                }
            }
            self.inner.watch.send_replace(next);
        }
    }

    fn finish(
        &self,
        status: TransferStatus,
        err: Option<Arc<Error>>,
        end: Option<End>,
        extra: impl FnOnce(&mut FileInfo),
    ) {
        let dispatch = self.record(|i| {
            // Under the info lock, and only for the snapshot that ends the
            // transfer: the error `wait()` gives matches the final status.
            if err.is_some() {
                lock(&self.inner.error).clone_from(&err);
            }
            extra(i);
            i.status = status;
            i.retry_at = None;
            if let Some(e) = &err
                && status == TransferStatus::Failed
            {
                i.error_kind = Some(e.kind());
                i.error = Some(e.chain());
            }
            if let Some(End { object: o, sent }) = end {
                i.size = Some(o.size);
                // An upload of content already stored moved nothing and says so.
                if sent {
                    i.transferred = i.transferred.max(o.size);
                }
                if i.content_type.is_none() {
                    i.content_type = o.content_type.clone();
                }
                i.object = Some(o);
            }
        });
        if let Some(m) = self.inner.manager.upgrade() {
            let mut st = lock(&m.state);
            if st
                .handles
                .get(&self.inner.handle_key)
                .is_some_and(|t| Arc::ptr_eq(&t.inner, &self.inner))
            {
                st.handles.remove(&self.inner.handle_key);
            }
        }
        if dispatch {
            self.dispatch();
        }
    }
}

/// The object a completed transfer ends with.
struct End {
    object: RemoteObject,
    /// The bytes went over the wire (else: an upload's content was already
    /// stored and `transferred` stays what was moved).
    sent: bool,
}

/// One network transfer, shared by every handle attached to it.
struct Job {
    identity: String,
    /// Set with `cancel` when the job is paused (see `TransferCtx::pause`).
    pause: Arc<AtomicBool>,
    /// Closed before the job is stopped; passed by the handler before the
    /// request that makes the upload visible (`TransferCtx::commit`).
    commit: Arc<std::sync::atomic::AtomicU8>,
    /// The first caller's request (URL, options; for a download, the
    /// destination whose directory holds the temp and partial files).
    request: TransferRequest,
    cancel: CancellationToken,
    m: Mutex<JobState>,
    /// True once the job's task has ended, cleanup included.
    done: watch::Sender<bool>,
    /// A stopped job for the same identity still cleaning up: this one
    /// starts after it (so the two never share partial files).
    after: Option<Arc<Job>>,
}

struct JobState {
    /// The handles that want this transfer.
    handles: Vec<Transfer>,
    /// No more handles may attach (the result is being handed out, or
    /// every caller stopped).
    closed: bool,
    status: TransferStatus,
    size: Option<u64>,
    transferred: u64,
    retry_at: Option<SystemTime>,
    started: Option<Instant>,
    /// Upload: the final URL (a layer may change the key).
    url: Option<String>,
}

impl JobState {
    /// Copy the shared progress into one handle's snapshot.
    fn mirror(&self, i: &mut FileInfo) {
        i.status = self.status;
        i.retry_at = self.retry_at;
        if self.size.is_some() {
            i.size = self.size;
        }
        i.transferred = i.transferred.max(self.transferred);
        if let Some(u) = &self.url {
            i.url.clone_from(u);
        }
        if let Some(start) = self.started {
            let secs = start.elapsed().as_secs_f64();
            if secs > 0.0 {
                i.rate = i.transferred as f64 / secs;
            }
        }
    }
}

impl Job {
    /// Change the shared state and tell every attached handle.
    fn progress(&self, f: impl FnOnce(&mut JobState)) {
        let due: Vec<Transfer> = {
            let mut js = lock(&self.m);
            f(&mut js);
            let js = &*js;
            js.handles
                .iter()
                .filter(|h| h.record(|i| js.mirror(i)))
                .cloned()
                .collect()
        };
        for h in due {
            h.dispatch();
        }
    }

    /// Close the job to newcomers and return the handles that want it.
    fn close(&self) -> Vec<Transfer> {
        let mut js = lock(&self.m);
        js.closed = true;
        js.handles.clone()
    }
}

struct JobProgress {
    job: Arc<Job>,
    /// Requests (parts) currently waiting to retry.
    waiting: AtomicUsize,
}

impl ProgressSink for JobProgress {
    fn add(&self, n: u64) {
        self.job.progress(|j| {
            j.transferred += n;
            if let Some(s) = j.size {
                j.transferred = j.transferred.min(s);
            }
        });
    }
    fn set_total(&self, total: u64) {
        self.job.progress(|j| j.size = Some(total));
    }
    // RetryLater while any request waits (showing the latest announced
    // time), back to InProgress when the last one tries again.
    fn retry_at(&self, at: Option<SystemTime>) {
        match at {
            Some(t) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                self.job.progress(|j| {
                    j.status = TransferStatus::RetryLater;
                    j.retry_at = Some(t);
                });
            }
            None => {
                let before = self
                    .waiting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                        Some(w.saturating_sub(1))
                    })
                    .unwrap_or(0);
                if before <= 1 {
                    self.job.progress(|j| {
                        j.status = TransferStatus::InProgress;
                        j.retry_at = None;
                    });
                }
            }
        }
    }
}

struct Queued {
    priority: i32,
    seq: u64,
    job: Arc<Job>,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.priority, self.seq) == (o.priority, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    // Highest priority first; among equals, first started first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct State {
    /// Handles not yet ended, by handle identity.
    handles: HashMap<String, Transfer>,
    /// Network transfers that handles may still join, by identity.
    jobs: HashMap<String, Arc<Job>>,
    /// Stopped jobs whose task is still cleaning up, by identity.
    cleaning: HashMap<String, Arc<Job>>,
    queue: BinaryHeap<Queued>,
    /// Jobs whose task is running (cleanup included).
    running: usize,
    seq: u64,
    shut_down: bool,
}

impl State {
    /// `job` may no longer be joined, nor waited for by a new job of the
    /// same file (where it is still the one on record).
    fn forget(&mut self, job: &Arc<Job>) {
        for map in [&mut self.jobs, &mut self.cleaning] {
            if map.get(&job.identity).is_some_and(|j| Arc::ptr_eq(j, job)) {
                map.remove(&job.identity);
            }
        }
    }
}

struct ManagerInner {
    registry: Arc<Registry>,
    concurrency: usize,
    enabled: AtomicBool,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// Woken whenever a job's task ends.
    ended: Notify,
    listeners: RwLock<Vec<Arc<dyn FileTransferListener>>>,
    runtime: tokio::runtime::Handle,
    retry: RwLock<RetryPolicy>,
    download: RwLock<DownloadOptions>,
    /// One cap shared by every transfer of the manager.
    bandwidth: RwLock<Option<Arc<crate::Bandwidth>>>,
}

/// Runs transfers against the stores of a [`Registry`]; see the module docs
/// for what it promises callers and listeners.
#[derive(Clone)]
pub struct TransferManager {
    inner: Arc<ManagerInner>,
}

impl fmt::Debug for TransferManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferManager")
            .field("stores", &self.inner.registry.names())
            .field("concurrency", &self.inner.concurrency)
            .finish()
    }
}

impl TransferManager {
    /// A manager with the default concurrency (4). Must be created inside a
    /// Tokio runtime; transfers run on it.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::with_concurrency(registry, DEFAULT_CONCURRENCY)
    }

    /// A manager running at most `concurrency` transfers at once (min 1).
    pub fn with_concurrency(registry: Arc<Registry>, concurrency: usize) -> Self {
        TransferManager {
            inner: Arc::new(ManagerInner {
                registry,
                concurrency: concurrency.max(1),
                enabled: AtomicBool::new(true),
                next_id: AtomicU64::new(1),
                state: Mutex::new(State::default()),
                ended: Notify::new(),
                listeners: RwLock::new(Vec::new()),
                runtime: tokio::runtime::Handle::current(),
                retry: RwLock::new(RetryPolicy::default()),
                download: RwLock::new(DownloadOptions::default()),
                bandwidth: RwLock::new(None),
            }),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Use `policy` for every transfer started from now on.
    pub fn with_retry_policy(self, policy: RetryPolicy) -> Self {
        self.set_retry_policy(policy);
        self
    }

    /// Change the retry policy of transfers started from now on.
    pub fn set_retry_policy(&self, policy: RetryPolicy) {
        *self.inner.retry.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// The retry policy new transfers get.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner
            .retry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How downloads started from now on split into ranged GETs.
    pub fn set_download_options(&self, options: DownloadOptions) {
        *self
            .inner
            .download
            .write()
            .unwrap_or_else(|p| p.into_inner()) = options;
    }

    /// The download options new transfers get.
    pub fn download_options(&self) -> DownloadOptions {
        self.inner
            .download
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Cap the rate of all transfers of this manager together at
    /// `bytes_per_sec` (`None`: no cap), from the next transfer started on.
    /// Every part, range and chunk of every transfer draws from one token
    /// bucket; a transfer's own cap ([`TransferRequest::with_bandwidth_limit`])
    /// applies on top.
    pub fn set_bandwidth_limit(&self, bytes_per_sec: Option<u64>) {
        *self
            .inner
            .bandwidth
            .write()
            .unwrap_or_else(|p| p.into_inner()) =
            bytes_per_sec.map(|r| Arc::new(crate::Bandwidth::new(r)));
    }

    /// The manager-wide cap, bytes per second.
    pub fn bandwidth_limit(&self) -> Option<u64> {
        self.inner
            .bandwidth
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|b| b.bytes_per_sec())
    }

    /// Follow every transfer of this manager (may be called from a listener).
    pub fn add_listener(&self, listener: Arc<dyn FileTransferListener>) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(listener);
    }

    /// Whether queued transfers are being started.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::SeqCst)
    }

    /// Hold (false) or release (true) queued transfers; running ones
    /// continue. Like mesibo's `isFileTransferEnabled` switch.
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::SeqCst);
        if enabled {
            ManagerInner::pump(&self.inner);
        }
    }

    /// The transfer for `request`: the handle already in flight for the same
    /// download URL and destination, or the same upload source and
    /// destination, if any; otherwise a new idle handle (which joins a
    /// download of the same URL already in flight when started). Fails early
    /// on a URL no store owns.
    pub fn file_instance(&self, mut request: TransferRequest) -> Result<Transfer> {
        if let Some(layer) = self.inner.registry.layer() {
            layer.prepare(&mut request)?;
        }
        self.inner.registry.resolve(&request.url)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (identity, handle_key) = request.identities(id);
        let mut st = lock(&self.inner.state);
        if let Some(t) = st.handles.get(&handle_key)
            && !t.info().status.is_terminal()
        {
            return Ok(t.clone());
        }
        let info = FileInfo {
            id,
            direction: request.direction,
            url: request.url.clone(),
            path: request.path.clone(),
            size: match &request.body {
                Body::Bytes(b) => Some(b.len() as u64),
                Body::Stream(_, size) => *size,
                Body::File => None,
            },
            transferred: 0,
            rate: 0.0,
            status: TransferStatus::Idle,
            retry_at: None,
            error: None,
            error_kind: None,
            content_type: request.options.content_type.clone(),
            title: request.options.metadata.get("title").cloned(),
            message: request.options.metadata.get("message").cloned(),
            object: None,
            extensions: Extensions::new(),
        };
        let transfer = Transfer {
            inner: Arc::new(TransferInner {
                id,
                identity,
                handle_key: handle_key.clone(),
                request,
                manager: Arc::downgrade(&self.inner),
                watch: watch::Sender::new(info.clone()),
                info: Mutex::new(info),
                outbox: Mutex::new(Outbox::default()),
                error: Mutex::new(None),
                job: Mutex::new(None),
            }),
        };
        st.handles.insert(handle_key, transfer.clone());
        Ok(transfer)
    }

    /// `file_instance` + `start`.
    pub fn start(&self, request: TransferRequest) -> Result<Transfer> {
        let t = self.file_instance(request)?;
        t.start();
        Ok(t)
    }

    /// Stop every transfer, start no new one, and wait up to `grace` for
    /// every running cleanup (multipart aborts, temp files) to end. Returns
    /// whether everything ended in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.inner.enabled.store(false, Ordering::SeqCst);
        let handles: Vec<Transfer> = {
            let mut st = lock(&self.inner.state);
            st.shut_down = true;
            st.handles.values().cloned().collect()
        };
        for h in handles {
            h.stop();
        }
        self.settled(grace).await
    }

    /// Wait up to `grace` until no transfer's task runs (cleanups of
    /// stopped transfers included). Returns whether that happened in time.
    pub async fn settled(&self, grace: Duration) -> bool {
        let wait = async {
            loop {
                let ended = self.inner.ended.notified();
                if lock(&self.inner.state).running == 0 {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }
}

impl ManagerInner {
    fn start(this: &Arc<Self>, t: &Transfer) {
        let dispatch = {
            let mut st = lock(&this.state);
            if !matches!(
                t.info().status,
                TransferStatus::Idle | TransferStatus::Paused
            ) {
                return; // already started, or over: start is idempotent
            }
            if st.shut_down {
                drop(st);
                let err = Error::cancelled(&t.inner.request.url);
                t.finish(TransferStatus::Cancelled, Some(Arc::new(err)), None, |_| {});
                return;
            }
            let joinable = st.jobs.get(&t.inner.identity).cloned();
            let job = match joinable {
                Some(job) if !lock(&job.m).closed => job,
                _ => {
                    st.seq += 1;
                    let seq = st.seq;
                    let (done, _) = watch::channel(false);
                    let job = Arc::new(Job {
                        identity: t.inner.identity.clone(),
                        pause: Arc::new(AtomicBool::new(false)),
                        commit: crate::ctx::commit_gate(),
                        request: t.inner.request.clone(),
                        cancel: CancellationToken::new(),
                        m: Mutex::new(JobState {
                            handles: Vec::new(),
                            closed: false,
                            status: TransferStatus::Queued,
                            size: None,
                            transferred: 0,
                            retry_at: None,
                            started: None,
                            url: None,
                        }),
                        done,
                        after: st.cleaning.get(&t.inner.identity).cloned(),
                    });
                    st.jobs.insert(job.identity.clone(), job.clone());
                    st.queue.push(Queued {
                        priority: t.inner.request.priority,
                        seq,
                        job: job.clone(),
                    });
                    job
                }
            };
            *lock(&t.inner.job) = Some(job.clone());
            let mut js = lock(&job.m);
            js.handles.push(t.clone());
            t.record(|i| js.mirror(i))
        };
        if dispatch {
            t.dispatch();
        }
        Self::pump(this);
    }

    fn pump(this: &Arc<Self>) {
        loop {
            let next = {
                let mut st = lock(&this.state);
                if !this.enabled.load(Ordering::SeqCst) || st.running >= this.concurrency {
                    return;
                }
                match st.queue.pop() {
                    None => return,
                    Some(q) if q.job.cancel.is_cancelled() => continue,
                    Some(q) => {
                        st.running += 1;
                        q.job
                    }
                }
            };
            let me = this.clone();
            this.runtime.spawn(async move {
                run(&me, &next).await;
                lock(&me.state).forget(&next);
                next.done.send_replace(true);
                Self::task_ended(&me);
            });
        }
    }

    /// A running task ended: free its slot, wake `settled`, start the next.
    fn task_ended(this: &Arc<Self>) {
        lock(&this.state).running -= 1;
        this.ended.notify_waiters();
        Self::pump(this);
    }

    /// A paused transfer was stopped: throw away what its pause kept, in a
    /// task that holds a slot and that `settled` waits for.
    fn discard(this: &Arc<Self>, t: &Transfer) {
        let req = t.inner.request.clone();
        // The URL the pause was at (a layer may have changed the key).
        let url = t.info().url;
        let after = {
            let mut st = lock(&this.state);
            if st.jobs.contains_key(&t.inner.identity) {
                // Another caller's transfer of the same file runs: it owns
                // what the pause kept now.
                return;
            }
            st.running += 1;
            st.cleaning.get(&t.inner.identity).cloned()
        };
        let me = this.clone();
        this.runtime.spawn(async move {
            if let Some(prev) = after {
                let mut done = prev.done.subscribe();
                let _ = done.wait_for(|d| *d).await;
            }
            let r = match req.direction {
                Direction::Download => crate::ext::discard_partial(&req.path).await,
                Direction::Upload => match (&req.body, me.registry.resolve(&url)) {
                    (Body::File, Ok((handler, key))) => {
                        let ctx = TransferCtx::none().for_discard();
                        match handler
                            .upload(&key, UploadSource::Path(req.path.clone()), &req.options, &ctx)
                            .await
                        {
                            Err(e) if e.kind() == ErrorKind::Cancelled => Ok(()),
                            Err(e) => Err(e),
                            Ok(_) => Ok(()),
                        }
                    }
                    (_, Err(e)) => Err(e),
                    _ => Ok(()),
                },
            };
            if let Err(e) = r {
                tracing::warn!(url = %url, error = %e.chain(), "could not throw away what a paused transfer kept");
            }
            Self::task_ended(&me);
        });
    }
}

async fn run(m: &Arc<ManagerInner>, job: &Arc<Job>) {
    if let Some(prev) = &job.after {
        let mut done = prev.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }
    job.progress(|j| {
        j.status = TransferStatus::InProgress;
        j.started = Some(Instant::now());
    });
    let token = job.cancel.clone();
    let policy = m.retry.read().unwrap_or_else(|p| p.into_inner()).clone();
    let progress = Arc::new(JobProgress {
        job: job.clone(),
        waiting: AtomicUsize::new(0),
    });
    let mut ctx = TransferCtx::new(progress, token.clone())
        .with_retry_policy(policy)
        .with_pause_flag(job.pause.clone())
        .with_commit_gate(job.commit.clone());
    if let Some(limit) = m
        .bandwidth
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
    {
        ctx = ctx.with_bandwidth(limit);
    }
    if let Some(rate) = job.request.bandwidth {
        ctx = ctx.with_bandwidth(Arc::new(crate::Bandwidth::new(rate)));
    }
    // Runs to its end even when every caller stopped: a stopped handler
    // aborts its multipart upload and removes its temp files before it
    // returns, and nothing may cut that short.
    let result = perform(m, job, &ctx).await;
    if token.is_cancelled() {
        let mut st = lock(&m.state);
        // Stopped: the handles are already Cancelled; a new start of the
        // same file waits for this cleanup (see `Job::after`).
        if !st.jobs.contains_key(&job.identity) {
            st.cleaning.insert(job.identity.clone(), job.clone());
        }
    }
    match result {
        Ok(Outcome::Delivered(obj, results)) => {
            for (h, r) in results {
                match r {
                    Ok(()) => {
                        let end = End {
                            object: obj.clone(),
                            sent: true,
                        };
                        h.finish(TransferStatus::Completed, None, Some(end), |_| {})
                    }
                    Err(e) => h.finish(TransferStatus::Failed, Some(Arc::new(e)), None, |_| {}),
                }
            }
        }
        Ok(Outcome::Uploaded {
            object,
            extensions,
            sent,
        }) => {
            for h in job.close() {
                let end = End {
                    object: object.clone(),
                    sent,
                };
                h.finish(TransferStatus::Completed, None, Some(end), |i| {
                    i.extensions.extend(extensions.clone());
                });
            }
        }
        Err(e) => {
            let cancelled = e.kind() == ErrorKind::Cancelled;
            if !cancelled {
                tracing::debug!(url = %job.request.url, error = %e, "transfer failed");
            }
            let e = Arc::new(e);
            let status = if cancelled {
                TransferStatus::Cancelled
            } else {
                TransferStatus::Failed
            };
            for h in job.close() {
                h.finish(status, Some(e.clone()), None, |_| {});
            }
        }
    }
}

enum Outcome {
    /// A download, with each wanting handle's own result of receiving it.
    Delivered(RemoteObject, Vec<(Transfer, Result<()>)>),
    /// An upload: the object, what the layer attached, and whether the
    /// source was sent (else the content was already stored).
    Uploaded {
        object: RemoteObject,
        extensions: Extensions,
        sent: bool,
    },
}

async fn perform(m: &Arc<ManagerInner>, job: &Arc<Job>, ctx: &TransferCtx) -> Result<Outcome> {
    let req = &job.request;
    let (mut handler, key) = m.registry.resolve(&req.url)?;
    match req.direction {
        Direction::Download => {
            if let Some(layer) = m.registry.layer() {
                handler = layer.download_store(req, handler)?;
            }
            let opts = m.download.read().unwrap_or_else(|p| p.into_inner()).clone();
            let results = Arc::new(Mutex::new(Vec::new()));
            let deliver = {
                let (job, results, state) = (job.clone(), results.clone(), Arc::downgrade(m));
                Arc::new(move |verified: &Path| {
                    let handles = job.close();
                    if let Some(m) = state.upgrade() {
                        lock(&m.state).forget(&job);
                    }
                    if handles.is_empty() {
                        return Err(Error::cancelled(&job.request.url));
                    }
                    *lock(&results) = deliver_to(verified, handles);
                    Ok(())
                }) as crate::ext::Deliver
            };
            let obj = crate::ext::download_file(
                handler.as_ref(),
                &key,
                &req.path,
                None,
                &opts,
                ctx,
                Some(deliver),
            )
            .await?;
            let results = std::mem::take(&mut *lock(&results));
            Ok(Outcome::Delivered(obj, results))
        }
        Direction::Upload => {
            let (file, source) = match &req.body {
                Body::File => {
                    let meta = tokio::fs::metadata(&req.path)
                        .await
                        .map_err(|e| Error::from_io(req.path.display().to_string(), e))?;
                    if !meta.is_file() {
                        return Err(Error::backend(
                            req.path.display().to_string(),
                            "upload source is not a regular file",
                            "not a file",
                        ));
                    }
                    ctx.set_total(meta.len());
                    (Some(req.path.clone()), UploadSource::Path(req.path.clone()))
                }
                Body::Bytes(b) => {
                    ctx.set_total(b.len() as u64);
                    (None, UploadSource::from_bytes(b.clone()))
                }
                Body::Stream(slot, size) => {
                    let stream = lock(slot).take().ok_or_else(|| {
                        Error::backend(&req.url, "the upload stream was already read", "consumed")
                    })?;
                    if let Some(s) = size {
                        ctx.set_total(*s);
                    }
                    (
                        None,
                        UploadSource::Stream {
                            stream,
                            size: *size,
                        },
                    )
                }
            };
            // The URL the upload goes to, once the layer has chosen the key.
            let announce = |url: String| job.progress(|j| j.url = Some(url));
            let mut up = Upload::new(req, handler, key, file, source, ctx, &announce);
            let object = match m.registry.layer() {
                Some(layer) => layer.upload(&mut up).await?,
                None => up.send().await?,
            };
            let (extensions, sent) = up.finish();
            Ok(Outcome::Uploaded {
                object,
                extensions,
                sent,
            })
        }
    }
}

/// Place the verified download at every wanting handle's destination: the
/// last by renaming the file itself, the others by a hard link (or, where
/// the filesystem refuses one, a copy), each through a temp file renamed
/// over the destination. One destination failing fails only its handles.
fn deliver_to(verified: &Path, handles: Vec<Transfer>) -> Vec<(Transfer, Result<()>)> {
    let mut by_dest: Vec<(PathBuf, Vec<Transfer>)> = Vec::new();
    for h in handles {
        let dest = h.inner.request.path.clone();
        match by_dest.iter_mut().find(|(d, _)| *d == dest) {
            Some((_, hs)) => hs.push(h),
            None => by_dest.push((dest, vec![h])),
        }
    }
    let last = by_dest.len().saturating_sub(1);
    let mut out = Vec::new();
    for (n, (dest, hs)) in by_dest.into_iter().enumerate() {
        let r = if n == last {
            std::fs::rename(verified, &dest)
                .or_else(|_| link_or_copy(verified, &dest))
                .map_err(|e| Error::from_io(dest.display().to_string(), e))
        } else {
            link_or_copy(verified, &dest).map_err(|e| Error::from_io(dest.display().to_string(), e))
        };
        match r {
            Ok(()) => out.extend(hs.into_iter().map(|h| (h, Ok(())))),
            Err(e) => {
                let shown = e.chain();
                for h in hs {
                    let err = Error::backend(dest.display().to_string(), shown.clone(), "deliver");
                    out.push((h, Err(err)));
                }
            }
        }
    }
    out
}

/// Put a copy of `src` at `dest` atomically: a hard link, else a copy
/// fsynced before it is renamed over `dest`.
fn link_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".xferkit-part");
    let linked = builder.make_in(&dir, |p| std::fs::hard_link(src, p));
    let tmp = match linked {
        Ok(t) => t.into_temp_path(),
        Err(_) => {
            let mut tmp = builder.tempfile_in(&dir)?;
            let mut from = std::fs::File::open(src)?;
            std::io::copy(&mut from, tmp.as_file_mut())?;
            // The mode the verified file got (the umask's), as a link would.
            tmp.as_file()
                .set_permissions(from.metadata()?.permissions())?;
            tmp.as_file().sync_all()?;
            tmp.into_temp_path()
        }
    };
    tmp.persist(dest).map_err(|e| e.error)
}
