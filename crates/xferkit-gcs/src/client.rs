//! The SDK client, the raw requests gcloud-storage does not do the way we
//! need, credentials, and the mapping of every failure to an xferkit error.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as SdkError;
use gcloud_storage::http::objects::Object;
use gcloud_storage::sign::SignBy;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_middleware::reqwest;
use token_source::TokenSource;
use xferkit_core::status::{self, Answer};
use xferkit_core::{BoxError, Error, RemoteObject, Result};

use crate::config::GcsConfig;
use crate::sign::{KeyError, ServiceAccountKey};

/// How long to wait for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence on an open connection before the request fails (Transient).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How presigned URLs are signed.
pub(crate) enum Signer {
    /// Locally, with a service-account key.
    Key(Box<ServiceAccountKey>),
    /// By the IAM `signBlob` API as the metadata server's service account
    /// (through gcloud-storage; on Google Cloud without a key file).
    Iam,
    /// Not possible with these credentials.
    None,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Key(k) => f.debug_tuple("Key").field(k).finish(),
            Signer::Iam => f.write_str("Iam"),
            Signer::None => f.write_str("None"),
        }
    }
}

/// Everything one store needs to talk to GCS.
pub(crate) struct Gcs {
    pub client: Client,
    /// The same HTTP client the SDK uses, for our own requests.
    pub http: ClientWithMiddleware,
    /// Access tokens (`None`: anonymous).
    token: Option<Arc<dyn TokenSource>>,
    /// `{endpoint}/upload/storage/v1`.
    pub upload_base: String,
    /// `{endpoint}/storage/v1` (the JSON API, as the SDK addresses it).
    pub json_base: String,
    pub endpoint: url::Url,
    pub signer: Signer,
}

