//! `xfer cp -r`: directories to URL prefixes and back, on a local store and
//! on S3 (s3s-fs). The S3 test passes vacuously with a note when the
//! emulator variables are missing, except under `CI=true` or
//! `XFERKIT_REQUIRE_EMULATORS=1`, where it fails.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Run, read_tree, write_tree, xfer_in};
use xferkit_conformance::emulator_env as env;

/// Run xfer in `dir` with `dir/xferkit.toml`.
fn xfer(dir: &Path, args: &[&str]) -> Run {
    xfer_os(dir, &args.iter().map(Into::into).collect::<Vec<_>>())
}

fn xfer_os(dir: &Path, args: &[std::ffi::OsString]) -> Run {
    Run::of(xfer_in(dir).arg("--quiet").args(args))
}

fn ok(dir: &Path, args: &[&str]) -> Run {
    let o = xfer(dir, args);
    assert_eq!(o.code, Some(0), "xfer {args:?} failed: {}", o.stderr);
    o
}

/// A tree of files: relative path → content.
fn sample_tree() -> BTreeMap<String, Vec<u8>> {
    let mut t = BTreeMap::new();
    t.insert("top.txt".to_string(), b"top".to_vec());
    t.insert("a/one.bin".into(), vec![1u8; 70_000]);
    t.insert("a/b/two.txt".into(), b"two".to_vec());
    t.insert("a/b/c/d/deep name.txt".into(), b"deep".to_vec());
    t.insert("empty.txt".into(), Vec::new());
    for i in 0..40 {
        t.insert(
            format!("many/f{i:03}.dat"),
            format!("file {i}").into_bytes(),
        );
    }
    t
}

/// A sandbox with a local store `local` rooted at `root/`.
fn local_sandbox() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        dir.path().join("xferkit.toml"),
        format!(
            "default_store = \"local\"\n[stores.local]\nbackend = \"local\"\nroot = {:?}\n",
            root.display().to_string()
        ),
    )
    .unwrap();
    let root_url = format!(
        "file://{}/",
        std::fs::canonicalize(&root).unwrap().display()
    );
    (dir, root, root_url)
}

#[test]
fn a_directory_uploads_with_relative_paths_as_keys_and_downloads_back() {
    let (dir, root, root_url) = local_sandbox();
    let d = dir.path();
    let tree = sample_tree();
    write_tree(&d.join("src"), &tree);

    let up = ok(
        d,
        &[
            "cp",
            "-r",
            "--concurrency",
            "4",
            "src",
            &format!("{root_url}photos"),
        ],
    );
    assert_eq!(up.stdout.lines().count(), tree.len(), "{}", up.stdout);
    assert!(
        up.stdout
            .contains(&format!("{root_url}photos/a/b/c/d/deep")),
        "{}",
        up.stdout
    );
    assert_eq!(read_tree(&root.join("photos")), tree);

    let down = ok(d, &["cp", "-r", &format!("{root_url}photos/"), "back"]);
    assert_eq!(down.stdout.lines().count(), tree.len(), "{}", down.stdout);
    assert_eq!(read_tree(&d.join("back")), tree);
}

