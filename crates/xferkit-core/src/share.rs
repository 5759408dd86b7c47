//! What the transfer manager adds to a plain upload for the out-of-band
//! sharing flow: content-addressed dedupe, a shareable (presigned) URL, and a
//! thumbnail stored next to the object.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{
    DynHandler, Error, ErrorKind, FileInfo, PresignMethod, PutOptions, RemoteObject, Result,
    TransferCtx, UploadSource,
};

/// How a store names uploaded objects (config `stores.NAME.dedupe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dedupe {
    /// The key the caller asked for.
    #[default]
    Off,
    /// A key derived from the content's SHA-256 (`sha256/HEX.ext`): an upload
    /// whose content is already stored sends nothing and returns the
    /// existing object.
    Content,
}

impl Dedupe {
    /// Parse the config value (`"off"` or `"content"`).
    pub fn parse(value: &str, what: &str) -> Result<Self> {
        match value {
            "off" | "none" => Ok(Dedupe::Off),
            "content" => Ok(Dedupe::Content),
            other => Err(Error::invalid_config(format!(
                "{what} = {other:?} is not a dedupe mode (use \"content\" or \"off\")"
            ))),
        }
    }
}

/// Makes a small JPEG preview of an image file. Implemented by the
/// `xferkit` facade's `thumbnail` feature; core has no image code.
pub trait Thumbnailer: Send + Sync {
    /// `None` if `content_type` is not an image type this thumbnailer
    /// handles; otherwise the JPEG bytes, or an error that names the file.
    /// Called on a blocking thread.
    fn thumbnail(&self, path: &Path, content_type: &str) -> Option<Result<Vec<u8>>>;
}

/// The key of a thumbnail stored next to `key`.
pub fn thumbnail_key(key: &str) -> String {
    format!("{key}.thumb.jpg")
}

