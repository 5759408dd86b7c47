use std::path::PathBuf;
use std::time::Duration;

use xferkit_core::Secret;

/// Configuration of a local store (`backend = "local"`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LocalConfig {
    /// Root directory of the store; created if missing. Default: the
    /// user data directory's `xferkit/files` (e.g. `~/.local/share/xferkit/files`).
    pub root: Option<PathBuf>,
    /// Base URL of an `xfer serve` in front of this store (e.g.
    /// `http://127.0.0.1:8080`). With `signing_key`, `presign` returns
    /// HMAC-signed URLs under it, so local files are shareable.
    pub serve_url: Option<String>,
    /// Secret for signing and checking those URLs (at least 32 characters;
    /// set it through `XFERKIT_STORES__<NAME>__SIGNING_KEY` rather than a file).
    pub signing_key: Option<Secret>,
    /// Largest object an upload may store, in bytes (an integer or a size
    /// such as `"4GiB"`); larger uploads are refused and leave nothing.
    /// `None`: no limit.
    #[serde(deserialize_with = "size")]
    pub max_upload_size: Option<u64>,
    /// `xfer serve`: how long a client has to send a whole request head
    /// (also how long a kept-alive connection may sit idle). Default 10 s.
    #[serde(deserialize_with = "duration")]
    pub serve_header_timeout: Option<Duration>,
    /// `xfer serve`: how long a request body or a response may make no
    /// progress (a client that stops sending or stops reading) before the
    /// connection is closed. Default 60 s.
    #[serde(deserialize_with = "duration")]
    pub serve_idle_timeout: Option<Duration>,
    /// `xfer serve`: connections served at once; more are answered 503 and
    /// closed at once. Default 512.
    pub serve_max_connections: Option<usize>,
    /// `xfer serve`: content types (besides the passive built-in ones:
    /// raster images, audio, video, plain text) a browser may display
    /// inline; they are still served with a sandboxing CSP. Everything else
    /// is served as an attachment.
    pub serve_inline_types: Vec<String>,
}

/// What `xfer serve` needs from a local store's config besides its signer:
/// the `serve_*` keys with their defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeSettings {
    /// `serve_header_timeout`.
    pub header_timeout: Duration,
    /// `serve_idle_timeout`.
    pub idle_timeout: Duration,
    /// `serve_max_connections`.
    pub max_connections: usize,
    /// `serve_inline_types`, lowercased.
    pub inline_types: Vec<String>,
    /// `max_upload_size`.
    pub max_upload_size: Option<u64>,
}

impl ServeSettings {
    /// Default `serve_header_timeout`.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default `serve_idle_timeout`.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `serve_max_connections`.
    pub const MAX_CONNECTIONS: usize = 512;
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            header_timeout: Self::HEADER_TIMEOUT,
            idle_timeout: Self::IDLE_TIMEOUT,
            max_connections: Self::MAX_CONNECTIONS,
            inline_types: Vec::new(),
            max_upload_size: None,
        }
    }
}

impl LocalConfig {
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        LocalConfig {
            root: Some(root.into()),
            ..Default::default()
        }
    }

    /// Serve and sign URLs under `base` with `signing_key` (see `xfer serve`).
    pub fn with_serve(mut self, base: impl Into<String>, signing_key: Secret) -> Self {
        self.serve_url = Some(base.into());
        self.signing_key = Some(signing_key);
        self
    }

    /// Refuse uploads larger than `max` bytes.
    pub fn with_max_upload_size(mut self, max: u64) -> Self {
        self.max_upload_size = Some(max);
        self
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match <Option<Raw> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Int(n)) => Ok(Some(n)),
        Some(Raw::Text(t)) => t
            .trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Some(b.as_u64()))
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a size (e.g. \"4GiB\")"))),
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = <Option<String> as serde::Deserialize>::deserialize(d)? else {
        return Ok(None);
    };
    let t = humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration (e.g. \"10s\"): {e}"))
    })?;
    if t.is_zero() {
        return Err(serde::de::Error::custom("must be longer than 0s"));
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LocalConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        let c = parse(
            r#"{"max_upload_size": "2MiB", "serve_header_timeout": "1s",
                "serve_idle_timeout": "1m 30s", "serve_max_connections": 3,
                "serve_inline_types": ["application/pdf"]}"#,
        )
        .unwrap();
        assert_eq!(c.max_upload_size, Some(2 << 20));
        assert_eq!(c.serve_header_timeout, Some(Duration::from_secs(1)));
        assert_eq!(c.serve_idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.serve_max_connections, Some(3));
        assert_eq!(
            parse(r#"{"max_upload_size": 10}"#).unwrap().max_upload_size,
            Some(10)
        );
        assert_eq!(parse("{}").unwrap().max_upload_size, None);
        for bad in [
            r#"{"max_upload_size": "big"}"#,
            r#"{"serve_idle_timeout": "soon"}"#,
            r#"{"serve_header_timeout": "0s"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
