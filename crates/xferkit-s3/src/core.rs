//! The SDK client of one store, object-name helpers and S3 error mapping.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::region::ProfileFileRegionProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::DateTime;
use xferkit_core::key::Root;
use xferkit_core::settings;
use xferkit_core::status::{self, Answer};
use xferkit_core::{Error, ErrorKind, PutOptions, RemoteObject, Result, Secret, ServerEncryption};

use crate::{S3Checksum, S3Config};

/// The URL scheme of S3 objects: `s3://bucket/key`.
pub const SCHEME: &str = "s3";

/// Everything the operations of one store share. Cheap to share in an `Arc`.
pub(crate) struct Core {
    pub client: Client,
    pub bucket: String,
    /// Keys, object names and `s3://` URLs.
    pub root: Root,
    pub region: String,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
    pub checksum: S3Checksum,
    pub copy_threshold: u64,
    /// The configured defaults of the server-side upload options.
    pub defaults: PutOptions,
    /// The configured SSE-C key, sent with every read (HEAD, GET, copy source).
    pub read_key: Option<CustomerKey>,
}

/// An SSE-C key with the MD5 S3 wants next to it on every request that
/// writes or reads such an object. Never printed.
#[derive(Clone)]
pub(crate) struct CustomerKey {
    key: Secret,
    md5: String,
}

