//! Uploads: Azure's calls for the core parts engine (`xferkit_core::parts`),
//! which chooses one Put Blob or staged blocks, schedules, retries,
//! journals, resumes and cancels.
//!
//! Staged uploads `Put Block` each part and make the blob visible with one
//! `Put Block List`. Until that commit nothing exists under the key; if the
//! upload fails or is stopped the staged blocks stay uncommitted, invisible,
//! and Azure discards them after 7 days (there is no API to drop them
//! earlier without creating a blob), so abort has nothing to do.
//!
//! Integrity: every Put Blob and Put Block carries the MD5 of its body, which
//! the service checks (400 `Md5Mismatch`, resent by the retry layer): no
//! corrupted block is ever committed.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZero;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use azure_core::Uuid;
use azure_core::http::{
    Body as SdkBody, ClientMethodOptions, Context, Etag, RequestContent, XmlFormat,
};
use azure_core::stream::SeekableStream;
use azure_storage_blob::BlobClient;
use azure_storage_blob::models::{
    AccessTier, BlobClientUploadOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientCommitBlockListResultHeaders, BlockBlobClientStageBlockOptions, BlockListType,
    BlockLookupList,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use xferkit_core::journal::JournalPart;
use xferkit_core::parts::{
    Acked, Body, FileSpan, Held, Part, PartBody, PartDigest, PartStore, Plan, SpanReader, Stored,
};
use xferkit_core::{Error, ErrorKind, PutOptions, RemoteObject, Result};

use crate::client::ContentMd5;
use crate::config::{MAX_BLOCK_SIZE, MAX_BLOCKS};
use crate::error::{Op, map};
use crate::store::{AzureStore, etag_text};

/// The options of the request that makes the blob (Put Blob, Put Block
/// List): content type, metadata, the four headers, tier, encryption scope,
/// create-only; `$field: $value` for the rest.
macro_rules! blob_options {
    ($self:ident, $ty:ident { $($field:ident: $value:expr),* $(,)? }) => {
        $ty {
            blob_content_type: Some($self.content_type.clone()),
            blob_cache_control: $self.headers.cache_control.clone(),
            blob_content_disposition: $self.headers.content_disposition.clone(),
            blob_content_encoding: $self.headers.content_encoding.clone(),
            blob_content_language: $self.headers.content_language.clone(),
            tier: $self.tier.clone(),
            encryption_scope: $self.encryption_scope.clone(),
            metadata: Some($self.metadata.clone()),
            if_none_match: $self.if_none_match(),
            $($field: $value,)*
            ..Default::default()
        }
    };
}

/// One upload to one blob.
pub(crate) struct Blocks {
    blob: BlobClient,
    url: String,
    key: String,
    content_type: String,
    metadata: HashMap<String, String>,
    create_only: bool,
    headers: xferkit_core::ObjectHeaders,
    tier: Option<AccessTier>,
    /// Sent on every block and on the commit (they must agree).
    encryption_scope: Option<String>,
}

impl Blocks {
    pub(crate) fn new(store: &AzureStore, key: &str, opts: &PutOptions) -> Self {
        let full = store.root.full(key);
        Blocks {
            blob: store.blob(&full),
            url: store.root.url_full(&full),
            key: key.to_string(),
            content_type: opts.content_type_for(key),
            metadata: opts.metadata.clone().into_iter().collect(),
            create_only: opts.if_not_exists,
            headers: opts.headers.clone(),
            tier: (opts.storage_class.as_deref()).map(|t| t.parse().unwrap_or_else(|e| match e {})),
            encryption_scope: match &opts.encryption {
                Some(xferkit_core::ServerEncryption::Scope(s)) => Some(s.clone()),
                _ => None,
            },
        }
    }

    /// How the engine cuts uploads for this store.
    pub(crate) fn plan(store: &AzureStore, opts: &PutOptions) -> Plan {
        let cfg = &store.cfg;
        Plan::new(
            cfg.multipart_threshold,
            cfg.block_size,
            MAX_BLOCK_SIZE,
            MAX_BLOCKS,
        )
        .concurrency(cfg.concurrency)
        .digest(part_md5)
        .create_only(opts.if_not_exists)
        .state_dir(store.state_dir.clone())
    }

    fn op(&self) -> Op<'_> {
        Op::on(&self.url).create_only(self.create_only)
    }

    fn if_none_match(&self) -> Option<Etag> {
        self.create_only.then(|| Etag::from("*"))
    }

    fn record(&self, size: u64, etag: Option<&Etag>, modified: Option<SystemTime>) -> RemoteObject {
        let mut obj = RemoteObject::new(self.url.clone(), &self.key, size);
        obj.etag = etag.map(etag_text);
        obj.last_modified = modified;
        obj.content_type = Some(self.content_type.clone());
        obj.headers = self.headers.clone();
        obj.metadata = self
            .metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        obj
    }

    fn upload_id(&self, session: &str) -> Result<Uuid> {
        Uuid::parse_str(session).map_err(|e| Error::backend(&self.url, "bad block id prefix", e))
    }
}

