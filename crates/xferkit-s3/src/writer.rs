//! Uploads: S3's calls for the core parts engine (`xferkit_core::parts`),
//! which chooses one `PutObject` or a multipart upload, schedules, retries,
//! journals, resumes and aborts.
//!
//! Checksums (`checksum`): by default every `PutObject` and `UploadPart`
//! carries a CRC32C, and the complete of a multipart upload the whole
//! object's (`FullObject`, combined by the engine from the parts'), which S3
//! checks and keeps for downloads to verify. A store that computes its own
//! instead (moto) reports it back, and the engine compares. With `md5` each
//! body carries a `Content-MD5` instead (and nothing is kept for downloads);
//! with `none`, nothing. Either way the engine still compares a CRC32C the
//! store reports.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_runtime::auth::PayloadSigningOverride;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures::StreamExt;
use xferkit_core::journal::{JournalPart, crc32c_from_base64, crc32c_to_base64};
use xferkit_core::parts::{
    Acked, Body, FileSpan, Held, Part, PartBody, PartDigest, PartStore, Plan, SpanReader, Stored,
};
use xferkit_core::{Error, ErrorKind, PutOptions, RemoteObject, Result};

use crate::S3Checksum;
use crate::config::{MAX_PART_SIZE, MAX_PARTS};
use crate::core::{
    Core, CustomerKey, HttpStatus, Mode, encode_metadata, map_sdk, server_options, sse_c, unquote,
};

const MIB: u64 = 1024 * 1024;

/// The MD5 S3 checks for a body (`checksum = "md5"`).
fn md5(data: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(data).to_vec()
}

/// What the engine computes of each part as it reads it (`Plan::digest`):
/// the SHA256 that signs its payload (32 bytes), then, with
/// `checksum = "md5"`, its MD5 (16 bytes).
struct PartSums {
    sha256: sha2::Sha256,
    md5: Option<md5::Md5>,
}

impl PartDigest for PartSums {
    fn update(&mut self, data: &[u8]) {
        sha2::Digest::update(&mut self.sha256, data);
        if let Some(m) = self.md5.as_mut() {
            md5::Digest::update(m, data);
        }
    }

    fn finish(self: Box<Self>) -> Vec<u8> {
        let mut out = sha2::Digest::finalize(self.sha256).to_vec();
        if let Some(m) = self.md5 {
            out.extend_from_slice(&md5::Digest::finalize(m));
        }
        out
    }
}

fn part_sha256() -> Box<dyn PartDigest> {
    Box::new(PartSums {
        sha256: sha2::Digest::new(),
        md5: None,
    })
}

