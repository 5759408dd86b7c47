//! `xferkit-serve` on the open internet (issue 15): idle and half-sent
//! connections, clients that stop reading, a connection cap, HTTP/1 only,
//! stored script, size limits, over-long names and expiries. Every test
//! runs the server in-process on 127.0.0.1:0; the connection tests are
//! bounded (timeouts of 1 s in the server, a few seconds of waiting at most).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use xferkit_core::Key;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, DynHandler, FileTransferHandler, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Secret, TransferCtx, UploadSource,
    async_trait,
};
use xferkit_local::signed::UrlSigner;
use xferkit_local::{LocalConfig, LocalStore};
use xferkit_serve::{ServeOptions, Server, router};

const KEY: &str = "hardening-test-signing-key-0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<LocalStore>,
    signer: UrlSigner,
    addr: std::net::SocketAddr,
    http: reqwest::Client,
    _server: Server,
}

/// A served local store; `options` adjusts the server, `config` the store,
/// `wrap` what the router sees of it.
async fn fixture_with(
    options: impl FnOnce(&mut ServeOptions),
    config: impl FnOnce(LocalConfig) -> LocalConfig,
    wrap: impl FnOnce(Arc<LocalStore>) -> DynHandler,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}/files");
    let store = Arc::new(
        LocalStore::new(
            "local",
            config(LocalConfig::with_root(dir.path()).with_serve(&base, Secret::new(KEY))),
        )
        .await
        .unwrap(),
    );
    let signer = store.serve_config().unwrap().1.clone();
    let mut opts = ServeOptions::for_serve_url(&base);
    options(&mut opts);
    let app = router(wrap(store.clone()), signer.clone(), opts.clone());
    let server = Server::start_with(listener, app, &opts).unwrap();
    Fixture {
        root: store.root().to_path_buf(),
        _dir: dir,
        store,
        signer,
        addr,
        http: reqwest::Client::new(),
        _server: server,
    }
}

async fn fixture(options: impl FnOnce(&mut ServeOptions)) -> Fixture {
    fixture_with(options, |c| c, |s| s).await
}

impl Fixture {
    async fn put_object(&self, key: &str, data: Vec<u8>, ty: &str) {
        self.store
            .upload(
                &Key::new(key).unwrap(),
                UploadSource::from_bytes(data),
                &PutOptions::default().with_content_type(ty),
                &TransferCtx::none(),
            )
            .await
            .unwrap();
    }

    async fn presign(&self, key: &Key, m: PresignMethod) -> String {
        self.store
            .presign(key, m, Duration::from_secs(300))
            .await
            .unwrap()
            .url
    }

    /// Path and query of a signed URL, for a raw request.
    fn target(&self, url: &str) -> String {
        url.strip_prefix(&format!("http://{}", self.addr))
            .unwrap()
            .to_string()
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Every file under the root but the store's sidecars: objects and temp
    /// files (`.xferkit/tmp`).
    fn files(&self) -> Vec<PathBuf> {
        common::store_files(&self.root)
    }
}

/// Read until the server closes the connection (EOF or reset) and return
/// what came; `None` if it is still open after `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().map(|()| got)
}

async fn get_status(f: &Fixture, url: &str) -> Option<u16> {
    f.http
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

// ---------------------------------------------------------------- connections

/// Sockets that send half a request head, or nothing, are closed after the
/// header timeout; so is a kept-alive connection that sends no next
/// request. A signed GET works afterwards.
#[tokio::test]
async fn half_sent_heads_and_idle_connections_are_closed_after_the_header_timeout() {
    let f = fixture(|o| o.header_timeout = Duration::from_secs(1)).await;
    f.put_object("a.txt", b"hello".to_vec(), "text/plain").await;
    let url = f
        .presign(&Key::new("a.txt").unwrap(), PresignMethod::Get)
        .await;
    let mut socks = Vec::new();
    for i in 0..12 {
        let mut s = f.connect().await;
        if i % 2 == 0 {
            s.write_all(b"GET /files/a.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        socks.push(s);
    }
    // A kept-alive connection after one complete request.
    let mut kept = f.connect().await;
    let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", f.target(&url));
    kept.write_all(req.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 4096];
    let n = kept.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    socks.push(kept);
    for (i, s) in socks.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, Duration::from_secs(8)).await.is_some(),
            "connection {i} still open well after the 1 s header timeout"
        );
    }
    assert_eq!(get_status(&f, &url).await, Some(200));
}

