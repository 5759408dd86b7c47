//! Plain data types shared by the trait, the manager and every backend.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::{Error, Key, Result};

/// A stream of bytes, as uploaded from or downloaded to.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send + 'static>>;

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RemoteObject {
    /// Canonical URL (`s3://bucket/prefix/key`, `file:///root/key`, ...).
    pub url: String,
    /// Key within the store (the store's own prefix removed).
    ///
    /// A plain `String`, not a [`Key`]: a listing returns what the store
    /// holds, and objects written by other tools can have names outside the
    /// portable key rules (`a//b`, a folder marker ending in `/`); callers
    /// such as `xfer gc` and `xfer sync` must still see and report them.
    /// [`to_key`](Self::to_key) is the one way to address such an object
    /// again: it checks the name and refuses one outside the rules, naming
    /// the object.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag as the store reports it (quotes removed).
    pub etag: Option<String>,
    /// Version or generation, where the store has one.
    pub version: Option<String>,
    /// A checksum of the whole content, `algorithm:value` (e.g. `sha256:ab12…`).
    pub checksum: Option<String>,
    /// MIME type.
    pub content_type: Option<String>,
    /// Last modification time.
    pub last_modified: Option<SystemTime>,
    /// User metadata (lower-case keys).
    pub metadata: BTreeMap<String, String>,
    /// Cache-Control, Content-Disposition, Content-Encoding and
    /// Content-Language, as the store reports them.
    pub headers: crate::ObjectHeaders,
    /// Storage class (S3, GCS) or access tier (Azure), where reported.
    pub storage_class: Option<String>,
    /// Server-side encryption as reported: `AES256`, `aws:kms`, `SSE-C`
    /// (S3), `CMEK` (GCS), `scope` (Azure).
    pub encryption: Option<String>,
    /// The KMS key id (S3 SSE-KMS), `kmsKeyName` (GCS) or encryption scope
    /// (Azure) the store reports.
    pub encryption_key: Option<String>,
}

impl RemoteObject {
    /// A minimal record; backends fill the rest.
    pub fn new(url: impl Into<String>, key: impl Into<String>, size: u64) -> Self {
        RemoteObject {
            url: url.into(),
            key: key.into(),
            size,
            ..Default::default()
        }
    }

    /// [`key`](Self::key) as a [`Key`], to address this object again (stat,
    /// download, delete, copy). `InvalidKey` naming the key, the rule it
    /// breaks and the object's URL, for a name outside the portable rules.
    pub fn to_key(&self) -> Result<Key> {
        Key::new(self.key.as_str()).map_err(|e| match e {
            Error::InvalidKey { key, reason } => Error::invalid_key(
                key,
                format!(
                    "{reason} (the object {} has a name no xferkit key can address)",
                    crate::url::shown(&self.url)
                ),
            ),
            e => e,
        })
    }
}

/// What a backend supports. Callers and tests branch on this, never on a
/// backend's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `presign(.., Get, ..)` returns a URL a plain HTTP client can fetch.
    pub presign_get: bool,
    /// `presign(.., Put, ..)` returns a URL a plain HTTP client can PUT to.
    pub presign_put: bool,
    /// The store refuses presigned URLs whose signature or expiry is wrong.
    pub presign_verified: bool,
    /// `download_stream` honours byte ranges.
    pub range: bool,
    /// `PutOptions::if_not_exists` is enforced atomically.
    pub conditional_create: bool,
    /// Large uploads are split into parts/blocks/chunks.
    pub multipart: bool,
    /// Incomplete multipart uploads can be listed (`list_pending_uploads`).
    pub list_pending_uploads: bool,
    /// Server-side copy.
    pub copy: bool,
    /// Content type and user metadata round-trip.
    pub metadata: bool,
    /// `list_with` sends the delimiter, start-after and limit to the service
    /// (fewer, smaller pages) instead of filtering a full listing; the
    /// entries are the same either way.
    pub list_native: bool,
    /// `PutOptions::storage_class` (S3, GCS storage class; Azure access tier).
    pub storage_class: bool,
    /// `PutOptions::headers`: all four of [`crate::ObjectHeaders`] are kept
    /// and sent back on download.
    pub object_headers: bool,
    /// `PutOptions::tags`.
    pub tags: bool,
    /// [`crate::ServerEncryption::ServiceManaged`].
    pub sse_service_managed: bool,
    /// [`crate::ServerEncryption::Kms`].
    pub sse_kms: bool,
    /// [`crate::ServerEncryption::CustomerKey`].
    pub sse_customer_key: bool,
    /// [`crate::ServerEncryption::Scope`].
    pub encryption_scope: bool,
}

