//! A TCP fault-injection proxy for tests: it sits between a store client and
//! an emulator (`client → 127.0.0.1:PORT → upstream`) and, following a plan
//! that tests change while it runs, passes requests through or breaks them.
//!
//! The proxy speaks just enough HTTP/1.1 to tell requests apart on a
//! keep-alive connection (request line, headers, `Content-Length` or chunked
//! bodies, the same for responses), so a fault hits one request, not a
//! whole connection by accident. The faults ([`Fault`]):
//!
//! - **reset** the connection (TCP RST) after N bytes of the request (head
//!   and body) or of the response: a dropped connection mid-upload or
//!   mid-download;
//! - **stall** for a while before forwarding: a hung server, for attempt
//!   timeouts;
//! - answer **HTTP 500/503** without forwarding (the body is S3's
//!   `SlowDown`/`InternalError` XML, with `x-ms-error-code: ServerBusy` for
//!   Azure; optionally with `Retry-After`), so nothing reaches the store;
//! - **corrupt** one byte of a request or response body in transit (framing
//!   and headers untouched): what a checksum has to catch.
//!
//! A [`Rule`] says which requests a fault hits (method, a piece of the
//! path/query), how often (every n-th match) and how many times (or forever:
//! faults that never clear). The first rule that fires wins; requests no
//! rule fires on pass through. [`FaultStats`] counts connections, requests
//! and injected faults, so a test can assert faults really happened.
//!
//! `Location` response headers that point at the upstream (GCS resumable
//! session URIs from fake-gcs-server's `-external-url`) are rewritten to
//! point at the proxy, so follow-up requests go through it too.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
//! let proxy = FaultProxy::start("http://127.0.0.1:9000").await?;
//! // Every third PUT is cut after 1 MiB; the next two GETs get a 503.
//! proxy.set_rules(vec![
//!     Rule::new(Fault::ResetRequestAfter(1 << 20)).method("PUT").every(3),
//!     Rule::new(Fault::Status(503)).method("GET").times(2),
//! ]);
//! let endpoint = proxy.url(); // give this to the store instead of the emulator's
//! # let _ = endpoint;
//! assert!(proxy.stats().faults() <= 2);
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What to do to a request a rule fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward this many bytes of the request (head and body), then reset
    /// both connections.
    ResetRequestAfter(u64),
    /// Forward the request and this many bytes of the response (head and
    /// body), then reset both connections.
    ResetResponseAfter(u64),
    /// Wait this long, then forward the request (a hung server).
    Stall(Duration),
    /// Read the request and answer with this HTTP status (500, 503 or 403
    /// with an S3 error body: `InternalError`, `SlowDown`, `AccessDenied`)
    /// without forwarding anything.
    Status(u16),
    /// Like [`Fault::Status`], with `Retry-After: N` (seconds) in the answer.
    StatusRetryAfter(u16, u64),
    /// Forward the request with the byte at this offset of its body
    /// (payload bytes only, not chunk framing) flipped. Counted in
    /// [`FaultStats::corruptions`] only when the body is that long.
    CorruptRequestBody(u64),
    /// Forward the response with the byte at this offset of its body
    /// flipped (same counting).
    CorruptResponseBody(u64),
}

/// Which requests a fault hits, how often and how many times.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    method: Option<String>,
    path_contains: Option<String>,
    header: Option<String>,
    every: u64,
    remaining: Option<u64>,
    after: u64,
    matched: u64,
}

impl Rule {
    /// `fault` on every request, forever (until the rules are replaced).
    pub fn new(fault: Fault) -> Self {
        Rule {
            fault,
            method: None,
            path_contains: None,
            header: None,
            every: 1,
            remaining: None,
            after: 0,
            matched: 0,
        }
    }

