//! Uploads: one multipart request up to `multipart_threshold`, a resumable
//! upload in `chunk_size` chunks above it.
//!
//! Small uploads are `uploadType=multipart` (metadata and data in one
//! request) rather than `uploadType=media`: it carries content type and user
//! metadata, and fake-gcs-server enforces `ifGenerationMatch=0` on it (not on
//! media uploads). The data part carries the content type too: fake-gcs-server
//! takes the object's type from it.
//!
//! Resumable chunks go one after another (GCS accepts them only in order);
//! progress is reported as the service acknowledges each. A failed or stopped
//! upload cancels its session (`DELETE` on the session URI) before returning,
//! so nothing is left behind.
//!
//! Retries (the transfer's `RetryPolicy`, through `TransferCtx::retry`) are
//! per request: the one-request upload is sent again from its file or
//! buffer; a failed chunk is not blindly resent: the next try first asks the
//! session how much it has (`PUT` with `Content-Range: bytes */N`) and sends
//! only the rest of the chunk.
//!
//! Integrity: the CRC32C of the data is computed while it streams (no second
//! read of the file) and checked by the store where it can: in the object
//! resource of a one-request upload whose data is in memory (a stream source;
//! a file is streamed, and the resource goes before the data), and as
//! `X-Goog-Hash: crc32c=...` on the last chunk of a resumable upload. GCS
//! refuses a mismatch (400) and creates nothing. Whatever was sent, the
//! CRC32C in the object resource the store returns is compared with the one
//! computed here (emulators verify nothing): on a mismatch that generation is
//! deleted (`ifGenerationMatch`, so a newer write is never removed), then a
//! one-request upload is sent again (a `Transient` error for the retry loop)
//! and a resumable one, whose session is over, fails with `ChecksumMismatch`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus, UploadedRange,
};
use reqwest_middleware::reqwest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use xferkit_core::journal::{
    JournalFile, JournalPart, SourceFingerprint, UploadJournal, crc32c, crc32c_append,
    crc32c_of_range,
};
use xferkit_core::{ByteStream, Error, ErrorKind, Result, RetryPolicy, TransferCtx, UploadSource};

use crate::client::{Gcs, ServiceError, check, map_sdk, parse_object};

/// How long a failed or stopped upload waits for its session to be cancelled.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(1);
/// File read size.
const READ_BUF: usize = 256 * 1024;
/// Chunk answers in a row that acknowledge nothing before giving up.
const MAX_STALLS: u32 = 3;

/// The body of a one-request upload, opened again for each try.
enum Replay {
    Path(PathBuf),
    Bytes(Bytes),
}

impl Replay {
    async fn open(&self, size: u64, target: &str) -> Result<ByteStream> {
        match self {
            Replay::Bytes(b) => {
                let b = b.clone();
                Ok(Box::pin(futures::stream::once(async move { Ok(b) })))
            }
            Replay::Path(path) => {
                let shown = path.display().to_string();
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?;
                let stream: ByteStream = Box::pin(
                    tokio_util::io::ReaderStream::with_capacity(file, READ_BUF)
                        .map_err(move |e| Error::from_io(&shown, e)),
                );
                Ok(exact_length(stream, size, target.to_string()))
            }
        }
    }
}

/// The CRC32C of the bytes a stream has produced so far, still readable
/// after the stream was handed to a request body.
#[derive(Clone, Default)]
struct RunningCrc(Arc<Mutex<u32>>);

impl RunningCrc {
    fn update(&self, data: &[u8]) {
        let mut crc = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *crc = crc32c_append(*crc, data);
    }

