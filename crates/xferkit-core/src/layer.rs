//! The one seam through which a layer above core takes part in the
//! manager's transfers: the sharing layer (`xferkit-share`: content dedupe,
//! thumbnails, share URLs, end-to-end encryption) plugs in here, and core
//! knows nothing of what it does.
//!
//! A registry holds at most one layer ([`Registry::set_layer`](crate::Registry::set_layer));
//! every [`TransferManager`](crate::TransferManager) over that registry calls it:
//!
//! 1. [`TransferLayer::prepare`] in `file_instance`, before the request is
//!    identified: the layer may take what it needs off the request (a secret
//!    in a link's `#fragment`) into the request's
//!    [`extensions`](crate::TransferRequest::extensions), and tell apart
//!    requests that must not share one network transfer
//!    ([`TransferRequest::add_identity`](crate::TransferRequest::add_identity)).
//! 2. Inside the transfer's job, holding its concurrency slot, with its
//!    [`TransferCtx`] (progress, stop, pause, bandwidth, retry policy and
//!    commit gate): [`TransferLayer::download_store`] for a download (the
//!    store to read through) and [`TransferLayer::upload`] for an upload,
//!    which runs the upload through an [`Upload`]: the layer may change the
//!    store (wrap it), the key and the options, then [`Upload::send`] the
//!    source once, or report it [`Upload::found`] already stored, and attach
//!    [`Extensions`] that reach the transfer's final
//!    [`FileInfo`](crate::FileInfo).
//!
//! The manager's promises hold whatever the layer does: one network transfer
//! per file, stop and pause (through the context the store call gets),
//! listeners in order with no lock held. A layer's error fails the transfer
//! like a store's.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::{
    DynHandler, Error, Extensions, Key, PutOptions, RemoteObject, Result, TransferCtx,
    TransferRequest, UploadSource, async_trait,
};

/// A layer above core in the manager's transfers; see the [module docs](self).
/// Every method has a default that changes nothing.
#[async_trait]
pub trait TransferLayer: Any + Send + Sync + fmt::Debug {
    /// Called by `file_instance` before the request is identified. An error
    /// fails `file_instance` (the error must not show what the layer keeps
    /// secret).
    fn prepare(&self, request: &mut TransferRequest) -> Result<()> {
        let _ = request;
        Ok(())
    }

    /// A download, in its job: the store to read `request` through, given
    /// the store its URL resolved to.
    fn download_store(&self, request: &TransferRequest, store: DynHandler) -> Result<DynHandler> {
        let _ = request;
        Ok(store)
    }

    /// An upload, in its job: run it and return the stored object. The
    /// default sends the source to the key asked for.
    async fn upload(&self, upload: &mut Upload<'_>) -> Result<RemoteObject> {
        upload.send().await
    }
}

/// One upload through the manager, as [`TransferLayer::upload`] runs it.
#[non_exhaustive]
pub struct Upload<'a> {
    /// The store the upload goes to. A layer may wrap it (to encrypt) before
    /// sending; stat, presign or store more through it.
    pub store: DynHandler,
    /// The key to store under; a layer may change it before sending.
    pub key: Key,
    /// The options sent; a layer may change them before sending.
    pub options: PutOptions,
    request: &'a TransferRequest,
    file: Option<PathBuf>,
    source: Option<UploadSource>,
    ctx: &'a TransferCtx,
    announce: &'a (dyn Fn(String) + Send + Sync),
    extensions: Extensions,
    sent: bool,
}

impl fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("store", &self.store.name())
            .field("key", &self.key)
            .field("file", &self.file)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl<'a> Upload<'a> {
    pub(crate) fn new(
        request: &'a TransferRequest,
        store: DynHandler,
        key: Key,
        file: Option<PathBuf>,
        source: UploadSource,
        ctx: &'a TransferCtx,
        announce: &'a (dyn Fn(String) + Send + Sync),
    ) -> Self {
        Upload {
            store,
            key,
            options: request.options.clone(),
            request,
            file,
            source: Some(source),
            ctx,
            announce,
            extensions: Extensions::new(),
            sent: false,
        }
    }

    /// The request as the caller made it (its options, its extensions).
    pub fn request(&self) -> &TransferRequest {
        self.request
    }

    /// The source file, for an upload of a file (`None` for bytes or a
    /// stream, which can be read only once: by [`send`](Self::send)).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The transfer's context; [`send`](Self::send) passes it to the store.
    pub fn ctx(&self) -> &TransferCtx {
        self.ctx
    }

    /// What reaches the transfer's final [`FileInfo`](crate::FileInfo)
    /// (when it completes).
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Tell the transfer's listeners the URL the upload goes to (the key may
    /// have changed), then upload the source to [`store`](Self::store) under
    /// [`key`](Self::key) with [`options`](Self::options) and the transfer's
    /// context. The source is sent once: a second call fails.
    pub async fn send(&mut self) -> Result<RemoteObject> {
        let source = self.source.take().ok_or_else(|| {
            Error::backend(
                crate::url::shown(&self.request.url),
                "the upload source was already sent",
                "sent twice",
            )
        })?;
        (self.announce)(self.store.url_for(&self.key));
        let object = self
            .store
            .upload(&self.key, source, &self.options, self.ctx)
            .await?;
        self.sent = true;
        Ok(object)
    }

    /// The content is already stored as `object`: nothing is sent, the
    /// listeners are told its URL, and the transfer reports the bytes it
    /// moved (none), not the object's size.
    pub fn found(&mut self, object: RemoteObject) -> RemoteObject {
        self.source = None;
        (self.announce)(self.store.url_for(&self.key));
        object
    }

    /// The extensions, and whether the source was sent.
    pub(crate) fn finish(self) -> (Extensions, bool) {
        (self.extensions, self.sent)
    }
}
