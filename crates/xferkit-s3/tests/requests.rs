//! What the store puts on the wire, seen by a tiny S3 stand-in on
//! 127.0.0.1 that records every request: the region a request is signed for
//! (from the config, the SDK's environment and profile chain, or the
//! endpoint fallback), and the checksum headers of each `checksum` choice.
//!
//! The region cases need environment variables and AWS config files of
//! their own. Setting variables in a running test is unsafe (edition 2024)
//! and would leak into the tests beside it, so each case runs this test
//! binary again as a child process with its own environment (see
//! [`child_case`]), which prints the credential scope it signed with.
#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use xferkit_core::Key;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use xferkit_core::{
    ErrorKind, FileTransferHandler, PutOptions, RetryPolicy, Secret, TransferCtx, UploadSource,
};
use xferkit_s3::{S3Checksum, S3Config, S3Store};

const MIB: usize = 1024 * 1024;

/// One request as the stand-in received it (header names lower-case).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// What the request is, by S3 operation.
    fn op(&self) -> &'static str {
        let t = &self.target;
        match self.method.as_str() {
            "PUT" if t.contains("partNumber=") => "UploadPart",
            "PUT" => "PutObject",
            "POST" if t.contains("?uploads") => "CreateMultipartUpload",
            "POST" if t.contains("uploadId=") => "CompleteMultipartUpload",
            "POST" if t.contains("?delete") => "DeleteObjects",
            "HEAD" => "HeadObject",
            "DELETE" => "DeleteObject",
            _ => "other",
        }
    }

    /// Every checksum header, and the trailer of an `aws-chunked` body,
    /// as `name: value` (the `x-amz-checksum-type` too).
    fn checksums(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .headers
            .iter()
            .filter(|(k, _)| {
                k.starts_with("x-amz-checksum")
                    || k.starts_with("x-amz-sdk-checksum")
                    || *k == "x-amz-trailer"
                    || *k == "content-md5"
            })
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if self.header("content-encoding") == Some("aws-chunked") {
            let body = String::from_utf8_lossy(&self.body);
            for line in body.lines() {
                if line.starts_with("x-amz-checksum-") {
                    out.push(format!("trailer {line}"));
                }
            }
        }
        let n = String::from_utf8_lossy(&self.body)
            .matches("<ChecksumCRC32C>")
            .count();
        if n > 0 {
            out.push(format!("body: {n} ChecksumCRC32C"));
        }
        out.sort();
        out
    }
}

