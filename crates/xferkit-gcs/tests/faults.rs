//! fake-gcs-server's own faults, through the TCP fault proxy of
//! `xferkit-conformance` (which also rewrites the resumable session URIs the
//! emulator hands out so chunks go through it). The faults every backend
//! shares (resets, 503s, faults that never clear, flipped bytes) are
//! conformance cases, `xferkit_conformance::faults`, run by
//! `tests/conformance/gcs.rs` at the workspace root. Here:
//!
//! - a byte flipped in a one-request upload of a stream source is caught by
//!   the CRC32C the store reports and the request sent again;
//! - a resumable upload with a flipped byte fails with `ChecksumMismatch`
//!   naming the object and both checksums, each chunk sent once and no
//!   offset query, leaving nothing; the last chunk carries
//!   `X-Goog-Hash: crc32c=...` (which GCS itself checks).
//!
//! Retrying a *resumable chunk* against fake-gcs-server cannot be shown:
//! before resending, xferkit asks the session how much it holds (`PUT` with
//! `Content-Range: bytes */N`, as GCS documents), and fake-gcs-server 1.54
//! answers that query by completing the object with the bytes it has (a
//! truncated object becomes visible). `fake_gcs_server_completes_a_session_on_a_status_query`
//! proves that emulator behaviour (the shared chunk-retry and resume cases
//! are skipped on this target for it); the chunk retry itself is proven against
//! a scripted server with GCS's semantics in `tests/resumable_mock.rs`
//! (`a_failed_chunk_resumes_from_the_session_offset`).
//!
//! Each test skips when `XFERKIT_FAKE_GCS_ENDPOINT` is not set (and fails
//! instead under `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`).

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_conformance::testkit::{data, quick_retry, unique_prefix, write_file};
use xferkit_core::Key;
use xferkit_core::{
    Error, ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, TransferCtx, UploadSource,
};
use xferkit_gcs::{GcsConfig, GcsStore};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "xferkit-conformance";

use xferkit_conformance::emulators_required as required;

fn emulator() -> Option<String> {
    match std::env::var("XFERKIT_FAKE_GCS_ENDPOINT") {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                !required(),
                "XFERKIT_FAKE_GCS_ENDPOINT is not set but emulators are required"
            );
            eprintln!("skipped: fake-gcs-server not configured (cargo xtask emulators start)");
            None
        }
    }
}

async fn ensure_bucket(endpoint: &str) {
    xferkit_conformance::gcs::ensure_bucket(endpoint, BUCKET)
        .await
        .unwrap();
}

/// A store on `endpoint` under `prefix`: resumable (in 2 MiB chunks) above
/// `threshold`.
async fn store(endpoint: &str, prefix: &str, threshold: usize) -> GcsStore {
    let mut c = GcsConfig::new(BUCKET);
    c.endpoint = Some(endpoint.to_string());
    c.anonymous = true;
    c.prefix = prefix.to_string();
    c.multipart_threshold = threshold as u64;
    c.chunk_size = 2 * MIB as u64;
    GcsStore::new("faults", c)
        .await
        .unwrap()
        .with_retry_policy(quick_retry(6))
}

