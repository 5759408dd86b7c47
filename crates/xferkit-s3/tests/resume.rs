//! Resume after a crash: a multipart upload of a file keeps a journal under
//! the store's state directory; when the uploading task dies mid-way (its
//! future dropped, as with `kill -9`: no abort is sent), running the same
//! upload again sends only the parts S3 has not acknowledged, and the
//! object is byte-identical. A source that changed meanwhile starts over.
//!
//! Runs on s3s-fs. Not on moto: its ListParts answer has the root element
//! `ListPartsResponse` instead of S3's `ListPartsResult`, which aws-sdk-s3
//! refuses ("expected ListPartsResult"), so a resume there starts over.
//! Skips when `XFERKIT_S3S_*` is not set (fails under `CI=true` or
//! `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::time::Duration;

use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_conformance::testkit::{data, unique_prefix};
use xferkit_core::journal::JournalFile;
use xferkit_core::{
    FileTransferExt, FileTransferHandler, PutOptions, Secret, TransferCtx, UploadSource,
};
use xferkit_s3::{S3Config, S3Store};

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;
const BUCKET: &str = "xferkit-conformance";

struct Emu {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

fn s3s() -> Option<Emu> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("XFERKIT_S3S_ENDPOINT"),
        var("XFERKIT_S3S_ACCESS_KEY"),
        var("XFERKIT_S3S_SECRET_KEY"),
    ) {
        (Some(endpoint), Some(access_key), Some(secret_key)) => Some(Emu {
            endpoint,
            access_key,
            secret_key,
        }),
        _ => {
            let required = ["CI", "XFERKIT_REQUIRE_EMULATORS"]
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"));
            assert!(
                !required,
                "XFERKIT_S3S_* is not set but emulators are required"
            );
            eprintln!("skipped: s3s-fs not configured (cargo xtask emulators start)");
            None
        }
    }
}

async fn store(emu: &Emu, endpoint: &str, prefix: &str, state: Option<&Path>) -> S3Store {
    let mut c = S3Config::new(BUCKET);
    c.endpoint = Some(endpoint.to_string());
    c.force_path_style = true;
    c.access_key_id = Some(emu.access_key.clone());
    c.secret_access_key = Some(Secret::new(emu.secret_key.clone()));
    c.prefix = prefix.to_string();
    c.part_size = PART;
    c.multipart_threshold = PART;
    c.concurrency = 2;
    let s = S3Store::new("resume", c)
        .await
        .unwrap()
        .with_state_dir(state.map(Path::to_path_buf));
    s.ensure_bucket().await.unwrap();
    s
}

/// Upload `src` to `key` through `proxy` and let it die once the journal
/// lists `parts` acknowledged parts (later parts stall, so it cannot finish).
async fn upload_then_crash(
    proxy: &FaultProxy,
    s: S3Store,
    key: &str,
    src: &Path,
    state: &Path,
    parts: usize,
) {
    proxy.set_rules(vec![
        Rule::new(Fault::Stall(Duration::from_secs(3600)))
            .method("PUT")
            .path_contains("partNumber=")
            .after(parts as u64),
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
        if journal.load().await.is_some_and(|j| j.parts.len() >= parts) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "journal never reached {parts} parts"
        );
        assert!(!task.is_finished(), "upload ended early: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Die: the future is dropped mid-upload, nothing is aborted or cleaned up.
    task.abort();
    let _ = task.await;
    proxy.clear();
    assert!(
        journal.load().await.is_some(),
        "the journal survives the crash"
    );
}

#[tokio::test]
async fn a_crashed_upload_resumes_sending_only_the_missing_parts() {
    let Some(emu) = s3s() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("resume", "crash");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * PART;
    let body = data(size as usize, 5);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();

    let first = store(&emu, &proxy.url(), &pfx, Some(state.path())).await;
    upload_then_crash(&proxy, first, "big.bin", &src, state.path(), 3).await;

    // A new process: same store config, same state dir.
    let again = store(&emu, &proxy.url(), &pfx, Some(state.path())).await;
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
    // 5 of 8 parts (plus request heads), not the 3 the first run stored.
    assert!(
        (5 * PART..5 * PART + MIB).contains(&sent),
        "sent {sent} bytes"
    );

    let direct = store(&emu, &emu.endpoint, &pfx, None).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path("big.bin", &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == body,
        "resumed object differs"
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
    let Some(emu) = s3s() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("resume", "changed");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * PART;
    let src = dir.path().join("src.bin");
    std::fs::write(&src, data(size as usize, 7)).unwrap();

    let first = store(&emu, &proxy.url(), &pfx, Some(state.path())).await;
    upload_then_crash(&proxy, first, "k.bin", &src, state.path(), 2).await;

    // The file changes (same size) before the re-run.
    let body = data(size as usize, 8);
    std::fs::write(&src, &body).unwrap();
    let again = store(&emu, &proxy.url(), &pfx, Some(state.path())).await;
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
    assert!(sent >= size, "every part sent again: {sent} bytes");

    let direct = store(&emu, &emu.endpoint, &pfx, None).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path("k.bin", &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == body);
    direct.delete("k.bin").await.unwrap();
}
