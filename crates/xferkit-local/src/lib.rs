#![doc = include_str!("../README.md")]

mod config;
mod store;
mod tmp;

pub use config::{LocalConfig, ServeSettings};
pub use store::LocalStore;

/// URL scheme of this backend.
pub const SCHEME: &str = "file";
