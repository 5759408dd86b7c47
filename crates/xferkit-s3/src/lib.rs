#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod copy;
mod core;
mod delete;
mod writer;

pub use backend::S3Store;
pub use config::{S3Checksum, S3Config};
pub use core::SCHEME;
