#![doc = include_str!("../README.md")]

mod config;
mod store;

pub use config::MemoryConfig;
pub use store::MemoryStore;

/// URL scheme of this backend: `mem://NAME/KEY`.
pub const SCHEME: &str = "mem";
