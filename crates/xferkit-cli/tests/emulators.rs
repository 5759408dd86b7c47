//! `xfer` against S3, GCS and Azure stores configured in a TOML file,
//! pointed at the emulators that `cargo xtask test` starts. Without the
//! emulator variables these tests pass vacuously with a note, except under
//! `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`, where they fail.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::path::Path;

use common::{outcome, xfer_in};

fn xfer(dir: &Path, args: &[&str]) -> (i32, String, String) {
    outcome(xfer_in(dir).arg("--quiet").args(args))
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = xfer(dir, args);
    assert_eq!(code, 0, "xfer {args:?} failed: {err}");
    out
}

/// Upload, stat, ls, download, presign GET, rm: the whole CLI on one store.
async fn exercise(store_toml: String, scheme: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("xferkit.toml"),
        format!("default_store = \"remote\"\n[stores.remote]\n{store_toml}"),
    )
    .unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(d.join("photo one.jpg"), &body).unwrap();

    let url = ok(
        d,
        &[
            "upload",
            "photo one.jpg",
            "--key",
            "cli/photo one.jpg",
            "--title",
            "Hi",
        ],
    );
    assert!(url.starts_with(&format!("{scheme}://")), "{url}");
    let stat: serde_json::Value = serde_json::from_str(&ok(d, &["--json", "stat", &url])).unwrap();
    assert_eq!(stat["size"], 3_000_000, "{stat}");
    assert_eq!(stat["content_type"], "image/jpeg", "{stat}");
    let prefix = url.rsplit_once('/').unwrap().0.to_string() + "/";
    let listing = ok(d, &["ls", &prefix]);
    assert!(listing.contains(&url), "ls {prefix} gave {listing}");
    ok(d, &["download", &url, "back.jpg"]);
    assert!(
        std::fs::read(d.join("back.jpg")).unwrap() == body,
        "download differs"
    );
    let link = ok(d, &["presign", &url, "--expires", "10m"]);
    assert!(link.starts_with("http"), "{link}");
    let fetched = reqwest::get(&link).await.unwrap();
    assert!(
        fetched.status().is_success(),
        "presigned GET: {}",
        fetched.status()
    );
    assert!(
        fetched.bytes().await.unwrap() == body,
        "presigned GET body differs"
    );
    // The link itself downloads through xfer too (the http store).
    ok(d, &["download", &link, "via-link.jpg"]);
    assert!(std::fs::read(d.join("via-link.jpg")).unwrap() == body);
    ok(d, &["rm", &url]);
    let (code, _, err) = xfer(d, &["stat", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not found") && err.lines().count() == 1,
        "{err}"
    );
}

fn prefix() -> String {
    format!("cli-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfer_against_s3_from_config() {
    if let Some(toml) = common::s3_store_toml("xferkit-cli", &prefix()).await {
        exercise(toml, "s3").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfer_against_azure_from_config() {
    if let Some(toml) = common::azure_store_toml("xferkit-cli", &prefix()).await {
        exercise(toml, "az").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfer_against_gcs_from_config() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(toml) = common::gcs_store_toml("xferkit-cli", &prefix(), dir.path()).await {
        exercise(toml, "gs").await;
    }
}

/// Server-side options from the store's table and from `xfer upload`
/// flags (the flag wins), shown by `xfer stat`; Azurite keeps the four
/// headers and the access tier. An option Azure cannot honour (tags) fails
/// the upload naming it, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfer_upload_server_side_options_and_stat_shows_them() {
    let Some(toml) = common::azure_store_toml("xferkit-cli", &prefix()).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("xferkit.toml"),
        format!(
            "default_store = \"remote\"\n[stores.remote]\n{toml}\
             storage_class = \"Cool\"\ncache_control = \"max-age=60\"\ncontent_language = \"de\"\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("a.txt"), b"hello").unwrap();
    let url = ok(
        d,
        &[
            "upload",
            "a.txt",
            "--key",
            "opts/a.txt",
            "--cache-control",
            "no-store",
            "--content-disposition",
            "attachment; filename=\"a.txt\"",
        ],
    );
    let stat: serde_json::Value = serde_json::from_str(&ok(d, &["--json", "stat", &url])).unwrap();
    assert_eq!(stat["cache_control"], "no-store", "{stat}");
    assert_eq!(
        stat["content_disposition"], "attachment; filename=\"a.txt\"",
        "{stat}"
    );
    assert_eq!(stat["content_language"], "de", "{stat}");
    assert_eq!(stat["storage_class"], "Cool", "{stat}");
    let text = ok(d, &["stat", &url]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("storage-class") && l.ends_with("  Cool")),
        "{text}"
    );
    assert!(text.contains("cache-control"), "{text}");
    let (code, _, err) = xfer(
        d,
        &["upload", "a.txt", "--key", "opts/t.txt", "--tag", "k=v"],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("not supported") && err.contains("tags"),
        "{err}"
    );
    let (code, _, _) = xfer(d, &["stat", &url.replace("a.txt", "t.txt")]);
    assert_eq!(code, 1, "nothing stored");
    ok(d, &["rm", &url]);
}
