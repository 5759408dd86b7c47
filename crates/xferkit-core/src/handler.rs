//! The `FileTransferHandler` trait: what every storage backend implements.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::url::ObjectUrl;
use crate::{
    ByteRange, ByteStream, Capabilities, Key, PendingUpload, PresignMethod, PresignedUrl,
    PutOptions, RemoteObject, Result, TransferCtx, UploadSource,
};

/// Deletes the default [`FileTransferHandler::delete_many`] runs at once.
const DELETE_MANY_CONCURRENCY: usize = 16;

/// A store that files move to and from.
///
/// Object-safe: stores are used as `Arc<dyn FileTransferHandler>`.
/// Conveniences built on these methods (atomic download to a path) live in
/// [`crate::FileTransferExt`], implemented once for every handler.
///
/// # Contract
///
/// Every implementation must honour all of the following; the
/// `xferkit-conformance` suite checks each point against every backend.
///
/// **Keys.** `key` arguments are keys *within the store* (the store's
/// configured prefix is added by the handler), as [`Key`]s: checked against
/// the portable rules once, when the caller built them, so a handler never
/// checks them again. A handler may refuse more (e.g. a store length limit,
/// a path through a symlink), with `InvalidKey` naming the key, without
/// touching the store. List *prefixes* (`list`, `list_with`,
/// `list_pending_uploads`) are plain `&str`: a prefix may be empty, end in
/// `/` or stop mid-segment, which no key may.
///
/// **URLs.** [`url_for`](Self::url_for) gives the canonical URL of a key, in
/// one of the store's [`schemes`](Self::schemes), and
/// [`key_for_url`](Self::key_for_url) is its inverse: it returns `Some(key)`
/// exactly for URLs that address an object of this store (same scheme,
/// bucket or root, under its prefix), `None` otherwise.
///
/// **Upload.** `upload` makes the object visible only when all its bytes are
/// stored: a failed or cancelled upload leaves no object under the key (and
/// an earlier version, if any, intact) and no pending multipart upload. With
/// `if_not_exists` the create is atomic and an existing key yields
/// `AlreadyExists`. The returned [`RemoteObject`] carries the canonical URL,
/// size, etag and content type (`PutOptions::content_type_for`) and, where
/// [`Capabilities::metadata`], the user metadata. Progress is reported through
/// `ctx` as bytes are acknowledged: monotonic, summing to the size.
///
/// **Download.** `download_stream` returns the object's record and its bytes
/// (only `range`, when given; see [`ByteRange::resolve`] for the semantics:
/// a range starting at or past the end is `InvalidRange`).
///
/// **Cancellation.** When `ctx` is cancelled the handler stops within a
/// second, cleans up (aborts multipart uploads, removes temp files) and
/// returns `Cancelled`.
///
/// **Missing objects.** `stat`, `download_stream`, `copy` (source) and
/// `presign(Get)` on a missing key are `NotFound`; `delete` of a missing key
/// is `Ok` (idempotent), and so is its entry in `delete_many`; `list` of an
/// empty prefix is an empty stream.
///
/// **List.** `list(prefix)` yields every object whose key starts with
/// `prefix` (a plain string prefix, not only whole segments), each exactly
/// once, paging through the store transparently, keys relative to the store.
///
/// **Pending uploads.** Where [`Capabilities::list_pending_uploads`],
/// [`abort_pending_upload`](Self::abort_pending_upload) aborts one upload as
/// [`list_pending_uploads`](Self::list_pending_uploads) returned it and frees
/// its parts: afterwards it is no longer listed. Aborting one that is already
/// gone (completed or aborted meanwhile) is `Ok`. Its key is a plain
/// string, not a [`Key`]: orphans left by other tools under names outside
/// the portable rules must be removable too. Stores without such uploads keep the default, which is
/// `NotSupported`.
///
/// **Errors.** Failures map to [`crate::Error`] kinds; retryable ones
/// (throttling, 5xx, timeouts, resets) are `Transient`. No error, log line or
/// `Debug` output contains a secret.
#[async_trait]
pub trait FileTransferHandler: Send + Sync + std::fmt::Debug {
    /// The store's configured name.
    fn name(&self) -> &str;

