#![doc = include_str!("../README.md")]

mod conn;
mod range;
mod server;

pub use server::{ServeOptions, Server, router};
