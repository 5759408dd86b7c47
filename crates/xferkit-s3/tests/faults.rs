//! S3's own faults and checksums, through the TCP fault proxy of
//! `xferkit-conformance` (the faults every backend shares, resume after a
//! crash included, are conformance cases: `xferkit_conformance::faults`, run
//! by `tests/conformance/s3.rs` at the workspace root on s3s-fs and moto):
//!
//! - every PutObject and UploadPart body carries a CRC32C, and the complete
//!   of a multipart upload the whole object's (combined from the parts'),
//!   so S3 keeps a full-object CRC32C that every download checks;
//! - with `checksum = "md5"` each body carries a `Content-MD5` instead, with
//!   `"none"` nothing, and the emulators take both;
//! - copies above `copy_threshold` go as ranged `UploadPartCopy` parts;
//! - a HEAD refused for its checksum mode (SSE-KMS without `kms:Decrypt`)
//!   is asked again without it;
//! - through a transfer manager: a stopped upload's slow abort finishes in
//!   the background, a paused upload resumes sending only the missing
//!   parts, an abort that fails is finished by the next run, and a journal
//!   whose upload is gone starts a fresh one.
//!
//! Each test skips when its emulator's variables are not set (and fails
//! instead under `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_conformance::testkit::{
    data, manager_over, quick_retry, unique_prefix, until_transferred, write_file,
};
use xferkit_core::Key;
use xferkit_core::{
    ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, Secret, TransferCtx, UploadSource,
};
use xferkit_s3::{S3Checksum, S3Config, S3Store};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "xferkit-conformance";