    /// What this store supports.
    fn capabilities(&self) -> Capabilities;

    /// The URL schemes of this store's URLs (`["s3"]`; a store of plain
    /// links: `["http", "https"]`). Core has no list of schemes:
    /// [`crate::Registry`] accepts the URLs of those its stores report.
    fn schemes(&self) -> &[&str];

    /// Canonical URL of `key`.
    fn url_for(&self, key: &Key) -> String;

    /// The key that `url` addresses in this store, if this store owns it.
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key>;

    /// Upload `source` to `key`.
    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject>;

    /// Open `key` (or a range of it) for reading.
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)>;

    /// Metadata of `key`.
    async fn stat(&self, key: &Key) -> Result<RemoteObject>;

    /// Every object whose key starts with `prefix`, in ascending byte order
    /// of keys.
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>>;

    /// [`list`](Self::list) with a delimiter (common prefixes as
    /// "directories"), start-after and a limit ([`crate::list::ListOptions`]),
    /// entries in ascending order of [`crate::list::ListEntry::name`]. The
    /// default emulates them over `list` ([`crate::list::emulate`]); stores
    /// whose service does them override it
    /// ([`Capabilities::list_native`]), with the same result.
    fn list_with(
        &self,
        prefix: &str,
        opts: &crate::list::ListOptions,
    ) -> BoxStream<'static, Result<crate::list::ListEntry>> {
        crate::list::emulate(self.list(prefix), prefix, opts)
    }

    /// Delete `key`; deleting a missing key succeeds.
    async fn delete(&self, key: &Key) -> Result<()>;

    /// Delete every key of `keys`, as [`delete`](Self::delete) deletes one:
    /// each key comes back with its own result, in the order given (a
    /// missing key is `Ok`, and one failure does not stop the others). The outer `Err` is for a failure of the
    /// whole batch, where no key's fate is known (e.g. the store refused the
    /// request). Stores whose service deletes many keys in one request
    /// override it (S3: DeleteObjects, 1000 keys a request); the default
    /// calls `delete`, 16 keys at once.
    async fn delete_many(&self, keys: &[Key]) -> Result<Vec<(Key, Result<()>)>> {
        Ok(delete_each(self, keys).await)
    }

    /// Server-side copy of `from` to `to` (content type and metadata kept).
    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject>;

    /// A URL for `method` on `key`, valid for `expires_in`.
    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl>;

    /// Check a whole-object download that the download engine fetched in
    /// ranges into `file` (every byte written, not yet fsynced or put in
    /// place): an error fails the download and removes the file. For
    /// checks that span the whole object and that no single range can make
    /// (the digest of an end-to-end encrypted link: xferkit-share's `e2e`);
    /// a one-stream download is checked by the stream itself, which ends in
    /// an error instead. Default: nothing to check.
    async fn check_ranged_download(&self, key: &Key, file: &std::fs::File) -> Result<()> {
        let _ = (key, file);
        Ok(())
    }

    /// Incomplete multipart uploads under `prefix`, where
    /// [`Capabilities::list_pending_uploads`]; otherwise `NotSupported`.
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Abort the incomplete multipart upload `pending` (one that
    /// [`list_pending_uploads`](Self::list_pending_uploads) returned); one
    /// already gone is `Ok`. Default: `NotSupported`.
    async fn abort_pending_upload(&self, pending: &PendingUpload) -> Result<()> {
        let _ = pending;
        Err(crate::Error::not_supported(
            self.name(),
            "aborting pending uploads",
        ))
    }
}

/// Each of `keys` deleted with `store.delete`, 16 at once, with its own
/// result, in the order given: the default
/// [`FileTransferHandler::delete_many`], and the fallback of a store whose
/// batch delete cannot be used (Azure with Entra ID credentials).
pub async fn delete_each<H: FileTransferHandler + ?Sized>(
    store: &H,
    keys: &[Key],
) -> Vec<(Key, Result<()>)> {
    use futures::StreamExt;
    futures::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let r = store.delete(&key).await;
            (key, r)
        })
        .buffered(DELETE_MANY_CONCURRENCY)
        .collect()
        .await
}
