//! `S3Store`: the `FileTransferHandler` implementation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{ChecksumMode, MetadataDirective};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use xferkit_core::body;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, ErrorKind, FileTransferHandler, Key, ListEntry,
    ListOptions, PendingUpload, PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result,
    RetryPolicy, TransferCtx, UploadSource, async_trait,
};

use crate::S3Config;
use crate::core::{Core, Mode, SCHEME, body_error, capabilities, full_object_crc32c, map_sdk};
use crate::writer::Upload;

/// An S3 bucket (or a prefix of one) as a store: Amazon S3 or any
/// S3-compatible service (MinIO, Ceph, R2, ...).
#[derive(Clone, Debug)]
pub struct S3Store {
    name: String,
    core: Arc<Core>,
    /// For requests outside a transfer (stat, list, delete, copy, GET).
    retry: RetryPolicy,
    /// Journals of multipart uploads of files (resume after a crash).
    state_dir: Option<std::path::PathBuf>,
}

impl S3Store {
    /// Check `config` and build the SDK client. No request is sent.
    ///
    /// Invalid configuration is `InvalidConfig` naming the key relative to
    /// the store's table (`part_size = …`; the facade adds `stores.NAME.`).
    pub async fn new(name: &str, config: S3Config) -> Result<Self> {
        config.validate()?;
        Ok(S3Store {
            name: name.to_string(),
            core: Arc::new(Core::new(&config).await?),
            retry: RetryPolicy::default(),
            state_dir: None,
        })
    }

    /// Keep a journal of each multipart upload of a file under
    /// `DIR/uploads/` (see [`xferkit_core::journal`]): running the same
    /// upload again after the process died sends only the parts S3 has not
    /// acknowledged (checked with ListParts). `None` (the default): no journal.
    pub fn with_state_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// Retry requests made outside a transfer (stat, list, delete, copy,
    /// opening a download) under `policy`. Uploads use the transfer's policy
    /// ([`TransferCtx::retry_policy`]). The SDK's own retries are off.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The bucket this store lives in.
    pub fn bucket(&self) -> &str {
        &self.core.bucket
    }