/// The emulator behaviour that keeps resumable-chunk retries and resumes
/// out of the shared fault cases (see the module comment). If this fails,
/// fake-gcs-server answers status queries like GCS now: drop
/// `part_retry_gap` and `resume_gap` from its target in
/// `tests/conformance/gcs.rs`.
#[tokio::test]
async fn fake_gcs_server_completes_a_session_on_a_status_query() {
    let Some(emu) = emulator() else { return };
    ensure_bucket(&emu).await;
    let name = format!("{}/probe.bin", unique_prefix("faults", "status"));
    let http = reqwest::Client::new();
    let started = http
        .post(format!(
            "{emu}/upload/storage/v1/b/{BUCKET}/o?uploadType=resumable&name={name}"
        ))
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{name}"}}"#))
        .send()
        .await
        .unwrap();
    let session = started.headers()["location"].to_str().unwrap().to_string();
    let chunk = http
        .put(&session)
        .header("content-range", "bytes 0-262143/*")
        .body(vec![1u8; 256 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(chunk.status().as_u16(), 308, "first chunk accepted");
    // GCS: 308 with `Range: bytes=0-262143`. fake-gcs-server: 200 and an object.
    let status = http
        .put(&session)
        .header("content-range", "bytes */*")
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(
        status.status().as_u16(),
        200,
        "emulator finalized on a status query"
    );
    let s = store(&emu, "", 2 * MIB).await;
    let obj = s.stat(&Key::new(&name).unwrap()).await.unwrap();
    assert_eq!(obj.size, 256 * 1024, "a truncated object became visible");
    s.delete(&Key::new(&name).unwrap()).await.unwrap();
}

/// The CRC32C as GCS writes it in `X-Goog-Hash` and object resources.
fn crc_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let crc = xferkit_core::journal::crc32c(bytes);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// One flipped byte in a one-request upload of a stream source (held in
/// memory, its CRC32C also in the object resource; fake-gcs-server checks
/// no client checksum and stores it) is caught by comparing the CRC32C the
/// store reports with the one computed while streaming; the corrupted
/// generation is deleted and the request sent again, once. (A file source:
/// the shared case `faults::a_body_corrupted_once_on_the_way_up_never_downloads_as_a_wrong_file`.)
#[tokio::test]
async fn a_corrupted_one_request_stream_upload_is_sent_again_and_stored_intact() {
    let Some(emu) = emulator() else { return };
    ensure_bucket(&emu).await;
    let proxy = FaultProxy::start(&emu).await.unwrap();
    let pfx = unique_prefix("faults", "crc1");
    let via = store(&proxy.url(), &pfx, 2 * MIB).await;
    let direct = store(&emu, &pfx, 2 * MIB).await;
    let body = data(MIB, 13);
    let dir = tempfile::tempdir().unwrap();
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(3));
    let key = "stream.bin";
    // 100,000 bytes into the body: past the resource part, in the data.
    proxy.set_rules(vec![
        Rule::new(Fault::CorruptRequestBody(100_000))
            .method("POST")
            .path_contains("uploadType=multipart")
            .times(1),
    ]);
    let chunks: Vec<xferkit_core::Result<bytes::Bytes>> = body
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let source = UploadSource::Stream {
        stream: Box::pin(futures::stream::iter(chunks)),
        size: Some(body.len() as u64),
    };
    let obj = via
        .upload(
            &Key::new(key).unwrap(),
            source,
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap_or_else(|e| panic!("upload of {key} through one corruption: {}", e.chain()));
    assert_eq!(obj.size, body.len() as u64);
    assert_eq!(proxy.stats().corruptions, 1, "{key}: one flip");
    let posts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.target.contains("uploadType=multipart"))
        .count();
    assert_eq!(posts, 2, "{key}: sent again once after the mismatch");

    // Read back without the proxy: the bytes sent, not the flipped ones.
    let dest = dir.path().join(format!("back-{key}"));
    direct
        .download_to_path(&Key::new(key).unwrap(), &dest, None, &TransferCtx::none())
        .await
        .unwrap();
    assert!(
        std::fs::read(&dest).unwrap() == body,
        "{key}: stored bytes differ"
    );
    direct.delete(&Key::new(key).unwrap()).await.unwrap();
}

/// A resumable upload (4 chunks of at most 2 MiB) whose second chunk is
/// corrupted: the session is complete when the mismatch shows, so the
/// upload fails with `ChecksumMismatch` and the stored object is deleted.
/// (No chunk is retried, so no offset query reaches fake-gcs-server.)
#[tokio::test]
async fn a_corrupted_resumable_upload_fails_with_checksum_mismatch_leaving_nothing() {
    let Some(emu) = emulator() else { return };
    ensure_bucket(&emu).await;
    let proxy = FaultProxy::start(&emu).await.unwrap();
    let pfx = unique_prefix("faults", "crcres");
    let via = store(&proxy.url(), &pfx, 2 * MIB).await;
    let direct = store(&emu, &pfx, 2 * MIB).await;
    let body = data(7 * MIB, 19);
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "big.bin", &body);
    proxy.set_rules(vec![
        Rule::new(Fault::CorruptRequestBody(12_345))
            .method("PUT")
            .path_contains("upload_id=")
            .after(1)
            .times(1),
    ]);
    let ctx = TransferCtx::none().with_retry_policy(quick_retry(3));
    let e = via
        .upload(
            &Key::new("big.bin").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .expect_err("a corrupted resumable upload must fail");
    let url = format!("gs://{BUCKET}/{pfx}/big.bin");
    let crc = xferkit_core::journal::crc32c(&body);
    match &e {
        Error::ChecksumMismatch {
            target,
            expected,
            actual,
        } => {
            assert_eq!(target, &url);
            assert_eq!(expected, &format!("crc32c:{crc:08x}"));
            assert_ne!(actual, expected);
        }
        other => panic!("expected ChecksumMismatch, got {}", other.chain()),
    }
    assert!(e.to_string().contains(&url), "{}", e.chain());
    assert_eq!(proxy.stats().corruptions, 1, "{:?}", proxy.stats());
    let chunks: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains("upload_id="))
        .collect();
    assert_eq!(chunks.len(), 4, "each chunk once: {chunks:?}");
    assert!(
        chunks.iter().all(|r| !r
            .header("content-range")
            .unwrap_or("")
            .starts_with("bytes */")),
        "no offset query: {chunks:?}"
    );

    proxy.clear();
    let e = direct
        .stat(&Key::new("big.bin").unwrap())
        .await
        .expect_err("no corrupted object may stay visible");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
}

