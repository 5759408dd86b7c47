//! Uploads: one Put Blob up to `multipart_threshold`, staged blocks above it.
//!
//! Staged uploads send `Put Block` requests concurrently (at most
//! `concurrency` blocks in memory, file blocks read with positional reads)
//! and make the blob visible with one `Put Block List`. Until that commit
//! nothing exists under the key; if the upload fails or is stopped the staged
//! blocks stay uncommitted, invisible, and Azure discards them after 7 days
//! (there is no API to drop them earlier without creating a blob).
//!
//! Each request (Put Blob, each Put Block, Put Block List) goes through the
//! transfer's retry policy on its own: a failed block is staged again, never
//! the whole blob.

use std::collections::{HashMap, HashSet};
use std::num::NonZero;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use azure_core::Uuid;
use azure_core::http::{ClientMethodOptions, Context, Etag, RequestContent, XmlFormat};
use azure_storage_blob::models::BlockListType;
use azure_storage_blob::models::{
    BlobClientUploadOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientCommitBlockListResultHeaders, BlockBlobClientStageBlockOptions, BlockLookupList,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use xferkit_core::journal::{
    JournalFile, JournalPart, SourceFingerprint, UploadJournal, crc32c_of_range,
};
use xferkit_core::{
    ByteStream, Error, PutOptions, RemoteObject, Result, TransferCtx, UploadSource,
};

use crate::backend::{AzureStore, etag_text};
use crate::client::ContentMd5;
use crate::config::{MAX_BLOCK_SIZE, MAX_BLOCKS};
use crate::error::{Op, map};

/// What every request of one upload shares.
struct Plan<'a> {
    store: &'a AzureStore,
    full: String,
    url: String,
    content_type: String,
    metadata: HashMap<String, String>,
    create_only: bool,
}

impl Plan<'_> {
    fn op(&self) -> Op<'_> {
        Op::on(&self.url).create_only(self.create_only)
    }

    fn if_none_match(&self) -> Option<Etag> {
        self.create_only.then(|| Etag::from("*"))
    }
}

/// What the commit (or single put) returned.
struct Committed {
    etag: Option<String>,
    last_modified: Option<SystemTime>,
}

pub(crate) async fn upload(
    store: &AzureStore,
    key: &str,
    source: UploadSource,
    opts: &PutOptions,
    ctx: &TransferCtx,
) -> Result<RemoteObject> {
    let full = store.full_name(key);
    let plan = Plan {
        store,
        url: store.url_of_full(&full),
        full,
        content_type: opts.content_type_for(key),
        metadata: opts.metadata.clone().into_iter().collect(),
        create_only: opts.if_not_exists,
    };
    if ctx.is_discarding() {
        // A paused upload that is stopped: its staged blocks stay
        // uncommitted (the service drops them); the journal goes.
        if let (UploadSource::Path(path), Some(dir)) = (&source, &store.state_dir) {
            JournalFile::for_upload(dir, &plan.url, path).remove().await;
        }
        return Err(Error::cancelled(&plan.url));
    }
    ctx.check(&plan.url)?;
    let threshold = store.cfg.multipart_threshold;
    let (size, done) = match source {
        UploadSource::Path(path) => {
            let label = path.display().to_string();
            let file = std::fs::File::open(&path).map_err(|e| Error::from_io(&label, e))?;
            let size = file
                .metadata()
                .map_err(|e| Error::from_io(&label, e))?
                .len();
            if size <= threshold {
                let data = tokio::fs::read(&path)
                    .await
                    .map_err(|e| Error::from_io(&label, e))?;
                if data.len() as u64 != size {
                    return Err(changed(&label));
                }
                (size, put_single(&plan, Bytes::from(data), ctx).await?)
            } else {
                (
                    size,
                    staged_file(&plan, Arc::new(file), &path, size, ctx).await?,
                )
            }
        }
        UploadSource::Stream { stream, size } => {
            let mut chunker = Chunker::new(stream);
            let limit = usize::try_from(threshold).unwrap_or(usize::MAX);
            chunker.fill(limit.saturating_add(1)).await?;
            if chunker.buf.len() <= limit {
                let data = chunker.buf.split().freeze();
                check_declared(&plan.url, size, data.len() as u64)?;
                (data.len() as u64, put_single(&plan, data, ctx).await?)
            } else {
                let (n, done) = staged_stream(&plan, chunker, size, ctx).await?;
                (n, done)
            }
        }
    };
    let mut obj = RemoteObject::new(plan.url.clone(), key, size);
    obj.etag = done.etag;
    obj.last_modified = done.last_modified;
    obj.content_type = Some(plan.content_type.clone());
    obj.metadata = opts
        .metadata
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    Ok(obj)
}

