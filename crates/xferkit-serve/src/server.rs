//! The request handler and the server handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xferkit_core::signed::UrlSigner;
use xferkit_core::{
    ByteRange, DynHandler, Error, ErrorKind, PresignMethod, PutOptions, TransferCtx, UploadSource,
    validate_key,
};

use crate::range;

/// What the server needs besides the store and its signer.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Path prefix the objects live under (the path of the store's
    /// `serve_url`, e.g. `/files`); empty for the root.
    pub base_path: String,
}

impl ServeOptions {
    /// Options for a store whose `serve_url` is `serve_url`.
    pub fn for_serve_url(serve_url: &str) -> Self {
        let path = url::Url::parse(serve_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        ServeOptions { base_path: path }
    }
}

struct State {
    store: DynHandler,
    signer: UrlSigner,
    base_path: String,
}

/// The axum router serving `store`: every request must carry a URL signed by
/// `signer` (see the crate docs).
pub fn router(store: DynHandler, signer: UrlSigner, options: ServeOptions) -> Router {
    let state = Arc::new(State {
        store,
        signer,
        base_path: options.base_path.trim_end_matches('/').to_string(),
    });
    Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
            let state = state.clone();
            async move { handle(&state, method, uri, headers, body).await }
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
    /// port, then configure the store's `serve_url`, then start).
    pub fn start(listener: TcpListener, router: Router) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
        });
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

fn query_params(uri: &Uri) -> (Option<String>, Option<String>) {
    let mut expires = None;
    let mut sig = None;
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "expires" if expires.is_none() => expires = Some(v.into_owned()),
                "sig" if sig.is_none() => sig = Some(v.into_owned()),
                _ => {}
            }
        }
    }
    (expires, sig)
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
    let (expires, sig) = query_params(&uri);
    if let Err(refusal) = state.signer.verify(
        signed_as,
        &key,
        expires.as_deref(),
        sig.as_deref(),
        SystemTime::now(),
    ) {
        tracing::info!(%method, key, %refusal, "refused");
        return text(StatusCode::FORBIDDEN, refusal.to_string());
    }
    if let Err(e) = validate_key(&key) {
        return text(StatusCode::BAD_REQUEST, e.to_string());
    }
    let response = match signed_as {
        PresignMethod::Get => get(state, &key, &headers, method == Method::HEAD).await,
        PresignMethod::Put => put(state, &key, &headers, body).await,
    };
    tracing::info!(%method, key, status = response.status().as_u16(), "served");
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn get(state: &State, key: &str, headers: &HeaderMap, head_only: bool) -> Response {
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
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private")
        .header(
            header::CONTENT_TYPE,
            obj.content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        );
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

async fn unsatisfiable(state: &State, key: &str, requested: Option<ByteRange>) -> Response {
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

async fn put(state: &State, key: &str, headers: &HeaderMap, body: Body) -> Response {
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
    let target = key.to_string();
    let stream = body.into_data_stream().map_err(move |e| {
        Error::backend(
            target.clone(),
            "the request body ended early",
            std::io::Error::other(e),
        )
    });
    let source = UploadSource::Stream {
        stream: Box::pin(stream),
        size,
    };
    match state
        .store
        .upload(key, source, &options, &TransferCtx::none())
        .await
    {
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