/// An S3 stand-in: answers what an upload and a stat need, remembers
/// every request.
struct Mock {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, log).await;
                });
            }
        });
        Mock { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(conn: tokio::net::TcpStream, log: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let mut conn = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let (method, target) = (
            words.next().unwrap_or("").to_string(),
            words.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            conn.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        assert!(
            !headers.contains_key("transfer-encoding"),
            "the stand-in reads Content-Length bodies only: {headers:?}"
        );
        if headers.get("expect").is_some_and(|v| v == "100-continue") {
            conn.get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await?;
        let seen = Seen {
            method,
            target,
            headers,
            body,
        };
        let (status, extra, payload) = match seen.op() {
            "HeadObject" => ("404 Not Found", "", String::new()),
            "UploadPart" | "PutObject" => ("200 OK", "ETag: \"e\"\r\n", String::new()),
            "CreateMultipartUpload" => (
                "200 OK",
                "",
                "<InitiateMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key>\
                 <UploadId>UP1</UploadId></InitiateMultipartUploadResult>"
                    .to_string(),
            ),
            // Key `denied` is refused, `gone` was not there: both per key.
            "DeleteObjects" => (
                "200 OK",
                "",
                "<DeleteResult>\
                 <Error><Key>denied</Key><Code>AccessDenied</Code><Message>no</Message></Error>\
                 <Error><Key>gone</Key><Code>NoSuchKey</Code><Message>none</Message></Error>\
                 </DeleteResult>"
                    .to_string(),
            ),
            "CompleteMultipartUpload" => (
                "200 OK",
                "",
                "<CompleteMultipartUploadResult><Bucket>bkt</Bucket><Key>k</Key>\
                 <ETag>\"e-2\"</ETag></CompleteMultipartUploadResult>"
                    .to_string(),
            ),
            _ => ("200 OK", "", String::new()),
        };
        log.lock().unwrap().push(seen);
        let answer = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        conn.get_mut().write_all(answer.as_bytes()).await?;
    }
}

fn config(endpoint: &str) -> S3Config {
    let mut c = S3Config::new("bkt");
    c.endpoint = Some(endpoint.to_string());
    c.force_path_style = true;
    c.access_key_id = Some("AKIDSTATIC".into());
    c.secret_access_key = Some(Secret::new("static-secret"));
    c
}

/// The credential scope of a signed request without its date:
/// `KEYID/REGION/s3/aws4_request`.
fn scope(seen: &Seen) -> String {
    let auth = seen.header("authorization").expect("a signed request");
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split(',').next())
        .expect("a credential scope");
    let parts: Vec<&str> = cred.split('/').collect();
    format!("{}/{}", parts[0], parts[2..].join("/"))
}

// ---- region -------------------------------------------------------------

/// The child side of [`region_comes_from_config_then_sdk_chain_then_endpoint`]:
/// does nothing unless `XFERKIT_S3_REGION_CASE` is set. The case is
/// `KEY=VALUE` pairs separated by `;`: `region`, `profile`, `endpoint=no`
/// (no custom endpoint), `static=no` (credentials from the SDK chain).
/// Prints `SCOPE KEYID/REGION/s3/aws4_request` of the stat it signed, or
/// `ERROR kind: message` when the store could not be built.
#[tokio::test]
async fn child_case() {
    let Ok(case) = std::env::var("XFERKIT_S3_REGION_CASE") else {
        return;
    };
    let case: HashMap<&str, &str> = case
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mock = Mock::start().await;
    let mut c = config(&mock.url);
    c.region = case.get("region").map(|r| r.to_string());
    c.profile = case.get("profile").map(|p| p.to_string());
    if case.get("endpoint") == Some(&"no") {
        c.endpoint = None;
        c.force_path_style = false;
    }
    if case.get("static") == Some(&"no") {
        c.access_key_id = None;
        c.secret_access_key = None;
    }
    let store = match S3Store::new("media", c).await {
        Ok(s) => s.with_retry_policy(RetryPolicy::none()),
        Err(e) => {
            println!("ERROR {:?}: {e}", e.kind());
            return;
        }
    };
    let e = store.stat(&Key::new("k").unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
    let seen = mock.seen();
    println!("SCOPE {}", scope(&seen[0]));
}

/// Run [`child_case`] with `case` in an environment holding only `env` of
/// the AWS variables, with AWS config files of its own (`profiles`, written
/// as `~/.aws/config`); its one output line.
fn run_case(case: &str, env: &[(&str, &str)], profiles: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let config_file = home.path().join("config");
    std::fs::write(&config_file, profiles).unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_case", "--exact", "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &config_file)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("XFERKIT_S3_REGION_CASE", case)
        .envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| {
            // libtest prints `test child_case ... ` before it on the line.
            let at = l.find("SCOPE ").or_else(|| l.find("ERROR "))?;
            Some(&l[at + 6..])
        })
        .unwrap_or_else(|| panic!("{case}: no result in {stdout}"))
        .to_string()
}

/// The region a request is signed for: `region` if set; else `AWS_REGION`,
/// then `AWS_DEFAULT_REGION`, then the profile's; else `us-east-1` for a
/// custom endpoint, and an error naming the key without one. `profile`
/// gives credentials and region alike.
#[test]
fn region_comes_from_config_then_sdk_chain_then_endpoint() {
    let profiles = "[default]\nregion = eu-north-1\n\n\
                    [profile media]\nregion = sa-east-1\n\
                    aws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n";
    let both = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_DEFAULT_REGION", "us-west-2"),
    ];
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case<'_>] = &[
        // What issue 16 found: AWS_REGION was ignored for us-east-1.
        (
            "static=yes",
            &both,
            "",
            "AKIDSTATIC/eu-west-1/s3/aws4_request",
        ),
        (
            "static=yes",
            &[("AWS_DEFAULT_REGION", "us-west-2")],
            "",
            "AKIDSTATIC/us-west-2/s3/aws4_request",
        ),
        (
            "region=ap-south-1",
            &both,
            profiles,
            "AKIDSTATIC/ap-south-1/s3/aws4_request",
        ),
        // The environment before the profile, as in the SDK.
        (
            "static=yes",
            &both,
            profiles,
            "AKIDSTATIC/eu-west-1/s3/aws4_request",
        ),
        (
            "static=yes",
            &[],
            profiles,
            "AKIDSTATIC/eu-north-1/s3/aws4_request",
        ),
        (
            "profile=media;static=no",
            &[],
            profiles,
            "AKIDPROFILE/sa-east-1/s3/aws4_request",
        ),
        (
            "static=no",
            &[("AWS_PROFILE", "media")],
            profiles,
            "AKIDPROFILE/sa-east-1/s3/aws4_request",
        ),
        // No region anywhere: a custom endpoint signs for us-east-1 ...
        (
            "static=yes",
            &[],
            "",
            "AKIDSTATIC/us-east-1/s3/aws4_request",
        ),
    ];
    for &(case, env, profiles, want) in cases {
        assert_eq!(run_case(case, env, profiles), want, "{case} {env:?}");
    }
    // ... AWS itself needs one.
    let e = run_case("endpoint=no", &[], "");
    assert!(e.starts_with("InvalidConfig: "), "{e}");
    assert!(e.contains("configuration: region is not set"), "{e}");
    assert!(e.contains("AWS_REGION"), "{e}");
}

