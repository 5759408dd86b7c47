//! One table from a failed HTTP answer to an [`ErrorKind`], shared by every
//! HTTP backend (S3, GCS, Azure) and by plain `http(s)://` links, so that all
//! of them make the same transient/final decision.
//!
//! A backend reads what the answer said (status, the service's error code
//! when it sends one, `Retry-After`), describes it with an [`Answer`] and
//! gets the [`Error`] from [`Answer::error`]. Failures without an HTTP answer
//! (timeouts, resets, refused connections) stay with each backend: they are
//! [`Error::Transient`] everywhere.
//!
//! **The service error code decides first** when the table knows it (it is
//! more specific: a 403 `userRateLimitExceeded` is throttling, not a refusal;
//! a 400 `RequestTimeout` is worth another try). Codes are matched exactly,
//! as the services spell them. **Otherwise the status decides:**
//!
//! | status | kind | why |
//! |---|---|---|
//! | 304, 412 | `PreconditionFailed` (`AlreadyExists` for a create-only write) | an `If-*` condition did not hold |
//! | 401, 403 | `PermissionDenied` | |
//! | 404 | `NotFound` | |
//! | 410 Gone | `NotFound` | the object (or a link) is gone for good; for a GCS resumable session 404 and 410 both mean the session is over: start a new one |
//! | 409 | `Backend` (final) unless the code says otherwise | 409 means too many different things (S3 `OperationAborted` is transient, S3 `ConditionalRequestConflict` is a lost create race, Azure `BlobAlreadyExists` exists, Azure lease conflicts are final) |
//! | 416 | `InvalidRange` | |
//! | 408, 429 | `Transient` | timeout, throttling |
//! | 500, 502, 503, 504 | `Transient` | |
//! | 501 | `NotSupported` | the server does not implement what was asked: asking again cannot help |
//! | 505–508, 510, 511 | `Backend` (final) | HTTP version, negotiation loop, storage full, extension or network login required: asking again cannot help |
//! | any other 5xx (509, 520–599, …) | `Transient` | the server's fault, e.g. a CDN in front of a link (Cloudflare's 520–524) |
//! | anything else | `Backend` (final) | |
//!
//! The codes the table knows are in [`CODES`] (S3, GCS and Azure spellings).
//!
//! `Retry-After` (seconds, or an HTTP date) is read by [`parse_retry_after`]
//! and kept in [`Error::Transient`]'s `retry_after`, which the retry layer
//! waits instead of its own backoff. It is capped at [`MAX_RETRY_AFTER`].

use std::time::{Duration, SystemTime};

use crate::{BoxError, Error, ErrorKind};

/// The longest `Retry-After` kept: the default retry budget
/// ([`crate::RetryPolicy`]'s `max_elapsed`, 2 min). The retry layer gives up
/// at once on a wait that would end after its budget, so with the default
/// policy a longer wait could never be waited anyway; with a larger budget
/// the next try comes after at most this long (and the server may say again
/// how long to wait). The cap also keeps a huge or hostile value from
/// overflowing time arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How a failed request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Any request.
    #[default]
    Plain,
    /// A create-only write (`If-None-Match: *`, `ifGenerationMatch=0`): a
    /// failed precondition, or a lost race with a concurrent create, means
    /// the object exists ([`ErrorKind::AlreadyExists`]).
    CreateOnly,
}

/// What a known service error code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// This kind, whatever the status.
    Kind(ErrorKind),
    /// A concurrent conditional write won (S3 `ConditionalRequestConflict`):
    /// [`ErrorKind::AlreadyExists`] for a create-only write, otherwise
    /// [`ErrorKind::Transient`] (try again).
    CreateRace,
}

use ErrorKind as K;
use Meaning::{CreateRace, Kind};

