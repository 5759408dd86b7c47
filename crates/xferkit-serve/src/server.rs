//! The request handler and the server handle.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xferkit_core::{
    ByteRange, DynHandler, Error, ErrorKind, Key, PresignMethod, PutOptions, TransferCtx,
    UploadSource,
};
use xferkit_local::signed::{MAX_SIZE_PARAM, UrlSigner};

use crate::conn::{self, Limits};
use crate::range;

/// What the server needs besides the store and its signer. The limits have
/// the defaults of the store's `serve_*` keys (see `docs/config.md`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Path prefix the objects live under (the path of the store's
    /// `serve_url`, e.g. `/files`); empty for the root.
    pub base_path: String,
    /// A client must send a whole request head within this (and a
    /// kept-alive connection may be idle this long). Default 10 s.
    pub header_timeout: Duration,
    /// A request body that receives nothing, or a response the client
    /// reads nothing of, for this long ends its connection. Default 60 s.
    pub idle_timeout: Duration,
    /// Connections served at once; more get `503` and are closed at once.
    /// Default 512.
    pub max_connections: usize,
    /// Content types shown inline (with a sandboxing CSP) besides the
    /// passive built-in ones; everything else is an attachment. Lowercase,
    /// no parameters.
    pub inline_types: Vec<String>,
    /// Largest PUT body; larger ones get `413` and leave nothing.
    pub max_upload_size: Option<u64>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            base_path: String::new(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            inline_types: Vec::new(),
            max_upload_size: None,
        }
    }
}

impl ServeOptions {
    /// Options for a store whose `serve_url` is `serve_url`.
    pub fn for_serve_url(serve_url: &str) -> Self {
        let path = url::Url::parse(serve_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        ServeOptions {
            base_path: path,
            ..Default::default()
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
        }
    }
}

struct State {
    store: DynHandler,
    signer: UrlSigner,
    base_path: String,
    inline_types: Vec<String>,
    max_upload_size: Option<u64>,
    idle_timeout: Duration,
}

/// The axum router serving `store`: every request must carry a URL signed by
/// `signer` (see the crate docs). Serve it with [`Server::start_with`] and
/// the same options for the connection limits.
pub fn router(store: DynHandler, signer: UrlSigner, options: ServeOptions) -> Router {
    let state = Arc::new(State {
        store,
        signer,
        base_path: options.base_path.trim_end_matches('/').to_string(),
        inline_types: options
            .inline_types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase())
            .collect(),
        max_upload_size: options.max_upload_size,
        idle_timeout: options.idle_timeout,
    });
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
            let state = state.clone();
            async move {
                let mut r = handle(&state, method, uri, headers, body).await;
                // No response is ever sniffed into something more active.
                r.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                r
            }
        },
    )
}

/// A running server; stops when [`Server::shutdown`] is called or it is dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Serve `router` on an already-bound listener (bind first to learn the
    /// port, then configure the store's `serve_url`, then start), with the
    /// default connection limits.
    pub fn start(listener: TcpListener, router: Router) -> std::io::Result<Server> {
        Self::start_with(listener, router, &ServeOptions::default())
    }

    /// [`Server::start`] with the connection limits of `options`: HTTP/1
    /// only, `header_timeout`, `idle_timeout` for responses the client
    /// stops reading, `max_connections`.
    pub fn start_with(
        listener: TcpListener,
        router: Router,
        options: &ServeOptions,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let limits = options.limits();
        let task = tokio::spawn(conn::accept_loop(listener, router, limits, token));
        Ok(Server {
            addr,
            stop,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, finish in-flight requests, and return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }

    /// Wait until the server stops by itself (an accept error) or `stop` fires.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> std::io::Result<()> {
        stop.await;
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Status for a store error. Server-side details (paths, causes) are logged,
/// not sent.
fn error_response(key: &str, e: &Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::InvalidKey | ErrorKind::InvalidUrl => StatusCode::BAD_REQUEST,
        ErrorKind::AlreadyExists | ErrorKind::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorKind::InvalidRange => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorKind::NotSupported => StatusCode::NOT_IMPLEMENTED,
        // The store's `max_upload_size`.
        ErrorKind::Refused => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::warn!(key, error = %e.chain(), "request failed");
        return text(
            status,
            format!("{key}: the store failed to handle the request"),
        );
    }
    text(
        status,
        format!(
            "{key}: {}",
            status.canonical_reason().unwrap_or("request failed")
        ),
    )
}

/// The signature parameters of a request's query.
#[derive(Default)]
struct Signed {
    expires: Option<String>,
    max_size: Option<String>,
    sig: Option<String>,
}

fn query_params(uri: &Uri) -> Signed {
    let mut p = Signed::default();
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            let slot = match &*k {
                "expires" => &mut p.expires,
                MAX_SIZE_PARAM => &mut p.max_size,
                "sig" => &mut p.sig,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(v.into_owned());
            }
        }
    }
    p
}

