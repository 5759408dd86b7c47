//! Crashes with the failure's real shape, on every target: a child
//! `xfer upload` of 200 MiB is SIGKILLed at ten moments per target — random
//! ones (from a printed seed; `XFERKIT_TEST_SEED=N` repeats them), right
//! after its journal records a part, and once every part is stored (while it
//! completes) — and after each kill the same command runs again. It must
//! complete, the object must be byte-identical, and no journal, temp file or
//! pending upload may be left. Then a SIGINT mid-upload must leave no object
//! and nothing pending, and a ranged `xfer download` SIGKILLed mid-way and run
//! again must give the same bytes and leave only the file; so must one of
//! the same file uploaded with `--encrypt`, through its link.
//!
//! Targets: local, S3 on s3s-fs and on moto, GCS on fake-gcs-server, Azure on
//! Azurite. Each prints (and `cargo xtask test` repeats) a line such as
//! `crash: s3@moto 10 kills, 10 resumed byte-identical, 0 pending`. Without
//! the emulator variables a target is skipped with a note, except under
//! `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`, where it fails.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

// The CLI crate's test helpers (Sandbox, xfer_in, Rng...), shared, not copied.
#[path = "../../crates/xferkit-cli/tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xferkit::Key;

use common::{MIB, Rng, Spawn, big_file, same_content, store_config, xfer_in};
use xferkit::journal::JournalFile;
use xferkit::{DynHandler, ErrorKind, FileTransferExt, TransferCtx, Xferkit};
use xferkit_conformance::emulator_env as env;

const SIZE: u64 = 200 * MIB;
const PART: u64 = 8 * MIB;
const KILLS: usize = 10;
const KEY: &str = "crash.bin";
/// The same file as an encrypted attachment.
const SEALED_KEY: &str = "crash.sealed";
/// Longest a run to completion may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// One crash run at a time: each moves gigabytes, and the kill moments are
/// relative to a calibration run that must not compete with another target.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A store under test: its TOML table and what can be checked on it.
struct Target {
    label: &'static str,
    store_toml: String,
    /// The emulator lists pending multipart uploads (s3s-fs answers 501).
    lists_pending: bool,
    /// Journaled bytes at which the last request is on the wire: the whole
    /// size where a complete follows the parts (S3, Azure), the size less
    /// the last chunk where the last chunk completes (GCS); `None` for a
    /// store without a journal (local), whose moments are all random.
    last_request_at: Option<u64>,
    /// Extra `xfer` arguments for every run.
    args: &'static [&'static str],
}

/// The test's directory: config, source file, state dir, download dir.
struct Bed {
    dir: tempfile::TempDir,
    lists_pending: bool,
    last_request_at: Option<u64>,
    args: &'static [&'static str],
    kit: Xferkit,
    store: DynHandler,
    url: String,
}