/// The service error codes the table knows (S3 `<Code>`, Azure
/// `x-ms-error-code`, GCS `error.errors[].reason`), matched exactly. A code
/// not in here leaves the decision to the status.
pub const CODES: &[(&str, Meaning)] = &[
    // Not there. S3 (`NoSuchUpload`: a multipart upload aborted or
    // completed; `NotFound` from some S3 stores), Azure, GCS.
    ("NoSuchKey", Kind(K::NotFound)),
    ("NoSuchBucket", Kind(K::NotFound)),
    ("NoSuchUpload", Kind(K::NotFound)),
    ("NoSuchVersion", Kind(K::NotFound)),
    ("NotFound", Kind(K::NotFound)),
    ("BlobNotFound", Kind(K::NotFound)),
    ("ContainerNotFound", Kind(K::NotFound)),
    ("ResourceNotFound", Kind(K::NotFound)),
    ("notFound", Kind(K::NotFound)),
    // Exists already: Azure; S3's 409 for a lost create race.
    ("BlobAlreadyExists", Kind(K::AlreadyExists)),
    ("ConditionalRequestConflict", CreateRace),
    // A condition did not hold: S3 (`NotModified` is its 304), Azure, GCS.
    ("PreconditionFailed", Kind(K::PreconditionFailed)),
    ("NotModified", Kind(K::PreconditionFailed)),
    ("ConditionNotMet", Kind(K::PreconditionFailed)),
    ("conditionNotMet", Kind(K::PreconditionFailed)),
    // Refused credentials or permission: S3 (the token ones come as HTTP
    // 400), S3-compatible stores, Azure, GCS.
    ("AccessDenied", Kind(K::PermissionDenied)),
    ("AllAccessDisabled", Kind(K::PermissionDenied)),
    ("InvalidAccessKeyId", Kind(K::PermissionDenied)),
    ("SignatureDoesNotMatch", Kind(K::PermissionDenied)),
    ("ExpiredToken", Kind(K::PermissionDenied)),
    ("InvalidToken", Kind(K::PermissionDenied)),
    ("TokenRefreshRequired", Kind(K::PermissionDenied)),
    ("AccountProblem", Kind(K::PermissionDenied)),
    ("InvalidSecurity", Kind(K::PermissionDenied)),
    ("Forbidden", Kind(K::PermissionDenied)),
    ("Unauthorized", Kind(K::PermissionDenied)),
    ("AuthenticationFailed", Kind(K::PermissionDenied)),
    ("AuthorizationFailure", Kind(K::PermissionDenied)),
    ("AuthorizationPermissionMismatch", Kind(K::PermissionDenied)),
    ("InsufficientAccountPermissions", Kind(K::PermissionDenied)),
    ("forbidden", Kind(K::PermissionDenied)),
    ("insufficientPermissions", Kind(K::PermissionDenied)),
    ("authError", Kind(K::PermissionDenied)),
    // A range the object cannot satisfy: S3 and Azure, GCS.
    ("InvalidRange", Kind(K::InvalidRange)),
    ("requestedRangeNotSatisfiable", Kind(K::InvalidRange)),
    // Not implemented by this server: S3's 501 (e.g. a header a MinIO lacks).
    ("NotImplemented", Kind(K::NotSupported)),
    // Worth another try. S3 and AWS throttling, timeouts (`RequestTimeout`
    // is S3's 400 for a body that came too slowly) and server trouble
    // (`OperationAborted`, `TransactionConflict`: 409s for a conflicting
    // operation still running).
    ("SlowDown", Kind(K::Transient)),
    ("Throttling", Kind(K::Transient)),
    ("ThrottlingException", Kind(K::Transient)),
    ("ThrottledException", Kind(K::Transient)),
    ("RequestThrottled", Kind(K::Transient)),
    ("RequestThrottledException", Kind(K::Transient)),
    ("TooManyRequestsException", Kind(K::Transient)),
    ("ProvisionedThroughputExceededException", Kind(K::Transient)),
    ("RequestLimitExceeded", Kind(K::Transient)),
    ("BandwidthLimitExceeded", Kind(K::Transient)),
    ("EC2ThrottledException", Kind(K::Transient)),
    ("PriorRequestNotComplete", Kind(K::Transient)),
    ("RequestTimeout", Kind(K::Transient)),
    ("RequestTimeoutException", Kind(K::Transient)),
    ("InternalError", Kind(K::Transient)),
    ("ServiceUnavailable", Kind(K::Transient)),
    ("OperationAborted", Kind(K::Transient)),
    ("TransactionConflict", Kind(K::Transient)),
    // Azure (`InternalError` too).
    ("ServerBusy", Kind(K::Transient)),
    ("OperationTimedOut", Kind(K::Transient)),
    // Azure refused a body whose transactional checksum did not match what
    // arrived (HTTP 400): it was corrupted on the way, and sending it again
    // cures that.
    ("Md5Mismatch", Kind(K::Transient)),
    ("Crc64Mismatch", Kind(K::Transient)),
    // GCS (`userRateLimitExceeded` comes as a 403 in older answers).
    ("rateLimitExceeded", Kind(K::Transient)),
    ("userRateLimitExceeded", Kind(K::Transient)),
    ("backendError", Kind(K::Transient)),
    ("internalError", Kind(K::Transient)),
];