fn changed(label: &str) -> Error {
    Error::backend(
        label,
        "the source file changed size during the upload",
        "source file changed size",
    )
}

fn check_declared(url: &str, declared: Option<u64>, got: u64) -> Result<()> {
    match declared {
        Some(d) if d != got => Err(Error::backend(
            url,
            format!("the upload stream gave {got} bytes but declared {d}"),
            "stream length mismatch",
        )),
        _ => Ok(()),
    }
}

/// The MD5 of `data` (off the async threads: ~13 ms per 8 MiB), the
/// transactional checksum the service verifies for each Put Blob and Put
/// Block. A body corrupted on the way is refused (400 `Md5Mismatch`) and
/// sent again by the retry layer: no corrupted block is ever committed.
async fn md5_of(url: &str, data: &Bytes) -> Result<Vec<u8>> {
    use md5::Digest;
    let data = data.clone();
    tokio::task::spawn_blocking(move || md5::Md5::digest(&data).to_vec())
        .await
        .map_err(|e| Error::backend(url, "MD5 worker task failed", e))
}

/// One Put Blob.
async fn put_single(plan: &Plan<'_>, data: Bytes, ctx: &TransferCtx) -> Result<Committed> {
    let len = data.len() as u64;
    ctx.throttle(&plan.url, len).await?;
    let md5 = BASE64.encode(md5_of(&plan.url, &data).await?);
    let options = BlobClientUploadOptions {
        method_options: ClientMethodOptions {
            context: Context::new().with_value(ContentMd5(md5)),
        },
        blob_content_type: Some(plan.content_type.clone()),
        metadata: Some(plan.metadata.clone()),
        if_none_match: plan.if_none_match(),
        // Bigger than the content: the SDK sends it as one Put Blob.
        partition_size: NonZero::new(len.max(1)),
        parallel: NonZero::new(1),
        ..Default::default()
    };
    let blob = plan.store.blob(&plan.full);
    let rsp = ctx
        .retry(&plan.url, |_| {
            let (data, options, blob) = (data.clone(), options.clone(), &blob);
            async move {
                blob.upload(data.into(), Some(options))
                    .await
                    .map_err(|e| map(plan.op(), "put blob", e))
            }
        })
        .await?;
    ctx.add_progress(len);
    Ok(Committed {
        etag: rsp.etag.as_ref().map(etag_text),
        last_modified: rsp.last_modified.map(SystemTime::from),
    })
}

/// Block ids: the same length for every block of a blob (Azure requires it),
/// unique per upload so concurrent uploads to one key never mix blocks.
fn block_id(upload: &Uuid, index: u32) -> Vec<u8> {
    let mut id = upload.as_bytes().to_vec();
    id.extend_from_slice(&index.to_be_bytes());
    id
}

/// Stage one block (retried on its own) with its MD5 (computed here when
/// the caller has none); returns its length once the service has it.
async fn stage(
    plan: &Plan<'_>,
    upload: &Uuid,
    index: u32,
    data: Bytes,
    md5: Option<Vec<u8>>,
    ctx: &TransferCtx,
) -> Result<u64> {
    let len = data.len() as u64;
    ctx.throttle(&plan.url, len).await?;
    let blob = plan.store.blob(&plan.full).block_blob_client();
    let id = block_id(upload, index);
    let md5 = match md5 {
        Some(m) => m,
        None => md5_of(&plan.url, &data).await?,
    };
    let options = BlockBlobClientStageBlockOptions {
        transactional_content_md5: Some(md5),
        ..Default::default()
    };
    ctx.retry(&format!("{} block {index}", plan.url), |_| {
        let (data, blob, id, options) = (data.clone(), &blob, &id, options.clone());
        async move {
            blob.stage_block(id, len, data.into(), Some(options))
                .await
                .map_err(|e| map(plan.op(), "put block", e))
        }
    })
    .await?;
    Ok(len)
}