struct Emu {
    name: &'static str,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

use xferkit_conformance::emulators_required as required;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn skip(what: &str) -> Option<Emu> {
    assert!(
        !required(),
        "{what} is not configured but emulators are required"
    );
    eprintln!("skipped: {what} not configured (cargo xtask emulators start)");
    None
}

fn s3s() -> Option<Emu> {
    match (
        var("XFERKIT_S3S_ENDPOINT"),
        var("XFERKIT_S3S_ACCESS_KEY"),
        var("XFERKIT_S3S_SECRET_KEY"),
    ) {
        (Some(endpoint), Some(access_key), Some(secret_key)) => Some(Emu {
            name: "s3s-fs",
            endpoint,
            access_key,
            secret_key,
        }),
        _ => skip("s3s-fs"),
    }
}

fn moto() -> Option<Emu> {
    match var("XFERKIT_MOTO_ENDPOINT") {
        Some(endpoint) => Some(Emu {
            name: "moto",
            endpoint,
            access_key: "testing".into(),
            secret_key: "testing".into(),
        }),
        None => skip("moto"),
    }
}

/// A store on `endpoint` (the emulator's, or a proxy's) under a fresh
/// prefix: 5 MiB parts (the S3 minimum), 4 in flight, so several parts are
/// in play at once.
async fn store(emu: &Emu, endpoint: &str, prefix: &str) -> S3Store {
    store_with(emu, endpoint, prefix, S3Checksum::Crc32c).await
}

/// [`store`] sending `checksum`.
async fn store_with(emu: &Emu, endpoint: &str, prefix: &str, checksum: S3Checksum) -> S3Store {
    let mut c = S3Config::new(BUCKET);
    c.checksum = checksum;
    c.endpoint = Some(endpoint.to_string());
    c.force_path_style = true;
    c.access_key_id = Some(emu.access_key.clone());
    c.secret_access_key = Some(Secret::new(emu.secret_key.clone()));
    c.prefix = prefix.to_string();
    c.part_size = 5 * MIB as u64;
    c.multipart_threshold = 5 * MIB as u64;
    c.concurrency = 4;
    let s = S3Store::new("faults", c)
        .await
        .unwrap()
        .with_retry_policy(quick_retry(6));
    s.ensure_bucket().await.unwrap();
    s
}

/// The checksums travel with every upload: a PutObject streamed from a file
/// announces an `x-amz-checksum-crc32c` trailer (computed while the body
/// streams), a small file's PutObject and each UploadPart carry it as a
/// header, and the complete carries the
/// whole object's with `x-amz-checksum-type: FULL_OBJECT`; stat then
/// reports that full-object CRC32C, for downloads to verify.
#[tokio::test]
async fn every_upload_carries_crc32cs_and_stat_reports_the_whole_objects() {
    for emu in [s3s(), moto()].into_iter().flatten() {
        let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
        let pfx = unique_prefix("faults", "crc-sent");
        let via = store(&emu, &proxy.url(), &pfx).await;
        let dir = tempfile::tempdir().unwrap();
        for (key, len) in [
            ("single.bin", MIB),
            ("streamed.bin", 3 * MIB),
            ("multi.bin", 12 * MIB),
        ] {
            let body = data(len, 21);
            let src = write_file(dir.path(), key, &body);
            via.upload(
                &Key::new(key).unwrap(),
                UploadSource::Path(src),
                &PutOptions::default(),
                &TransferCtx::none(),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {key}: {}", emu.name, e.chain()));
            let want = format!("crc32c:{:08x}", crc32c::crc32c(&body));
            let stat = via.stat(&Key::new(key).unwrap()).await.unwrap();
            // s3s-fs 0.14 keeps no checksum for a multipart object.
            let kept = !(emu.name == "s3s-fs" && key == "multi.bin");
            let expected = kept.then_some(want.as_str());
            assert_eq!(stat.checksum.as_deref(), expected, "{}: {key}", emu.name);
        }
        let seen = proxy.requests();
        let puts: Vec<_> = seen
            .iter()
            .filter(|r| r.method == "PUT" && r.target.contains(".bin"))
            .collect();
        // Two PutObjects and three 5 MiB parts (5 + 5 + 2).
        assert_eq!(puts.len(), 5, "{}: {puts:?}", emu.name);
        for r in &puts {
            // A file streamed from disk announces a trailer; a small file
            // (read into memory) and a part carry the header.
            let announced = if r.target.contains("streamed.bin") {
                r.header("x-amz-trailer")
                    .map(|t| t == "x-amz-checksum-crc32c")
            } else {
                r.header("x-amz-checksum-crc32c").map(|v| v.len() == 8)
            };
            assert_eq!(
                announced,
                Some(true),
                "{}: {} {}",
                emu.name,
                r.method,
                r.target
            );
        }
        let complete = seen
            .iter()
            .find(|r| r.method == "POST" && r.target.contains("uploadId="))
            .expect("a CompleteMultipartUpload");
        assert_eq!(complete.header("x-amz-checksum-type"), Some("FULL_OBJECT"));
        assert!(complete.header("x-amz-checksum-crc32c").is_some());
        for key in ["single.bin", "streamed.bin", "multi.bin"] {
            via.delete(&Key::new(key).unwrap()).await.unwrap();
        }
    }
}

/// `checksum = "md5"` and `"none"` against both emulators: every PutObject
/// and UploadPart carries the `Content-MD5` of its body (`md5`) or no
/// checksum at all (`none`), no request names a CRC32C (no trailer, no
/// `x-amz-checksum-*`, not on the multipart requests either), the store
/// takes them, and each object downloads (verified against whatever
/// checksum the store reports) to the bytes sent.
#[tokio::test]
async fn md5_and_no_checksum_uploads_are_taken_and_download_intact() {
    use base64::Engine as _;
    use md5::Digest as _;
    for emu in [s3s(), moto()].into_iter().flatten() {
        for checksum in [S3Checksum::Md5, S3Checksum::None] {
            let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
            let pfx = unique_prefix("faults", "checksum-choice");
            let via = store_with(&emu, &proxy.url(), &pfx, checksum).await;
            let dir = tempfile::tempdir().unwrap();
            let mut parts_md5 = Vec::new();
            for (key, len) in [
                ("single.bin", MIB),
                ("streamed.bin", 3 * MIB),
                ("multi.bin", 12 * MIB),
            ] {
                let body = data(len, 33);
                let src = write_file(dir.path(), key, &body);
                let what = format!("{} {checksum:?} {key}", emu.name);
                via.upload(
                    &Key::new(key).unwrap(),
                    UploadSource::Path(src),
                    &PutOptions::default(),
                    &TransferCtx::none(),
                )
                .await
                .unwrap_or_else(|e| panic!("{what}: {}", e.chain()));
                let chunks: Vec<&[u8]> = if len > 5 * MIB {
                    body.chunks(5 * MIB).collect()
                } else {
                    vec![&body]
                };
                for c in chunks {
                    parts_md5.push(
                        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(c)),
                    );
                }
                let dest = dir.path().join(format!("{key}.down"));
                via.download_to_path(&Key::new(key).unwrap(), &dest, None, &TransferCtx::none())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {}", e.chain()));
                assert!(std::fs::read(&dest).unwrap() == body, "{what}");
            }
            let seen = proxy.requests();
            let mut sent_md5 = Vec::new();
            for r in seen.iter().filter(|r| r.target.contains(".bin")) {
                let what = format!("{} {checksum:?} {} {}", emu.name, r.method, r.target);
                for (k, _) in &r.headers {
                    assert!(
                        !k.starts_with("x-amz-checksum-") || k == "x-amz-checksum-mode",
                        "{what}: {k}"
                    );
                    assert!(!k.starts_with("x-amz-sdk-checksum"), "{what}: {k}");
                    assert!(k != "x-amz-trailer", "{what}: {k}");
                }
                if r.method == "PUT" {
                    match checksum {
                        S3Checksum::Md5 => sent_md5.push(
                            r.header("content-md5")
                                .unwrap_or_else(|| panic!("{what}: no Content-MD5"))
                                .to_string(),
                        ),
                        _ => assert_eq!(r.header("content-md5"), None, "{what}"),
                    }
                }
            }
            if checksum == S3Checksum::Md5 {
                // Two PutObjects and three parts (5 + 5 + 2 MiB), in any order.
                sent_md5.sort();
                parts_md5.sort();
                assert_eq!(sent_md5, parts_md5, "{}", emu.name);
            }
            for key in ["single.bin", "streamed.bin", "multi.bin"] {
                via.delete(&Key::new(key).unwrap()).await.unwrap();
            }
        }
    }
}

/// A copy above `copy_threshold` is a multipart copy: CreateMultipartUpload,
/// one `UploadPartCopy` per `part_size` range of the source, each pinned to
/// the source's ETag, and the complete with the source's full-object CRC32C;
/// one at or below it is a single CopyObject. Both keep content, content
/// type, metadata and the CRC32C.
#[tokio::test]
async fn copies_above_the_threshold_go_in_ranged_part_copies() {
    for emu in [s3s(), moto()].into_iter().flatten() {
        let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
        let pfx = unique_prefix("faults", "part-copy");
        let mut c = S3Config::new(BUCKET);
        c.endpoint = Some(proxy.url());
        c.force_path_style = true;
        c.access_key_id = Some(emu.access_key.clone());
        c.secret_access_key = Some(Secret::new(emu.secret_key.clone()));
        c.prefix = pfx.clone();
        c.part_size = 5 * MIB as u64;
        c.copy_threshold = 5 * MIB as u64;
        let via = S3Store::new("faults", c).await.unwrap();
        via.ensure_bucket().await.unwrap();
        let body = data(12 * MIB + 7, 44);
        let opts = PutOptions::default()
            .with_content_type("application/x-part-copy")
            .with_metadata("who", "üser");
        for (key, bytes) in [("big", &body[..]), ("small", &body[..5 * MIB])] {
            let src = format!("{key}.src");
            let source = UploadSource::from_bytes(bytes.to_vec());
            via.upload(
                &Key::new(&src).unwrap(),
                source,
                &opts,
                &TransferCtx::none(),
            )
            .await
            .unwrap();
            let before = proxy.requests().len();
            let copied = via
                .copy(
                    &Key::new(&src).unwrap(),
                    &Key::new(format!("{key}.dst")).unwrap(),
                )
                .await;
            let copied = copied.unwrap_or_else(|e| panic!("{} {key}: {}", emu.name, e.chain()));
            assert_eq!(copied.size, bytes.len() as u64);
            let st = via
                .stat(&Key::new(format!("{key}.dst")).unwrap())
                .await
                .unwrap();
            // The source's full-object CRC32C is kept (s3s-fs 0.14 keeps none
            // for a multipart object).
            let src_crc = via.stat(&Key::new(&src).unwrap()).await.unwrap().checksum;
            assert!(src_crc.is_some(), "{} {key}", emu.name);
            let kept = !(emu.name == "s3s-fs" && key == "big");
            let want = if kept { src_crc } else { None };
            assert_eq!(st.checksum, want, "{} {key}", emu.name);
            assert_eq!(st.content_type.as_deref(), Some("application/x-part-copy"));
            assert_eq!(st.metadata.get("who").map(String::as_str), Some("üser"));
            let got = via
                .read_bytes(&Key::new(format!("{key}.dst")).unwrap(), None)
                .await
                .unwrap();
            assert!(got == bytes, "{} {key}: content differs", emu.name);
            let seen = proxy.requests().split_off(before);
            let ranges: Vec<&str> = seen
                .iter()
                .filter_map(|r| r.header("x-amz-copy-source-range"))
                .collect();
            let copies = seen
                .iter()
                .filter(|r| r.header("x-amz-copy-source").is_some())
                .count();
            if key == "big" {
                let mut want = [
                    "bytes=0-5242879",
                    "bytes=5242880-10485759",
                    "bytes=10485760-12582918",
                ];
                want.sort();
                let mut got = ranges.clone();
                got.sort();
                assert_eq!(got, want, "{}", emu.name);
                assert_eq!(copies, 3, "{}", emu.name);
                let pinned = seen
                    .iter()
                    .filter(|r| r.header("x-amz-copy-source-if-match").is_some())
                    .count();
                assert_eq!(pinned, 3, "{}: every part pinned to the ETag", emu.name);
                let complete = seen
                    .iter()
                    .find(|r| r.method == "POST" && r.target.contains("uploadId="))
                    .expect("a CompleteMultipartUpload");
                assert_eq!(complete.header("x-amz-checksum-type"), Some("FULL_OBJECT"));
                let crc = format!("crc32c:{:08x}", crc32c::crc32c(bytes));
                let sent = complete.header("x-amz-checksum-crc32c").map(|v| {
                    let v = xferkit_core::journal::crc32c_from_base64(v).unwrap();
                    xferkit_core::journal::crc32c_label(v)
                });
                assert_eq!(sent, Some(crc), "{}: the source's CRC32C", emu.name);
            } else {
                assert!(ranges.is_empty(), "{}: {ranges:?}", emu.name);
                assert_eq!(copies, 1, "{}: one CopyObject", emu.name);
            }
        }
        for k in ["big.src", "big.dst", "small.src", "small.dst"] {
            via.delete(&Key::new(k).unwrap()).await.unwrap();
        }
    }
}

/// S3 wants `kms:Decrypt` to return the checksum of an SSE-KMS object: a
/// HEAD asking for it (`x-amz-checksum-mode`) answered 403 is asked again
/// without it, so stat works for a caller who may read the object but not
/// decrypt its checksum.
#[tokio::test]
async fn stat_works_when_the_checksum_may_not_be_read() {
    let Some(emu) = s3s() else { return };
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let pfx = unique_prefix("faults", "kms");
    let via = store(&emu, &proxy.url(), &pfx).await;
    let direct = store(&emu, &emu.endpoint, &pfx).await;
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "k.bin", &data(MIB, 5));
    direct
        .upload(
            &Key::new("k.bin").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert!(
        direct
            .stat(&Key::new("k.bin").unwrap())
            .await
            .unwrap()
            .checksum
            .is_some()
    );
    proxy.set_rules(vec![
        Rule::new(Fault::Status(403))
            .method("HEAD")
            .with_header("x-amz-checksum-mode"),
    ]);
    let st = via
        .stat(&Key::new("k.bin").unwrap())
        .await
        .unwrap_or_else(|e| panic!("{}", e.chain()));
    assert_eq!(st.size, MIB as u64);
    assert_eq!(proxy.stats().statuses, 1, "{:?}", proxy.stats());
    let heads: Vec<bool> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "HEAD")
        .map(|r| r.header("x-amz-checksum-mode").is_some())
        .collect();
    assert_eq!(heads, vec![true, false], "asked again without the mode");
    // A HEAD refused without the checksum mode is still refused.
    proxy.set_rules(vec![Rule::new(Fault::Status(403)).method("HEAD")]);
    let e = via
        .stat(&Key::new("k.bin").unwrap())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    direct.delete(&Key::new("k.bin").unwrap()).await.unwrap();
}

