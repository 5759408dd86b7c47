//! [`Sharing`]: the transfer layer that runs the sharing flow around an
//! upload.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use xferkit_core::layer::Upload;
use xferkit_core::{
    Direction, DynHandler, Error, ErrorKind, PresignMethod, PutOptions, Registry, RemoteObject,
    Result, TransferCtx, TransferLayer, TransferRequest, UploadSource, async_trait,
};

use crate::dedupe::{Dedupe, content_key, sha256_file};
use crate::e2e::{Encrypted, LinkSecret, split_link};
use crate::info::{ShareInfo, ShareOptions};
use crate::thumbnail::{self, Thumbnailer, thumbnail_key};

/// The sharing layer: install it with [`Registry::set_layer`] and every
/// manager over the registry runs uploads with content dedupe (per store),
/// thumbnails (with a [`Thumbnailer`]), share URLs and end-to-end encryption
/// as their requests ask ([`crate::ShareRequestExt`]), and reports them in
/// [`ShareInfo`].
#[derive(Clone, Default)]
pub struct Sharing {
    dedupe: BTreeMap<String, Dedupe>,
    thumbnailer: Option<Arc<dyn Thumbnailer>>,
}

impl fmt::Debug for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharing")
            .field("dedupe", &self.dedupe)
            .field("thumbnailer", &self.thumbnailer.is_some())
            .finish()
    }
}

impl Sharing {
    /// No dedupe, no thumbnails: share URLs and encryption when asked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Name uploads to store `store` by their content (see [`Dedupe`]).
    pub fn with_dedupe(mut self, store: &str, mode: Dedupe) -> Self {
        self.dedupe.insert(store.to_string(), mode);
        self
    }

    /// The dedupe mode of store `store` (`Off` unless set).
    pub fn dedupe(&self, store: &str) -> Dedupe {
        self.dedupe.get(store).copied().unwrap_or_default()
    }

    /// Make thumbnails of image uploads with `t` (stored next to the object
    /// as `KEY.thumb.jpg`).
    pub fn with_thumbnailer(mut self, t: Arc<dyn Thumbnailer>) -> Self {
        self.thumbnailer = Some(t);
        self
    }

    /// The sharing layer of `registry`, if that is its layer.
    pub fn of(registry: &Registry) -> Option<&Sharing> {
        registry
            .layer()
            .and_then(|l| (&**l as &dyn Any).downcast_ref::<Sharing>())
    }
}

/// The secret an encrypted link's fragment held, kept apart from its URL in
/// the download request's extensions. Shows nothing of it (`Debug`), and
/// serializes to nothing.
#[derive(Debug, Clone, PartialEq)]
struct OpenLink(LinkSecret);

impl serde::Serialize for OpenLink {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[async_trait]
impl TransferLayer for Sharing {
    /// An encrypted upload is never merged with a plain one. A download of a
    /// link to an encrypted attachment (`…#aes128gcm.KEY.DIGEST`): the
    /// fragment is taken off the URL (out of [`TransferRequest::url`], the
    /// transfer's `FileInfo` and every message) and kept in the request; the
    /// transfer is identified by a fingerprint of the secret, so links with
    /// other keys never share it. A malformed `aes128gcm` fragment is
    /// `InvalidUrl`, naming the URL without it.
    fn prepare(&self, request: &mut TransferRequest) -> Result<()> {
        match request.direction {
            Direction::Upload => {
                if ShareOptions::of(request).encrypt {
                    request.add_identity("e2e");
                }
            }
            Direction::Download => {
                if let (url, Some(secret)) = split_link(&request.url)? {
                    request.url = url;
                    request.add_identity(&format!("e2e:{}", secret.fingerprint()));
                    request.extensions_mut().insert(OpenLink(secret));
                }
            }
        }
        Ok(())
    }

    /// A link to an encrypted attachment is read through an opening
    /// [`Encrypted`]: the content decrypted and checked.
    fn download_store(&self, request: &TransferRequest, store: DynHandler) -> Result<DynHandler> {
        Ok(match request.extensions().get::<OpenLink>() {
            Some(OpenLink(secret)) => Arc::new(Encrypted::opening(store, secret.clone())),
            None => store,
        })
    }