    /// Only requests with this method (`PUT`, `GET`, ...).
    pub fn method(mut self, method: &str) -> Self {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only requests whose target (path and query) contains `needle`
    /// (`partNumber=`, `comp=block`, `upload_id=`).
    pub fn path_contains(mut self, needle: &str) -> Self {
        self.path_contains = Some(needle.to_string());
        self
    }

    /// Only requests that carry header `name` (any case, any value).
    pub fn with_header(mut self, name: &str) -> Self {
        self.header = Some(name.to_ascii_lowercase());
        self
    }

    /// Fire on every `n`-th matching request only (the `n`-th, `2n`-th, ...).
    pub fn every(mut self, n: u64) -> Self {
        self.every = n.max(1);
        self
    }

    /// Let the first `n` matching requests through untouched (counting
    /// starts after them).
    pub fn after(mut self, n: u64) -> Self {
        self.after = n;
        self
    }

    /// Fire at most `k` times, then let requests through.
    pub fn times(mut self, k: u64) -> Self {
        self.remaining = Some(k);
        self
    }

    fn matches(&self, method: &str, target: &str, head: &Head) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| target.contains(p))
            && self.header.as_deref().is_none_or(|h| {
                head.lines.iter().skip(1).any(|l| {
                    l.split_once(':')
                        .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(h))
                })
            })
    }

    /// Count a matching request; whether the fault fires on it.
    fn fire(&mut self) -> bool {
        if self.remaining == Some(0) {
            return false;
        }
        self.matched += 1;
        if self.matched <= self.after {
            return false;
        }
        if !(self.matched - self.after).is_multiple_of(self.every) {
            return false;
        }
        if let Some(r) = &mut self.remaining {
            *r -= 1;
        }
        true
    }
}

/// What the proxy has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests read from clients.
    pub requests: u64,
    /// Connections reset by a fault.
    pub resets: u64,
    /// Requests answered with an error status by a fault.
    pub statuses: u64,
    /// Requests stalled by a fault.
    pub stalls: u64,
    /// Bodies forwarded with a byte flipped.
    pub corruptions: u64,
    /// Bytes forwarded to the upstream (request heads and bodies).
    pub bytes_up: u64,
    /// Bytes forwarded to clients (response heads and bodies).
    pub bytes_down: u64,
}

impl FaultStats {
    /// Faults injected, of every kind.
    pub fn faults(&self) -> u64 {
        self.resets + self.statuses + self.stalls + self.corruptions
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    resets: AtomicU64,
    statuses: AtomicU64,
    stalls: AtomicU64,
    corruptions: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    /// `http://HOST:PORT` of the upstream, as it appears in `Location`s.
    upstream_origins: Vec<String>,
    origin: String,
    rules: Mutex<Vec<Rule>>,
    counters: Counters,
    /// The last [`HEADS_KEPT`] request heads, for [`FaultProxy::requests`].
    heads: Mutex<std::collections::VecDeque<SeenRequest>>,
}

/// How many request heads [`FaultProxy::requests`] remembers.
const HEADS_KEPT: usize = 4096;

/// A request as the proxy saw it: its method, target and headers
/// (lowercase names; `authorization` left out, so no test log ever holds a
/// signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Shared {
    fn remember(&self, method: &str, target: &str, head: &Head) {
        let headers = head
            .lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .filter(|(k, _)| k != "authorization")
            .collect();
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() == HEADS_KEPT {
            heads.pop_front();
        }
        heads.push_back(SeenRequest {
            method: method.to_string(),
            target: target.to_string(),
            headers,
        });
    }