/// A create-only upload of a key that already exists fails before any block
/// is sent (the commit's `If-None-Match: *` still decides atomically).
async fn precheck(plan: &Plan<'_>, ctx: &TransferCtx) -> Result<()> {
    if plan.create_only {
        let blob = plan.store.blob(&plan.full);
        let r = ctx
            .retry(&plan.url, |_| async {
                blob.get_properties(None)
                    .await
                    .map_err(|e| map(plan.op(), "check for existing blob", e))
            })
            .await;
        match r {
            Ok(_) => return Err(Error::already_exists(&plan.url)),
            Err(Error::NotFound { .. }) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// Put Block List: the moment the blob appears.
async fn commit(
    plan: &Plan<'_>,
    upload: &Uuid,
    blocks: u32,
    ctx: &TransferCtx,
) -> Result<Committed> {
    // Past this point a stop would race the commit; check once, then finish.
    ctx.check(&plan.url)?;
    let options = BlockBlobClientCommitBlockListOptions {
        blob_content_type: Some(plan.content_type.clone()),
        metadata: Some(plan.metadata.clone()),
        if_none_match: plan.if_none_match(),
        ..Default::default()
    };
    let blob = plan.store.blob(&plan.full).block_blob_client();
    // Not cancellable (the policy's retry, not the transfer's): a commit
    // dropped mid-flight may still take effect. Committing the same list
    // again is harmless ("latest" finds the blocks committed by then).
    let rsp = ctx
        .retry_policy()
        .retry(&plan.url, |_| {
            let (options, blob) = (options.clone(), &blob);
            async move {
                let list = BlockLookupList {
                    latest: Some((0..blocks).map(|i| block_id(upload, i)).collect()),
                    ..Default::default()
                };
                let content: RequestContent<BlockLookupList, XmlFormat> = list
                    .try_into()
                    .map_err(|e| map(plan.op(), "encode block list", e))?;
                blob.commit_block_list(content, Some(options))
                    .await
                    .map_err(|e| map(plan.op(), "put block list", e))
            }
        })
        .await?;
    let bad = |e| map(plan.op(), "read put block list response", e);
    Ok(Committed {
        etag: rsp.etag().map_err(bad)?.as_ref().map(etag_text),
        last_modified: rsp.last_modified().map_err(bad)?.map(SystemTime::from),
    })
}

/// Block size for an object of `size` bytes: the configured size, raised so
/// the object fits in 50 000 blocks.
fn block_size_for(configured: u64, size: u64) -> u64 {
    configured
        .max(size.div_ceil(MAX_BLOCKS))
        .min(MAX_BLOCK_SIZE)
}

async fn staged_file(
    plan: &Plan<'_>,
    file: Arc<std::fs::File>,
    path: &Path,
    size: u64,
    ctx: &TransferCtx,
) -> Result<Committed> {
    let bs = block_size_for(plan.store.cfg.block_size, size);
    let count = size.div_ceil(bs);
    let blocks = u32::try_from(count)
        .ok()
        .filter(|n| u64::from(*n) <= MAX_BLOCKS)
        .ok_or_else(|| too_many_blocks(&plan.url))?;
    precheck(plan, ctx).await?;
    let mut journal = match &plan.store.state_dir {
        Some(dir) => resumable(plan, dir, path, bs, ctx).await,
        None => None,
    };
    let upload = journal
        .as_ref()
        .and_then(|j| Uuid::parse_str(&j.data.upload_id).ok())
        .unwrap_or_else(Uuid::new_v4);
    // Blocks a previous run staged: counted, not sent.
    let mut skip = HashSet::new();
    if let Some(j) = journal.as_mut() {
        for p in &j.data.parts {
            skip.insert(p.number);
            ctx.add_progress(p.len);
        }
        if j.data.upload_id.is_empty() {
            j.data.upload_id = upload.to_string();
            if let Err(e) = j.file.save(&j.data).await {
                tracing::warn!(error = %e.chain(), "upload journal not written; this upload cannot resume after a crash");
                journal = None;
            }
        }
    }
    let journal = tokio::sync::Mutex::new(journal);
    let label = path.display().to_string();
    let concurrency = plan.store.cfg.concurrency;
    let staging = futures::stream::iter((0..blocks).filter(|i| !skip.contains(i)))
        .map(|i| {
            let (file, label, upload, journal) = (file.clone(), label.clone(), upload, &journal);
            async move {
                let offset = u64::from(i) * bs;
                let len = bs.min(size - offset);
                let (data, crc, md5) = read_block(file, offset, len, &label).await?;
                let n = stage(plan, &upload, i, data, Some(md5), ctx).await?;
                ctx.add_progress(n);
                if let Some(j) = journal.lock().await.as_mut() {
                    j.data.parts.push(JournalPart::new(
                        i,
                        offset,
                        len,
                        format!("{upload}/{i}"),
                        crc,
                    ));
                    if let Err(e) = j.file.save(&j.data).await {
                        tracing::warn!(error = %e.chain(), "could not update the upload journal");
                    }
                }
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) });
    let r = match ctx.cancellable(&plan.url, staging).await {
        Ok(()) => commit(plan, &upload, blocks, ctx).await,
        Err(e) => Err(e),
    };
    // Committed, failed or stopped: nothing to resume (staged blocks of a
    // failed upload stay uncommitted and expire). Paused: the journal and
    // the staged blocks stay for resume().
    if let Some(j) = journal.into_inner()
        && !(r.is_err() && ctx.is_paused())
    {
        j.file.remove().await;
    }
    r
}

/// The journal of a staged upload of a file.
struct Journaled {
    file: JournalFile,
    data: UploadJournal,
}

/// For a file and a state directory: the journal to keep, resuming a
/// previous run's upload when its journal matches this file (fingerprint,
/// block size, mode) and the blob still has those blocks uncommitted. Then
/// `upload_id` is that run's upload (block id prefix) and `parts` the blocks
/// to reuse (listed with the same size, bytes unchanged); otherwise
/// `upload_id` is empty.
async fn resumable(
    plan: &Plan<'_>,
    dir: &Path,
    path: &Path,
    block_size: u64,
    ctx: &TransferCtx,
) -> Option<Journaled> {
    let fingerprint = SourceFingerprint::of(path).await.ok()?;
    let file = JournalFile::for_upload(dir, &plan.url, path);
    let fresh = UploadJournal::new(
        plan.url.clone(),
        path.to_path_buf(),
        fingerprint.clone(),
        String::new(),
        block_size,
        plan.create_only,
    );
    let Some(old) = file.load().await else {
        return Some(Journaled { file, data: fresh });
    };
    let upload = Uuid::parse_str(&old.upload_id).ok();
    let same = old.target == plan.url
        && old.fingerprint == fingerprint
        && old.part_size == block_size
        && old.create_only == plan.create_only;
    let Some(upload) = upload.filter(|_| same) else {
        tracing::info!(target = %plan.url, "the source changed since the interrupted upload; starting over");
        return Some(Journaled { file, data: fresh });
    };
    let blob = plan.store.blob(&plan.full).block_blob_client();
    let listed = ctx
        .retry(&plan.url, |_| async {
            blob.get_block_list(BlockListType::Uncommitted, None)
                .await
                .map_err(|e| map(plan.op(), "get block list", e))?
                .into_model()
                .map_err(|e| map(plan.op(), "read block list", e))
        })
        .await;
    let listed: HashMap<Vec<u8>, u64> = match listed {
        Ok(list) => list
            .uncommitted_blocks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| Some((b.name?, u64::try_from(b.size?).ok()?)))
            .collect(),
        Err(e) => {
            tracing::info!(target = %plan.url, error = %e.chain(), "the interrupted upload cannot be resumed; starting over");
            return Some(Journaled { file, data: fresh });
        }
    };
    let mut keep = Vec::new();
    for p in old.parts {
        let staged = listed.get(&block_id(&upload, p.number)) == Some(&p.len);
        if staged && crc32c_of_range(path, p.offset, p.len).await == Some(p.crc32c) {
            keep.push(p);
        }
    }
    let stored: u64 = keep.iter().map(|p| p.len).sum();
    tracing::info!(
        target = %plan.url,
        blocks = keep.len(),
        bytes = stored,
        "resuming an interrupted upload: {stored} bytes already stored"
    );
    let mut data = fresh;
    data.upload_id = upload.to_string();
    data.parts = keep;
    Some(Journaled { file, data })
}

async fn staged_stream(
    plan: &Plan<'_>,
    chunker: Chunker,
    declared: Option<u64>,
    ctx: &TransferCtx,
) -> Result<(u64, Committed)> {
    let bs = match declared {
        Some(size) => block_size_for(plan.store.cfg.block_size, size),
        None => plan.store.cfg.block_size,
    };
    let bs = usize::try_from(bs).unwrap_or(usize::MAX);
    precheck(plan, ctx).await?;
    let upload = Uuid::new_v4();
    let concurrency = plan.store.cfg.concurrency;
    let url = plan.url.clone();
    let blocks = futures::stream::try_unfold(chunker, move |mut ch| async move {
        Ok::<_, Error>(ch.next_block(bs).await?.map(|b| (b, ch)))
    });
    let staging = blocks
        .enumerate()
        .map(|(i, block)| {
            let url = url.clone();
            async move {
                let index = u32::try_from(i)
                    .ok()
                    .filter(|n| u64::from(*n) < MAX_BLOCKS)
                    .ok_or_else(|| too_many_blocks(&url))?;
                let n = stage(plan, &upload, index, block?, None, ctx).await?;
                ctx.add_progress(n);
                Ok::<_, Error>((index, n))
            }
        })
        .buffer_unordered(concurrency)
        .try_fold((0u32, 0u64), |(blocks, total), (index, n)| async move {
            Ok((blocks.max(index + 1), total + n))
        });
    let (blocks, total) = ctx.cancellable(&plan.url, staging).await?;
    check_declared(&plan.url, declared, total)?;
    Ok((total, commit(plan, &upload, blocks, ctx).await?))
}

fn too_many_blocks(url: &str) -> Error {
    Error::backend(
        url,
        "the object needs more than 50 000 blocks; raise block_size",
        "too many blocks",
    )
}

/// Read `len` bytes at `offset` without moving a shared cursor, with their
/// CRC32C (for the resume journal) and MD5 (for the service to check),
/// computed in the same blocking task while the block is hot in cache.
async fn read_block(
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
    label: &str,
) -> Result<(Bytes, u32, Vec<u8>)> {
    use md5::Digest;
    let len = usize::try_from(len)
        .map_err(|_| Error::backend(label, "block too large", "block too large"))?;
    let res = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        read_exact_at(&file, &mut buf, offset)?;
        let crc = xferkit_core::journal::crc32c(&buf);
        let md5 = md5::Md5::digest(&buf).to_vec();
        Ok::<_, std::io::Error>((Bytes::from(buf), crc, md5))
    })
    .await;
    match res {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(changed(label)),
        Ok(Err(e)) => Err(Error::from_io(label, e)),
        Err(join) => Err(Error::backend(
            label,
            "reading a block failed",
            join.to_string(),
        )),
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Cuts an upload stream into blocks.
struct Chunker {
    stream: ByteStream,
    buf: BytesMut,
    done: bool,
}

impl Chunker {
    fn new(stream: ByteStream) -> Self {
        Chunker {
            stream,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// Buffer until `n` bytes are held or the stream ends.
    async fn fill(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n && !self.done {
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(e),
                None => self.done = true,
            }
        }
        Ok(())
    }

    /// The next block of `n` bytes (shorter at the end), `None` when done.
    async fn next_block(&mut self, n: usize) -> Result<Option<Bytes>> {
        self.fill(n).await?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let take = n.min(self.buf.len());
        Ok(Some(self.buf.split_to(take).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length() {
        let u = Uuid::new_v4();
        assert_eq!(block_id(&u, 0).len(), block_id(&u, u32::MAX).len());
        assert_ne!(block_id(&u, 1), block_id(&u, 2));
    }

    #[test]
    fn block_size_grows_to_fit_50000_blocks() {
        let mib = 1024 * 1024;
        assert_eq!(block_size_for(8 * mib, 100 * mib), 8 * mib);
        let huge = 1024 * 1024 * mib; // 1 TiB
        let bs = block_size_for(8 * mib, huge);
        assert!(huge.div_ceil(bs) <= MAX_BLOCKS);
    }

    #[tokio::test]
    async fn chunker_cuts_exact_blocks() {
        let parts: Vec<Result<Bytes>> =
            (0..10).map(|i| Ok(Bytes::from(vec![i as u8; 7]))).collect();
        let mut ch = Chunker::new(Box::pin(futures::stream::iter(parts)));
        let mut sizes = Vec::new();
        while let Some(b) = ch.next_block(16).await.unwrap() {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![16, 16, 16, 16, 6]);
    }
}
