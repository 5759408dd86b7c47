//! The download engine (`download_to_path_with`): concurrent ranges written
//! in place, per-range retries that continue where they stopped, resume from
//! a journal, etag guards and checksum verification, against an in-memory
//! store that counts what it serves and can cut responses short
//! (`xferkit_conformance::range_store`, shared with xferkit-share's tests of
//! encrypted downloads).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::sync::Arc;
use std::time::Duration;
use xferkit_core::Key;

use futures::stream::BoxStream;
use xferkit_conformance::range_store::*;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, ErrorKind, FileTransferHandler, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx, UploadSource,
    async_trait,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_range_download_is_byte_identical_and_leaves_only_the_file() {
    let data = random_bytes(5 * MIB + 123, 1);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("big.bin");
    let obj = fetch(
        &store,
        "big.bin",
        &dest,
        &opts(MIB, 4),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    let want: Vec<(u64, u64)> = (0..6u64)
        .map(|i| {
            (
                i * MIB as u64,
                ((i + 1) * MIB as u64).min(data.len() as u64),
            )
        })
        .collect();
    assert_eq!(gets, want, "one GET per part, covering the object once");
    assert_eq!(store.served(), data.len() as u64);
    assert_eq!(names_in(dir.path()), vec!["big.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_range_is_retried_alone_from_the_bytes_it_wrote() {
    let data = random_bytes(12 * MIB, 2);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    // Part 1 (4..8 MiB) breaks after 2.5 MiB: 2 MiB of it are written
    // (1 MiB write buffer), the half-buffer is lost and fetched again.
    store.cut(4 * MIB, 2 * MIB + 512 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f");
    fetch(&store, "f", &dest, &opts(4 * MIB, 3), &fast_retries())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    assert_eq!(gets.len(), 4, "three parts plus one retry: {gets:?}");
    assert!(
        gets.contains(&(6 * MIB as u64, 8 * MIB as u64)),
        "the retry continues after the written 2 MiB: {gets:?}"
    );
    assert_eq!(
        store.served(),
        data.len() as u64 + 512 * KIB as u64,
        "only the unwritten half-buffer is served twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_fetches_only_the_missing_parts() {
    let data = random_bytes(8 * MIB, 3);
    let store = RangeStore::new(data.clone(), Sum::Crc32c);
    // Concurrency 1: parts 0..=2 finish, part 3 fails and is not retried.
    store.cut(3 * MIB, 100 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("r.bin");
    std::fs::write(&dest, b"old version").unwrap();
    let o = opts(MIB, 1);
    let e = fetch(&store, "r.bin", &dest, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Transient | ErrorKind::RetriesExhausted),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"old version",
        "destination untouched"
    );
    assert_eq!(
        names_in(dir.path()),
        vec![
            ".r.bin.xferkit-partial",
            ".r.bin.xferkit-partial.json",
            "r.bin"
        ]
    );

    let before = store.served();
    store.gets.lock().unwrap().clear();
    fetch(&store, "r.bin", &dest, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let gets = store.range_gets();
    let want: Vec<(u64, u64)> = (3..8u64)
        .map(|i| (i * MIB as u64, (i + 1) * MIB as u64))
        .collect();
    assert_eq!(gets, want, "parts 0..=2 are not fetched again");
    assert_eq!(store.served() - before, 5 * MIB as u64);
    assert_eq!(names_in(dir.path()), vec!["r.bin"], "journal removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_etag_restarts_from_zero() {
    let data = random_bytes(6 * MIB, 4);
    let store = RangeStore::new(data, Sum::Crc32c);
    store.cut(2 * MIB, 10 * KIB);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("c.bin");
    let o = opts(MIB, 1);
    fetch(&store, "c.bin", &dest, &o, &no_retries())
        .await
        .unwrap_err();
    assert!(dir.path().join(".c.bin.xferkit-partial.json").exists());

    let newer = random_bytes(6 * MIB, 5);
    store.replace(newer.clone(), "v2");
    store.gets.lock().unwrap().clear();
    let before = store.served();
    fetch(&store, "c.bin", &dest, &o, &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), newer);
    assert_eq!(store.range_gets().len(), 6, "every part fetched again");
    assert_eq!(store.served() - before, 6 * MIB as u64);
    assert_eq!(names_in(dir.path()), vec!["c.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changing_mid_download_fails_and_leaves_nothing() {
    let data = random_bytes(4 * MIB, 6);
    let store = RangeStore::new(data, Sum::None);
    *store.change_at_get.lock().unwrap() = Some((3, random_bytes(4 * MIB, 7)));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("m.bin");
    let e = fetch(&store, "m.bin", &dest, &opts(MIB, 1), &fast_retries())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{}", e.chain());
    assert!(e.to_string().contains("s3://mem/m.bin"), "{e}");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksum_mismatch_is_an_error_and_leaves_nothing() {
    for (sum, part) in [(Sum::WrongCrc32c, MIB), (Sum::WrongCrc32c, 8 * MIB)] {
        let store = RangeStore::new(random_bytes(3 * MIB, 8), sum);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.bin");
        let e = fetch(&store, "x.bin", &dest, &opts(part, 2), &TransferCtx::none())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
        assert!(
            names_in(dir.path()).is_empty(),
            "{:?}",
            names_in(dir.path())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_is_verified_in_one_stream_and_a_mismatch_leaves_nothing() {
    let data = random_bytes(3 * MIB, 9);
    let store = RangeStore::new(data.clone(), Sum::Sha256);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("s.bin");
    fetch(&store, "s.bin", &dest, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        store.gets(),
        vec![(0, data.len() as u64)],
        "one stream, not ranges"
    );

    // The stored digest is of the old bytes; the data changed under it.
    std::fs::remove_file(&dest).unwrap();
    let wrong = RangeStore::new(data, Sum::Sha256);
    let stale = wrong.record(&Key::new("s.bin").unwrap()).checksum;
    let wrong = WrongSum(wrong, stale);
    wrong.0.replace(random_bytes(3 * MIB, 10), "v1");
    let e = fetch(&wrong, "s.bin", &dest, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChecksumMismatch, "{}", e.chain());
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_ranges_gets_one_stream() {
    let data = random_bytes(2 * MIB + 5, 11);
    let mut store = RangeStore::new(data.clone(), Sum::Crc32c);
    store.range = false;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("n.bin");
    fetch(&store, "n.bin", &dest, &opts(MIB, 4), &TransferCtx::none())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(store.gets(), vec![(0, data.len() as u64)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_download_leaves_nothing() {
    let store = RangeStore::new(random_bytes(4 * MIB, 12), Sum::None);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("stop.bin");
    let ctx = TransferCtx::none();
    ctx.token().cancel();
    let e = fetch(&store, "stop.bin", &dest, &opts(MIB, 2), &ctx)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{}", e.chain());
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

/// A store reporting a fixed (stale) checksum.
#[derive(Debug)]
struct WrongSum(RangeStore, Option<String>);

#[async_trait]
impl FileTransferHandler for WrongSum {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn schemes(&self) -> &[&str] {
        self.0.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.0.url_for(key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.0.key_for_url(url)
    }
    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        self.0.upload(key, source, opts, ctx).await
    }
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let (mut o, s) = self.0.download_stream(key, range).await?;
        o.checksum = self.1.clone();
        Ok((o, s))
    }
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        let mut o = self.0.stat(key).await?;
        o.checksum = self.1.clone();
        Ok(o)
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        self.0.list(prefix)
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        self.0.delete(key).await
    }
    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        self.0.copy(from, to).await
    }
    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.0.presign(key, method, expires_in).await
    }
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.0.list_pending_uploads(prefix).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_dropped_mid_way_leaves_nothing() {
    // What the manager does to a stopped transfer that has not returned in
    // time: it drops the future. The partial file and journal go with it.
    let store = RangeStore::new(random_bytes(4 * MIB, 13), Sum::None);
    *store.hang_at.lock().unwrap() = Some(2 * MIB as u64);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("d.bin");
    let o = opts(MIB, 4);
    let ctx = TransferCtx::none();
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        fetch(&store, "d.bin", &dest, &o, &ctx),
    )
    .await;
    assert!(r.is_err(), "the download should still hang");
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_download_to_the_same_destination_leaves_the_first_ones_file_alone() {
    // The first download hangs on one range with its partial file open; a
    // second one to the same destination must neither reuse nor remove it.
    let body = random_bytes(4 * MIB, 14);
    let first = Arc::new(RangeStore::new(body.clone(), Sum::None));
    *first.hang_at.lock().unwrap() = Some(2 * MIB as u64);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("same.bin");
    let o = opts(MIB, 4);
    let ctx = TransferCtx::none();
    let running = {
        let (first, dest, o, ctx) = (first.clone(), dest.clone(), o.clone(), ctx.clone());
        tokio::spawn(async move { fetch(&*first, "same.bin", &dest, &o, &ctx).await })
    };
    // Wait until the first one has its partial file.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !names_in(dir.path())
        .iter()
        .any(|n| n.ends_with(".xferkit-partial"))
    {
        assert!(std::time::Instant::now() < deadline, "no partial file");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = RangeStore::new(random_bytes(4 * MIB, 15), Sum::None);
    let e = fetch(&second, "same.bin", &dest, &o, &TransferCtx::none())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("another download to this destination"),
        "{}",
        e.chain()
    );
    assert!(!dest.exists());
    assert!(
        names_in(dir.path())
            .iter()
            .any(|n| n.ends_with(".xferkit-partial")),
        "the running download's partial file was removed: {:?}",
        names_in(dir.path())
    );
    ctx.token().cancel();
    let _ = running.await;
}
