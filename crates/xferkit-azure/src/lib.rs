#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod client;
mod config;
mod error;
mod sas;
mod upload;

pub use backend::AzureStore;
pub use config::AzureConfig;

/// URL scheme of this backend's canonical URLs: `az://ACCOUNT/CONTAINER/KEY`.
pub const SCHEME: &str = "az";
