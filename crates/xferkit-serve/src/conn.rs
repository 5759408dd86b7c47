//! Connections: HTTP/1 only, a cap on how many are served at once, a
//! deadline for request heads and one for a response the client stops
//! reading. The per-request body deadline is the handler's
//! (`server::guarded_body`).
//!
//! What a connection can hold: hyper's read buffer and its write buffer are
//! capped at [`MAX_BUF`]; a response body is pulled from the store only when
//! that buffer has room (one chunk at a time), so a client that stops reading
//! holds one chunk plus the kernel's socket buffer, and only until
//! `idle_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Largest request head and largest write buffer per connection.
pub(crate) const MAX_BUF: usize = 64 * 1024;

/// The limits [`accept_loop`] applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Answer of a connection over the cap, written if the socket takes it at
/// once, then the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 35\r\nretry-after: 1\r\n\r\n\
the server has too many connections";

/// Accept and serve connections until `stop` fires, then let the open ones
/// finish their requests (idle ones close at once) and return.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) -> io::Result<()> {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let closing = CancellationToken::new();
    let mut busy_logged = false;
    loop {
        let tcp = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than
                    // spin; a connection that failed before accept: next.
                    if !is_per_connection(&e) {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !busy_logged {
                tracing::warn!(
                    max_connections = max,
                    "connection cap reached: refusing new connections with 503"
                );
                busy_logged = true;
            }
            refuse(tcp);
            continue;
        };
        busy_logged = false;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(StallGuard::new(tcp, limits.idle_timeout));
        let router = router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let conn = builder.serve_connection(io, svc);
        let closing = closing.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                () = closing.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                // hyper's errors name the failure (timeout, reset, parse),
                // never the request's URI.
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    closing.cancel();
    // Every connection holds a slot until it ends.
    let _all = slots.acquire_many(max as u32).await;
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Close a connection over the cap: a 503 if the socket takes it without
/// waiting, then gone (never read from, never waited on).
fn refuse(tcp: TcpStream) {
    let _ = tcp.try_write(BUSY);
    drop(tcp);
}

/// An IO whose writes fail with `TimedOut` after `limit` without progress:
/// a client that stops reading a response (or never reads it) is let go
/// instead of holding the response's buffers forever. Reads are not timed
/// here: a request head has hyper's `header_read_timeout`, a request body
/// the handler's deadline, and between them hyper reads only to notice a
/// client that went away.
pub(crate) struct StallGuard<T> {
    io: T,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
}

impl<T> StallGuard<T> {
    pub(crate) fn new(io: T, limit: Duration) -> Self {
        StallGuard {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// A write did not progress: start the clock if it is not running, and
    /// fail once it ran out.
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if !self.armed {
            self.timer.as_mut().reset(Instant::now() + self.limit);
            self.armed = true;
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for the idle timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => self.stalled(cx),
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progressed(r, cx)
    }
}