/// What a service error code means, if the table knows it.
pub fn code_meaning(code: &str) -> Option<Meaning> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, m)| *m)
}

/// The kind an HTTP status alone maps to (see the module's table).
pub fn status_kind(status: u16) -> ErrorKind {
    match status {
        304 | 412 => K::PreconditionFailed,
        401 | 403 => K::PermissionDenied,
        404 | 410 => K::NotFound,
        416 => K::InvalidRange,
        408 | 429 => K::Transient,
        501 => K::NotSupported,
        505..=508 | 510 | 511 => K::Backend,
        500..=599 => K::Transient,
        _ => K::Backend,
    }
}

/// The kind of a failed answer: its code if the table knows it, else its
/// status (no status and no known code: [`ErrorKind::Backend`]), read for
/// `mode`.
pub fn classify(status: Option<u16>, code: Option<&str>, mode: Mode) -> ErrorKind {
    let meaning = code
        .and_then(code_meaning)
        .unwrap_or_else(|| Kind(status.map_or(K::Backend, status_kind)));
    match (meaning, mode) {
        (Kind(K::PreconditionFailed) | CreateRace, Mode::CreateOnly) => K::AlreadyExists,
        (CreateRace, Mode::Plain) => K::Transient,
        (Kind(k), _) => k,
    }
}

/// A `Retry-After` value: delay-seconds or an HTTP date (IMF-fixdate, the
/// obsolete RFC 850 and asctime forms too), capped at [`MAX_RETRY_AFTER`].
/// `None` for a value that cannot be read, a zero wait or a date already
/// past: the retry layer then uses its own jittered backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

/// [`parse_retry_after`] with the current time given (for tests).
pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let wait = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: too many of them is "very long", not unreadable.
        Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        http_date(v)?.duration_since(now).ok()?
    };
    cap(wait)
}

/// A wait in milliseconds (Azure's `x-ms-retry-after-ms`, `retry-after-ms`),
/// capped like [`parse_retry_after`].
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cap(Duration::from_millis(v.parse::<u64>().unwrap_or(u64::MAX)))
}

fn cap(wait: Duration) -> Option<Duration> {
    (!wait.is_zero()).then(|| wait.min(MAX_RETRY_AFTER))
}

