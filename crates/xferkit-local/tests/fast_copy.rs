//! The local store's path upload (kernel copy + concurrent SHA-256) and the
//! download side's verification of that SHA-256.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use sha2::{Digest, Sha256};
use xferkit_core::{
    ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, TransferCtx, UploadSource,
};
use xferkit_local::{LocalConfig, LocalStore};

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

async fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new("t", LocalConfig::with_root(dir.path().join("root")))
        .await
        .unwrap();
    (dir, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_upload_is_byte_identical_and_records_its_sha256() {
    let (dir, s) = store().await;
    // Larger than one copy step (64 MiB) so the copy loop runs more than once.
    let data = random(70 * 1024 * 1024 + 17, 1);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let obj = s
        .upload(
            "big/src.bin",
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    let want = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    assert_eq!(obj.checksum.as_deref(), Some(want.as_str()));
    assert_eq!(std::fs::read(s.root().join("big/src.bin")).unwrap(), data);

    let dest = dir.path().join("back.bin");
    s.download_to_path("big/src.bin", &dest, None, &TransferCtx::none())
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
        "rot.bin",
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
    assert!(s.stat("rot.bin").await.unwrap().checksum.is_some());

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let e = s
        .download_to_path("rot.bin", &out.join("rot.bin"), None, &TransferCtx::none())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
    assert!(e.to_string().contains("rot.bin"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "nothing at the destination: {left:?}");
}
