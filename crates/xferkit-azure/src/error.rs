//! Mapping `azure_core` errors to xferkit error kinds, without leaking secrets.
//!
//! Requests carry a SAS token in their query string, and transport errors
//! (reqwest's "error sending request for url (…)") quote the request URL. So
//! an SDK error is never kept as a `source`: it is flattened to a message with
//! every URL's query removed and any `sig=` value blanked, and that message
//! becomes the source.

use std::fmt;
use std::time::Duration;

use azure_core::error::ErrorKind as AzKind;
use azure_core::http::headers::{HeaderName, Headers};
use xferkit_core::Error;
use xferkit_core::status::{self, Answer, Mode};
use xferkit_core::url::redact;

/// A sanitized SDK error: status, service error code and message.
#[derive(Debug, Clone)]
pub(crate) struct AzureError(String);

impl fmt::Display for AzureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AzureError {}

impl AzureError {
    pub(crate) fn new(msg: impl AsRef<str>) -> Self {
        AzureError(redact(msg.as_ref()))
    }
}

/// What an operation was about, for naming and classifying its errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    /// Canonical URL of the object (or container).
    pub target: &'a str,
    /// A create-only write: conflicts mean `AlreadyExists`.
    pub create_only: bool,
    /// Range asked for, reported with `InvalidRange`.
    pub range: Option<&'a str>,
}

impl<'a> Op<'a> {
    pub(crate) fn on(target: &'a str) -> Self {
        Op {
            target,
            create_only: false,
            range: None,
        }
    }
    pub(crate) fn create_only(mut self, yes: bool) -> Self {
        self.create_only = yes;
        self
    }
}

/// Whether the service refused a body because its transactional checksum
/// did not match: Azure says `Md5Mismatch` / `Crc64Mismatch`; Azurite says
/// `InvalidOperation` "Provided contentMD5 doesn't match."
pub(crate) fn checksum_refused(code: Option<&str>, message: Option<&str>) -> bool {
    match code {
        Some("Md5Mismatch" | "Crc64Mismatch") => true,
        Some("InvalidOperation") => message.is_some_and(|m| m.contains("contentMD5")),
        _ => false,
    }
}

/// Pull `<Message>…</Message>` (first line) out of an XML error body.
fn xml_message(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let start = s.find("<Message>")? + "<Message>".len();
    let end = s[start..].find("</Message>")? + start;
    let msg = s[start..end].lines().next().unwrap_or("").trim();
    (!msg.is_empty()).then(|| msg.chars().take(300).collect())
}

/// The wait an Azure answer asks for: `x-ms-retry-after-ms`,
/// `retry-after-ms` (milliseconds), else `Retry-After` (seconds or a date),
/// the order of the Azure SDKs' own retry policy.
fn retry_after(headers: &Headers) -> Option<Duration> {
    use azure_core::http::headers::{RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
    let read = |name: HeaderName, parse: fn(&str) -> Option<Duration>| {
        headers.get_optional_str(&name).and_then(parse)
    };
    read(X_MS_RETRY_AFTER_MS, status::parse_retry_after_ms)
        .or_else(|| read(RETRY_AFTER_MS, status::parse_retry_after_ms))
        .or_else(|| read(RETRY_AFTER, status::parse_retry_after))
}

/// Convert an SDK error about `op`. An answer from the service goes
/// through the one status table ([`xferkit_core::status`]), as [`answer`]
/// reads it.
pub(crate) fn map(op: Op<'_>, what: &str, err: azure_core::Error) -> Error {
    let target = op.target.to_string();
    match err.kind() {
        AzKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let raw = raw_response.as_deref();
            let no_headers = Headers::new();
            let (headers, body) =
                raw.map_or((&no_headers, &[][..]), |r| (r.headers(), &r.body()[..]));
            answer(
                op,
                what,
                u16::from(*status),
                error_code.as_deref(),
                headers,
                body,
            )
        }
        AzKind::Connection | AzKind::Io => Error::Transient {
            target,
            retry_after: None,
            source: Some(Box::new(AzureError::new(format!(
                "{what}: {}",
                flatten(&err)
            )))),
        },
        AzKind::Credential => Error::PermissionDenied {
            target,
            source: Some(Box::new(AzureError::new(format!(
                "{what}: Microsoft Entra ID: {}",
                flatten(&err)
            )))),
        },
        _ => {
            let source = AzureError::new(format!("{what}: {}", flatten(&err)));
            Error::Backend {
                target,
                message: source.to_string(),
                source: Some(Box::new(source)),
            }
        }
    }
}