/// The content-addressed key for content with SHA-256 `hex`, keeping the
/// requested key's extension (so content types and receivers' file names
/// stay right): `sha256/HEX.ext`.
pub fn content_key(requested: &str, hex: &str) -> String {
    let name = requested.rsplit('/').next().unwrap_or(requested);
    let ext = name
        .rsplit_once('.')
        .map(|(stem, ext)| (stem, ext.to_ascii_lowercase()))
        .filter(|(stem, ext)| {
            !stem.is_empty()
                && (1..=10).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(|(_, ext)| format!(".{ext}"))
        .unwrap_or_default();
    format!("sha256/{hex}{ext}")
}

/// SHA-256 of a file, hex; reads on a blocking thread, stops when `ctx` is
/// cancelled.
pub async fn sha256_file(path: &Path, ctx: &TransferCtx) -> Result<String> {
    let path: PathBuf = path.to_path_buf();
    let token = ctx.token().clone();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(|e| Error::from_io(&shown, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if token.is_cancelled() {
                return Err(Error::cancelled(&shown));
            }
            let n = f.read(&mut buf).map_err(|e| Error::from_io(&shown, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Error::backend("sha256", "hashing task failed", e))?
}

/// What the sharing flow adds to an upload's [`FileInfo`]: an extension,
/// read with [`ShareInfo::of`]. Its `Debug` shows the shareable URLs without
/// their query or fragment (a signature, an encrypted attachment's key);
/// `Serialize` (`xfer --json`) shows them whole.
#[derive(Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ShareInfo {
    /// A URL anyone can GET until `share_expires_at` (Unix seconds), when
    /// the request asked for one; for an encrypted upload, the link to hand
    /// out (with the key in its fragment).
    pub share_url: Option<String>,
    pub share_expires_at: Option<u64>,
    /// Upload of an image: the thumbnail stored next to the object
    /// (canonical URL, and a shareable one when sharing).
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

/// What a transfer without sharing extras reports.
static NOTHING_SHARED: ShareInfo = ShareInfo {
    share_url: None,
    share_expires_at: None,
    thumbnail_url: None,
    thumbnail_share_url: None,
    thumbnail_error: None,
    deduplicated: false,
    checksum: None,
};

impl ShareInfo {
    /// The sharing extras of `info` (all empty for a transfer that has none:
    /// a download, or an upload through a manager without the sharing layer).
    pub fn of(info: &FileInfo) -> &ShareInfo {
        info.extensions().get().unwrap_or(&NOTHING_SHARED)
    }
}

impl fmt::Debug for ShareInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |u: &Option<String>| u.as_deref().map(crate::url::shown);
        f.debug_struct("ShareInfo")
            .field("share_url", &shown(&self.share_url))
            .field("share_expires_at", &self.share_expires_at)
            .field("thumbnail_url", &self.thumbnail_url)
            .field("thumbnail_share_url", &shown(&self.thumbnail_share_url))
            .field("thumbnail_error", &self.thumbnail_error)
            .field("deduplicated", &self.deduplicated)
            .field("checksum", &self.checksum)
            .finish()
    }
}

/// One upload through the sharing flow: the stored object and the extras.
pub(crate) struct ShareOutcome {
    pub object: RemoteObject,
    pub info: ShareInfo,
}

/// What an upload through the manager reads.
pub(crate) enum ShareSource<'a> {
    /// A local file: dedupe and thumbnails apply.
    File(&'a Path),
    /// Bytes or a stream: uploaded as they are, to the requested key.
    Body(UploadSource),
}

/// What the manager asks for.
pub(crate) struct ShareRequest<'a> {
    pub handler: &'a DynHandler,
    pub key: String,
    pub source: ShareSource<'a>,
    pub options: &'a PutOptions,
    pub dedupe: Dedupe,
    pub share_for: Option<Duration>,
    pub thumbnailer: Option<Arc<dyn Thumbnailer>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Upload with dedupe, then share and thumbnail. `on_key` is told the final
/// key before any byte moves (dedupe changes it).
pub(crate) async fn upload(
    req: ShareRequest<'_>,
    ctx: &TransferCtx,
    on_key: impl FnOnce(&str),
) -> Result<ShareOutcome> {
    let h = req.handler;
    if req.share_for.is_some() && !h.capabilities().presign_get {
        return Err(Error::not_supported(
            h.name(),
            "shareable URLs (this store cannot presign; for a local store set serve_url and \
             signing_key and run `xfer serve`)",
        ));
    }
    let mut info = ShareInfo::default();
    let mut key = req.key;
    let mut options = req.options.clone();
    let (path, source) = match req.source {
        ShareSource::File(p) => (Some(p), UploadSource::Path(p.to_path_buf())),
        ShareSource::Body(b) => (None, b),
    };
    let dedupe = if path.is_some() {
        req.dedupe
    } else {
        Dedupe::Off
    };
    if let (Dedupe::Content, Some(path)) = (dedupe, path) {
        let hex = sha256_file(path, ctx).await?;
        key = content_key(&key, &hex);
        info.checksum = Some(format!("sha256:{hex}"));
        options.if_not_exists = true;
        if options.content_type.is_none() {
            options.content_type = Some(req.options.content_type_for(&key));
        }
    }
    on_key(&key);
    let existing = if dedupe == Dedupe::Content {
        match h.stat(&key).await {
            Ok(obj) => Some(obj),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let uploaded = match existing {
        // Already stored: nothing is sent.
        Some(obj) => {
            info.deduplicated = true;
            Ok(obj)
        }
        None => h.upload(&key, source, &options, ctx).await,
    };
    let object = match uploaded {
        Ok(obj) => obj,
        // Same content already stored (maybe by a concurrent upload of the
        // same file): the key is its hash, so the object is the one wanted.
        Err(e) if dedupe == Dedupe::Content && e.kind() == ErrorKind::AlreadyExists => {
            info.deduplicated = true;
            h.stat(&key).await?
        }
        Err(e) => return Err(e),
    };
    if let Some(d) = req.share_for {
        let p = h.presign(&key, PresignMethod::Get, d).await?;
        info.share_expires_at = Some(unix(p.expires_at));
        info.share_url = Some(p.url);
    }
    if let (Some(t), Some(path)) = (req.thumbnailer, path) {
        let content_type = object
            .content_type
            .clone()
            .unwrap_or_else(|| options.content_type_for(&key));
        match make_thumbnail(t, path, &content_type).await {
            None => {}
            Some(Err(e)) => info.thumbnail_error = Some(e.to_string()),
            Some(Ok(jpeg)) => {
                let tkey = thumbnail_key(&key);
                let topts = PutOptions::default().with_content_type("image/jpeg");
                let stored = h
                    .upload(
                        &tkey,
                        UploadSource::from_bytes(jpeg),
                        &topts,
                        &TransferCtx::none(),
                    )
                    .await;
                match stored {
                    Ok(obj) => {
                        info.thumbnail_url = Some(obj.url);
                        if let Some(d) = req.share_for {
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
    Ok(ShareOutcome { object, info })
}

async fn make_thumbnail(
    t: Arc<dyn Thumbnailer>,
    path: &Path,
    content_type: &str,
) -> Option<Result<Vec<u8>>> {
    let path = path.to_path_buf();
    let ct = content_type.to_string();
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || t.thumbnail(&path, &ct)).await {
        Ok(r) => r,
        Err(e) => Some(Err(Error::backend(shown, "thumbnailer panicked", e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_keep_a_sane_extension() {
        let h = "ab".repeat(32);
        assert_eq!(content_key("photos/Cat.JPG", &h), format!("sha256/{h}.jpg"));
        assert_eq!(content_key("notes", &h), format!("sha256/{h}"));
        assert_eq!(content_key(".bashrc", &h), format!("sha256/{h}"));
        assert_eq!(content_key("a.tar.gz", &h), format!("sha256/{h}.gz"));
        assert_eq!(content_key("x.not an ext", &h), format!("sha256/{h}"));
        assert_eq!(
            content_key("x.verylongextension", &h),
            format!("sha256/{h}")
        );
        crate::validate_key(&content_key("é/ü.png", &h)).unwrap();
    }

    #[test]
    fn dedupe_modes_parse_and_name_the_key() {
        assert_eq!(Dedupe::parse("content", "k").unwrap(), Dedupe::Content);
        assert_eq!(Dedupe::parse("off", "k").unwrap(), Dedupe::Off);
        let e = Dedupe::parse("hash", "stores.s.dedupe").unwrap_err();
        assert!(e.to_string().contains("stores.s.dedupe"), "{e}");
    }

    #[test]
    fn thumbnails_live_next_to_their_object() {
        assert_eq!(thumbnail_key("a/b.png"), "a/b.png.thumb.jpg");
    }
}
