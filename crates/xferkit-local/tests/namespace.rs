//! The store's own files and the key namespace: no key's metadata can get in
//! the way of another key, a failed write has no effect, limits refuse
//! before anything is stored.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on failure by design

use std::path::{Path, PathBuf};
use xferkit_core::Key;

use xferkit_core::{ErrorKind, FileTransferHandler, PutOptions, TransferCtx, UploadSource};
use xferkit_local::{LocalConfig, LocalStore};

async fn store_with(
    config: impl FnOnce(PathBuf) -> LocalConfig,
) -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::new("t", config(dir.path().join("root")))
        .await
        .unwrap();
    (dir, s)
}

async fn store() -> (tempfile::TempDir, LocalStore) {
    store_with(LocalConfig::with_root).await
}

async fn put(s: &LocalStore, key: &str, data: &'static [u8], ty: &str) -> xferkit_core::Result<()> {
    s.upload(
        &Key::new(key).unwrap(),
        UploadSource::from_bytes(data),
        &PutOptions::default().with_content_type(ty),
        &TransferCtx::none(),
    )
    .await
    .map(|_| ())
}

/// Every path under the root, directories included, outside `.xferkit/`.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if rel == ".xferkit" {
                continue;
            }
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

async fn read(s: &LocalStore, key: &str) -> Vec<u8> {
    use futures::TryStreamExt as _;
    let (_, body) = s
        .download_stream(&Key::new(key).unwrap(), None)
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = body.try_collect().await.unwrap();
    chunks.concat()
}

/// Issue 15: `K.json/x` was the sidecar directory of `K`'s sidecar file.
#[tokio::test]
async fn a_key_named_like_a_sidecar_does_not_collide_in_either_order() {
    for first_the_long_one in [true, false] {
        let (_dir, s) = store().await;
        if first_the_long_one {
            put(&s, "K.json/x", b"long", "text/x-long").await.unwrap();
            put(&s, "K", b"short", "text/x-short").await.unwrap();
        } else {
            put(&s, "K", b"short", "text/x-short").await.unwrap();
            put(&s, "K.json/x", b"long", "text/x-long").await.unwrap();
        }
        for (key, data, ty) in [
            ("K", &b"short"[..], "text/x-short"),
            ("K.json/x", b"long", "text/x-long"),
        ] {
            let st = s.stat(&Key::new(key).unwrap()).await.unwrap();
            assert_eq!(
                st.content_type.as_deref(),
                Some(ty),
                "{key}, long first: {first_the_long_one}"
            );
            assert!(st.checksum.is_some(), "{key}: sidecar lost");
            assert_eq!(read(&s, key).await, data);
        }
        // Both can be written again, and deleted.
        put(&s, "K", b"short2", "text/x-short").await.unwrap();
        put(&s, "K.json/x", b"long2", "text/x-long").await.unwrap();
        s.delete(&Key::new("K.json/x").unwrap()).await.unwrap();
        s.delete(&Key::new("K").unwrap()).await.unwrap();
        assert_eq!(tree(s.root()), Vec::<String>::new());
    }
}

/// A PUT that fails (here: a key that is a prefix of stored keys, or whose
/// parent is an object) reports a client error and changes nothing: no
/// object, no sidecar, no empty directory.
#[tokio::test]
async fn a_failed_put_leaves_the_store_as_it_was() {
    let (_dir, s) = store().await;
    put(&s, "a/b", b"ab", "text/plain").await.unwrap();
    let before = tree(s.root());
    let e = put(&s, "a", b"a", "text/plain").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{e}");
    let e = put(&s, "a/b/c/d", b"abcd", "text/plain").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{e}");
    assert_eq!(tree(s.root()), before);
    assert!(s.stat(&Key::new("a/b/c/d").unwrap()).await.is_err());
    // The sidecar of `a` was never written: a later object `a` (once `a/b` is
    // gone) has its own metadata only.
    assert!(!s.sidecar_path("a").exists());
    assert!(!s.sidecar_path("a/b/c/d").exists());
    assert_eq!(read(&s, "a/b").await, b"ab");
}

