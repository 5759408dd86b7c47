#![doc = include_str!("../README.md")]

mod range;
mod server;

pub use server::{ServeOptions, Server, router};
