#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod client;
mod config;
mod error;
mod sas;
mod store;
mod upload;

pub use config::AzureConfig;
pub use store::AzureStore;

/// URL scheme of this backend's canonical URLs: `az://ACCOUNT/CONTAINER/KEY`.
pub const SCHEME: &str = "az";
