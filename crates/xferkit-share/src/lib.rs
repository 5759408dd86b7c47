#![doc = include_str!("../README.md")]

mod dedupe;
mod info;
mod layer;
mod thumbnail;

/// End-to-end encrypted attachments.
pub use xferkit_core::e2e;

pub use dedupe::{Dedupe, content_key, sha256_file};
pub use info::{ShareInfo, ShareOptions, ShareRequestExt};
pub use layer::Sharing;
pub use thumbnail::{Thumbnailer, thumbnail_key};