    /// Create the bucket if it does not exist yet (for tests and first-time
    /// setup); a bucket that already exists is fine.
    pub async fn ensure_bucket(&self) -> Result<()> {
        let target = format!("{SCHEME}://{}", self.core.bucket);
        // Retried like every request (emulators answer 500 to concurrent
        // creates of one bucket; the retry then finds it exists).
        self.retry
            .retry(&target, |_| async {
                let mut req = self.core.client.create_bucket().bucket(&self.core.bucket);
                if self.core.region != "us-east-1" {
                    req = req.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(self.core.region.as_str().into())
                            .build(),
                    );
                }
                match req.send().await {
                    Ok(_) => Ok(()),
                    Err(e)
                        if matches!(
                            aws_sdk_s3::error::ProvideErrorMetadata::code(&e),
                            Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                        ) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(map_sdk("CreateBucket", &target, Mode::Plain, e)),
                }
            })
            .await
    }

    async fn head(&self, key: &str, full: &str) -> Result<RemoteObject> {
        let target = self.core.root.url_full(full);
        let head = |mode: Option<ChecksumMode>| {
            let target = &target;
            self.retry.retry(target, move |_| {
                let mode = mode.clone();
                async move {
                    let head = self
                        .core
                        .client
                        .head_object()
                        .bucket(&self.core.bucket)
                        .key(full)
                        .set_checksum_mode(mode);
                    crate::core::sse_c!(head, self.core.read_key.as_ref())
                        .send()
                        .await
                        .map_err(|e| map_sdk("HeadObject", target, Mode::Plain, e))
                }
            })
        };
        // Ask for the stored checksum: downloads verify a full-object
        // CRC32C against the bytes they wrote. S3 wants kms:Decrypt for it
        // on an SSE-KMS object; a caller without that still gets the stat.
        let out = match head(Some(ChecksumMode::Enabled)).await {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => head(None).await?,
            other => other?,
        };
        let mut obj = self.core.object(
            key,
            out.content_length().unwrap_or(0).max(0) as u64,
            out.e_tag(),
            out.version_id(),
            out.content_type(),
            out.last_modified(),
            out.metadata(),
        );
        obj.checksum = full_object_crc32c(out.checksum_crc32_c());
        crate::core::read_back!(&mut obj, out);
        Ok(obj)
    }

    async fn get(
        &self,
        key: &str,
        full: &str,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let target = self.core.root.url_full(full);
        let invalid = |r: &ByteRange| Error::InvalidRange {
            target: target.clone(),
            range: r.to_string(),
        };
        if let Some(r) = &range {
            // Refuse what no object size could satisfy (an empty bounded
            // range, a zero suffix) here: S3 ignores malformed ranges and
            // would send the whole object.
            r.resolve(u64::MAX, &target)?;
        }
        let sent = self
            .retry
            .retry(&target, |_| async {
                let get = self
                    .core
                    .client
                    .get_object()
                    .bucket(&self.core.bucket)
                    .key(full)
                    .set_range(range.map(|r| r.to_http_header()));
                crate::core::sse_c!(get, self.core.read_key.as_ref())
                    .send()
                    .await
                    .map_err(|e| map_sdk("GetObject", &target, Mode::Plain, e))
            })
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                return match (e.kind(), range) {
                    (ErrorKind::InvalidRange, Some(r)) => {
                        // Unsatisfiable for S3, but a suffix of an empty object is
                        // the empty object: decide by the size, never sending a
                        // range for a 0-byte object.
                        let head = self.head(key, full).await?;
                        match r.resolve(head.size, &target) {
                            Ok(_) if head.size == 0 => Box::pin(self.get(key, full, None)).await,
                            _ => Err(invalid(&r)),
                        }
                    }
                    _ => Err(e),
                };
            }
        };
        let partial = out.content_range().and_then(body::content_range);
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        let size = match (partial, range) {
            (Some((_, total)), _) => total,
            (None, _) => length,
        };
        let mut obj = self.core.object(
            key,
            size,
            out.e_tag(),
            out.version_id(),
            out.content_type(),
            out.last_modified(),
            out.metadata(),
        );
        crate::core::read_back!(&mut obj, out);
        if partial.is_none() {
            // A whole-object answer may carry the stored checksum (the SDK
            // asks for it and checks the body against it as it streams).
            obj.checksum = full_object_crc32c(out.checksum_crc32_c());
        }
        let body = out.body;
        let stream_target = target.clone();
        let mut bytes: ByteStream = Box::pin(
            stream::try_unfold(body, move |mut body| {
                let target = stream_target.clone();
                async move {
                    match body.try_next().await {
                        Ok(Some(chunk)) => Ok(Some((chunk, body))),
                        Ok(None) => Ok(None),
                        Err(e) => Err(body_error(&target, e)),
                    }
                }
            })
            .try_filter(|c| futures::future::ready(!c.is_empty())),
        );
        // A server that ignored the range sent the whole object: cut it here.
        if let (None, Some(r)) = (partial, range) {
            let span = r.resolve(size, &target).map_err(|_| invalid(&r))?;
            bytes = body::slice(bytes, span);
        }
        Ok((obj, bytes))
    }
}

impl S3Store {
    /// ListObjectsV2 pages of `prefix` with `opts` (delimiter, start-after,
    /// a page size no larger than the limit), each page one retried request:
    /// a failure repeats that page, not the listing.
    fn pages(
        &self,
        prefix: &str,
        opts: &ListOptions,
    ) -> BoxStream<'static, Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output>>
    {
        let core = self.core.clone();
        let full_prefix = core.root.full(prefix);
        let target = core.root.url_full(&full_prefix);
        let policy = self.retry.clone();
        let delimiter = opts.delimiter.clone().filter(|d| !d.is_empty());
        let start_after = opts.start_after.as_deref().map(|k| core.root.full(k));
        let page_size = opts
            .limit
            .map(|n| i32::try_from(n.clamp(1, 1000)).unwrap_or(1000));
        stream::try_unfold(Some(None::<String>), move |token| {
            let (core, policy, target, full_prefix) = (
                core.clone(),
                policy.clone(),
                target.clone(),
                full_prefix.clone(),
            );
            let (delimiter, start_after) = (delimiter.clone(), start_after.clone());
            async move {
                let Some(token) = token else {
                    return Ok(None);
                };
                let page = policy
                    .retry(&target, |_| {
                        let req = core
                            .client
                            .list_objects_v2()
                            .bucket(&core.bucket)
                            .prefix(&full_prefix)
                            .set_delimiter(delimiter.clone())
                            .set_start_after(start_after.clone())
                            .set_max_keys(page_size)
                            .set_continuation_token(token.clone());
                        let target = &target;
                        async move {
                            req.send()
                                .await
                                .map_err(|e| map_sdk("ListObjectsV2", target, Mode::Plain, e))
                        }
                    })
                    .await?;
                let next = match page.next_continuation_token() {
                    Some(t) if page.is_truncated().unwrap_or(false) => Some(Some(t.to_string())),
                    _ => None,
                };
                Ok::<_, Error>(Some((page, next)))
            }
        })
        .boxed()
    }
}

