//! Resumable-upload behaviour that fake-gcs-server cannot show, against a
//! tiny scripted HTTP server on 127.0.0.1:
//! - create-only sends `ifGenerationMatch=0` with the session, and a 412 when
//!   the upload completes (GCS's answer when the key appeared meanwhile;
//!   fake-gcs-server 1.54 ignores the precondition on resumable uploads) is
//!   `AlreadyExists`, with the session cancelled;
//! - bytes the service did not persist (`Range` shorter than the chunk) are
//!   sent again;
//! - a 503 on every chunk try ends, after the retry budget, in
//!   `RetriesExhausted` over a `Transient` error, each retry asking the
//!   session for its offset first, and the session is cancelled;
//! - a chunk that failed after the service kept part of it is resumed from
//!   the session's offset, not sent again from its start;
//! - GCS's checksum refusals (400 "Provided CRC32C ... doesn't match
//!   calculated CRC32C ..."), which fake-gcs-server 1.54 never sends: on the
//!   last chunk (`X-Goog-Hash`) it is `ChecksumMismatch` and the session is
//!   cancelled; on a one-request upload of in-memory data (`crc32c` in the
//!   object resource) the request is sent again.

// Test helpers outside #[test] functions: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use xferkit_core::Key;

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use xferkit_core::{
    Error, ErrorKind, FileTransferHandler, ProgressSink, PutOptions, RetryPolicy, TransferCtx,
    UploadSource,
};
use xferkit_gcs::{GcsConfig, GcsStore};

const KIB: usize = 1024;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Resp {
    Resp {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_string(),
    }
}

fn error_json(code: u16, msg: &str) -> String {
    format!(r#"{{"error":{{"code":{code},"message":"{msg}","errors":[]}}}}"#)
}

fn object_json(name: &str, size: usize) -> String {
    format!(
        r#"{{"kind":"storage#object","name":"{name}","id":"bkt/{name}","bucket":"bkt","size":"{size}",
        "generation":"7","metageneration":"1","etag":"abc","contentType":"application/octet-stream",
        "selfLink":"x","mediaLink":"x"}}"#
    )
}

/// GCS's CRC32C text: base64 of the big-endian bytes.
fn crc_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let crc = xferkit_core::journal::crc32c(bytes);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// An object resource with the CRC32C of `data`, as GCS returns it.
fn object_json_with_crc(name: &str, data: &[u8]) -> String {
    let mut o: serde_json::Value = serde_json::from_str(&object_json(name, data.len())).unwrap();
    o["crc32c"] = crc_base64(data).into();
    o.to_string()
}

type Handler = Arc<dyn Fn(&Req, &str) -> Resp + Send + Sync>;

/// Serve one request per connection; returns the base URL and the request log.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Req>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let (log2, base2) = (log.clone(), base.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (handler, log, base) = (handler.clone(), log2.clone(), base2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 64 * 1024];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_string();
                let target = first.next().unwrap_or("").to_string();
                let headers: BTreeMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end..].to_vec();
                while body.len() < len {
                    let Ok(n) = sock.read(&mut tmp).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&tmp[..n]);
                }
                let req = Req {
                    method,
                    target,
                    headers,
                    body,
                };
                let r = handler(&req, &base);
                log.lock().unwrap().push(req);
                let mut out = format!(
                    "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\nContent-Type: application/json\r\n",
                    r.status,
                    r.body.len()
                );
                for (k, v) in &r.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&r.body);
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, log)
}

async fn store(base: &str, chunk: usize) -> GcsStore {
    let mut c = GcsConfig::new("bkt");
    c.endpoint = Some(base.to_string());
    c.anonymous = true;
    c.multipart_threshold = 256 * KIB as u64;
    c.chunk_size = chunk as u64;
    GcsStore::new("mock", c).await.unwrap()
}

/// `bytes A-B/T` → (A, B, T or None).
fn content_range(r: &Req) -> (u64, u64, Option<u64>) {
    let v = r.headers.get("content-range").cloned().unwrap_or_default();
    let v = v.trim_start_matches("bytes ");
    let (range, total) = v.split_once('/').unwrap();
    let (a, b) = range.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap(), total.parse().ok())
}

