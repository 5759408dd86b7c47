//! Faults between the client and Azurite (the TCP fault proxy of
//! `xferkit-conformance`):
//!
//! - 64 MiB up (staged 4 MiB blocks, 4 in flight) and down (ranged GETs)
//!   through resets mid-body and 503 `ServerBusy`s finish byte-identical,
//!   and the proxy counts the faults it injected;
//! - 503s or resets that never clear fail with `RetriesExhausted` naming the
//!   request, and no blob becomes visible (staged blocks stay uncommitted;
//!   Azure drops them after 7 days).
//!
//! - a byte flipped in transit is refused by Azurite (the transactional
//!   `Content-MD5` of each Put Blob and Put Block) and sent again: the blob
//!   is byte-identical; flipped on every try, the upload fails and nothing
//!   is visible.
//!
//! Each test skips when `XFERKIT_AZURITE_*` is not set (and fails instead
//! under `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use xferkit_azure::{AzureConfig, AzureStore};
use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_conformance::testkit::{
    assert_exhausted, data, quick_retry, unique_prefix, write_file,
};
use xferkit_core::{
    ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, Secret, TransferCtx, UploadSource,
};

const MIB: usize = 1024 * 1024;
const CONTAINER: &str = "xferkit-azure-faults";

struct Emulator {
    endpoint: String,
    account: String,
    key: String,
}

fn emulator() -> Option<Emulator> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("XFERKIT_AZURITE_ENDPOINT"),
        get("XFERKIT_AZURITE_ACCOUNT"),
        get("XFERKIT_AZURITE_KEY"),
    ) {
        (Some(endpoint), Some(account), Some(key)) => Some(Emulator {
            endpoint,
            account,
            key,
        }),
        _ => {
            let required = ["CI", "XFERKIT_REQUIRE_EMULATORS"]
                .iter()
                .any(|v| get(v).is_some_and(|s| s != "0" && s != "false"));
            assert!(
                !required,
                "XFERKIT_AZURITE_* not set and emulators are required"
            );
            eprintln!("skipped: XFERKIT_AZURITE_* not set (cargo xtask emulators start)");
            None
        }
    }
}

/// A store on `endpoint` under `prefix`: staged above 4 MiB, 4 MiB blocks,
/// 4 in flight, so several blocks are in play at once.
async fn store(emu: &Emulator, endpoint: &str, prefix: &str) -> AzureStore {
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(endpoint.to_string());
    c.account_key = Some(Secret::new(emu.key.clone()));
    c.prefix = prefix.into();
    c.multipart_threshold = 4 * MIB as u64;
    c.block_size = 4 * MIB as u64;
    c.concurrency = 4;
    let s = AzureStore::new("faults", c)
        .await
        .unwrap()
        .with_retry_policy(quick_retry(6));
    s.create_container_if_missing().await.unwrap();
    s
}

#[tokio::test]
async fn upload_64mib_through_resets_and_503s_is_byte_identical() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "up");
    let via = store(&emu, &proxy.endpoint_for(&emu.endpoint), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let body = data(64 * MIB, 7);
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "src.bin", &body);

    // Put Block (`blockid=`): every 4th is cut after 1 MiB, every 5th of the
    // rest gets a 503.
    proxy.set_rules(vec![
        Rule::new(Fault::ResetRequestAfter(MIB as u64))
            .method("PUT")
            .path_contains("blockid=")
            .every(4),
        Rule::new(Fault::Status(503))
            .method("PUT")
            .path_contains("blockid=")
            .every(5),
    ]);
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(6));
    let obj = via
        .upload(
            "big.bin",
            UploadSource::Path(src),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap_or_else(|e| panic!("upload through faults: {}", e.chain()));
    assert_eq!(obj.size, body.len() as u64);
    let stats = proxy.stats();
    assert!(stats.resets > 0 && stats.statuses > 0, "{stats:?}");

    let dest = dir.path().join("back.bin");
    direct
        .download_to_path("big.bin", &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == body, "stored bytes differ");
    direct.delete("big.bin").await.unwrap();
}

#[tokio::test]
async fn download_64mib_through_resets_and_503s_is_byte_identical() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "down");
    let via = store(&emu, &proxy.endpoint_for(&emu.endpoint), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let body = data(64 * MIB, 11);
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "src.bin", &body);
    direct
        .upload(
            "big.bin",
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();

    proxy.set_rules(vec![
        Rule::new(Fault::ResetResponseAfter(3 * MIB as u64))
            .method("GET")
            .every(3),
        Rule::new(Fault::Status(503)).method("GET").every(4),
    ]);
    let dest = dir.path().join("back.bin");
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(6));
    let obj = via
        .download_to_path("big.bin", &dest, None, &ctx)
        .await
        .unwrap_or_else(|e| panic!("download through faults: {}", e.chain()));
    assert_eq!(obj.size, body.len() as u64);
    let stats = proxy.stats();
    assert!(stats.resets > 0 && stats.statuses > 0, "{stats:?}");
    assert!(
        std::fs::read(&dest).unwrap() == body,
        "downloaded bytes differ"
    );
    direct.delete("big.bin").await.unwrap();
}

