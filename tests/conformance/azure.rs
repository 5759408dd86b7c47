//! The shared conformance suite against Azurite, with the fault and resume
//! cases through the fault proxy.
//!
//! Needs `XFERKIT_AZURITE_ENDPOINT` (`http://127.0.0.1:PORT/devstoreaccount1`),
//! `XFERKIT_AZURITE_ACCOUNT` and `XFERKIT_AZURITE_KEY`, as written by
//! `cargo xtask emulators start` to `target/emulators.env`.

use std::sync::Arc;

use xferkit_azure::{AzureConfig, AzureStore};
use xferkit_conformance::faults::{
    ChecksumHeader, Corrupted, Faults, Requests, Shape, StoreSpec, store_fn,
};
use xferkit_conformance::{Target, run};
use xferkit_core::{DynHandler, Secret};

const MIB: u64 = 1024 * 1024;
const CONTAINER: &str = "xferkit-conformance";
/// Blocks of the fault cases' stores.
const FAULT_BLOCK: u64 = 4 * MIB;

/// A store on `spec.endpoint` in `block`-sized blocks.
async fn store(
    account: String,
    key: String,
    block: u64,
    spec: StoreSpec,
) -> xferkit_core::Result<DynHandler> {
    let mut cfg = AzureConfig::new(account, CONTAINER);
    cfg.endpoint = Some(spec.endpoint);
    cfg.account_key = Some(Secret::new(key));
    cfg.prefix = spec.prefix;
    cfg.multipart_threshold = spec.one_request_up_to;
    cfg.block_size = block;
    if let Some(n) = spec.concurrency {
        cfg.concurrency = n;
    }
    let mut s = AzureStore::new("azurite", cfg)
        .await?
        .with_state_dir(spec.state_dir);
    if let Some(policy) = spec.retry {
        s = s.with_retry_policy(policy);
    }
    s.create_container_if_missing().await?;
    Ok(Arc::new(s) as DynHandler)
}

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
                // Small blocks so a 4 MiB object takes 4 staged blocks.
                let spec = StoreSpec {
                    endpoint: vars[0].clone(),
                    prefix,
                    one_request_up_to: MIB,
                    concurrency: None,
                    retry: None,
                    state_dir: None,
                };
                store(vars[1].clone(), vars[2].clone(), MIB, spec).await
            },
        )
        .multipart_size(4 * MIB)
        .storage_class("Cool")
        .faults(|v| {
            let (account, key) = (v[1].clone(), v[2].clone());
            // Azurite checks the transactional Content-MD5 of every Put Blob
            // and Put Block, so a flipped byte is refused and sent again.
            let refused = Shape {
                requests: Requests::any("PUT"),
                corrupted_once: Corrupted::Resent,
                corrupted_always: Some("Md5Mismatch"),
            };
            Faults {
                upstream: v[0].clone(),
                store: store_fn(move |spec| store(account.clone(), key.clone(), FAULT_BLOCK, spec)),
                part_size: FAULT_BLOCK,
                one_request: refused,
                part: Shape {
                    requests: Requests::with("PUT", "blockid="),
                    ..refused
                },
                part_names: "part",
                media_get: Requests::any("GET"),
                checksum_header: Some(ChecksumHeader {
                    name: "content-md5",
                    len: 24,
                    except: Some("comp=blocklist"),
                }),
                lists_pending: false,
                // hyper may send a request again on a fresh connection when a
                // reused one dies under it; that is not a retry layer.
                resends_on_reset: true,
                part_retry_gap: None,
                resume_gap: None,
                ranged_checksum_gap: Some(
                    "a staged blob has no whole-blob checksum (stat reports none), so a ranged \
                     download has nothing to check its ranges against",
                ),
            }
        }),
    ])
}