/// An HTTP date (RFC 9110 section 5.6.7) as a time.
fn http_date(v: &str) -> Option<SystemTime> {
    let words: Vec<&str> = v.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let (day, month, year, time) = match words.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [_, d, m, y, t, "GMT"] => (*d, *m, y.parse::<i64>().ok()?, *t),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [_, dmy, t, "GMT"] => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?);
            if y.len() != 2 {
                return None;
            }
            // Two-digit years: 70-99 are 19xx, the rest 20xx (a retry date
            // is never decades away from now).
            let y = y.parse::<i64>().ok()?;
            (d, m, if y >= 70 { 1900 + y } else { 2000 + y }, *t)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, m, d, t, y] => (*d, *m, y.parse::<i64>().ok()?, *t),
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..=60).contains(&s)
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One failed HTTP answer, as the table reads it.
///
/// ```
/// use std::time::Duration;
/// use xferkit_core::ErrorKind;
/// use xferkit_core::status::{Answer, parse_retry_after};
///
/// let e = Answer::new(Some(503))
///     .code(Some("SlowDown"))
///     .retry_after(parse_retry_after("3"))
///     .error("s3://b/k", "S3 PutObject failed: HTTP 503 SlowDown");
/// assert_eq!(e.kind(), ErrorKind::Transient);
/// let xferkit_core::Error::Transient { retry_after, .. } = e else { unreachable!() };
/// assert_eq!(retry_after, Some(Duration::from_secs(3)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer<'a> {
    status: Option<u16>,
    code: Option<&'a str>,
    mode: Mode,
    retry_after: Option<Duration>,
    operation: Option<&'a str>,
    range: Option<&'a str>,
}

impl<'a> Answer<'a> {
    /// An answer with this HTTP status (`None`: no status was read).
    pub fn new(status: Option<u16>) -> Self {
        Answer {
            status,
            ..Self::default()
        }
    }

    /// The service's error code, if it sent one.
    pub fn code(mut self, code: Option<&'a str>) -> Self {
        self.code = code;
        self
    }

    /// How the request is read (create-only writes).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The wait the server asked for (capped at [`MAX_RETRY_AFTER`]); kept
    /// only in a [`Error::Transient`].
    pub fn retry_after(mut self, wait: Option<Duration>) -> Self {
        self.retry_after = wait.and_then(cap);
        self
    }

