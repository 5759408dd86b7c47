#![doc = include_str!("../README.md")]

pub mod config;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub mod links;
#[cfg(feature = "thumbnail")]
pub mod thumbnail;

use std::path::Path;
use std::sync::Arc;

pub use xferkit_core::*;
/// The sharing layer (content dedupe, thumbnails, share URLs, end-to-end
/// encryption), which every registry built here runs transfers through.
pub use xferkit_share as share;
pub use xferkit_share::{
    Dedupe, ShareInfo, ShareOptions, ShareRequestExt, Sharing, Thumbnailer, e2e,
};

pub use config::{Settings, figment_for};
#[cfg(feature = "http")]
pub use http::HttpStore;
#[cfg(feature = "http")]
pub use links::LinkPolicy;

/// Re-exports of the compiled-in backends (a row each in the table of
/// backends, `config.rs`).
pub use config::backends;

/// Stores built from configuration, and a transfer manager over them.
#[derive(Clone)]
pub struct Xferkit {
    registry: Arc<Registry>,
    manager: TransferManager,
    settings: Settings,
    figment: figment::Figment,
}

// Hand-written: the figment holds the raw configuration, secrets included
// (a derived Debug printed `secret_access_key` in clear). The stores'
// own Debug output redacts their credentials.
impl std::fmt::Debug for Xferkit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xferkit")
            .field("registry", &self.registry)
            .field("manager", &self.manager)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Xferkit {
    /// Load configuration (see [`config`]) and build every configured store.
    /// `file` is an explicit config file (`--config`), which must exist.
    pub async fn load(file: Option<&Path>) -> Result<Self> {
        let figment = figment_for(file)?;
        Self::from_figment(&figment).await
    }

    /// Build from an already-assembled figment.
    pub async fn from_figment(figment: &figment::Figment) -> Result<Self> {
        let settings = Settings::from_figment(figment)?;
        let registry = Arc::new(config::build_registry(figment, &settings).await?);
        let manager = configured_manager(&registry, &settings, settings.concurrency);
        Ok(Xferkit {
            registry,
            manager,
            settings,
            figment: figment.clone(),
        })
    }

    /// A new manager over the same stores, set up from the same settings
    /// (retry, downloads, thumbnails, bandwidth) but running at most
    /// `concurrency` transfers at once (for a command that runs many).
    pub fn new_manager(&self, concurrency: usize) -> TransferManager {
        configured_manager(&self.registry, &self.settings, concurrency)
    }

    /// Cap all transfers of [`manager`](Self::manager), and of managers made
    /// by [`new_manager`](Self::new_manager) from now on, at
    /// `bytes_per_sec` (overrides `limits.bandwidth`; `None`: no cap).
    pub fn set_bandwidth_limit(&mut self, bytes_per_sec: Option<u64>) {
        self.settings.limits.bandwidth = bytes_per_sec;
        self.manager.set_bandwidth_limit(bytes_per_sec);
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn manager(&self) -> &TransferManager {
        &self.manager
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Store `name` as a concrete local store, for `xfer serve` (which needs
    /// its signer, not just the handler). Errors if `name` is not a
    /// configured local store.
    #[cfg(feature = "local")]
    pub async fn local_store(&self, name: &str) -> Result<xferkit_local::LocalStore> {
        config::build_local_store(&self.figment, name).await
    }
}

fn configured_manager(
    registry: &Arc<Registry>,
    settings: &Settings,
    concurrency: usize,
) -> TransferManager {
    let manager = TransferManager::with_concurrency(registry.clone(), concurrency)
        .with_retry_policy(settings.retry.policy());
    manager.set_download_options(settings.download.options());
    manager.set_bandwidth_limit(settings.limits.bandwidth);
    manager
}