impl Bed {
    async fn new(t: &Target) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("xferkit.toml"),
            format!(
                "default_store = \"remote\"\nstate_dir = {:?}\n[stores.remote]\n{}",
                d.join("state").display().to_string(),
                t.store_toml
            ),
        )
        .unwrap();
        big_file(&d.join("src.bin"), SIZE);
        std::fs::create_dir_all(d.join("down")).unwrap();
        let fig = xferkit::figment_for(Some(&d.join("xferkit.toml"))).unwrap();
        let kit = Xferkit::from_figment(&fig).await.unwrap();
        let store = kit.registry().get("remote").unwrap();
        let url = store.url_for(&Key::new(KEY).unwrap());
        Bed {
            dir,
            lists_pending: t.lists_pending,
            last_request_at: t.last_request_at,
            args: t.args,
            kit,
            store,
            url,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn upload(&self) -> Command {
        let mut c = xfer_in(self.dir.path());
        c.args(self.args)
            .args(["--quiet", "upload", "src.bin", "--key", KEY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Upload the source again, encrypted, to [`SEALED_KEY`]: its link.
    fn upload_encrypted(&self) -> String {
        let out = xfer_in(self.dir.path())
            .args(self.args)
            .args([
                "--quiet",
                "upload",
                "src.bin",
                "--key",
                SEALED_KEY,
                "--encrypt",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "encrypted upload: {out:?}");
        let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(link.contains("#aes128gcm."), "not an encrypted link");
        link
    }

    fn download(&self, link: &str) -> Command {
        let mut c = xfer_in(self.dir.path());
        c.args(self.args)
            .args(["--quiet", "download", link, "down/back.bin", "--force"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn journal(&self) -> JournalFile {
        JournalFile::for_upload(&self.path("state"), &self.url, &self.path("src.bin"))
    }

    /// Bytes the upload journal says the store holds (0 without one).
    async fn journaled(&self) -> u64 {
        match self.journal().load().await {
            Some(j) => j.parts.iter().map(|p| p.len).sum(),
            None => 0,
        }
    }

    /// The object equals the source, no journal or temp file is left, and
    /// no multipart upload is pending. Returns how many were pending.
    async fn check_clean(&self, what: &str) -> usize {
        let back = self.path("verify.bin");
        self.store
            .download_to_path(&Key::new(KEY).unwrap(), &back, None, &TransferCtx::none())
            .await
            .unwrap_or_else(|e| panic!("{what}: cannot download the object: {e}"));
        assert!(
            same_content(&back, &self.path("src.bin")),
            "{what}: the object differs from the source"
        );
        std::fs::remove_file(&back).unwrap();
        let uploads = self.path("state").join("uploads");
        let left: Vec<_> = std::fs::read_dir(&uploads)
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what}: journal files left: {left:?}");
        let local_tmp = self.path("root").join(".xferkit").join("tmp");
        if let Ok(rd) = std::fs::read_dir(&local_tmp) {
            let left: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
            assert!(
                left.is_empty(),
                "{what}: local store temp files left: {left:?}"
            );
        }
        self.pending().await
    }

    async fn pending(&self) -> usize {
        if !self.lists_pending || !self.store.capabilities().list_pending_uploads {
            return 0;
        }
        self.store.list_pending_uploads("").await.unwrap().len()
    }
}

/// Wait for `child` to end within [`RUN_LIMIT`]; its stderr on failure.
fn finish(mut child: Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(
                status.success() || status.code() == Some(130),
                "{what} failed ({status}): {err}"
            );
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status_or_panic();
}

/// How a kill picks its moment.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// A random time within the calibration run's duration.
    Random,
    /// As soon as the journal records one more part.
    AfterPart,
    /// Once the journal holds every part but what the last request sends
    /// (the complete, or the last chunk).
    LastRequest,
}

/// Poll until `moment` (or `limit`); false if the child ended first.
async fn wait_for(bed: &Bed, child: &mut Child, moment: Moment, delay: Duration) -> bool {
    let start = Instant::now();
    let limit = delay.max(Duration::from_millis(100)) * 4;
    let first = bed.journaled().await;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let due = match moment {
            Moment::Random => start.elapsed() >= delay,
            Moment::AfterPart => bed.journaled().await > first,
            Moment::LastRequest => bed.journaled().await >= bed.last_request_at.unwrap_or(SIZE),
        };
        if due || start.elapsed() >= limit {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn crash_target(t: Target) {
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(&t).await;
    let mut rng = Rng::new(&format!("crash {}", t.label));

    // Calibration: one clean run tells how long an upload takes here.
    let started = Instant::now();
    finish(bed.upload().spawn_or_panic(), "the calibration upload");
    let full = started.elapsed();
    assert_eq!(bed.check_clean("calibration").await, 0);
    bed.store.delete(&Key::new(KEY).unwrap()).await.unwrap();

    let (mut killed, mut resumed, mut pending) = (0, 0, 0);
    for i in 0..KILLS {
        let moment = match (i % 4, bed.last_request_at) {
            (_, None) => Moment::Random,
            (1, _) => Moment::AfterPart,
            (3, _) => Moment::LastRequest,
            _ => Moment::Random,
        };
        let delay = full.mul_f64(rng.between(0.02, 0.98));
        let what = format!("{} kill {i} ({moment:?}, {delay:?})", t.label);
        let mut child = bed.upload().spawn_or_panic();
        if wait_for(&bed, &mut child, moment, delay).await {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let _ = child.wait();
        finish(
            bed.upload().spawn_or_panic(),
            &format!("{what}: the re-run"),
        );
        pending += bed.check_clean(&what).await;
        resumed += 1;
        bed.store.delete(&Key::new(KEY).unwrap()).await.unwrap();
    }

    // SIGINT mid-upload: nothing visible, nothing pending, no journal.
    let mut child = bed.upload().spawn_or_panic();
    let delay = full.mul_f64(rng.between(0.2, 0.6));
    if wait_for(&bed, &mut child, Moment::Random, delay).await {
        signal(&child, "-INT");
        let status = finish(child, &format!("{}: the interrupted upload", t.label));
        if status.code() == Some(130) {
            let gone = bed
                .store
                .stat(&Key::new(KEY).unwrap())
                .await
                .map(|_| ())
                .unwrap_err();
            assert_eq!(
                gone.kind(),
                ErrorKind::NotFound,
                "{}: after SIGINT",
                t.label
            );
            assert!(
                bed.journal().load().await.is_none(),
                "{}: journal left after SIGINT",
                t.label
            );
            assert_eq!(bed.pending().await, 0, "{}: pending after SIGINT", t.label);
        }
    }

    // A ranged download killed mid-way, run again: of the object, and of
    // an encrypted attachment of the same file through its link (resumed
    // records are sealed again to check the link's digest).
    finish(bed.upload().spawn_or_panic(), "the download seed upload");
    let sealed = bed.upload_encrypted();
    for (kind, link) in [("plain", bed.url.clone()), ("encrypted", sealed)] {
        let started = Instant::now();
        finish(
            bed.download(&link).spawn_or_panic(),
            &format!("the calibration download ({kind})"),
        );
        let full_down = started.elapsed();
        for i in 0..3 {
            std::fs::remove_file(bed.path("down/back.bin")).unwrap();
            let delay = full_down.mul_f64(rng.between(0.05, 0.95));
            let mut child = bed.download(&link).spawn_or_panic();
            if wait_for(&bed, &mut child, Moment::Random, delay).await {
                child.kill().unwrap();
            }
            let _ = child.wait();
            finish(
                bed.download(&link).spawn_or_panic(),
                &format!("{} {kind} download kill {i}: the re-run", t.label),
            );
            assert!(
                same_content(&bed.path("down/back.bin"), &bed.path("src.bin")),
                "{} {kind} download kill {i}: the file differs",
                t.label
            );
            let left: Vec<_> = std::fs::read_dir(bed.path("down"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                left,
                ["back.bin"],
                "{} {kind} download kill {i}: files left",
                t.label
            );
        }
    }
    bed.store
        .delete(&Key::new(SEALED_KEY).unwrap())
        .await
        .unwrap();
    bed.store.delete(&Key::new(KEY).unwrap()).await.unwrap();
    drop(bed.kit);

    xferkit_conformance::report(
        &format!("crash-{}", t.label.replace('@', "-")),
        &format!(
            "crash: {} {KILLS} kills ({killed} before the end), {resumed} resumed byte-identical, {pending} pending",
            t.label
        ),
    );
    assert_eq!(pending, 0);
}

fn unique() -> String {
    common::unique("crash")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_local() {
    let root = tempfile::tempdir().unwrap();
    crash_target(Target {
        label: "local",
        lists_pending: true,
        last_request_at: None,
        // A local copy of 200 MiB takes ~0.15 s here, mostly less than the
        // process start: capped, the random kills land mid-copy.
        args: &["--bwlimit", "400MiB"],
        store_toml: format!(
            "backend = \"local\"\nroot = {:?}\n",
            root.path().display().to_string()
        ),
    })
    .await;
}

async fn s3(label: &'static str, endpoint: &str, access: &str, secret: &str, lists_pending: bool) {
    let toml = format!(
        "backend = \"s3\"\nbucket = \"xferkit-crash\"\nendpoint = {endpoint:?}\n\
         force_path_style = true\naccess_key_id = {access:?}\nsecret_access_key = {secret:?}\n\
         prefix = {:?}\npart_size = {PART}\nmultipart_threshold = {PART}\n",
        unique()
    );
    let mut cfg = xferkit_s3::S3Config::new("xferkit-crash");
    cfg.endpoint = Some(endpoint.to_string());
    cfg.force_path_style = true;
    cfg.access_key_id = Some(access.to_string());
    cfg.secret_access_key = Some(xferkit::Secret::new(secret.to_string()));
    xferkit_s3::S3Store::new("setup", cfg)
        .await
        .unwrap()
        .ensure_bucket()
        .await
        .unwrap();
    crash_target(Target {
        label,
        store_toml: toml,
        lists_pending,
        last_request_at: Some(SIZE),
        args: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_s3_on_s3s_fs() {
    let Some(v) = env(&xferkit_conformance::S3S_VARS) else {
        return;
    };
    s3("s3@s3s-fs", &v[0], &v[1], &v[2], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_s3_on_moto() {
    let Some(v) = env(&["XFERKIT_MOTO_ENDPOINT"]) else {
        return;
    };
    s3("s3@moto", &v[0], "testing", "testing", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_gcs_on_fake_gcs_server() {
    let Some(endpoint) = xferkit_conformance::gcs::emulator_with_bucket("xferkit-crash").await
    else {
        return;
    };
    crash_target(Target {
        label: "gcs@fake-gcs-server",
        lists_pending: true,
        last_request_at: Some(SIZE - PART),
        args: &[],
        store_toml: format!(
            "backend = \"gcs\"\nbucket = \"xferkit-crash\"\nendpoint = {endpoint:?}\n\
             anonymous = true\nprefix = {:?}\nchunk_size = {PART}\nmultipart_threshold = {PART}\n",
            unique()
        ),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_azure_on_azurite() {
    let Some(mut toml) = xferkit_conformance::azurite_store_toml("xferkit-crash", &unique()) else {
        return;
    };
    toml.push_str(&format!(
        "block_size = {PART}\nmultipart_threshold = {PART}\n"
    ));
    let cfg: xferkit_azure::AzureConfig = store_config(&toml);
    xferkit_azure::AzureStore::new("setup", cfg)
        .await
        .unwrap()
        .create_container_if_missing()
        .await
        .unwrap();
    crash_target(Target {
        label: "azure@azurite",
        lists_pending: true,
        last_request_at: Some(SIZE),
        args: &[],
        store_toml: toml,
    })
    .await;
}
