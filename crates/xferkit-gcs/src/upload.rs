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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use reqwest_middleware::reqwest;
use tokio::io::AsyncSeekExt;
use xferkit_core::journal::{
    JournalFile, JournalPart, SourceFingerprint, UploadJournal, crc32c_of_range,
};
use xferkit_core::{ByteStream, Error, ErrorKind, Result, TransferCtx, UploadSource};

use crate::client::{Gcs, map_sdk, parse_object};

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

    fn resource_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "contentType": self.content_type,
            "metadata": self.metadata,
        })
    }

    /// One `uploadType=multipart` request, streaming the data; retried as a whole.
    async fn multipart(&self, data: Replay, size: u64, ctx: &TransferCtx) -> Result<Object> {
        let obj = ctx
            .retry(&self.target, |_| async {
                let body = data.open(size, &self.target).await?;
                self.multipart_once(body, size).await
            })
            .await?;
        ctx.add_progress(size);
        Ok(obj)
    }

    async fn multipart_once(&self, data: ByteStream, size: u64) -> Result<Object> {
        let boundary = format!("xferkit-{:032x}", rand::random::<u128>());
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{}\r\n\
             --{boundary}\r\nContent-Type: {}\r\n\r\n",
            self.resource_json(),
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
            .send_chunks(&session, stream, declared, buf, 0, None, ctx)
            .await
        {
            Ok(obj) => Ok(obj),
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
            let prefix_unchanged = match old.parts.first() {
                Some(p) => crc32c_of_range(path, 0, p.len).await == Some(p.crc32c),
                None => true,
            };
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
                        // The crash came after the last chunk was stored.
                        file.remove().await;
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
                Some((&mut journal, crc)),
                ctx,
            )
            .await;
        // Completed, failed or stopped: nothing to resume.
        journal.file.remove().await;
        if r.is_err() {
            self.cancel_session(session).await;
        }
        r
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
            .json(&self.resource_json());
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

    /// Send `stream` (the object from byte `start` on, `buf` first) in
    /// chunks. With a journal (and the CRC32C of bytes `0..start`), record
    /// how much the service has after each chunk.
    #[allow(clippy::too_many_arguments)]
    async fn send_chunks(
        &self,
        session: &ResumableUploadClient,
        mut stream: ByteStream,
        declared: Option<u64>,
        mut buf: BytesMut,
        start: u64,
        mut journal: Option<(&mut Journaled, u32)>,
        ctx: &TransferCtx,
    ) -> Result<Object> {
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
            let what = format!("{} chunk at byte {offset}", self.target);
            let status = ctx
                .retry(&what, |attempt| {
                    self.send_chunk(session, &data, offset, last, declared, attempt)
                })
                .await?;
            let persisted = match status {
                UploadStatus::Ok(obj) => {
                    if !last {
                        return Err(Error::backend(
                            &self.target,
                            "the service completed the upload before its last chunk",
                            format!("after {end} bytes"),
                        ));
                    }
                    ctx.add_progress(end - offset);
                    return Ok(obj);
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
            if let Some((j, crc)) = journal.as_mut() {
                let acked = usize::try_from(persisted - offset).unwrap_or(0);
                *crc = xferkit_core::journal::crc32c_append(*crc, &data[..acked]);
                j.persisted(persisted, *crc).await;
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

    /// One try at the chunk `data` (bytes `offset..`; `last`: the end of
    /// the object). After a failed try the session may hold part of it: ask
    /// (`Content-Range: bytes */N`), then send only the rest.
    async fn send_chunk(
        &self,
        session: &ResumableUploadClient,
        data: &Bytes,
        offset: u64,
        last: bool,
        declared: Option<u64>,
        attempt: u32,
    ) -> Result<UploadStatus> {
        let map = |e| map_sdk(&self.target, e);
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
                    return session
                        .upload_multiple_chunk(data.slice(skip..), &range_from(have))
                        .await
                        .map_err(map);
                }
                // Nothing of this chunk arrived: send it all again.
                _ => {}
            }
        }
        session
            .upload_multiple_chunk(data.clone(), &range_from(offset))
            .await
            .map_err(map)
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