    fn pick(&self, method: &str, target: &str, head: &Head) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .iter_mut()
            .filter(|r| r.matches(method, target, head))
            .find_map(|r| r.fire().then_some(r.fault))
    }
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listen on `127.0.0.1:0` and forward to the host and port of
    /// `upstream` (an `http://HOST:PORT[/path]` URL or `HOST:PORT`). Starts
    /// passing everything through.
    pub async fn start(upstream: &str) -> io::Result<Self> {
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or(upstream)
            .split('/')
            .next()
            .unwrap_or("");
        let addr = tokio::net::lookup_host(hostport)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no upstream address"))?;
        Self::start_addr(addr, hostport).await
    }

    async fn start_addr(upstream: SocketAddr, hostport: &str) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            upstream_origins: vec![format!("http://{hostport}"), format!("http://{upstream}")],
            origin: format!("http://{addr}"),
            rules: Mutex::new(Vec::new()),
            counters: Counters::default(),
            heads: Mutex::new(std::collections::VecDeque::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                s.counters.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    // A broken connection is what this proxy is for: errors
                    // end the connection, nothing more.
                    let _ = serve(sock, &s).await;
                });
            }
        });
        Ok(FaultProxy { addr, shared, task })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.shared.origin.clone()
    }

    /// `upstream_url` with its `http://HOST:PORT` replaced by the proxy's
    /// (keeps a path such as Azurite's `/devstoreaccount1`).
    pub fn endpoint_for(&self, upstream_url: &str) -> String {
        let rest = upstream_url.strip_prefix("http://").unwrap_or(upstream_url);
        match rest.find('/') {
            Some(i) => format!("{}{}", self.shared.origin, &rest[i..]),
            None => self.shared.origin.clone(),
        }
    }

    /// Replace the plan (counters of the old rules are dropped).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.shared.rules.lock().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    /// Pass everything through from now on.
    pub fn clear(&self) {
        self.set_rules(Vec::new());
    }

    /// The requests seen so far (the last few thousand), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        let heads = self.shared.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads.iter().cloned().collect()
    }

    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        FaultStats {
            connections: c.connections.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            statuses: c.statuses.load(Ordering::SeqCst),
            stalls: c.stalls.load(Ordering::SeqCst),
            corruptions: c.corruptions.load(Ordering::SeqCst),
            bytes_up: c.bytes_up.load(Ordering::SeqCst),
            bytes_down: c.bytes_down.load(Ordering::SeqCst),
        }
    }
}

/// An HTTP message head: its lines as received, and what framing follows.
struct Head {
    lines: Vec<String>,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
    connection_close: bool,
}

impl Head {
    fn first(&self) -> &str {
        self.lines.first().map(String::as_str).unwrap_or("")
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// Read a message head; `None` at a clean end of stream.
async fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between messages
            }
            break;
        }
        lines.push(text);
    }
    let mut head = Head {
        lines,
        content_length: None,
        chunked: false,
        expect_continue: false,
        connection_close: false,
    };
    for l in head.lines.iter().skip(1) {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => head.content_length = v.parse().ok(),
            "transfer-encoding" => head.chunked = v.contains("chunked"),
            "expect" => head.expect_continue = v == "100-continue",
            "connection" => head.connection_close = v.contains("close"),
            _ => {}
        }
    }
    Ok(Some(head))
}

/// Writes forwarded bytes, and cuts after a budget.
struct Pipe<'a> {
    to: Option<&'a mut TcpStream>,
    budget: Option<u64>,
    sent: u64,
    /// Counts the bytes written to `to`.
    counter: Option<&'a AtomicU64>,
    /// Flip the body payload byte at this offset.
    flip_at: Option<u64>,
    /// Body payload bytes seen so far (for `flip_at`).
    data_seen: u64,
    /// Counts flipped bytes.
    flips: Option<&'a AtomicU64>,
}

impl<'a> Pipe<'a> {
    fn new(
        to: Option<&'a mut TcpStream>,
        budget: Option<u64>,
        counter: Option<&'a AtomicU64>,
    ) -> Self {
        Pipe {
            to,
            budget,
            sent: 0,
            counter,
            flip_at: None,
            data_seen: 0,
            flips: None,
        }
    }

