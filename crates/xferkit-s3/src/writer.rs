//! Uploads: one `PutObject` up to `multipart_threshold`, a multipart upload
//! with bounded concurrent parts above it.
//!
//! Every request goes through the transfer's retry policy on its own
//! (`TransferCtx::retry`): a failed part is sent again, never the file. A
//! multipart upload that fails or is stopped is aborted.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream as SdkStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinSet;
use xferkit_core::journal::{
    JournalFile, JournalPart, SourceFingerprint, UploadJournal, crc32c_of_range,
};
use xferkit_core::{
    ByteStream, Error, ErrorKind, PutOptions, RemoteObject, Result, RetryPolicy, TransferCtx,
    UploadSource,
};

use crate::config::{MAX_PART_SIZE, MAX_PARTS};
use crate::core::{Core, Mode, encode_metadata, full_object_crc32c, map_sdk, unquote};

const MIB: u64 = 1024 * 1024;

/// Longest time spent aborting a failed or stopped multipart upload. The
/// transfer manager reports a stopped transfer `Cancelled` at once and lets
/// this run to its end in the background (`TransferManager::settled`).
const ABORT_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// One upload to one key.
pub(crate) struct Upload<'a> {
    core: &'a Arc<Core>,
    key: &'a str,
    full: String,
    target: String,
    content_type: String,
    /// As sent (keys lower-cased, values RFC 2047 encoded where needed).
    metadata: Option<HashMap<String, String>>,
    /// As given, for the returned record.
    user_metadata: BTreeMap<String, String>,
    mode: Mode,
    /// Where multipart uploads of files keep their journal (resume after a crash).
    state_dir: Option<PathBuf>,
}

/// The journal of a multipart upload of a file, kept up to date as parts
/// are acknowledged.
struct Journaled {
    file: JournalFile,
    data: UploadJournal,
}

impl Journaled {
    async fn record(&mut self, part: JournalPart) {
        self.data.parts.push(part);
        if let Err(e) = self.file.save(&self.data).await {
            tracing::warn!(path = %self.file.path().display(), error = %e.chain(), "could not update the upload journal");
        }
    }
}

/// The body of a single `PutObject`, re-opened for each try.
/// Files up to this size are read into memory for a single PUT.
const SMALL_IN_MEMORY: u64 = 1024 * 1024;

enum Body {
    Path(PathBuf),
    Bytes(Bytes),
}

/// Where the bytes of one part come from.
enum PartData {
    /// Already in memory (stream uploads).
    Bytes(Bytes),
    /// `len` bytes at `offset` of a file, read by the part's own task.
    File {
        path: Arc<Path>,
        offset: u64,
        len: u64,
    },
}

/// The parts of a multipart upload, produced in order.
enum Parts {
    File {
        path: Arc<Path>,
        size: u64,
        part_size: u64,
        offset: u64,
    },
    Stream {
        stream: ByteStream,
        buf: BytesMut,
        part_size: usize,
        eof: bool,
    },
}

