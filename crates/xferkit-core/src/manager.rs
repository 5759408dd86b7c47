//! The transfer manager: the mesibo file-transfer API, in Rust.
//!
//! | mesibo | here |
//! |---|---|
//! | `getFileInstance` | [`TransferManager::file_instance`]: the transfer already in flight for the same URL (download) or source + destination (upload), else a new idle one |
//! | `startFileTransfer` | [`Transfer::start`]: idempotent, queued under a concurrency cap with priority, never blocks |
//! | `stopFileTransfer` | [`Transfer::stop`]: ends within a second, status `Cancelled`, nothing partial visible |
//! | `updateFileTransferProgress` / listener | [`FileTransferListener`] and [`Transfer::subscribe`]: [`FileInfo`] snapshots, in order, monotonic |
//! | `isFileTransferEnabled` | [`TransferManager::is_enabled`] / [`TransferManager::set_enabled`] |

use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DownloadOptions;
use crate::share::ShareRequest;
use crate::{
    Error, ErrorKind, FileTransferExt, ProgressSink, PutOptions, Registry, RemoteObject, Result,
    RetryPolicy, Thumbnailer, TransferCtx,
};

/// Default number of transfers running at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// How long a stopped transfer's handler gets to clean up before the
/// manager abandons it and reports `Cancelled` anyway.
const STOP_GRACE: Duration = Duration::from_millis(900);

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
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct FileInfo {
    pub id: u64,
    pub direction: Direction,
    /// Download: the source URL. Upload: the destination URL.
    pub url: String,
    /// Download: the destination file. Upload: the source file.
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
    /// Upload: a URL anyone can GET until `share_expires_at` (Unix seconds),
    /// when the request asked for one ([`TransferRequest::with_share`]).
    pub share_url: Option<String>,
    pub share_expires_at: Option<u64>,
    /// Upload of an image: the thumbnail stored next to the object (canonical
    /// URL, and a shareable one when sharing).
    pub thumbnail_url: Option<String>,
    pub thumbnail_share_url: Option<String>,
    /// Why an image got no thumbnail (the upload itself succeeded).
    pub thumbnail_error: Option<String>,
    /// Upload to a store with `dedupe = "content"`: the content was already
    /// stored, nothing was sent.
    pub deduplicated: bool,
    /// `sha256:HEX` of the uploaded content, when computed (dedupe).
    pub checksum: Option<String>,
}

/// Receives every snapshot of every transfer of a manager, in order.
/// Called on the transfer's task: keep it quick and non-blocking.
pub trait FileTransferListener: Send + Sync {
    fn on_progress(&self, info: &FileInfo);
}

impl<F: Fn(&FileInfo) + Send + Sync> FileTransferListener for F {
    fn on_progress(&self, info: &FileInfo) {
        self(info)
    }
}

/// What to transfer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransferRequest {
    pub direction: Direction,
    pub url: String,
    pub path: PathBuf,
    /// Higher runs first when transfers queue.
    pub priority: i32,
    /// Upload options (content type, metadata, create-only).
    pub options: PutOptions,
    /// Upload: also make a shareable URL valid this long.
    pub share_for: Option<Duration>,
    /// Upload: make a thumbnail for images when the manager has a
    /// thumbnailer (default true).
    pub thumbnail: bool,
}

impl TransferRequest {
    /// Download `url` to the local file `dest`.
    pub fn download(url: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        TransferRequest {
            direction: Direction::Download,
            url: url.into(),
            path: dest.into(),
            priority: 0,
            options: PutOptions::default(),
            share_for: None,
            thumbnail: true,
        }
    }

    /// Upload the local file `source` to `url` (a canonical store URL, see
    /// [`crate::FileTransferHandler::url_for`]).
    pub fn upload(source: impl Into<PathBuf>, url: impl Into<String>) -> Self {
        TransferRequest {
            direction: Direction::Upload,
            url: url.into(),
            path: source.into(),
            priority: 0,
            options: PutOptions::default(),
            share_for: None,
            thumbnail: true,
        }
    }