/// The MD5 the service checks for a Put Blob.
fn md5(data: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(data).to_vec()
}

/// The MD5 the service checks for each block, fed as the engine reads it.
struct PartMd5(md5::Md5);

impl PartDigest for PartMd5 {
    fn update(&mut self, data: &[u8]) {
        md5::Digest::update(&mut self.0, data);
    }

    fn finish(self: Box<Self>) -> Vec<u8> {
        md5::Digest::finalize(self.0).to_vec()
    }
}

fn part_md5() -> Box<dyn PartDigest> {
    Box::new(PartMd5(md5::Digest::new()))
}

/// A block of a file as the SDK's body: streamed from the file. The SDK
/// clones the request's body for each send, and a clone starts over at the
/// span's first byte (a fresh reader), as does `reset`.
#[derive(Debug)]
struct SpanStream {
    span: FileSpan,
    reader: SpanReader,
    chunk: Bytes,
}

impl SpanStream {
    fn new(span: FileSpan) -> Self {
        SpanStream {
            reader: span.reader(),
            span,
            chunk: Bytes::new(),
        }
    }
}

impl Clone for SpanStream {
    fn clone(&self) -> Self {
        SpanStream::new(self.span.clone())
    }
}

impl futures::io::AsyncRead for SpanStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match std::task::ready!(this.reader.poll_next_unpin(cx)) {
                None => return Poll::Ready(Ok(0)),
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
                Some(Ok(b)) => this.chunk = b,
            }
        }
        let n = buf.len().min(this.chunk.len());
        buf[..n].copy_from_slice(&this.chunk[..n]);
        this.chunk.advance(n);
        Poll::Ready(Ok(n))
    }
}

#[async_trait::async_trait]
impl SeekableStream for SpanStream {
    async fn reset(&mut self) -> azure_core::Result<()> {
        *self = SpanStream::new(self.span.clone());
        Ok(())
    }

    fn len(&self) -> Option<u64> {
        Some(self.span.len())
    }
}

/// Block ids: the same length for every block of a blob (Azure requires it),
/// unique per upload so concurrent uploads to one key never mix blocks.
fn block_id(upload: &Uuid, number: u32) -> Vec<u8> {
    let mut id = upload.as_bytes().to_vec();
    id.extend_from_slice(&number.to_be_bytes());
    id
}

