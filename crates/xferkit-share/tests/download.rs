//! Encrypted downloads through the download engine: a ranged download of an
//! encrypted link resumed after a failure checks the records it resumed from
//! the partial file, and a partial file changed between runs fails the
//! digest, against the engine's test store (`xferkit_conformance::range_store`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::sync::Arc;

use xferkit_conformance::range_store::*;
use xferkit_core::{ErrorKind, TransferCtx};

/// `plain` sealed as an encrypted attachment, in a store that serves the
/// ciphertext; the link's secret.
fn sealed_store(plain: &[u8]) -> (Arc<RangeStore>, xferkit_share::e2e::LinkSecret) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plain");
    std::fs::write(&src, plain).unwrap();
    let mut sealed = Vec::new();
    let secret = xferkit_share::e2e::seal_file(&src, &mut sealed).unwrap();
    (Arc::new(RangeStore::new(sealed.into(), Sum::None)), secret)
}

/// Stored offset of the record holding content byte `at`.
fn record_start(at: usize) -> usize {
    use xferkit_share::e2e::{PLAIN_PER_RECORD, RECORD_SIZE};
    21 + at / PLAIN_PER_RECORD as usize * RECORD_SIZE as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_download_resumes_checking_resumed_records_on_disk() {
    use xferkit_share::e2e::Encrypted;
    let data = random_bytes(3 * MIB + 999, 11);
    let (store, secret) = sealed_store(&data);
    // Part 1 (content from 1 MiB) breaks at once: part 0 is kept, with the
    // first bytes of the record that straddles the two parts.
    store.cut(record_start(MIB), 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("e.bin");
    let o = opts(MIB, 1);
    let first = Encrypted::opening(store.clone(), secret.clone());
    let e = fetch(&first, "e.bin", &dest, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Transient | ErrorKind::RetriesExhausted),
        "{e}"
    );
    assert_eq!(
        names_in(dir.path()),
        vec![".e.bin.xferkit-partial", ".e.bin.xferkit-partial.json"]
    );
    store.gets.lock().unwrap().clear();
    // A new process: a new handler, knowing nothing of the first run.
    let second = Encrypted::opening(store.clone(), secret);
    fetch(&second, "e.bin", &dest, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == data, "content differs");
    let starts: Vec<u64> = store.gets().iter().map(|g| g.0).collect();
    assert!(
        !starts.contains(&21),
        "part 0 was fetched again: {starts:?}"
    );
    assert_eq!(names_in(dir.path()), vec!["e.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_changed_between_runs_fails_the_digest_and_leaves_nothing() {
    use xferkit_share::e2e::Encrypted;
    let data = random_bytes(3 * MIB, 12);
    let (store, secret) = sealed_store(&data);
    store.cut(record_start(MIB), 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("e.bin");
    let o = opts(MIB, 1);
    let first = Encrypted::opening(store.clone(), secret.clone());
    fetch(&first, "e.bin", &dest, &o, &no_retries())
        .await
        .unwrap_err();
    // One byte of the kept part 0 changes on disk.
    let partial = dir.path().join(".e.bin.xferkit-partial");
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&partial, bytes).unwrap();
    let second = Encrypted::opening(store.clone(), secret);
    let e = fetch(&second, "e.bin", &dest, &o, &TransferCtx::none())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{e}");
    assert!(e.to_string().contains("another ciphertext"), "{e}");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}