impl Parts {
    /// The next part, or `None` once all bytes are handed out (and again after).
    async fn next(&mut self) -> Result<Option<PartData>> {
        match self {
            Parts::File {
                path,
                size,
                part_size,
                offset,
            } => {
                if *offset >= *size {
                    return Ok(None);
                }
                let len = (*size - *offset).min(*part_size);
                let part = PartData::File {
                    path: path.clone(),
                    offset: *offset,
                    len,
                };
                *offset += len;
                Ok(Some(part))
            }
            Parts::Stream {
                stream,
                buf,
                part_size,
                eof,
            } => {
                while !*eof && buf.len() < *part_size {
                    match stream.next().await {
                        Some(chunk) => buf.extend_from_slice(&chunk?),
                        None => *eof = true,
                    }
                }
                if buf.len() >= *part_size {
                    Ok(Some(PartData::Bytes(buf.split_to(*part_size).freeze())))
                } else if !buf.is_empty() {
                    Ok(Some(PartData::Bytes(buf.split().freeze())))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

impl<'a> Upload<'a> {
    pub fn new(core: &'a Arc<Core>, key: &'a str, opts: &PutOptions) -> Result<Self> {
        let full = core.full(key);
        let target = core.url_full(&full);
        let metadata = encode_metadata(&target, &opts.metadata)?;
        Ok(Upload {
            core,
            key,
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
            state_dir: None,
        })
    }

    /// Journal multipart uploads of files under `dir`, so that the same
    /// upload run again after a crash sends only the missing parts.
    pub fn with_state_dir(mut self, dir: Option<&Path>) -> Self {
        self.state_dir = dir.map(Path::to_path_buf);
        self
    }

    pub async fn run(&self, source: UploadSource, ctx: &TransferCtx) -> Result<RemoteObject> {
        if ctx.is_discarding() {
            // A paused upload that is stopped: abort what it kept.
            if let (UploadSource::Path(path), Some(dir)) = (&source, &self.state_dir) {
                let file = JournalFile::for_upload(dir, &self.target, path);
                let aborted = match file.load().await {
                    Some(old) if !old.upload_id.is_empty() => {
                        self.abort(&old.upload_id, ctx.retry_policy()).await
                    }
                    _ => true,
                };
                if aborted {
                    file.remove().await;
                }
            }
            return Err(Error::cancelled(&self.target));
        }
        ctx.check(&self.target)?;
        let threshold = self.core.multipart_threshold;
        match source {
            UploadSource::Path(path) => {
                let size = tokio::fs::metadata(&path)
                    .await
                    .map_err(|e| Error::from_io(path.display().to_string(), e))?
                    .len();
                if size <= SMALL_IN_MEMORY {
                    // Small: one read, then a body the SDK checksums and
                    // signs up front (no aws-chunked framing, no file stream
                    // to reopen on a retry). Many small files go faster.
                    let data = tokio::fs::read(&path)
                        .await
                        .map_err(|e| Error::from_io(path.display().to_string(), e))?;
                    let len = data.len() as u64;
                    self.put_single(Body::Bytes(Bytes::from(data)), len, ctx)
                        .await
                } else if size <= threshold {
                    self.put_single(Body::Path(path), size, ctx).await
                } else {
                    let parts = Parts::File {
                        path: Arc::from(path.as_path()),
                        size,
                        part_size: self.part_size_for(Some(size)),
                        offset: 0,
                    };
                    self.put_multipart(parts, Some(size), ctx).await
                }
            }
            UploadSource::Stream {
                stream,
                size: Some(size),
            } if size > threshold => {
                let parts = Parts::Stream {
                    stream,
                    buf: BytesMut::new(),
                    part_size: self.stream_part_size(Some(size))?,
                    eof: false,
                };
                self.put_multipart(parts, Some(size), ctx).await
            }
            UploadSource::Stream { mut stream, size } => {
                // Buffer up to the threshold: a stream that ends by then is one PUT.
                let mut buf = BytesMut::new();
                let eof = ctx
                    .cancellable(&self.target, async {
                        while buf.len() as u64 <= threshold {
                            match stream.next().await {
                                Some(chunk) => buf.extend_from_slice(&chunk?),
                                None => return Ok(true),
                            }
                        }
                        Ok(false)
                    })
                    .await?;
                if eof {
                    let len = buf.len() as u64;
                    self.check_size(size, len)?;
                    self.put_single(Body::Bytes(buf.freeze()), len, ctx).await
                } else {
                    let parts = Parts::Stream {
                        stream,
                        buf,
                        part_size: self.stream_part_size(size)?,
                        eof: false,
                    };
                    self.put_multipart(parts, size, ctx).await
                }
            }
        }
    }

    /// The configured part size, raised (to whole MiB) when `size` would
    /// otherwise need more than 10 000 parts.
    fn part_size_for(&self, size: Option<u64>) -> u64 {
        let needed = size.unwrap_or(0).div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.core.part_size.max(needed).min(MAX_PART_SIZE)
    }

    fn stream_part_size(&self, size: Option<u64>) -> Result<usize> {
        usize::try_from(self.part_size_for(size)).map_err(|_| {
            Error::invalid_config(format!(
                "part_size {} does not fit in memory on this platform",
                self.core.part_size
            ))
        })
    }

    fn check_size(&self, declared: Option<u64>, actual: u64) -> Result<()> {
        match declared {
            Some(d) if d != actual => Err(Error::Backend {
                target: self.target.clone(),
                message: format!("upload source gave {actual} bytes but declared {d}"),
                source: None,
            }),
            _ => Ok(()),
        }
    }

    fn record(&self, size: u64, etag: Option<&str>, version: Option<&str>) -> RemoteObject {
        let mut o = RemoteObject::new(self.target.clone(), self.key, size);
        o.etag = etag.map(unquote);
        o.version = version.map(str::to_string);
        o.content_type = Some(self.content_type.clone());
        o.metadata = self.user_metadata.clone();
        o
    }

    async fn put_single(&self, body: Body, size: u64, ctx: &TransferCtx) -> Result<RemoteObject> {
        ctx.throttle(&self.target, size).await?;
        // Dropping an unfinished PUT leaves nothing behind, so a try may be
        // cancelled (ctx.retry does) and repeated.
        let out = ctx
            .retry(&self.target, |_| async {
                let body = match &body {
                    Body::Bytes(b) => SdkStream::from(b.clone()),
                    Body::Path(path) => SdkStream::read_from()
                        .path(path)
                        .length(Length::Exact(size))
                        .build()
                        .await
                        .map_err(|e| {
                            Error::backend(path.display().to_string(), "cannot read file", e)
                        })?,
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
                    // Computed while the body streams, sent as a trailer,
                    // verified by the store and kept as the object's
                    // full-object CRC32C, which downloads check.
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .body(body);
                if self.mode == Mode::CreateOnly {
                    req = req.if_none_match("*");
                }
                req.send()
                    .await
                    .map_err(|e| map_sdk("PutObject", &self.target, self.mode, e))
            })
            .await?;
        ctx.add_progress(size);
        Ok(self.record(size, out.e_tag(), out.version_id()))
    }

    async fn put_multipart(
        &self,
        parts: Parts,
        size: Option<u64>,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let client = &self.core.client;
        if self.mode == Mode::CreateOnly {
            // Fail before sending gigabytes. Only a hit counts: any failure
            // (missing key, or no read permission) goes on, and the
            // conditional complete below still makes the create atomic.
            let head = ctx
                .retry(&self.target, |_| async {
                    client
                        .head_object()
                        .bucket(&self.core.bucket)
                        .key(&self.full)
                        .send()
                        .await
                        .map_err(|e| map_sdk("HeadObject", &self.target, Mode::Plain, e))
                })
                .await;
            if head.is_ok() {
                return Err(Error::already_exists(self.target.clone()));
            }
        }
        let file = match &parts {
            Parts::File {
                path, part_size, ..
            } => Some((path.clone(), *part_size)),
            Parts::Stream { .. } => None,
        };
        let mut journal = match file {
            Some((path, part_size)) => self.resumable(&path, part_size, ctx).await,
            None => None,
        };
        let resumed = journal
            .as_ref()
            .filter(|j| !j.data.upload_id.is_empty())
            .map(|j| j.data.upload_id.clone());
        let mut upload_id = match resumed.clone() {
            Some(id) => id,
            None => self.create_journaled(&mut journal, ctx).await?,
        };
        // A file's parts can be read again, should the resumed upload turn
        // out to be gone.
        let again = match &parts {
            Parts::File {
                path,
                size,
                part_size,
                ..
            } => Some(Parts::File {
                path: path.clone(),
                size: *size,
                part_size: *part_size,
                offset: 0,
            }),
            Parts::Stream { .. } => None,
        };
        let mut r = self
            .parts_and_complete(&upload_id, parts, size, journal.as_mut(), ctx)
            .await;
        // The store no longer knows the resumed upload (completed or aborted
        // after the journal was written, or expired): S3 says NoSuchUpload,
        // s3s-fs AccessDenied. Start a fresh one, once, and say so.
        if let (Some(old), Some(parts), Err(e)) = (&resumed, again, &r)
            && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
            && !ctx.is_cancelled()
        {
            tracing::info!(target = %self.target, error = %e.chain(), "the interrupted upload is gone from the store; starting over");
            self.abort(old, ctx.retry_policy()).await;
            upload_id = self.create_journaled(&mut journal, ctx).await?;
            r = self
                .parts_and_complete(&upload_id, parts, size, journal.as_mut(), ctx)
                .await;
        }
        // Paused with a journal: the upload and its parts stay for resume().
        if r.is_err() && ctx.is_paused() && journal.is_some() {
            return r;
        }
        if r.is_err() && !self.abort(&upload_id, ctx.retry_policy()).await {
            // The upload is still there: its journal stays, so the next run
            // of the same upload finds it (and resumes or aborts it), and
            // `xfer gc` lists it.
            return r;
        }
        // Completed, failed or stopped: nothing to resume.
        if let Some(j) = &journal {
            j.file.remove().await;
        }
        r
    }

    /// CreateMultipartUpload, recorded in `journal` (with no parts yet);
    /// a journal that cannot be written is dropped (no resume after a crash).
    async fn create_journaled(
        &self,
        journal: &mut Option<Journaled>,
        ctx: &TransferCtx,
    ) -> Result<String> {
        let id = self.create(ctx).await?;
        if let Some(j) = journal.as_mut() {
            j.data.upload_id = id.clone();
            j.data.parts.clear();
            if let Err(e) = j.file.save(&j.data).await {
                tracing::warn!(error = %e.chain(), "upload journal not written; this upload cannot resume after a crash");
                *journal = None;
            }
        }
        Ok(id)
    }

    /// For a file and a state directory: the journal to keep, resuming a
    /// previous run's upload when its journal matches this file (same
    /// fingerprint, part size and mode) and the store still has that upload.
    /// Then `upload_id` is set and `parts` holds the parts to reuse (still
    /// listed by the store with the same ETag, bytes unchanged); otherwise
    /// `upload_id` is empty.
    async fn resumable(&self, path: &Path, part_size: u64, ctx: &TransferCtx) -> Option<Journaled> {
        let dir = self.state_dir.as_ref()?;
        let fingerprint = match SourceFingerprint::of(path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e.chain(), "no upload journal: cannot fingerprint the source");
                return None;
            }
        };
        let file = JournalFile::for_upload(dir, &self.target, path);
        let create_only = self.mode == Mode::CreateOnly;
        let fresh = UploadJournal::new(
            self.target.clone(),
            path.to_path_buf(),
            fingerprint.clone(),
            String::new(),
            part_size,
            create_only,
        );
        let Some(old) = file.load().await else {
            return Some(Journaled { file, data: fresh });
        };
        let same = old.target == self.target
            && old.fingerprint == fingerprint
            && old.part_size == part_size
            && old.create_only == create_only;
        if !same {
            tracing::info!(target = %self.target, "the source changed since the interrupted upload; starting over");
            self.abort(&old.upload_id, ctx.retry_policy()).await;
            return Some(Journaled { file, data: fresh });
        }
        let listed = match self.list_parts(&old.upload_id, ctx).await {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(target = %self.target, error = %e.chain(), "the interrupted upload cannot be resumed; starting over");
                // Gone already, or unreadable (moto's ListParts): abort it
                // so that it is not left pending either way.
                self.abort(&old.upload_id, ctx.retry_policy()).await;
                return Some(Journaled { file, data: fresh });
            }
        };
        if listed.is_empty() && !old.parts.is_empty() {
            // None of the recorded parts is listed: the upload is gone (a
            // crash after its complete took effect, or an abort), or the
            // store answers an unknown upload with an empty list (s3s-fs).
            tracing::info!(target = %self.target, "the interrupted upload is gone from the store; starting over");
            self.abort(&old.upload_id, ctx.retry_policy()).await;
            return Some(Journaled { file, data: fresh });
        }
        let mut keep = Vec::new();
        for p in old.parts {
            // The store must still have the part, at that size and (when
            // it lists ETags; s3s-fs does not) with that ETag. Complete
            // checks the ETags again.
            let listed_same = listed.get(&p.number).is_some_and(|(etag, len)| {
                *len == p.len
                    && etag
                        .as_deref()
                        .is_none_or(|e| unquote(e) == unquote(&p.etag))
            });
            if listed_same && crc32c_of_range(path, p.offset, p.len).await == Some(p.crc32c) {
                keep.push(p);
            }
        }
        let stored: u64 = keep.iter().map(|p| p.len).sum();
        tracing::info!(
            target = %self.target,
            parts = keep.len(),
            bytes = stored,
            "resuming an interrupted upload: {stored} bytes already stored"
        );
        let mut data = fresh;
        data.upload_id = old.upload_id;
        data.parts = keep;
        Some(Journaled { file, data })
    }

    /// The parts the store has for `upload_id`: number → (ETag if listed, size).
    async fn list_parts(
        &self,
        upload_id: &str,
        ctx: &TransferCtx,
    ) -> Result<HashMap<u32, (Option<String>, u64)>> {
        let mut out = HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let m = marker.take();
            let page = ctx
                .retry(&self.target, |_| {
                    let req = self
                        .core
                        .client
                        .list_parts()
                        .bucket(&self.core.bucket)
                        .key(&self.full)
                        .upload_id(upload_id)
                        .set_part_number_marker(m.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| map_sdk("ListParts", &self.target, Mode::Plain, e))
                    }
                })
                .await?;
            for p in page.parts() {
                if let Some(n) = p.part_number() {
                    let n = u32::try_from(n).unwrap_or(0);
                    let size = u64::try_from(p.size().unwrap_or(0)).unwrap_or(0);
                    out.insert(n, (p.e_tag().map(str::to_string), size));
                }
            }
            marker = page.next_part_number_marker().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// CreateMultipartUpload; the new upload id.
    async fn create(&self, ctx: &TransferCtx) -> Result<String> {
        let client = &self.core.client;
        // Not raced against cancellation (the policy's retry, not the
        // transfer's): an upload created behind our back could not be
        // aborted. The request is short; cancellation is checked right after.
        let created = ctx
            .retry_policy()
            .retry(&self.target, |_| async {
                client
                    .create_multipart_upload()
                    .bucket(&self.core.bucket)
                    .key(&self.full)
                    .content_type(&self.content_type)
                    .set_metadata(self.metadata.clone())
                    // Each part carries its CRC32C; the complete carries
                    // the whole object's, combined from them (no second read).
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_type(ChecksumType::FullObject)
                    .send()
                    .await
                    .map_err(|e| map_sdk("CreateMultipartUpload", &self.target, Mode::Plain, e))
            })
            .await?;
        created
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::Backend {
                target: self.target.clone(),
                message: "CreateMultipartUpload returned no upload id".into(),
                source: None,
            })
    }

    /// Abort the multipart upload, retrying transient failures for at most
    /// [`ABORT_BUDGET`]; one that still fails is left to
    /// `list_pending_uploads` (and `xfer gc`), and logged. Whether it is gone.
    async fn abort(&self, upload_id: &str, policy: &RetryPolicy) -> bool {
        let policy = policy
            .clone()
            .with_max_elapsed(ABORT_BUDGET.min(policy.max_elapsed))
            .with_attempt_timeout(ABORT_BUDGET.min(policy.attempt_timeout));
        let r = policy
            .retry(&self.target, |_| async {
                self.core
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.core.bucket)
                    .key(&self.full)
                    .upload_id(upload_id)
                    .send()
                    .await
                    .map_err(|e| map_sdk("AbortMultipartUpload", &self.target, Mode::Plain, e))
            })
            .await;
        match r {
            Ok(_) => {
                tracing::debug!(target = %self.target, upload_id, "multipart upload aborted");
                true
            }
            // Already gone (completed or aborted meanwhile).
            Err(e) if e.kind() == xferkit_core::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(target = %self.target, upload_id, error = %e.chain(), "could not abort multipart upload; `xfer gc` lists it, and the next run of this upload resumes or aborts it");
                false
            }
        }
    }

