//! HTTP transports that xferkit's backends run their SDKs on. Today one:
//! the client under the AWS SDK (`xferkit-s3`), [`smithy_client`].
//!
//! That client is hyper 1 and rustls (ring), as
//! `aws-smithy-http-client` builds it, plus one thing that client has no hook
//! for: on Linux, every read from a connection's socket re-arms
//! `TCP_QUICKACK`, so the kernel acknowledges what arrived at once instead of
//! delaying the ACK by up to 40 ms.
//!
//! Why: a server that leaves Nagle's algorithm on (s3s, and any hyper server
//! that does not set `TCP_NODELAY` on the sockets it accepts) writes a
//! response's head and its body separately and holds a small body back until
//! the head is acknowledged. On a reused (keep-alive) connection the Linux
//! receiver is in "ping-pong" mode (it sent the request just before) and
//! delays that ACK until its 40 ms timer fires. Against s3s-fs every GET of a
//! 16 KiB object on a reused connection took ~42 ms instead of ~1 ms, with
//! curl too: the body left the server within a millisecond of the head and
//! sat in its send queue (docs/benchmarks.md, "Many-file downloads").
//! Acknowledging promptly costs one `setsockopt` per read and a few more ACK
//! segments; it changes nothing for a server that sets `TCP_NODELAY`.
//!
//! Everything else is as the SDK's default client: `TCP_NODELAY` on, rustls
//! with ring and the platform's root certificates, HTTP/1.1, a connection
//! pool per (connect timeout, read timeout) the SDK asks for, and those
//! timeouts.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::ErrorKind;
use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The HTTP client for an AWS SDK config (`aws_sdk_s3::config::Builder::http_client`).
pub fn smithy_client() -> SharedHttpClient {
    SharedHttpClient::new(QuickAckClient::default())
}

/// (connect timeout, read timeout) as the SDK asks for them.
type Timeouts = (Option<Duration>, Option<Duration>);

/// One connector (and so one connection pool) per pair of timeouts the SDK asks for.
#[derive(Debug, Default)]
struct QuickAckClient {
    connectors: Mutex<HashMap<Timeouts, SharedHttpConnector>>,
}

impl HttpClient for QuickAckClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connectors
            .entry(key)
            .or_insert_with(|| SharedHttpConnector::new(Connector::new(key.0, key.1)))
            .clone()
    }
}

/// rustls with ring and the platform's roots, loaded once per process.
static TLS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::warn!(errors = ?found.errors, "loading the platform's root certificates");
    }
    let (valid, _invalid) = roots.add_parsable_certificates(found.certs);
    if valid == 0 {
        tracing::warn!("no root certificates found: https endpoints will fail");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
});

struct Connector {
    client: Client<HttpsConnector<Tcp>, SdkBody>,
    read_timeout: Option<Duration>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl Connector {
    fn new(connect_timeout: Option<Duration>, read_timeout: Option<Duration>) -> Connector {
        let mut tcp = TcpConnector::new();
        tcp.set_nodelay(true);
        // The TLS connector below decides the scheme.
        tcp.enforce_http(false);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config((**TLS).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(Tcp {
                inner: tcp,
                connect_timeout,
            });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        Connector {
            client,
            read_timeout,
        }
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(r) => r,
            Err(e) => return HttpConnectorFuture::ready(Err(ConnectorError::user(e.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            // As the SDK's client: the read timeout runs until the response head.
            let response = match read_timeout {
                Some(t) => match tokio::time::timeout(t, response).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(ConnectorError::timeout(
                            format!("no response within the read timeout of {t:?}").into(),
                        ));
                    }
                },
                None => response.await,
            };
            match response {
                Ok(r) => HttpResponse::try_from(r.map(SdkBody::from_body_1_x))
                    .map_err(|e| ConnectorError::other(e.into(), None)),
                Err(e) => Err(connector_error(e)),
            }
        })
    }
}

/// The SDK's classification of a failed request (as aws-smithy-http-client's).
fn connector_error(e: hyper_util::client::legacy::Error) -> ConnectorError {
    let timed_out = source::<ConnectTimedOut>(&e).is_some();
    let hyper = source::<hyper::Error>(&e).map(|h| {
        (
            h.is_timeout(),
            h.is_user(),
            h.is_closed() || h.is_canceled(),
            h.is_incomplete_message(),
        )
    });
    let io = e.is_connect() || source::<io::Error>(&e).is_some();
    let err: BoxError = Box::new(e);
    match hyper {
        _ if timed_out => ConnectorError::timeout(err),
        Some((true, ..)) => ConnectorError::timeout(err),
        Some((_, true, ..)) => ConnectorError::user(err),
        Some((_, _, true, _)) => ConnectorError::io(err),
        _ if io => ConnectorError::io(err),
        Some((.., true)) => ConnectorError::other(err, Some(ErrorKind::TransientError)),
        _ => ConnectorError::other(err, None),
    }
}

fn source<'a, E: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[derive(Debug)]
struct ConnectTimedOut(Duration);

impl fmt::Display for ConnectTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection within the connect timeout of {:?}",
            self.0
        )
    }
}

impl StdError for ConnectTimedOut {}

/// hyper's TCP connector, with the connect timeout, yielding [`QuickAck`] streams.
#[derive(Clone)]
struct Tcp {
    inner: TcpConnector,
    connect_timeout: Option<Duration>,
}

impl tower_service::Service<Uri> for Tcp {
    type Response = QuickAck;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let io = match timeout {
                Some(t) => tokio::time::timeout(t, connecting)
                    .await
                    .map_err(|_| ConnectTimedOut(t))??,
                None => connecting.await?,
            };
            Ok(QuickAck { io })
        })
    }
}

/// A TCP stream that re-arms `TCP_QUICKACK` after every read (see the module docs).
struct QuickAck {
    io: TokioIo<TcpStream>,
}

impl QuickAck {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn ack_now(&self) {
        // Quick-ack mode is not sticky: the kernel leaves it again, e.g. when
        // we send the next request. Failure only means a delayed ACK.
        let _ = socket2::SockRef::from(self.io.inner()).set_tcp_quickack(true);
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn ack_now(&self) {}
}

impl Read for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            this.ack_now();
        }
        read
    }
}

impl Write for QuickAck {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// The README's examples, compiled and run as doctests (the crate docs above
/// say the same at more length).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
