//! `xfer gc`: orphaned S3 multipart uploads are listed and aborted by age
//! (on moto, which implements ListMultipartUploads; s3s-fs does not), a
//! local store's stale temp files are removed (tests/cli/crash_leftovers.rs at the workspace root
//! makes them with `kill -9`), and the stores that have nothing of the kind
//! (GCS, Azure) say why.
//!
//! The moto test passes vacuously with a note when `XFERKIT_MOTO_ENDPOINT`
//! is missing, except under `CI` / `XFERKIT_REQUIRE_EMULATORS=1`, where it
//! fails.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use common::{Sandbox, check_failure, emulator, unique};
use xferkit::FileTransferHandler;
use xferkit::backends::s3;

const BUCKET: &str = "xferkit-gc";

fn moto_config(endpoint: &str, prefix: &str) -> s3::S3Config {
    let mut c = s3::S3Config::new(BUCKET);
    c.endpoint = Some(endpoint.to_string());
    c.force_path_style = true;
    c.access_key_id = Some("testing".into());
    c.secret_access_key = Some(xferkit::Secret::new("testing"));
    c.prefix = prefix.to_string();
    c
}

/// Start a multipart upload of `key` directly (CreateMultipartUpload, as a
/// crashed tool would have left it) and return its upload id. moto accepts
/// unsigned requests.
async fn orphan(endpoint: &str, full_key: &str) -> String {
    let body = reqwest::Client::new()
        .post(format!("{endpoint}/{BUCKET}/{full_key}?uploads"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = body
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .unwrap_or_else(|| panic!("no UploadId in {body}"));
    id.to_string()
}

async fn pending_keys(store: &s3::S3Store) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list_pending_uploads("")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.key)
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_aborts_orphaned_multipart_uploads_by_age_on_moto() {
    let Some(v) = emulator(&["XFERKIT_MOTO_ENDPOINT"]) else {
        return;
    };
    let endpoint = v[0].trim_end_matches('/').to_string();
    let prefix = unique("gc");
    let store = s3::S3Store::new("m", moto_config(&endpoint, &prefix))
        .await
        .unwrap();
    store.ensure_bucket().await.unwrap();
    let old_id = orphan(&endpoint, &format!("{prefix}/old/a.bin")).await;
    orphan(&endpoint, &format!("{prefix}/young/b.bin")).await;
    assert_eq!(pending_keys(&store).await, ["old/a.bin", "young/b.bin"]);

    let sb = Sandbox::local().with_config(&format!(
        "default_store = \"m\"\n[stores.m]\nbackend = \"s3\"\nbucket = {BUCKET:?}\n\
         endpoint = {endpoint:?}\nforce_path_style = true\naccess_key_id = \"testing\"\n\
         secret_access_key = \"testing\"\nprefix = {prefix:?}\n"
    ));

    // moto reports a fixed `Initiated` date (2010-11-10) for every upload,
    // so both are about 16 years old: an age of 100 years spares both.
    let r = sb.ok(&["gc", "--store", "m", "--older-than", "36500days"]);
    assert_eq!(r.out(), "", "{r:?}");
    assert_eq!(pending_keys(&store).await, ["old/a.bin", "young/b.bin"]);

    // --dry-run lists, aborts nothing.
    let r = sb.ok(&[
        "--json",
        "gc",
        "--store",
        "m",
        "--older-than",
        "0s",
        "--dry-run",
    ]);
    let rows: Vec<serde_json::Value> = r
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{r:?}");
    assert!(rows.iter().all(|v| v["action"] == "would-abort"), "{r:?}");
    assert_eq!(pending_keys(&store).await, ["old/a.bin", "young/b.bin"]);

    // A URL prefix narrows it: only old/ is collected.
    let url = format!("s3://{BUCKET}/{prefix}/old/");
    let r = sb.ok(&["--json", "gc", &url, "--older-than", "0s"]);
    let v: serde_json::Value = serde_json::from_str(r.out()).unwrap();
    assert_eq!(v["action"], "aborted", "{r:?}");
    assert_eq!(v["key"], "old/a.bin", "{r:?}");
    assert_eq!(v["upload_id"], old_id.as_str(), "{r:?}");
    assert_eq!(
        v["url"],
        format!("s3://{BUCKET}/{prefix}/old/a.bin"),
        "{r:?}"
    );
    assert_eq!(pending_keys(&store).await, ["young/b.bin"]);

    // The default age (24h) takes the rest; text output names each upload.
    let r = sb.ok(&["gc"]);
    assert!(
        r.out().starts_with("aborted") && r.out().contains("young/b.bin"),
        "{r:?}"
    );
    assert!(pending_keys(&store).await.is_empty());
    // Nothing left: a second run has nothing to do.
    assert_eq!(sb.ok(&["gc", "--older-than", "0s"]).out(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_a_store_without_the_listing_fails_clearly() {
    // s3s-fs answers ListMultipartUploads with 501.
    let Some(v) = emulator(&[
        "XFERKIT_S3S_ENDPOINT",
        "XFERKIT_S3S_ACCESS_KEY",
        "XFERKIT_S3S_SECRET_KEY",
    ]) else {
        return;
    };
    let sb = Sandbox::local().with_config(&format!(
        "[stores.s]\nbackend = \"s3\"\nbucket = \"xferkit-gc\"\nendpoint = {:?}\n\
         force_path_style = true\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
        v[0], v[1], v[2]
    ));
    let r = sb.run(&["gc", "--store", "s", "--older-than", "0s"]);
    check_failure(
        &r,
        1,
        &["s3://xferkit-gc/", "ListMultipartUploads"],
        "gc on s3s-fs",
    );
}

#[test]
fn gc_says_why_gcs_and_azure_have_nothing_to_collect() {
    // No request is sent: these stores have no pending-upload listing.
    let sb = Sandbox::local().with_config(
        "[stores.local]\nbackend = \"local\"\nroot = \"root\"\n\
         [stores.g]\nbackend = \"gcs\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:1\"\nanonymous = true\n\
         [stores.a]\nbackend = \"azure\"\naccount = \"acct\"\ncontainer = \"media\"\n\
         endpoint = \"http://127.0.0.1:1/acct\"\naccount_key = \"a2V5\"\n",
    );
    let r = sb.ok(&["gc"]);
    assert_eq!(r.out(), "", "{r:?}");
    let notes: Vec<&str> = r.stderr.lines().collect();
    // The local store has something to collect (stale temp files), just
    // not now: no note, no output.
    assert_eq!(notes.len(), 2, "{r:?}");
    let note = |store: &str| {
        notes
            .iter()
            .find(|l| l.contains(&format!("store `{store}`")))
            .unwrap_or_else(|| panic!("no note for {store}: {r:?}"))
            .to_string()
    };
    assert!(note("g").contains("resumable upload sessions expire") && note("g").contains("7 days"));
    assert!(note("a").contains("uncommitted blocks") && note("a").contains("7 days"));
    assert!(!r.stderr.contains("store `local`"), "{r:?}");

    let r = sb.ok(&["gc", "--store", "a"]);
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    // --quiet: nothing at all.
    let r = sb.ok(&["--quiet", "gc"]);
    assert_eq!((r.out(), r.stderr.as_str()), ("", ""), "{r:?}");
    // Bad arguments are usage errors.
    let r = sb.run(&["gc", "--older-than", "soon"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    let r = sb.run(&["gc", "--store", "nope"]);
    check_failure(&r, 2, &["nope"], "gc --store nope");
}

#[test]
fn gc_removes_a_local_stores_stale_temp_files_and_spares_locked_ones() {
    let sb = Sandbox::local();
    sb.ok(&["upload", sb.file("a.txt", b"a").to_str().unwrap()]);
    let tmp = sb.root().join(".xferkit/tmp");
    // Left by a process that died: nobody holds its lock.
    std::fs::write(tmp.join("up.dead"), b"half an upload").unwrap();
    // Being written by a live process: this one holds its lock.
    std::fs::write(tmp.join("up.live"), b"being written").unwrap();
    let live = std::fs::File::open(tmp.join("up.live")).unwrap();
    live.lock().unwrap();

    let r = sb.ok(&["gc", "--store", "local", "--dry-run"]);
    assert!(
        r.out().starts_with("would-abort") && r.out().contains("/.xferkit/tmp/up.dead"),
        "{r:?}"
    );
    assert_eq!(r.out().lines().count(), 1, "{r:?}");
    assert!(tmp.join("up.dead").exists());

    let r = sb.ok(&["--json", "gc", "--store", "local", "--older-than", "7days"]);
    let v = r.json();
    assert_eq!(v["action"], "aborted", "{r:?}");
    assert_eq!(v["key"], ".xferkit/tmp/up.dead", "{r:?}");
    assert_eq!(v["store"], "local", "{r:?}");
    assert!(!tmp.join("up.dead").exists());
    assert!(tmp.join("up.live").exists(), "a locked temp file stays");
    // The store itself is untouched.
    assert_eq!(std::fs::read(sb.root().join("a.txt")).unwrap(), b"a");

    drop(live);
    let r = sb.ok(&["--quiet", "gc"]);
    assert_eq!(r.out(), "", "--quiet: no rows");
    assert!(!tmp.join("up.live").exists(), "unlocked, it is stale");
}
