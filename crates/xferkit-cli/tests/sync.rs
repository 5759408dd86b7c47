//! `xfer sync`, `rm -r`, `mv`, `cp -r --dry-run`, `completions` and `man`:
//! on a local store always, and on S3 (s3s-fs), GCS (fake-gcs-server) and
//! Azure (Azurite), across backends too. The emulator tests pass vacuously
//! with a note when the emulator variables are missing, except under
//! `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`, where they fail.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Run, read_tree, write_tree, xfer_in};

fn xfer(dir: &Path, args: &[&str]) -> Run {
    Run::of(xfer_in(dir).arg("--quiet").args(args))
}

#[track_caller]
fn ok(dir: &Path, args: &[&str]) -> Run {
    let o = xfer(dir, args);
    assert_eq!(o.code, Some(0), "xfer {args:?} failed: {}", o.stderr);
    o
}

/// `xfer --json sync ARGS`: the summary object (the last line).
#[track_caller]
fn sync_summary(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "sync"];
    all.extend_from_slice(args);
    let r = ok(dir, &all);
    let last = r.stdout.lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    v["summary"].clone()
}

fn tree() -> BTreeMap<String, Vec<u8>> {
    let mut t = BTreeMap::new();
    t.insert("top.txt".to_string(), b"top".to_vec());
    t.insert("a/one.bin".into(), vec![1u8; 70_000]);
    t.insert("a/b/two.txt".into(), b"two".to_vec());
    t.insert("skip/me.tmp".into(), b"tmp".to_vec());
    t.insert("empty.txt".into(), Vec::new());
    for i in 0..20 {
        t.insert(
            format!("many/f{i:02}.dat"),
            format!("file {i}").into_bytes(),
        );
    }
    t
}