/// The objects of one ListObjectsV2 page under this store's prefix.
fn objects(
    core: &Core,
    page: &aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
) -> Vec<RemoteObject> {
    page.contents()
        .iter()
        .filter_map(|o| {
            let key = core.root.key_of(o.key()?)?;
            Some(core.object(
                key,
                o.size().unwrap_or(0).max(0) as u64,
                o.e_tag(),
                None,
                None,
                o.last_modified(),
                None,
            ))
        })
        .collect()
}

/// `backend = "s3"`: an [`S3Config`] table, the server-side upload options
/// S3 honours, the application's retry policy and journal directory.
#[async_trait]
impl xferkit_core::Backend for S3Store {
    const KIND: &'static str = "s3";
    type Config = S3Config;

    fn endpoints(config: &S3Config) -> Vec<String> {
        config.endpoint.iter().cloned().collect()
    }

    fn upload_options() -> Capabilities {
        capabilities()
    }

    async fn build(
        name: &str,
        mut config: S3Config,
        ctx: &xferkit_core::BuildContext,
    ) -> Result<Self> {
        config.upload = ctx.upload.clone();
        Ok(S3Store::new(name, config)
            .await?
            .with_retry_policy(ctx.retry.clone())
            .with_state_dir(ctx.state_dir.clone()))
    }
}

