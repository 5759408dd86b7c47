//! The shared conformance suite against Azurite.
//!
//! Needs `XFERKIT_AZURITE_ENDPOINT` (`http://127.0.0.1:PORT/devstoreaccount1`),
//! `XFERKIT_AZURITE_ACCOUNT` and `XFERKIT_AZURITE_KEY`, as written by
//! `cargo xtask emulators start` to `target/emulators.env`.

use std::sync::Arc;

use xferkit_azure::{AzureConfig, AzureStore};
use xferkit_conformance::{Target, run};
use xferkit_core::{DynHandler, Secret};

const MIB: u64 = 1024 * 1024;

fn main() -> std::process::ExitCode {
    run(vec![
        Target::from_env(
            "azure@azurite",
            &[
                "XFERKIT_AZURITE_ENDPOINT",
                "XFERKIT_AZURITE_ACCOUNT",
                "XFERKIT_AZURITE_KEY",
            ],
            |vars: Vec<String>, prefix: String| async move {
                let mut cfg = AzureConfig::new(vars[1].clone(), "xferkit-conformance");
                cfg.endpoint = Some(vars[0].clone());
                cfg.account_key = Some(Secret::new(vars[2].clone()));
                cfg.prefix = prefix;
                // Small blocks so a 4 MiB object takes 4 staged blocks.
                cfg.multipart_threshold = MIB;
                cfg.block_size = MIB;
                let store = AzureStore::new("azurite", cfg).await?;
                store.create_container_if_missing().await?;
                Ok(Arc::new(store) as DynHandler)
            },
        )
        .multipart_size(4 * MIB),
    ])
}
