use std::path::PathBuf;

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
}

impl LocalConfig {
    /// Every key this backend accepts (besides `backend`).
    pub const KEYS: &'static [&'static str] = &["root", "serve_url", "signing_key"];

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
}
