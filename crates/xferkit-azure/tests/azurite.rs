//! Azure-specific checks against Azurite that the shared suite does not make:
//! the other two credential kinds, error kinds of refused and unreachable
//! requests, and that no secret reaches an error. One test needs no
//! emulator: the encryption scope, which Azurite keeps none of, is checked
//! on the requests a stand-in on 127.0.0.1 records.
//!
//! Needs the same variables as `tests/conformance.rs`. Without them each
//! test passes after printing that it was skipped, unless `CI` or
//! `XFERKIT_REQUIRE_EMULATORS` is set, where a missing emulator fails.

// Test helpers panic on failure by design (clippy.toml only covers `#[test]` fns).
#![allow(clippy::unwrap_used)]

use std::time::Duration;
use xferkit_core::Key;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use xferkit_azure::{AzureConfig, AzureStore};
use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
use xferkit_core::{
    ErrorKind, FileTransferExt, FileTransferHandler, PresignMethod, PutOptions, Secret,
    TransferCtx, UploadSource,
};

const CONTAINER: &str = "xferkit-azure-extra";

struct Emulator {
    endpoint: String,
    account: String,
    key: String,
}

fn emulator(test: &str) -> Option<Emulator> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("XFERKIT_AZURITE_ENDPOINT"),
        get("XFERKIT_AZURITE_ACCOUNT"),
        get("XFERKIT_AZURITE_KEY"),
    ) {
        (Some(endpoint), Some(account), Some(key)) => Some(Emulator {
            endpoint,
            account,
            key,
        }),
        _ => {
            let required = ["CI", "XFERKIT_REQUIRE_EMULATORS"]
                .iter()
                .any(|v| get(v).is_some_and(|s| s != "0" && s != "false"));
            assert!(
                !required,
                "{test}: XFERKIT_AZURITE_* not set and emulators are required"
            );
            eprintln!("{test}: skipped, XFERKIT_AZURITE_* not set (cargo xtask emulators start)");
            None
        }
    }
}

fn prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{test}-{nanos:x}")
}

async fn key_store(emu: &Emulator, prefix: &str) -> AzureStore {
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(emu.endpoint.clone());
    c.account_key = Some(Secret::new(emu.key.clone()));
    c.prefix = prefix.into();
    let s = AzureStore::new("extra", c).await.unwrap();
    s.create_container_if_missing().await.unwrap();
    s
}

/// An hour from now, as a SAS `se`.
fn sas_expiry() -> String {
    (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap()
}

/// A SAS token: `pairs`, then the signature of `string_to_sign` with the
/// account key.
fn signed(emu: &Emulator, string_to_sign: &str, pairs: &[(&str, &str)]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&BASE64.decode(&emu.key).unwrap()).unwrap();
    mac.update(string_to_sign.as_bytes());
    let sig = BASE64.encode(mac.finalize().into_bytes());
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.extend_pairs(pairs);
    q.append_pair("sig", &sig).finish()
}

/// An account SAS signed here, independently of the crate's signer.
fn account_sas(emu: &Emulator) -> String {
    let expiry = sas_expiry();
    let sts = format!(
        "{}\nrwdlac\nb\nsco\n\n{expiry}\n\nhttps,http\n2022-11-02\n\n",
        emu.account
    );
    signed(
        emu,
        &sts,
        &[
            ("sv", "2022-11-02"),
            ("ss", "b"),
            ("srt", "sco"),
            ("sp", "rwdlac"),
            ("se", &expiry),
            ("spr", "https,http"),
        ],
    )
}