    /// Upload: also return a shareable URL (S3/GCS presign, Azure SAS, a
    /// signed `xfer serve` URL) valid for `valid_for`, in
    /// [`FileInfo::share_url`]. Stores that cannot presign fail the transfer
    /// before sending anything.
    pub fn with_share(mut self, valid_for: Duration) -> Self {
        self.share_for = Some(valid_for);
        self
    }

    /// Upload: no thumbnail, even for an image.
    pub fn without_thumbnail(mut self) -> Self {
        self.thumbnail = false;
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

    fn identity(&self) -> String {
        match self.direction {
            Direction::Download => format!("D\0{}", self.url),
            Direction::Upload => format!("U\0{}\0{}", self.path.display(), self.url),
        }
    }
}

struct TransferInner {
    id: u64,
    identity: String,
    request: TransferRequest,
    manager: Weak<ManagerInner>,
    info: Mutex<FileInfo>,
    watch: watch::Sender<FileInfo>,
    cancel: CancellationToken,
    started: Mutex<Option<Instant>>,
}

/// One transfer. Cheap to clone; clones refer to the same transfer.
#[derive(Clone)]
pub struct Transfer {
    inner: Arc<TransferInner>,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("id", &self.inner.id)
            .field("url", &self.inner.request.url)
            .field("status", &self.info().status)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A listener that panicked must not wedge every later transfer.
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
    pub fn subscribe(&self) -> watch::Receiver<FileInfo> {
        self.inner.watch.subscribe()
    }

    /// Queue the transfer (idempotent; never blocks).
    pub fn start(&self) {
        if let Some(m) = self.inner.manager.upgrade() {
            ManagerInner::start(&m, self);
        }
    }

    /// Stop the transfer: within a second its status is `Cancelled`, and
    /// nothing partial is left under its destination.
    pub fn stop(&self) {
        self.inner.cancel.cancel();
        let status = self.info().status;
        if matches!(status, TransferStatus::Idle | TransferStatus::Queued) {
            self.finish(TransferStatus::Cancelled, None, None);
        }
    }