#[tokio::test]
async fn sidecars_live_outside_the_key_namespace() {
    let (_dir, s) = store().await;
    put(&s, "dir/k.txt", b"x", "text/plain").await.unwrap();
    let side = s.sidecar_path("dir/k.txt");
    assert!(side.is_file());
    let rel = side
        .strip_prefix(s.root())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(rel.starts_with(".xferkit/"), "{rel}");
    assert!(!rel.contains("k.txt"), "sidecar named after the key: {rel}");
    // `.xferkit/` stays unreachable by keys.
    let e = put(&s, &rel, b"x", "text/plain").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey);
}

/// Sidecars written by earlier versions (`.xferkit/meta/KEY.json`) are still
/// read, and replaced by the new one when the key is written again.
#[tokio::test]
async fn legacy_sidecars_are_read_and_replaced_on_the_next_write() {
    let (_dir, s) = store().await;
    put(&s, "old/doc.txt", b"hello", "text/x-old")
        .await
        .unwrap();
    let new_side = s.sidecar_path("old/doc.txt");
    let legacy = s.root().join(".xferkit/meta/old/doc.txt.json");
    std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&new_side).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("key");
    std::fs::write(&legacy, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::remove_file(&new_side).unwrap();
    let st = s.stat(&Key::new("old/doc.txt").unwrap()).await.unwrap();
    assert_eq!(st.content_type.as_deref(), Some("text/x-old"));
    assert!(st.checksum.is_some());
    put(&s, "old/doc.txt", b"hello again", "text/x-new")
        .await
        .unwrap();
    assert!(!legacy.exists(), "legacy sidecar kept after a new write");
    assert!(new_side.is_file());
    let st = s.stat(&Key::new("old/doc.txt").unwrap()).await.unwrap();
    assert_eq!(st.content_type.as_deref(), Some("text/x-new"));
}

#[tokio::test]
async fn over_long_segments_are_invalid_keys() {
    let (_dir, s) = store().await;
    let key = format!("d/{}", "a".repeat(300));
    let e = put(&s, &key, b"x", "text/plain").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{e}");
    assert_eq!(
        s.stat(&Key::new(&key).unwrap()).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    // 255 bytes is a valid file name.
    put(&s, &"b".repeat(255), b"x", "text/plain").await.unwrap();
}

#[tokio::test]
async fn max_upload_size_refuses_larger_uploads_and_leaves_nothing() {
    let (dir, s) = store_with(|r| LocalConfig::with_root(r).with_max_upload_size(4)).await;
    put(&s, "fits", b"1234", "text/plain").await.unwrap();
    // Announced size, and a stream that says nothing about its size.
    let e = put(&s, "big", b"12345", "text/plain").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("max_upload_size"), "{e}");
    let stream = futures::stream::iter([
        Ok(bytes::Bytes::from_static(b"123")),
        Ok(bytes::Bytes::from_static(b"45")),
    ]);
    let e = s
        .upload(
            &Key::new("big").unwrap(),
            UploadSource::Stream {
                stream: Box::pin(stream),
                size: None,
            },
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    // From a path.
    let src = dir.path().join("src");
    std::fs::write(&src, b"123456").unwrap();
    let e = s
        .upload(
            &Key::new("big").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert_eq!(tree(s.root()), vec!["fits".to_string()]);
    let tmp: Vec<_> = std::fs::read_dir(s.root().join(".xferkit/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
}

#[tokio::test]
async fn serve_settings_have_defaults_and_bad_values_are_refused() {
    let (_dir, s) = store().await;
    let d = s.serve_settings();
    assert_eq!(
        d.max_connections,
        xferkit_local::ServeSettings::MAX_CONNECTIONS
    );
    assert_eq!(d.max_upload_size, None);
    let dir = tempfile::tempdir().unwrap();
    let mut c = LocalConfig::with_root(dir.path());
    c.serve_max_connections = Some(0);
    let e = LocalStore::new("t", c).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("configuration: serve_max_connections must be at least 1"),
        "{e}"
    );
    let mut c = LocalConfig::with_root(dir.path());
    c.serve_inline_types = vec!["text/html; charset=utf-8".into()];
    let e = LocalStore::new("t", c).await.unwrap_err();
    assert!(e.to_string().contains("serve_inline_types"), "{e}");
}