async fn handle(
    state: &State,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let signed_as = match method {
        Method::GET | Method::HEAD => PresignMethod::Get,
        Method::PUT => PresignMethod::Put,
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET, HEAD or PUT");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, PUT"));
            return r;
        }
    };
    let Some(encoded) = uri
        .path()
        .strip_prefix(&state.base_path)
        .and_then(|p| p.strip_prefix('/'))
    else {
        return text(StatusCode::NOT_FOUND, "not under this server's base path");
    };
    let Ok(key) = percent_decode_str(encoded).decode_utf8() else {
        return text(StatusCode::BAD_REQUEST, "the key is not valid UTF-8");
    };
    let key = key.into_owned();
    // The signature is checked before anything else touches the store.
    let p = query_params(&uri);
    let signed_max = match state.signer.verify_with_limit(
        signed_as,
        &key,
        p.expires.as_deref(),
        p.max_size.as_deref(),
        p.sig.as_deref(),
        SystemTime::now(),
    ) {
        Ok(m) => m,
        Err(refusal) => {
            tracing::info!(%method, key, %refusal, "refused");
            return text(StatusCode::FORBIDDEN, refusal.to_string());
        }
    };
    let key = match Key::new(key) {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let response = match signed_as {
        PresignMethod::Get => get(state, &key, &headers, method == Method::HEAD).await,
        PresignMethod::Put => {
            let limit = match (signed_max, state.max_upload_size) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            put(state, &key, &headers, body, limit).await
        }
    };
    tracing::info!(%method, %key, status = response.status().as_u16(), "served");
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn get(state: &State, key: &Key, headers: &HeaderMap, head_only: bool) -> Response {
    let requested = header_str(headers, header::RANGE).and_then(range::parse);
    // One store call describes the object and opens exactly the bytes sent,
    // so the headers always match the body.
    let (obj, stream) = if head_only {
        match state.store.stat(key).await {
            Ok(o) => (o, None),
            Err(e) => return error_response(key, &e),
        }
    } else {
        match state.store.download_stream(key, requested).await {
            Ok((o, s)) => (o, Some(s)),
            Err(e) if e.kind() == ErrorKind::InvalidRange => {
                return unsatisfiable(state, key, requested).await;
            }
            Err(e) => return error_response(key, &e),
        }
    };
    let etag = obj.etag.as_ref().map(|e| format!("\"{e}\""));
    if let (Some(etag), Some(inm)) = (&etag, header_str(headers, header::IF_NONE_MATCH))
        && inm.split(',').any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        })
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let span = match requested {
        None => 0..obj.size,
        Some(r) => match r.resolve(obj.size, key) {
            Ok(span) => span,
            Err(_) => return unsatisfiable(state, key, requested).await,
        },
    };
    let status = if requested.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let len = span.end - span.start;
    let content_type = obj
        .content_type
        .as_deref()
        .filter(|t| HeaderValue::from_str(t).is_ok())
        .unwrap_or("application/octet-stream");
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private")
        .header(header::CONTENT_TYPE, content_type);
    match presentation(content_type, &state.inline_types) {
        Presentation::Inline => {}
        Presentation::Sandboxed => {
            builder = builder.header(header::CONTENT_SECURITY_POLICY, SANDBOX);
        }
        Presentation::Attachment => {
            builder = builder
                .header(header::CONTENT_SECURITY_POLICY, LOCKED)
                .header(header::CONTENT_DISPOSITION, attachment(key));
        }
    }
    if let Some(etag) = &etag {
        builder = builder.header(header::ETAG, etag.as_str());
    }
    if let Some(t) = obj.last_modified {
        builder = builder.header(header::LAST_MODIFIED, httpdate(t));
    }
    if requested.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", span.start, span.end - 1, obj.size),
        );
    }
    let body = match stream {
        Some(s) if len > 0 => Body::from_stream(s.map_err(std::io::Error::other)),
        _ => Body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response header"))
}

async fn unsatisfiable(state: &State, key: &Key, requested: Option<ByteRange>) -> Response {
    let shown = requested.map(|r| r.to_string()).unwrap_or_default();
    let mut resp = text(
        StatusCode::RANGE_NOT_SATISFIABLE,
        format!("{key}: range {shown} is not satisfiable"),
    );
    if let Ok(obj) = state.store.stat(key).await
        && let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.size))
    {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// How a browser may show an object: passive types inline; types the
/// operator listed in `serve_inline_types` inline but sandboxed (no script,
/// no forms, an opaque origin); everything else (HTML, SVG, XML,
/// JavaScript, PDF, unknown types...) as a download, sandboxed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presentation {
    Inline,
    Sandboxed,
    Attachment,
}

