//! Resume after a crash: a staged upload of a file keeps a journal under
//! the store's state directory; when the uploading task dies mid-way (its
//! future dropped, as with `kill -9`), running the same upload again stages
//! only the blocks Azurite does not already hold uncommitted, and the blob
//! is byte-identical. A source that changed meanwhile starts over.
//!
//! Skips when `XFERKIT_AZURITE_*` is not set (fails under `CI=true` or
//! `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::Duration;

use xferkit_azure::{AzureConfig, AzureStore};
use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_conformance::testkit::{data, unique_prefix};
use xferkit_core::journal::JournalFile;
use xferkit_core::{
    FileTransferExt, FileTransferHandler, PutOptions, Secret, TransferCtx, UploadSource,
};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4 * MIB;
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

async fn store(emu: &Emulator, endpoint: &str, prefix: &str, state: Option<&Path>) -> AzureStore {
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(endpoint.to_string());
    c.account_key = Some(Secret::new(emu.key.clone()));
    c.prefix = prefix.into();
    c.multipart_threshold = BLOCK;
    c.block_size = BLOCK;
    c.concurrency = 2;
    let s = AzureStore::new("resume", c)
        .await
        .unwrap()
        .with_state_dir(state.map(Path::to_path_buf));
    s.create_container_if_missing().await.unwrap();
    s
}

/// Upload `src` through `proxy` and let it die once the journal lists
/// `blocks` staged blocks (later blocks stall, so it cannot finish).
async fn upload_then_crash(
    proxy: &FaultProxy,
    s: AzureStore,
    key: &str,
    src: &Path,
    state: &Path,
    blocks: usize,
) {
    proxy.set_rules(vec![
        Rule::new(Fault::Stall(Duration::from_secs(3600)))
            .method("PUT")
            .path_contains("blockid=")
            .after(blocks as u64),
    ]);
    let journal = JournalFile::for_upload(state, &s.url_for(key), src);
    let (k, p) = (key.to_string(), src.to_path_buf());
    let task = tokio::spawn(async move {
        s.upload(
            &k,
            UploadSource::Path(p),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if journal
            .load()
            .await
            .is_some_and(|j| j.parts.len() >= blocks)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "journal never reached {blocks} blocks"
        );
        assert!(!task.is_finished(), "upload ended early: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    proxy.clear();
    assert!(
        journal.load().await.is_some(),
        "the journal survives the crash"
    );
}

#[tokio::test]
async fn a_crashed_upload_resumes_staging_only_the_missing_blocks() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let via = proxy.endpoint_for(&emu.endpoint);
    let pfx = unique_prefix("resume", "crash");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * BLOCK;
    let body = data(size as usize, 5);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();

    let first = store(&emu, &via, &pfx, Some(state.path())).await;
    upload_then_crash(&proxy, first, "big.bin", &src, state.path(), 3).await;

    let again = store(&emu, &via, &pfx, Some(state.path())).await;
    let before = proxy.stats().bytes_up;
    let obj = again
        .upload(
            "big.bin",
            UploadSource::Path(src.clone()),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_or_else(|e| panic!("resumed upload: {}", e.chain()));
    let sent = proxy.stats().bytes_up - before;
    assert_eq!(obj.size, size);
    assert!(
        (5 * BLOCK..5 * BLOCK + MIB).contains(&sent),
        "sent {sent} bytes; 5 blocks expected"
    );

    let direct = store(&emu, &emu.endpoint, &pfx, None).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path("big.bin", &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == body,
        "resumed blob differs"
    );
    let journal = JournalFile::for_upload(state.path(), &again.url_for("big.bin"), &src);
    assert!(
        journal.load().await.is_none(),
        "journal removed after success"
    );
    direct.delete("big.bin").await.unwrap();
}

#[tokio::test]
async fn a_changed_source_starts_over() {
    let Some(emu) = emulator() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let via = proxy.endpoint_for(&emu.endpoint);
    let pfx = unique_prefix("resume", "changed");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * BLOCK;
    let src = dir.path().join("src.bin");
    std::fs::write(&src, data(size as usize, 7)).unwrap();

    let first = store(&emu, &via, &pfx, Some(state.path())).await;
    upload_then_crash(&proxy, first, "k.bin", &src, state.path(), 2).await;

    let body = data(size as usize, 8);
    std::fs::write(&src, &body).unwrap();
    let again = store(&emu, &via, &pfx, Some(state.path())).await;
    let before = proxy.stats().bytes_up;
    again
        .upload(
            "k.bin",
            UploadSource::Path(src.clone()),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    let sent = proxy.stats().bytes_up - before;
    assert!(sent >= size, "every block sent again: {sent} bytes");
    let direct = store(&emu, &emu.endpoint, &pfx, None).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path("k.bin", &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == body);
    direct.delete("k.bin").await.unwrap();
}