/// The error of a failed answer about `op`: its status, the service's
/// error code (`x-ms-error-code`), headers (request id, `Retry-After`) and
/// XML body (`<Message>`), through the one status table
/// ([`xferkit_core::status`]). A refused transactional checksum is read as
/// `Md5Mismatch` there (Azurite says `InvalidOperation` "Provided
/// contentMD5 doesn't match."). For an SDK call's answer ([`map`]) and for
/// each answer inside a batch response (`batch.rs`).
pub(crate) fn answer(
    op: Op<'_>,
    what: &str,
    status: u16,
    code: Option<&str>,
    headers: &Headers,
    body: &[u8],
) -> Error {
    let message = xml_message(body);
    let request_id = headers.get_optional_str(&HeaderName::from_static("x-ms-request-id"));
    let mut text = format!("{what}: HTTP {status}");
    if let Some(c) = code {
        text.push_str(&format!(" {c}"));
    }
    if let Some(m) = &message {
        text.push_str(&format!(": {m}"));
    }
    if let Some(id) = request_id {
        text.push_str(&format!(" (request id {id})"));
    }
    let table_code = if checksum_refused(code, message.as_deref()) {
        Some("Md5Mismatch")
    } else {
        code
    };
    let mode = if op.create_only {
        Mode::CreateOnly
    } else {
        Mode::Plain
    };
    Answer::new(Some(status))
        .code(table_code)
        .mode(mode)
        .retry_after(retry_after(headers))
        .operation(what)
        .range(op.range.unwrap_or("(range)"))
        .error(op.target, AzureError::new(text))
}