    /// What was asked (`PutObject`, `put block`), named by
    /// [`Error::NotSupported`].
    pub fn operation(mut self, operation: &'a str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// The range asked for, named by [`Error::InvalidRange`].
    pub fn range(mut self, range: &'a str) -> Self {
        self.range = Some(range);
        self
    }

    /// The kind this answer maps to.
    pub fn kind(&self) -> ErrorKind {
        classify(self.status, self.code, self.mode)
    }

    /// The error about `target` (a canonical URL, or a link without its
    /// query). `source` is the backend's description of the failure (op,
    /// status, code, message, request id; never a secret): it is kept as the
    /// error's source, and is the message of a [`Error::Backend`].
    pub fn error(self, target: impl Into<String>, source: impl Into<BoxError>) -> Error {
        let target = target.into();
        let source: BoxError = source.into();
        match self.kind() {
            K::NotFound => Error::NotFound {
                target,
                source: Some(source),
            },
            K::AlreadyExists => Error::AlreadyExists {
                target,
                source: Some(source),
            },
            K::PreconditionFailed => Error::PreconditionFailed {
                target,
                source: Some(source),
            },
            K::PermissionDenied => Error::PermissionDenied {
                target,
                source: Some(source),
            },
            K::InvalidRange => Error::InvalidRange {
                target,
                range: self.range.unwrap_or("requested range").to_string(),
            },
            K::NotSupported => Error::NotSupported {
                store: target,
                operation: format!("{} ({})", self.operation.unwrap_or("request"), self),
            },
            K::Transient => Error::Transient {
                target,
                retry_after: self.retry_after,
                source: Some(source),
            },
            _ => Error::Backend {
                target,
                message: source.to_string(),
                source: Some(source),
            },
        }
    }
}

/// `HTTP 501 NotImplemented`: the status and code.
impl std::fmt::Display for Answer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HTTP")?;
        if let Some(s) = self.status {
            write!(f, " {s}")?;
        }
        if let Some(c) = self.code {
            write!(f, " {c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryPolicy;

    type Row = (Option<u16>, Option<&'static str>, ErrorKind);

    /// Every status the table names, and its neighbours, without a code.
    const STATUSES: &[(u16, ErrorKind)] = &[
        (200, K::Backend), // not a failure the table knows
        (301, K::Backend),
        (304, K::PreconditionFailed),
        (400, K::Backend),
        (401, K::PermissionDenied),
        (403, K::PermissionDenied),
        (404, K::NotFound),
        (405, K::Backend),
        (408, K::Transient),
        (409, K::Backend),
        (410, K::NotFound),
        (411, K::Backend),
        (412, K::PreconditionFailed),
        (413, K::Backend),
        (416, K::InvalidRange),
        (422, K::Backend),
        (429, K::Transient),
        (500, K::Transient),
        (501, K::NotSupported),
        (502, K::Transient),
        (503, K::Transient),
        (504, K::Transient),
        (505, K::Backend),
        (506, K::Backend),
        (507, K::Backend),
        (508, K::Backend),
        (509, K::Transient),
        (510, K::Backend),
        (511, K::Backend),
        (520, K::Transient),
        (524, K::Transient),
        (599, K::Transient),
    ];

    #[test]
    fn statuses_without_a_code() {
        for &(status, want) in STATUSES {
            assert_eq!(classify(Some(status), None, Mode::Plain), want, "{status}");
            // A code the table does not know changes nothing.
            let unknown = classify(Some(status), Some("SomethingNew"), Mode::Plain);
            assert_eq!(unknown, want, "{status} with an unknown code");
        }
        assert_eq!(classify(None, None, Mode::Plain), K::Backend);
    }

    #[test]
    fn every_code_maps_whatever_the_status() {
        let want = |m: Meaning| match m {
            Kind(k) => k,
            CreateRace => K::Transient,
        };
        for &(code, meaning) in CODES {
            // The code wins over the status it usually comes with, and over
            // a status that would say otherwise.
            for status in [None, Some(400), Some(403), Some(409), Some(500)] {
                assert_eq!(
                    classify(status, Some(code), Mode::Plain),
                    want(meaning),
                    "{code} {status:?}"
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (code, _) in CODES {
            assert!(seen.insert(code), "{code} twice in CODES");
        }
    }

    #[test]
    fn codes_as_the_services_send_them() {
        let rows: &[Row] = &[
            // S3
            (Some(503), Some("SlowDown"), K::Transient),
            (Some(400), Some("RequestTimeout"), K::Transient),
            (Some(500), Some("InternalError"), K::Transient),
            (Some(409), Some("OperationAborted"), K::Transient),
            (Some(404), Some("NoSuchKey"), K::NotFound),
            (Some(404), Some("NoSuchBucket"), K::NotFound),
            (Some(404), Some("NoSuchUpload"), K::NotFound),
            (Some(403), Some("AccessDenied"), K::PermissionDenied),
            (
                Some(403),
                Some("SignatureDoesNotMatch"),
                K::PermissionDenied,
            ),
            (Some(400), Some("ExpiredToken"), K::PermissionDenied),
            (Some(412), Some("PreconditionFailed"), K::PreconditionFailed),
            (Some(304), Some("NotModified"), K::PreconditionFailed),
            (Some(416), Some("InvalidRange"), K::InvalidRange),
            (Some(501), Some("NotImplemented"), K::NotSupported),
            (Some(409), Some("ConditionalRequestConflict"), K::Transient),
            (Some(409), Some("BucketNotEmpty"), K::Backend),
            (Some(400), Some("InvalidArgument"), K::Backend),
            (Some(400), Some("EntityTooSmall"), K::Backend),
            // GCS reasons
            (Some(429), Some("rateLimitExceeded"), K::Transient),
            (Some(403), Some("userRateLimitExceeded"), K::Transient),
            (Some(503), Some("backendError"), K::Transient),
            (Some(500), Some("internalError"), K::Transient),
            (Some(404), Some("notFound"), K::NotFound),
            (Some(412), Some("conditionNotMet"), K::PreconditionFailed),
            (Some(403), Some("forbidden"), K::PermissionDenied),
            (
                Some(403),
                Some("insufficientPermissions"),
                K::PermissionDenied,
            ),
            (Some(401), Some("authError"), K::PermissionDenied),
            (
                Some(416),
                Some("requestedRangeNotSatisfiable"),
                K::InvalidRange,
            ),
            (Some(409), Some("conflict"), K::Backend),
            (Some(400), Some("invalid"), K::Backend),
            // Azure
            (Some(503), Some("ServerBusy"), K::Transient),
            (Some(500), Some("OperationTimedOut"), K::Transient),
            (Some(500), Some("InternalError"), K::Transient),
            (Some(400), Some("Md5Mismatch"), K::Transient),
            (Some(400), Some("Crc64Mismatch"), K::Transient),
            (Some(404), Some("BlobNotFound"), K::NotFound),
            (Some(404), Some("ContainerNotFound"), K::NotFound),
            (Some(409), Some("BlobAlreadyExists"), K::AlreadyExists),
            (Some(412), Some("ConditionNotMet"), K::PreconditionFailed),
            (Some(403), Some("AuthenticationFailed"), K::PermissionDenied),
            (Some(416), Some("InvalidRange"), K::InvalidRange),
            (Some(409), Some("LeaseIdMissing"), K::Backend),
            (Some(400), Some("InvalidHeaderValue"), K::Backend),
            (Some(400), Some("InvalidOperation"), K::Backend),
        ];
        for &(status, code, want) in rows {
            assert_eq!(
                classify(status, code, Mode::Plain),
                want,
                "{status:?} {code:?}"
            );
        }
    }

    #[test]
    fn create_only_writes_read_conflicts_as_exists() {
        let rows: &[Row] = &[
            (Some(412), None, K::AlreadyExists),
            (Some(304), None, K::AlreadyExists),
            (Some(412), Some("PreconditionFailed"), K::AlreadyExists),
            (Some(412), Some("ConditionNotMet"), K::AlreadyExists),
            (Some(412), Some("conditionNotMet"), K::AlreadyExists),
            (
                Some(409),
                Some("ConditionalRequestConflict"),
                K::AlreadyExists,
            ),
            (Some(409), Some("BlobAlreadyExists"), K::AlreadyExists),
            // Everything else reads as for any request.
            (Some(409), None, K::Backend),
            (Some(404), None, K::NotFound),
            (Some(503), Some("SlowDown"), K::Transient),
            (Some(400), Some("EntityTooSmall"), K::Backend),
        ];
        for &(status, code, want) in rows {
            assert_eq!(
                classify(status, code, Mode::CreateOnly),
                want,
                "{status:?} {code:?}"
            );
        }
    }

    #[test]
    fn answers_become_errors_that_keep_their_source() {
        let source = "S3 PutObject failed: HTTP 503 SlowDown (request id R1)";
        let e = Answer::new(Some(503))
            .code(Some("SlowDown"))
            .retry_after(Some(Duration::from_secs(4)))
            .error("s3://b/k", source);
        let Error::Transient { retry_after, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(4)));
        assert_eq!(
            e.chain(),
            format!("transient failure on s3://b/k: {source}")
        );

        for (status, kind) in [
            (404, K::NotFound),
            (410, K::NotFound),
            (412, K::PreconditionFailed),
            (403, K::PermissionDenied),
            (400, K::Backend),
        ] {
            let e = Answer::new(Some(status))
                .retry_after(Some(Duration::from_secs(4)))
                .error("gs://b/k", format!("HTTP {status}: m"));
            assert_eq!(e.kind(), kind, "{status}");
            assert!(!e.is_retryable(), "{status}");
            assert!(e.chain().contains("gs://b/k"), "{}", e.chain());
            assert!(
                e.chain().contains(&format!("HTTP {status}: m")),
                "{}",
                e.chain()
            );
        }
        let e = Answer::new(Some(412))
            .mode(Mode::CreateOnly)
            .error("az://a/c/k", "m");
        assert_eq!(e.kind(), K::AlreadyExists);

        let e = Answer::new(Some(416))
            .range("bytes=9-")
            .error("s3://b/k", "m");
        assert_eq!(e.to_string(), "invalid range bytes=9- for s3://b/k");
        let e = Answer::new(Some(416)).error("s3://b/k", "m");
        assert_eq!(e.to_string(), "invalid range requested range for s3://b/k");

        let e = Answer::new(Some(501))
            .code(Some("NotImplemented"))
            .operation("PutObject")
            .error("s3://b/k", "m");
        assert_eq!(e.kind(), K::NotSupported);
        assert_eq!(
            e.to_string(),
            "s3://b/k: PutObject (HTTP 501 NotImplemented) is not supported by this store"
        );
    }

    #[test]
    fn retry_after_in_seconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let p = |v| parse_retry_after_at(v, now);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(p("121"), Some(MAX_RETRY_AFTER), "capped");
        assert_eq!(p("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(p("0"), None, "no wait asked: the own backoff");
        for bad in ["", "-1", "1.5", "soon", "+3", "3s"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after_ms("1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after_ms("999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after_ms("0"), None);
        assert_eq!(parse_retry_after_ms("x"), None);
    }

    #[test]
    fn retry_after_as_a_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = then - Duration::from_secs(30);
        let p = |v| parse_retry_after_at(v, now);
        let want = Some(Duration::from_secs(30));
        assert_eq!(p("Sun, 06 Nov 1994 08:49:37 GMT"), want, "IMF-fixdate");
        assert_eq!(p("Sunday, 06-Nov-94 08:49:37 GMT"), want, "RFC 850");
        assert_eq!(p("Sun Nov  6 08:49:37 1994"), want, "asctime");
        assert_eq!(
            parse_retry_after_at(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                then + Duration::from_secs(1)
            ),
            None,
            "a date already past"
        );
        assert_eq!(
            p("Sun, 06 Nov 1994 09:49:37 GMT"),
            Some(MAX_RETRY_AFTER),
            "an hour: capped"
        );
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Nov 1994 08:49:37:1 GMT",
            "tomorrow",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
        // Calendar arithmetic against known instants.
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        let t = |v| http_date(v).and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        assert_eq!(t("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(
            t("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(1_445_412_480))
        );
        assert_eq!(
            t("Wednesday, 21-Oct-15 07:28:00 GMT"),
            Some(Duration::from_secs(1_445_412_480)),
            "RFC 850"
        );
    }

    #[test]
    fn the_cap_is_the_default_retry_budget() {
        assert_eq!(MAX_RETRY_AFTER, RetryPolicy::default().max_elapsed);
        let e = Answer::new(Some(429))
            .retry_after(Some(Duration::from_secs(3600)))
            .error("https://h/x", "HTTP 429");
        let Error::Transient { retry_after, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(retry_after, Some(MAX_RETRY_AFTER));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_of_an_answer_is_the_retry_wait() {
        let policy = RetryPolicy::default().with_max_backoff(Duration::from_millis(1));
        let t0 = tokio::time::Instant::now();
        let times = std::sync::Mutex::new(Vec::new());
        policy
            .retry("s3://b/k", |attempt| {
                times.lock().unwrap().push(t0.elapsed());
                async move {
                    if attempt == 1 {
                        Err(Answer::new(Some(503))
                            .code(Some("SlowDown"))
                            .retry_after(parse_retry_after("9"))
                            .error("s3://b/k", "HTTP 503 SlowDown"))
                    } else {
                        Ok(())
                    }
                }
            })
            .await
            .unwrap();
        let times = times.into_inner().unwrap();
        assert_eq!(times, vec![Duration::ZERO, Duration::from_secs(9)]);
    }
}
