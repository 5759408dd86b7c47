//! `xfer upload` resumes after `kill -9`: the first run is killed once three
//! 5 MiB parts are stored (the later parts stall in a fault proxy, so it
//! cannot finish); the same command run again sends only the other five
//! parts, says so (at info level), and the object is byte-identical.
//!
//! Needs s3s-fs (`XFERKIT_S3S_*`); skips without it (fails under `CI=true`
//! or `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};
use xferkit::Key;

use common::{Spawn, xfer_in};

use xferkit::journal::JournalFile;
use xferkit::{FileTransferExt, FileTransferHandler, Secret, TransferCtx};
use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_s3::{S3Config, S3Store};

const MIB: u64 = 1024 * 1024;
const PART: u64 = 5 * MIB;
const BUCKET: &str = "xferkit-conformance";

fn s3s() -> Option<(String, String, String)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("XFERKIT_S3S_ENDPOINT"),
        var("XFERKIT_S3S_ACCESS_KEY"),
        var("XFERKIT_S3S_SECRET_KEY"),
    ) {
        (Some(e), Some(a), Some(s)) => Some((e, a, s)),
        _ => {
            let required = ["CI", "XFERKIT_REQUIRE_EMULATORS"]
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"));
            assert!(
                !required,
                "XFERKIT_S3S_* not set but emulators are required"
            );
            eprintln!("skipped: s3s-fs not configured (cargo xtask emulators start)");
            None
        }
    }
}

fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn xfer_upload_killed_mid_way_resumes_with_only_the_missing_parts() {
    let Some((endpoint, access, secret)) = s3s() else {
        return;
    };
    let proxy = FaultProxy::start(&endpoint).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prefix = format!(
        "xk-cli-resume-{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let state = d.join("state");
    std::fs::write(
        d.join("xferkit.toml"),
        format!(
            r#"default_store = "remote"
state_dir = "{state}"
[stores.remote]
backend = "s3"
bucket = "{BUCKET}"
endpoint = "{proxy}"
force_path_style = true
access_key_id = "{access}"
secret_access_key = "{secret}"
prefix = "{prefix}"
part_size = {PART}
multipart_threshold = {PART}
concurrency = 2
"#,
            state = state.display(),
            proxy = proxy.url(),
        ),
    )
    .unwrap();
    let size = 8 * PART;
    let body = data(size, 9);
    let src = d.join("src.bin");
    std::fs::write(&src, &body).unwrap();
    let direct = {
        let mut c = S3Config::new(BUCKET);
        c.endpoint = Some(endpoint.clone());
        c.force_path_style = true;
        c.access_key_id = Some(access.clone());
        c.secret_access_key = Some(Secret::new(secret.clone()));
        c.prefix = prefix.clone();
        let s = S3Store::new("direct", c).await.unwrap();
        s.ensure_bucket().await.unwrap();
        s
    };
    let url = format!("s3://{BUCKET}/{prefix}/big.bin");
    let journal = JournalFile::for_upload(&state, &url, &src);

    // First run: three parts get through, the rest stall; kill -9 it then.
    proxy.set_rules(vec![
        Rule::new(Fault::Stall(Duration::from_secs(3600)))
            .method("PUT")
            .path_contains("partNumber=")
            .after(3),
    ]);
    let mut child = xfer_in(d)
        .args(["--quiet", "upload", "src.bin", "--key", "big.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_or_panic();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if journal.load().await.is_some_and(|j| j.parts.len() >= 3) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "xfer ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "journal never reached 3 parts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    proxy.clear();

    // Second run: the same command, default logging: xfer says it resumes.
    let before = proxy.stats().bytes_up;
    let out = xfer_in(d)
        .args(["upload", "src.bin", "--key", "big.bin"])
        .env_remove("XFERKIT_LOG")
        .output_or_panic();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "second run failed: {stderr}");
    assert!(
        stderr.contains("resuming an interrupted upload"),
        "says so: {stderr}"
    );
    let sent = proxy.stats().bytes_up - before;
    assert!(
        (5 * PART..5 * PART + MIB).contains(&sent),
        "sent {sent} bytes; 5 parts of {PART} expected"
    );
    assert!(journal.load().await.is_none(), "journal removed");

    let dest = d.join("back.bin");
    direct
        .download_to_path(
            &Key::new("big.bin").unwrap(),
            &dest,
            None,
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == body, "object differs");
    direct.delete(&Key::new("big.bin").unwrap()).await.unwrap();
}