/// Over `max_connections`, a new connection is answered 503 and closed at
/// once, a signed GET included; once the holders go, GETs work again.
#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_and_slots_come_back() {
    let f = fixture(|o| {
        o.max_connections = 4;
        o.header_timeout = Duration::from_secs(30);
    })
    .await;
    f.put_object("a.txt", b"hello".to_vec(), "text/plain").await;
    let url = f
        .presign(&Key::new("a.txt").unwrap(), PresignMethod::Get)
        .await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut s = f.connect().await;
        s.write_all(b"GET /files/a.txt HTTP/1.1\r\n").await.unwrap();
        holders.push(s);
    }
    // The server has taken all four (each one answered after a while
    // otherwise); the fifth is turned away without waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = f.connect().await;
    let got = read_until_closed(&mut extra, Duration::from_secs(5))
        .await
        .expect("a connection over the cap was kept open");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 503"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let status = get_status(&f, &url).await;
    assert!(status.is_none() || status == Some(503), "{status:?}");
    drop(holders);
    let mut ok = false;
    for _ in 0..50 {
        if get_status(&f, &url).await == Some(200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "slots were not given back when their clients left");
}

/// Counts what the server pulls from download streams, and whether it
/// dropped them.
#[derive(Debug)]
struct Pulled {
    inner: DynHandler,
    bytes: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl FileTransferHandler for Pulled {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn schemes(&self) -> &[&str] {
        self.inner.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.inner.url_for(key)
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.inner.key_for_url(url)
    }
    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> xferkit_core::Result<RemoteObject> {
        self.inner.upload(key, source, opts, ctx).await
    }
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> xferkit_core::Result<(RemoteObject, ByteStream)> {
        let (obj, stream) = self.inner.download_stream(key, range).await?;
        let bytes = self.bytes.clone();
        let flag = DropFlag(self.dropped.clone());
        let counted = stream.map(move |c| {
            let _keep = &flag;
            if let Ok(b) = &c {
                bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
            c
        });
        Ok((obj, Box::pin(counted)))
    }
    async fn stat(&self, key: &Key) -> xferkit_core::Result<RemoteObject> {
        self.inner.stat(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, xferkit_core::Result<RemoteObject>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &Key) -> xferkit_core::Result<()> {
        self.inner.delete(key).await
    }
    async fn copy(&self, from: &Key, to: &Key) -> xferkit_core::Result<RemoteObject> {
        self.inner.copy(from, to).await
    }
    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> xferkit_core::Result<PresignedUrl> {
        self.inner.presign(key, method, expires_in).await
    }
    async fn list_pending_uploads(&self, prefix: &str) -> xferkit_core::Result<Vec<PendingUpload>> {
        self.inner.list_pending_uploads(prefix).await
    }
}

/// A client that asks for a big object and reads nothing: the server reads
/// only a bounded amount of it from the store (back-pressure, not the whole
/// file into memory), and after the idle timeout drops the response and the
/// connection.
#[tokio::test]
async fn a_client_that_stops_reading_holds_a_bounded_amount_and_is_cut_off() {
    const SIZE: usize = 64 << 20;
    let bytes = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (b2, d2) = (bytes.clone(), dropped.clone());
    let f = fixture_with(
        |o| o.idle_timeout = Duration::from_secs(1),
        |c| c,
        move |s| {
            Arc::new(Pulled {
                inner: s,
                bytes: b2,
                dropped: d2,
            })
        },
    )
    .await;
    f.put_object("big.bin", vec![7u8; SIZE], "application/octet-stream")
        .await;
    let url = f
        .presign(&Key::new("big.bin").unwrap(), PresignMethod::Get)
        .await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(f.addr).await.unwrap();
    let req = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", f.target(&url));
    s.write_all(req.as_bytes()).await.unwrap();
    // Read nothing while the server fills what buffers it has.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pulled = bytes.load(Ordering::SeqCst);
    assert!(
        pulled < 16 << 20,
        "a stalled reader made the server pull {pulled} bytes of {SIZE} from the store"
    );
    let mut released = false;
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "the stalled response was still held after 10 s (idle timeout 1 s)"
    );
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the connection was kept open");
    assert!(got.len() < SIZE, "the whole object arrived: not cut off");
    assert!(bytes.load(Ordering::SeqCst) < 16 << 20);
}

/// Neither HTTP/2 with prior knowledge nor an h2c upgrade is spoken.
#[tokio::test]
async fn http2_over_cleartext_is_not_served() {
    let f = fixture(|_| {}).await;
    f.put_object("a.txt", b"hello".to_vec(), "text/plain").await;
    let url = f
        .presign(&Key::new("a.txt").unwrap(), PresignMethod::Get)
        .await;
    let mut s = f.connect().await;
    // Client preface and an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    // An HTTP/2 server answers with its SETTINGS frame: type 4 at byte 3.
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "answered the HTTP/2 preface: {got:?}"
    );
    let mut s = f.connect().await;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        f.target(&url)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.contains("101"), "{head}");
}