impl CustomerKey {
    /// The key of `opts`' encryption, if it is SSE-C (checked before: base64 of 32 bytes).
    pub fn of(opts: &PutOptions) -> Option<CustomerKey> {
        use base64::Engine as _;
        use md5::Digest;
        let Some(ServerEncryption::CustomerKey(key)) = &opts.encryption else {
            return None;
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = b64.decode(key.expose().trim()).ok()?;
        Some(CustomerKey {
            key: Secret::new(key.expose().trim()),
            md5: b64.encode(md5::Md5::digest(&raw)),
        })
    }
    pub fn algorithm(k: Option<&Self>) -> Option<String> {
        k.map(|_| "AES256".to_string())
    }
    pub fn key(k: Option<&Self>) -> Option<String> {
        k.map(|k| k.key.expose().to_string())
    }
    pub fn md5(k: Option<&Self>) -> Option<String> {
        k.map(|k| k.md5.clone())
    }
}

/// Set the SSE-C headers of `key` (an `Option<&CustomerKey>`) on an SDK
/// request builder (`copy_source`: the `x-amz-copy-source-…` ones).
macro_rules! sse_c {
    ($req:expr, $key:expr) => {{
        let k: Option<&$crate::core::CustomerKey> = $key;
        $req.set_sse_customer_algorithm($crate::core::CustomerKey::algorithm(k))
            .set_sse_customer_key($crate::core::CustomerKey::key(k))
            .set_sse_customer_key_md5($crate::core::CustomerKey::md5(k))
    }};
    (copy_source $req:expr, $key:expr) => {{
        let k: Option<&$crate::core::CustomerKey> = $key;
        $req.set_copy_source_sse_customer_algorithm($crate::core::CustomerKey::algorithm(k))
            .set_copy_source_sse_customer_key($crate::core::CustomerKey::key(k))
            .set_copy_source_sse_customer_key_md5($crate::core::CustomerKey::md5(k))
    }};
}
pub(crate) use sse_c;

/// Set the server-side options of `opts` (headers, storage class, SSE,
/// tags) on a `PutObject`, `CreateMultipartUpload` or `CopyObject` builder.
macro_rules! server_options {
    ($req:expr, $opts:expr) => {{
        use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
        use xferkit_core::ServerEncryption as E;
        let o: &xferkit_core::PutOptions = $opts;
        let h = &o.headers;
        let (sse, kms_key, bucket_key) = match &o.encryption {
            Some(E::ServiceManaged) => (Some(ServerSideEncryption::Aes256), None, None),
            Some(E::Kms { key_id, bucket_key }) => (
                Some(ServerSideEncryption::AwsKms),
                key_id.clone(),
                *bucket_key,
            ),
            _ => (None, None, None),
        };
        let req = $req
            .set_cache_control(h.cache_control.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_language(h.content_language.clone())
            .set_storage_class(o.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(kms_key)
            .set_bucket_key_enabled(bucket_key)
            .set_tagging($crate::core::tagging(&o.tags));
        let key = $crate::core::CustomerKey::of(o);
        $crate::core::sse_c!(req, key.as_ref())
    }};
}
pub(crate) use server_options;

/// Tags as S3's `x-amz-tagging` wants them: a URL query string.
pub(crate) fn tagging(tags: &BTreeMap<String, String>) -> Option<String> {
    (!tags.is_empty()).then(|| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(tags)
            .finish()
    })
}

/// Fill `obj` (a `&mut RemoteObject`) with what a HEAD or GET answer
/// `out` says of the server-side options ([`reported`]).
macro_rules! read_back {
    ($obj:expr, $out:expr) => {{
        let out = &$out;
        $crate::core::reported(
            $obj,
            [
                out.cache_control(),
                out.content_disposition(),
                out.content_encoding(),
                out.content_language(),
            ],
            out.storage_class(),
            out.server_side_encryption(),
            out.ssekms_key_id(),
            out.sse_customer_algorithm(),
        )
    }};
}
pub(crate) use read_back;

/// What a HEAD or GET answer says of the server-side options: the four
/// headers, storage class, encryption and its key.
pub(crate) fn reported(
    o: &mut RemoteObject,
    headers: [Option<&str>; 4],
    storage_class: Option<&aws_sdk_s3::types::StorageClass>,
    sse: Option<&aws_sdk_s3::types::ServerSideEncryption>,
    kms_key: Option<&str>,
    customer_algorithm: Option<&str>,
) {
    for (name, v) in xferkit_core::ObjectHeaders::NAMES.into_iter().zip(headers) {
        if let Some(v) = v {
            o.headers.set(name, v);
        }
    }
    o.storage_class = storage_class.map(|c| c.as_str().to_string());
    o.encryption = match (sse, customer_algorithm) {
        (_, Some(_)) => Some("SSE-C".to_string()),
        (Some(s), None) => Some(s.as_str().to_string()),
        (None, None) => None,
    };
    o.encryption_key = kms_key.map(str::to_string);
}

// No client in the output: the SDK config holds the credential provider.
impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3")
            .field("bucket", &self.bucket)
            .field("prefix", &self.root.prefix())
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("checksum", &self.checksum)
            .field("copy_threshold", &self.copy_threshold)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Build the SDK client for the validated `config` of store `name`.
    pub async fn new(config: &S3Config) -> Result<Core> {
        // hyper + rustls with ring (the provider reqwest uses too, so a build
        // has one crypto library), acknowledging every read at once: see http.rs.
        let http = xferkit_http::smithy_client();
        let region = region(config).await?;
        let region_name = region.to_string();
        let mut builder = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                let creds = Credentials::new(
                    id.clone(),
                    secret.expose().to_string(),
                    config
                        .session_token
                        .as_ref()
                        .map(|t| t.expose().to_string()),
                    None,
                    "xferkit-config",
                );
                aws_sdk_s3::config::Builder::new()
                    .behavior_version(BehaviorVersion::latest())
                    .region(region)
                    .credentials_provider(creds)
                    .http_client(http)
            }
            _ => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(region)
                    .http_client(http);
                if let Some(profile) = &config.profile {
                    loader = loader.profile_name(profile.trim());
                }
                let sdk = loader.load().await;
                aws_sdk_s3::config::Builder::from(&sdk)
            }
        };
        if let Some(ep) = &config.endpoint {
            builder = builder.endpoint_url(ep.trim_end_matches('/'));
        }
        builder = builder.force_path_style(config.force_path_style);
        // Exactly one retry layer: xferkit's (`TransferCtx::retry` around
        // each request, see `xferkit_core::RetryPolicy`). The SDK's own
        // retries would multiply attempts and hide RetryLater from callers.
        builder = builder.retry_config(RetryConfig::disabled());
        if config.checksum != S3Checksum::Crc32c {
            // Else the SDK adds a CRC32 of its own to every PutObject and UploadPart.
            builder =
                builder.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        }
        let defaults = config.upload.put_options(&capabilities())?;
        Ok(Core {
            client: Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            root: Root::new(SCHEME, &config.bucket, &config.prefix),
            region: region_name,
            endpoint: config.endpoint.clone(),
            force_path_style: config.force_path_style,
            multipart_threshold: config.multipart_threshold,
            part_size: config.part_size,
            concurrency: config.concurrency,
            checksum: config.checksum,
            copy_threshold: config.copy_threshold,
            read_key: CustomerKey::of(&defaults),
            defaults,
        })
    }

    /// A record for `key` with the fields every response has.
    #[allow(clippy::too_many_arguments)]
    pub fn object(
        &self,
        key: &str,
        size: u64,
        etag: Option<&str>,
        version: Option<&str>,
        content_type: Option<&str>,
        last_modified: Option<&DateTime>,
        metadata: Option<&HashMap<String, String>>,
    ) -> RemoteObject {
        let mut o = RemoteObject::new(self.root.url(key), key, size);
        o.etag = etag.map(unquote);
        o.version = version.map(str::to_string);
        o.content_type = content_type.map(str::to_string);
        o.last_modified = last_modified.and_then(|d| SystemTime::try_from(*d).ok());
        o.metadata = metadata.map(lower_keys).unwrap_or_default();
        o
    }
}