/// A byte range of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `start..end` (end exclusive; clipped to the object's size).
    Bounded { start: u64, end: u64 },
    /// From `start` to the end.
    From(u64),
    /// The last `n` bytes (the whole object if it is shorter).
    Suffix(u64),
}

impl ByteRange {
    /// Resolve against an object size to `start..end`, or `InvalidRange`
    /// (start at or past the end of a non-empty object, empty range,
    /// zero-length suffix), mirroring HTTP 416 semantics.
    pub fn resolve(&self, size: u64, target: &str) -> Result<std::ops::Range<u64>> {
        let bad = || Error::InvalidRange {
            target: target.to_string(),
            range: self.to_string(),
        };
        match *self {
            ByteRange::Bounded { start, end } => {
                if end <= start || start >= size {
                    return Err(bad());
                }
                Ok(start..end.min(size))
            }
            ByteRange::From(start) => {
                if start >= size {
                    return Err(bad());
                }
                Ok(start..size)
            }
            ByteRange::Suffix(n) => {
                if n == 0 {
                    return Err(bad());
                }
                Ok(size.saturating_sub(n)..size)
            }
        }
    }

    /// The HTTP `Range` header value.
    pub fn to_http_header(&self) -> String {
        match *self {
            ByteRange::Bounded { start, end } => {
                format!("bytes={start}-{}", end.saturating_sub(1))
            }
            ByteRange::From(start) => format!("bytes={start}-"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_http_header())
    }
}

/// Options for an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutOptions {
    /// MIME type; when `None` the backend guesses from the key's extension.
    pub content_type: Option<String>,
    /// User metadata stored with the object.
    pub metadata: BTreeMap<String, String>,
    /// Fail with `AlreadyExists` instead of overwriting.
    pub if_not_exists: bool,
    /// Cache-Control, Content-Disposition, Content-Encoding,
    /// Content-Language to store ([`Capabilities::object_headers`]).
    pub headers: crate::ObjectHeaders,
    /// Storage class (S3 `STANDARD_IA`, GCS `NEARLINE`, ...) or Azure access
    /// tier (`Cool`, ...) ([`Capabilities::storage_class`]).
    pub storage_class: Option<String>,
    /// Server-side encryption (see [`crate::ServerEncryption`] for which
    /// capability each needs).
    pub encryption: Option<crate::ServerEncryption>,
    /// Object tags ([`Capabilities::tags`]).
    pub tags: BTreeMap<String, String>,
}

impl PutOptions {
    pub fn with_content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = Some(ct.into());
        self
    }
    pub fn with_metadata(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.insert(k.into(), v.into());
        self
    }
    pub fn create_only(mut self) -> Self {
        self.if_not_exists = true;
        self
    }
    pub fn with_storage_class(mut self, class: impl Into<String>) -> Self {
        self.storage_class = Some(class.into());
        self
    }
    pub fn with_headers(mut self, headers: crate::ObjectHeaders) -> Self {
        self.headers = headers;
        self
    }
    pub fn with_encryption(mut self, encryption: crate::ServerEncryption) -> Self {
        self.encryption = Some(encryption);
        self
    }
    pub fn with_tag(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.tags.insert(k.into(), v.into());
        self
    }
    /// The content type to store: the given one, else a guess from `key`.
    pub fn content_type_for(&self, key: &str) -> String {
        self.content_type.clone().unwrap_or_else(|| {
            mime_guess::from_path(key)
                .first_or_octet_stream()
                .essence_str()
                .to_string()
        })
    }
}