#[test]
fn bad_names_are_reported_by_path_and_the_other_files_still_move() {
    use std::os::unix::ffi::OsStrExt;
    let (dir, root, root_url) = local_sandbox();
    let d = dir.path();
    let src = d.join("src");
    write_tree(&src, &sample_tree());
    let not_utf8 = src.join(std::ffi::OsStr::from_bytes(b"bad\xffname.txt"));
    std::fs::write(&not_utf8, b"x").unwrap();
    std::fs::write(src.join("back\\slash.txt"), b"y").unwrap();

    let r = xfer(d, &["cp", "-r", "src", &format!("{root_url}up/")]);
    assert_eq!(r.code, Some(2), "only invalid names failed: {}", r.stderr);
    assert!(
        r.stderr.contains("bad") && r.stderr.contains("UTF-8"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("back\\slash.txt") && r.stderr.contains("backslash"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2 of 47 files failed"), "{}", r.stderr);
    assert_eq!(
        read_tree(&root.join("up")),
        sample_tree(),
        "the valid files all arrived"
    );
}

#[test]
fn existing_files_are_kept_without_force_and_the_rest_download() {
    let (dir, _root, root_url) = local_sandbox();
    let d = dir.path();
    let tree = sample_tree();
    write_tree(&d.join("src"), &tree);
    ok(d, &["cp", "-r", "src", &root_url]);
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(d.join("out/top.txt"), b"mine").unwrap();

    let r = xfer(d, &["cp", "-r", &root_url, "out"]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert!(r.stderr.contains("top.txt"), "{}", r.stderr);
    let got = read_tree(&d.join("out"));
    assert_eq!(got["top.txt"], b"mine");
    assert_eq!(got.len(), tree.len());

    ok(d, &["cp", "-r", "--force", &root_url, "out"]);
    assert_eq!(read_tree(&d.join("out")), tree);
}

#[test]
fn recursive_copy_needs_a_directory_or_a_prefix() {
    let (dir, _root, root_url) = local_sandbox();
    let d = dir.path();
    std::fs::write(d.join("f.txt"), b"x").unwrap();
    let r = xfer(d, &["cp", "-r", "f.txt", &root_url]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
    let r = xfer(d, &["cp", "-r", "missing-dir", &root_url]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("missing-dir"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_round_trips_through_s3() {
    let Some(v) = env(&xferkit_conformance::S3S_VARS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store_toml = format!(
        "backend = \"s3\"\nbucket = \"xferkit-tree\"\nendpoint = {:?}\nforce_path_style = true\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\n",
        v[0], v[1], v[2]
    );
    std::fs::write(
        d.join("xferkit.toml"),
        format!("default_store = \"remote\"\n[stores.remote]\n{store_toml}"),
    )
    .unwrap();
    let fig: xferkit_s3::S3Config = figment_store(&store_toml);
    let store = xferkit_s3::S3Store::new("remote", fig).await.unwrap();
    store.ensure_bucket().await.unwrap();

    let tree = sample_tree();
    write_tree(&d.join("src"), &tree);
    let prefix = format!("s3://xferkit-tree/tree-{}/", std::process::id());
    let up = ok(d, &["cp", "-r", "src", &prefix]);
    assert_eq!(up.stdout.lines().count(), tree.len(), "{}", up.stdout);
    let listing = ok(d, &["ls", "-r", &prefix]);
    assert_eq!(
        listing.stdout.lines().count(),
        tree.len(),
        "{}",
        listing.stdout
    );
    ok(d, &["cp", "-r", &prefix, "back"]);
    assert_eq!(read_tree(&d.join("back")), tree);
}

/// Parse a store table the way the facade does (serde over TOML).
fn figment_store<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    let mut table: toml::Table = toml.parse().unwrap();
    table.remove("backend");
    table.try_into().unwrap()
}

/// A 40 MiB object is above the ranged-download threshold (32 MiB): it comes
/// back from s3s-fs in 16 MiB ranges, byte-identical, with no partial or
/// journal file left next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_downloads_in_ranges_byte_identical_from_s3() {
    let Some(v) = env(&xferkit_conformance::S3S_VARS) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store_toml = format!(
        "backend = \"s3\"\nbucket = \"xferkit-tree\"\nendpoint = {:?}\nforce_path_style = true\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\n",
        v[0], v[1], v[2]
    );
    std::fs::write(
        d.join("xferkit.toml"),
        format!("default_store = \"remote\"\n[stores.remote]\n{store_toml}"),
    )
    .unwrap();
    let fig: xferkit_s3::S3Config = figment_store(&store_toml);
    let store = xferkit_s3::S3Store::new("remote", fig).await.unwrap();
    store.ensure_bucket().await.unwrap();

    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..40 * 1024 * 1024 + 3)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(d.join("big.bin"), &data).unwrap();
    let url = format!("s3://xferkit-tree/ranges-{}/big.bin", std::process::id());
    ok(d, &["cp", "big.bin", &url]);
    std::fs::create_dir(d.join("out")).unwrap();
    ok(d, &["cp", &url, "out/big.bin"]);
    assert!(
        std::fs::read(d.join("out/big.bin")).unwrap() == data,
        "download differs"
    );
    let names: Vec<_> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);
    ok(d, &["rm", &url]);
}