/// An upload of `mib` MiB of a file to `key` through a transfer manager over
/// a store behind a fault proxy (journals under `state`, so it can resume),
/// with a second store straight on the emulator to check what is left.
struct Managed {
    proxy: FaultProxy,
    direct: S3Store,
    state: tempfile::TempDir,
    dir: tempfile::TempDir,
    body: Vec<u8>,
    src: std::path::PathBuf,
    url: String,
    m: xferkit_core::TransferManager,
}

impl Managed {
    async fn new(emu: &Emu, tag: &str, key: &str, mib: usize, rules: Vec<Rule>) -> Managed {
        let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
        proxy.set_rules(rules);
        let pfx = unique_prefix("faults", tag);
        let state = tempfile::tempdir().unwrap();
        let via = store(emu, &proxy.url(), &pfx)
            .await
            .with_state_dir(Some(state.path().to_path_buf()));
        let direct = store(emu, &emu.endpoint, &pfx).await;
        let dir = tempfile::tempdir().unwrap();
        let body = data(mib * MIB, mib as u64);
        let src = write_file(dir.path(), "src.bin", &body);
        let url = via.url_for(&Key::new(key).unwrap());
        let m = manager_over(std::sync::Arc::new(via));
        Managed {
            proxy,
            direct,
            state,
            dir,
            body,
            src,
            url,
            m,
        }
    }