    /// Forward body payload bytes, flipping the one at `flip_at`.
    async fn send_data(&mut self, data: &[u8]) -> io::Result<bool> {
        let start = self.data_seen;
        self.data_seen += data.len() as u64;
        match self.flip_at {
            Some(at) if at >= start && at < self.data_seen => {
                let mut owned = data.to_vec();
                let i = usize::try_from(at - start).unwrap_or(0);
                owned[i] ^= 0x01;
                if let Some(f) = self.flips {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                self.send(&owned).await
            }
            _ => self.send(data).await,
        }
    }

    /// Forward `data`; `Ok(false)` once the budget is used up (the rest is
    /// not sent).
    async fn send(&mut self, data: &[u8]) -> io::Result<bool> {
        let mut data = data;
        let mut cut = false;
        if let Some(b) = self.budget {
            let left = b.saturating_sub(self.sent);
            if (data.len() as u64) >= left {
                data = &data[..usize::try_from(left).unwrap_or(0)];
                cut = true;
            }
        }
        if let Some(to) = self.to.as_deref_mut() {
            to.write_all(data).await?;
            if cut {
                to.flush().await?;
            }
            if let Some(c) = self.counter {
                c.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        self.sent += data.len() as u64;
        Ok(!cut)
    }
}

/// Forward (or discard) a body framed as `head` says. `Ok(false)`: cut.
async fn body(
    r: &mut BufReader<TcpStream>,
    head: &Head,
    to_eof: bool,
    pipe: &mut Pipe<'_>,
) -> io::Result<bool> {
    if head.chunked {
        loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if !pipe.send(&line).await? {
                return Ok(false);
            }
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.trim().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then an empty line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    if !pipe.send(&t).await? {
                        return Ok(false);
                    }
                    if t == b"\r\n" || t == b"\n" {
                        return Ok(true);
                    }
                }
            }
            if !copy_n(r, size, pipe, true).await? || !copy_n(r, 2, pipe, false).await? {
                return Ok(false);
            }
        }
    }
    match head.content_length {
        Some(n) => copy_n(r, n, pipe, true).await,
        None if to_eof => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok(true);
                }
                if !pipe.send_data(&buf[..n]).await? {
                    return Ok(false);
                }
            }
        }
        None => Ok(true),
    }
}

/// Forward `n` bytes; `data`: they are body payload (may be corrupted).
async fn copy_n(
    r: &mut BufReader<TcpStream>,
    mut n: u64,
    pipe: &mut Pipe<'_>,
    data: bool,
) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = usize::try_from(n.min(buf.len() as u64)).unwrap_or(buf.len());
        let got = r.read(&mut buf[..want]).await?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let ok = if data {
            pipe.send_data(&buf[..got]).await?
        } else {
            pipe.send(&buf[..got]).await?
        };
        if !ok {
            return Ok(false);
        }
        n -= got as u64;
    }
    Ok(true)
}

/// Close with a TCP RST rather than a FIN.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

fn error_response(status: u16, retry_after: Option<u64>, head_request: bool) -> Vec<u8> {
    let (reason, code) = match status {
        503 => ("Slow Down", "SlowDown"),
        500 => ("Internal Server Error", "InternalError"),
        403 => ("Forbidden", "AccessDenied"),
        _ => ("Error", "InternalError"),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the xferkit fault proxy</Message>\
         <RequestId>xferkit-fault</RequestId></Error>"
    );
    let len = if head_request { 0 } else { body.len() };
    let retry_after = retry_after
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
         x-ms-error-code: ServerBusy\r\n{retry_after}Content-Length: {len}\r\n\r\n"
    );
    if !head_request {
        out.push_str(&body);
    }
    out.into_bytes()
}