    /// Wait for a terminal status and return the final snapshot.
    pub async fn wait(&self) -> FileInfo {
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

    fn update(&self, f: impl FnOnce(&mut FileInfo)) {
        let mut info = lock(&self.inner.info);
        if info.status.is_terminal() {
            return;
        }
        f(&mut info);
        if let Some(start) = *lock(&self.inner.started) {
            let secs = start.elapsed().as_secs_f64();
            if secs > 0.0 {
                info.rate = info.transferred as f64 / secs;
            }
        }
        let snapshot = info.clone();
        // Listeners run under the lock so every listener sees snapshots in
        // order, and before `wait()` wakes, so a waiter finds that every
        // listener has already heard the final status.
        if let Some(m) = self.inner.manager.upgrade() {
            let listeners = m
                .listeners
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for l in listeners {
                l.on_progress(&snapshot);
            }
        }
        self.inner.watch.send_replace(snapshot);
    }

    fn finish(&self, status: TransferStatus, err: Option<Error>, obj: Option<RemoteObject>) {
        self.update(|i| {
            i.status = status;
            if let Some(e) = &err {
                i.error_kind = Some(e.kind());
                i.error = Some(e.chain());
            }
            if let Some(o) = obj {
                i.size = Some(o.size);
                // A deduplicated upload moved nothing and says so.
                if !i.deduplicated {
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
                .active
                .get(&self.inner.identity)
                .is_some_and(|t| Arc::ptr_eq(&t.inner, &self.inner))
            {
                st.active.remove(&self.inner.identity);
            }
        }
    }
}

struct Progress {
    transfer: Transfer,
    /// Requests (parts) currently waiting to retry.
    waiting: AtomicUsize,
}

impl Progress {
    fn new(transfer: Transfer) -> Self {
        Progress {
            transfer,
            waiting: AtomicUsize::new(0),
        }
    }
}

impl ProgressSink for Progress {
    fn add(&self, n: u64) {
        self.transfer.update(|i| {
            i.transferred += n;
            if let Some(s) = i.size {
                i.transferred = i.transferred.min(s);
            }
        });
    }
    fn set_total(&self, total: u64) {
        self.transfer.update(|i| i.size = Some(total));
    }
    // RetryLater while any request waits (showing the latest announced
    // time), back to InProgress when the last one tries again.
    fn retry_at(&self, at: Option<SystemTime>) {
        match at {
            Some(t) => {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                self.transfer.update(|i| {
                    i.status = TransferStatus::RetryLater;
                    i.retry_at = Some(t);
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
                    self.transfer.update(|i| {
                        i.status = TransferStatus::InProgress;
                        i.retry_at = None;
                    });
                }
            }
        }
    }
}

struct Queued {
    priority: i32,
    seq: u64,
    transfer: Transfer,
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
    active: HashMap<String, Transfer>,
    queue: BinaryHeap<Queued>,
    running: usize,
    seq: u64,
}

struct ManagerInner {
    registry: Arc<Registry>,
    concurrency: usize,
    enabled: AtomicBool,
    next_id: AtomicU64,
    state: Mutex<State>,
    listeners: RwLock<Vec<Arc<dyn FileTransferListener>>>,
    runtime: tokio::runtime::Handle,
    retry: RwLock<RetryPolicy>,
    thumbnailer: RwLock<Option<Arc<dyn Thumbnailer>>>,
    download: RwLock<DownloadOptions>,
}

/// Runs transfers against the stores of a [`Registry`].
#[derive(Clone)]
pub struct TransferManager {
    inner: Arc<ManagerInner>,
}

impl std::fmt::Debug for TransferManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
                listeners: RwLock::new(Vec::new()),
                runtime: tokio::runtime::Handle::current(),
                retry: RwLock::new(RetryPolicy::default()),
                thumbnailer: RwLock::new(None),
                download: RwLock::new(DownloadOptions::default()),
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

    /// Make thumbnails of image uploads with `t` (stored next to the object
    /// as `KEY.thumb.jpg`); `None` turns thumbnails off.
    pub fn set_thumbnailer(&self, t: Option<Arc<dyn Thumbnailer>>) {
        *self
            .inner
            .thumbnailer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Follow every transfer of this manager.
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

    /// Pause (false) or resume (true) starting queued transfers; running
    /// ones continue.
    pub fn set_enabled(&self, enabled: bool) {
        self.inner.enabled.store(enabled, Ordering::SeqCst);
        if enabled {
            ManagerInner::pump(&self.inner);
        }
    }

    /// The transfer for `request`: the one already in flight for the same
    /// download URL, or the same upload source and destination, if any;
    /// otherwise a new idle one. Fails early on a URL no store owns.
    pub fn file_instance(&self, request: TransferRequest) -> Result<Transfer> {
        self.inner.registry.resolve(&request.url)?;
        let identity = request.identity();
        let mut st = lock(&self.inner.state);
        if let Some(t) = st.active.get(&identity)
            && !t.info().status.is_terminal()
        {
            return Ok(t.clone());
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let info = FileInfo {
            id,
            direction: request.direction,
            url: request.url.clone(),
            path: request.path.clone(),
            size: None,
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
            share_url: None,
            share_expires_at: None,
            thumbnail_url: None,
            thumbnail_share_url: None,
            thumbnail_error: None,
            deduplicated: false,
            checksum: None,
        };
        let transfer = Transfer {
            inner: Arc::new(TransferInner {
                id,
                identity: identity.clone(),
                request,
                manager: Arc::downgrade(&self.inner),
                watch: watch::Sender::new(info.clone()),
                info: Mutex::new(info),
                cancel: CancellationToken::new(),
                started: Mutex::new(None),
            }),
        };
        st.active.insert(identity, transfer.clone());
        Ok(transfer)
    }

    /// `file_instance` + `start`.
    pub fn start(&self, request: TransferRequest) -> Result<Transfer> {
        let t = self.file_instance(request)?;
        t.start();
        Ok(t)
    }
}

impl ManagerInner {
    fn start(this: &Arc<Self>, t: &Transfer) {
        {
            let mut info = lock(&t.inner.info);
            if info.status != TransferStatus::Idle {
                return; // already started, or over: start is idempotent
            }
            info.status = TransferStatus::Queued;
        }
        t.update(|_| {}); // announce Queued
        {
            let mut st = lock(&this.state);
            st.seq += 1;
            let seq = st.seq;
            st.queue.push(Queued {
                priority: t.inner.request.priority,
                seq,
                transfer: t.clone(),
            });
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
                    Some(q) if q.transfer.info().status != TransferStatus::Queued => continue,
                    Some(q) => {
                        st.running += 1;
                        q.transfer
                    }
                }
            };
            let me = this.clone();
            this.runtime.spawn(async move {
                run(&me, next).await;
                lock(&me.state).running -= 1;
                Self::pump(&me);
            });
        }
    }
}

async fn run(m: &Arc<ManagerInner>, t: Transfer) {
    *lock(&t.inner.started) = Some(Instant::now());
    t.update(|i| i.status = TransferStatus::InProgress);
    let token = t.inner.cancel.clone();
    let policy = m.retry.read().unwrap_or_else(|p| p.into_inner()).clone();
    let ctx = TransferCtx::new(Arc::new(Progress::new(t.clone())), token.clone())
        .with_retry_policy(policy);
    let work = perform(m, &t, &ctx);
    // The handler is asked to stop through `ctx`; if it has not returned
    // shortly after, it is dropped so that stop always ends within a second.
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let result = tokio::select! {
        r = work => r,
        _ = deadline => Err(Error::cancelled(&t.inner.request.url)),
    };
    match result {
        Ok(obj) => t.finish(TransferStatus::Completed, None, Some(obj)),
        Err(e) if token.is_cancelled() || e.kind() == ErrorKind::Cancelled => {
            t.finish(TransferStatus::Cancelled, None, None)
        }
        Err(e) => {
            tracing::debug!(url = %t.inner.request.url, error = %e, "transfer failed");
            t.finish(TransferStatus::Failed, Some(e), None)
        }
    }
}

async fn perform(m: &Arc<ManagerInner>, t: &Transfer, ctx: &TransferCtx) -> Result<RemoteObject> {
    let req = &t.inner.request;
    let (handler, key) = m.registry.resolve(&req.url)?;
    match req.direction {
        Direction::Download => {
            let opts = m.download.read().unwrap_or_else(|p| p.into_inner()).clone();
            handler
                .download_to_path_with(&key, &req.path, None, &opts, ctx)
                .await
        }
        Direction::Upload => {
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
            let thumbnailer = if req.thumbnail {
                m.thumbnailer
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            } else {
                None
            };
            let share = ShareRequest {
                handler: &handler,
                key,
                path: &req.path,
                options: &req.options,
                dedupe: m.registry.dedupe(handler.name()),
                share_for: req.share_for,
                thumbnailer,
            };
            let url_of = |k: &str| handler.url_for(k);
            let out = crate::share::upload(share, ctx, |k| {
                let url = url_of(k);
                t.update(|i| i.url = url);
            })
            .await?;
            t.update(|i| {
                i.deduplicated = out.deduplicated;
                i.checksum = out.checksum.clone();
                i.share_url = out.share_url.clone();
                i.share_expires_at = out.share_expires_at;
                i.thumbnail_url = out.thumbnail_url.clone();
                i.thumbnail_share_url = out.thumbnail_share_url.clone();
                i.thumbnail_error = out.thumbnail_error.clone();
            });
            Ok(out.object)
        }
    }
}
