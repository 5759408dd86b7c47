#![doc = include_str!("../README.md")]

mod config;
pub mod signed;
mod store;
mod tmp;

pub use config::{LocalConfig, ServeSettings};
pub use store::LocalStore;

/// URL scheme of this backend.
pub const SCHEME: &str = "file";
