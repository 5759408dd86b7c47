//! The link policy (`[links]`) against real local HTTP servers: every rule,
//! every redirect hop, the size cap on announced and received bytes, and
//! no file left behind after a refusal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use xferkit::Key;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use xferkit::links::Lookup;
use xferkit::{
    ErrorKind, FileTransferExt, FileTransferHandler, HttpStore, LinkPolicy, TransferCtx,
};

/// A tiny HTTP/1.1 server on 127.0.0.1. Routes:
/// - `/file/N`: N bytes (`x`), with Content-Length;
/// - `/chunked/N`: N bytes, chunked, no length;
/// - `/claims/N`: says Content-Length N, sends 3 bytes;
/// - `/hop/K`: 302 to `/hop/K-1`; `/hop/0`: 302 to `/file/10`;
/// - `/to/URL`: 302 to URL (percent-decoded).
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..got]).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("/");
                let path = target.split('?').next().unwrap_or("/").to_string();
                let (what, arg) = path[1..].split_once('/').unwrap_or((&path[1..], ""));
                let n = |s: &str| s.parse::<usize>().unwrap_or(0);
                let redirect = |to: String| {
                    format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .into_bytes()
                };
                let out: Vec<u8> = match what {
                    "file" => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            n(arg)
                        )
                        .into_bytes();
                        r.extend(std::iter::repeat_n(b'x', n(arg)));
                        r
                    }
                    "chunked" => {
                        let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
                        let mut left = n(arg);
                        while left > 0 {
                            let c = left.min(4096);
                            r.extend(format!("{c:x}\r\n").bytes());
                            r.extend(std::iter::repeat_n(b'x', c));
                            r.extend(b"\r\n");
                            left -= c;
                        }
                        r.extend(b"0\r\n\r\n");
                        r
                    }
                    "claims" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\nxxx",
                        n(arg)
                    )
                    .into_bytes(),
                    "hop" if n(arg) == 0 => redirect("/file/10".into()),
                    "hop" => redirect(format!("/hop/{}", n(arg) - 1)),
                    "to" => redirect(
                        percent_encoding::percent_decode_str(arg)
                            .decode_utf8_lossy()
                            .to_string(),
                    ),
                    _ => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// The store's key of `link` (the URL itself, carried by the key).
fn link_key(link: &str) -> Key {
    Key::for_link(&xferkit::url::ObjectUrl::parse(link).unwrap()).unwrap()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Every name resolves to 127.0.0.1 (a rebinding or internal name).
fn to_loopback() -> Lookup {
    Arc::new(|_name| Box::pin(async { Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]) }))
}

/// What a refusal says, after checking its kind.
fn refused(e: xferkit::Error) -> String {
    assert_eq!(e.kind(), ErrorKind::Refused, "{}", e.chain());
    e.chain()
}

