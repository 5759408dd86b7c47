//! `xferkit-serve` in front of a local store, driven with a plain HTTP client.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use xferkit_core::Key;

use xferkit_core::{FileTransferHandler, PresignMethod, PutOptions, Secret, TransferCtx};
use xferkit_local::signed::UrlSigner;
use xferkit_local::{LocalConfig, LocalStore};
use xferkit_serve::{ServeOptions, Server, router};

const KEY: &str = "serve-test-signing-key-0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<LocalStore>,
    signer: UrlSigner,
    base: String,
    http: reqwest::Client,
    _server: Server,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/files", listener.local_addr().unwrap());
    let store = Arc::new(
        LocalStore::new(
            "local",
            LocalConfig::with_root(dir.path()).with_serve(&base, Secret::new(KEY)),
        )
        .await
        .unwrap(),
    );
    let signer = store.serve_config().unwrap().1.clone();
    let app = router(
        store.clone(),
        signer.clone(),
        ServeOptions::for_serve_url(&base),
    );
    let server = Server::start(listener, app).unwrap();
    Fixture {
        root: store.root().to_path_buf(),
        _dir: dir,
        store,
        signer,
        base,
        http: reqwest::Client::new(),
        _server: server,
    }
}

impl Fixture {
    async fn put_object(&self, key: &str, data: &[u8]) {
        self.store
            .upload(
                &Key::new(key).unwrap(),
                xferkit_core::UploadSource::from_bytes(data.to_vec()),
                &PutOptions::default().with_content_type("text/plain"),
                &TransferCtx::none(),
            )
            .await
            .unwrap();
    }

    async fn presign(&self, key: &str, m: PresignMethod) -> String {
        self.store
            .presign(&Key::new(key).unwrap(), m, Duration::from_secs(300))
            .await
            .unwrap()
            .url
    }

    /// Every file under the root except the store's own bookkeeping.
    fn files(&self) -> Vec<PathBuf> {
        common::store_files(&self.root)
    }
}

fn with_param(url: &str, name: &str, value: &str) -> String {
    let (head, q) = url.split_once('?').unwrap();
    let q: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={value}"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}?{}", q.join("&"))
}

fn param<'u>(url: &'u str, name: &str) -> &'u str {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
}