    fn get(&self) -> u32 {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `stream`, hashing each piece as it passes.
    fn over(&self, stream: ByteStream) -> ByteStream {
        let crc = self.clone();
        Box::pin(stream.inspect_ok(move |b| crc.update(b)))
    }
}

/// A CRC32C as GCS writes it: base64 of the big-endian bytes.
fn crc_base64(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// A CRC32C as xferkit shows checksums (`crc32c:<hex>`, as `RemoteObject::checksum`).
fn crc_label(crc: u32) -> String {
    format!("crc32c:{crc:08x}")
}

/// The CRC32C in an object resource, if it has one that can be read.
fn stored_crc(obj: &Object) -> Option<u32> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(obj.crc32c.as_deref()?)
        .ok()?;
    <[u8; 4]>::try_from(raw.as_slice())
        .ok()
        .map(u32::from_be_bytes)
}

/// GCS's message when it refused data whose CRC32C does not match the one
/// sent with it (HTTP 400, "Provided CRC32C ... doesn't match calculated
/// CRC32C ...").
fn refused_checksum(e: &Error) -> Option<&str> {
    let Error::Backend {
        source: Some(s), ..
    } = e
    else {
        return None;
    };
    let s = s.downcast_ref::<ServiceError>()?;
    (s.status == 400 && s.message.to_ascii_lowercase().contains("crc32c"))
        .then_some(s.message.as_str())
}

/// One upload to do.
pub(crate) struct UploadJob<'a> {
    pub gcs: &'a Gcs,
    pub bucket: &'a str,
    /// Full object name (store prefix included).
    pub name: String,
    /// Canonical URL, for errors.
    pub target: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub create_only: bool,
    pub threshold: u64,
    pub chunk_size: u64,
    /// Journal resumable uploads of files here (resume after a crash).
    pub state_dir: Option<&'a Path>,
}

/// The journal of a resumable upload of a file: the session URI and how
/// much of the file the service has (one record: bytes `0..len`, CRC32C).
struct Journaled {
    file: JournalFile,
    data: UploadJournal,
}

impl Journaled {
    async fn persisted(&mut self, len: u64, crc32c: u32) {
        self.data.parts = vec![JournalPart::new(0, 0, len, String::new(), crc32c)];
        if let Err(e) = self.file.save(&self.data).await {
            tracing::warn!(error = %e.chain(), "could not update the upload journal");
        }
    }
}