/// Keys under `prefix` (a URL ending in `/`), relative to it, as `ls` lists them.
fn listed(dir: &Path, prefix: &str) -> Vec<String> {
    let r = ok(dir, &["ls", "-r", prefix]);
    let mut keys: Vec<String> = r
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter_map(|u| u.strip_prefix(prefix).map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// A temp dir with `xferkit.toml`: a local store `local` at `root/` (the
/// default) and, given its TOML body, a store `remote`.
fn sandbox(remote: Option<&str>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut toml = format!(
        "default_store = \"local\"\n[stores.local]\nbackend = \"local\"\nroot = {:?}\n",
        root.display().to_string()
    );
    if let Some(r) = remote {
        toml.push_str(&format!("[stores.remote]\n{r}"));
    }
    std::fs::write(dir.path().join("xferkit.toml"), toml).unwrap();
    let root_url = format!(
        "file://{}/",
        std::fs::canonicalize(&root).unwrap().display()
    );
    (dir, root_url)
}

/// A file's mtime, pushed `secs` into the past.
fn age(path: &Path, secs: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

/// The whole sync story on one prefix URL `base` (ending in `/`): up, a
/// second sync sending nothing, a change, dry runs, --delete, excludes, down
/// (twice), and a per-file failure.
fn sync_story(d: &Path, base: &str) {
    let t = tree();
    write_tree(&d.join("src"), &t);
    // Files older than any upload, so that "source newer" never fires by
    // accident within one second.
    for rel in t.keys() {
        age(&d.join("src").join(rel), 3600);
    }
    let up = format!("{base}up/");

    // Up: everything but the excluded, in parallel.
    let s = sync_summary(d, &["--exclude", "*.tmp", "src", &up]);
    assert_eq!(s["sent"], t.len() - 1, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    let want: Vec<String> = t.keys().filter(|k| !k.ends_with(".tmp")).cloned().collect();
    assert_eq!(listed(d, &up), want);

    // Nothing changed: nothing sent.
    let s = sync_summary(d, &["--exclude", "*.tmp", "src", &up]);
    assert_eq!(
        (s["sent"].as_u64(), s["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["skipped"], t.len() - 1, "{s}");
    // By checksum as well.
    let s = sync_summary(d, &["--checksum", "--exclude", "*.tmp", "src", &up]);
    assert_eq!(s["bytes"], 0, "{s}");

    // One file changes size, one is added, one removed.
    std::fs::write(d.join("src/top.txt"), b"top, longer").unwrap();
    std::fs::write(d.join("src/a/new.txt"), b"new").unwrap();
    std::fs::remove_file(d.join("src/many/f00.dat")).unwrap();

    // A dry run says so and changes nothing.
    let before = listed(d, &up);
    let r = ok(
        d,
        &[
            "sync",
            "--dry-run",
            "--delete",
            "--exclude",
            "*.tmp",
            "src",
            &up,
        ],
    );
    assert!(
        r.stdout.contains("(dryrun) upload: src/top.txt"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(dryrun) upload: src/a/new.txt"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(dryrun) delete: ") && r.stdout.contains("many/f00.dat"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert_eq!(listed(d, &up), before, "a dry run changed the store");

    // Without --delete the removed file stays; with it, it goes.
    let s = sync_summary(d, &["--exclude", "*.tmp", "src", &up]);
    assert_eq!(
        (s["sent"].as_u64(), s["deleted"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    assert_eq!(s["bytes"], 14, "{s}");
    assert!(listed(d, &up).contains(&"many/f00.dat".to_string()));
    let s = sync_summary(d, &["--delete", "--exclude", "*.tmp", "src", &up]);
    assert_eq!(
        (s["sent"].as_u64(), s["deleted"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert!(!listed(d, &up).contains(&"many/f00.dat".to_string()));

    // --include narrows; an excluded destination file is not deleted.
    let only = format!("{base}only/");
    let s = sync_summary(d, &["--include", "a/*", "src", &only]);
    assert_eq!(s["sent"], 3, "{s}");
    assert_eq!(listed(d, &only), ["a/b/two.txt", "a/new.txt", "a/one.bin"]);
    let s = sync_summary(d, &["--delete", "--include", "a/b/*", "src", &only]);
    assert_eq!(
        (s["sent"].as_u64(), s["deleted"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );

    // Down, then again: nothing (the files carry the objects' times).
    let s = sync_summary(d, &[&up, "down"]);
    assert_eq!(s["sent"], t.len() - 1, "{s}");
    let mut want = read_tree(&d.join("src"));
    want.remove("skip/me.tmp");
    assert_eq!(read_tree(&d.join("down")), want);
    let s = sync_summary(d, &[&up, "down"]);
    assert_eq!(
        (s["sent"].as_u64(), s["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let s = sync_summary(d, &["--checksum", &up, "down"]);
    assert_eq!(s["bytes"], 0, "{s}");
    // ... nor back up from the downloaded copy.
    let s = sync_summary(d, &["down", &up]);
    assert_eq!(s["sent"], 0, "{s}");

    // --delete on a directory removes local files the prefix lacks.
    std::fs::write(d.join("down/stray.txt"), b"stray").unwrap();
    let s = sync_summary(d, &["--delete", &up, "down"]);
    assert_eq!(s["deleted"], 1, "{s}");
    assert!(!d.join("down/stray.txt").exists());

    // A per-file failure: a directory where one file goes. It is named, the
    // others arrive, the exit code says so, and nothing is deleted.
    std::fs::write(d.join("down/stray.txt"), b"stray").unwrap();
    std::fs::remove_file(d.join("down/top.txt")).unwrap();
    std::fs::create_dir_all(d.join("down/top.txt/in-the-way")).unwrap();
    std::fs::remove_file(d.join("down/a/new.txt")).unwrap();
    let r = xfer(d, &["sync", "--delete", &up, "down"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("top.txt") && r.stderr.contains("is a directory"),
        "{}",
        r.stderr
    );
    assert!(
        d.join("down/a/new.txt").exists(),
        "the other files still arrive"
    );
    assert!(
        d.join("down/stray.txt").exists(),
        "no deletes after a failure"
    );
}

#[test]
fn sync_sends_only_what_differs_on_a_local_store() {
    let (dir, root_url) = sandbox(None);
    sync_story(dir.path(), &root_url);
}

#[test]
fn sync_between_prefixes_of_one_store_copies_only_what_differs() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    write_tree(&d.join("src"), &tree());
    let (a, b) = (format!("{root_url}a/"), format!("{root_url}b/"));
    ok(d, &["sync", "src", &a]);
    let r = ok(d, &["sync", &a, &b]);
    assert!(
        r.stdout.lines().all(|l| l.starts_with("copy: ")),
        "{}",
        r.stdout
    );
    assert_eq!(listed(d, &b), listed(d, &a));
    let s = sync_summary(d, &[&a, &b]);
    assert_eq!(
        (s["sent"].as_u64(), s["bytes"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    let s = sync_summary(d, &["--checksum", &a, &b]);
    assert_eq!(s["sent"], 0, "{s}");
    // Overlapping prefixes are refused.
    let r = xfer(d, &["sync", &a, &format!("{a}inner/")]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("overlap"), "{}", r.stderr);
}

#[test]
fn sync_by_checksum_ignores_times_and_finds_same_size_changes() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    std::fs::create_dir(d.join("src")).unwrap();
    std::fs::write(d.join("src/f.txt"), b"aaaa").unwrap();
    age(&d.join("src/f.txt"), 3600);
    let up = format!("{root_url}c/");
    ok(d, &["sync", "src", &up]);
    // Same bytes, newer time: the default sends, --checksum does not.
    std::fs::write(d.join("src/f.txt"), b"aaaa").unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(d.join("src/f.txt"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    assert_eq!(sync_summary(d, &["--checksum", "src", &up])["sent"], 0);
    assert_eq!(sync_summary(d, &["--dry-run", "src", &up])["sent"], 1);
    // Same size, other bytes, older time: only --checksum sends.
    std::fs::write(d.join("src/f.txt"), b"bbbb").unwrap();
    age(&d.join("src/f.txt"), 7200);
    assert_eq!(sync_summary(d, &["src", &up])["sent"], 0);
    assert_eq!(sync_summary(d, &["--checksum", "src", &up])["sent"], 1);
    ok(d, &["download", &format!("{up}f.txt"), "back.txt"]);
    assert_eq!(std::fs::read(d.join("back.txt")).unwrap(), b"bbbb");
}

#[test]
fn a_failed_upload_is_named_and_the_others_go_on() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    write_tree(&d.join("src"), &tree());
    // The store holds a file `x/a` where the upload needs a directory `x/a/`.
    std::fs::create_dir_all(d.join("root/x")).unwrap();
    std::fs::write(d.join("root/x/a"), b"file").unwrap();
    let r = xfer(d, &["sync", "src", &format!("{root_url}x/")]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("src/a/one.bin"), "{}", r.stderr);
    assert!(r.stderr.contains("2 of 25 files failed"), "{}", r.stderr);
    assert_eq!(listed(d, &format!("{root_url}x/")).len(), 1 + 23);
}

#[test]
fn sync_refuses_what_it_cannot_do() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    std::fs::create_dir(d.join("src")).unwrap();
    let r = xfer(d, &["sync", "src", "elsewhere"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("rsync"), "{}", r.stderr);
    let r = xfer(d, &["sync", "missing", &root_url]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("missing"), "{}", r.stderr);
    let r = xfer(d, &["sync", "--exclude", "a[", "src", &root_url]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("a["), "{}", r.stderr);
}

#[test]
fn rm_r_deletes_a_prefix_in_parallel_lists_it_dry_and_wants_force_above_1000() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    write_tree(&d.join("root/photos"), &tree());
    std::fs::write(d.join("root/photos2"), b"sibling").unwrap();
    let photos = format!("{root_url}photos");

    let r = ok(d, &["rm", "-r", "--dry-run", &photos]);
    assert_eq!(r.stdout.lines().count(), tree().len(), "{}", r.stdout);
    assert!(
        r.stdout.lines().all(|l| l.starts_with("(dryrun) delete: ")),
        "{}",
        r.stdout
    );
    assert_eq!(
        read_tree(&d.join("root/photos")),
        tree(),
        "a dry run deleted"
    );

    let r = ok(d, &["--json", "rm", "-r", &photos]);
    assert_eq!(r.stdout.lines().count(), tree().len(), "{}", r.stdout);
    assert!(listed(d, &format!("{photos}/")).is_empty());
    assert_eq!(std::fs::read(d.join("root/photos2")).unwrap(), b"sibling");

    let many: BTreeMap<String, Vec<u8>> = (0..1001).map(|i| (format!("n{i:04}"), vec![])).collect();
    write_tree(&d.join("root/many"), &many);
    let r = xfer(d, &["rm", "-r", &format!("{root_url}many/")]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("1001 objects") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(read_tree(&d.join("root/many")).len(), 1001);
    ok(d, &["rm", "-r", "--force", &format!("{root_url}many/")]);
    assert!(read_tree(&d.join("root/many")).is_empty());
}

#[test]
fn mv_copies_checks_and_deletes_the_source_each_way() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    std::fs::write(d.join("f.txt"), b"move me").unwrap();
    let a = format!("{root_url}m/f.txt");
    let r = ok(d, &["mv", "f.txt", &format!("{root_url}m/")]);
    assert_eq!(r.stdout.trim(), a);
    assert!(!d.join("f.txt").exists());
    let b = format!("{root_url}m/g.txt");
    ok(d, &["mv", &a, &b]);
    assert_eq!(listed(d, &format!("{root_url}m/")), ["g.txt"]);
    ok(d, &["mv", &b, "back.txt"]);
    assert_eq!(std::fs::read(d.join("back.txt")).unwrap(), b"move me");
    assert!(listed(d, &format!("{root_url}m/")).is_empty());
    // A missing source, and two local paths, are refused with nothing touched.
    let r = xfer(d, &["mv", &a, "x.txt"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let r = xfer(d, &["mv", "back.txt", "x.txt"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(d.join("back.txt").exists());
}

#[test]
fn cp_r_dry_run_copies_nothing() {
    let (dir, root_url) = sandbox(None);
    let d = dir.path();
    write_tree(&d.join("src"), &tree());
    let r = ok(
        d,
        &["cp", "-r", "--dry-run", "src", &format!("{root_url}p")],
    );
    assert_eq!(r.stdout.lines().count(), tree().len(), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .all(|l| l.starts_with("(dryrun) upload: src/")),
        "{}",
        r.stdout
    );
    assert!(read_tree(&d.join("root")).is_empty());
    ok(d, &["cp", "-r", "src", &format!("{root_url}p")]);
    let r = ok(
        d,
        &["cp", "-r", "--dry-run", &format!("{root_url}p"), "out"],
    );
    assert_eq!(r.stdout.lines().count(), tree().len(), "{}", r.stdout);
    assert!(!d.join("out").exists(), "a dry run made the directory");
}

/// `xfer --quiet ARGS` in `d` with `input` on stdin: exit code and stdout bytes.
fn with_stdin(d: &Path, args: &[&str], input: &[u8]) -> (Option<i32>, Vec<u8>, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = xfer_in(d)
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), out.stdout, stderr)
}

/// `-` as stdin for `cp - URL` and as stdout for `download URL -` and `cp URL -`,
/// on the store whose URL prefix is `base`.
fn stdio_story(d: &Path, base: &str) {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let url = format!("{base}stdio/from stdin.bin");
    let (code, out, err) = with_stdin(d, &["cp", "-", &url], &data);
    assert_eq!(code, Some(0), "{err}");
    assert!(String::from_utf8_lossy(&out).contains("from%20stdin.bin"));
    let shown = String::from_utf8_lossy(&out).trim().to_string();
    for args in [["download", &shown, "-"], ["cp", &shown, "-"]] {
        let (code, out, err) = with_stdin(d, &args, b"");
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out == data, "{args:?}: other bytes on stdout");
    }
    assert!(!d.join("-").exists(), "`-` is not a file name here");
    // stdin has no name: a prefix destination is refused, nothing stored.
    let (code, _, err) = with_stdin(d, &["cp", "-", &format!("{base}stdio/")], b"x");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("reading stdin needs an object URL"), "{err}");
    assert_eq!(listed(d, &format!("{base}stdio/")), ["from%20stdin.bin"]);
    // A missing object: the URL is named, nothing written.
    let (code, out, err) = with_stdin(d, &["cp", &format!("{base}stdio/none"), "-"], b"");
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty() && err.contains("stdio/none"), "{err}");
    // Many files and `-` do not mix.
    let r = xfer(d, &["cp", "-r", &format!("{base}stdio/"), "-"]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

#[test]
fn dash_is_stdin_and_stdout_for_cp_and_download() {
    let (dir, root_url) = sandbox(None);
    stdio_story(dir.path(), &root_url);
}

/// Globs in `cp` sources on the store whose URL prefix is `base`: a local
/// glob up, an object glob down and across, `*` within a segment, `**` across.
fn glob_story(d: &Path, base: &str) {
    let t = tree();
    write_tree(&d.join("src"), &t);
    let up = format!("{base}g/");

    // `*` stays in its directory.
    let r = ok(d, &["cp", "src/*.txt", &up]);
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
    assert_eq!(listed(d, &up), ["empty.txt", "top.txt"]);
    // `**` crosses directories; paths below the literal directory are kept.
    let r = ok(d, &["--json", "cp", "src/**/*.txt", &up]);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert_eq!(listed(d, &up), ["a/b/two.txt", "empty.txt", "top.txt"]);
    ok(d, &["cp", "src/many/f1?.dat", &format!("{up}many/")]);
    assert_eq!(listed(d, &format!("{up}many/")).len(), 10);

    // Down: the literal prefix is listed, then filtered.
    ok(d, &["cp", &format!("{up}*/*/*.txt"), "down"]);
    assert_eq!(
        read_tree(&d.join("down")).into_keys().collect::<Vec<_>>(),
        ["a/b/two.txt"]
    );
    // Only `*` and `?` are wildcards: `[1]` is literal, as in s5cmd.
    let r = xfer(d, &["cp", &format!("{up}many/f[1]0.dat"), "brackets"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    let r = ok(d, &["cp", &format!("{up}t*"), "down"]);
    assert_eq!(r.stdout.trim(), "down/top.txt");
    assert_eq!(std::fs::read(d.join("down/top.txt")).unwrap(), b"top");
    // An existing file is kept without --force.
    let r = xfer(d, &["cp", &format!("{up}t*"), "down"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // Across prefixes, dry first.
    let other = format!("{base}g2/");
    let r = ok(d, &["cp", "--dry-run", &format!("{up}**"), &other]);
    assert_eq!(r.stdout.lines().count(), 13, "{}", r.stdout);
    assert!(
        r.stdout.lines().all(|l| l.starts_with("(dryrun) copy: ")),
        "{}",
        r.stdout
    );
    assert!(listed(d, &other).is_empty(), "a dry run copied");
    ok(d, &["cp", &format!("{up}**"), &other]);
    assert_eq!(listed(d, &other), listed(d, &up));

    // Nothing matching is a failure naming the glob.
    let r = xfer(d, &["cp", &format!("{up}*.png"), "down"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("nothing matches") && r.stderr.contains("*.png"),
        "{}",
        r.stderr
    );
    let r = xfer(d, &["cp", "src/nowhere/*.txt", &up]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("src/nowhere/"), "{}", r.stderr);
}

#[test]
fn cp_globs_select_files_and_objects() {
    let (dir, root_url) = sandbox(None);
    glob_story(dir.path(), &root_url);
}

#[test]
fn completions_and_the_man_page_need_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path(); // no xferkit.toml: a config that fails to load
    for (shell, needle) in [
        ("bash", "_xfer()"),
        ("zsh", "#compdef xfer"),
        ("fish", "complete -c xfer"),
    ] {
        let r = ok(d, &["completions", shell]);
        assert!(
            r.stdout.contains(needle),
            "{shell}: {}",
            &r.stdout[..200.min(r.stdout.len())]
        );
        assert!(r.stdout.contains("sync"), "{shell}");
    }
    let r = ok(d, &["man"]);
    assert!(r.stdout.contains(".TH xfer 1"), "{}", r.stdout);
    assert!(r.stdout.contains("sync"), "{}", r.stdout);
    let r = xfer(d, &["completions", "cmd.exe"]);
    assert_eq!(r.code, Some(2), "{r:?}");
}

// --- on the emulators ------------------------------------------------------

fn run_id() -> String {
    common::unique("sync")
}

/// The sync story on `remote`, then store to store across backends (remote
/// to the local store and back), `mv` within the remote store (server-side)
/// and `rm -r` of everything it made.
fn on_emulator(remote_toml: &str, scheme: &str, prefix: &str) {
    let (dir, root_url) = sandbox(Some(remote_toml));
    let d = dir.path();
    let base = remote_base(d, scheme, prefix);
    sync_story(d, &base);

    let up = format!("{base}up/");
    let local = format!("{root_url}mirror/");
    let s = sync_summary(d, &[&up, &local]);
    assert!(s["sent"].as_u64().unwrap() > 20, "{s}");
    assert_eq!(listed(d, &local), listed(d, &up));
    assert_eq!(sync_summary(d, &[&up, &local])["bytes"], 0);
    let back = format!("{base}back/");
    sync_summary(d, &[&local, &back]);
    assert_eq!(listed(d, &back), listed(d, &up));
    assert_eq!(sync_summary(d, &[&local, &back])["sent"], 0);
    assert_eq!(sync_summary(d, &["--checksum", &up, &back])["sent"], 0);
    let s = sync_summary(d, &["--delete", &up, &format!("{base}copy/")]);
    assert_eq!(s["failed"], 0, "{s}");

    ok(
        d,
        &["mv", &format!("{up}top.txt"), &format!("{base}moved.txt")],
    );
    assert!(!listed(d, &up).contains(&"top.txt".to_string()));
    ok(
        d,
        &[
            "mv",
            &format!("{base}moved.txt"),
            &format!("{root_url}moved.txt"),
        ],
    );
    ok(
        d,
        &["download", &format!("{root_url}moved.txt"), "moved.txt"],
    );
    assert_eq!(std::fs::read(d.join("moved.txt")).unwrap(), b"top, longer");

    ok(d, &["rm", "-r", &base]);
    assert!(listed(d, &base).is_empty(), "rm -r left objects");
}

/// The URL prefix of `remote`'s keys under `prefix`: from the URL an upload gets.
fn remote_base(d: &Path, scheme: &str, prefix: &str) -> String {
    std::fs::write(d.join("probe"), b"p").unwrap();
    let url = ok(
        d,
        &["upload", "probe", "--store", "remote", "--key", "probe"],
    )
    .stdout
    .trim()
    .to_string();
    assert!(url.starts_with(&format!("{scheme}://")), "{url}");
    ok(d, &["rm", &url]);
    let base = url.strip_suffix("probe").unwrap().to_string();
    assert!(base.contains(prefix), "{base}");
    base
}

/// `rm -r` of 1001 objects under `base`: two `delete_many` jobs (1000 and
/// 1 keys), each object reported, none left.
fn batch_rm_story(d: &Path, base: &str) {
    let many: BTreeMap<String, Vec<u8>> = (0..1001)
        .map(|i| (format!("n{i:04}"), vec![b'x']))
        .collect();
    write_tree(&d.join("many"), &many);
    let prefix = format!("{base}many/");
    ok(d, &["sync", "many", &prefix]);
    assert_eq!(listed(d, &prefix).len(), 1001);
    let r = ok(d, &["--json", "rm", "-r", "--force", &prefix]);
    assert_eq!(r.stdout.lines().count(), 1001, "{}", r.stdout);
    assert!(r.stdout.contains("many/n1000"), "{}", r.stdout);
    assert!(listed(d, &prefix).is_empty(), "rm -r left objects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_s3() {
    let prefix = run_id();
    if let Some(toml) = common::s3_store_toml("xferkit-sync", &prefix).await {
        tokio::task::spawn_blocking(move || on_emulator(&toml, "s3", &prefix))
            .await
            .unwrap();
    }
}

/// `-` and globs on S3: stdin as a stream of unknown size, objects to stdout,
/// a glob up, down and across; `rm -r` of 1001 objects in two DeleteObjects
/// batches, each object reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_globs_and_batch_rm_on_s3() {
    let prefix = run_id();
    if let Some(toml) = common::s3_store_toml("xferkit-sync", &prefix).await {
        tokio::task::spawn_blocking(move || {
            let (dir, _) = sandbox(Some(&toml));
            let d = dir.path();
            let base = remote_base(d, "s3", &prefix);
            stdio_story(d, &base);
            glob_story(d, &base);
            batch_rm_story(d, &base);
            ok(d, &["rm", "-r", &base]);
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_azure() {
    let prefix = run_id();
    if let Some(toml) = common::azure_store_toml("xferkit-sync", &prefix).await {
        tokio::task::spawn_blocking(move || on_emulator(&toml, "az", &prefix))
            .await
            .unwrap();
    }
}

/// `rm -r` of 1001 blobs on Azure: the first `delete_many` job goes as four
/// Blob Batch requests (256, 256, 256, 232), the second as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rm_on_azure() {
    let prefix = run_id();
    if let Some(toml) = common::azure_store_toml("xferkit-sync", &prefix).await {
        tokio::task::spawn_blocking(move || {
            let (dir, _) = sandbox(Some(&toml));
            let d = dir.path();
            let base = remote_base(d, "az", &prefix);
            batch_rm_story(d, &base);
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_gcs() {
    let prefix = run_id();
    let creds = tempfile::tempdir().unwrap();
    if let Some(toml) = common::gcs_store_toml("xferkit-sync", &prefix, creds.path()).await {
        tokio::task::spawn_blocking(move || on_emulator(&toml, "gs", &prefix))
            .await
            .unwrap();
    }
}

/// S3 to Azure and back, no local store in between: through temp files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_across_backends_s3_to_azure() {
    let prefix = run_id();
    let Some(s3) = common::s3_store_toml("xferkit-sync", &prefix).await else {
        return;
    };
    let Some(az) = common::azure_store_toml("xferkit-sync", &prefix).await else {
        return;
    };
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("xferkit.toml"),
            format!("default_store = \"s3\"\n[stores.s3]\n{s3}[stores.az]\n{az}"),
        )
        .unwrap();
        write_tree(&d.join("src"), &tree());
        let s3_url = ok(d, &["upload", "--store", "s3", "--key", "x", "src/top.txt"]).stdout;
        let s3_base = s3_url.trim().strip_suffix('x').unwrap().to_string() + "t/";
        let az_url = ok(d, &["upload", "--store", "az", "--key", "x", "src/top.txt"]).stdout;
        let az_base = az_url.trim().strip_suffix('x').unwrap().to_string() + "t/";
        ok(d, &["sync", "src", &s3_base]);
        let s = sync_summary(d, &[&s3_base, &az_base]);
        assert_eq!(s["sent"], tree().len(), "{s}");
        assert_eq!(listed(d, &az_base), listed(d, &s3_base));
        let s = sync_summary(d, &[&s3_base, &az_base]);
        assert_eq!(
            (s["sent"].as_u64(), s["bytes"].as_u64()),
            (Some(0), Some(0)),
            "{s}"
        );
        ok(d, &["sync", &az_base, "back"]);
        assert_eq!(read_tree(&d.join("back")), tree());
        for (base, probe) in [(&s3_base, &s3_url), (&az_base, &az_url)] {
            ok(d, &["rm", "-r", base]);
            ok(d, &["rm", probe.trim()]);
        }
    })
    .await
    .unwrap();
}