// ---- checksums ----------------------------------------------------------

/// An upload of `source` with `checksum`: the requests the stand-in saw,
/// as (operation, checksum headers), HEADs left out.
async fn upload(checksum: S3Checksum, source: UploadSource) -> Vec<(String, Vec<String>)> {
    let mock = Mock::start().await;
    let mut c = config(&mock.url);
    c.region = Some("us-east-1".into());
    c.checksum = checksum;
    c.part_size = 5 * MIB as u64;
    c.multipart_threshold = 5 * MIB as u64;
    c.concurrency = 1;
    let store = S3Store::new("media", c).await.unwrap();
    let ctx = TransferCtx::default();
    store
        .upload(
            &Key::new("k").unwrap(),
            source,
            &PutOptions::default(),
            &ctx,
        )
        .await
        .unwrap();
    mock.seen()
        .iter()
        .filter(|s| s.op() != "HeadObject")
        .map(|s| (s.op().to_string(), s.checksums()))
        .collect()
}

fn crc(data: &[u8]) -> String {
    BASE64.encode(crc32c::crc32c(data).to_be_bytes())
}

fn md5(data: &[u8]) -> String {
    use md5::Digest;
    BASE64.encode(md5::Md5::digest(data))
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn row(op: &str, headers: &[String]) -> (String, Vec<String>) {
    let mut h = headers.to_vec();
    h.sort();
    (op.to_string(), h)
}

/// One-request uploads, from memory and from a file, for each choice.
#[tokio::test]
async fn put_object_checksum_headers_per_choice() {
    let small = data(1000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small");
    std::fs::write(&file, &small).unwrap();
    let sources = || {
        [
            UploadSource::from_bytes(small.clone()),
            UploadSource::Path(file.clone()),
        ]
    };
    for source in sources() {
        let sent = upload(S3Checksum::Crc32c, source).await;
        // Computed by the SDK (this SDK version sends it as a header for a
        // body of known length, also from a file).
        let want = [
            format!("x-amz-checksum-crc32c: {}", crc(&small)),
            "x-amz-sdk-checksum-algorithm: CRC32C".into(),
        ];
        assert_eq!(sent, vec![row("PutObject", &want)]);
    }
    for source in sources() {
        let sent = upload(S3Checksum::Md5, source).await;
        assert_eq!(
            sent,
            vec![row("PutObject", &[format!("content-md5: {}", md5(&small))])]
        );
    }
    for source in sources() {
        let sent = upload(S3Checksum::None, source).await;
        assert_eq!(sent, vec![row("PutObject", &[])]);
    }
}

/// A multipart upload of 6 MiB (parts of 5 and 1 MiB) for each choice:
/// the exact checksum headers of every request.
#[tokio::test]
async fn multipart_checksum_headers_per_choice() {
    let big = data(6 * MIB);
    let (p1, p2) = big.split_at(5 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, &big).unwrap();
    let source = || UploadSource::Path(file.clone());

    let sent = upload(S3Checksum::Crc32c, source()).await;
    assert_eq!(
        sent,
        vec![
            row(
                "CreateMultipartUpload",
                &[
                    "x-amz-checksum-algorithm: CRC32C".into(),
                    "x-amz-checksum-type: FULL_OBJECT".into()
                ]
            ),
            row(
                "UploadPart",
                &[format!("x-amz-checksum-crc32c: {}", crc(p1))]
            ),
            row(
                "UploadPart",
                &[format!("x-amz-checksum-crc32c: {}", crc(p2))]
            ),
            row(
                "CompleteMultipartUpload",
                &[
                    "body: 2 ChecksumCRC32C".into(),
                    format!("x-amz-checksum-crc32c: {}", crc(&big)),
                    "x-amz-checksum-type: FULL_OBJECT".into()
                ]
            ),
        ]
    );

    let sent = upload(S3Checksum::Md5, source()).await;
    assert_eq!(
        sent,
        vec![
            row("CreateMultipartUpload", &[]),
            row("UploadPart", &[format!("content-md5: {}", md5(p1))]),
            row("UploadPart", &[format!("content-md5: {}", md5(p2))]),
            row("CompleteMultipartUpload", &[]),
        ]
    );

    let sent = upload(S3Checksum::None, source()).await;
    assert_eq!(
        sent,
        vec![
            row("CreateMultipartUpload", &[]),
            row("UploadPart", &[]),
            row("UploadPart", &[]),
            row("CompleteMultipartUpload", &[]),
        ]
    );
}

// ---- server-side options ------------------------------------------------

/// The server-side option headers of a request (no emulator checks KMS or
/// SSE-C: this is where they are proven).
fn server_headers(seen: &Seen) -> Vec<String> {
    let mut out: Vec<String> = (seen.headers.iter())
        .filter(|(k, _)| {
            k.starts_with("x-amz-server-side-encryption")
                || ["x-amz-storage-class", "x-amz-tagging", "cache-control"].contains(&k.as_str())
                || ["content-disposition", "content-language"].contains(&k.as_str())
                || (*k == "content-encoding"
                    && !seen.checksums().iter().any(|c| c.starts_with("trailer")))
        })
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.sort();
    out
}

/// SSE-KMS with a key id and a Bucket Key, storage class and a header from
/// the store's config; another header, a tag and an override per upload:
/// the PutObject carries each, the upload's own winning.
#[tokio::test]
async fn kms_storage_class_headers_and_tags_on_put_object() {
    let mock = Mock::start().await;
    let mut c = config(&mock.url);
    c.region = Some("us-east-1".into());
    c.upload.sse = Some(xferkit_core::SseMode::Kms);
    c.upload.sse_kms_key_id = Some("arn:aws:kms:us-east-1:111122223333:key/k1".into());
    c.upload.sse_bucket_key = Some(true);
    c.upload.storage_class = Some("STANDARD_IA".into());
    c.upload.cache_control = Some("max-age=60".into());
    c.upload.content_language = Some("de".into());
    let store = S3Store::new("media", c).await.unwrap();
    let mut headers = xferkit_core::ObjectHeaders::default();
    headers.cache_control = Some("no-store".into());
    headers.content_disposition = Some("attachment; filename=\"a b.txt\"".into());
    let opts = PutOptions::default()
        .with_headers(headers)
        .with_tag("team", "a&b")
        .with_tag("env", "prod");
    let data = UploadSource::from_bytes(&b"hello"[..]);
    let ctx = TransferCtx::default();
    let got = store
        .upload(&Key::new("k.txt").unwrap(), data, &opts, &ctx)
        .await
        .unwrap();
    assert_eq!(got.headers.cache_control.as_deref(), Some("no-store"));
    let puts: Vec<Vec<String>> = (mock.seen().iter())
        .filter(|s| s.op() == "PutObject")
        .map(server_headers)
        .collect();
    assert_eq!(
        puts,
        vec![vec![
            "cache-control: no-store".to_string(),
            "content-disposition: attachment; filename=\"a b.txt\"".into(),
            "content-language: de".into(),
            "x-amz-server-side-encryption-aws-kms-key-id: arn:aws:kms:us-east-1:111122223333:key/k1"
                .into(),
            "x-amz-server-side-encryption-bucket-key-enabled: true".into(),
            "x-amz-server-side-encryption: aws:kms".into(),
            "x-amz-storage-class: STANDARD_IA".into(),
            "x-amz-tagging: env=prod&team=a%26b".into(),
        ]]
    );
}

/// SSE-S3 per upload on a multipart upload: on CreateMultipartUpload only
/// (S3 refuses it on UploadPart).
#[tokio::test]
async fn sse_s3_goes_on_create_multipart_upload() {
    let mock = Mock::start().await;
    let mut c = config(&mock.url);
    c.region = Some("us-east-1".into());
    (c.part_size, c.multipart_threshold) = (5 * MIB as u64, 5 * MIB as u64);
    let store = S3Store::new("media", c).await.unwrap();
    let opts = PutOptions::default()
        .with_encryption(xferkit_core::ServerEncryption::ServiceManaged)
        .with_storage_class("GLACIER_IR");
    let src = UploadSource::from_bytes(data(6 * MIB));
    let ctx = TransferCtx::default();
    store
        .upload(&Key::new("k").unwrap(), src, &opts, &ctx)
        .await
        .unwrap();
    let sent: Vec<(String, Vec<String>)> = (mock.seen().iter())
        .filter(|s| s.op() != "HeadObject")
        .map(|s| (s.op().to_string(), server_headers(s)))
        .collect();
    let create = vec![
        "x-amz-server-side-encryption: AES256".to_string(),
        "x-amz-storage-class: GLACIER_IR".into(),
    ];
    assert_eq!(
        sent,
        vec![
            ("CreateMultipartUpload".to_string(), create),
            ("UploadPart".into(), vec![]),
            ("UploadPart".into(), vec![]),
            ("CompleteMultipartUpload".into(), vec![]),
        ]
    );
}

/// SSE-C from the store's config: the key and its MD5 go on every request
/// that writes or reads the object (CreateMultipartUpload, each UploadPart,
/// HEAD, GET), never on the complete; the key shows in no Debug or error.
#[tokio::test]
async fn sse_c_key_goes_on_every_write_and_read() {
    let key = BASE64.encode([7u8; 32]);
    let key_md5 = md5(&[7u8; 32]);
    let mock = Mock::start().await;
    let mut c = config(&mock.url);
    c.region = Some("us-east-1".into());
    (c.part_size, c.multipart_threshold) = (5 * MIB as u64, 5 * MIB as u64);
    c.upload.sse_customer_key = Some(Secret::new(key.clone()));
    assert!(!format!("{c:?}").contains(&key));
    let store = S3Store::new("media", c).await.unwrap();
    assert!(!format!("{store:?}").contains(&key));
    let src = UploadSource::from_bytes(data(6 * MIB));
    let ctx = TransferCtx::default();
    store
        .upload(&Key::new("k").unwrap(), src, &PutOptions::default(), &ctx)
        .await
        .unwrap();
    let err = store.stat(&Key::new("k").unwrap()).await.unwrap_err(); // the stand-in has no objects
    assert!(!format!("{err} {err:?}").contains(&key));
    let _ = store.download_stream(&Key::new("k").unwrap(), None).await;
    let sse_c = vec![
        "x-amz-server-side-encryption-customer-algorithm: AES256".to_string(),
        format!("x-amz-server-side-encryption-customer-key-md5: {key_md5}"),
        format!("x-amz-server-side-encryption-customer-key: {key}"),
    ];
    let sent: Vec<(String, Vec<String>)> = (mock.seen().iter())
        .map(|s| (s.op().to_string(), server_headers(s)))
        .collect();
    assert_eq!(
        sent,
        vec![
            ("CreateMultipartUpload".to_string(), sse_c.clone()),
            ("UploadPart".into(), sse_c.clone()),
            ("UploadPart".into(), sse_c.clone()),
            ("CompleteMultipartUpload".into(), vec![]),
            // the engine asks for the stored CRC32C the complete did not report
            ("HeadObject".into(), sse_c.clone()),
            ("HeadObject".into(), sse_c.clone()), // stat
            ("other".into(), sse_c.clone()),      // the GET
        ]
    );
}

/// Keys the backend does not honour are unknown to it; a bad SSE-C key or
/// conflicting SSE keys are refused naming the key, before any request.
#[tokio::test]
async fn bad_server_side_defaults_are_refused_naming_the_key() {
    let refused = |f: fn(&mut S3Config)| async move {
        let mut c = config("http://127.0.0.1:9");
        c.region = Some("us-east-1".into());
        f(&mut c);
        S3Store::new("media", c).await.unwrap_err().to_string()
    };
    let e = refused(|c| c.upload.sse_customer_key = Some(Secret::new("c2hvcnQ="))).await;
    assert!(
        e.contains("configuration: sse_customer_key ") && e.contains("32 bytes"),
        "{e}"
    );
    assert!(!e.contains("c2hvcnQ="), "{e}");
    let e = refused(|c| {
        c.upload.sse = Some(xferkit_core::SseMode::S3);
        c.upload.sse_kms_key_id = Some("k".into());
    })
    .await;
    assert!(e.contains("configuration: sse_kms_key_id "), "{e}");
    let e = refused(|c| c.upload.encryption_scope = Some("scope".into())).await;
    assert!(
        e.contains("configuration: encryption_scope ") && e.contains("not supported"),
        "{e}"
    );
    let keys = <S3Store as xferkit_core::Backend>::keys();
    assert!(!keys.contains(&"encryption_scope"), "{keys:?}");
    for k in [
        "bucket",
        "aws_region",
        "endpoint_url",
        "sse_bucket_key",
        "tags",
    ] {
        assert!(keys.contains(&k), "{k}: {keys:?}");
    }
}

// ---- batch deletes ------------------------------------------------------

/// `delete_many` is one DeleteObjects request (quiet, the keys in its body,
/// per-key errors mapped, a missing key fine) with `checksum = "crc32c"`;
/// with `"md5"` and `"none"`, whose stores refuse the checksum header
/// DeleteObjects must carry, one DeleteObject per key.
#[tokio::test]
async fn delete_many_is_one_delete_objects_request_or_one_delete_per_key() {
    for checksum in [S3Checksum::Crc32c, S3Checksum::Md5, S3Checksum::None] {
        let mock = Mock::start().await;
        let mut c = config(&mock.url);
        c.region = Some("us-east-1".into());
        c.checksum = checksum;
        let store = S3Store::new("media", c).await.unwrap();
        let keys = ["a", "denied", "gone"].map(|k| Key::new(k).unwrap());
        let out = store.delete_many(&keys).await.unwrap();
        let kinds: Vec<(&str, Option<ErrorKind>)> = out
            .iter()
            .map(|(k, r)| (k.as_str(), r.as_ref().err().map(|e| e.kind())))
            .collect();
        let seen = mock.seen();
        let ops: Vec<&str> = seen.iter().map(Seen::op).collect();
        if checksum == S3Checksum::Crc32c {
            assert_eq!(ops, ["DeleteObjects"], "{checksum:?}");
            let body = String::from_utf8_lossy(&seen[0].body);
            assert!(body.contains("<Quiet>true</Quiet>"), "{body}");
            assert_eq!(body.matches("<Key>").count(), 3, "{body}");
            assert_eq!(
                kinds,
                [
                    ("a", None),
                    ("denied", Some(ErrorKind::PermissionDenied)),
                    ("gone", None),
                ]
            );
        } else {
            assert_eq!(ops, ["DeleteObject"; 3], "{checksum:?}");
            assert!(
                seen.iter().all(|s| s.checksums().is_empty()),
                "{checksum:?}: {seen:?}"
            );
            assert!(kinds[..3].iter().all(|(_, k)| k.is_none()), "{kinds:?}");
        }
    }
}

/// A presigned PUT of a store with defaults signs them in and lists them as
/// headers the uploader must send; a store with an SSE-C key presigns
/// nothing (the key would have to travel with the link).
#[tokio::test]
async fn presigned_put_carries_the_store_defaults_and_sse_c_refuses() {
    let mut c = config("http://127.0.0.1:9");
    c.region = Some("us-east-1".into());
    c.upload.sse_kms_key_id = Some("alias/k".into());
    c.upload.storage_class = Some("STANDARD_IA".into());
    let store = S3Store::new("media", c).await.unwrap();
    let day = std::time::Duration::from_secs(3600);
    let p = store
        .presign(
            &Key::new("k").unwrap(),
            xferkit_core::PresignMethod::Put,
            day,
        )
        .await
        .unwrap();
    let mut headers: Vec<String> = (p.headers.iter())
        .filter(|(k, _)| k.starts_with("x-amz-s"))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    headers.sort();
    assert_eq!(
        headers,
        [
            "x-amz-server-side-encryption-aws-kms-key-id: alias/k",
            "x-amz-server-side-encryption: aws:kms",
            "x-amz-storage-class: STANDARD_IA",
        ]
    );
    assert!(p.url.contains("x-amz-storage-class"), "signed: {}", p.url);
    let mut c = config("http://127.0.0.1:9");
    c.region = Some("us-east-1".into());
    c.upload.sse_customer_key = Some(Secret::new(BASE64.encode([3u8; 32])));
    let store = S3Store::new("media", c).await.unwrap();
    assert!(!store.capabilities().presign_get);
    let e = store
        .presign(
            &Key::new("k").unwrap(),
            xferkit_core::PresignMethod::Put,
            day,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported, "{e}");
}