impl UploadJob<'_> {
    /// Upload `source`; returns the service's object resource.
    pub(crate) async fn run(&self, source: UploadSource, ctx: &TransferCtx) -> Result<Object> {
        if self.content_type.chars().any(|c| c.is_control()) {
            return Err(Error::backend(
                &self.target,
                "content type contains control characters",
                format!("{:?}", self.content_type),
            ));
        }
        if ctx.is_discarding() {
            // A paused upload that is stopped: cancel the session it kept.
            if let (UploadSource::Path(path), Some(dir)) = (&source, self.state_dir) {
                let file = JournalFile::for_upload(dir, &self.target, path);
                if let Some(old) = file.load().await
                    && !old.upload_id.is_empty()
                {
                    let session = self.gcs.client.get_resumable_upload(old.upload_id);
                    self.cancel_session(session).await;
                }
                file.remove().await;
            }
            return Err(Error::cancelled(&self.target));
        }
        ctx.check(&self.target)?;
        let r = match source {
            UploadSource::Path(path) => {
                let shown = path.display().to_string();
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?;
                let size = file
                    .metadata()
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?
                    .len();
                if size <= self.threshold || size == 0 {
                    ctx.set_total(size);
                    return self
                        .multipart(Replay::Path(path), size, ctx)
                        .await
                        .map_err(|e| self.create_only_error(e));
                }
                if let Some(dir) = self.state_dir {
                    drop(file);
                    ctx.set_total(size);
                    return self
                        .resumable_file(&path, size, dir, ctx)
                        .await
                        .map_err(|e| self.create_only_error(e));
                }
                let stream: ByteStream = Box::pin(
                    tokio_util::io::ReaderStream::with_capacity(file, READ_BUF)
                        .map_err(move |e| Error::from_io(&shown, e)),
                );
                self.sized(stream, size, ctx).await
            }
            UploadSource::Stream {
                stream,
                size: Some(size),
            } => self.sized(stream, size, ctx).await,
            UploadSource::Stream { stream, size: None } => self.unknown_size(stream, ctx).await,
        };
        r.map_err(|e| self.create_only_error(e))
    }

    /// With `if_not_exists`, a failed generation precondition means the key exists.
    fn create_only_error(&self, e: Error) -> Error {
        match e {
            Error::PreconditionFailed { target, source } if self.create_only => {
                Error::AlreadyExists { target, source }
            }
            e => e,
        }
    }

    async fn sized(&self, stream: ByteStream, size: u64, ctx: &TransferCtx) -> Result<Object> {
        ctx.set_total(size);
        let mut stream = exact_length(stream, size, self.target.clone());
        if size <= self.threshold || size == 0 {
            // Small: keep it in memory so a failed request can be sent again.
            let mut buf = BytesMut::new();
            while let Some(b) = next(&mut stream, ctx, &self.target).await? {
                buf.extend_from_slice(&b);
            }
            self.multipart(Replay::Bytes(buf.freeze()), size, ctx).await
        } else {
            self.resumable(stream, Some(size), BytesMut::new(), ctx)
                .await
        }
    }

    /// Unknown size: buffer up to the threshold to choose.
    async fn unknown_size(&self, mut stream: ByteStream, ctx: &TransferCtx) -> Result<Object> {
        let mut buf = BytesMut::new();
        let mut eof = false;
        while !eof && buf.len() as u64 <= self.threshold {
            match next(&mut stream, ctx, &self.target).await? {
                Some(b) => buf.extend_from_slice(&b),
                None => eof = true,
            }
        }
        if eof && buf.len() as u64 <= self.threshold {
            let size = buf.len() as u64;
            ctx.set_total(size);
            self.multipart(Replay::Bytes(buf.freeze()), size, ctx).await
        } else {
            self.resumable(stream, None, buf, ctx).await
        }
    }

    fn upload_url(&self, kind: &str) -> String {
        let mut u = format!(
            "{}/b/{}/o?uploadType={kind}",
            self.gcs.upload_base,
            crate::sign::encode_segment(self.bucket)
        );
        if self.create_only {
            u.push_str("&ifGenerationMatch=0");
        }
        u
    }

    /// The object resource; with `crc`, the store checks the data against it.
    fn resource_json(&self, crc: Option<u32>) -> serde_json::Value {
        let mut r = serde_json::json!({
            "name": self.name,
            "contentType": self.content_type,
            "metadata": self.metadata,
        });
        if let Some(crc) = crc {
            r["crc32c"] = crc_base64(crc).into();
        }
        r
    }

    /// One `uploadType=multipart` request, streaming the data; retried as a
    /// whole, also when what the store holds is not what was sent.
    async fn multipart(&self, data: Replay, size: u64, ctx: &TransferCtx) -> Result<Object> {
        // Data in memory: its CRC32C is known before the resource is sent, so
        // the store can refuse corrupted bytes instead of storing them. A
        // file is streamed: its CRC32C is known only once it has been sent.
        let known = match &data {
            Replay::Bytes(b) => Some(crc32c(b)),
            Replay::Path(_) => None,
        };
        ctx.throttle(&self.target, size).await?;
        let obj = ctx
            .retry(&self.target, |_| async {
                let crc = RunningCrc::default();
                let body = crc.over(data.open(size, &self.target).await?);
                let obj = match self.multipart_once(body, size, known).await {
                    Ok(obj) => obj,
                    Err(e) => {
                        return Err(match refused_checksum(&e) {
                            Some(msg) => Error::transient(
                                &self.target,
                                format!(
                                    "the store's checksum did not match what was sent \
                                     (corrupted in transit; nothing stored): {msg}"
                                ),
                            ),
                            None => e,
                        });
                    }
                };
                let sent = crc.get();
                match self.compare(&obj, sent, ctx.retry_policy()).await? {
                    None => Ok(obj),
                    Some(stored) => Err(Error::transient(
                        &self.target,
                        format!(
                            "the store's checksum did not match what was sent (corrupted in \
                             transit): sent {}, stored {}; generation {} was deleted",
                            crc_label(sent),
                            crc_label(stored),
                            obj.generation
                        ),
                    )),
                }
            })
            .await?;
        ctx.add_progress(size);
        Ok(obj)
    }

    /// Compare the CRC32C the store reports for `obj` with `sent`, the one
    /// of the bytes sent. On a mismatch the stored generation is deleted and
    /// the store's CRC32C returned. A resource without a CRC32C (composite
    /// objects; some emulators) cannot be checked and is accepted.
    async fn compare(&self, obj: &Object, sent: u32, policy: &RetryPolicy) -> Result<Option<u32>> {
        let Some(stored) = stored_crc(obj) else {
            tracing::debug!(target = %self.target, "the store reported no CRC32C; upload not verified");
            return Ok(None);
        };
        if stored == sent {
            return Ok(None);
        }
        tracing::warn!(
            target = %self.target,
            sent = %crc_label(sent),
            stored = %crc_label(stored),
            generation = obj.generation,
            "the stored object does not match what was sent; deleting it"
        );
        self.discard(obj, policy)
            .await
            .map_err(|e| Error::Backend {
                target: self.target.clone(),
                message: format!(
                    "the stored object ({}) does not match what was sent ({}) and generation {} \
                 could not be deleted",
                    crc_label(stored),
                    crc_label(sent),
                    obj.generation
                ),
                source: Some(Box::new(e)),
            })?;
        Ok(Some(stored))
    }

    /// A finished resumable upload: `obj` if the store holds what was sent
    /// (CRC32C `sent`), else the stored generation is deleted and the
    /// upload fails (the session is over; nothing can be resent).
    async fn verified(&self, obj: Object, sent: u32, ctx: &TransferCtx) -> Result<Object> {
        match self.compare(&obj, sent, ctx.retry_policy()).await? {
            None => Ok(obj),
            Some(stored) => Err(Error::ChecksumMismatch {
                target: self.target.clone(),
                expected: crc_label(sent),
                actual: crc_label(stored),
            }),
        }
    }

    /// Delete exactly the generation of `obj` (`ifGenerationMatch`: a newer
    /// write of the key is never removed). Spawned, so that a stop dropping
    /// the upload cannot leave the object behind half-way.
    async fn discard(&self, obj: &Object, policy: &RetryPolicy) -> Result<()> {
        let client = self.gcs.client.clone();
        let policy = policy.clone();
        let what = format!("{} generation {}", self.target, obj.generation);
        let req = DeleteObjectRequest {
            bucket: self.bucket.to_string(),
            object: self.name.clone(),
            if_generation_match: Some(obj.generation),
            ..Default::default()
        };
        let task = tokio::spawn(async move {
            let r = policy
                .retry(&what, |_| async {
                    client
                        .delete_object(&req)
                        .await
                        .map_err(|e| map_sdk(&what, e))
                })
                .await;
            match r {
                // Gone already, or replaced by a newer write: not visible.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::NotFound | ErrorKind::PreconditionFailed
                    ) =>
                {
                    Ok(())
                }
                r => r,
            }
        });
        task.await
            .map_err(|e| Error::backend(&self.target, "the delete task failed", e))?
    }

    async fn multipart_once(
        &self,
        data: ByteStream,
        size: u64,
        crc: Option<u32>,
    ) -> Result<Object> {
        let boundary = format!("xferkit-{:032x}", rand::random::<u128>());
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{}\r\n\
             --{boundary}\r\nContent-Type: {}\r\n\r\n",
            self.resource_json(crc),
            self.content_type
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let len = head.len() as u64 + size + tail.len() as u64;
        let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(data)
            .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
        let rb = self
            .gcs
            .http
            .post(self.upload_url("multipart"))
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.gcs.send(&self.target, rb).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        parse_object(&self.target, &body)
    }

    /// A resumable upload; `buf` holds bytes already taken from `stream`.
    async fn resumable(
        &self,
        stream: ByteStream,
        declared: Option<u64>,
        buf: BytesMut,
        ctx: &TransferCtx,
    ) -> Result<Object> {
        if self.create_only {
            // Fail before sending gigabytes: the session's ifGenerationMatch=0
            // is still what makes the create atomic (checked when it completes).
            if self.exists(ctx).await? {
                return Err(Error::already_exists(&self.target));
            }
        }
        let session_url = ctx
            .retry(&self.target, |_| self.start_session(declared))
            .await?;
        let session = self.gcs.client.get_resumable_upload(session_url);
        match self
            .send_chunks(&session, stream, declared, buf, 0, 0, None, ctx)
            .await
        {
            Ok((obj, sent)) => self.verified(obj, sent, ctx).await,
            Err(e) => {
                self.cancel_session(session).await;
                Err(e)
            }
        }
    }

    /// A resumable upload of the file at `path` with a journal under `dir`:
    /// a previous run's session is continued from the offset the service
    /// reports when the journal matches this file (fingerprint, chunk size,
    /// mode) and the bytes it recorded are unchanged.
    async fn resumable_file(
        &self,
        path: &Path,
        size: u64,
        dir: &Path,
        ctx: &TransferCtx,
    ) -> Result<Object> {
        if self.create_only && self.exists(ctx).await? {
            return Err(Error::already_exists(&self.target));
        }
        let fingerprint = SourceFingerprint::of(path).await?;
        let file = JournalFile::for_upload(dir, &self.target, path);
        let mut resumed: Option<(ResumableUploadClient, u64)> = None;
        if let Some(old) = file.load().await {
            let same = old.target == self.target
                && old.fingerprint == fingerprint
                && old.part_size == self.chunk_size
                && old.create_only == self.create_only;
            let prefix = old.parts.first().map_or((0, 0), |p| (p.len, p.crc32c));
            let prefix_unchanged =
                prefix.0 == 0 || crc32c_of_range(path, 0, prefix.0).await == Some(prefix.1);
            if same && prefix_unchanged {
                let session = self.gcs.client.get_resumable_upload(old.upload_id.clone());
                let status = ctx
                    .retry(&self.target, |_| async {
                        session
                            .status(Some(size))
                            .await
                            .map_err(|e| map_sdk(&self.target, e))
                    })
                    .await;
                match status {
                    Ok(UploadStatus::Ok(obj)) if u64::try_from(obj.size) == Ok(size) => {
                        // The crash came after the last chunk was stored:
                        // check it against the file (the journal has the
                        // prefix's CRC32C; only the rest is read).
                        file.remove().await;
                        let Some(sent) = crc32c_continue(path, prefix.0, size, prefix.1).await
                        else {
                            return Err(Error::backend(
                                path.display().to_string(),
                                "the source file shrank",
                                "cannot read the bytes already stored",
                            ));
                        };
                        let obj = self.verified(obj, sent, ctx).await?;
                        ctx.add_progress(size);
                        return Ok(obj);
                    }
                    Ok(UploadStatus::ResumeIncomplete(r)) if r.last_byte < size => {
                        resumed = Some((session, r.last_byte + 1));
                    }
                    Ok(UploadStatus::NotStarted) => resumed = Some((session, 0)),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(target = %self.target, error = %e.chain(), "the interrupted upload cannot be resumed; starting over");
                    }
                }
            } else {
                tracing::info!(target = %self.target, "the source changed since the interrupted upload; starting over");
            }
        }
        let (session, start) = match resumed {
            Some((session, start)) => {
                tracing::info!(
                    target = %self.target,
                    bytes = start,
                    "resuming an interrupted upload: {start} bytes already stored"
                );
                (session, start)
            }
            None => {
                let url = ctx
                    .retry(&self.target, |_| self.start_session(Some(size)))
                    .await?;
                (self.gcs.client.get_resumable_upload(url), 0)
            }
        };
        let mut journal = Journaled {
            file,
            data: UploadJournal::new(
                self.target.clone(),
                path.to_path_buf(),
                fingerprint,
                session.url().to_string(),
                self.chunk_size,
                self.create_only,
            ),
        };
        let crc = if start == 0 {
            Some(0)
        } else {
            crc32c_of_range(path, 0, start).await
        };
        let Some(crc) = crc else {
            return Err(Error::backend(
                path.display().to_string(),
                "the source file shrank",
                "cannot read the bytes already stored",
            ));
        };
        journal.persisted(start, crc).await;
        ctx.add_progress(start);
        let shown = path.display().to_string();
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::from_io(&shown, e))?;
        f.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| Error::from_io(&shown, e))?;
        let stream: ByteStream = Box::pin(
            tokio_util::io::ReaderStream::with_capacity(f, READ_BUF)
                .map_err(move |e| Error::from_io(&shown, e)),
        );
        let stream = exact_length(stream, size - start, self.target.clone());
        let r = self
            .send_chunks(
                &session,
                stream,
                Some(size),
                BytesMut::new(),
                start,
                crc,
                Some(&mut journal),
                ctx,
            )
            .await;
        // Paused: the journal and the session stay for resume().
        if r.is_err() && ctx.is_paused() {
            return r.map(|(obj, _)| obj);
        }
        // Completed, failed or stopped: nothing to resume.
        journal.file.remove().await;
        match r {
            Ok((obj, sent)) => self.verified(obj, sent, ctx).await,
            Err(e) => {
                self.cancel_session(session).await;
                Err(e)
            }
        }
    }

    async fn exists(&self, ctx: &TransferCtx) -> Result<bool> {
        let req = gcloud_storage::http::objects::get::GetObjectRequest {
            bucket: self.bucket.to_string(),
            object: self.name.clone(),
            ..Default::default()
        };
        let r = ctx
            .retry(&self.target, |_| async {
                self.gcs
                    .client
                    .get_object(&req)
                    .await
                    .map_err(|e| map_sdk(&self.target, e))
            })
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Start a session; returns its URI (a capability: never logged).
    async fn start_session(&self, declared: Option<u64>) -> Result<String> {
        let mut rb = self
            .gcs
            .http
            .post(self.upload_url("resumable"))
            .header("X-Upload-Content-Type", &self.content_type)
            .json(&self.resource_json(None));
        if let Some(n) = declared {
            rb = rb.header("X-Upload-Content-Length", n);
        }
        let resp = self.gcs.send(&self.target, rb).await?;
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read the (small) body so the connection can be reused.
        let _ = resp.bytes().await;
        loc.ok_or_else(|| {
            Error::backend(
                &self.target,
                "resumable upload started without a session URI",
                "no Location header",
            )
        })
    }

    /// Send `stream` (the object from byte `start` on, `buf` first; `crc`
    /// is the CRC32C of bytes `0..start`) in chunks, the last one with the
    /// CRC32C of the whole object for the store to check. With a journal,
    /// record how much the service has after each chunk. Returns the object
    /// and the CRC32C of everything sent.
    #[allow(clippy::too_many_arguments)]
    async fn send_chunks(
        &self,
        session: &ResumableUploadClient,
        mut stream: ByteStream,
        declared: Option<u64>,
        mut buf: BytesMut,
        start: u64,
        mut crc: u32,
        mut journal: Option<&mut Journaled>,
        ctx: &TransferCtx,
    ) -> Result<(Object, u32)> {
        let chunk = usize::try_from(self.chunk_size).unwrap_or(usize::MAX);
        let mut offset: u64 = start; // bytes the service has persisted
        let mut eof = false;
        let mut stalls = 0;
        loop {
            // Fill past one chunk (or to the end) to know whether this chunk is the last.
            while !eof && buf.len() <= chunk {
                match next(&mut stream, ctx, &self.target).await? {
                    Some(b) => buf.extend_from_slice(&b),
                    None => eof = true,
                }
            }
            let last = eof && buf.len() <= chunk;
            let n = if last { buf.len() } else { chunk };
            let end = offset + n as u64;
            if let Some(d) = declared
                && (end > d || (last && end != d))
            {
                return Err(length_mismatch(&self.target, d, end, last));
            }
            let data = buf.split_to(n).freeze();
            // The whole object's CRC32C, sent with the last chunk.
            let total = last.then(|| crc32c_append(crc, &data));
            ctx.throttle(&self.target, n as u64).await?;
            let what = format!("{} chunk at byte {offset}", self.target);
            let status = ctx
                .retry(&what, |attempt| {
                    self.send_chunk(session, &data, offset, total, declared, attempt)
                })
                .await
                .map_err(|e| match (total, refused_checksum(&e)) {
                    (Some(sent), Some(msg)) => Error::ChecksumMismatch {
                        target: self.target.clone(),
                        expected: crc_label(sent),
                        actual: format!("refused by the store: {msg}"),
                    },
                    _ => e,
                })?;
            let persisted = match status {
                UploadStatus::Ok(obj) => {
                    let Some(sent) = total else {
                        // Not all of it: delete what became visible.
                        let what = format!("after {end} bytes");
                        return Err(match self.discard(&obj, ctx.retry_policy()).await {
                            Ok(()) => Error::backend(
                                &self.target,
                                "the service completed the upload before its last chunk \
                                 (the truncated object was deleted)",
                                what,
                            ),
                            Err(e) => Error::backend(
                                &self.target,
                                format!(
                                    "the service completed the upload before its last chunk \
                                     ({what}); the truncated object could not be deleted"
                                ),
                                e,
                            ),
                        });
                    };
                    ctx.add_progress(end - offset);
                    return Ok((obj, sent));
                }
                UploadStatus::ResumeIncomplete(r) => r.last_byte + 1,
                UploadStatus::NotStarted => 0,
            };
            if persisted < offset || persisted > end {
                return Err(Error::backend(
                    &self.target,
                    "the service acknowledged an unexpected range",
                    format!("persisted {persisted} bytes after sending {offset}..{end}"),
                ));
            }
            ctx.add_progress(persisted - offset);
            let acked = usize::try_from(persisted - offset).unwrap_or(0);
            crc = crc32c_append(crc, &data[..acked]);
            if let Some(j) = journal.as_mut() {
                j.persisted(persisted, crc).await;
            }
            if persisted < end {
                // Resend what was not persisted, ahead of what is buffered.
                let acked = usize::try_from(persisted - offset).unwrap_or(0);
                let mut rest = BytesMut::from(&data[acked..]);
                rest.extend_from_slice(&buf);
                buf = rest;
            }
            if persisted == offset {
                stalls += 1;
                if stalls >= MAX_STALLS {
                    return Err(Error::transient(
                        &self.target,
                        format!("resumable upload made no progress at byte {offset}"),
                    ));
                }
            } else {
                stalls = 0;
            }
            offset = persisted;
        }
    }

    /// One try at the chunk `data` (bytes `offset..`; `total`: the end of
    /// the object, with its CRC32C). After a failed try the session may hold
    /// part of it: ask (`Content-Range: bytes */N`), then send only the rest.
    async fn send_chunk(
        &self,
        session: &ResumableUploadClient,
        data: &Bytes,
        offset: u64,
        total: Option<u32>,
        declared: Option<u64>,
        attempt: u32,
    ) -> Result<UploadStatus> {
        let map = |e| map_sdk(&self.target, e);
        let last = total.is_some();
        let end = offset + data.len() as u64;
        let range_from = |start: u64| {
            if start == end {
                ChunkSize::new(start, start, Some(start))
            } else {
                ChunkSize::new(start, end - 1, last.then_some(end))
            }
        };
        if attempt > 1 && !data.is_empty() {
            match session.status(declared).await.map_err(map)? {
                UploadStatus::Ok(obj) => return Ok(UploadStatus::Ok(obj)),
                UploadStatus::ResumeIncomplete(r) if r.last_byte + 1 >= end => {
                    return Ok(UploadStatus::ResumeIncomplete(r));
                }
                UploadStatus::ResumeIncomplete(r) if r.last_byte + 1 > offset => {
                    let have = r.last_byte + 1;
                    tracing::debug!(target = %self.target, offset, have, "resending the rest of a chunk");
                    let skip = usize::try_from(have - offset).unwrap_or(0);
                    return self
                        .put_chunk(session, data.slice(skip..), &range_from(have), total)
                        .await;
                }
                // Nothing of this chunk arrived: send it all again.
                _ => {}
            }
        }
        self.put_chunk(session, data.clone(), &range_from(offset), total)
            .await
    }

    /// `PUT` `data` (`range`) to the session; with `crc` (the last chunk),
    /// `X-Goog-Hash: crc32c=...` of the whole object, which GCS checks
    /// before it creates the object. (gcloud-storage's chunk upload takes
    /// no extra header.) The session URI is not authenticated and never
    /// appears in errors.
    async fn put_chunk(
        &self,
        session: &ResumableUploadClient,
        data: Bytes,
        range: &ChunkSize,
        crc: Option<u32>,
    ) -> Result<UploadStatus> {
        let mut rb = self
            .gcs
            .http
            .put(session.url())
            .header(reqwest::header::CONTENT_RANGE, range.to_string())
            .header(reqwest::header::CONTENT_LENGTH, range.size())
            .body(data);
        if let Some(crc) = crc {
            rb = rb.header("X-Goog-Hash", format!("crc32c={}", crc_base64(crc)));
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        if resp.status().as_u16() == 308 {
            let range = resp
                .headers()
                .get(reqwest::header::RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            // Read the (empty) body so the connection can be reused.
            let _ = resp.bytes().await;
            return match range {
                None => Ok(UploadStatus::NotStarted),
                Some(r) => parse_range(&r)
                    .map(UploadStatus::ResumeIncomplete)
                    .ok_or_else(|| {
                        Error::backend(
                            &self.target,
                            "the service acknowledged a chunk with an unreadable Range",
                            r,
                        )
                    }),
            };
        }
        let resp = check(&self.target, resp).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        parse_object(&self.target, &body).map(UploadStatus::Ok)
    }

    /// Best effort: log and carry on if the session cannot be cancelled.
    async fn cancel_session(&self, session: ResumableUploadClient) {
        match tokio::time::timeout(CANCEL_TIMEOUT, session.cancel()).await {
            Ok(Ok(())) => tracing::debug!(target = %self.target, "resumable upload cancelled"),
            Ok(Err(e)) => {
                let e = map_sdk(&self.target, e);
                tracing::warn!(target = %self.target, error = %e.chain(), "could not cancel the resumable upload")
            }
            Err(_) => {
                tracing::warn!(target = %self.target, "cancelling the resumable upload timed out")
            }
        }
    }
}

/// `bytes=A-B` of a `308` answer.
fn parse_range(r: &str) -> Option<UploadedRange> {
    let (a, b) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    Some(UploadedRange {
        first_byte: a.trim().parse().ok()?,
        last_byte: b.trim().parse().ok()?,
    })
}

/// The CRC32C of bytes `0..end` of `path`, given `crc`, that of `0..from`:
/// only `from..end` is read. `None` if the file is shorter.
async fn crc32c_continue(path: &Path, from: u64, end: u64, crc: u32) -> Option<u32> {
    let mut f = tokio::fs::File::open(path).await.ok()?;
    f.seek(std::io::SeekFrom::Start(from)).await.ok()?;
    let mut crc = crc;
    let mut left = end.checked_sub(from)?;
    let mut buf = vec![0u8; READ_BUF];
    while left > 0 {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = f.read(&mut buf[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        crc = crc32c_append(crc, &buf[..n]);
        left -= n as u64;
    }
    Some(crc)
}

/// The next piece of `stream`, or `Cancelled`.
async fn next(stream: &mut ByteStream, ctx: &TransferCtx, target: &str) -> Result<Option<Bytes>> {
    ctx.cancellable(target, async { stream.next().await.transpose() })
        .await
}

fn length_mismatch(target: &str, declared: u64, got: u64, ended: bool) -> Error {
    let what = if ended { "only" } else { "more than" };
    Error::backend(
        target,
        "the upload source changed size",
        format!("declared {declared} bytes, produced {what} {got}"),
    )
}

/// Fail the stream (rather than send a short or long body) if it does not
/// produce exactly `size` bytes.
fn exact_length(stream: ByteStream, size: u64, target: String) -> ByteStream {
    let mut seen: u64 = 0;
    let mut ended = false;
    Box::pin(
        stream
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .filter_map(move |item| {
                let out = match item {
                    Some(Ok(b)) => {
                        seen += b.len() as u64;
                        if seen > size {
                            Some(Err(length_mismatch(&target, size, seen, false)))
                        } else {
                            Some(Ok(b))
                        }
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None if !ended && seen != size => {
                        ended = true;
                        Some(Err(length_mismatch(&target, size, seen, true)))
                    }
                    None => None,
                };
                futures::future::ready(out)
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(s: ByteStream) -> Result<u64> {
        s.try_fold(0u64, |n, b| futures::future::ready(Ok(n + b.len() as u64)))
            .await
    }

    fn chunks(sizes: &[usize]) -> ByteStream {
        let v: Vec<Result<Bytes>> = sizes
            .iter()
            .map(|n| Ok(Bytes::from(vec![0u8; *n])))
            .collect();
        Box::pin(futures::stream::iter(v))
    }

    #[test]
    fn crc32c_values_read_and_write_as_gcs_spells_them() {
        // The CRC32C of "hello world" as GCS reports it (client.rs tests use the same resource).
        let crc = crc32c(b"hello world");
        assert_eq!(crc_base64(crc), "yZRlqg==");
        assert_eq!(crc_label(crc), "crc32c:c99465aa");
        let mut o = Object {
            crc32c: Some("yZRlqg==".into()),
            ..Default::default()
        };
        assert_eq!(stored_crc(&o), Some(crc));
        o.crc32c = Some("not base64!".into());
        assert_eq!(stored_crc(&o), None);
        o.crc32c = Some("AAAA".into()); // 3 bytes
        assert_eq!(stored_crc(&o), None);
        o.crc32c = None;
        assert_eq!(stored_crc(&o), None);
    }

    #[test]
    fn ranges_of_308_answers_parse_and_bad_ones_do_not() {
        let r = parse_range("bytes=0-262143").unwrap();
        assert_eq!((r.first_byte, r.last_byte), (0, 262_143));
        assert!(parse_range("0-1").is_none());
        assert!(parse_range("bytes=a-1").is_none());
        assert!(parse_range("bytes=5").is_none());
    }

    #[test]
    fn only_a_400_about_crc32c_is_a_checksum_refusal() {
        let e =
            |status, msg: &str| crate::client::status_error("gs://b/k", status, msg.to_string());
        let gcs = "Provided CRC32C \"AAAAAA==\" doesn't match calculated CRC32C \"2HvlZg==\".";
        assert_eq!(refused_checksum(&e(400, gcs)), Some(gcs));
        assert_eq!(refused_checksum(&e(400, "Invalid argument.")), None);
        assert_eq!(refused_checksum(&e(503, gcs)), None);
    }

    #[tokio::test]
    async fn exact_length_passes_exact_streams_and_fails_others() {
        assert_eq!(
            drain(exact_length(chunks(&[3, 4]), 7, "t".into()))
                .await
                .unwrap(),
            7
        );
        let short = drain(exact_length(chunks(&[3]), 7, "t".into()))
            .await
            .unwrap_err();
        assert!(short.chain().contains("only 3"), "{}", short.chain());
        let long = drain(exact_length(chunks(&[5, 5]), 7, "t".into()))
            .await
            .unwrap_err();
        assert!(long.chain().contains("more than 10"), "{}", long.chain());
    }
}