/// Every operation but presign, on any store.
async fn exercise(s: &AzureStore) {
    let ctx = TransferCtx::none();
    let body = b"hello azure".to_vec();
    let up = s
        .upload(
            &Key::new("dir/a.txt").unwrap(),
            UploadSource::from_bytes(body.clone()),
            &PutOptions::default().with_metadata("k", "v"),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(up.size, body.len() as u64);
    assert_eq!(
        s.read_bytes(&Key::new("dir/a.txt").unwrap(), None)
            .await
            .unwrap()
            .to_vec(),
        body
    );
    let copied = s
        .copy(
            &Key::new("dir/a.txt").unwrap(),
            &Key::new("dir/b.txt").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(copied.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(copied.content_type.as_deref(), Some("text/plain"));
    let mut keys: Vec<String> = s
        .list("dir/")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys, ["dir/a.txt", "dir/b.txt"]);
    s.delete(&Key::new("dir/a.txt").unwrap()).await.unwrap();
    s.delete(&Key::new("dir/b.txt").unwrap()).await.unwrap();
    assert_eq!(
        s.stat(&Key::new("dir/a.txt").unwrap())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn sas_token_store_works_but_cannot_presign() {
    let Some(emu) = emulator("sas_token_store_works_but_cannot_presign") else {
        return;
    };
    let p = prefix("sas");
    key_store(&emu, &p).await; // creates the container
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(emu.endpoint.clone());
    c.sas_token = Some(Secret::new(format!("?{}", account_sas(&emu))));
    c.prefix = p;
    let s = AzureStore::new("sas", c).await.unwrap();
    exercise(&s).await;
    let e = s
        .presign(
            &Key::new("dir/a.txt").unwrap(),
            PresignMethod::Get,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported);
}

#[tokio::test]
async fn connection_string_store_works() {
    let Some(emu) = emulator("connection_string_store_works") else {
        return;
    };
    let p = prefix("cs");
    key_store(&emu, &p).await;
    let mut c = AzureConfig::new("", CONTAINER);
    c.connection_string = Some(Secret::new(format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
        emu.account, emu.key, emu.endpoint
    )));
    c.prefix = p;
    let s = AzureStore::new("cs", c).await.unwrap();
    exercise(&s).await;
}

/// No `sig=` value, no key in an error's whole chain.
fn assert_no_secret(e: &xferkit_core::Error, emu: &Emulator) {
    let chain = e.chain();
    let debug = format!("{e:?}");
    for text in [&chain, &debug] {
        assert!(!text.contains(&emu.key), "{text}");
        for (i, _) in text.match_indices("sig=") {
            assert!(text[i + 4..].starts_with("<redacted>"), "{text}");
        }
        assert!(!text.contains("sv=2022"), "{text}");
    }
}

#[tokio::test]
async fn wrong_key_is_permission_denied_and_leaks_nothing() {
    let Some(emu) = emulator("wrong_key_is_permission_denied_and_leaks_nothing") else {
        return;
    };
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(emu.endpoint.clone());
    c.account_key = Some(Secret::new(BASE64.encode([7u8; 64])));
    let s = AzureStore::new("wrong", c).await.unwrap();
    let e = s.stat(&Key::new("anything").unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    assert!(
        e.chain()
            .contains(&format!("az://{}/{CONTAINER}/anything", emu.account))
    );
    assert_no_secret(&e, &emu);
    let e = s
        .upload(
            &Key::new("x").unwrap(),
            UploadSource::from_bytes(&b"x"[..]),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    assert_no_secret(&e, &emu);
    // A refused batch request: no key's fate is known, so the whole call fails.
    let e = s
        .delete_many(&[
            Key::new("a".to_string()).unwrap(),
            Key::new("b".to_string()).unwrap(),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    assert!(e.chain().contains("blob batch delete"), "{}", e.chain());
    assert_no_secret(&e, &emu);
}

#[tokio::test]
async fn missing_container_is_not_found() {
    let Some(emu) = emulator("missing_container_is_not_found") else {
        return;
    };
    let mut c = AzureConfig::new(emu.account.clone(), "no-such-container-xk");
    c.endpoint = Some(emu.endpoint.clone());
    c.account_key = Some(Secret::new(emu.key.clone()));
    let s = AzureStore::new("nc", c).await.unwrap();
    let e = s.stat(&Key::new("k").unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());
    assert!(e.chain().contains("ContainerNotFound"), "{}", e.chain());
    assert!(s.delete(&Key::new("k").unwrap()).await.is_ok());
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_and_leaks_nothing() {
    let Some(emu) = emulator("unreachable_endpoint_is_transient_and_leaks_nothing") else {
        return;
    };
    // A port nobody listens on: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(format!("http://127.0.0.1:{port}/{}", emu.account));
    c.account_key = Some(Secret::new(emu.key.clone()));
    let s = AzureStore::new("down", c)
        .await
        .unwrap()
        .with_retry_policy(xferkit_core::RetryPolicy::none());
    let e = s.stat(&Key::new("k").unwrap()).await.unwrap_err();
    // One try (no retries), reported by the retry layer with the transient
    // connection failure as its source.
    assert_eq!(e.kind(), ErrorKind::RetriesExhausted, "{}", e.chain());
    let xferkit_core::Error::RetriesExhausted { source, .. } = &e else {
        unreachable!()
    };
    assert_eq!(source.kind(), ErrorKind::Transient, "{}", e.chain());
    assert!(source.is_retryable());
    assert_no_secret(&e, &emu);
}

#[tokio::test]
async fn presigned_put_without_blob_type_header_is_refused() {
    let Some(emu) = emulator("presigned_put_without_blob_type_header_is_refused") else {
        return;
    };
    let s = key_store(&emu, &prefix("hdr")).await;
    let p = s
        .presign(
            &Key::new("k.bin").unwrap(),
            PresignMethod::Put,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let resp = client.put(&p.url).body("x").send().await.unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let mut req = client.put(&p.url).body("x");
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    assert!(req.send().await.unwrap().status().is_success());
    // A read-only URL does not allow writing.
    let g = s
        .presign(
            &Key::new("k.bin").unwrap(),
            PresignMethod::Get,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let resp = client
        .put(&g.url)
        .header("x-ms-blob-type", "BlockBlob")
        .body("y")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_eq!(
        s.read_bytes(&Key::new("k.bin").unwrap(), None)
            .await
            .unwrap()
            .as_ref(),
        b"x"
    );
    s.delete(&Key::new("k.bin").unwrap()).await.unwrap();
}

/// An encryption scope (Azurite keeps none, so the request is what is
/// checked): a tiny stand-in on 127.0.0.1 records the Put Blob, and the
/// staged path's Put Block and Put Block List, each with
/// `x-ms-encryption-scope`, the access tier and the headers on the commit.
#[tokio::test]
async fn encryption_scope_tier_and_headers_are_sent() {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/acct", listener.local_addr().unwrap());
    type Log = Arc<Mutex<Vec<(String, Vec<String>)>>>;
    let seen: Log = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (mut headers, mut len) = (Vec::new(), 0usize);
                    loop {
                        let mut h = String::new();
                        conn.read_line(&mut h).await.unwrap();
                        let h = h.trim_end().to_string();
                        if h.is_empty() {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if lower.starts_with("x-ms-encryption-scope")
                            || lower.starts_with("x-ms-access-tier")
                            || lower.starts_with("x-ms-blob-cache-control")
                            || lower.starts_with("x-ms-blob-content-language")
                        {
                            headers.push(lower);
                        }
                    }
                    let mut body = vec![0; len];
                    conn.read_exact(&mut body).await.unwrap();
                    headers.sort();
                    let what = match line.split(' ').nth(1).unwrap_or("") {
                        t if t.contains("comp=blocklist") => "Put Block List",
                        t if t.contains("comp=block") => "Put Block",
                        _ => "Put Blob",
                    };
                    log.lock().unwrap().push((what.to_string(), headers));
                    let answer = "HTTP/1.1 201 Created\r\nETag: \"0x1\"\r\n\
                                  Last-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\n\
                                  Content-Length: 0\r\n\r\n";
                    conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    let mut c = AzureConfig::new("acct", "cont");
    c.endpoint = Some(endpoint);
    c.account_key = Some(Secret::new(BASE64.encode([1u8; 32])));
    c.multipart_threshold = 1024 * 1024;
    c.block_size = 1024 * 1024;
    c.concurrency = 1;
    c.upload.encryption_scope = Some("scope1".into());
    c.upload.storage_class = Some("Cool".into());
    c.upload.cache_control = Some("no-cache".into());
    let s = AzureStore::new("mock", c).await.unwrap();
    let mut headers = xferkit_core::ObjectHeaders::default();
    headers.content_language = Some("fr".into());
    let opts = PutOptions::default().with_headers(headers);
    for size in [10, 1024 * 1024 + 1] {
        let src = UploadSource::from_bytes(vec![5u8; size]);
        s.upload(&Key::new("k").unwrap(), src, &opts, &TransferCtx::none())
            .await
            .unwrap();
    }
    let all = [
        "x-ms-access-tier: cool",
        "x-ms-blob-cache-control: no-cache",
        "x-ms-blob-content-language: fr",
        "x-ms-encryption-scope: scope1",
    ]
    .map(String::from)
    .to_vec();
    let scope = vec!["x-ms-encryption-scope: scope1".to_string()];
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            ("Put Blob".to_string(), all.clone()),
            ("Put Block".into(), scope.clone()),
            ("Put Block".into(), scope),
            ("Put Block List".into(), all),
        ]
    );
}

// ---- batch deletes ------------------------------------------------------

/// A service SAS for the whole container (`sr=c`), signed here.
fn container_sas(emu: &Emulator, permissions: &str) -> String {
    let expiry = sas_expiry();
    let sts = format!(
        "{permissions}\n\n{expiry}\n/blob/{}/{CONTAINER}\n\n\nhttps,http\n2022-11-02\nc\n\n\n\n\n\n\n",
        emu.account
    );
    signed(
        emu,
        &sts,
        &[
            ("sv", "2022-11-02"),
            ("spr", "https,http"),
            ("se", &expiry),
            ("sr", "c"),
            ("sp", permissions),
        ],
    )
}

/// Upload a one-byte blob under each of `keys`, 16 at once.
async fn put_all(s: &AzureStore, keys: &[Key]) {
    futures::stream::iter(keys)
        .map(|k| async move {
            s.upload(
                k,
                UploadSource::from_bytes(&b"x"[..]),
                &PutOptions::default(),
                &TransferCtx::none(),
            )
            .await
            .unwrap()
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

/// The requests the proxy saw from `from` on: (method, target without the
/// SAS, so no failure message holds a signature).
fn seen_since(proxy: &FaultProxy, from: usize) -> Vec<(String, String)> {
    proxy.requests()[from..]
        .iter()
        .map(|r| {
            let target = r.target.split("sv=").next().unwrap_or("");
            (r.method.clone(), target.to_string())
        })
        .collect()
}

/// A fault proxy in front of Azurite and a store with the account key
/// under `prefix` that sends its requests through it.
async fn proxied(emu: &Emulator, prefix: &str) -> (FaultProxy, AzureStore) {
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(proxy.endpoint_for(&emu.endpoint));
    c.account_key = Some(Secret::new(emu.key.clone()));
    c.prefix = prefix.into();
    let s = AzureStore::new("proxied", c).await.unwrap();
    (proxy, s)
}

/// `delete_many` of 600 blobs is three Blob Batch requests (256, 256, 88
/// subrequests), account-scoped with the minted account SAS, not 600
/// DELETEs; every key comes back `Ok`, in order, and the blobs are gone.
#[tokio::test]
async fn delete_many_of_600_blobs_is_3_batch_requests() {
    let Some(emu) = emulator("delete_many_of_600_blobs_is_3_batch_requests") else {
        return;
    };
    let p = prefix("batch600");
    let direct = key_store(&emu, &p).await;
    let keys: Vec<Key> = (0..600)
        .map(|i| Key::new(format!("d/k{i:03}")).unwrap())
        .collect();
    put_all(&direct, &keys).await;
    let (proxy, s) = proxied(&emu, &p).await;
    let out = s.delete_many(&keys).await.unwrap();
    assert!(out.iter().map(|(k, _)| k).eq(keys.iter()));
    assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
    let seen = seen_since(&proxy, 0);
    assert_eq!(seen.len(), 3, "{:?} ...", &seen[..seen.len().min(4)]);
    let account_scoped = format!("/{}/?comp=batch&", emu.account);
    for (method, target) in &seen {
        assert_eq!(method, "POST");
        assert_eq!(*target, account_scoped);
    }
    let left: Vec<_> = direct.list("d/").try_collect().await.unwrap();
    assert!(left.is_empty(), "{} blobs left", left.len());
}

/// Existing blobs (names with a space, `+`, `%` and non-ASCII, which travel
/// percent-encoded in the subrequests' paths), a missing one, a leased one
/// (Azurite refuses its delete: 412 `LeaseIdMissing`), in one call: the
/// existing and missing ones are `Ok`, the leased one `PreconditionFailed`
/// naming its URL and the service's code, and stays. No secret in errors.
#[tokio::test]
async fn delete_many_reports_a_leased_blob_and_deletes_the_others() {
    let Some(emu) = emulator("delete_many_reports_a_leased_blob_and_deletes_the_others") else {
        return;
    };
    let p = prefix("batchmix");
    let s = key_store(&emu, &p).await;
    let present = ["a b+c%.txt", "dir/ünï.txt", "leased"].map(|k| Key::new(k).unwrap());
    put_all(&s, &present).await;
    let sas = account_sas(&emu);
    let lease_url = format!("{}/{CONTAINER}/{p}/leased?comp=lease&{sas}", emu.endpoint);
    let client = reqwest::Client::new();
    let lease = |action: &'static str, id: Option<String>| {
        let mut req = client
            .put(&lease_url)
            .header("x-ms-version", "2021-12-02")
            .header("x-ms-lease-action", action)
            .header("x-ms-lease-duration", "-1");
        if let Some(id) = id {
            req = req.header("x-ms-lease-id", id);
        }
        req.send()
    };
    let rsp = lease("acquire", None).await.unwrap();
    assert_eq!(rsp.status(), 201);
    let lease_id = rsp.headers()["x-ms-lease-id"].to_str().unwrap().to_string();

    let keys = ["a b+c%.txt", "missing", "leased", "dir/ünï.txt"].map(|k| Key::new(k).unwrap());
    let out = s.delete_many(&keys).await.unwrap();
    assert!(out.iter().map(|(k, _)| k).eq(keys.iter()));
    for i in [0, 1, 3] {
        assert!(out[i].1.is_ok(), "{}: {:?}", keys[i], out[i].1);
    }
    let leased = out[2].1.as_ref().unwrap_err();
    assert_eq!(
        leased.kind(),
        ErrorKind::PreconditionFailed,
        "{}",
        leased.chain()
    );
    let chain = leased.chain();
    assert!(
        chain.contains(&format!("az://{}/{CONTAINER}/{p}/leased", emu.account))
            && chain.contains("HTTP 412 LeaseIdMissing"),
        "{chain}"
    );
    assert_no_secret(leased, &emu);
    for k in ["a b+c%.txt", "dir/ünï.txt"] {
        assert_eq!(
            s.stat(&Key::new(k).unwrap()).await.unwrap_err().kind(),
            ErrorKind::NotFound,
            "{k}"
        );
    }
    assert!(
        s.stat(&Key::new("leased").unwrap()).await.is_ok(),
        "the leased blob was deleted"
    );

    let rsp = lease("release", Some(lease_id)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    s.delete(&Key::new("leased").unwrap()).await.unwrap();
}

/// A store whose SAS is a service SAS for the container (`sr=c`) sends
/// container-scoped batches (`?restype=container&comp=batch`), which that
/// SAS authorizes; Azurite deletes through them.
#[tokio::test]
async fn a_container_sas_store_sends_container_scoped_batches() {
    let Some(emu) = emulator("a_container_sas_store_sends_container_scoped_batches") else {
        return;
    };
    let p = prefix("batchsr");
    key_store(&emu, &p).await; // creates the container
    let proxy = FaultProxy::start(&emu.endpoint).await.unwrap();
    let mut c = AzureConfig::new(emu.account.clone(), CONTAINER);
    c.endpoint = Some(proxy.endpoint_for(&emu.endpoint));
    c.sas_token = Some(Secret::new(container_sas(&emu, "racwdl")));
    c.prefix = p;
    let s = AzureStore::new("container-sas", c).await.unwrap();
    let keys = ["k1", "k2", "never"].map(|k| Key::new(k).unwrap());
    put_all(&s, &keys[..2]).await;
    let before = proxy.requests().len();
    let out = s.delete_many(&keys).await.unwrap();
    assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
    let seen = seen_since(&proxy, before);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0],
        (
            "POST".to_string(),
            format!("/{}/{CONTAINER}?restype=container&comp=batch&", emu.account)
        )
    );
    for k in &keys[..2] {
        assert_eq!(
            s.stat(&Key::new(k).unwrap()).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}

/// A batch request answered 503 is sent again under the store's retry
/// policy (one retry layer, no SDK retries), and then deletes everything.
#[tokio::test]
async fn a_refused_batch_request_is_retried() {
    let Some(emu) = emulator("a_refused_batch_request_is_retried") else {
        return;
    };
    let p = prefix("batchretry");
    let direct = key_store(&emu, &p).await;
    let keys: Vec<Key> = (0..3).map(|i| Key::new(format!("r{i}")).unwrap()).collect();
    put_all(&direct, &keys).await;
    let (proxy, s) = proxied(&emu, &p).await;
    let s = s.with_retry_policy(xferkit_conformance::testkit::quick_retry(3));
    proxy.set_rules(vec![
        Rule::new(Fault::Status(503))
            .method("POST")
            .path_contains("comp=batch")
            .times(1),
    ]);
    let out = s.delete_many(&keys).await.unwrap();
    assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
    assert_eq!(proxy.stats().statuses, 1);
    assert_eq!(seen_since(&proxy, 0).len(), 2);
    for k in &keys {
        assert_eq!(
            direct.stat(&Key::new(k).unwrap()).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