/// Every message in the error's chain, `: `-joined, redacted.
fn flatten(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    redact(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::{RawResponse, StatusCode};
    use xferkit_core::ErrorKind;

    fn http_err(status: u16, code: Option<&str>, body: &str) -> azure_core::Error {
        http_err_with(status, code, body, &[])
    }

    fn http_err_with(
        status: u16,
        code: Option<&str>,
        body: &str,
        extra: &[(&'static str, &str)],
    ) -> azure_core::Error {
        let mut headers = Headers::new();
        if let Some(c) = code {
            headers.insert("x-ms-error-code", c.to_string());
        }
        for (k, v) in extra {
            headers.insert(*k, v.to_string());
        }
        let raw =
            RawResponse::from_bytes(StatusCode::from(status), headers, body.as_bytes().to_vec());
        azure_core::Error::with_message(
            AzKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: code.map(str::to_string),
                raw_response: Some(Box::new(raw)),
            },
            format!("{status}"),
        )
    }

    fn kind(status: u16, code: Option<&str>, create_only: bool) -> ErrorKind {
        map(
            Op::on("az://a/c/k").create_only(create_only),
            "test",
            http_err(status, code, ""),
        )
        .kind()
    }

    /// The table is core's (`xferkit_core::status`, tested there). Here:
    /// the status, the `x-ms-error-code` and create-only reach it.
    #[test]
    fn statuses_and_codes_reach_the_shared_table() {
        use ErrorKind as K;
        assert_eq!(kind(404, Some("BlobNotFound"), false), K::NotFound);
        assert_eq!(kind(409, Some("BlobAlreadyExists"), true), K::AlreadyExists);
        assert_eq!(kind(412, Some("ConditionNotMet"), true), K::AlreadyExists);
        assert_eq!(
            kind(412, Some("ConditionNotMet"), false),
            K::PreconditionFailed
        );
        assert_eq!(kind(401, None, false), K::PermissionDenied);
        assert_eq!(kind(503, Some("ServerBusy"), false), K::Transient);
        assert_eq!(kind(409, Some("LeaseIdMissing"), false), K::Backend);
    }

    fn wait(e: &Error) -> Option<Duration> {
        match e {
            Error::Transient { retry_after, .. } => *retry_after,
            e => panic!("not transient: {e:?}"),
        }
    }

    #[test]
    fn retry_after_reaches_the_error() {
        let busy = |extra: &[(&'static str, &str)]| {
            map(
                Op::on("az://a/c/k"),
                "put block",
                http_err_with(503, Some("ServerBusy"), "", extra),
            )
        };
        assert_eq!(wait(&busy(&[])), None);
        assert_eq!(
            wait(&busy(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        // The milliseconds headers come first, as in the Azure SDKs.
        assert_eq!(
            wait(&busy(&[("retry-after", "3"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            wait(&busy(&[
                ("retry-after-ms", "250"),
                ("x-ms-retry-after-ms", "1500")
            ])),
            Some(Duration::from_millis(1500))
        );
        let far = wait(&busy(&[("retry-after", "86400")]));
        assert_eq!(far, Some(xferkit_core::status::MAX_RETRY_AFTER));
        // An HTTP date: an hour from now is capped too.
        let date = "Sun, 06 Nov 2999 08:49:37 GMT";
        assert_eq!(
            wait(&busy(&[("retry-after", date)])),
            Some(xferkit_core::status::MAX_RETRY_AFTER)
        );
        let e = map(
            Op::on("az://a/c/k"),
            "get",
            http_err_with(429, None, "", &[("retry-after", "2")]),
        );
        assert_eq!(wait(&e), Some(Duration::from_secs(2)));
    }

    #[test]
    fn messages_name_the_request_id_and_unsupported_operations() {
        let e = map(
            Op::on("az://a/c/k"),
            "put blob",
            http_err_with(
                500,
                Some("InternalError"),
                "",
                &[("x-ms-request-id", "3f1e-77")],
            ),
        );
        assert_eq!(
            e.chain(),
            "transient failure on az://a/c/k: put blob: HTTP 500 InternalError (request id 3f1e-77)"
        );
        let e = map(
            Op::on("az://a/c/k"),
            "set tier",
            http_err(501, Some("NotImplemented"), ""),
        );
        assert_eq!(
            e.to_string(),
            "az://a/c/k: set tier (HTTP 501 NotImplemented) is not supported by this store"
        );
    }

    #[test]
    fn a_refused_transactional_checksum_is_retried() {
        let refused = |code: &str, body: &str| {
            map(
                Op::on("az://a/c/k"),
                "put block",
                http_err(400, Some(code), body),
            )
        };
        let azure = refused(
            "Md5Mismatch",
            "<Error><Code>Md5Mismatch</Code><Message>The MD5 value specified in the request did not match with the MD5 value calculated by the server.</Message></Error>",
        );
        assert!(azure.is_retryable(), "{}", azure.chain());
        assert!(refused("Crc64Mismatch", "").is_retryable());
        let azurite = refused(
            "InvalidOperation",
            "<Error><Code>InvalidOperation</Code><Message>Provided contentMD5 doesn't match.</Message></Error>",
        );
        assert!(azurite.is_retryable(), "{}", azurite.chain());
        assert!(
            azurite.chain().contains("contentMD5"),
            "{}",
            azurite.chain()
        );
        // Any other InvalidOperation is a plain failure.
        let other = refused(
            "InvalidOperation",
            "<Error><Code>InvalidOperation</Code><Message>The size of the request body 3 mismatches the content-length 4.</Message></Error>",
        );
        assert_eq!(other.kind(), ErrorKind::Backend);
    }

    #[test]
    fn connection_failures_are_retryable() {
        let e = map(
            Op::on("az://a/c/k"),
            "get",
            azure_core::Error::with_message(AzKind::Connection, "connection refused"),
        );
        assert!(e.is_retryable());
    }

    #[test]
    fn errors_name_the_target_and_keep_the_service_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request.\nRequestId:1</Message></Error>";
        let e = map(
            Op::on("az://acct/c/photo.png"),
            "stat",
            http_err(403, Some("AuthenticationFailed"), body),
        );
        let chain = e.chain();
        assert!(chain.contains("az://acct/c/photo.png"), "{chain}");
        assert!(chain.contains("AuthenticationFailed"), "{chain}");
        assert!(
            chain.contains("Server failed to authenticate the request."),
            "{chain}"
        );
        assert!(!chain.contains("RequestId"), "{chain}");
    }

    #[test]
    fn urls_in_errors_lose_their_query() {
        let io = std::io::Error::other(
            "error sending request for url (http://127.0.0.1:10000/devstoreaccount1/c/k?comp=block&sv=2022-11-02&sig=SECRETSIG%3D)",
        );
        let e = map(
            Op::on("az://devstoreaccount1/c/k"),
            "stage block",
            azure_core::Error::new(AzKind::Io, io),
        );
        let chain = e.chain();
        assert!(!chain.contains("SECRETSIG"), "{chain}");
        assert!(!chain.contains("sv=2022"), "{chain}");
        assert!(
            chain.contains("http://127.0.0.1:10000/devstoreaccount1/c/k?<redacted>"),
            "{chain}"
        );
        assert_eq!(e.kind(), ErrorKind::Transient);
    }
}
