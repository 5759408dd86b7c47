//! The shared conformance suite against an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use xferkit_conformance::{Target, run};
use xferkit_memory::{MemoryConfig, MemoryStore};

fn main() -> std::process::ExitCode {
    run(vec![
        Target::new("memory", |prefix| async move {
            // Parts of 1 MiB, 20 ms each, as over a network: an upload of the
            // multipart size takes 160 ms, so the stop case can stop one
            // mid-way and the progress case sees several reports.
            let config = MemoryConfig::default()
                .with_prefix(prefix)
                .with_part_size(1024 * 1024)
                .with_part_delay(Duration::from_millis(20));
            Ok(Arc::new(MemoryStore::new("memory", config)?) as xferkit_core::DynHandler)
        })
        .multipart_size(8 * 1024 * 1024)
        .storage_class("COLD"),
    ])
}