impl fmt::Debug for Gcs {
    // The token source and the SDK client are left out: neither is useful to
    // read and the former may print a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcs")
            .field("endpoint", &self.endpoint.as_str())
            .field("anonymous", &self.token.is_none())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Gcs {
    /// Build the client for a validated config of store `store`.
    pub(crate) async fn connect(store: &str, cfg: &GcsConfig) -> Result<Self> {
        let config_err = |key: &str, what: String, source: Option<BoxError>| Error::InvalidConfig {
            message: format!("{key} {what}"),
            source,
        };
        let endpoint_str = cfg.endpoint_url();
        let endpoint = url::Url::parse(&endpoint_str)
            .map_err(|e| config_err("endpoint", format!("= {endpoint_str:?}: {e}"), None))?;
        let http_client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // A resumable chunk's "308 Resume Incomplete" is an answer, not a redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::backend(&endpoint_str, "cannot build the HTTP client", e))?;
        let http = reqwest_middleware::ClientBuilder::new(http_client).build();

        let mut cc = ClientConfig {
            http: Some(http.clone()),
            storage_endpoint: endpoint_str.clone(),
            project_id: cfg.project_id.clone(),
            ..Default::default()
        };
        let key_file = match &cfg.credentials_file {
            Some(path) => {
                let text = tokio::fs::read_to_string(path).await.map_err(|e| {
                    config_err(
                        "credentials_file",
                        format!("= {:?} cannot be read: {e}", path.display()),
                        Some(e.into()),
                    )
                })?;
                Some(text)
            }
            None => None,
        };
        if cfg.anonymous {
            cc = cc.anonymous();
        } else if let Some(text) = &key_file {
            let creds = gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile::new_from_str(text)
                .await
                .map_err(|e| {
                    config_err(
                        "credentials_file",
                        format!("is not a usable credentials file: {e}"),
                        None,
                    )
                })?;
            cc = cc.with_credentials(creds).await.map_err(|e| {
                config_err("credentials_file", format!("could not be used: {e}"), None)
            })?;
        } else {
            cc = cc.with_auth().await.map_err(|e| Error::InvalidConfig {
                message: format!(
                    "no GCS credentials found (set credentials_file, \
                     GOOGLE_APPLICATION_CREDENTIALS, or anonymous = true): {e}"
                ),
                source: None,
            })?;
        }
        if cfg.project_id.is_some() {
            cc.project_id.clone_from(&cfg.project_id);
        }

        let signer = match &key_file {
            Some(text) => match ServiceAccountKey::from_json(text) {
                Ok(Some(k)) => Signer::Key(Box::new(k)),
                Ok(None) => Signer::None,
                Err(KeyError(m)) => {
                    return Err(config_err("credentials_file", m, None));
                }
            },
            None if cfg.anonymous => Signer::None,
            None => match (&cc.default_sign_by, &cc.default_google_access_id) {
                (Some(SignBy::PrivateKey(pem)), Some(email)) => {
                    let pem = String::from_utf8_lossy(pem);
                    match ServiceAccountKey::from_pem(email, &pem) {
                        Ok(k) => Signer::Key(Box::new(k)),
                        Err(e) => {
                            tracing::warn!(store, "application-default key cannot sign URLs: {e}");
                            Signer::None
                        }
                    }
                }
                (Some(SignBy::SignBytes), Some(_)) => Signer::Iam,
                _ => Signer::None,
            },
        };
        // The key's PEM is no longer needed in the SDK config: we sign ourselves.
        if matches!(signer, Signer::Key(_)) {
            cc.default_sign_by = None;
        }

        let token = cc.token_source_provider.as_ref().map(|p| p.token_source());
        let client = Client::new(cc);
        Ok(Gcs {
            client,
            http,
            token,
            upload_base: format!("{endpoint_str}/upload/storage/v1"),
            json_base: format!("{endpoint_str}/storage/v1"),
            endpoint,
            signer,
        })
    }

    /// Add the `Authorization` header (unless anonymous).
    pub(crate) async fn authorize(
        &self,
        target: &str,
        rb: reqwest_middleware::RequestBuilder,
    ) -> Result<reqwest_middleware::RequestBuilder> {
        let rb = rb.header("X-Goog-Api-Client", "xferkit");
        match &self.token {
            None => Ok(rb),
            Some(ts) => {
                let t = ts
                    .token()
                    .await
                    .map_err(|e| map_sdk(target, SdkError::TokenSource(e)))?;
                Ok(rb.header(reqwest::header::AUTHORIZATION, t))
            }
        }
    }

    /// Send one of our own requests; non-2xx answers become errors.
    pub(crate) async fn send(
        &self,
        target: &str,
        rb: reqwest_middleware::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let rb = self.authorize(target, rb).await?;
        let resp = rb.send().await.map_err(|e| map_sdk(target, e.into()))?;
        check(target, resp).await
    }
}

/// `Ok(resp)` for 2xx, else the mapped error (with the service's message,
/// reason and `Retry-After`).
pub(crate) async fn check(target: &str, resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(status::parse_retry_after);
    let body = resp.bytes().await.unwrap_or_default();
    let (message, reason) = service_message(&body);
    Err(service_error(
        target,
        ServiceError {
            status: status.as_u16(),
            message,
            reason,
        },
        retry_after,
    ))
}

/// The `error.message` and first `error.errors[].reason` of a JSON error
/// body, else a bit of the body text.
fn service_message(body: &[u8]) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: String,
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        reason: Option<String>,
    }
    if let Ok(w) = serde_json::from_slice::<Wrapper>(body) {
        let reason = w.error.errors.into_iter().find_map(|i| i.reason);
        return (w.error.message, reason);
    }
    let text = String::from_utf8_lossy(body);
    (text.chars().take(200).collect(), None)
}

