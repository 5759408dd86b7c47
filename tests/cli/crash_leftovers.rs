//! Nothing left behind after a crash (issue 13, item 5): `xfer` is killed
//! with SIGKILL mid-transfer, then the next run for the same target (and,
//! for a local store, `xfer gc`) removes what it left, while the temp files
//! of live processes stay; and the files xferkit makes get the umask's mode.
//!
//! The rule (crates/xferkit-local/src/tmp.rs, `PartialPaths::new_part` in
//! crates/xferkit-core/src/ext.rs, docs/reliability.md): a temp file is
//! locked (`flock`) by the process writing it, the kernel drops the lock
//! when that process dies, so a temp file whose lock can be taken is stale.
//!
//! The kill points are random: the seed is printed, and
//! `XFERKIT_TEST_SEED=N` repeats a run.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

// The CLI crate's test helpers (Sandbox, xfer_in, Rng...), shared, not copied.
#[path = "../../crates/xferkit-cli/tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{MIB, Rng, Sandbox, Spawn, big_file, pseudo_random, same_content};

/// The local store copies in 64 MiB steps, each paid for under `--bwlimit`
/// before it moves: at 64 MiB/s a 192 MiB upload copies a step, waits about
/// a second, copies the next, and so on, so there is time to kill it with
/// bytes in its temp file.
const STEP: u64 = 64 * MIB;
const BIG: u64 = 3 * STEP;
const SLOW: &str = "64MiB";

/// A child that is SIGKILLed when dropped (a failed test leaves no xfer).
struct Killed(Option<Child>);

impl Killed {
    fn new(child: Child) -> Killed {
        Killed(Some(child))
    }

