#![doc = include_str!("../README.md")]

mod config;
pub mod signed;
mod store;
mod tmp;

pub use config::{LocalConfig, ServeSettings};
pub use store::LocalStore;

/// URL scheme of this backend.
pub const SCHEME: &str = "file";

use std::path::PathBuf;

use xferkit_core::{Backend, BuildContext, Result};

/// The root of a local store whose table names none: the user data
/// directory's `xferkit/files` (`~/.local/share/xferkit/files` on Linux).
pub fn default_root() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("xferkit")
        .join("files")
}

/// `backend = "local"`: a [`LocalConfig`] table; without `root`, the
/// [`default_root`].
#[xferkit_core::async_trait]
impl Backend for LocalStore {
    const KIND: &'static str = "local";
    type Config = LocalConfig;

    /// `serve_url`: where `xfer serve` answers for this store.
    fn endpoints(config: &LocalConfig) -> Vec<String> {
        config.serve_url.iter().cloned().collect()
    }

    async fn build(name: &str, mut config: LocalConfig, _: &BuildContext) -> Result<Self> {
        if config.root.is_none() {
            config.root = Some(default_root());
        }
        LocalStore::new(name, config).await
    }
}