/// The last request of a resumable upload carries the whole object's
/// CRC32C in `X-Goog-Hash` (GCS checks it before creating the object);
/// the other chunks carry none.
#[tokio::test]
async fn the_last_resumable_chunk_carries_the_objects_crc32c() {
    let Some(emu) = emulator() else { return };
    ensure_bucket(&emu).await;
    let proxy = FaultProxy::start(&emu).await.unwrap();
    let pfx = unique_prefix("faults", "crchdr");
    let via = store(&proxy.url(), &pfx, 2 * MIB).await;
    let body = data(5 * MIB + 1234, 23);
    let dir = tempfile::tempdir().unwrap();
    let src = write_file(dir.path(), "big.bin", &body);
    let obj = via
        .upload(
            &Key::new("big.bin").unwrap(),
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_or_else(|e| panic!("upload: {}", e.chain()));
    assert_eq!(obj.size, body.len() as u64);
    let chunks: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains("upload_id="))
        .collect();
    assert_eq!(chunks.len(), 3, "{chunks:?}");
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(
        last.header("x-goog-hash"),
        Some(format!("crc32c={}", crc_base64(&body)).as_str()),
        "{last:?}"
    );
    assert!(
        rest.iter().all(|r| r.header("x-goog-hash").is_none()),
        "{rest:?}"
    );
    via.delete(&Key::new("big.bin").unwrap()).await.unwrap();
}

/// A download, whole or ranged, is one GET (its headers carry the record);
/// a suffix of an empty object is empty and an offset into it is refused.
#[tokio::test]
async fn a_download_is_one_get_and_empty_objects_keep_range_semantics() {
    use xferkit_core::ByteRange;
    let Some(emu) = emulator() else { return };
    ensure_bucket(&emu).await;
    let proxy = FaultProxy::start(&emu).await.unwrap();
    let via = store(&proxy.url(), &unique_prefix("faults", "get1"), 2 * MIB).await;
    let body = data(1000, 3);
    let put = |k: &'static str, b: Vec<u8>| {
        let via = &via;
        async move {
            (via.upload(
                &Key::new(k).unwrap(),
                UploadSource::from_bytes(b),
                &PutOptions::default(),
                &TransferCtx::none(),
            ))
            .await
            .unwrap()
        }
    };
    let up = put("k.bin", body.clone()).await;
    put("empty", Vec::new()).await;
    let gets = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    let before = gets();
    let (obj, _) = via
        .download_stream(&Key::new("k.bin").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        (obj.size, &obj.etag, &obj.version),
        (1000, &up.etag, &up.version)
    );
    assert!(
        obj.checksum
            .as_deref()
            .is_some_and(|c| c.starts_with("crc32c:")),
        "{obj:?}"
    );
    let got = via
        .read_bytes(&Key::new("k.bin").unwrap(), Some(ByteRange::Suffix(10)))
        .await
        .unwrap();
    assert_eq!(&got[..], &body[990..]);
    let (obj, _) = via
        .download_stream(&Key::new("k.bin").unwrap(), Some(ByteRange::From(10)))
        .await
        .unwrap();
    assert_eq!((obj.size, &obj.etag), (1000, &up.etag));
    assert_eq!(gets() - before, 3, "one GET per download");
    let got = via
        .read_bytes(&Key::new("empty").unwrap(), Some(ByteRange::Suffix(5)))
        .await
        .unwrap();
    assert!(got.is_empty());
    let e = via
        .read_bytes(&Key::new("empty").unwrap(), Some(ByteRange::From(0)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidRange, "{}", e.chain());
    assert!(
        via.read_bytes(&Key::new("empty").unwrap(), None)
            .await
            .unwrap()
            .is_empty()
    );
}
