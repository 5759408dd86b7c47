//! Local-backend specifics the shared suite cannot know: traversal,
//! symlinks, atomic writes, large files, sidecars.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::sync::Arc;
use std::time::Duration;
use xferkit_core::Key;

use bytes::Bytes;
use futures::StreamExt;
use xferkit_core::{
    CancellationToken, ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, TransferCtx,
    UploadSource,
};
use xferkit_local::{LocalConfig, LocalStore};

async fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new("t", LocalConfig::with_root(dir.path().join("root")))
        .await
        .unwrap();
    (dir, s)
}

fn put_bytes(b: &'static [u8]) -> UploadSource {
    UploadSource::from_bytes(b)
}

#[tokio::test]
async fn traversal_attempts_are_refused_and_touch_nothing() {
    let (dir, s) = store().await;
    std::fs::write(dir.path().join("outside.txt"), b"secret").unwrap();
    // A symlink to a directory outside the root, and one to a file outside.
    std::os::unix::fs::symlink(dir.path(), s.root().join("link-dir")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.txt"), s.root().join("link-file")).unwrap();
    let forms = [
        "../outside.txt",
        "../../etc/passwd",
        "a/../../outside.txt",
        "a/b/../../../outside.txt",
        "/etc/passwd",
        "..",
        ".",
        "./outside.txt",
        "a/./b",
        "..\\outside.txt",
        "a\\..\\..\\outside.txt",
        "C:\\Windows\\win.ini",
        "nul\0../x",
        "a//../outside.txt",
        "link-dir/outside.txt",
        "link-file",
        ".xferkit/meta/x.json",
        "a/\u{0}",
        "",
    ];
    let mut reached_the_store = 0;
    for k in forms {
        let what = format!("{k:?}");
        // Outside the portable rules: no `Key` holds it, so no store sees it.
        let k = match Key::new(k) {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidKey, "Key::new {what}: {e}");
                continue;
            }
            Ok(k) => k,
        };
        // A portable key this store refuses (symlinks, its own files).
        reached_the_store += 1;
        let e = s.stat(&k).await.expect_err(&what);
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "stat {what}: {e}");
        let e = s
            .upload(
                &k,
                put_bytes(b"pwned"),
                &PutOptions::default(),
                &TransferCtx::none(),
            )
            .await
            .expect_err(&what);
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "upload {what}: {e}");
        let e = s
            .download_stream(&k, None)
            .await
            .map(|_| ())
            .expect_err(&what);
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "download {what}: {e}");
        let e = s.delete(&k).await.expect_err(&what);
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "delete {what}: {e}");
    }
    assert_eq!(
        reached_the_store, 3,
        "the symlinks and .xferkit/ are valid keys"
    );
    assert_eq!(
        std::fs::read(dir.path().join("outside.txt")).unwrap(),
        b"secret"
    );
    // Listing never follows the symlinks out of the root.
    let listed: Vec<_> = s.list("").collect().await;
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn stopped_upload_leaves_nothing_under_the_final_name() {
    let (_dir, s) = store().await;
    let s = Arc::new(s);
    // Keep an older version to prove it survives.
    s.upload(
        &Key::new("doc").unwrap(),
        put_bytes(b"old"),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    let (token, task) = stalled_upload(&s, b"new partial");
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(
        &s.read_bytes(&Key::new("doc").unwrap(), None).await.unwrap()[..],
        b"old"
    );
    let tmp: Vec<_> = std::fs::read_dir(s.root().join(".xferkit/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

/// A live upload's temp file (a stream that stalls) is neither listed as
/// pending nor removable; a dead process's one (no lock held) is both, and
/// the next upload removes it by itself.
#[tokio::test]
async fn pending_uploads_are_the_temp_files_of_dead_processes_only() {
    let (_dir, s) = store().await;
    let s = Arc::new(s);
    let tmp = s.root().join(".xferkit/tmp");
    assert!(s.capabilities().list_pending_uploads);
    std::fs::write(tmp.join("up.dead1"), b"half").unwrap();

    let (token, live) = stalled_upload(&s, b"partial");
    // Its first upload swept the dead file; the live one is being written.
    let live_name = loop {
        let names: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if names.len() == 1 && names[0] != "up.dead1" {
            break names[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(s.list_pending_uploads("").await.unwrap().is_empty());

    std::fs::write(tmp.join("up.dead2"), b"half").unwrap();
    let pending = s.list_pending_uploads("").await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].key, ".xferkit/tmp/up.dead2");
    assert_eq!(pending[0].upload_id, "up.dead2");
    assert!(pending[0].initiated.is_some());
    assert!(s.list_pending_uploads("photos/").await.unwrap().is_empty());
    s.abort_pending_upload(&pending[0]).await.unwrap();
    assert!(!tmp.join("up.dead2").exists());
    // Gone already: fine.
    s.abort_pending_upload(&pending[0]).await.unwrap();

    // The live one is refused and kept.
    let forged = xferkit_core::PendingUpload::new(
        format!(".xferkit/tmp/{live_name}"),
        live_name.clone(),
        None,
    );
    let e = s.abort_pending_upload(&forged).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{e}");
    assert!(tmp.join(&live_name).exists());
    // Nothing outside the temp directory can be named.
    for key in [
        "doc",
        ".xferkit/tmp/../meta/doc.json",
        ".xferkit/tmp/",
        "../x",
    ] {
        let p = xferkit_core::PendingUpload::new(key.into(), "x".into(), None);
        let e = s.abort_pending_upload(&p).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidKey, "{key}: {e}");
    }

    token.cancel();
    assert_eq!(
        live.await.unwrap().unwrap_err().kind(),
        ErrorKind::Cancelled
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

struct Noop;
impl xferkit_core::ProgressSink for Noop {
    fn add(&self, _: u64) {}
    fn set_total(&self, _: u64) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_round_trip_is_byte_identical() {
    let (dir, s) = store().await;
    let src = dir.path().join("big.bin");
    let mut body = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in body.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &body).unwrap();
    let obj = s
        .upload(
            &Key::new("big/файл.bin").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert_eq!(obj.size, 100 << 20);
    let dest = dir.path().join("back.bin");
    s.download_to_path(
        &Key::new("big/файл.bin").unwrap(),
        &dest,
        None,
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == body,
        "100 MiB round trip differs"
    );
}

#[tokio::test]
async fn sidecar_keeps_type_and_metadata_and_foreign_files_still_stat() {
    let (_dir, s) = store().await;
    let opts = PutOptions::default()
        .with_content_type("text/x-note")
        .with_metadata("title", "hi");
    s.upload(
        &Key::new("n.txt").unwrap(),
        put_bytes(b"x"),
        &opts,
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    let st = s.stat(&Key::new("n.txt").unwrap()).await.unwrap();
    assert_eq!(st.content_type.as_deref(), Some("text/x-note"));
    assert_eq!(st.metadata.get("title").map(String::as_str), Some("hi"));
    assert_eq!(
        st.checksum.as_deref(),
        Some(format!("crc32c:{:08x}", crc32c::crc32c(b"x")).as_str())
    );
    // A file dropped in by another program is still an object.
    std::fs::write(s.root().join("dropped.png"), b"png").unwrap();
    let st = s.stat(&Key::new("dropped.png").unwrap()).await.unwrap();
    assert_eq!(
        (st.size, st.content_type.as_deref()),
        (3, Some("image/png"))
    );
    // Overwriting behind the store's back makes the sidecar stale, not wrong.
    std::fs::write(s.root().join("n.txt"), b"changed").unwrap();
    let st = s.stat(&Key::new("n.txt").unwrap()).await.unwrap();
    assert_eq!(st.size, 7);
    assert!(st.checksum.is_none(), "stale checksum reported");
}

#[tokio::test]
async fn urls_map_both_ways_and_empty_dirs_are_pruned() {
    let (_dir, s) = store().await;
    let url = s.url_for(&Key::new("a b/c#d").unwrap());
    let parsed = xferkit_core::url::ObjectUrl::parse(&url).unwrap();
    assert_eq!(s.key_for_url(&parsed).as_deref(), Some("a b/c#d"));
    s.upload(
        &Key::new("x/y/z").unwrap(),
        put_bytes(b"1"),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .unwrap();
    s.delete(&Key::new("x/y/z").unwrap()).await.unwrap();
    assert!(!s.root().join("x").exists(), "empty parents not pruned");
    assert!(s.root().exists());
}

/// An upload of `doc` from a stream that yields `first`, then stalls
/// forever (its temp file stays open and locked), and the token that stops it.
fn stalled_upload(
    s: &Arc<LocalStore>,
    first: &'static [u8],
) -> (
    CancellationToken,
    tokio::task::JoinHandle<xferkit_core::Result<xferkit_core::RemoteObject>>,
) {
    let token = CancellationToken::new();
    let ctx = TransferCtx::new(Arc::new(Noop), token.clone());
    let stream = futures::stream::once(async move { Ok(Bytes::from_static(first)) })
        .chain(futures::stream::pending());
    let s2 = s.clone();
    let task = tokio::spawn(async move {
        s2.upload(
            &Key::new("doc").unwrap(),
            UploadSource::Stream {
                stream: Box::pin(stream),
                size: None,
            },
            &PutOptions::default(),
            &ctx,
        )
        .await
    });
    (token, task)
}
