//! Helpers for the cases: data, digests, a counting wrapper store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use xferkit_core::Key;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, DynHandler, FileTransferHandler, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx, UploadSource,
    async_trait,
};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256_file(p: &std::path::Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_default())
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Wraps a store and counts `download_stream` and `upload` calls.
#[derive(Debug)]
pub struct Counting {
    pub inner: DynHandler,
    pub downloads: AtomicUsize,
    pub uploads: AtomicUsize,
}

impl Counting {
    pub fn new(inner: DynHandler) -> Arc<Self> {
        Arc::new(Counting {
            inner,
            downloads: AtomicUsize::new(0),
            uploads: AtomicUsize::new(0),
        })
    }
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl FileTransferHandler for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn schemes(&self) -> &[&str] {
        self.inner.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.inner.url_for(key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.inner.key_for_url(url)
    }
    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        self.uploads.fetch_add(1, Ordering::SeqCst);
        self.inner.upload(key, source, opts, ctx).await
    }
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        self.downloads.fetch_add(1, Ordering::SeqCst);
        self.inner.download_stream(key, range).await
    }
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        self.inner.stat(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_many(&self, keys: &[Key]) -> Result<Vec<(Key, Result<()>)>> {
        self.inner.delete_many(keys).await
    }
    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        self.inner.copy(from, to).await
    }
    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.inner.presign(key, method, expires_in).await
    }
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.inner.list_pending_uploads(prefix).await
    }
    async fn abort_pending_upload(&self, pending: &PendingUpload) -> Result<()> {
        self.inner.abort_pending_upload(pending).await
    }
    async fn check_ranged_download(&self, key: &Key, file: &std::fs::File) -> Result<()> {
        self.inner.check_ranged_download(key, file).await
    }
    fn list_with(
        &self,
        prefix: &str,
        opts: &xferkit_core::ListOptions,
    ) -> BoxStream<'static, Result<xferkit_core::ListEntry>> {
        self.inner.list_with(prefix, opts)
    }
}