/// The region requests are signed for: the store's `region`; else the AWS
/// SDK's chain, `AWS_REGION`, `AWS_DEFAULT_REGION`, then the `region` of the
/// profile (`profile`, else `AWS_PROFILE`, else `default`); else, for a custom
/// endpoint (most S3-compatible stores ignore the region), `us-east-1`.
async fn region(config: &S3Config) -> Result<Region> {
    if let Some(r) = &config.region {
        return Ok(Region::new(r.trim().to_string()));
    }
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(p) = &config.profile {
        profile = profile.profile_name(p.trim());
    }
    let chain = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(profile.build());
    match chain.region().await {
        Some(r) => Ok(r),
        None if config.endpoint.is_some() => Ok(Region::from_static("us-east-1")),
        None => Err(settings::invalid(
            "region",
            "is not set, and the AWS SDK finds none (AWS_REGION, AWS_DEFAULT_REGION, the \
             profile's region): set one of them",
        )),
    }
}

/// The `crc32c:HEX` checksum of a whole object from S3's
/// `x-amz-checksum-crc32c` (base64 of 4 big-endian bytes). A composite
/// checksum (`…-N`, a checksum of the parts' checksums) says nothing about
/// the bytes of a download, so it gives `None`, as does anything malformed.
pub(crate) fn full_object_crc32c(value: Option<&str>) -> Option<String> {
    let crc = xferkit_core::journal::crc32c_from_base64(value?)?;
    Some(xferkit_core::journal::crc32c_label(crc))
}

/// An entity tag without its quotes.
pub(crate) fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

fn lower_keys(m: &HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), decode_meta_value(v)))
        .collect()
}

/// User metadata as S3 headers: keys must be header-name tokens; values
/// that are not plain printable ASCII are sent as one RFC 2047 encoded-word
/// (`=?UTF-8?B?…?=`), the form S3 documents for non-ASCII metadata (it
/// decodes them for storage and encodes them again in responses).
pub(crate) fn encode_metadata(
    target: &str,
    m: &BTreeMap<String, String>,
) -> Result<Option<HashMap<String, String>>> {
    if m.is_empty() {
        return Ok(None);
    }
    let mut out = HashMap::with_capacity(m.len());
    for (k, v) in m {
        let token = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Error::Backend {
                target: target.to_string(),
                message: format!(
                    "metadata key {k:?} cannot be sent to S3: use ASCII letters, digits and '-'"
                ),
                source: None,
            });
        }
        out.insert(k.to_ascii_lowercase(), encode_meta_value(v));
    }
    Ok(Some(out))
}