    /// `kill -9`, and wait for it to be gone.
    fn kill9(mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "{status:?}"
        );
    }

    /// Let it run to its end.
    fn finish(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 2 ms until it returns `Some`, for at most `limit`.
#[track_caller]
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The files in `dir`, sorted, with their sizes.
fn files_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<_> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(|e| {
                let e = e.ok()?;
                let len = e.metadata().ok()?.len();
                Some((e.path(), len))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn names(files: &[(PathBuf, u64)]) -> Vec<String> {
    files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn tmp_dir(sb: &Sandbox) -> PathBuf {
    sb.root().join(".xferkit").join("tmp")
}

/// A file that this test process creates and keeps locked, as a live
/// `xfer` keeps its temp file: no sweep may take it while `File` lives.
fn held(path: &Path) -> File {
    std::fs::write(path, b"being written").unwrap();
    let f = File::open(path).unwrap();
    f.lock().unwrap();
    f
}

/// `xfer upload` of `src` to the store `local` under `key`, capped at
/// [`SLOW`] so that it is still copying when a test acts on it.
fn slow_upload(sb: &Sandbox, src: &Path, key: &str) -> Command {
    let mut c = sb.command(&[
        "--quiet",
        "--bwlimit",
        SLOW,
        "upload",
        src.to_str().unwrap(),
        "--key",
        key,
    ]);
    c.stdout(Stdio::null());
    c
}

/// Start a slow `xfer upload` of `src` to the store `local` under `key` and
/// SIGKILL it once its temp file holds `at` bytes or more (but before it is
/// complete); returns the temp file it left.
fn kill_upload_at(sb: &Sandbox, src: &Path, key: &str, at: u64) -> PathBuf {
    let before = files_in(&tmp_dir(sb));
    let child = Killed::new(
        slow_upload(sb, src, key)
            .stderr(Stdio::null())
            .spawn_or_panic(),
    );
    let (tmp, len) = wait_for("the upload's temp file", Duration::from_secs(60), || {
        files_in(&tmp_dir(sb))
            .into_iter()
            .find(|(p, len)| *len >= at && !before.iter().any(|(b, _)| b == p))
    });
    child.kill9();
    assert!(len < BIG, "killed after the copy ended ({len} bytes)");
    let left = std::fs::metadata(&tmp).map(|m| m.len());
    assert!(
        left.as_ref().is_ok_and(|&l| l >= at && l < BIG),
        "a partial temp file stays after kill -9: {left:?}"
    );
    tmp
}

/// A local store whose upload of a big file was killed -9 mid-copy, after 1
/// or 2 of its 3 steps (random): the sandbox, the source and the stale
/// temp file left behind.
fn killed_upload(test: &str) -> (Sandbox, PathBuf, PathBuf) {
    let mut rng = Rng::new(test);
    let sb = Sandbox::local();
    let src = sb.work().join("big.bin");
    big_file(&src, BIG);
    let at = rng.range(1, 3) * STEP;
    eprintln!("kill after {at} bytes");
    let stale = kill_upload_at(&sb, &src, "big.bin", at);
    (sb, src, stale)
}

#[test]
fn a_killed_uploads_temp_file_goes_at_the_next_upload_and_a_live_ones_stays() {
    let (sb, src, stale) = killed_upload("upload");
    assert!(!sb.root().join("big.bin").exists());

    // A temp file a live process is writing (this one holds its lock).
    let live_path = tmp_dir(&sb).join("up.live01");
    let live = held(&live_path);

    // The next upload to the store removes the stale file, spares the live
    // one, and succeeds.
    sb.ok(&[
        "upload",
        src.to_str().unwrap(),
        "--key",
        "big.bin",
        "--if-not-exists",
    ]);
    assert!(!stale.exists(), "the killed upload's temp file is gone");
    assert_eq!(names(&files_in(&tmp_dir(&sb))), ["up.live01"]);
    assert!(same_content(&src, &sb.root().join("big.bin")));
    drop(live);
}

#[test]
fn gc_removes_a_killed_uploads_temp_file_whatever_its_age_and_spares_live_ones() {
    let (sb, _, stale) = killed_upload("gc");
    let stale_name = stale.file_name().unwrap().to_str().unwrap().to_string();
    let live_path = tmp_dir(&sb).join("up.live02");
    let live = held(&live_path);

    // --dry-run lists the stale file only, and removes nothing.
    let r = sb.ok(&["--json", "gc", "--store", "local", "--dry-run"]);
    let rows: Vec<serde_json::Value> = r
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{r:?}");
    assert_eq!(rows[0]["action"], "would-abort", "{r:?}");
    assert_eq!(rows[0]["upload_id"], stale_name.as_str(), "{r:?}");
    assert_eq!(
        rows[0]["key"],
        format!(".xferkit/tmp/{stale_name}"),
        "{r:?}"
    );
    assert!(
        rows[0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("file://") && u.ends_with(&stale_name)),
        "{r:?}"
    );
    assert!(stale.exists() && live_path.exists());

    // The default --older-than (24h) does not hold back a file whose
    // writer is known dead; the live one stays.
    let r = sb.ok(&["--json", "gc", "--store", "local"]);
    let v = r.json();
    assert_eq!(v["action"], "aborted", "{r:?}");
    assert_eq!(v["upload_id"], stale_name.as_str(), "{r:?}");
    assert!(!stale.exists());
    assert_eq!(names(&files_in(&tmp_dir(&sb))), ["up.live02"]);

    // A URL prefix below the root selects no temp file (they have no key).
    std::fs::write(tmp_dir(&sb).join("up.dead03"), b"left over").unwrap();
    let r = sb.ok(&["gc", &format!("{}photos/", sb.root_url())]);
    assert_eq!(r.out(), "", "{r:?}");
    assert!(tmp_dir(&sb).join("up.dead03").exists());

    // Once its writer lets go, gc (every store, text output) takes it too.
    drop(live);
    let r = sb.ok(&["gc"]);
    let lines: Vec<&str> = r.out().lines().collect();
    assert_eq!(lines.len(), 2, "{r:?}");
    assert!(lines.iter().all(|l| l.starts_with("aborted")), "{r:?}");
    assert!(r.out().contains("up.live02") && r.out().contains("up.dead03"));
    assert!(files_in(&tmp_dir(&sb)).is_empty());
    // Nothing left: quiet.
    assert_eq!(sb.ok(&["gc"]).out(), "");
}

#[test]
fn a_running_upload_keeps_its_temp_file_through_gc_and_other_uploads() {
    let sb = Sandbox::local();
    let src = sb.work().join("big.bin");
    big_file(&src, BIG);
    let running = Killed::new(
        slow_upload(&sb, &src, "big.bin")
            .stderr(Stdio::piped())
            .spawn_or_panic(),
    );
    let (tmp, _) = wait_for("the upload's temp file", Duration::from_secs(60), || {
        files_in(&tmp_dir(&sb)).into_iter().find(|(_, l)| *l > 0)
    });
    let r = sb.ok(&["--json", "gc", "--store", "local"]);
    assert_eq!(r.out(), "", "nothing stale: {r:?}");
    sb.ok(&["upload", sb.file("other.bin", b"other").to_str().unwrap()]);
    assert!(tmp.exists(), "a live upload's temp file stays");
    let out = running.finish();
    assert!(out.status.success(), "{out:?}");
    assert!(same_content(&src, &sb.root().join("big.bin")));
    assert!(files_in(&tmp_dir(&sb)).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Downloads
// ---------------------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1 serving `body` at every path: under
/// `/slow/` it sends the first `stall_at` bytes and then nothing until the
/// client goes away; elsewhere it sends everything.
fn serve(body: Vec<u8>, stall_at: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = std::sync::Arc::new(body);
    std::thread::spawn(move || {
        while let Ok((conn, _)) = listener.accept() {
            let body = body.clone();
            std::thread::spawn(move || answer(conn, &body, stall_at));
        }
    });
    port
}

fn answer(mut conn: TcpStream, body: &[u8], stall_at: usize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request = String::new();
    let _ = reader.read_line(&mut request);
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         ETag: \"v1\"\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let send = if request.contains(" /slow/") {
        stall_at
    } else {
        body.len()
    };
    if conn.write_all(header.as_bytes()).is_err() || conn.write_all(&body[..send]).is_err() {
        return;
    }
    // Hold the connection until the client closes it (or is killed).
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

/// The one-stream temp files of `name` in `dir`.
fn parts_of(dir: &Path, name: &str) -> Vec<(PathBuf, u64)> {
    files_in(dir)
        .into_iter()
        .filter(|(p, _)| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!(".{name}.")) && f.ends_with(".xferkit-part")
        })
        .collect()
}

/// Below the ranged-download threshold (32 MiB): one stream, one temp file.
const CLIP: usize = 4 << 20;

#[test]
fn a_killed_downloads_part_file_goes_at_the_next_download_to_that_destination() {
    let mut rng = Rng::new("download");
    let sb = Sandbox::local();
    let body = pseudo_random(CLIP, 11);
    let stall_at = rng.range(1, CLIP as u64) as usize;
    eprintln!("the slow link stalls after {stall_at} bytes");
    let port = serve(body.clone(), stall_at);
    let dir = sb.work().join("dl");
    std::fs::create_dir(&dir).unwrap();
    let dest = dir.join("clip.bin");

    // Two attempts, each killed with bytes in its temp file: the second
    // removes the first one's file, so they do not pile up.
    let mut left = Vec::new();
    for attempt in 0..2 {
        let child = Killed::new(
            sb.command(&[
                "--quiet",
                "download",
                "--allow-private-links",
                &format!("http://127.0.0.1:{port}/slow/clip.bin"),
                dest.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_or_panic(),
        );
        let (part, _) = wait_for("the stalled download", Duration::from_secs(30), || {
            parts_of(&dir, "clip.bin")
                .into_iter()
                .find(|(p, len)| *len == stall_at as u64 && !left.contains(p))
        });
        child.kill9();
        let now = parts_of(&dir, "clip.bin");
        assert_eq!(
            now,
            [(part.clone(), stall_at as u64)],
            "attempt {attempt}: exactly the killed download's part file is left"
        );
        left.push(part);
    }
    assert!(!dest.exists());

    // The next download to the same destination succeeds and leaves only
    // the destination in the folder.
    sb.ok(&[
        "download",
        "--allow-private-links",
        &format!("http://127.0.0.1:{port}/fast/clip.bin"),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(names(&files_in(&dir)), ["clip.bin"]);
    assert_eq!(std::fs::read(&dest).unwrap(), body);

    // Only this destination's stale files are its business: a live one
    // (held by this process) and another destination's stay.
    let live = held(&dir.join(".clip.bin.LiVe01.xferkit-part"));
    std::fs::write(dir.join(".clip.bin.DeAd02.xferkit-part"), b"stale").unwrap();
    std::fs::write(dir.join(".clip.bin.gz.DeAd03.xferkit-part"), b"other").unwrap();
    sb.ok(&[
        "download",
        "--allow-private-links",
        "--force",
        &format!("http://127.0.0.1:{port}/fast/clip.bin"),
        dest.to_str().unwrap(),
    ]);
    assert_eq!(
        names(&files_in(&dir)),
        [
            ".clip.bin.LiVe01.xferkit-part",
            ".clip.bin.gz.DeAd03.xferkit-part",
            "clip.bin"
        ]
    );
    drop(live);
}

// ---------------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------------

/// `cmd` run by `sh` under `umask MASK` (the umask is inherited through exec).
fn with_umask(cmd: &Command, mask: u32) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {mask:03o} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .stdin(Stdio::null());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        sh.current_dir(d);
    }
    sh
}

/// The permission bits of `p`, in octal.
fn mode(p: &Path) -> String {
    format!(
        "{:o}",
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    )
}

#[test]
fn downloads_and_local_store_objects_get_the_umasks_mode() {
    let sb = Sandbox::local();
    let body = pseudo_random(100_000, 13);
    let port = serve(body.clone(), 0);
    let src = sb.file("m.bin", &body);
    for (mask, want) in [(0o022, "644"), (0o027, "640"), (0o077, "600")] {
        let key = format!("m{mask:03o}.bin");
        let dest = sb.work().join(format!("dl{mask:03o}.bin"));
        let runs = [
            sb.command(&["upload", src.to_str().unwrap(), "--key", &key]),
            sb.command(&[
                "download",
                "--allow-private-links",
                &format!("http://127.0.0.1:{port}/fast/m.bin"),
                dest.to_str().unwrap(),
            ]),
        ];
        for cmd in &runs {
            let out = with_umask(cmd, mask).output_or_panic();
            assert!(out.status.success(), "{out:?}");
        }
        let object = sb.root().join(&key);
        assert_eq!(
            (mode(&object), mode(&dest)),
            (want.to_string(), want.to_string()),
            "(store object, download) under umask {mask:03o}"
        );
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        // The metadata sidecar stays private.
        let side = xferkit_local::LocalStore::sidecar_path_under(&sb.root(), &key);
        assert_eq!(mode(&side), "600", "sidecar, umask {mask:03o}");
    }
}