    async fn parts_and_complete(
        &self,
        upload_id: &str,
        mut parts: Parts,
        size: Option<u64>,
        mut journal: Option<&mut Journaled>,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        ctx.check(&self.target)?;
        let mut tasks: JoinSet<Result<PartDone>> = JoinSet::new();
        // (number, etag, crc32c, len) of every stored part.
        let mut done: Vec<(i32, String, u32, u64)> = Vec::new();
        let mut total = 0u64;
        // Parts a previous run stored: counted, not sent.
        let mut skip = std::collections::HashSet::new();
        for p in journal.iter().flat_map(|j| j.data.parts.iter()) {
            skip.insert(p.number);
            done.push((
                i32::try_from(p.number).unwrap_or(0),
                p.etag.clone(),
                p.crc32c,
                p.len,
            ));
            ctx.add_progress(p.len);
            total += p.len;
        }
        let sent = ctx
            .cancellable(&self.target, async {
                let mut next_number: u64 = 1;
                let mut exhausted = false;
                loop {
                    while !exhausted && tasks.len() < self.core.concurrency {
                        match parts.next().await? {
                            Some(data) => {
                                if next_number > MAX_PARTS {
                                    return Err(Error::Backend {
                                        target: self.target.clone(),
                                        message: format!(
                                            "upload needs more than {MAX_PARTS} parts of {} bytes; raise part_size",
                                            self.core.part_size
                                        ),
                                        source: None,
                                    });
                                }
                                // `next_number` <= 10 000, so it fits.
                                let number = next_number as i32;
                                next_number += 1;
                                if skip.contains(&(number as u32)) {
                                    continue;
                                }
                                tasks.spawn(upload_part(
                                    self.core.clone(),
                                    self.full.clone(),
                                    self.target.clone(),
                                    upload_id.to_string(),
                                    number,
                                    data,
                                    ctx.clone(),
                                ));
                            }
                            None => exhausted = true,
                        }
                    }
                    let Some(joined) = tasks.join_next().await else {
                        return Ok(());
                    };
                    let part = joined.map_err(|e| Error::Backend {
                        target: self.target.clone(),
                        message: "part upload task failed".into(),
                        source: Some(e.into()),
                    })??;
                    ctx.add_progress(part.len);
                    total += part.len;
                    if let Some(j) = journal.as_deref_mut() {
                        j.record(JournalPart::new(
                            part.number as u32,
                            part.offset,
                            part.len,
                            part.etag.clone(),
                            part.crc32c,
                        ))
                        .await;
                    }
                    done.push((part.number, part.etag, part.crc32c, part.len));
                }
            })
            .await;
        if let Err(e) = sent {
            // Stop the parts still in flight before the caller aborts the upload.
            tasks.shutdown().await;
            return Err(e);
        }
        self.check_size(size, total)?;
        ctx.check(&self.target)?;
        done.sort_by_key(|(n, ..)| *n);
        let part_count = done.len();
        let whole = done.iter().fold(0u32, |crc, (_, _, part, len)| {
            crc32c::crc32c_combine(crc, *part, usize::try_from(*len).unwrap_or(usize::MAX))
        });
        let whole = crc32c_b64(whole);
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                done.into_iter()
                    .map(|(n, etag, crc, _)| {
                        CompletedPart::builder()
                            .part_number(n)
                            .e_tag(etag)
                            .checksum_crc32_c(crc32c_b64(crc))
                            .build()
                    })
                    .collect(),
            ))
            .build();
        // Not cancellable (the policy's retry, not the transfer's): a
        // complete dropped mid-flight may still take effect, and the caller
        // would be told the object does not exist.
        let r = ctx
            .retry_policy()
            .retry(&self.target, |attempt| {
                let (completed, whole) = (completed.clone(), whole.clone());
                async move {
                    let mut req = self
                        .core
                        .client
                        .complete_multipart_upload()
                        .bucket(&self.core.bucket)
                        .key(&self.full)
                        .upload_id(upload_id)
                        .checksum_crc32_c(&whole)
                        .checksum_type(ChecksumType::FullObject)
                        .multipart_upload(completed);
                    if self.mode == Mode::CreateOnly {
                        req = req.if_none_match("*");
                    }
                    match req.send().await {
                        Ok(out) => {
                            self.check_stored(out.checksum_crc32_c(), &whole).await?;
                            Ok(self.record(total, out.e_tag(), out.version_id()))
                        }
                        Err(e) => {
                            let e = map_sdk("CompleteMultipartUpload", &self.target, self.mode, e);
                            self.completed_earlier(attempt, e, total, part_count).await
                        }
                    }
                }
            })
            .await?;
        Ok(r)
    }

    /// S3 checks the whole object's CRC32C we send with the complete and
    /// refuses a mismatch. A store that instead computes its own from what
    /// it received (moto) and answers with it is checked here: a different
    /// value means a part was corrupted on the way, and the object, already
    /// visible, is deleted so no wrong object stays under the key.
    /// When the complete's answer has no checksum, a HEAD asks for it; a
    /// store that keeps none (s3s-fs) is not checked.
    async fn check_stored(&self, stored: Option<&str>, sent_b64: &str) -> Result<()> {
        let Some(sent) = full_object_crc32c(Some(sent_b64)) else {
            return Ok(());
        };
        let stored = match stored {
            Some(v) => full_object_crc32c(Some(v)),
            None => self
                .core
                .client
                .head_object()
                .bucket(&self.core.bucket)
                .key(&self.full)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .ok()
                .and_then(|h| full_object_crc32c(h.checksum_crc32_c())),
        };
        let Some(stored) = stored else {
            return Ok(());
        };
        if stored == sent {
            return Ok(());
        }
        tracing::warn!(target = %self.target, %sent, %stored, "the store's checksum differs from the uploaded bytes'; deleting the object");
        let deleted = self
            .core
            .client
            .delete_object()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .send()
            .await;
        if let Err(e) = deleted {
            tracing::warn!(target = %self.target, error = %map_sdk("DeleteObject", &self.target, Mode::Plain, e), "could not delete the corrupted object");
        }
        Err(Error::ChecksumMismatch {
            target: self.target.clone(),
            expected: sent,
            actual: stored,
        })
    }

    /// A complete that failed on a retry with "no such upload" (or, for a
    /// create-only upload, "already exists") may be the echo of an earlier
    /// try whose answer was lost: the upload is then gone because it became
    /// the object. Accept the object if it is ours by size and part count
    /// (a multipart ETag ends with `-PARTS`); otherwise return `err`.
    async fn completed_earlier(
        &self,
        attempt: u32,
        err: Error,
        total: u64,
        parts: usize,
    ) -> Result<RemoteObject> {
        let echo = matches!(err.kind(), ErrorKind::NotFound | ErrorKind::AlreadyExists);
        if attempt == 1 || !echo {
            return Err(err);
        }
        let head = self
            .core
            .client
            .head_object()
            .bucket(&self.core.bucket)
            .key(&self.full)
            .send()
            .await;
        match head {
            Ok(h)
                if h.content_length() == Some(total as i64)
                    && h.e_tag()
                        .is_some_and(|t| unquote(t).ends_with(&format!("-{parts}"))) =>
            {
                tracing::debug!(target = %self.target, "an earlier CompleteMultipartUpload took effect");
                Ok(self.record(total, h.e_tag(), h.version_id()))
            }
            _ => Err(err),
        }
    }
}

