//! The one public error type every backend converts into.

use std::time::Duration;

/// A boxed error source, kept for `Error::source()` chains.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout xferkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong moving a file.
///
/// Every variant names what it was about (`target`: a canonical URL, a key
/// or a local path) so a one-line `Display` is enough for a user to act on.
/// Backends keep their SDK errors private and map them here; the source is
/// kept for `source()` chains. No variant ever carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object, key or local file does not exist.
    #[error("not found: {target}")]
    NotFound {
        target: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A create-only write found an existing object.
    #[error("already exists: {target}")]
    AlreadyExists {
        target: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A condition (etag, generation, if-match) did not hold.
    #[error("precondition failed: {target}")]
    PreconditionFailed {
        target: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Credentials were refused, or the caller lacks permission.
    #[error("permission denied: {target}")]
    PermissionDenied {
        target: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A key that this store refuses (traversal, NUL, too long, ...).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// A URL that cannot be parsed or that no configured store owns.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A requested byte range that the object cannot satisfy.
    #[error("invalid range {range} for {target}")]
    InvalidRange { target: String, range: String },
    /// Configuration is wrong; `message` names the key and where it came from.
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The store cannot do this (see [`crate::Capabilities`]).
    #[error("{store}: {operation} is not supported by this store")]
    NotSupported { store: String, operation: String },
    /// A policy of this process refused the request before or while it ran:
    /// a link to a private address, too many redirects, more bytes than
    /// allowed. `reason` names the rule and how to allow the target.
    #[error("refused {target}: {reason}")]
    Refused { target: String, reason: String },
    /// The transfer was stopped by the caller.
    #[error("cancelled: {target}")]
    Cancelled { target: String },
    /// Data read back does not match the checksum it was written with.
    #[error("checksum mismatch for {target}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        target: String,
        expected: String,
        actual: String,
    },
    /// A failure that may succeed if retried (timeouts, 5xx, throttling, resets).
    #[error("transient failure on {target}")]
    Transient {
        target: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<BoxError>,
    },
    /// A retryable failure that kept happening until the retry budget
    /// ([`crate::RetryPolicy`]) was spent; `source` is the last failure.
    /// Not itself retryable: the budget already covered that.
    #[error("{target}: gave up after {attempts} attempts over {}", crate::retry::humanize(*elapsed))]
    RetriesExhausted {
        target: String,
        attempts: u32,
        elapsed: Duration,
        #[source]
        source: Box<Error>,
    },
    /// Any other failure of the store or the local filesystem.
    #[error("{target}: {message}")]
    Backend {
        target: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

/// A coarse classification of [`Error`], handy for matching and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PreconditionFailed,
    PermissionDenied,
    InvalidKey,
    InvalidUrl,
    InvalidRange,
    InvalidConfig,
    NotSupported,
    Refused,
    Cancelled,
    ChecksumMismatch,
    Transient,
    RetriesExhausted,
    Backend,
}

impl Error {
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::PreconditionFailed { .. } => ErrorKind::PreconditionFailed,
            Error::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::InvalidUrl { .. } => ErrorKind::InvalidUrl,
            Error::InvalidRange { .. } => ErrorKind::InvalidRange,
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::NotSupported { .. } => ErrorKind::NotSupported,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::ChecksumMismatch { .. } => ErrorKind::ChecksumMismatch,
            Error::Transient { .. } => ErrorKind::Transient,
            Error::RetriesExhausted { .. } => ErrorKind::RetriesExhausted,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// Shorthand constructors used by backends.
    pub fn not_found(target: impl Into<String>) -> Self {
        Error::NotFound {
            target: target.into(),
            source: None,
        }
    }
    pub fn already_exists(target: impl Into<String>) -> Self {
        Error::AlreadyExists {
            target: target.into(),
            source: None,
        }
    }
    pub fn invalid_key(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            key: key.into(),
            reason: reason.into(),
        }
    }
    pub fn invalid_url(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        }
    }
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            message: message.into(),
            source: None,
        }
    }
    pub fn not_supported(store: impl Into<String>, operation: impl Into<String>) -> Self {
        Error::NotSupported {
            store: store.into(),
            operation: operation.into(),
        }
    }
    pub fn refused(target: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Refused {
            target: target.into(),
            reason: reason.into(),
        }
    }
    pub fn cancelled(target: impl Into<String>) -> Self {
        Error::Cancelled {
            target: target.into(),
        }
    }
    pub fn backend(
        target: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            target: target.into(),
            message: message.into(),
            source: Some(source.into()),
        }
    }
    pub fn transient(target: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Transient {
            target: target.into(),
            retry_after: None,
            source: Some(source.into()),
        }
    }

    /// Map a local I/O error about `target` (a path or URL) to a kind.
    pub fn from_io(target: impl Into<String>, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let target = target.into();
        match err.kind() {
            K::NotFound => Error::NotFound {
                target,
                source: Some(err.into()),
            },
            K::AlreadyExists => Error::AlreadyExists {
                target,
                source: Some(err.into()),
            },
            K::PermissionDenied => Error::PermissionDenied {
                target,
                source: Some(err.into()),
            },
            K::TimedOut
            | K::Interrupted
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::BrokenPipe
            | K::UnexpectedEof => Error::Transient {
                target,
                retry_after: None,
                source: Some(err.into()),
            },
            _ => Error::Backend {
                target,
                message: err.to_string(),
                source: Some(err.into()),
            },
        }
    }

    /// The full chain of messages, `: `-joined, for one-line CLI output.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            let s = e.to_string();
            if !out.contains(&s) {
                out.push_str(": ");
                out.push_str(&s);
            }
            cur = e.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_is_retryable() {
        assert!(Error::transient("s3://b/k", "reset").is_retryable());
        assert!(!Error::not_found("s3://b/k").is_retryable());
        assert!(!Error::cancelled("s3://b/k").is_retryable());
    }

    #[test]
    fn io_errors_map_to_kinds() {
        let e = Error::from_io("/x", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("/x"));
        let e = Error::from_io("/x", std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(e.is_retryable());
    }

    #[test]
    fn chain_includes_sources_once() {
        let e = Error::backend("s3://b/k", "put failed", "connection refused");
        assert_eq!(e.chain(), "s3://b/k: put failed: connection refused");
    }
}