/// The part number of a block of `upload`.
fn number_of(upload: &Uuid, id: &[u8]) -> Option<u32> {
    let rest = id.strip_prefix(upload.as_bytes().as_slice())?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

#[xferkit_core::async_trait]
impl PartStore for Blocks {
    fn target(&self) -> &str {
        &self.url
    }

    async fn put_whole(&self, body: &Body, size: u64, _crc32c: u32) -> Result<Stored> {
        let data = match body {
            Body::Bytes(b) => b.clone(),
            Body::File(path) => {
                let shown = path.display().to_string();
                let data = tokio::fs::read(path)
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?;
                if data.len() as u64 != size {
                    return Err(Error::backend(
                        &shown,
                        "the source file changed size during the upload",
                        "file changed",
                    ));
                }
                Bytes::from(data)
            }
        };
        let digest = data.clone();
        let sum = tokio::task::spawn_blocking(move || md5(&digest))
            .await
            .map_err(|e| Error::backend(&self.url, "MD5 worker task failed", e))?;
        let options = blob_options!(
            self,
            BlobClientUploadOptions {
                method_options: ClientMethodOptions {
                    context: Context::new().with_value(ContentMd5(BASE64.encode(sum))),
                },
                // Bigger than the content: the SDK sends it as one Put Blob.
                partition_size: NonZero::new(size.max(1)),
                parallel: NonZero::new(1),
            }
        );
        let rsp = self
            .blob
            .upload(data.into(), Some(options))
            .await
            .map_err(|e| map(self.op(), "put blob", e))?;
        let modified = rsp.last_modified.map(SystemTime::from);
        Ok(Stored::new(
            self.record(size, rsp.etag.as_ref(), modified),
            None,
        ))
    }

    async fn exists(&self) -> Result<bool> {
        match self.blob.get_properties(None).await {
            Ok(_) => Ok(true),
            Err(e) => match map(self.op(), "check for existing blob", e) {
                e if e.kind() == ErrorKind::NotFound => Ok(false),
                e => Err(e),
            },
        }
    }

    /// A fresh block id prefix; nothing is sent until the first block.
    async fn start(&self, _size: Option<u64>) -> Result<String> {
        Ok(Uuid::new_v4().to_string())
    }

    async fn put_part(&self, session: &str, part: &Part, _attempt: u32) -> Result<Acked> {
        let id = block_id(&self.upload_id(session)?, part.number);
        let options = BlockBlobClientStageBlockOptions {
            transactional_content_md5: part.digest.clone(),
            encryption_scope: self.encryption_scope.clone(),
            ..Default::default()
        };
        let body = match &part.body {
            PartBody::Bytes(b) => SdkBody::Bytes(b.clone()),
            PartBody::File(span) => {
                SdkBody::SeekableStream(Box::new(SpanStream::new(span.clone())))
            }
        };
        self.blob
            .block_blob_client()
            .stage_block(&id, part.len(), body.into(), Some(options))
            .await
            .map_err(|e| map(self.op(), "put block", e))?;
        Ok(Acked::Part(String::new()))
    }

    /// The uncommitted blocks of this upload (a committed or expired one has none).
    async fn held(&self, session: &str, _size: u64) -> Result<Held> {
        let upload = self.upload_id(session)?;
        let list = self
            .blob
            .block_blob_client()
            .get_block_list(BlockListType::Uncommitted, None)
            .await
            .map_err(|e| map(self.op(), "get block list", e))?
            .into_model()
            .map_err(|e| map(self.op(), "read block list", e))?;
        let parts = list
            .uncommitted_blocks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| {
                let n = number_of(&upload, b.name.as_deref()?)?;
                Some((n, (u64::try_from(b.size?).ok()?, None)))
            })
            .collect();
        Ok(Held::Parts(parts))
    }

    /// Put Block List: the moment the blob appears. Committing the same list
    /// again is harmless ("latest" finds the blocks committed by then).
    async fn complete(
        &self,
        session: &str,
        parts: &[JournalPart],
        total: u64,
        _crc32c: u32,
        _attempt: u32,
    ) -> Result<Stored> {
        let upload = self.upload_id(session)?;
        let list = BlockLookupList {
            latest: Some(parts.iter().map(|p| block_id(&upload, p.number)).collect()),
            ..Default::default()
        };
        let content: RequestContent<BlockLookupList, XmlFormat> = list
            .try_into()
            .map_err(|e| map(self.op(), "encode block list", e))?;
        let options = blob_options!(self, BlockBlobClientCommitBlockListOptions {});
        let rsp = self
            .blob
            .block_blob_client()
            .commit_block_list(content, Some(options))
            .await
            .map_err(|e| map(self.op(), "put block list", e))?;
        let bad = |e| map(self.op(), "read put block list response", e);
        let etag = rsp.etag().map_err(bad)?;
        let modified = rsp.last_modified().map_err(bad)?.map(SystemTime::from);
        Ok(Stored::new(
            self.record(total, etag.as_ref(), modified),
            None,
        ))
    }

    async fn abort(&self, _session: &str) -> Result<()> {
        Ok(())
    }

    async fn discard(&self, _object: &RemoteObject) -> Result<()> {
        self.blob
            .delete(None)
            .await
            .map_err(|e| map(self.op(), "delete blob", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_have_one_length_and_give_back_their_number() {
        let u = Uuid::new_v4();
        assert_eq!(block_id(&u, 0).len(), block_id(&u, u32::MAX).len());
        assert_ne!(block_id(&u, 1), block_id(&u, 2));
        assert_eq!(number_of(&u, &block_id(&u, 7)), Some(7));
        assert_eq!(number_of(&Uuid::new_v4(), &block_id(&u, 7)), None);
    }

    #[test]
    fn block_size_grows_to_fit_50000_blocks() {
        let mib = 1024 * 1024;
        let plan = Plan::new(16 * mib, 8 * mib, MAX_BLOCK_SIZE, MAX_BLOCKS);
        assert_eq!(plan.part_size_for(Some(100 * mib)), 8 * mib);
        let huge = 1024 * 1024 * mib; // 1 TiB
        assert!(huge.div_ceil(plan.part_size_for(Some(huge))) <= MAX_BLOCKS);
    }
}