#[derive(Default)]
struct Progress(AtomicU64);
impl ProgressSink for Progress {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }
    fn set_total(&self, _: u64) {}
}

#[tokio::test]
async fn create_only_conflict_at_completion_is_already_exists_and_cancels() {
    let handler: Handler = Arc::new(|r: &Req, base: &str| match r.method.as_str() {
        "GET" => resp(404, &[], &error_json(404, "No such object")),
        "POST" => resp(200, &[("Location", &format!("{base}/session/1"))], "{}"),
        "PUT" => {
            let (_, b, total) = content_range(r);
            if total.is_some() {
                resp(
                    412,
                    &[],
                    &error_json(
                        412,
                        "At least one of the pre-conditions you specified did not hold.",
                    ),
                )
            } else {
                resp(308, &[("Range", &format!("bytes=0-{b}"))], "")
            }
        }
        "DELETE" => resp(499, &[], ""),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let s = store(&base, 256 * KIB).await;
    let data = vec![7u8; 700 * KIB];
    let err = s
        .upload(
            &Key::new("k/big.bin").unwrap(),
            UploadSource::from_bytes(data),
            &PutOptions::default().create_only(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{}", err.chain());
    let log = log.lock().unwrap().clone();
    let post = log
        .iter()
        .find(|r| r.method == "POST")
        .expect("session started");
    assert!(
        post.target.contains("uploadType=resumable"),
        "{}",
        post.target
    );
    assert!(
        post.target.contains("ifGenerationMatch=0"),
        "{}",
        post.target
    );
    let puts = log.iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts, 3, "700 KiB in 256 KiB chunks");
    assert!(
        log.iter()
            .any(|r| r.method == "DELETE" && r.target == "/session/1"),
        "session not cancelled"
    );
}

#[tokio::test]
async fn unpersisted_bytes_are_sent_again() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let rec = received.clone();
    let handler: Handler = Arc::new(move |r: &Req, base: &str| match r.method.as_str() {
        "POST" => resp(200, &[("Location", &format!("{base}/session/2"))], "{}"),
        "PUT" => {
            let (a, b, total) = content_range(r);
            let mut got = rec.lock().unwrap();
            assert_eq!(
                a as usize,
                got.len(),
                "chunk starts where the persisted bytes end"
            );
            // Persist only the first 256 KiB of any chunk larger than that.
            let keep = r.body.len().min(256 * KIB);
            got.extend_from_slice(&r.body[..keep]);
            let persisted = a + keep as u64;
            match total {
                Some(t) if persisted == t => resp(200, &[], &object_json("k/x.bin", t as usize)),
                _ => {
                    let _ = b;
                    resp(308, &[("Range", &format!("bytes=0-{}", persisted - 1))], "")
                }
            }
        }
        _ => resp(400, &[], ""),
    });
    let (base, _log) = serve(handler).await;
    let s = store(&base, 512 * KIB).await;
    let data: Vec<u8> = (0..1300 * KIB).map(|i| (i % 251) as u8).collect();
    let progress = Arc::new(Progress::default());
    let ctx = TransferCtx::new(progress.clone(), Default::default());
    let obj = s
        .upload(
            &Key::new("k/x.bin").unwrap(),
            UploadSource::from_bytes(data.clone()),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(
        *received.lock().unwrap(),
        data,
        "bytes reassembled in order"
    );
    assert_eq!(
        progress.0.load(Ordering::SeqCst),
        data.len() as u64,
        "progress sums to the size"
    );
}

/// A retry policy that does not make the tests wait.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(1))
        .with_max_backoff(Duration::from_millis(5))
}

/// A status query (`Content-Range: bytes */N`) rather than data.
fn is_status_query(r: &Req) -> bool {
    r.headers
        .get("content-range")
        .is_some_and(|v| v.starts_with("bytes */"))
}

#[tokio::test]
async fn a_failed_chunk_resumes_from_the_session_offset() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rec, failed) = (received.clone(), failed_once.clone());
    let handler: Handler = Arc::new(move |r: &Req, base: &str| match r.method.as_str() {
        "POST" => resp(200, &[("Location", &format!("{base}/session/4"))], "{}"),
        "PUT" if is_status_query(r) => {
            let have = rec.lock().unwrap().len();
            if have == 0 {
                resp(308, &[], "")
            } else {
                resp(308, &[("Range", &format!("bytes=0-{}", have - 1))], "")
            }
        }
        "PUT" => {
            let (a, _, total) = content_range(r);
            let mut got = rec.lock().unwrap();
            assert_eq!(
                a as usize,
                got.len(),
                "data resumes at the persisted offset"
            );
            if !failed.swap(true, Ordering::SeqCst) {
                // Keep the first 256 KiB of the first chunk, then fail.
                got.extend_from_slice(&r.body[..256 * KIB]);
                return resp(503, &[], &error_json(503, "Backend Error"));
            }
            got.extend_from_slice(&r.body);
            let persisted = got.len() as u64;
            match total {
                Some(t) if persisted == t => resp(200, &[], &object_json("k/r.bin", t as usize)),
                _ => resp(308, &[("Range", &format!("bytes=0-{}", persisted - 1))], ""),
            }
        }
        "DELETE" => resp(499, &[], ""),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let s = store(&base, 512 * KIB).await;
    let data: Vec<u8> = (0..1024 * KIB).map(|i| (i % 241) as u8).collect();
    let progress = Arc::new(Progress::default());
    let ctx = TransferCtx::new(progress.clone(), Default::default()).with_retry_policy(quick(4));
    let obj = s
        .upload(
            &Key::new("k/r.bin").unwrap(),
            UploadSource::from_bytes(data.clone()),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(
        *received.lock().unwrap(),
        data,
        "bytes reassembled in order"
    );
    assert_eq!(progress.0.load(Ordering::SeqCst), data.len() as u64);
    let log = log.lock().unwrap().clone();
    let puts: Vec<&Req> = log.iter().filter(|r| r.method == "PUT").collect();
    // chunk 1 (fails after 256 KiB), status query, rest of chunk 1, chunk 2.
    assert_eq!(
        puts.len(),
        4,
        "{:?}",
        puts.iter()
            .map(|r| r.headers.get("content-range"))
            .collect::<Vec<_>>()
    );
    assert!(is_status_query(puts[1]));
    assert_eq!(
        content_range(puts[2]).0,
        256 * KIB as u64,
        "only the rest is resent"
    );
    assert_eq!(puts[2].body.len(), 256 * KIB);
}

#[tokio::test]
async fn server_error_on_a_chunk_is_transient_and_cancels() {
    let handler: Handler = Arc::new(|r: &Req, base: &str| match r.method.as_str() {
        "POST" => resp(200, &[("Location", &format!("{base}/session/3"))], "{}"),
        "PUT" => resp(503, &[], &error_json(503, "Service Unavailable")),
        "DELETE" => resp(499, &[], ""),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let s = store(&base, 256 * KIB).await;
    let err = s
        .upload(
            &Key::new("k/y.bin").unwrap(),
            UploadSource::from_bytes(vec![1u8; 600 * KIB]),
            &PutOptions::default(),
            &TransferCtx::none().with_retry_policy(quick(3)),
        )
        .await
        .unwrap_err();
    let Error::RetriesExhausted {
        source, attempts, ..
    } = &err
    else {
        panic!("expected RetriesExhausted: {}", err.chain());
    };
    assert_eq!(*attempts, 3);
    assert!(source.is_retryable(), "{}", err.chain());
    assert!(err.chain().contains("part 1"), "{}", err.chain());
    assert!(
        !err.chain().contains("session/3"),
        "session URI leaked: {}",
        err.chain()
    );
    let log = log.lock().unwrap().clone();
    // The data once, then before each retry a status query (which fails too).
    let puts: Vec<&Req> = log.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 3);
    assert!(!is_status_query(puts[0]));
    assert!(is_status_query(puts[1]) && is_status_query(puts[2]));
    assert!(
        log.iter()
            .any(|r| r.method == "DELETE" && r.target == "/session/3"),
        "session not cancelled"
    );
}

/// Resume after a crash: with a state directory, a resumable upload of a
/// file journals its session; when the uploading task dies mid-way (future
/// dropped, as with `kill -9`), the same upload run again asks the session
/// for its offset and sends only the rest. (fake-gcs-server cannot show
/// this: it completes a session when asked for its offset.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_upload_continues_from_the_session_offset() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let data_puts = Arc::new(AtomicU64::new(0));
    let (rec, puts) = (received.clone(), data_puts.clone());
    let handler: Handler = Arc::new(move |r: &Req, base: &str| match r.method.as_str() {
        "POST" => resp(200, &[("Location", &format!("{base}/session/5"))], "{}"),
        "PUT" if is_status_query(r) => {
            let have = rec.lock().unwrap().len();
            if have == 0 {
                resp(308, &[], "")
            } else {
                resp(308, &[("Range", &format!("bytes=0-{}", have - 1))], "")
            }
        }
        "PUT" => {
            // A slow service: 150 ms per chunk, so the test can kill mid-way.
            std::thread::sleep(std::time::Duration::from_millis(150));
            puts.fetch_add(r.body.len() as u64, Ordering::SeqCst);
            let (a, _, total) = content_range(r);
            let mut got = rec.lock().unwrap();
            assert_eq!(
                a as usize,
                got.len(),
                "data resumes at the persisted offset"
            );
            got.extend_from_slice(&r.body);
            let persisted = got.len() as u64;
            match total {
                // With the CRC32C of what arrived: the resumed upload's
                // (journaled prefix + streamed rest) must equal it.
                Some(t) if persisted == t => resp(200, &[], &object_json_with_crc("k/c.bin", &got)),
                _ => resp(308, &[("Range", &format!("bytes=0-{}", persisted - 1))], ""),
            }
        }
        "DELETE" => resp(499, &[], ""),
        _ => resp(400, &[], ""),
    });
    let (base, _log) = serve(handler).await;
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..2048 * KIB).map(|i| (i % 239) as u8).collect();
    let src = dir.path().join("c.bin");
    std::fs::write(&src, &data).unwrap();
    let store_with_state = || async {
        store(&base, 256 * KIB)
            .await
            .with_state_dir(Some(state.path().to_path_buf()))
    };

    let s = store_with_state().await;
    let journal = xferkit_core::journal::JournalFile::for_upload(
        state.path(),
        &s.url_for(&Key::new("k/c.bin").unwrap()),
        &src,
    );
    let p = src.clone();
    let task = tokio::spawn(async move {
        s.upload(
            &Key::new("k/c.bin").unwrap(),
            UploadSource::Path(p),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
    });
    loop {
        if journal
            .load()
            .await
            .map(|j| j.parts.iter().map(|p| p.len).sum::<u64>())
            .is_some_and(|n| n >= 512 * KIB as u64)
        {
            break;
        }
        assert!(!task.is_finished(), "upload ended early");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    // Let a chunk the dead upload had in flight land.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let have = received.lock().unwrap().len() as u64;
    assert!(have < data.len() as u64, "the first run did not finish");

    let before = data_puts.load(Ordering::SeqCst);
    let s = store_with_state().await;
    let progress = Arc::new(Progress::default());
    let ctx = TransferCtx::new(progress.clone(), Default::default());
    let obj = s
        .upload(
            &Key::new("k/c.bin").unwrap(),
            UploadSource::Path(src.clone()),
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap_or_else(|e| panic!("resumed upload: {}", e.chain()));
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(
        *received.lock().unwrap(),
        data,
        "bytes reassembled in order"
    );
    let sent = data_puts.load(Ordering::SeqCst) - before;
    assert_eq!(sent, data.len() as u64 - have, "only the rest was sent");
    assert_eq!(progress.0.load(Ordering::SeqCst), data.len() as u64);
    assert!(journal.load().await.is_none(), "journal removed");
}

/// GCS checks `X-Goog-Hash: crc32c=...` on the last chunk and, when the
/// bytes it got do not match, answers 400 and creates nothing. Here the
/// service "receives" one flipped byte: the upload fails with
/// `ChecksumMismatch` (the session cannot resend a chunk) naming the URL,
/// and the session is cancelled. The header carries the CRC32C of the whole
/// object, on the last chunk only.
#[tokio::test]
async fn a_last_chunk_refused_for_its_crc32c_is_checksum_mismatch_and_cancels() {
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let rec = received.clone();
    let handler: Handler = Arc::new(move |r: &Req, base: &str| match r.method.as_str() {
        "POST" => resp(200, &[("Location", &format!("{base}/session/6"))], "{}"),
        "PUT" => {
            let (_, b, total) = content_range(r);
            let mut got = rec.lock().unwrap();
            got.extend_from_slice(&r.body);
            if got.len() > 1000 {
                got[1000] ^= 0x01; // corrupted on the way
            }
            if total.is_none() {
                return resp(308, &[("Range", &format!("bytes=0-{b}"))], "");
            }
            let provided = r
                .headers
                .get("x-goog-hash")
                .and_then(|h| h.strip_prefix("crc32c="))
                .unwrap_or("")
                .to_string();
            let calculated = crc_base64(&got);
            if provided == calculated {
                resp(200, &[], &object_json_with_crc("k/z.bin", &got))
            } else {
                let msg = format!(
                    "Provided CRC32C \\\"{provided}\\\" doesn't match calculated CRC32C \\\"{calculated}\\\"."
                );
                resp(400, &[], &error_json(400, &msg))
            }
        }
        "DELETE" => resp(499, &[], ""),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let s = store(&base, 256 * KIB).await;
    let data: Vec<u8> = (0..600 * KIB).map(|i| (i % 233) as u8).collect();
    let err = s
        .upload(
            &Key::new("k/z.bin").unwrap(),
            UploadSource::from_bytes(data.clone()),
            &PutOptions::default(),
            &TransferCtx::none().with_retry_policy(quick(3)),
        )
        .await
        .unwrap_err();
    let Error::ChecksumMismatch {
        target,
        expected,
        actual,
    } = &err
    else {
        panic!("expected ChecksumMismatch: {}", err.chain());
    };
    assert_eq!(target, "gs://bkt/k/z.bin");
    let crc = xferkit_core::journal::crc32c(&data);
    assert_eq!(expected, &format!("crc32c:{crc:08x}"));
    assert!(
        actual.contains("doesn't match calculated CRC32C"),
        "{actual}"
    );
    let log = log.lock().unwrap().clone();
    let puts: Vec<&Req> = log.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 3, "600 KiB in 256 KiB chunks, none resent");
    assert_eq!(
        puts[2].headers.get("x-goog-hash").map(String::as_str),
        Some(format!("crc32c={}", crc_base64(&data)).as_str())
    );
    assert!(
        puts[..2]
            .iter()
            .all(|r| !r.headers.contains_key("x-goog-hash"))
    );
    assert!(
        log.iter()
            .any(|r| r.method == "DELETE" && r.target == "/session/6"),
        "session not cancelled"
    );
}

/// A one-request upload of data in memory puts its CRC32C in the object
/// resource, so GCS checks the bytes before storing them; a refusal (400,
/// "Provided CRC32C ... doesn't match ...") is retryable: the request is
/// sent again.
#[tokio::test]
async fn an_in_memory_upload_sends_its_crc32c_and_a_refusal_is_sent_again() {
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler: Handler = Arc::new(move |r: &Req, _base: &str| match r.method.as_str() {
        "POST" if !refused.swap(true, Ordering::SeqCst) => resp(
            400,
            &[],
            &error_json(
                400,
                "Provided CRC32C \\\"AAAAAA==\\\" doesn't match calculated CRC32C \\\"2HvlZg==\\\".",
            ),
        ),
        "POST" => resp(200, &[], &object_json("k/m.bin", 100 * KIB)),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let s = store(&base, 256 * KIB).await;
    let data: Vec<u8> = (0..100 * KIB).map(|i| (i % 229) as u8).collect();
    let obj = s
        .upload(
            &Key::new("k/m.bin").unwrap(),
            UploadSource::from_bytes(data.clone()),
            &PutOptions::default(),
            &TransferCtx::none().with_retry_policy(quick(3)),
        )
        .await
        .unwrap_or_else(|e| panic!("upload after one refusal: {}", e.chain()));
    assert_eq!(obj.size, data.len() as u64);
    let log = log.lock().unwrap().clone();
    let posts: Vec<&Req> = log.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 2, "sent again once");
    let field = format!(r#""crc32c":"{}""#, crc_base64(&data));
    for p in posts {
        assert!(p.target.contains("uploadType=multipart"), "{}", p.target);
        let body = String::from_utf8_lossy(&p.body);
        assert!(body.contains(&field), "no {field} in the resource");
    }
}

/// CMEK (no emulator checks it): the store's `sse_kms_key_id` goes on the
/// upload as the `kmsKeyName` query parameter, storage class and headers in
/// the object resource; the answer's `kmsKeyName` is reported back.
#[tokio::test]
async fn cmek_key_name_storage_class_and_headers_are_sent() {
    const KEY: &str = "projects/p/locations/eu/keyRings/r/cryptoKeys/k";
    let data = b"cmek".to_vec();
    let answer = {
        let mut o: serde_json::Value =
            serde_json::from_str(&object_json_with_crc("k/a.txt", &data)).unwrap();
        o["kmsKeyName"] = format!("{KEY}/cryptoKeyVersions/1").into();
        o["storageClass"] = "COLDLINE".into();
        o.to_string()
    };
    let handler: Handler = Arc::new(move |r: &Req, _: &str| match r.method.as_str() {
        "POST" => resp(200, &[], &answer),
        _ => resp(400, &[], ""),
    });
    let (base, log) = serve(handler).await;
    let mut c = GcsConfig::new("bkt");
    c.endpoint = Some(base.clone());
    c.anonymous = true;
    c.upload.sse_kms_key_id = Some(KEY.into());
    c.upload.storage_class = Some("COLDLINE".into());
    c.upload.cache_control = Some("no-cache".into());
    let s = GcsStore::new("mock", c).await.unwrap();
    let got = s
        .upload(
            &Key::new("k/a.txt").unwrap(),
            UploadSource::from_bytes(data),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap();
    assert_eq!(got.encryption.as_deref(), Some("CMEK"));
    assert_eq!(
        got.encryption_key.as_deref(),
        Some(&*format!("{KEY}/cryptoKeyVersions/1"))
    );
    assert_eq!(got.storage_class.as_deref(), Some("COLDLINE"));
    let log = log.lock().unwrap().clone();
    let [post] = &log[..] else {
        panic!("one request: {log:?}")
    };
    assert!(
        post.target
            .contains("kmsKeyName=projects%2Fp%2Flocations%2Feu%2FkeyRings%2Fr%2FcryptoKeys%2Fk"),
        "{}",
        post.target
    );
    let body = String::from_utf8_lossy(&post.body);
    assert!(body.contains(r#""storageClass":"COLDLINE""#), "{body}");
    assert!(body.contains(r#""cacheControl":"no-cache""#), "{body}");
    // A bucket key is S3's: refused by name, nothing sent.
    let mut c = GcsConfig::new("bkt");
    c.endpoint = Some(base);
    c.anonymous = true;
    c.upload.sse_bucket_key = Some(true);
    let e = GcsStore::new("mock", c).await.unwrap_err().to_string();
    assert!(
        e.contains("configuration: sse_kms_key_id and sse_bucket_key"),
        "{e}"
    );
}