fn part_sha256_md5() -> Box<dyn PartDigest> {
    Box::new(PartSums {
        sha256: sha2::Digest::new(),
        md5: Some(md5::Digest::new()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs a request with the SHA256 of its body computed beforehand (the
/// engine's pass over the part): a part streamed from its file is a signed
/// payload that the store checks, as a body in memory is (the SDK signs a
/// streamed body `UNSIGNED-PAYLOAD`, and a store that checks no CRC32C
/// header, like s3s-fs, would then keep bytes corrupted on the way).
#[derive(Debug)]
struct SignedPayload(String);

impl Intercept for SignedPayload {
    fn name(&self) -> &'static str {
        "SignedPayload"
    }

    fn modify_before_signing(
        &self,
        _context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> std::result::Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(PayloadSigningOverride::Precomputed(self.0.clone()));
        Ok(())
    }
}

/// A part of a file as the SDK's body: streamed from the file, a fresh
/// reader each time the SDK sends it.
fn span_body(span: &FileSpan) -> SdkStream {
    let span = span.clone();
    SdkStream::new(SdkBody::retryable(move || {
        SdkBody::from_body_1_x(SpanBody(span.reader()))
    }))
}

struct SpanBody(SpanReader);

impl http_body::Body for SpanBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>>>> {
        let reader = &mut self.get_mut().0;
        reader
            .poll_next_unpin(cx)
            .map(|c| c.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.remaining() == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.remaining())
    }
}

/// The MD5 of a one-request body: a file is read once more (from the page
/// cache, like the engine's CRC32C of it), in a blocking task.
async fn md5_of(body: &Body) -> Result<Vec<u8>> {
    let path = match body {
        Body::Bytes(b) => return Ok(md5(b)),
        Body::File(path) => path.clone(),
    };
    let shown = path.display().to_string();
    let sum = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use md5::Digest;
        use std::io::Read;
        let (mut file, mut hasher) = (std::fs::File::open(&path)?, md5::Md5::new());
        let mut buf = vec![0; MIB as usize];
        loop {
            match file.read(&mut buf)? {
                0 => return Ok(hasher.finalize().to_vec()),
                n => hasher.update(&buf[..n]),
            }
        }
    });
    let sum = sum.await;
    let sum = sum.map_err(|e| Error::backend(&shown, "MD5 worker task failed", e))?;
    sum.map_err(|e| Error::from_io(&shown, e))
}

/// One upload to one key.
pub(crate) struct Upload {
    core: Arc<Core>,
    key: String,
    full: String,
    target: String,
    content_type: String,
    /// As sent (keys lower-cased, values RFC 2047 encoded where needed).
    metadata: Option<HashMap<String, String>>,
    /// As given, for the returned record.
    user_metadata: BTreeMap<String, String>,
    mode: Mode,
    /// Headers, storage class, encryption and tags (defaults merged in).
    opts: PutOptions,
    /// SSE-C: sent on every request of this upload, HEADs included.
    sse_c: Option<CustomerKey>,
}

impl Upload {
    pub fn new(core: &Arc<Core>, key: &str, opts: &PutOptions) -> Result<Self> {
        let full = core.root.full(key);
        let target = core.root.url_full(&full);
        let metadata = encode_metadata(&target, &opts.metadata)?;
        Ok(Upload {
            core: core.clone(),
            key: key.to_string(),
            target,
            full,
            content_type: opts.content_type_for(key),
            metadata,
            user_metadata: opts
                .metadata
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            mode: if opts.if_not_exists {
                Mode::CreateOnly
            } else {
                Mode::Plain
            },
            sse_c: CustomerKey::of(opts),
            opts: opts.clone(),
        })
    }

    /// How the engine cuts uploads for this store.
    pub fn plan(core: &Core, opts: &PutOptions, state_dir: Option<std::path::PathBuf>) -> Plan {
        let plan = Plan::new(
            core.multipart_threshold,
            core.part_size,
            MAX_PART_SIZE,
            MAX_PARTS,
        )
        .granule(MIB)
        .concurrency(core.concurrency)
        .create_only(opts.if_not_exists)
        .state_dir(state_dir);
        match core.checksum {
            S3Checksum::Md5 => plan.digest(part_sha256_md5),
            _ => plan.digest(part_sha256),
        }
    }

    fn crc32c(&self) -> bool {
        self.core.checksum == S3Checksum::Crc32c
    }

    fn record(&self, size: u64, etag: Option<&str>, version: Option<&str>) -> RemoteObject {
        let mut o = RemoteObject::new(self.target.clone(), &self.key, size);
        o.etag = etag.map(unquote);
        o.version = version.map(str::to_string);
        o.content_type = Some(self.content_type.clone());
        o.metadata = self.user_metadata.clone();
        o.headers = self.opts.headers.clone();
        o
    }

    fn map<E, R>(&self, op: &'static str, mode: Mode) -> impl Fn(SdkError<E, R>) -> Error + '_
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: HttpStatus + std::fmt::Debug,
    {
        move |e| map_sdk(op, &self.target, mode, e)
    }

    /// A HEAD of the key.
    fn head(&self) -> aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder {
        let head = self.core.client.head_object().bucket(&self.core.bucket);
        sse_c!(head.key(&self.full), self.sse_c.as_ref())
    }

    /// The whole object's CRC32C as the store keeps it: from the complete's
    /// answer, else a HEAD (a store that keeps none, s3s-fs: `None`).
    async fn stored_crc(&self, answered: Option<&str>) -> Option<u32> {
        if let Some(v) = answered {
            return crc32c_from_base64(v);
        }
        let with_checksum = self.head().checksum_mode(ChecksumMode::Enabled);
        let out = with_checksum.send().await.ok()?;
        crc32c_from_base64(out.checksum_crc32_c()?)
    }

    /// A complete that failed on a retry with "no such upload" (or, for a
    /// create-only upload, "already exists") may be the echo of an earlier
    /// try whose answer was lost: the upload is then gone because it became
    /// the object. Accept the object if it is ours by size and part count
    /// (a multipart ETag ends with `-PARTS`); otherwise return `err`.
    async fn completed_earlier(&self, err: Error, total: u64, parts: usize) -> Result<Stored> {
        if !matches!(err.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists) {
            return Err(err);
        }
        match self
            .head()
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(h)
                if h.content_length() == Some(total as i64)
                    && h.e_tag()
                        .is_some_and(|t| unquote(t).ends_with(&format!("-{parts}"))) =>
            {
                tracing::debug!(target = %self.target, "an earlier CompleteMultipartUpload took effect");
                let crc = h.checksum_crc32_c().and_then(crc32c_from_base64);
                Ok(Stored::new(
                    self.record(total, h.e_tag(), h.version_id()),
                    crc,
                ))
            }
            _ => Err(err),
        }
    }
}

#[xferkit_core::async_trait]
impl PartStore for Upload {
    fn target(&self) -> &str {
        &self.target
    }

    async fn put_whole(&self, body: &Body, size: u64, _crc32c: u32) -> Result<Stored> {
        let data = match body {
            Body::Bytes(b) => SdkStream::from(b.clone()),
            Body::File(path) => SdkStream::read_from()
                .path(path)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| Error::backend(path.display().to_string(), "cannot read file", e))?,
        };
        let mut req = self
            .core
            .client
            .put_object()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .content_type(&self.content_type)
            .set_metadata(self.metadata.clone())
            .content_length(size as i64)
            .body(data);
        req = server_options!(req, &self.opts);
        match self.core.checksum {
            // Computed by the SDK (as a trailer while a file streams), verified
            // by the store and kept as the object's full-object CRC32C, which
            // downloads check. (A value given as a header alone is not kept by
            // moto.)
            S3Checksum::Crc32c => req = req.checksum_algorithm(ChecksumAlgorithm::Crc32C),
            S3Checksum::Md5 => req = req.content_md5(BASE64.encode(md5_of(body).await?)),
            _ => {}
        }
        if self.mode == Mode::CreateOnly {
            req = req.if_none_match("*");
        }
        let out = req.send().await.map_err(self.map("PutObject", self.mode))?;
        let crc = out.checksum_crc32_c().and_then(crc32c_from_base64);
        Ok(Stored::new(
            self.record(size, out.e_tag(), out.version_id()),
            crc,
        ))
    }

    async fn exists(&self) -> Result<bool> {
        match self
            .head()
            .send()
            .await
            .map_err(self.map("HeadObject", Mode::Plain))
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn start(&self, _size: Option<u64>) -> Result<String> {
        let mut req = self
            .core
            .client
            .create_multipart_upload()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .content_type(&self.content_type)
            .set_metadata(self.metadata.clone());
        req = server_options!(req, &self.opts);
        if self.crc32c() {
            req = req
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .checksum_type(ChecksumType::FullObject);
        }
        let created = req
            .send()
            .await
            .map_err(self.map("CreateMultipartUpload", Mode::Plain))?;
        created.upload_id().map(str::to_string).ok_or_else(|| {
            Error::backend(
                &self.target,
                "CreateMultipartUpload returned no upload id",
                "no upload id",
            )
        })
    }

    async fn put_part(&self, session: &str, part: &Part, _attempt: u32) -> Result<Acked> {
        // `Plan::digest`: the SHA256 to sign, then the MD5 (`checksum = "md5"`).
        let (sha256, md5) = match part.digest.as_deref() {
            Some(d) if d.len() >= 32 => {
                let (sha, md5) = d.split_at(32);
                (Some(sha), (!md5.is_empty()).then_some(md5))
            }
            _ => (None, None),
        };
        let req = self
            .core
            .client
            .upload_part()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .upload_id(session)
            .part_number(i32::try_from(part.number).unwrap_or(i32::MAX))
            .content_length(i64::try_from(part.len()).unwrap_or(i64::MAX))
            // Already computed: sent as a header, the SDK computes no other.
            .set_checksum_crc32_c(self.crc32c().then(|| crc32c_to_base64(part.crc32c)))
            .set_content_md5(md5.map(|d| BASE64.encode(d)))
            .body(match &part.body {
                PartBody::Bytes(b) => SdkStream::from(b.clone()),
                PartBody::File(span) => span_body(span),
            });
        let mut req = sse_c!(req, self.sse_c.as_ref()).customize();
        if let Some(sha) = sha256 {
            req = req.interceptor(SignedPayload(hex(sha)));
        }
        let out = req
            .send()
            .await
            .map_err(self.map("UploadPart", Mode::Plain))?;
        let etag = out.e_tag().ok_or_else(|| {
            Error::backend(
                &self.target,
                format!("UploadPart {} returned no ETag", part.number),
                "no ETag",
            )
        })?;
        Ok(Acked::Part(etag.to_string()))
    }

    async fn held(&self, session: &str, _size: u64) -> Result<Held> {
        let mut out = HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .core
                .client
                .list_parts()
                .bucket(&self.core.bucket)
                .key(&self.full)
                .upload_id(session)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(self.map("ListParts", Mode::Plain))?;
            for p in page.parts() {
                if let Some(n) = p.part_number().and_then(|n| u32::try_from(n).ok()) {
                    let size = u64::try_from(p.size().unwrap_or(0)).unwrap_or(0);
                    out.insert(n, (size, p.e_tag().map(str::to_string)));
                }
            }
            marker = page.next_part_number_marker().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || marker.is_none() {
                return Ok(Held::Parts(out));
            }
        }
    }

    async fn complete(
        &self,
        session: &str,
        parts: &[JournalPart],
        total: u64,
        crc32c: u32,
        attempt: u32,
    ) -> Result<Stored> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(i32::try_from(p.number).unwrap_or(i32::MAX))
                            .e_tag(&p.etag)
                            .set_checksum_crc32_c(self.crc32c().then(|| crc32c_to_base64(p.crc32c)))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let mut req = self
            .core
            .client
            .complete_multipart_upload()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .upload_id(session)
            .multipart_upload(completed);
        if self.crc32c() {
            req = req
                .checksum_crc32_c(crc32c_to_base64(crc32c))
                .checksum_type(ChecksumType::FullObject);
        }
        if self.mode == Mode::CreateOnly {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(out) => {
                let crc = self.stored_crc(out.checksum_crc32_c()).await;
                Ok(Stored::new(
                    self.record(total, out.e_tag(), out.version_id()),
                    crc,
                ))
            }
            Err(e) => {
                let e = map_sdk("CompleteMultipartUpload", &self.target, self.mode, e);
                if attempt == 1 {
                    return Err(e);
                }
                self.completed_earlier(e, total, parts.len()).await
            }
        }
    }

    async fn abort(&self, session: &str) -> Result<()> {
        self.core
            .client
            .abort_multipart_upload()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .upload_id(session)
            .send()
            .await
            .map_err(self.map("AbortMultipartUpload", Mode::Plain))?;
        tracing::debug!(target = %self.target, "multipart upload aborted");
        Ok(())
    }

    async fn discard(&self, _object: &RemoteObject) -> Result<()> {
        let delete = self
            .core
            .client
            .delete_object()
            .bucket(&self.core.bucket)
            .key(&self.full);
        delete
            .send()
            .await
            .map_err(self.map("DeleteObject", Mode::Plain))?;
        Ok(())
    }
}