#[tokio::test]
async fn faults_that_never_clear_fail_within_the_budget_leaving_nothing() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "dead");
    let via = store(&emu, &proxy.endpoint_for(&emu.endpoint), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(3));

    // Staged: every Put Block answers 503, forever.
    proxy.set_rules(vec![
        Rule::new(Fault::Status(503))
            .method("PUT")
            .path_contains("blockid="),
    ]);
    let src = write_file(dir.path(), "staged.bin", &data(12 * MIB, 3));
    let e = via
        .upload(
            "staged.bin",
            UploadSource::Path(src),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .expect_err("blocks that always fail must fail the upload");
    assert_exhausted(&e, 3, "block");
    assert!(proxy.stats().statuses >= 3, "{:?}", proxy.stats());

    // Put Blob: every try is cut 64 KiB into the body, forever.
    proxy.set_rules(vec![
        Rule::new(Fault::ResetRequestAfter(64 * 1024)).method("PUT"),
    ]);
    let src = write_file(dir.path(), "single.bin", &data(MIB, 5));
    let before = proxy.stats().resets;
    let e = via
        .upload(
            "single.bin",
            UploadSource::Path(src),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .expect_err("a Put Blob that is always cut must fail");
    assert_exhausted(&e, 3, "single.bin");
    // At least one reset per try (hyper may resend a request once on a fresh
    // connection when a reused one dies under it; that is not a retry layer).
    assert!(proxy.stats().resets - before >= 3, "{:?}", proxy.stats());

    proxy.clear();
    for key in ["staged.bin", "single.bin"] {
        let e = direct.stat(key).await.expect_err("nothing may be visible");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
    }
    let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(direct.list("")).await;
    assert!(listed.is_empty(), "{listed:?}");
}

/// One byte flipped on the way to Azurite, in a Put Blob and in one Put
/// Block: the service checks the MD5 sent with each body, refuses the bad
/// one, the retry sends it again, and the blob is byte-identical. Every
/// body request carried a `Content-MD5`.
#[tokio::test]
async fn a_byte_corrupted_in_transit_is_refused_by_the_store_and_resent() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "corrupt");
    let via = store(&emu, &proxy.endpoint_for(&emu.endpoint), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(4));
    for (key, len, rule) in [
        (
            "single.bin",
            MIB,
            Rule::new(Fault::CorruptRequestBody(300_000)).method("PUT"),
        ),
        (
            "staged.bin",
            12 * MIB,
            Rule::new(Fault::CorruptRequestBody(1_000_000))
                .method("PUT")
                .path_contains("blockid="),
        ),
    ] {
        let body = data(len, len as u64);
        let src = write_file(dir.path(), key, &body);
        let before = proxy.stats().corruptions;
        proxy.set_rules(vec![rule.times(1)]);
        via.upload(key, UploadSource::Path(src), &PutOptions::default(), &ctx)
            .await
            .unwrap_or_else(|e| panic!("{key}: {}", e.chain()));
        assert_eq!(proxy.stats().corruptions - before, 1, "{key}");
        proxy.clear();
        let dest = dir.path().join(format!("{key}.back"));
        direct
            .download_to_path(key, &dest, None, &TransferCtx::none())
            .await
            .unwrap();
        assert!(
            std::fs::read(&dest).unwrap() == body,
            "{key}: Azurite kept a corrupted body"
        );
    }
    let bodies: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && !r.target.contains("comp=blocklist"))
        .filter(|r| r.header("content-length").is_some_and(|l| l != "0"))
        .collect();
    assert!(bodies.len() >= 5, "{bodies:?}");
    for r in &bodies {
        assert!(
            r.header("content-md5").is_some_and(|v| v.len() == 24),
            "no Content-MD5 on {} {}",
            r.method,
            r.target
        );
    }
}

/// Every try of a body flipped in transit: the upload fails within the
/// budget naming the blob, and nothing is visible.
#[tokio::test]
async fn a_body_corrupted_on_every_try_fails_leaving_nothing() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "corrupt-dead");
    let via = store(&emu, &proxy.endpoint_for(&emu.endpoint), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(3));
    proxy.set_rules(vec![
        Rule::new(Fault::CorruptRequestBody(1000))
            .method("PUT")
            .path_contains("blockid="),
        Rule::new(Fault::CorruptRequestBody(1000)).method("PUT"),
    ]);
    for (key, len, names) in [
        ("single.bin", MIB, "single.bin"),
        ("staged.bin", 12 * MIB, "block"),
    ] {
        let src = write_file(dir.path(), key, &data(len, 9));
        let e = via
            .upload(key, UploadSource::Path(src), &PutOptions::default(), &ctx)
            .await
            .expect_err("a body corrupted on every try must fail");
        assert_exhausted(&e, 3, names);
        assert!(e.chain().contains("Md5Mismatch"), "{}", e.chain());
    }
    proxy.clear();
    for key in ["single.bin", "staged.bin"] {
        let e = direct.stat(key).await.expect_err("nothing may be visible");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
    }
}