/// One client connection, request by request.
async fn serve(client: TcpStream, shared: &Shared) -> io::Result<()> {
    let mut client = BufReader::new(client);
    let mut upstream: Option<BufReader<TcpStream>> = None;
    loop {
        let Some(mut req) = read_head(&mut client).await? else {
            return Ok(());
        };
        shared.counters.requests.fetch_add(1, Ordering::SeqCst);
        let mut parts = req.first().split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let is_head = method == "HEAD";
        shared.remember(&method, &target, &req);
        let fault = shared.pick(&method, &target, &req);
        if req.expect_continue {
            // Answer `100 Continue` here and do not forward the expectation,
            // so the body flows whatever the fault.
            client
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
            req.lines
                .retain(|l| !l.to_ascii_lowercase().starts_with("expect:"));
            req.expect_continue = false;
        }
        match fault {
            Some(f @ (Fault::Status(code) | Fault::StatusRetryAfter(code, _))) => {
                let retry_after = match f {
                    Fault::StatusRetryAfter(_, s) => Some(s),
                    _ => None,
                };
                shared.counters.statuses.fetch_add(1, Ordering::SeqCst);
                let mut sink = Pipe::new(None, None, None);
                body(&mut client, &req, false, &mut sink).await?;
                client
                    .get_mut()
                    .write_all(&error_response(code, retry_after, is_head))
                    .await?;
                if req.connection_close {
                    return Ok(());
                }
                continue;
            }
            Some(Fault::Stall(d)) => {
                shared.counters.stalls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(d).await;
            }
            _ => {}
        }
        if upstream.is_none() {
            upstream = Some(BufReader::new(TcpStream::connect(shared.upstream).await?));
        }
        let Some(up) = upstream.as_mut() else {
            return Ok(());
        };
        // Request: head and body to the upstream.
        let req_budget = match fault {
            Some(Fault::ResetRequestAfter(n)) => Some(n),
            _ => None,
        };
        let mut pipe = Pipe::new(
            Some(up.get_mut()),
            req_budget,
            Some(&shared.counters.bytes_up),
        );
        if let Some(Fault::CorruptRequestBody(at)) = fault {
            pipe.flip_at = Some(at);
            pipe.flips = Some(&shared.counters.corruptions);
        }
        let whole =
            pipe.send(&req.bytes()).await? && body(&mut client, &req, false, &mut pipe).await?;
        if !whole {
            shared.counters.resets.fetch_add(1, Ordering::SeqCst);
            if let Some(up) = upstream.take() {
                reset(up.into_inner());
            }
            reset(client.into_inner());
            return Ok(());
        }
        // Response: interim 1xx heads, the final head, its body.
        let resp_budget = match fault {
            Some(Fault::ResetResponseAfter(n)) => Some(n),
            _ => None,
        };
        let mut pipe = Pipe::new(
            Some(client.get_mut()),
            resp_budget,
            Some(&shared.counters.bytes_down),
        );
        if let Some(Fault::CorruptResponseBody(at)) = fault {
            pipe.flip_at = Some(at);
            pipe.flips = Some(&shared.counters.corruptions);
        }
        let (resp, cut) = loop {
            let Some(mut resp) = read_head(up).await? else {
                return Ok(()); // upstream closed without answering
            };
            rewrite_location(&mut resp, shared);
            let status: u16 = resp
                .first()
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if !pipe.send(&resp.bytes()).await? {
                break (resp, true);
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let no_body = is_head || status == 204 || status == 304;
            if no_body {
                break (resp, false);
            }
            let to_eof = resp.content_length.is_none() && !resp.chunked;
            let whole = body(up, &resp, to_eof, &mut pipe).await?;
            break (resp, !whole);
        };
        if cut {
            shared.counters.resets.fetch_add(1, Ordering::SeqCst);
            if let Some(up) = upstream.take() {
                reset(up.into_inner());
            }
            reset(client.into_inner());
            return Ok(());
        }
        let until_eof = resp.content_length.is_none() && !resp.chunked;
        if resp.connection_close || until_eof {
            upstream = None;
        }
        if req.connection_close || (until_eof && !is_head) {
            return Ok(());
        }
    }
}

/// Point `Location` headers that name the upstream at the proxy instead.
fn rewrite_location(head: &mut Head, shared: &Shared) {
    for l in head.lines.iter_mut().skip(1) {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("location") {
            continue;
        }
        let v = v.trim();
        if let Some(o) = shared
            .upstream_origins
            .iter()
            .find(|o| v.starts_with(o.as_str()))
        {
            *l = format!("{}: {}{}", k.trim(), shared.origin, &v[o.len()..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every request with its body length, and
    /// serves `GET /big` as 1 MiB.
    async fn upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut r = BufReader::new(s);
                    while let Ok(Some(h)) = read_head(&mut r).await {
                        // Request bodies are kept for `x-sum`, the sum of
                        // their bytes (seen corrupted or not).
                        let mut got =
                            vec![0u8; usize::try_from(h.content_length.unwrap_or(0)).unwrap_or(0)];
                        let len = if h.content_length.is_some() {
                            if r.read_exact(&mut got).await.is_err() {
                                return;
                            }
                            got.len() as u64
                        } else {
                            let mut sink = Pipe::new(None, None, None);
                            if body(&mut r, &h, false, &mut sink).await.is_err() {
                                return;
                            }
                            sink.sent
                        };
                        let sum: u64 = got.iter().map(|b| u64::from(*b)).sum();
                        let resp = if h.first().starts_with("GET /big") {
                            let mut v =
                                b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
                            v.extend(std::iter::repeat_n(b'x', 1 << 20));
                            v
                        } else {
                            let b = len.to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\nLocation: http://{addr}/session/1\r\nx-sum: {sum}\r\nContent-Length: {}\r\n\r\n{b}",
                                b.len()
                            )
                            .into_bytes()
                        };
                        if r.get_mut().write_all(&resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn passes_through_and_rewrites_locations() {
        let up = upstream().await;
        let p = FaultProxy::start(&format!("http://{up}/ignored"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let c = client();
        for _ in 0..3 {
            let r = c
                .put(format!("{}/x", p.url()))
                .body(vec![0u8; 5000])
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                r.headers().get("location").and_then(|v| v.to_str().ok()),
                Some(format!("{}/session/1", p.url()).as_str())
            );
            assert_eq!(r.text().await.unwrap_or_default(), "5000");
        }
        let s = p.stats();
        assert_eq!((s.requests, s.faults()), (3, 0));
        assert!(s.bytes_up > 3 * 5000 && s.bytes_down > 0, "{s:?}");
        assert_eq!(s.connections, 1, "keep-alive connection reused");
        let seen = p.requests();
        assert_eq!(seen.len(), 3);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].target.as_str()),
            ("PUT", "/x")
        );
        assert_eq!(seen[0].header("Content-Length"), Some("5000"));
        assert_eq!(
            p.endpoint_for("http://h:1/devstoreaccount1"),
            format!("{}/devstoreaccount1", p.url())
        );
    }

    #[tokio::test]
    async fn status_faults_answer_without_forwarding_then_clear() {
        let up = upstream().await;
        let p = FaultProxy::start(&up.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        p.set_rules(vec![Rule::new(Fault::Status(503)).method("PUT").times(2)]);
        let c = client();
        let mut codes = Vec::new();
        for _ in 0..3 {
            let r = c
                .put(format!("{}/k?partNumber=1", p.url()))
                .body(vec![1u8; 100])
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            codes.push(r.status().as_u16());
            let text = r.text().await.unwrap_or_default();
            if codes.len() == 1 {
                assert!(text.contains("<Code>SlowDown</Code>"), "{text}");
            }
        }
        assert_eq!(codes, vec![503, 503, 200]);
        assert_eq!(p.stats().statuses, 2);
        // A rule on a header fires only on requests that carry it.
        p.set_rules(vec![
            Rule::new(Fault::Status(403)).with_header("X-Amz-Checksum-Mode"),
        ]);
        let plain = c.get(format!("{}/k", p.url())).send().await;
        let asked = c
            .get(format!("{}/k", p.url()))
            .header("x-amz-checksum-mode", "ENABLED")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.map(|r| r.status().as_u16()).unwrap_or(0), 200);
        assert_eq!(asked.status().as_u16(), 403);
        let text = asked.text().await.unwrap_or_default();
        assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
        p.clear();
        // GETs never matched the rule.
        let r = c
            .get(format!("{}/k", p.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 200);
        // The same answer, telling the client when to come back.
        p.set_rules(vec![Rule::new(Fault::StatusRetryAfter(503, 3)).times(1)]);
        let r = c
            .get(format!("{}/k", p.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status().as_u16(), 503);
        let ra = r
            .headers()
            .get("retry-after")
            .map(|v| v.as_bytes().to_vec());
        assert_eq!(ra.as_deref(), Some(&b"3"[..]));
    }

    #[tokio::test]
    async fn resets_cut_requests_and_responses() {
        let up = upstream().await;
        let p = FaultProxy::start(&up.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        p.set_rules(vec![
            Rule::new(Fault::ResetRequestAfter(1000))
                .method("PUT")
                .times(1),
            Rule::new(Fault::ResetResponseAfter(100_000))
                .path_contains("/big")
                .times(1),
        ]);
        let c = client();
        let e = c
            .put(format!("{}/x", p.url()))
            .body(vec![0u8; 200_000])
            .send()
            .await;
        assert!(e.is_err(), "request cut: {e:?}");
        // Cut mid-body: headers arrive, the body fails.
        let r = c
            .get(format!("{}/big", p.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.bytes().await.is_err(), "response cut");
        let r = c
            .get(format!("{}/big", p.url()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.bytes().await.map(|b| b.len()).unwrap_or(0), 1 << 20);
        let s = p.stats();
        assert_eq!(s.resets, 2);
        assert!(s.connections >= 2);
    }

    #[tokio::test]
    async fn corruption_flips_one_body_byte_each_way() {
        let up = upstream().await;
        let p = FaultProxy::start(&up.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        p.set_rules(vec![
            Rule::new(Fault::CorruptRequestBody(3000))
                .method("PUT")
                .times(1),
            Rule::new(Fault::CorruptResponseBody(500_000))
                .path_contains("/big")
                .times(1),
        ]);
        let c = client();
        let mut sums = Vec::new();
        for _ in 0..2 {
            let r = c
                .put(format!("{}/x", p.url()))
                .body(vec![2u8; 5000])
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sums.push(
                r.headers()
                    .get("x-sum")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            );
            assert_eq!(r.text().await.unwrap_or_default(), "5000", "length kept");
        }
        // 2 ^ 1 == 3: one more than the untouched body.
        assert_eq!(sums, vec!["10001".to_string(), "10000".to_string()]);
        let big = |()| async {
            c.get(format!("{}/big", p.url()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = big(()).await;
        assert_eq!(first.len(), 1 << 20);
        let bad: Vec<usize> = (0..first.len()).filter(|i| first[*i] != b'x').collect();
        assert_eq!(bad, vec![500_000]);
        assert!(big(()).await.iter().all(|b| *b == b'x'), "fired once");
        assert_eq!(p.stats().corruptions, 2);
        // A body shorter than the offset is forwarded whole and not counted.
        p.set_rules(vec![Rule::new(Fault::CorruptRequestBody(10_000))]);
        let r = c
            .put(format!("{}/x", p.url()))
            .body(vec![2u8; 100])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.headers().get("x-sum").and_then(|v| v.to_str().ok()),
            Some("200")
        );
        assert_eq!(p.stats().corruptions, 2);
    }

    #[tokio::test]
    async fn every_nth_and_stall() {
        let up = upstream().await;
        let p = FaultProxy::start(&up.to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        p.set_rules(vec![
            Rule::new(Fault::Stall(Duration::from_secs(30))).every(2),
        ]);
        let c = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut ok = Vec::new();
        for _ in 0..4 {
            ok.push(c.get(format!("{}/x", p.url())).send().await.is_ok());
        }
        assert_eq!(ok, vec![true, false, true, false]);
        assert_eq!(p.stats().stalls, 2);
        p.clear();
        assert!(c.get(format!("{}/x", p.url())).send().await.is_ok());
    }
}