    /// Encrypt (the store is wrapped in a sealing [`Encrypted`]), check the
    /// store can share before anything is sent, dedupe by content, upload,
    /// share, thumbnail.
    async fn upload(&self, up: &mut Upload<'_>) -> Result<RemoteObject> {
        let opts = ShareOptions::of(up.request());
        let sealer = if opts.encrypt {
            let s = Arc::new(Encrypted::sealing(up.store.clone())?);
            up.store = s.clone();
            Some(s)
        } else {
            None
        };
        let h = up.store.clone();
        if opts.share_for.is_some() && !h.capabilities().presign_get {
            return Err(Error::not_supported(
                h.name(),
                "shareable URLs (this store cannot presign; for a local store set serve_url and \
                 signing_key and run `xfer serve`)",
            ));
        }
        let mut info = ShareInfo::default();
        let path = up.file().map(|p| p.to_path_buf());
        // Dedupe and thumbnails apply to files only, and never to encrypted
        // uploads: both would tell the store about the plaintext.
        let dedupe = match (&path, &sealer) {
            (Some(_), None) => self.dedupe(h.name()),
            _ => Dedupe::Off,
        };
        let mut existing = None;
        if let (Dedupe::Content, Some(path)) = (dedupe, &path) {
            let hex = sha256_file(path, up.ctx()).await?;
            up.key = content_key(&up.key, &hex)?;
            info.checksum = Some(format!("sha256:{hex}"));
            up.options.if_not_exists = true;
            if up.options.content_type.is_none() {
                up.options.content_type = Some(up.request().options.content_type_for(&up.key));
            }
            existing = match h.stat(&up.key).await {
                Ok(obj) => Some(obj),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
        }
        let object = match existing {
            // Already stored: nothing is sent.
            Some(obj) => {
                info.deduplicated = true;
                up.found(obj)
            }
            None => match up.send().await {
                Ok(obj) => obj,
                // Same content already stored (maybe by a concurrent upload
                // of the same file): the key is its hash, so the object is
                // the one wanted.
                Err(e) if dedupe == Dedupe::Content && e.kind() == ErrorKind::AlreadyExists => {
                    info.deduplicated = true;
                    h.stat(&up.key).await?
                }
                Err(e) => return Err(e),
            },
        };
        let key = up.key.clone();
        if let Some(d) = opts.share_for {
            let p = h.presign(&key, PresignMethod::Get, d).await?;
            info.share_expires_at = Some(unix(p.expires_at));
            info.share_url = Some(p.url);
        }
        let thumbnailer = self
            .thumbnailer
            .clone()
            .filter(|_| opts.thumbnail && sealer.is_none());
        if let (Some(t), Some(path)) = (thumbnailer, &path) {
            let content_type = object
                .content_type
                .clone()
                .unwrap_or_else(|| up.options.content_type_for(&key));
            match thumbnail::make(t, path, &content_type).await {
                None => {}
                Some(Err(e)) => info.thumbnail_error = Some(e.to_string()),
                Some(Ok(jpeg)) => {
                    let topts = PutOptions::default().with_content_type("image/jpeg");
                    let stored = match thumbnail_key(&key) {
                        Ok(tkey) => h
                            .upload(
                                &tkey,
                                UploadSource::from_bytes(jpeg),
                                &topts,
                                &TransferCtx::none(),
                            )
                            .await
                            .map(|obj| (tkey, obj)),
                        Err(e) => Err(e),
                    };
                    match stored {
                        Ok((tkey, obj)) => {
                            info.thumbnail_url = Some(obj.url);
                            if let Some(d) = opts.share_for {
                                match h.presign(&tkey, PresignMethod::Get, d).await {
                                    Ok(p) => info.thumbnail_share_url = Some(p.url),
                                    Err(e) => info.thumbnail_error = Some(e.to_string()),
                                }
                            }
                        }
                        Err(e) => info.thumbnail_error = Some(e.to_string()),
                    }
                }
            }
        }
        if let Some(s) = sealer {
            let secret = s.secret().ok_or_else(|| {
                Error::backend(
                    xferkit_core::url::shown(&object.url),
                    "the encrypted upload left no key",
                    "e2e",
                )
            })?;
            let base = info.share_url.take().unwrap_or_else(|| object.url.clone());
            info.share_url = Some(secret.attach(&base));
        }
        up.extensions_mut().insert(info);
        Ok(object)
    }
}