/// Served with a listed type shown inline: no script, no forms, no
/// plugins, an opaque origin.
const SANDBOX: &str = "sandbox";
/// Served with an attachment, should a browser show it anyway.
const LOCKED: &str = "sandbox; default-src 'none'";

/// Types no browser runs script in: raster images, audio, video, plain text
/// (with `nosniff`, which every response carries).
fn is_passive(essence: &str) -> bool {
    matches!(
        essence,
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/bmp"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
            | "text/plain"
    ) || essence.starts_with("audio/")
        || essence.starts_with("video/")
}

fn presentation(content_type: &str, inline_types: &[String]) -> Presentation {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if is_passive(&essence) {
        Presentation::Inline
    } else if inline_types.contains(&essence) {
        Presentation::Sandboxed
    } else {
        Presentation::Attachment
    }
}

/// RFC 6266 `attachment` naming the key's last segment (RFC 8187 encoding).
fn attachment(key: &str) -> String {
    const ATTR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let name = key.rsplit('/').next().unwrap_or(key);
    format!(
        "attachment; filename*=UTF-8''{}",
        utf8_percent_encode(name, ATTR)
    )
}

/// Why the server cut a request body short.
#[derive(Debug, Clone, Copy)]
enum Cut {
    TooLarge(u64),
    Stalled,
}

/// The request body as a store upload stream that ends with an error when
/// it grows past `limit` or when nothing arrives for `idle`, saying why in
/// `cut`.
fn guarded_body(
    body: Body,
    key: &str,
    limit: Option<u64>,
    idle: Duration,
    cut: Arc<OnceLock<Cut>>,
) -> impl Stream<Item = xferkit_core::Result<axum::body::Bytes>> + Send + 'static {
    let key = key.to_string();
    let data = body.into_data_stream();
    futures::stream::unfold((data, 0u64, false), move |(mut data, total, done)| {
        let key = key.clone();
        let cut = cut.clone();
        async move {
            if done {
                return None;
            }
            let fail = |c: Cut, why: &str| {
                let _ = cut.set(c);
                Err(Error::backend(key.clone(), why, "request body cut"))
            };
            match tokio::time::timeout(idle, data.next()).await {
                Err(_) => Some((
                    fail(Cut::Stalled, "the request body stalled"),
                    (data, total, true),
                )),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some((
                    Err(Error::backend(
                        key,
                        "the request body ended early",
                        std::io::Error::other(e),
                    )),
                    (data, total, true),
                )),
                Ok(Some(Ok(chunk))) => {
                    let total = total + chunk.len() as u64;
                    match limit {
                        Some(max) if total > max => Some((
                            fail(Cut::TooLarge(max), "the request body is too large"),
                            (data, total, true),
                        )),
                        _ => Some((Ok(chunk), (data, total, false))),
                    }
                }
            }
        }
    })
}

fn too_large(key: &str, max: u64) -> Response {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{key}: the body is larger than this URL allows ({max} bytes)"),
    )
}

async fn put(
    state: &State,
    key: &Key,
    headers: &HeaderMap,
    body: Body,
    limit: Option<u64>,
) -> Response {
    let mut options = PutOptions::default();
    if let Some(ct) = header_str(headers, header::CONTENT_TYPE) {
        options.content_type = Some(ct.to_string());
    }
    match header_str(headers, header::IF_NONE_MATCH) {
        None => {}
        Some("*") => options.if_not_exists = true,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "PUT supports only `If-None-Match: *`",
            );
        }
    }
    let size = header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    // Refused before a byte of the body is read (and before a client that
    // sent `Expect: 100-continue` is told to send it).
    if let (Some(size), Some(max)) = (size, limit)
        && size > max
    {
        return too_large(key, max);
    }
    let cut = Arc::new(OnceLock::new());
    let stream = guarded_body(body, key, limit, state.idle_timeout, cut.clone());
    let source = UploadSource::Stream {
        stream: Box::pin(stream),
        size,
    };
    let stored = state
        .store
        .upload(key, source, &options, &TransferCtx::none())
        .await;
    match cut.get() {
        Some(Cut::TooLarge(max)) => return too_large(key, *max),
        Some(Cut::Stalled) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("{key}: no body data arrived for the idle timeout"),
            );
        }
        None => {}
    }
    match stored {
        Ok(obj) => {
            let mut r = StatusCode::CREATED.into_response();
            if let Some(etag) = obj.etag
                && let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\""))
            {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Err(e) => error_response(key, &e),
    }
}

/// RFC 9110 IMF-fixdate.
fn httpdate(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(
            httpdate(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            httpdate(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "Wed, 18 Nov 2026 11:06:40 GMT"
        );
        assert_eq!(
            httpdate(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn base_path_comes_from_the_serve_url() {
        assert_eq!(
            ServeOptions::for_serve_url("http://h:1/files/").base_path,
            "/files"
        );
        assert_eq!(ServeOptions::for_serve_url("http://h:1").base_path, "");
    }
}