// ---------------------------------------------------------- stored content

async fn put_as(f: &Fixture, key: &str, ty: &str, body: &'static str) {
    let url = f.presign(&Key::new(key).unwrap(), PresignMethod::Put).await;
    let r = f
        .http
        .put(&url)
        .header("content-type", ty)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{key}");
}

async fn headers_of(f: &Fixture, key: &str) -> reqwest::header::HeaderMap {
    let url = f.presign(&Key::new(key).unwrap(), PresignMethod::Get).await;
    let r = f.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.headers().clone()
}

fn h<'a>(m: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    m.get(name).map(|v| v.to_str().unwrap())
}

/// Whoever holds a PUT link chooses the Content-Type; script-capable types
/// come back as sandboxed attachments, never as a page on this origin.
#[tokio::test]
async fn active_content_types_are_served_as_sandboxed_attachments() {
    let f = fixture(|o| o.inline_types = vec!["application/pdf".into()]).await;
    let script = "<html><script>alert(document.domain)</script></html>";
    for (key, ty) in [
        ("x.html", "text/html"),
        ("y.html", "TEXT/HTML; charset=utf-8"),
        ("z.svg", "image/svg+xml"),
        ("x.xhtml", "application/xhtml+xml"),
        ("x.xml", "text/xml"),
        ("x.js", "application/javascript"),
        ("dir/odd name.bin", "application/x-whatever"),
    ] {
        put_as(&f, key, ty, script).await;
        let m = headers_of(&f, key).await;
        assert_eq!(h(&m, "x-content-type-options"), Some("nosniff"), "{ty}");
        let cd = h(&m, "content-disposition").unwrap_or_default();
        assert!(cd.starts_with("attachment"), "{ty}: {cd:?}");
        assert!(
            h(&m, "content-security-policy").is_some_and(|c| c.contains("sandbox")),
            "{ty}"
        );
    }
    let m = headers_of(&f, "dir/odd name.bin").await;
    assert_eq!(
        h(&m, "content-disposition"),
        Some("attachment; filename*=UTF-8''odd%20name.bin")
    );
    // Passive types display inline, still with nosniff.
    for (key, ty) in [
        ("p.png", "image/png"),
        ("t.txt", "text/plain; charset=utf-8"),
        ("v.mp4", "video/mp4"),
    ] {
        put_as(&f, key, ty, "data").await;
        let m = headers_of(&f, key).await;
        assert_eq!(h(&m, "content-disposition"), None, "{ty}");
        assert_eq!(h(&m, "x-content-type-options"), Some("nosniff"), "{ty}");
    }
    // A listed type displays inline, sandboxed.
    put_as(&f, "d.pdf", "application/pdf", "%PDF-1.4").await;
    let m = headers_of(&f, "d.pdf").await;
    assert_eq!(h(&m, "content-disposition"), None);
    assert_eq!(h(&m, "content-security-policy"), Some("sandbox"));
}

// --------------------------------------------------------------- size limits

fn chunked(parts: &'static [&'static str]) -> reqwest::Body {
    reqwest::Body::wrap_stream(futures::stream::iter(
        parts.iter().map(|p| Ok::<_, std::io::Error>(bytes_of(p))),
    ))
}