/// A failure reported by the service: its HTTP status, reason and message.
#[derive(Debug)]
pub(crate) struct ServiceError {
    pub status: u16,
    pub message: String,
    /// GCS's `errors[].reason` (`rateLimitExceeded`, `notFound`, ...).
    pub reason: Option<String>,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(r) = &self.reason {
            write!(f, " {r}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}
impl std::error::Error for ServiceError {}

/// Map an HTTP status (and the service's message) about `target` to a kind.
pub(crate) fn status_error(target: &str, status: u16, message: String) -> Error {
    let failure = ServiceError {
        status,
        message,
        reason: None,
    };
    service_error(target, failure, None)
}

/// Map a failure the service reported about `target` through the one status
/// table ([`xferkit_core::status`]): by reason first, then by status. For a
/// resumable session, 404 and 410 both mean the session is over
/// (`NotFound`). A final failure keeps the [`ServiceError`] as its source.
pub(crate) fn service_error(
    target: &str,
    failure: ServiceError,
    retry_after: Option<Duration>,
) -> Error {
    let reason = failure.reason.clone();
    Answer::new(Some(failure.status))
        .code(reason.as_deref())
        .retry_after(retry_after)
        .range("(refused by the service)")
        .error(target, failure)
}

/// Map a transport failure (no HTTP status).
fn transport_error(target: &str, e: reqwest::Error) -> Error {
    if let Some(s) = e.status() {
        return status_error(target, s.as_u16(), String::new());
    }
    // The URL may be a resumable session URI (a bearer capability): drop it.
    // A "decode" error that is not a JSON error is a body cut off mid-way
    // (connection reset while streaming a download): retryable.
    let cut_body = e.is_decode() && !chain_has(&e, |x| x.is::<serde_json::Error>());
    let transient = e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() || cut_body;
    let e = e.without_url();
    if transient {
        Error::transient(target, e)
    } else {
        Error::backend(target, "HTTP request failed", e)
    }
}

/// Map a gcloud-storage error about `target`.
pub(crate) fn map_sdk(target: &str, e: SdkError) -> Error {
    match e {
        SdkError::Response(r) => {
            let failure = ServiceError {
                status: r.code,
                reason: r
                    .errors
                    .into_iter()
                    .map(|i| i.reason)
                    .find(|r| !r.is_empty()),
                message: r.message,
            };
            service_error(target, failure, None)
        }
        SdkError::HttpClient(e) => transport_error(target, e),
        SdkError::RawResponse(e, _detail) => transport_error(target, e),
        SdkError::TokenSource(src) => {
            // Token refresh over the network may fail transiently; a refused
            // credential is a permission problem.
            let transient = chain_has(&*src, |e| {
                e.downcast_ref::<reqwest::Error>()
                    .is_some_and(|r| r.is_timeout() || r.is_connect())
            });
            if transient {
                Error::Transient {
                    target: target.to_string(),
                    retry_after: None,
                    source: Some(src),
                }
            } else {
                Error::PermissionDenied {
                    target: target.to_string(),
                    source: Some(src),
                }
            }
        }
        SdkError::HttpMiddleware(e) => Error::Backend {
            target: target.to_string(),
            message: "HTTP middleware failed".into(),
            source: Some(e.into()),
        },
        other => Error::backend(target, "unexpected answer", other),
    }
}

fn chain_has(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if pred(x) {
            return true;
        }
        cur = x.source();
    }
    false
}

/// A `RemoteObject` from the service's object resource.
pub(crate) fn to_remote(url: String, key: String, o: &Object) -> RemoteObject {
    let mut r = RemoteObject::new(url, key, u64::try_from(o.size).unwrap_or(0));
    let etag = o.etag.trim_matches('"');
    r.etag = (!etag.is_empty()).then(|| etag.to_string());
    r.version = (o.generation != 0).then(|| o.generation.to_string());
    r.checksum = checksum(o.crc32c.as_deref(), o.md5_hash.as_deref());
    r.content_type = o.content_type.clone().filter(|c| !c.is_empty());
    r.last_modified = o.updated.or(o.time_created).map(SystemTime::from);
    for (name, v) in xferkit_core::ObjectHeaders::NAMES.into_iter().zip([
        &o.cache_control,
        &o.content_disposition,
        &o.content_encoding,
        &o.content_language,
    ]) {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            r.headers.set(name, v.clone());
        }
    }
    r.storage_class = o.storage_class.clone().filter(|c| !c.is_empty());
    r.encryption_key = o.kms_key_name.clone().filter(|k| !k.is_empty());
    r.encryption = match (&r.encryption_key, &o.customer_encryption) {
        (Some(_), _) => Some("CMEK".to_string()),
        (None, Some(_)) => Some("CSEK".to_string()),
        (None, None) => None,
    };
    r.metadata = o
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    r
}

/// `crc32c:HEX`, else `md5:HEX`, from GCS's base64 hashes. CRC32C first:
/// downloads verify it on every path (a ranged one combines its parts'), and
/// composite objects have one; MD5 only where it is all.
fn checksum(crc32c: Option<&str>, md5: Option<&str>) -> Option<String> {
    let hex = |alg: &str, s: Option<&str>| {
        let d = base64::engine::general_purpose::STANDARD.decode(s?).ok()?;
        Some(format!("{alg}:{}", hex::encode(d)))
    };
    hex("crc32c", crc32c).or_else(|| hex("md5", md5))
}

/// A `RemoteObject` from the headers of an `alt=media` answer for the whole
/// object: the fields [`to_remote`] reads from the object resource
/// (`X-Goog-Hash: crc32c=B64,md5=B64`, one header or several).
pub(crate) fn remote_from_headers(
    url: String,
    key: String,
    h: &reqwest::header::HeaderMap,
) -> Result<RemoteObject> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let size = (text("x-goog-stored-content-length").or_else(|| text("content-length")))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::backend(&url, "the download has no length", "no Content-Length"))?;
    let mut r = RemoteObject::new(url, key, size);
    r.etag = text("etag").map(|e| e.trim_matches('"').to_string());
    r.version = text("x-goog-generation").map(str::to_string);
    let hashes: BTreeMap<&str, &str> = (h.get_all("x-goog-hash").iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|kv| kv.trim().split_once('='))
        .collect();
    r.checksum = checksum(hashes.get("crc32c").copied(), hashes.get("md5").copied());
    r.content_type = text("content-type").map(str::to_string);
    let rfc2822 = &time::format_description::well_known::Rfc2822;
    let modified = text("last-modified").and_then(|v| time::OffsetDateTime::parse(v, rfc2822).ok());
    r.last_modified = modified.map(SystemTime::from);
    for name in xferkit_core::ObjectHeaders::NAMES {
        if let Some(v) = text(name).filter(|v| !v.is_empty()) {
            r.headers.set(name, v);
        }
    }
    r.storage_class = text("x-goog-storage-class").map(str::to_string);
    for (k, v) in h {
        if let Some(name) = k.as_str().strip_prefix("x-goog-meta-") {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            r.metadata.insert(name.to_string(), v);
        }
    }
    Ok(r)
}