    /// Start the upload and wait until `bytes` of it are acknowledged.
    async fn start(&self, bytes: u64) -> xferkit_core::Transfer {
        let t = self
            .m
            .start(xferkit_core::TransferRequest::upload(&self.src, &self.url))
            .unwrap();
        until_transferred(&t, bytes, std::time::Duration::from_secs(60)).await;
        t
    }

    /// The object under `key` equals the file, and no journal file is left.
    async fn assert_stored(&self, key: &str) {
        let back = self.dir.path().join("back.bin");
        self.direct
            .download_to_path(&Key::new(key).unwrap(), &back, None, &TransferCtx::none())
            .await
            .unwrap();
        assert!(
            std::fs::read(&back).unwrap() == self.body,
            "not byte-identical"
        );
        let left: Vec<_> = std::fs::read_dir(self.state.path().join("uploads"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "journal files left: {left:?}");
    }
}

/// A stopped upload's abort that the network slows down (the proxy holds
/// the AbortMultipartUpload DELETE 2.5 s) still completes: the caller sees
/// `Cancelled` at once, the manager keeps the abort running and
/// `settled` waits for it, and moto lists no pending upload afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_upload_finishes_its_slow_abort_in_the_background() {
    use std::time::{Duration, Instant};
    use xferkit_core::TransferStatus;