#[tokio::test]
async fn signed_get_serves_bytes_type_etag_and_ranges() {
    let f = fixture().await;
    f.put_object("docs/a b.txt", b"hello, served world").await;
    let url = f.presign("docs/a b.txt", PresignMethod::Get).await;
    assert!(
        url.starts_with(&format!("{}/docs/a%20b.txt?", f.base)),
        "{url}"
    );

    let r = f.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "{etag}");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello, served world");

    let r = f
        .http
        .get(&url)
        .header("range", "bytes=7-12")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 7-12/19");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"served");

    let r = f
        .http
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"world");

    let r = f
        .http
        .get(&url)
        .header("range", "bytes=50-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */19");

    let r = f
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    let r = f.http.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "19");
    assert!(r.bytes().await.unwrap().is_empty());

    let missing = f.presign("docs/missing.txt", PresignMethod::Get).await;
    assert_eq!(f.http.get(&missing).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn tampered_unsigned_and_wrong_method_requests_get_403_and_touch_nothing() {
    let f = fixture().await;
    f.put_object("a.txt", b"original").await;
    let get = f.presign("a.txt", PresignMethod::Get).await;
    let put = f.presign("a.txt", PresignMethod::Put).await;
    let before = f.files();

    let later = (param(&get, "expires").parse::<u64>().unwrap() + 86_400).to_string();
    let sig = param(&get, "sig").to_string();
    let mut flipped = sig.clone().into_bytes();
    flipped[10] = if flipped[10] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).unwrap();
    let refused_gets = [
        get.split('?').next().unwrap().to_string(), // unsigned
        get.replace("/a.txt?", "/b.txt?"),          // other key, same signature
        with_param(&get, "expires", &later),        // extended expiry
        with_param(&get, "sig", &flipped),          // one hex digit changed
        with_param(&get, "sig", "not-hex"),         // malformed
        put.clone(),                                // PUT URL used for GET
    ];
    for url in &refused_gets {
        let r = f.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 403, "GET {url}");
        let body = r.text().await.unwrap();
        assert!(!body.contains(KEY), "the key must never be echoed");
    }

    let refused_puts = [
        put.split('?').next().unwrap().to_string(),
        put.replace("/a.txt?", "/b.txt?"),
        with_param(&put, "expires", &later),
        get.clone(), // GET URL used for PUT
    ];
    for url in &refused_puts {
        let r = f.http.put(url).body("overwritten").send().await.unwrap();
        assert_eq!(r.status(), 403, "PUT {url}");
    }
    assert_eq!(
        f.files(),
        before,
        "a refused request must not touch the disk"
    );
    assert_eq!(std::fs::read(f.root.join("a.txt")).unwrap(), b"original");

    let r = f.http.delete(&get).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn expired_urls_are_refused() {
    let f = fixture().await;
    f.put_object("e.txt", b"x").await;
    let url = f
        .store
        .presign(
            &Key::new("e.txt").unwrap(),
            PresignMethod::Get,
            Duration::from_secs(1),
        )
        .await
        .unwrap()
        .url;
    // The signer rounds expiry up to the next whole second: wait past it.
    let expires: u64 = param(&url, "expires").parse().unwrap();
    loop {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if now > expires {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = f.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("expired"));
}

#[tokio::test]
async fn signed_put_stores_atomically_and_create_only_is_honoured() {
    let f = fixture().await;
    let put = f.presign("up/new.bin", PresignMethod::Put).await;
    let data = vec![7u8; 3 * 1024 * 1024 + 5];
    let r = f
        .http
        .put(&put)
        .header("content-type", "application/x-test")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let obj = f
        .store
        .stat(&Key::new("up/new.bin").unwrap())
        .await
        .unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(obj.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(std::fs::read(f.root.join("up/new.bin")).unwrap(), data);

    let r = f
        .http
        .put(&put)
        .header("if-none-match", "*")
        .body("second")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(std::fs::read(f.root.join("up/new.bin")).unwrap(), data);
}

#[tokio::test]
async fn a_put_cut_short_leaves_nothing_visible() {
    use tokio::io::AsyncWriteExt;
    let f = fixture().await;
    let put = f.presign("cut.bin", PresignMethod::Put).await;
    let path_and_query = &put[put.find("/files/").unwrap()..];
    let addr = put
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        format!("PUT {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[1u8; 4000]).await.unwrap();
    drop(s); // the client dies after 4,000 of 1,000,000 bytes
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !f.root.join("cut.bin").exists(),
        "a partial upload became visible"
    );
    let tmp: Vec<_> = std::fs::read_dir(f.root.join(".xferkit/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let e = f
        .store
        .stat(&Key::new("cut.bin").unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), xferkit_core::ErrorKind::NotFound);
}

/// Sends `PUT path` with a body over a raw connection (an HTTP client
/// library would normalise `..` away before the server saw it) and returns
/// the status code.
async fn raw_put(base: &str, path_and_query: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_valid_signature_does_not_make_a_bad_key_acceptable() {
    let f = fixture().await;
    // Sign bad keys directly (presign itself refuses them), then send them
    // verbatim and percent-encoded.
    for key in [
        "../outside.txt",
        "a/../../x",
        ".xferkit/tmp/x",
        "/abs",
        "a//b",
    ] {
        let expires = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let sig = f.signer.signature(PresignMethod::Put, key, expires);
        for shown in [key.to_string(), key.replace('.', "%2E").replace('/', "%2F")] {
            let path = format!("/files/{shown}?expires={expires}&sig={sig}");
            let status = raw_put(&f.base, &path, b"evil").await;
            assert!(
                status == 400 || status == 403 || status == 404,
                "{key} as {shown}: HTTP {status}"
            );
        }
    }
    assert!(!f.root.parent().unwrap().join("outside.txt").exists());
    assert!(!f.root.join("x").exists());
    assert!(!f.root.join("a").exists());
    assert!(!f.root.join("abs").exists());
    assert!(!f.root.join(".xferkit/tmp/x").exists());
}

#[tokio::test]
async fn a_store_without_serve_config_cannot_presign() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new("plain", LocalConfig::with_root(dir.path()))
        .await
        .unwrap();
    assert!(!store.capabilities().presign_get);
    let e = store
        .presign(
            &Key::new("k").unwrap(),
            PresignMethod::Get,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stores.plain.serve_url"), "{e}");
}

#[tokio::test]
async fn serve_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            LocalConfig::with_root(dir.path()).with_serve("http://h", Secret::new("short")),
            "signing_key is too short",
        ),
        (
            LocalConfig::with_root(dir.path()).with_serve("ftp://h", Secret::new(KEY)),
            "serve_url",
        ),
        (
            LocalConfig::with_root(dir.path()).with_serve("http://h/?x=1", Secret::new(KEY)),
            "without query",
        ),
    ];
    for (config, want) in cases {
        let e = LocalStore::new("s", config).await.unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert!(!e.to_string().contains(KEY));
    }
}