#[async_trait]
impl FileTransferHandler for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = capabilities();
        // A presigned URL of an SSE-C object works only with the key sent
        // alongside: it would have to travel with the link.
        if self.core.read_key.is_some() {
            (c.presign_get, c.presign_put, c.presign_verified) = (false, false, false);
        }
        c
    }

    fn schemes(&self) -> &[&str] {
        self.core.root.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.core.root.url(key)
    }

    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.core.root.key_for_url(url)
    }

    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let opts = &opts.or_defaults(&self.core.defaults);
        opts.check_server_options(&self.name, &self.core.root.url(key), &capabilities())?;
        let upload = Arc::new(Upload::new(&self.core, key, opts)?);
        let plan = Upload::plan(&self.core, opts, self.state_dir.clone());
        xferkit_core::parts::upload(upload, &plan, source, ctx).await
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        self.get(key, &self.core.root.full(key), range).await
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        self.head(key, &self.core.root.full(key)).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let core = self.core.clone();
        self.pages(prefix, &ListOptions::default())
            .map_ok(move |page| stream::iter(objects(&core, &page).into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }

    fn list_with(&self, prefix: &str, opts: &ListOptions) -> BoxStream<'static, Result<ListEntry>> {
        let core = self.core.clone();
        let entries = self
            .pages(prefix, opts)
            .map_ok(move |page| {
                // A page's objects and common prefixes are each in order: merged.
                let mut all: Vec<ListEntry> = objects(&core, &page)
                    .into_iter()
                    .map(ListEntry::Object)
                    .chain(page.common_prefixes().iter().filter_map(|p| {
                        Some(ListEntry::Prefix(
                            core.root.key_of(p.prefix()?)?.to_string(),
                        ))
                    }))
                    .collect();
                all.sort_by(|a, b| a.name().cmp(b.name()));
                stream::iter(all.into_iter().map(Ok))
            })
            .try_flatten();
        match opts.limit {
            Some(n) => entries.take(n).boxed(),
            None => entries.boxed(),
        }
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let target = self.core.root.url(key);
        let full = self.core.root.full(key);
        let r = self
            .retry
            .retry(&target, |_| async {
                self.core
                    .client
                    .delete_object()
                    .bucket(&self.core.bucket)
                    .key(&full)
                    .send()
                    .await
                    .map_err(|e| map_sdk("DeleteObject", &target, Mode::Plain, e))
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e {
                // Deleting what is not there is done already (the bucket,
                // though, must exist: S3 says NoSuchBucket then, kept).
                e if e.kind() == ErrorKind::NotFound && !e.chain().contains("NoSuchBucket") => {
                    Ok(())
                }
                e => Err(e),
            },
        }
    }

    /// DeleteObjects, 1000 keys a request (see `delete.rs`).
    async fn delete_many(&self, keys: &[Key]) -> Result<Vec<(Key, Result<()>)>> {
        let one = |key: Key| -> futures::future::BoxFuture<'_, Result<()>> {
            Box::pin(async move { self.delete(&key).await })
        };
        crate::delete::delete_many(&self.core, &self.retry, keys, &one).await
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        let (src, dst) = (self.core.root.full(from), self.core.root.full(to));
        let (src_url, dst_url) = (self.core.root.url_full(&src), self.core.root.url_full(&dst));
        // `x-amz-copy-source` is `bucket/key`, percent-encoded (keeping `/`).
        let copy_source = xferkit_core::url::encode_path(&format!("{}/{}", self.core.bucket, src));
        // The size decides between one CopyObject and a multipart copy; a
        // missing source fails here, naming it.
        let source = self.head(from, &src).await?;
        let r = if source.size > self.core.copy_threshold {
            crate::copy::in_parts(&self.core, &self.retry, &source, &copy_source, &dst).await
        } else {
            // Headers, metadata and tags come with the source; the store's
            // storage class and encryption apply to the copy (S3 would
            // otherwise give it STANDARD and the bucket's default encryption).
            let mut dest = PutOptions::default();
            dest.storage_class
                .clone_from(&self.core.defaults.storage_class);
            dest.encryption.clone_from(&self.core.defaults.encryption);
            let one = self.retry.retry(&dst_url, |_| async {
                let req = self
                    .core
                    .client
                    .copy_object()
                    .bucket(&self.core.bucket)
                    .key(&dst)
                    .copy_source(&copy_source)
                    .metadata_directive(MetadataDirective::Copy);
                let req = crate::core::server_options!(req, &dest);
                crate::core::sse_c!(copy_source req, self.core.read_key.as_ref())
                    .send()
                    .await
                    .map_err(|e| map_sdk("CopyObject", &dst_url, Mode::Plain, e))
            });
            one.await.map(drop)
        };
        if let Err(e) = r {
            return Err(match e {
                // The destination needs no existing object; a missing one is
                // the source (deleted since the HEAD).
                Error::NotFound { source, .. } => Error::NotFound {
                    target: src_url,
                    source,
                },
                e => e,
            });
        }
        self.head(to, &dst).await
    }

    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        if self.core.read_key.is_some() {
            let what = "presigned URLs (the store's SSE-C key would have to go with them)";
            return Err(Error::not_supported(&self.name, what));
        }
        let full = self.core.root.full(key);
        let target = self.core.root.url_full(&full);
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| Error::Backend {
            target: target.clone(),
            message: format!("cannot presign for {expires_in:?} (S3 allows up to 7 days)"),
            source: Some(e.into()),
        })?;
        let expires_at = SystemTime::now() + expires_in;
        let req = match method {
            PresignMethod::Get => {
                // A link to nothing is an error now rather than a 404 later.
                self.head(key, &full).await?;
                self.core
                    .client
                    .get_object()
                    .bucket(&self.core.bucket)
                    .key(&full)
                    .presigned(config)
                    .await
                    .map_err(|e| map_sdk("presign GetObject", &target, Mode::Plain, e))?
            }
            PresignMethod::Put => {
                // The store's defaults are signed in: the uploader must send
                // them (`headers`), so a bucket that demands SSE-KMS takes it.
                let put = self.core.client.put_object().bucket(&self.core.bucket);
                crate::core::server_options!(put.key(&full), &self.core.defaults)
                    .presigned(config)
                    .await
                    .map_err(|e| map_sdk("presign PutObject", &target, Mode::Plain, e))?
            }
        };
        let mut url = PresignedUrl::new(req.uri().to_string(), method, expires_at);
        url.headers = req
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(url)
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let full_prefix = self.core.root.full(prefix);
        let target = self.core.root.url_full(&full_prefix);
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let (km, im) = (key_marker.take(), id_marker.take());
            let page = self
                .retry
                .retry(&target, |_| {
                    let req = self
                        .core
                        .client
                        .list_multipart_uploads()
                        .bucket(&self.core.bucket)
                        .prefix(&full_prefix)
                        .set_key_marker(km.clone())
                        .set_upload_id_marker(im.clone());
                    let target = &target;
                    async move {
                        req.send()
                            .await
                            .map_err(|e| map_sdk("ListMultipartUploads", target, Mode::Plain, e))
                    }
                })
                .await?;
            for u in page.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(key) = self.core.root.key_of(full) else {
                    continue;
                };
                out.push(PendingUpload::new(
                    key.to_string(),
                    id.to_string(),
                    u.initiated().and_then(|d| SystemTime::try_from(*d).ok()),
                ));
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            let more = page.is_truncated().unwrap_or(false)
                && (key_marker.is_some() || id_marker.is_some());
            if !more {
                return Ok(out);
            }
        }
    }

    async fn abort_pending_upload(&self, pending: &PendingUpload) -> Result<()> {
        let full = self.core.root.full(&pending.key);
        let target = self.core.root.url_full(&full);
        // Through the retry layer like every request (the SDK's own retries
        // are off); an abort is idempotent.
        let r = self
            .retry
            .retry(&target, |_| {
                let req = self
                    .core
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.core.bucket)
                    .key(&full)
                    .upload_id(&pending.upload_id);
                let target = &target;
                async move {
                    req.send()
                        .await
                        .map_err(|e| map_sdk("AbortMultipartUpload", target, Mode::Plain, e))
                }
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // NoSuchUpload: completed or aborted meanwhile; gone either way.
            Err(e) if e.kind() == ErrorKind::NotFound && !e.chain().contains("NoSuchBucket") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_config() -> S3Config {
        let mut c = S3Config::new("bkt");
        c.prefix = "/p/q/".into();
        c.endpoint = Some("http://127.0.0.1:1".into());
        c.force_path_style = true;
        c.access_key_id = Some("AKIAEXAMPLEKEYID".into());
        c.secret_access_key = Some(xferkit_core::Secret::new("s3cr3t-value"));
        c.session_token = Some(xferkit_core::Secret::new("t0ken-value"));
        c
    }

    #[tokio::test]
    async fn urls_round_trip_and_foreign_urls_are_refused() {
        let s = S3Store::new("media", store_config()).await.unwrap();
        let u = s.url_for(&Key::new("a b/c#d.txt").unwrap());
        assert_eq!(u, "s3://bkt/p/q/a%20b/c%23d.txt");
        let parsed = ObjectUrl::parse(&u).unwrap();
        assert_eq!(s.key_for_url(&parsed).as_deref(), Some("a b/c#d.txt"));
        for other in [
            "s3://other/p/q/k",
            "s3://bkt/p/k",
            "s3://bkt/p/qk",
            "gs://bkt/p/q/k",
            "s3://bkt/p/q/a//b",
        ] {
            let parsed = ObjectUrl::parse(other).unwrap();
            assert_eq!(s.key_for_url(&parsed), None, "{other}");
        }
    }

    #[tokio::test]
    async fn debug_of_store_hides_credentials() {
        let s = S3Store::new("media", store_config()).await.unwrap();
        let d = format!("{s:?} {s:#?}");
        for secret in ["AKIAEXAMPLEKEYID", "s3cr3t-value", "t0ken-value"] {
            assert!(!d.contains(secret), "{d}");
        }
        assert!(d.contains("bkt"), "{d}");
    }

    #[tokio::test]
    async fn invalid_config_names_the_key() {
        let mut c = store_config();
        c.part_size = 1024;
        let e = S3Store::new("media", c).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(
            e.to_string()
                .starts_with("invalid configuration: part_size = 1024 must be"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connection_errors_are_transient_and_name_the_url() {
        let s = S3Store::new("media", store_config())
            .await
            .unwrap()
            .with_retry_policy(RetryPolicy::none());
        let e = s.stat(&Key::new("k").unwrap()).await.unwrap_err();
        // One try, then the retry layer reports the (retryable) failure.
        let Error::RetriesExhausted {
            source,
            attempts: 1,
            ..
        } = &e
        else {
            panic!("expected RetriesExhausted after 1 attempt: {e:?}");
        };
        assert!(source.is_retryable(), "{}", e.chain());
        assert!(e.to_string().contains("s3://bkt/p/q/k"), "{e}");
        assert!(!e.chain().contains("s3cr3t-value"));
    }
}