/// A CRC32C as S3 spells it: base64 of its 4 big-endian bytes.
pub(crate) fn crc32c_b64(crc: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// What an acknowledged part is.
struct PartDone {
    number: i32,
    etag: String,
    offset: u64,
    len: u64,
    crc32c: u32,
}

/// Upload one part (a spawned task): read its bytes, send them.
async fn upload_part(
    core: Arc<Core>,
    full: String,
    target: String,
    upload_id: String,
    number: i32,
    data: PartData,
    ctx: TransferCtx,
) -> Result<PartDone> {
    let (offset, bytes) = match data {
        PartData::Bytes(b) => (0, b),
        PartData::File { path, offset, len } => (offset, read_part(&path, offset, len).await?),
    };
    let crc32c = xferkit_core::journal::crc32c(&bytes);
    let len = bytes.len() as u64;
    ctx.throttle(&target, len).await?;
    // Only this part is sent again on a transient failure.
    let out = ctx
        .retry(&format!("{target} part {number}"), |_| {
            let bytes = bytes.clone();
            async {
                core.client
                    .upload_part()
                    .bucket(&core.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    // Already computed for the journal: sent as a header,
                    // the SDK computes no other.
                    .checksum_crc32_c(crc32c_b64(crc32c))
                    .body(SdkStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| map_sdk("UploadPart", &target, Mode::Plain, e))
            }
        })
        .await?;
    let etag = out
        .e_tag()
        .map(str::to_string)
        .ok_or_else(|| Error::Backend {
            target: target.clone(),
            message: format!("UploadPart {number} returned no ETag"),
            source: None,
        })?;
    Ok(PartDone {
        number,
        etag,
        offset,
        len,
        crc32c,
    })
}

/// `len` bytes at `offset` of the file at `path` (its own handle, so parts
/// are read concurrently without sharing a cursor).
async fn read_part(path: &Path, offset: u64, len: u64) -> Result<Bytes> {
    let shown = || PathBuf::from(path).display().to_string();
    let io = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Backend {
                target: shown(),
                message: "file shrank while it was being uploaded".into(),
                source: Some(e.into()),
            }
        } else {
            Error::from_io(shown(), e)
        }
    };
    let len = usize::try_from(len).map_err(|_| Error::Backend {
        target: shown(),
        message: "part does not fit in memory".into(),
        source: None,
    })?;
    // One blocking task reads the part straight into its buffer (tokio's
    // File would go through 2 MiB bounce buffers: four more allocations
    // and copies per 8 MiB part).
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&owned)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .map_err(|e| Error::Backend {
        target: shown(),
        message: "reading a part failed".into(),
        source: Some(e.into()),
    })?;
    Ok(Bytes::from(read.map_err(io)?))
}