    let Some(emu) = moto() else { return };
    let stall = Rule::new(Fault::Stall(Duration::from_millis(2500))).method("DELETE");
    let u = Managed::new(&emu, "slow-abort", "stopped.bin", 48, vec![stall]).await;
    let t = u.start(0).await;
    let stopped = Instant::now();
    t.stop();
    let fin = t.wait().await.unwrap_err();
    assert!(
        stopped.elapsed() < Duration::from_millis(500),
        "stop took {:?}",
        stopped.elapsed()
    );
    assert_eq!(fin.kind(), ErrorKind::Cancelled);
    assert_eq!(fin.info().status, TransferStatus::Cancelled);
    assert!(
        u.m.settled(Duration::from_secs(30)).await,
        "the abort did not finish within 30 s"
    );
    assert!(
        stopped.elapsed() >= Duration::from_millis(2500),
        "settled before the stalled abort could have ended ({:?})",
        stopped.elapsed()
    );
    assert_eq!(
        u.proxy.stats().stalls,
        1,
        "the abort DELETE was not stalled"
    );
    let pending = u.direct.list_pending_uploads("").await.unwrap();
    assert!(pending.is_empty(), "multipart uploads left: {pending:?}");
    assert_eq!(
        u.direct
            .stat(&Key::new("stopped.bin").unwrap())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

/// `pause()` keeps the multipart upload and its journal; `resume()` sends
/// only the parts the journal does not vouch for, completes byte-identical
/// and leaves no journal. On s3s-fs: moto 5.2.5 answers ListParts with a
/// `ListPartsResponse` root that the SDK refuses, so no resume can check
/// the stored parts there (it starts over; docs/testing.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_upload_resumes_sending_only_the_missing_parts() {
    use std::time::Duration;
    use xferkit_core::TransferStatus;

    let Some(emu) = s3s() else { return };
    let u = Managed::new(&emu, "pause", "paused.bin", 48, vec![]).await;
    let t = u.start(15 * MIB as u64).await;
    t.pause();
    assert_eq!(t.info().status, TransferStatus::Paused);
    assert!(u.m.settled(Duration::from_secs(30)).await);
    let kept = journaled_parts(u.state.path());
    assert!(kept >= 1, "the pause kept no part in its journal");
    let parts_before = count_part_puts(&u.proxy);

    t.resume();
    let fin = tokio::time::timeout(Duration::from_secs(120), t.wait())
        .await
        .expect("resume did not finish")
        .unwrap();
    assert_eq!(fin.transferred, u.body.len() as u64);
    // Parts the journal vouches for are not sent again; parts the store
    // holds that the journal never recorded (in flight at the pause) cannot
    // be verified and are.
    let parts_after = count_part_puts(&u.proxy) - parts_before;
    let parts = (48 / 5) + 1;
    assert_eq!(
        parts_after,
        parts - kept,
        "resume sent {parts_after} of {parts} parts; the journal kept {kept}"
    );
    u.assert_stored("paused.bin").await;
}

/// The parts recorded in the one upload journal under `state`.
fn journaled_parts(state: &std::path::Path) -> usize {
    let journals: Vec<_> = std::fs::read_dir(state.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("json".as_ref()))
        .collect();
    assert_eq!(journals.len(), 1, "journals kept: {journals:?}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journals[0]).unwrap()).unwrap();
    j["parts"].as_array().unwrap().len()
}

/// UploadPart requests the proxy has seen.
fn count_part_puts(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
        .count()
}

/// An abort that fails (the proxy refuses every DELETE) leaves the upload
/// recorded where the next run finds it: the journal stays, ListMultipartUploads
/// shows it, and running the same upload again completes it and leaves
/// nothing pending and no journal (moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_that_fails_is_found_and_finished_by_the_next_run() {
    use std::time::Duration;

    let Some(emu) = moto() else { return };
    let refuse = Rule::new(Fault::Status(403)).method("DELETE");
    let u = Managed::new(&emu, "abort-fails", "kept.bin", 30, vec![refuse]).await;
    let t = u.start(0).await;
    t.stop();
    assert!(u.m.settled(Duration::from_secs(30)).await);
    assert!(u.proxy.stats().statuses >= 1, "the abort was not refused");
    assert_eq!(u.direct.list_pending_uploads("").await.unwrap().len(), 1);
    journaled_parts(u.state.path());

    u.proxy.clear();
    let fin = u.start(0).await.wait().await.unwrap();
    assert_eq!(fin.transferred, u.body.len() as u64);
    u.assert_stored("kept.bin").await;
    let pending = u.direct.list_pending_uploads("").await.unwrap();
    assert!(pending.is_empty(), "left pending: {pending:?}");
}

/// A journal whose upload the store no longer knows (here aborted behind
/// the paused transfer's back; after a crash, also an upload whose complete
/// took effect before the journal was removed) never fails the upload: the
/// resume starts a fresh one, completes byte-identical and removes the
/// journal. s3s-fs answers ListParts of an unknown upload with an empty
/// list and UploadPart with AccessDenied; both lead to a fresh start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_whose_upload_is_gone_starts_a_fresh_upload() {
    use std::time::Duration;
    use xferkit_core::PendingUpload;

    let Some(emu) = s3s() else { return };
    let u = Managed::new(&emu, "gone", "gone.bin", 30, vec![]).await;
    let t = u.start(10 * MIB as u64).await;
    t.pause();
    assert!(u.m.settled(Duration::from_secs(30)).await);
    assert!(journaled_parts(u.state.path()) >= 1);
    let journal = std::fs::read_dir(u.state.path().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension() == Some("json".as_ref()))
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&journal).unwrap()).unwrap();
    let id = j["upload_id"].as_str().unwrap().to_string();
    u.direct
        .abort_pending_upload(&PendingUpload::new("gone.bin".into(), id, None))
        .await
        .unwrap();

    t.resume();
    let fin = tokio::time::timeout(Duration::from_secs(120), t.wait())
        .await
        .expect("the resume did not finish")
        .unwrap();
    assert_eq!(fin.transferred, u.body.len() as u64);
    u.assert_stored("gone.bin").await;
}
