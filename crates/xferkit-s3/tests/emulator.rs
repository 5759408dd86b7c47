//! S3-specific checks against the emulators that the shared conformance
//! suite does not make: error mapping from real responses, credentials kept
//! out of errors, multipart ETags, aborting on a short stream, empty-object
//! ranges. Each test skips when its emulator's variables are not set (and
//! fails instead under `CI=true` or `XFERKIT_REQUIRE_EMULATORS=1`).

use std::time::Duration;
use xferkit_core::Key;

use bytes::Bytes;
use xferkit_core::{
    ByteRange, ErrorKind, FileTransferExt, FileTransferHandler, PutOptions, Secret, TransferCtx,
    UploadSource,
};
use xferkit_s3::{S3Config, S3Store};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "xferkit-conformance";

struct Emu {
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
            endpoint,
            access_key: "testing".into(),
            secret_key: "testing".into(),
        }),
        None => skip("moto"),
    }
}

fn config(emu: &Emu, test: &str) -> S3Config {
    let mut c = S3Config::new(BUCKET);
    c.endpoint = Some(emu.endpoint.clone());
    c.force_path_style = true;
    c.access_key_id = Some(emu.access_key.clone());
    c.secret_access_key = Some(Secret::new(emu.secret_key.clone()));
    c.prefix = format!("xk-emulator-{test}-{:08x}", rand_suffix());
    c.part_size = 5 * MIB as u64;
    c.multipart_threshold = 5 * MIB as u64;
    c
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

async fn store(c: S3Config) -> S3Store {
    let s = S3Store::new("emulator", c).await.expect("store");
    s.ensure_bucket().await.expect("bucket");
    s
}

fn stream_of(body: Vec<u8>, declared: Option<u64>) -> UploadSource {
    let chunks: Vec<xferkit_core::Result<Bytes>> = body
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    UploadSource::Stream {
        stream: Box::pin(futures::stream::iter(chunks)),
        size: declared,
    }
}

#[tokio::test]
async fn wrong_secret_is_permission_denied_and_never_shown() {
    let Some(emu) = s3s() else { return };
    let mut c = config(&emu, "wrong-secret");
    c.secret_access_key = Some(Secret::new("not-the-secret-xyzzy"));
    let s = S3Store::new("emulator", c).await.expect("store");
    let e = s
        .stat(&Key::new("k").unwrap())
        .await
        .expect_err("a wrong secret must be refused");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    assert!(!e.is_retryable());
    let shown = format!("{} {e:?} {s:?}", e.chain());
    assert!(shown.contains("s3://xferkit-conformance/"), "{shown}");
    assert!(!shown.contains("not-the-secret-xyzzy"), "{shown}");
}

#[tokio::test]
async fn missing_bucket_is_not_found() {
    for emu in [s3s(), moto()].into_iter().flatten() {
        let mut c = config(&emu, "no-bucket");
        c.bucket = "xferkit-no-such-bucket".into();
        let s = S3Store::new("emulator", c).await.expect("store");
        let e = s
            .stat(&Key::new("k").unwrap())
            .await
            .expect_err("stat in a missing bucket");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
        let e = s
            .read_bytes(&Key::new("k").unwrap(), None)
            .await
            .expect_err("get in a missing bucket");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
    }
}

#[tokio::test]
async fn known_size_stream_above_threshold_is_multipart() {
    for emu in [s3s(), moto()].into_iter().flatten() {
        let s = store(config(&emu, "multipart-etag")).await;
        let body: Vec<u8> = (0..11 * MIB).map(|i| (i % 251) as u8).collect();
        let obj = s
            .upload(
                &Key::new("big").unwrap(),
                stream_of(body.clone(), Some(body.len() as u64)),
                &PutOptions::default(),
                &TransferCtx::none(),
            )
            .await
            .expect("upload");
        // A multipart ETag ends in -PARTS: 11 MiB in 5 MiB parts is 3.
        let etag = obj.etag.clone().unwrap_or_default();
        assert!(etag.ends_with("-3"), "{}: etag {etag:?}", emu.endpoint);
        assert_eq!(
            s.read_bytes(&Key::new("big").unwrap(), None)
                .await
                .expect("read"),
            body
        );
        s.delete(&Key::new("big").unwrap()).await.expect("delete");
    }
}

#[tokio::test]
async fn short_stream_aborts_the_multipart_upload() {
    let Some(emu) = moto() else { return };
    let s = store(config(&emu, "short-stream")).await;
    let body = vec![7u8; 12 * MIB];
    let e = s
        .upload(
            &Key::new("short").unwrap(),
            stream_of(body, Some(20 * MIB as u64)),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .expect_err("a stream shorter than declared must fail");
    assert_eq!(e.kind(), ErrorKind::Backend, "{}", e.chain());
    assert_eq!(
        s.stat(&Key::new("short").unwrap())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let pending = s.list_pending_uploads("").await.expect("list pending");
    assert!(pending.is_empty(), "{pending:?}");
}

#[tokio::test]
async fn failing_stream_aborts_the_multipart_upload() {
    let Some(emu) = moto() else { return };
    let s = store(config(&emu, "failing-stream")).await;
    let chunks: Vec<xferkit_core::Result<Bytes>> = vec![
        Ok(Bytes::from(vec![1u8; 6 * MIB])),
        Ok(Bytes::from(vec![2u8; 6 * MIB])),
        Err(xferkit_core::Error::transient("source", "connection reset")),
    ];
    let e = s
        .upload(
            &Key::new("broken").unwrap(),
            UploadSource::Stream {
                stream: Box::pin(futures::stream::iter(chunks)),
                size: None,
            },
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .expect_err("a failing source must fail the upload");
    assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
    let pending = s.list_pending_uploads("").await.expect("list pending");
    assert!(pending.is_empty(), "{pending:?}");
    assert_eq!(
        s.stat(&Key::new("broken").unwrap())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

// s3s-fs 0.14.1 answers any suffix range on a 0-byte object (and any suffix
// longer than the object) with 500: it seeks to `End(-n)` without clamping.
// moto answers like S3.
#[tokio::test]
async fn empty_object_ranges() {
    let Some(emu) = moto() else { return };
    let s = store(config(&emu, "empty-ranges")).await;
    s.upload(
        &Key::new("empty").unwrap(),
        UploadSource::from_bytes(Vec::new()),
        &PutOptions::default(),
        &TransferCtx::none(),
    )
    .await
    .expect("upload");
    let got = s
        .read_bytes(&Key::new("empty").unwrap(), Some(ByteRange::Suffix(5)))
        .await
        .expect("suffix of an empty object");
    assert!(got.is_empty());
    let (obj, _) = s
        .download_stream(&Key::new("empty").unwrap(), None)
        .await
        .expect("get");
    assert_eq!(obj.size, 0);
    for r in [ByteRange::From(0), ByteRange::Bounded { start: 0, end: 1 }] {
        let e = s
            .read_bytes(&Key::new("empty").unwrap(), Some(r))
            .await
            .expect_err("past the end");
        assert_eq!(e.kind(), ErrorKind::InvalidRange, "{r}: {}", e.chain());
    }
    // Never sendable ranges are refused without a request.
    let e = s
        .read_bytes(
            &Key::new("empty").unwrap(),
            Some(ByteRange::Bounded { start: 5, end: 5 }),
        )
        .await
        .expect_err("empty range");
    assert_eq!(e.kind(), ErrorKind::InvalidRange);
    s.delete(&Key::new("empty").unwrap()).await.expect("delete");
}

#[tokio::test]
async fn presigned_url_is_signed_but_debug_hides_the_signature() {
    let Some(emu) = s3s() else { return };
    let s = store(config(&emu, "presign-headers")).await;
    let p = s
        .presign(
            &Key::new("k").unwrap(),
            xferkit_core::PresignMethod::Put,
            Duration::from_secs(60),
        )
        .await
        .expect("presign");
    assert!(p.url.contains("X-Amz-Signature="), "{p:?}");
    assert!(!format!("{p:?}").contains("X-Amz-Signature="), "{p:?}");
    assert!(
        !p.url.contains(&emu.secret_key),
        "secret in a presigned URL"
    );
}

#[tokio::test]
async fn non_ascii_metadata_round_trips() {
    for emu in [s3s(), moto()].into_iter().flatten() {
        let s = store(config(&emu, "unicode-meta")).await;
        let opts = PutOptions::default()
            .with_metadata("title", "Urlaubsfoto – Grüße aus Köln 日本")
            .with_metadata("message", "two\nlines");
        let up = s
            .upload(
                &Key::new("m").unwrap(),
                UploadSource::from_bytes(&b"x"[..]),
                &opts,
                &TransferCtx::none(),
            )
            .await
            .expect("upload");
        let st = s.stat(&Key::new("m").unwrap()).await.expect("stat");
        assert_eq!(st.metadata, opts.metadata, "{}", emu.endpoint);
        assert_eq!(up.metadata, opts.metadata);
        let (dl, _) = s
            .download_stream(&Key::new("m").unwrap(), None)
            .await
            .expect("get");
        assert_eq!(dl.metadata, opts.metadata);
        s.copy(&Key::new("m").unwrap(), &Key::new("m2").unwrap())
            .await
            .expect("copy");
        assert_eq!(
            s.stat(&Key::new("m2").unwrap())
                .await
                .expect("stat")
                .metadata,
            opts.metadata
        );
        for k in ["m", "m2"] {
            s.delete(&Key::new(k).unwrap()).await.expect("delete");
        }
    }
}

/// SSE-C from the store's config on moto: one-request and multipart
/// uploads, stat, download and copy all carry the key and succeed. moto
/// 5.2.5 neither keeps nor checks an SSE-C key (it reports no encryption and
/// serves the object without the key), so what is sent is proven by
/// `requests.rs`; this shows the requests are well-formed end to end.
#[tokio::test]
async fn sse_c_store_writes_and_reads_with_its_key() {
    use base64::Engine as _;
    let Some(emu) = moto() else { return };
    let mut c = config(&emu, "sse-c");
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    c.upload.sse_customer_key = Some(Secret::new(key.clone()));
    let s = store(c).await;
    let big: Vec<u8> = (0..6 * MIB).map(|i| (i % 253) as u8).collect();
    for (k, body) in [("small", b"secret".to_vec()), ("big", big)] {
        let ctx = TransferCtx::none();
        let src = UploadSource::from_bytes(body.clone());
        s.upload(&Key::new(k).unwrap(), src, &PutOptions::default(), &ctx)
            .await
            .expect("upload");
        s.stat(&Key::new(k).unwrap()).await.expect("stat");
        assert!(
            s.read_bytes(&Key::new(k).unwrap(), None)
                .await
                .expect("get")
                == body
        );
        s.copy(
            &Key::new(k).unwrap(),
            &Key::new(format!("{k}-copy")).unwrap(),
        )
        .await
        .expect("copy");
        let copied = s
            .read_bytes(&Key::new(format!("{k}-copy")).unwrap(), None)
            .await
            .expect("get copy");
        assert!(copied == body, "copy of {k} differs");
    }
    assert!(!format!("{s:?}").contains(&key));
}

/// SSE-KMS and tags on moto: the key id and `aws:kms` come back in stat;
/// the tags (which stat does not show) in GetObjectTagging.
#[tokio::test]
async fn sse_kms_is_reported_by_moto() {
    let Some(emu) = moto() else { return };
    let mut c = config(&emu, "sse-kms");
    let prefix = c.prefix.clone();
    c.upload.sse_kms_key_id = Some("arn:aws:kms:us-east-1:123456789012:key/xferkit-test".into());
    let s = store(c).await;
    let opts = PutOptions::default().with_tag("team", "a b");
    let src = UploadSource::from_bytes(&b"kms"[..]);
    s.upload(&Key::new("k").unwrap(), src, &opts, &TransferCtx::none())
        .await
        .expect("upload");
    let st = s.stat(&Key::new("k").unwrap()).await.expect("stat");
    assert_eq!(st.encryption.as_deref(), Some("aws:kms"), "{st:?}");
    assert_eq!(
        st.encryption_key.as_deref(),
        Some("arn:aws:kms:us-east-1:123456789012:key/xferkit-test")
    );
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let sdk = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&emu.endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .http_client(xferkit_http::smithy_client())
        .build();
    let tagging = aws_sdk_s3::Client::from_conf(sdk)
        .get_object_tagging()
        .bucket(BUCKET)
        .key(format!("{prefix}/k"))
        .send()
        .await
        .expect("GetObjectTagging");
    let tags: Vec<(&str, &str)> = (tagging.tag_set().iter())
        .map(|t| (t.key(), t.value()))
        .collect();
    assert_eq!(tags, [("team", "a b")]);
}