/// Download `link` to a fresh dir; the error, and that the dir stays empty.
async fn download_refused(store: &HttpStore, link: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("f.bin");
    let e = store
        .download_to_path(&link_key(link), &dest, None, &TransferCtx::default())
        .await
        .expect_err("refused");
    assert_empty(dir.path());
    refused(e)
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn private_ok() -> LinkPolicy {
    let mut p = LinkPolicy::default();
    p.allow_private = true;
    p
}

#[tokio::test]
async fn loopback_addresses_are_refused_by_default_and_the_error_says_how_to_allow() {
    let addr = server().await;
    let store = HttpStore::new();
    let link = url(addr, "/file/10?X-Amz-Signature=SECRETSIG");
    let msg = download_refused(&store, &link).await;
    assert!(msg.contains("127.0.0.1 is a loopback address"), "{msg}");
    assert!(msg.contains("[links] allow_hosts"), "{msg}");
    assert!(msg.contains("--allow-private-links"), "{msg}");
    assert!(!msg.contains("SECRETSIG"), "{msg}");
    assert_eq!(
        store.stat(&link_key(&link)).await.unwrap_err().kind(),
        ErrorKind::Refused
    );
    // The same link with the way out taken.
    let ok = HttpStore::with_policy(private_ok());
    assert_eq!(
        ok.read_bytes(&link_key(&link), None).await.unwrap().len(),
        10
    );
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused() {
    let addr = server().await;
    let store = HttpStore::with_policy(LinkPolicy::default().with_lookup(to_loopback()));
    let link = format!("http://files.example.test:{}/file/10", addr.port());
    let msg = download_refused(&store, &link).await;
    assert!(
        msg.contains("files.example.test resolves to 127.0.0.1, a loopback address"),
        "{msg}"
    );
    // Allowed by name, the same name is fetched (through the same lookup).
    let mut p = LinkPolicy::default().with_lookup(to_loopback());
    p.allow_hosts = vec!["files.example.test".into()];
    let bytes = HttpStore::with_policy(p)
        .read_bytes(&link_key(&link), None)
        .await
        .unwrap();
    assert_eq!(bytes.len(), 10);
}

#[tokio::test]
async fn a_redirect_chain_that_ends_on_loopback_is_refused_at_that_hop() {
    let (a, b) = (server().await, server().await);
    // A is allowed (say, a store's endpoint); B, where the chain ends, is not.
    let mut p = LinkPolicy::default();
    p.allow_hosts = vec![a.to_string()];
    let store = HttpStore::with_policy(p);
    let last = url(b, "/file/10");
    let encoded = percent_encoding::utf8_percent_encode(&last, percent_encoding::NON_ALPHANUMERIC);
    let start = url(a, &format!("/to/{encoded}"));
    let msg = download_refused(&store, &start).await;
    assert!(msg.contains(&format!("refused {last}")), "{msg}");
    assert!(msg.contains("after 1 redirect(s)"), "{msg}");
    // A trusted endpoint: another port of the same host is not trusted.
    let store = HttpStore::with_policy(LinkPolicy::default().trust_endpoint(&url(a, "")));
    let msg = download_refused(&store, &start).await;
    assert!(msg.contains("127.0.0.1 is a loopback address"), "{msg}");
    assert_eq!(
        store
            .read_bytes(&link_key(&url(a, "/file/7")), None)
            .await
            .unwrap()
            .len(),
        7
    );
}

#[tokio::test]
async fn redirects_are_counted_and_only_http_is_followed() {
    let addr = server().await;
    let store = HttpStore::with_policy(private_ok());
    // /hop/4 is five redirects (4, 3, 2, 1, 0 → file): the default allows it.
    assert_eq!(
        store
            .read_bytes(&link_key(&url(addr, "/hop/4")), None)
            .await
            .unwrap()
            .len(),
        10
    );
    let msg = download_refused(&store, &url(addr, "/hop/5")).await;
    assert!(msg.contains("more than [links] max_redirects = 5"), "{msg}");
    let mut p = private_ok();
    p.max_redirects = 0;
    let msg = download_refused(&HttpStore::with_policy(p), &url(addr, "/hop/0")).await;
    assert!(msg.contains("max_redirects = 0"), "{msg}");
    let msg = download_refused(&store, &url(addr, "/to/file%3A%2F%2F%2Fetc%2Fpasswd")).await;
    assert!(msg.contains("only http and https links"), "{msg}");
    // An ftp link has no key in this store: nothing to ask it for.
    let ftp = xferkit::url::ObjectUrl::parse("ftp://example.com/x").unwrap();
    assert!(Key::for_link(&ftp).is_none() && store.key_for_url(&ftp).is_none());
}

#[tokio::test]
async fn max_size_holds_for_announced_and_received_bytes() {
    let addr = server().await;
    let mut p = private_ok();
    p.max_size = 100_000;
    let store = HttpStore::with_policy(p);
    assert_eq!(
        store
            .read_bytes(&link_key(&url(addr, "/file/100000")), None)
            .await
            .unwrap()
            .len(),
        100_000
    );
    // Announced: refused before a byte of the body is read.
    let msg = download_refused(&store, &url(addr, "/file/100001")).await;
    assert!(
        msg.contains("100001 bytes, more than [links] max_size = 100000"),
        "{msg}"
    );
    let msg = download_refused(&store, &url(addr, "/claims/5000000000")).await;
    assert!(msg.contains("max_size"), "{msg}");
    // Received: a chunked body without a length, cut at the cap.
    assert_eq!(
        store
            .read_bytes(&link_key(&url(addr, "/chunked/99999")), None)
            .await
            .unwrap()
            .len(),
        99_999
    );
    let msg = download_refused(&store, &url(addr, "/chunked/300000")).await;
    assert!(msg.contains("more than 100000 bytes"), "{msg}");
}

#[tokio::test]
async fn the_config_trusts_configured_endpoints_and_takes_links_keys() {
    use figment::providers::{Format, Toml};
    let (store_host, other) = (server().await, server().await);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
        default_store = "local"
        [stores.local]
        backend = "local"
        root = "{root}"
        serve_url = "http://{store_host}/files"
        signing_key = "0123456789abcdef0123456789abcdef"
        [links]
        allow_hosts = ["intranet.example.test"]
        max_redirects = 2
        max_size = "1KiB"
        "#,
        root = dir.path().join("root").display()
    );
    let figment = xferkit::config::defaults().merge(Toml::string(&toml));
    let kit = xferkit::Xferkit::from_figment(&figment).await.unwrap();
    let links = kit.registry().get("http").unwrap();
    let read = |link: String| {
        let links = links.clone();
        async move { links.read_bytes(&link_key(&link), None).await }
    };
    assert_eq!(
        read(url(store_host, "/file/1024")).await.unwrap().len(),
        1024
    );
    let e = read(url(store_host, "/file/1025")).await.unwrap_err();
    assert!(refused(e).contains("max_size = 1024"));
    let e = read(url(other, "/file/1")).await.unwrap_err();
    assert!(refused(e).contains("loopback"));
    let e = read(url(store_host, "/hop/2")).await.unwrap_err();
    assert!(refused(e).contains("max_redirects = 2"));

    let bad =
        xferkit::config::defaults().merge(Toml::string("[links]\nallow_hosts = [\"http://h/\"]"));
    let e = xferkit::Xferkit::from_figment(&bad).await.unwrap_err();
    assert!(e.to_string().contains("links.allow_hosts"), "{e}");
}
