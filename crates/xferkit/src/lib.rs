#![doc = include_str!("../README.md")]

pub mod config;
#[cfg(feature = "http")]
mod http;

use std::path::Path;
use std::sync::Arc;

pub use xferkit_core::*;

pub use config::{Settings, figment_for};
#[cfg(feature = "http")]
pub use http::HttpStore;

/// Re-exports of the compiled-in backends.
pub mod backends {
    #[cfg(feature = "azure")]
    pub use xferkit_azure as azure;
    #[cfg(feature = "gcs")]
    pub use xferkit_gcs as gcs;
    #[cfg(feature = "local")]
    pub use xferkit_local as local;
    #[cfg(feature = "s3")]
    pub use xferkit_s3 as s3;
}

/// Stores built from configuration, and a transfer manager over them.
#[derive(Debug, Clone)]
pub struct Xferkit {
    registry: Arc<Registry>,
    manager: TransferManager,
    settings: Settings,
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
        let manager = TransferManager::with_concurrency(registry.clone(), settings.concurrency)
            .with_retry_policy(settings.retry.policy());
        Ok(Xferkit {
            registry,
            manager,
            settings,
        })
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
}
