//! What the sharing layer reads from a request ([`ShareOptions`], set with
//! [`ShareRequestExt`]) and adds to its [`FileInfo`] ([`ShareInfo`]): both
//! are extensions, the core types know neither.

use std::fmt;
use std::time::Duration;

use xferkit_core::{FileInfo, TransferRequest};

/// What an upload asks of the sharing layer; an extension of its
/// [`TransferRequest`], set with [`ShareRequestExt`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ShareOptions {
    /// Also make a shareable URL valid this long.
    pub share_for: Option<Duration>,
    /// Make a thumbnail of an image file when the layer has a thumbnailer
    /// (default true).
    pub thumbnail: bool,
    /// Encrypt end to end.
    pub encrypt: bool,
}

impl Default for ShareOptions {
    fn default() -> Self {
        ShareOptions {
            share_for: None,
            thumbnail: true,
            encrypt: false,
        }
    }
}

impl ShareOptions {
    /// The options of `request` (the defaults if it set none).
    pub fn of(request: &TransferRequest) -> ShareOptions {
        request
            .extensions()
            .get::<ShareOptions>()
            .cloned()
            .unwrap_or_default()
    }
}

/// The sharing options of an upload request. They take effect through a
/// manager whose registry has the sharing layer ([`crate::Sharing`]; the
/// `xferkit` facade installs it).
pub trait ShareRequestExt: Sized {
    /// Upload: also return a shareable URL (S3/GCS presign, Azure SAS, a
    /// signed `xfer serve` URL) valid for `valid_for`, in
    /// [`ShareInfo::share_url`]. Stores that cannot presign fail the transfer
    /// before sending anything.
    fn with_share(self, valid_for: Duration) -> Self;

    /// Upload: no thumbnail, even for an image.
    fn without_thumbnail(self) -> Self;

    /// Upload: encrypt the content end to end with a fresh key
    /// ([`crate::e2e`]): the store receives only ciphertext, and
    /// [`ShareInfo::share_url`] is the link to hand out, with the key and the
    /// ciphertext's digest in its `#fragment` (the presigned URL with
    /// [`with_share`](Self::with_share), else the canonical URL). No
    /// thumbnail is made and content dedupe does not apply: both would tell
    /// the store about the plaintext.
    fn encrypted(self) -> Self;
}

impl ShareRequestExt for TransferRequest {
    fn with_share(mut self, valid_for: Duration) -> Self {
        self.extensions_mut()
            .get_or_default::<ShareOptions>()
            .share_for = Some(valid_for);
        self
    }

    fn without_thumbnail(mut self) -> Self {
        self.extensions_mut()
            .get_or_default::<ShareOptions>()
            .thumbnail = false;
        self
    }

    fn encrypted(mut self) -> Self {
        self.extensions_mut()
            .get_or_default::<ShareOptions>()
            .encrypt = true;
        self
    }
}

/// What the sharing layer adds to an upload's [`FileInfo`]: an extension,
/// read with [`ShareInfo::of`]. Its `Debug` shows the shareable URLs without
/// their query or fragment (a signature, an encrypted attachment's key);
/// `Serialize` (`xfer --json`) shows them whole, beside `FileInfo`'s fields.
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
        let shown = |u: &Option<String>| u.as_deref().map(xferkit_core::url::shown);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_collect_on_the_request_and_default_to_thumbnails() {
        let req = TransferRequest::upload("/tmp/x", "s3://b/k");
        assert_eq!(ShareOptions::of(&req), ShareOptions::default());
        assert!(ShareOptions::of(&req).thumbnail);
        let req = req
            .with_share(Duration::from_secs(60))
            .without_thumbnail()
            .encrypted();
        let o = ShareOptions::of(&req);
        assert_eq!(o.share_for, Some(Duration::from_secs(60)));
        assert!(!o.thumbnail && o.encrypt);
    }

    #[test]
    fn debug_shows_share_urls_without_signature_or_fragment() {
        let info = ShareInfo {
            share_url: Some("https://h/k?sig=SECRETSIG#aes128gcm.KEY.DIG".into()),
            thumbnail_share_url: Some("https://h/k.thumb.jpg?sig=THUMBSIG".into()),
            ..ShareInfo::default()
        };
        let shown = format!("{info:?}");
        for secret in ["SECRETSIG", "KEY.DIG", "THUMBSIG"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(
            json["share_url"],
            "https://h/k?sig=SECRETSIG#aes128gcm.KEY.DIG"
        );
    }
}
