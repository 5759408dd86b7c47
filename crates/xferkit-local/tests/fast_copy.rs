//! The local store's path upload (kernel copy + concurrent CRC32C) and the
//! download side's verification of that CRC32C, ranged and in one stream;
//! sidecars of earlier versions (SHA-256) are still read and verified.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use xferkit_conformance::testkit::data as random;
use xferkit_core::Key;
use xferkit_core::{
    ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, TransferCtx, UploadSource,
};
use xferkit_local::{LocalConfig, LocalStore};

async fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new("t", LocalConfig::with_root(dir.path().join("root")))
        .await
        .unwrap();
    (dir, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_upload_is_byte_identical_and_records_its_crc32c() {
    let (dir, s) = store().await;
    // Larger than one copy step (64 MiB) so the copy loop runs more than once.
    let data = random(70 * 1024 * 1024 + 17, 1);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let obj = s
        .upload(
            &Key::new("big/src.bin").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    let want = format!("crc32c:{:08x}", crc32c::crc32c(&data));
    assert_eq!(obj.checksum.as_deref(), Some(want.as_str()));
    assert_eq!(std::fs::read(s.root().join("big/src.bin")).unwrap(), data);

    let dest = dir.path().join("back.bin");
    s.download_to_path(
        &Key::new("big/src.bin").unwrap(),
        &dest,
        None,
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_file_that_rotted_fails_verification_and_leaves_nothing() {
    let (dir, s) = store().await;
    let data = random(3 * 1024 * 1024, 2);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    s.upload(
        &Key::new("rot.bin").unwrap(),
        UploadSource::Path(src),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    // Flip one byte in place and put the modification time back, as silent
    // disk corruption would leave it: the sidecar still looks current.
    let stored = s.root().join("rot.bin");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1_000_000] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(
        s.stat(&Key::new("rot.bin").unwrap())
            .await
            .unwrap()
            .checksum
            .is_some()
    );

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = s
        .download_to_path(
            &Key::new("rot.bin").unwrap(),
            &out.join("rot.bin"),
            None,
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
    assert!(e.to_string().contains("rot.bin"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "nothing at the destination: {left:?}");
}

/// 40 MiB: above the ranged-download threshold, so the CRC32C combined from
/// the ranges is what catches one rotten byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_in_a_large_file_fails_the_ranged_download() {
    let (dir, s) = store().await;
    let data = random(40 * 1024 * 1024, 3);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    s.upload(
        &Key::new("big.bin").unwrap(),
        UploadSource::Path(src),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    let stored = s.root().join("big.bin");
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[30_000_000] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let dest = dir.path().join("back.bin");
    let e = s
        .download_to_path(
            &Key::new("big.bin").unwrap(),
            &dest,
            None,
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
    assert!(!dest.exists());
}

/// A sidecar written by an earlier version (SHA-256, no CRC32C) is still
/// read: its checksum is reported and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_sha256_sidecar_is_still_read_and_verified() {
    let (dir, s) = store().await;
    let data = random(1024 * 1024, 4);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    s.upload(
        &Key::new("old.bin").unwrap(),
        UploadSource::Path(src),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    // Rewrite the sidecar as the earlier version did, where it put it.
    let current = s.sidecar_path("old.bin");
    let side = s.root().join(".xferkit/meta/old.bin.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&current).unwrap()).unwrap();
    std::fs::remove_file(&current).unwrap();
    std::fs::create_dir_all(side.parent().unwrap()).unwrap();
    let obj = json.as_object_mut().unwrap();
    assert!(obj.remove("crc32c").is_some(), "{obj:?}");
    assert!(obj.remove("key").is_some(), "{obj:?}");
    let sha = "0".repeat(64); // deliberately wrong, to see it is verified
    obj.insert("sha256".into(), serde_json::Value::String(sha.clone()));
    std::fs::write(&side, serde_json::to_vec(&json).unwrap()).unwrap();
    let st = s.stat(&Key::new("old.bin").unwrap()).await.unwrap();
    assert_eq!(st.checksum, Some(format!("sha256:{sha}")));
    let e = s
        .download_to_path(
            &Key::new("old.bin").unwrap(),
            &dir.path().join("o.bin"),
            None,
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
}