fn encode_meta_value(v: &str) -> String {
    let plain =
        v.bytes().all(|b| (b' '..=b'~').contains(&b)) && !v.starts_with("=?") && v.trim() == v;
    if plain {
        v.to_string()
    } else {
        use base64::Engine;
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    }
}

/// Decode RFC 2047 encoded-words (UTF-8, `B` or `Q`) in a metadata value;
/// anything else is returned as it came.
pub(crate) fn decode_meta_value(v: &str) -> String {
    if !v.starts_with("=?") {
        return v.to_string();
    }
    let mut out = Vec::new();
    for word in v.split_whitespace() {
        match decode_word(word) {
            Some(bytes) => out.extend(bytes),
            None => return v.to_string(),
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| v.to_string())
}

fn decode_word(w: &str) -> Option<Vec<u8>> {
    let inner = w.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let (charset, enc, text) = (parts.next()?, parts.next()?, parts.next()?);
    if !charset.eq_ignore_ascii_case("utf-8") {
        return None;
    }
    match enc {
        "B" | "b" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        }
        "Q" | "q" => {
            let mut out = Vec::new();
            let mut bytes = text.bytes();
            while let Some(b) = bytes.next() {
                match b {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        let hex = std::str::from_utf8(&hex).ok()?;
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                    }
                    b => out.push(b),
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// How a failed request is read: [`Mode::CreateOnly`] for a create-only
/// write (`If-None-Match: *`), whose failed precondition or lost
/// `ConditionalRequestConflict` race means the key exists.
pub(crate) use xferkit_core::status::Mode;

/// Detail of one failed S3 request, kept as the error's source. Built from
/// the response (status, code, message, request id): it never holds the
/// request, so no credential or signature can leak through it.
#[derive(Debug)]
pub(crate) struct S3Failure {
    op: &'static str,
    status: Option<u16>,
    code: Option<String>,
    detail: String,
    request_id: Option<String>,
}

impl fmt::Display for S3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3 {} failed", self.op)?;
        if let Some(s) = self.status {
            write!(f, ": HTTP {s}")?;
        }
        if let Some(c) = &self.code {
            write!(f, " {c}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(r) = &self.request_id {
            write!(f, " (request id {r})")?;
        }
        Ok(())
    }
}

impl std::error::Error for S3Failure {}

impl S3Failure {
    /// What S3 said about one key of a batch request (DeleteObjects).
    pub(crate) fn of_key(op: &'static str, code: Option<&str>, message: Option<&str>) -> Self {
        S3Failure {
            op,
            status: None,
            code: code.map(str::to_string),
            detail: message.unwrap_or_default().to_string(),
            request_id: None,
        }
    }
}

/// Map an SDK failure of operation `op` on `target` (a canonical URL) to an
/// xferkit error: an answer from S3 goes through the one status table
/// ([`xferkit_core::status`], by error code first, then by status, with
/// `Retry-After`); failures without an answer stay here. `HeadObject`
/// errors carry no code (the response has no body), so the status alone
/// has to do.
pub(crate) fn map_sdk<E, R>(
    op: &'static str,
    target: &str,
    mode: Mode,
    err: SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: HttpStatus + fmt::Debug,
{
    let status = err.raw_response().map(HttpStatus::status_u16);
    let retry_after = err
        .raw_response()
        .and_then(|r| r.header("retry-after"))
        .and_then(status::parse_retry_after);
    let failure = S3Failure {
        op,
        status,
        code: err.code().map(str::to_string),
        detail: match &err {
            SdkError::ServiceError(s) => s.err().message().unwrap_or_default().to_string(),
            other => DisplayErrorContext(other).to_string(),
        },
        request_id: err
            .as_service_error()
            .and_then(|e| e.meta().extra("aws_request_id"))
            .map(str::to_string),
    };
    let answer = Answer::new(status)
        .mode(mode)
        .retry_after(retry_after)
        .operation(op);
    match &err {
        SdkError::ServiceError(_) => answer.code(err.code()).error(target, failure),
        // A response that could not be read (cut off, garbled): retry,
        // unless its status alone says more.
        SdkError::ResponseError(_) if answer.kind() == ErrorKind::Backend => Error::Transient {
            target: target.to_string(),
            retry_after,
            source: Some(Box::new(failure)),
        },
        SdkError::ResponseError(_) => answer.error(target, failure),
        SdkError::TimeoutError(_) => Error::transient(target, failure),
        SdkError::DispatchFailure(d) if d.is_user() => backend(target, failure),
        SdkError::DispatchFailure(_) => Error::transient(target, failure),
        _ => backend(target, failure),
    }
}

/// A final failure that is not an answer from S3.
fn backend(target: &str, failure: S3Failure) -> Error {
    Error::Backend {
        target: target.to_string(),
        message: failure.to_string(),
        source: Some(Box::new(failure)),
    }
}

/// An error reading a response body (connection cut mid-stream): retryable.
pub(crate) fn body_error(
    target: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::transient(target, err)
}

/// The HTTP status and headers of a raw response (abstracted so tests can
/// build errors).
pub(crate) trait HttpStatus {
    fn status_u16(&self) -> u16;
    fn header(&self, name: &str) -> Option<&str>;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_u16(&self) -> u16 {
        self.status().as_u16()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers().get(name)
    }
}

/// What every S3 store supports.
pub(crate) fn capabilities() -> xferkit_core::Capabilities {
    let mut c = xferkit_core::Capabilities::default();
    c.presign_get = true;
    c.presign_put = true;
    c.presign_verified = true;
    c.range = true;
    c.conditional_create = true;
    c.multipart = true;
    c.list_pending_uploads = true;
    c.copy = true;
    c.metadata = true;
    c.list_native = true;
    c.storage_class = true;
    c.object_headers = true;
    c.tags = true;
    c.sse_service_managed = true;
    c.sse_kms = true;
    c.sse_customer_key = true;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use xferkit_core::Key;

    #[test]
    fn only_full_object_crc32cs_become_checksums() {
        // crc32c("123456789") = e3069283, base64 "4waSgw==".
        assert_eq!(
            full_object_crc32c(Some("4waSgw==")).as_deref(),
            Some("crc32c:e3069283")
        );
        assert_eq!(full_object_crc32c(Some("4waSgw==-3")), None, "composite");
        assert_eq!(full_object_crc32c(Some("not base64!")), None);
        assert_eq!(full_object_crc32c(Some("AAAAAAA=")), None, "5 bytes");
        assert_eq!(full_object_crc32c(None), None);
    }
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use std::time::Duration;

    /// An answer from S3 as the SDK hands it over: status, headers and the
    /// error code and request id it read from the body.
    fn service_error(
        status: Option<u16>,
        code: Option<&str>,
        headers: &[(&'static str, &str)],
    ) -> SdkError<PutObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().custom("aws_request_id", "REQ1");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let mut raw =
            HttpResponse::new(status.unwrap_or(200).try_into().unwrap(), SdkBody::empty());
        for (k, v) in headers {
            raw.headers_mut().insert(*k, v.to_string());
        }
        SdkError::service_error(PutObjectError::generic(meta.build()), raw)
    }

    fn kind(status: Option<u16>, code: Option<&str>, mode: Mode) -> Error {
        map_sdk("Test", "s3://b/k", mode, service_error(status, code, &[]))
    }

    /// The table is core's (`xferkit_core::status`, tested there). Here:
    /// the SDK's status, code and the request's mode reach it, and every
    /// error names the target and keeps S3's words and request id.
    #[test]
    fn sdk_answers_reach_the_shared_table() {
        use ErrorKind as K;
        use Mode::*;
        type Row = (Option<u16>, Option<&'static str>, Mode, ErrorKind);
        let table: &[Row] = &[
            (Some(404), None, Plain, K::NotFound), // HeadObject: no code
            (Some(400), Some("ExpiredToken"), Plain, K::PermissionDenied),
            (Some(503), Some("SlowDown"), Plain, K::Transient),
            (Some(412), None, CreateOnly, K::AlreadyExists),
            (
                Some(409),
                Some("ConditionalRequestConflict"),
                Plain,
                K::Transient,
            ),
            (Some(416), Some("InvalidRange"), Plain, K::InvalidRange),
            (Some(501), Some("NotImplemented"), Plain, K::NotSupported),
            (Some(400), Some("InvalidArgument"), Plain, K::Backend),
        ];
        for &(status, code, mode, want) in table {
            let e = kind(status, code, mode);
            assert_eq!(e.kind(), want, "{status:?} {code:?} {mode:?}: {e}");
            assert_eq!(
                e.is_retryable(),
                want == K::Transient,
                "{status:?} {code:?}"
            );
            assert!(e.to_string().contains("s3://b/k"), "{e}");
            let chain = e.chain();
            if !matches!(want, K::InvalidRange | K::NotSupported) {
                // These variants carry no source; the rest keep S3's words.
                assert!(chain.contains("S3 Test failed"), "{chain}");
                assert!(chain.contains("(request id REQ1)"), "{chain}");
                if let (Some(s), Some(c)) = (status, code) {
                    assert!(chain.contains(&format!("HTTP {s} {c}")), "{chain}");
                }
            }
        }
    }

    #[test]
    fn retry_after_of_slow_down_is_kept() {
        let e = map_sdk(
            "UploadPart",
            "s3://b/k",
            Mode::Plain,
            service_error(Some(503), Some("SlowDown"), &[("retry-after", "7")]),
        );
        let Error::Transient { retry_after, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(7)));
        assert!(e.chain().contains("HTTP 503 SlowDown"), "{}", e.chain());
        // Capped; ignored on a final error and when unreadable.
        let ra = |status, code, v: &str| match map_sdk(
            "UploadPart",
            "s3://b/k",
            Mode::Plain,
            service_error(Some(status), code, &[("retry-after", v)]),
        ) {
            Error::Transient { retry_after, .. } => retry_after,
            e => panic!("{e:?}"),
        };
        assert_eq!(
            ra(503, None, "100000"),
            Some(xferkit_core::status::MAX_RETRY_AFTER)
        );
        assert_eq!(ra(500, Some("InternalError"), "soon"), None);
        let e = map_sdk(
            "PutObject",
            "s3://b/k",
            Mode::Plain,
            service_error(Some(403), Some("AccessDenied"), &[("retry-after", "7")]),
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_wait_before_the_next_try() {
        let policy = xferkit_core::RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(1));
        let t0 = tokio::time::Instant::now();
        let times = std::sync::Mutex::new(Vec::new());
        policy
            .retry("s3://b/k part 1", |attempt| {
                times.lock().unwrap().push(t0.elapsed());
                async move {
                    match attempt {
                        1 => Err(map_sdk(
                            "UploadPart",
                            "s3://b/k",
                            Mode::Plain,
                            service_error(Some(503), Some("SlowDown"), &[("retry-after", "5")]),
                        )),
                        _ => Ok(()),
                    }
                }
            })
            .await
            .unwrap();
        let times = times.into_inner().unwrap();
        assert_eq!(times, vec![Duration::ZERO, Duration::from_secs(5)]);
    }

    /// Through a real HTTP answer: the fault proxy answers every HEAD with
    /// 503 `SlowDown` and `Retry-After: 1`; the store's stat waits that
    /// second between its two tries (its own backoff would be 1 ms).
    #[tokio::test]
    async fn a_slow_down_with_retry_after_over_http_waits_as_asked() {
        use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
        use xferkit_core::{FileTransferHandler, RetryPolicy};

        // Nothing is forwarded: every request gets the injected answer.
        let proxy = FaultProxy::start("127.0.0.1:9").await.unwrap();
        proxy.set_rules(vec![Rule::new(Fault::StatusRetryAfter(503, 1))]);
        let mut config = crate::S3Config::new("bkt");
        config.endpoint = Some(proxy.url());
        config.force_path_style = true;
        config.access_key_id = Some("AKIAEXAMPLE".into());
        config.secret_access_key = Some(xferkit_core::Secret::new("s3cr3t-value"));
        let store = crate::S3Store::new("media", config)
            .await
            .unwrap()
            .with_retry_policy(
                RetryPolicy::default()
                    .with_max_attempts(2)
                    .with_initial_backoff(Duration::from_millis(1))
                    .with_max_backoff(Duration::from_millis(1)),
            );
        let t0 = std::time::Instant::now();
        let e = store.stat(&Key::new("k").unwrap()).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(proxy.stats().statuses, 2, "two tries");
        let Error::RetriesExhausted {
            attempts: 2,
            elapsed,
            source,
            ..
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(*elapsed >= Duration::from_secs(1), "{elapsed:?}");
        assert!(took >= Duration::from_secs(1), "{took:?}");
        let Error::Transient { retry_after, .. } = &**source else {
            panic!("{source:?}")
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(1)));
        assert!(e.chain().contains("HTTP 503"), "{}", e.chain());
    }

    #[test]
    fn metadata_values_survive_as_rfc2047() {
        for v in [
            "plain ascii",
            "Urlaubsfoto ü – 日本",
            "line\nbreak",
            " padded ",
            "=?UTF-8?B?not really?=",
            "",
        ] {
            let enc = encode_meta_value(v);
            assert!(enc.bytes().all(|b| (b' '..=b'~').contains(&b)), "{enc}");
            assert_eq!(decode_meta_value(&enc), v, "{enc}");
        }
        assert_eq!(encode_meta_value("alice"), "alice");
        // What S3 may send back: Q encoding, several words.
        assert_eq!(
            decode_meta_value("=?UTF-8?Q?caf=C3=A9_au_lait?="),
            "café au lait"
        );
        assert_eq!(decode_meta_value("=?UTF-8?B?w7w=?= =?UTF-8?B?w7w=?="), "üü");
        assert_eq!(
            decode_meta_value("=?ISO-8859-1?Q?x?="),
            "=?ISO-8859-1?Q?x?="
        );
        let mut m = BTreeMap::new();
        m.insert("Bad Key".to_string(), "v".to_string());
        let e = encode_metadata("s3://b/k", &m).unwrap_err();
        assert!(e.to_string().contains("Bad Key"), "{e}");
    }

    #[test]
    fn failure_display_names_status_and_code() {
        let e = kind(Some(400), Some("InvalidArgument"), Mode::Plain);
        assert_eq!(
            e.chain(),
            "s3://b/k: S3 Test failed: HTTP 400 InvalidArgument (request id REQ1)"
        );
    }

    #[test]
    fn timeouts_and_dispatch_failures_are_transient() {
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("took too long");
        let e = map_sdk("PutObject", "s3://b/k", Mode::Plain, e);
        assert!(e.is_retryable());

        let e: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(
            aws_sdk_s3::error::ConnectorError::io("connection refused".into()),
        );
        let e = map_sdk("PutObject", "s3://b/k", Mode::Plain, e);
        assert!(e.is_retryable());
        assert!(e.chain().contains("s3://b/k"));
    }
}