fn bytes_of(s: &'static str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// A PUT URL signed with a size limit refuses a larger body (announced or
/// chunked) with 413 and stores nothing; the limit cannot be stripped or
/// raised.
#[tokio::test]
async fn a_signed_size_limit_refuses_larger_bodies_and_cannot_be_removed() {
    let f = fixture(|_| {}).await;
    let url = f
        .store
        .presign_put_with_limit(&Key::new("lim.bin").unwrap(), Duration::from_secs(300), 10)
        .unwrap()
        .url;
    assert!(url.contains("max_size=10"), "{url}");
    let before = f.files();
    let r = f.http.put(&url).body("0123456789A").send().await.unwrap();
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(!text.contains(url.split("sig=").nth(1).unwrap()), "{text}");
    let r = f
        .http
        .put(&url)
        .body(chunked(&["01234", "56789", "AB"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(f.files(), before, "a refused body left something behind");
    assert!(f.store.stat(&Key::new("lim.bin").unwrap()).await.is_err());
    for tampered in [
        url.replace("&max_size=10", ""),
        url.replace("max_size=10", "max_size=1000000"),
    ] {
        let r = f
            .http
            .put(&tampered)
            .body("0123456789A")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{tampered}");
    }
    let r = f.http.put(&url).body("0123456789").send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = f
        .http
        .put(&url)
        .body(chunked(&["01234", "5678"]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "the link can be used again within its limit"
    );
}

/// `max_upload_size` applies to every PUT, signed limit or not.
#[tokio::test]
async fn the_store_wide_max_upload_size_refuses_larger_puts() {
    let f = fixture_with(
        |o| o.max_upload_size = Some(8),
        |c| c.with_max_upload_size(8),
        |s| s,
    )
    .await;
    let url = f
        .presign(&Key::new("m.bin").unwrap(), PresignMethod::Put)
        .await;
    let before = f.files();
    let r = f.http.put(&url).body("123456789").send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = f
        .http
        .put(&url)
        .body(chunked(&["1234", "5678", "9"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(f.files(), before);
    let r = f.http.put(&url).body("12345678").send().await.unwrap();
    assert_eq!(r.status(), 201);
}

/// The store's own limit answers 413 too when the server was not told of it.
#[tokio::test]
async fn a_store_limit_the_server_does_not_know_still_answers_413() {
    let f = fixture_with(|_| {}, |c| c.with_max_upload_size(4), |s| s).await;
    let url = f
        .presign(&Key::new("s.bin").unwrap(), PresignMethod::Put)
        .await;
    let r = f
        .http
        .put(&url)
        .body(chunked(&["12", "34", "5"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(f.store.stat(&Key::new("s.bin").unwrap()).await.is_err());
}

/// A PUT whose body stops arriving is answered 408 after the idle timeout
/// and leaves nothing.
#[tokio::test]
async fn a_put_body_that_stops_arriving_is_cut_after_the_idle_timeout() {
    let f = fixture(|o| o.idle_timeout = Duration::from_secs(1)).await;
    let url = f
        .presign(&Key::new("slow.bin").unwrap(), PresignMethod::Put)
        .await;
    let before = f.files();
    let mut s = f.connect().await;
    let req = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        f.target(&url)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("a stalled upload was kept open");
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(f.files(), before);
}

// ------------------------------------------------------------------- smaller

#[tokio::test]
async fn an_over_long_key_segment_is_a_client_error() {
    let f = fixture(|_| {}).await;
    let key = format!("d/{}", "a".repeat(300));
    let url = f.presign_unchecked(&key, PresignMethod::Put);
    let r = f.http.put(&url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let url = f.presign_unchecked(&key, PresignMethod::Get);
    let r = f.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 400);
}

impl Fixture {
    /// A URL signed for `key` without the store's key checks.
    fn presign_unchecked(&self, key: &str, m: PresignMethod) -> String {
        self.signer
            .sign(
                &format!("http://{}/files", self.addr),
                m,
                key,
                Duration::from_secs(300),
            )
            .unwrap()
            .url
    }
}

/// A URL signed by hand with an expiry beyond the 7-day limit is refused.
#[tokio::test]
async fn an_expiry_beyond_seven_days_is_refused_though_signed() {
    let f = fixture(|_| {}).await;
    f.put_object("a.txt", b"hello".to_vec(), "text/plain").await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (days, want) in [(6, 200), (8, 403), (365, 403)] {
        let expires = now + days * 86_400;
        let sig = f.signer.signature(PresignMethod::Get, "a.txt", expires);
        let url = format!("http://{}/files/a.txt?expires={expires}&sig={sig}", f.addr);
        let r = f.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), want, "{days} days");
        if want == 403 {
            let body = r.text().await.unwrap();
            assert!(body.contains("7 days"), "{body}");
            assert!(!body.contains(&sig), "{body}");
        }
    }
}
