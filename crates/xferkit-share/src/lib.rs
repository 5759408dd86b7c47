#![doc = include_str!("../README.md")]

mod dedupe;
pub mod e2e;
mod info;
mod layer;
mod thumbnail;

pub use dedupe::{Dedupe, content_key, sha256_file};
pub use info::{ShareInfo, ShareOptions, ShareRequestExt};
pub use layer::Sharing;
pub use thumbnail::{Thumbnailer, thumbnail_key};