/// Parse an object resource from a response body.
pub(crate) fn parse_object(target: &str, body: &Bytes) -> Result<Object> {
    serde_json::from_slice(body)
        .map_err(|e| Error::backend(target, "the service's object resource could not be read", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xferkit_core::ErrorKind;

    /// The table is core's (`xferkit_core::status`, tested there). Here: a
    /// status reaches it and the error keeps the target and GCS's words.
    #[test]
    fn statuses_reach_the_shared_table() {
        let k = |s| status_error("gs://b/k", s, "m".into());
        assert_eq!(k(404).kind(), ErrorKind::NotFound);
        assert_eq!(k(410).kind(), ErrorKind::NotFound); // a session that is gone
        assert_eq!(k(412).kind(), ErrorKind::PreconditionFailed);
        assert!(k(503).is_retryable());
        assert!(!k(400).is_retryable());
        let e = k(403);
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.chain().contains("gs://b/k"), "{}", e.chain());
        assert!(e.chain().contains("HTTP 403: m"), "{}", e.chain());
    }

    #[test]
    fn sdk_errors_map_to_kinds() {
        let resp: gcloud_storage::http::error::ErrorResponse = serde_json::from_value(
            serde_json::json!({"code": 503, "message": "backend busy", "errors": []}),
        )
        .unwrap();
        let e = map_sdk("gs://b/k", SdkError::Response(resp));
        assert_eq!(e.kind(), ErrorKind::Transient);
        let resp: gcloud_storage::http::error::ErrorResponse = serde_json::from_value(
            serde_json::json!({"code": 404, "message": "No such object", "errors": []}),
        )
        .unwrap();
        assert_eq!(
            map_sdk("gs://b/k", SdkError::Response(resp)).kind(),
            ErrorKind::NotFound
        );
        let e = map_sdk("gs://b/k", SdkError::TokenSource("invalid_grant".into()));
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        // The reason decides before the status: a 403 for a rate limit is
        // throttling, not a refusal.
        let sdk = |code: u16, reason: &str| {
            let resp: gcloud_storage::http::error::ErrorResponse =
                serde_json::from_value(serde_json::json!({
                    "code": code, "message": "m",
                    "errors": [{"domain": "usageLimits", "reason": reason, "message": "m"}]
                }))
                .unwrap();
            map_sdk("gs://b/k", SdkError::Response(resp))
        };
        let e = sdk(403, "userRateLimitExceeded");
        assert!(e.is_retryable(), "{}", e.chain());
        assert!(
            e.chain().contains("HTTP 403 userRateLimitExceeded: m"),
            "{}",
            e.chain()
        );
        assert!(sdk(429, "rateLimitExceeded").is_retryable());
        assert_eq!(sdk(403, "forbidden").kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            sdk(412, "conditionNotMet").kind(),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(sdk(409, "conflict").kind(), ErrorKind::Backend);
    }

    /// A real answer (the fault proxy's 429 or 503 with `Retry-After`):
    /// the wait reaches the error the retry layer reads.
    #[tokio::test]
    async fn retry_after_of_a_429_or_503_reaches_the_error() {
        use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
        let proxy = FaultProxy::start("127.0.0.1:9").await.unwrap();
        let c = reqwest::Client::new();
        for (status, secs) in [(429, 2), (503, 7)] {
            proxy.set_rules(vec![Rule::new(Fault::StatusRetryAfter(status, secs))]);
            let resp = c
                .put(format!("{}/upload", proxy.url()))
                .send()
                .await
                .unwrap();
            let e = check("gs://b/k", resp).await.unwrap_err();
            let Error::Transient { retry_after, .. } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(*retry_after, Some(Duration::from_secs(secs)), "{status}");
            assert!(
                e.chain().contains(&format!("HTTP {status}")),
                "{}",
                e.chain()
            );
        }
        // Without the header, the retry layer's own backoff.
        proxy.set_rules(vec![Rule::new(Fault::Status(503))]);
        let resp = c.get(proxy.url()).send().await.unwrap();
        let e = check("gs://b/k", resp).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Transient {
                    retry_after: None,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn connection_failures_are_transient() {
        // A port nothing listens on (bound, then closed).
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/x?upload_id=SECRETSESSION"))
            .send()
            .await
            .unwrap_err();
        let e = transport_error("gs://b/k", err);
        assert!(e.is_retryable(), "{e:?}");
        assert!(!e.chain().contains("SECRETSESSION"), "{}", e.chain());
        assert!(!format!("{e:?}").contains("SECRETSESSION"));
    }

    #[test]
    fn service_messages_are_extracted() {
        assert_eq!(
            service_message(br#"{"error":{"code":412,"message":"Precondition Failed"}}"#),
            ("Precondition Failed".to_string(), None)
        );
        assert_eq!(
            service_message(
                br#"{"error":{"code":429,"message":"slow down","errors":[{"reason":"rateLimitExceeded"}]}}"#
            ),
            ("slow down".to_string(), Some("rateLimitExceeded".to_string()))
        );
        assert_eq!(service_message(b"plain"), ("plain".to_string(), None));
    }

    #[test]
    fn object_resources_become_remote_objects() {
        let o: Object = serde_json::from_value(serde_json::json!({
            "name": "p/k.txt", "bucket": "b", "id": "b/p/k.txt", "selfLink": "x", "mediaLink": "x",
            "size": "11", "generation": "1795613798481150",
            "metageneration": "1", "etag": "XrY7u+Ae7tCTyyK7j1rNww==",
            "md5Hash": "XrY7u+Ae7tCTyyK7j1rNww==", "crc32c": "yZRlqg==",
            "contentType": "text/plain", "updated": "2026-11-25T13:36:38.481142Z",
            "metadata": {"Title": "x"}
        }))
        .unwrap();
        let r = to_remote("gs://b/p/k.txt".into(), "k.txt".into(), &o);
        assert_eq!(r.size, 11);
        assert_eq!(r.etag.as_deref(), Some("XrY7u+Ae7tCTyyK7j1rNww=="));
        assert_eq!(r.version.as_deref(), Some("1795613798481150"));
        assert_eq!(r.checksum.as_deref(), Some("crc32c:c99465aa"));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        assert!(r.last_modified.is_some());
        assert_eq!(r.metadata.get("title").map(String::as_str), Some("x"));

        // The same object's `alt=media` answer (GCS sends X-Goog-Hash twice,
        // fake-gcs-server once with both): the same record, to the second.
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in [
            ("content-length", "11"),
            ("content-type", "text/plain"),
            ("etag", "\"XrY7u+Ae7tCTyyK7j1rNww==\""),
            ("last-modified", "Wed, 25 Nov 2026 13:36:38 GMT"),
            ("x-goog-generation", "1795613798481150"),
            ("x-goog-hash", "md5=XrY7u+Ae7tCTyyK7j1rNww=="),
            ("x-goog-hash", "crc32c=yZRlqg=="),
            ("x-goog-meta-title", "x"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let mut d = remote_from_headers(r.url.clone(), r.key.clone(), &h).unwrap();
        let lag = r
            .last_modified
            .unwrap()
            .duration_since(d.last_modified.unwrap());
        assert!(lag.unwrap() < Duration::from_secs(1));
        d.last_modified = r.last_modified;
        assert_eq!(d, r);
        h.remove("content-length");
        assert!(remote_from_headers(r.url.clone(), r.key.clone(), &h).is_err());
    }
}