/// Where upload bytes come from.
pub enum UploadSource {
    /// A local file (lets backends read parts concurrently).
    Path(PathBuf),
    /// A stream; `size` if known in advance.
    Stream {
        stream: ByteStream,
        size: Option<u64>,
    },
}

impl fmt::Debug for UploadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UploadSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            UploadSource::Stream { size, .. } => {
                f.debug_struct("Stream").field("size", size).finish()
            }
        }
    }
}

impl UploadSource {
    /// A source from bytes in memory.
    pub fn from_bytes(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        let size = data.len() as u64;
        UploadSource::Stream {
            stream: Box::pin(futures::stream::once(async move { Ok(data) })),
            size: Some(size),
        }
    }
}

/// HTTP method a presigned URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresignMethod {
    Get,
    Put,
}

/// A URL anyone holding it can use until it expires.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresignedUrl {
    pub url: String,
    pub method: PresignMethod,
    pub expires_at: SystemTime,
    /// Headers the request must carry (e.g. `x-ms-blob-type` for Azure PUT).
    pub headers: Vec<(String, String)>,
}

impl PresignedUrl {
    pub fn new(url: String, method: PresignMethod, expires_at: SystemTime) -> Self {
        PresignedUrl {
            url,
            method,
            expires_at,
            headers: Vec::new(),
        }
    }
}

impl fmt::Debug for PresignedUrl {
    // The query carries a signature: a bearer credential. Show only the path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.url.split('?').next().unwrap_or("");
        f.debug_struct("PresignedUrl")
            .field("url", &format_args!("{shown}?<signed>"))
            .field("method", &self.method)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An incomplete multipart upload (for cleanup and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

impl PendingUpload {
    pub fn new(key: String, upload_id: String, initiated: Option<SystemTime>) -> Self {
        PendingUpload {
            key,
            upload_id,
            initiated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_name_becomes_a_key_or_an_error_naming_the_object() {
        let ok = RemoteObject::new("s3://b/a/b", "a/b", 1);
        assert_eq!(ok.to_key().unwrap(), "a/b");
        let odd = RemoteObject::new("s3://b/dir//x?sig=secret", "dir//x", 1);
        let e = odd.to_key().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidKey);
        let shown = e.to_string();
        assert!(
            shown.contains("\"dir//x\"") && shown.contains("empty segment"),
            "{shown}"
        );
        assert!(
            shown.contains("s3://b/dir//x?") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn ranges_resolve_like_http() {
        let r = |b: ByteRange, s| b.resolve(s, "t");
        assert_eq!(
            r(ByteRange::Bounded { start: 2, end: 5 }, 10).unwrap(),
            2..5
        );
        assert_eq!(
            r(ByteRange::Bounded { start: 8, end: 50 }, 10).unwrap(),
            8..10
        );
        assert_eq!(r(ByteRange::From(3), 10).unwrap(), 3..10);
        assert_eq!(r(ByteRange::Suffix(4), 10).unwrap(), 6..10);
        assert_eq!(r(ByteRange::Suffix(40), 10).unwrap(), 0..10);
        assert!(r(ByteRange::From(10), 10).is_err());
        assert!(r(ByteRange::Bounded { start: 5, end: 5 }, 10).is_err());
        assert!(r(ByteRange::Suffix(0), 10).is_err());
        assert_eq!(
            ByteRange::Bounded { start: 0, end: 10 }.to_http_header(),
            "bytes=0-9"
        );
    }

    #[test]
    fn presigned_debug_hides_signature() {
        let p = PresignedUrl::new(
            "http://h/b/k?X-Amz-Signature=deadbeef".into(),
            PresignMethod::Get,
            SystemTime::UNIX_EPOCH,
        );
        let d = format!("{p:?}");
        assert!(!d.contains("deadbeef"), "{d}");
    }

    #[test]
    fn content_type_is_guessed_from_key() {
        assert_eq!(
            PutOptions::default().content_type_for("a/b.png"),
            "image/png"
        );
        assert_eq!(
            PutOptions::default().content_type_for("noext"),
            "application/octet-stream"
        );
    }
}
