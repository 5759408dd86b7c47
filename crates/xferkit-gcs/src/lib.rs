#![doc = include_str!("../README.md")]

mod backend;
mod client;
mod config;
mod session;
mod sign;
mod upload;

pub use backend::GcsStore;
pub use config::GcsConfig;

/// URL scheme of this backend's canonical URLs: `gs://bucket/object/name`.
pub const SCHEME: &str = "gs";
