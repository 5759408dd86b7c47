use std::path::PathBuf;

/// Configuration of a local store (`backend = "local"`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LocalConfig {
    /// Root directory of the store; created if missing. Default: the
    /// user data directory's `xferkit/files` (e.g. `~/.local/share/xferkit/files`).
    pub root: Option<PathBuf>,
}

impl LocalConfig {
    /// Every key this backend accepts (besides `backend`).
    pub const KEYS: &'static [&'static str] = &["root"];

    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        LocalConfig {
            root: Some(root.into()),
        }
    }
}
