//! `AzureStore`: the `FileTransferHandler` for Azure Blob Storage.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZero;
use std::time::{Duration, SystemTime};

use azure_core::http::{Etag, Response};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientDownloadOptions, BlobClientGetPropertiesResult,
    BlobClientGetPropertiesResultHeaders, BlobClientStartCopyFromUrlResultHeaders,
    BlobContainerClientListBlobsOptions, BlobItem, CopyStatus, DeleteSnapshotsOptionType,
    HttpRange, ListBlobsIncludeItem,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use xferkit_core::key::Root;
use xferkit_core::url::{ObjectUrl, encode_path};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, FileTransferHandler, Key, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, RetryPolicy, TransferCtx,
    UploadSource, async_trait,
};

use crate::SCHEME;
use crate::client::Client;
use crate::config::{AzureConfig, Credential};
use crate::error::{AzureError, Op, map};
use crate::sas::{self, BlobSas, SAS_VERSION};
use crate::store::{AzureStore, etag_text};

/// The server-side upload options Azure honours, added to `c`.
fn server_options(mut c: Capabilities) -> Capabilities {
    c.storage_class = true;
    c.object_headers = true;
    c.encryption_scope = true;
    c
}

/// The four headers of a blob as the service reports them.
fn headers(v: [Option<String>; 4]) -> xferkit_core::ObjectHeaders {
    let mut h = xferkit_core::ObjectHeaders::default();
    for (name, v) in xferkit_core::ObjectHeaders::NAMES.into_iter().zip(v) {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            h.set(name, v);
        }
    }
    h
}

/// `backend = "azure"`: an [`AzureConfig`] table, the server-side upload
/// options Azure honours, the application's retry policy and journal
/// directory.
#[async_trait]
impl xferkit_core::Backend for AzureStore {
    const KIND: &'static str = "azure";
    type Config = AzureConfig;

    /// `endpoint`, else the connection string's `BlobEndpoint` (Azurite's
    /// for `UseDevelopmentStorage=true`), else the account's public one.
    fn endpoints(config: &AzureConfig) -> Vec<String> {
        config
            .resolve()
            .map(|r| vec![r.endpoint.to_string()])
            .unwrap_or_default()
    }

    fn upload_options() -> Capabilities {
        server_options(Capabilities::default())
    }

    async fn build(
        name: &str,
        mut config: AzureConfig,
        ctx: &xferkit_core::BuildContext,
    ) -> Result<Self> {
        config.upload = ctx.upload.clone();
        Ok(AzureStore::new(name, config)
            .await?
            .with_retry_policy(ctx.retry.clone())
            .with_state_dir(ctx.state_dir.clone()))
    }
}

impl AzureStore {
    /// Build the store called `name` from `config`. Creates no container and
    /// sends no request: a wrong credential shows on the first operation.
    pub async fn new(name: &str, config: AzureConfig) -> Result<Self> {
        let defaults = (config.upload).put_options(&server_options(Default::default()))?;
        let cfg = config.resolve()?;
        let client = Client::new(&cfg)?;
        Ok(AzureStore {
            name: name.to_string(),
            root: Root::new(SCHEME, &cfg.account, &cfg.prefix).in_container(&cfg.container),
            cfg,
            client,
            retry: RetryPolicy::default(),
            state_dir: None,
            defaults,
        })
    }

    /// Keep a journal of each staged upload of a file under `DIR/uploads/`
    /// (see [`xferkit_core::journal`]): running the same upload again after
    /// the process died stages only the blocks Azure does not hold
    /// uncommitted (checked with Get Block List). `None` (the default): no
    /// journal.
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

    /// Create the container if it does not exist (handy for tests and
    /// first-time setup; needs permission to create containers).
    pub async fn create_container_if_missing(&self) -> Result<()> {
        let target = format!("{SCHEME}://{}/{}", self.cfg.account, self.cfg.container);
        self.retry
            .retry(&target, |_| async {
                match self.client.container.create(None).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
                    Err(e) => Err(map(Op::on(&target), "create container", e)),
                }
            })
            .await
    }

    /// The blob's URL with the SAS the store authorizes with (a copy source).
    fn authorized_url(&self, full: &str) -> String {
        let mut url = self.blob(full).url().clone();
        if let Some(sas) = &self.client.sas {
            crate::client::append_query(&mut url, &sas.token());
        }
        url.to_string()
    }

    fn props_to_object(
        &self,
        key: &str,
        url: &str,
        rsp: &Response<BlobClientGetPropertiesResult, azure_core::http::NoFormat>,
    ) -> Result<RemoteObject> {
        let bad = |e| map(Op::on(url), "read blob properties", e);
        let mut obj = RemoteObject::new(url, key, rsp.content_length().map_err(bad)?.unwrap_or(0));
        obj.etag = rsp.etag().map_err(bad)?.map(|e| etag_text(&e));
        obj.content_type = rsp.content_type().map_err(bad)?;
        obj.last_modified = rsp.last_modified().map_err(bad)?.map(SystemTime::from);
        obj.version = rsp.version_id().map_err(bad)?;
        obj.metadata = lower_keys(rsp.metadata().map_err(bad)?);
        obj.headers = headers([
            rsp.cache_control().map_err(bad)?,
            rsp.content_disposition().map_err(bad)?,
            rsp.content_encoding().map_err(bad)?,
            rsp.content_language().map_err(bad)?,
        ]);
        obj.storage_class = rsp.access_tier().map_err(bad)?;
        obj.encryption_key = rsp.encryption_scope().map_err(bad)?;
        obj.encryption = obj.encryption_key.as_ref().map(|_| "scope".to_string());
        Ok(obj)
    }

    fn account_key(&self, operation: &str) -> Result<&crate::sas::AccountKey> {
        match &self.cfg.credential {
            Credential::AccountKey(k) => Ok(k),
            other => Err(Error::not_supported(
                &self.name,
                format!(
                    "{operation} (presigned URLs are signed with the account key; this store uses {})",
                    other.describe()
                ),
            )),
        }
    }

    /// Wait for an asynchronous copy to `full` to finish.
    async fn wait_for_copy(&self, full: &str, url: &str) -> Result<()> {
        let blob = self.blob(full);
        let mut delay = Duration::from_millis(100);
        loop {
            let rsp = self
                .retry
                .retry(url, |_| async {
                    blob.get_properties(None)
                        .await
                        .map_err(|e| map(Op::on(url), "poll copy", e))
                })
                .await?;
            let status = rsp
                .copy_status()
                .map_err(|e| map(Op::on(url), "poll copy", e))?;
            match status {
                None | Some(CopyStatus::Success) => return Ok(()),
                Some(CopyStatus::Pending) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Some(other) => {
                    let why = rsp.copy_status_description().ok().flatten();
                    let msg = format!(
                        "server-side copy ended {other:?}{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default()
                    );
                    return Err(Error::backend(url, msg.clone(), AzureError::new(msg)));
                }
            }
        }
    }
}

fn lower_keys(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// `now + d`, rounded up to a whole second (SAS times have no fraction).
fn expiry_after(d: Duration) -> OffsetDateTime {
    let t = OffsetDateTime::now_utc() + d;
    if t.nanosecond() == 0 {
        t
    } else {
        t.replace_nanosecond(0).unwrap_or(t) + time::Duration::SECOND
    }
}

#[async_trait]
impl FileTransferHandler for AzureStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let signed = matches!(self.cfg.credential, Credential::AccountKey(_));
        let mut c = Capabilities::default();
        c.presign_get = signed;
        c.presign_put = signed;
        c.presign_verified = signed;
        c.range = true;
        c.conditional_create = true;
        c.multipart = true;
        // Uncommitted blocks cannot be listed across blobs; they expire on
        // their own (after 7 days), so there is nothing to clean up.
        c.list_pending_uploads = false;
        c.copy = true;
        c.metadata = true;
        server_options(c)
    }

    fn schemes(&self) -> &[&str] {
        self.root.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.root.url(key)
    }

    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.root.key_for_url(url)
    }

    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let opts = &opts.or_defaults(&self.defaults);
        opts.check_server_options(&self.name, &self.root.url(key), &self.capabilities())?;
        let blocks = std::sync::Arc::new(crate::upload::Blocks::new(self, key, opts));
        let plan = crate::upload::Blocks::plan(self, opts);
        xferkit_core::parts::upload(blocks, &plan, source, ctx).await
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let full = self.root.full(key);
        let url = self.root.url_full(&full);
        // The whole blob: one GET, whose response headers carry the record
        // (one partition: the SDK streams the single body). A range: one HEAD
        // for the record and size (so ranges resolve exactly, including
        // suffixes and empty blobs), then one GET of the range pinned to that etag.
        let mut options = BlobClientDownloadOptions {
            parallel: NonZero::new(1),
            partition_size: NonZero::new(usize::MAX),
            ..Default::default()
        };
        let (obj, range_text) = match range {
            None => (None, None),
            Some(r) => {
                let obj = self.stat(key).await?;
                let span = r.resolve(obj.size, &obj.url)?;
                if span.is_empty() {
                    return Ok((obj, Box::pin(futures::stream::empty())));
                }
                let len = span.end - span.start;
                options.range = Some(HttpRange::new(span.start, len));
                options.partition_size = NonZero::new(usize::try_from(len).unwrap_or(usize::MAX));
                options.if_match = obj.etag.as_ref().map(|e| Etag::from(format!("\"{e}\"")));
                (
                    Some(obj),
                    Some(format!("bytes={}-{}", span.start, span.end - 1)),
                )
            }
        };
        let op = Op {
            target: &url,
            create_only: false,
            range: range_text.as_deref(),
        };
        let blob = self.blob(&full);
        let res = self
            .retry
            .retry(&url, |_| {
                let options = options.clone();
                let blob = &blob;
                async move {
                    blob.download(Some(options))
                        .await
                        .map_err(|e| map(op, "download", e))
                }
            })
            .await
            .map_err(|e| match e {
                // The object changed between the HEAD and the GET: the caller
                // may start over (a new HEAD, a new etag).
                Error::PreconditionFailed { target, source } => Error::Transient {
                    target,
                    retry_after: None,
                    source,
                },
                other => other,
            })?;
        let stream_url = url.clone();
        let body = res
            .body
            .map_err(move |e| map(Op::on(&stream_url), "read download body", e));
        let obj = obj.unwrap_or_else(|| {
            let p = res.properties;
            let mut obj = RemoteObject::new(&url, key, p.content_length.unwrap_or(0));
            obj.etag = p.etag.map(|e| etag_text(&e));
            obj.content_type = p.content_type;
            obj.last_modified = p.last_modified.map(SystemTime::from);
            obj.version = p.version_id;
            obj.metadata = lower_keys(p.metadata);
            obj.headers = headers([
                p.cache_control,
                p.content_disposition,
                p.content_encoding,
                p.content_language,
            ]);
            obj
        });
        Ok((obj, Box::pin(body)))
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        let full = self.root.full(key);
        let url = self.root.url_full(&full);
        let blob = self.blob(&full);
        let rsp = self
            .retry
            .retry(&url, |_| async {
                blob.get_properties(None)
                    .await
                    .map_err(|e| map(Op::on(&url), "get blob properties", e))
            })
            .await?;
        self.props_to_object(key, &url, &rsp)
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let full_prefix = self.root.full(prefix);
        let target = self.root.url_full(&full_prefix);
        let prefix = (!full_prefix.is_empty()).then_some(full_prefix);
        // Items are mapped here, with a cheap clone of what they need.
        let root = self.root.clone();
        let container = self.client.container.clone();
        let policy = self.retry.clone();
        // Paged by marker, one retried request per page: a failure repeats
        // that page, not the listing.
        let pages = futures::stream::try_unfold(Some(None::<String>), move |state| {
            let (container, policy, target, prefix) = (
                container.clone(),
                policy.clone(),
                target.clone(),
                prefix.clone(),
            );
            async move {
                let Some(marker) = state else {
                    return Ok(None);
                };
                let model = policy
                    .retry(&target, |_| {
                        let options = BlobContainerClientListBlobsOptions {
                            prefix: prefix.clone(),
                            marker: marker.clone(),
                            include: Some(vec![ListBlobsIncludeItem::Metadata]),
                            ..Default::default()
                        };
                        let (container, target) = (&container, &target);
                        async move {
                            let pager = container
                                .list_blobs(Some(options))
                                .map_err(|e| map(Op::on(target), "list blobs", e))?;
                            let page = pager
                                .into_pages()
                                .next()
                                .await
                                .ok_or_else(|| {
                                    Error::backend(
                                        target,
                                        "list blobs returned no page",
                                        "empty pager",
                                    )
                                })?
                                .map_err(|e| map(Op::on(target), "list blobs", e))?;
                            page.into_model()
                                .map_err(|e| map(Op::on(target), "parse blob list", e))
                        }
                    })
                    .await?;
                let next = model
                    .next_marker
                    .clone()
                    .filter(|m| !m.is_empty())
                    .map(Some);
                Ok::<_, Error>(Some((model, next)))
            }
        });
        let pages = pages.map(move |model| {
            let model = model?;
            Ok::<_, Error>(futures::stream::iter(
                model
                    .blob_items
                    .into_iter()
                    .filter_map(|item| listed(&root, item))
                    .map(Ok)
                    .collect::<Vec<_>>(),
            ))
        });
        Box::pin(pages.try_flatten())
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let full = self.root.full(key);
        let url = self.root.url_full(&full);
        let options = BlobClientDeleteOptions {
            delete_snapshots: Some(DeleteSnapshotsOptionType::Include),
            ..Default::default()
        };
        let blob = self.blob(&full);
        let r = self
            .retry
            .retry(&url, |_| {
                let options = options.clone();
                let (blob, url) = (&blob, &url);
                async move {
                    blob.delete(Some(options))
                        .await
                        .map_err(|e| map(Op::on(url), "delete blob", e))
                }
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Blob Batch: up to 256 deletes a request (see `batch.rs`).
    async fn delete_many(&self, keys: &[Key]) -> Result<Vec<(Key, Result<()>)>> {
        crate::batch::delete_many(self, keys).await
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        let (src, dst) = (self.root.full(from), self.root.full(to));
        let (src_url, dst_url) = (self.root.url_full(&src), self.root.url_full(&dst));
        // Copy Blob keeps content type, other properties and metadata when
        // the request sets none. Same-account copies finish at once on Azure
        // and Azurite; larger or cross-region ones are polled.
        let blob = self.blob(&dst);
        let rsp = self
            .retry
            .retry(&dst_url, |_| async {
                blob.start_copy_from_url(self.authorized_url(&src), None)
                    .await
                    .map_err(|e| map(Op::on(&dst_url), "copy blob", e))
            })
            .await
            .map_err(|e| match e {
                Error::NotFound { source, .. } => Error::NotFound {
                    target: src_url.clone(),
                    source,
                },
                other => other,
            })?;
        let status = rsp
            .copy_status()
            .map_err(|e| map(Op::on(&dst_url), "copy blob", e))?;
        match status {
            None | Some(CopyStatus::Success) => {}
            Some(_) => self.wait_for_copy(&dst, &dst_url).await?,
        }
        self.stat(to).await
    }

    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        let account_key = self.account_key("presign")?;
        if method == PresignMethod::Get {
            // A link to nothing is a NotFound now rather than a 404 later.
            self.stat(key).await?;
        }
        let full = self.root.full(key);
        let expiry = expiry_after(expires_in);
        let se = sas::sas_time(expiry);
        let permissions = match method {
            PresignMethod::Get => "r",
            PresignMethod::Put => "cw",
        };
        let token = BlobSas {
            account: &self.cfg.account,
            container: &self.cfg.container,
            blob: &full,
            permissions,
            expiry: &se,
            protocol: sas::protocol_for(self.cfg.endpoint.scheme()),
            version: SAS_VERSION,
        }
        .token(account_key);
        let url = format!(
            "{}/{}/{}?{token}",
            self.cfg.endpoint.as_str().trim_end_matches('/'),
            encode_path(&self.cfg.container),
            encode_path(&full)
        );
        let mut p = PresignedUrl::new(url, method, SystemTime::from(expiry));
        if method == PresignMethod::Put {
            p.headers
                .push(("x-ms-blob-type".to_string(), "BlockBlob".to_string()));
        }
        Ok(p)
    }

    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported(
            &self.name,
            "list_pending_uploads (Azure keeps uncommitted blocks per blob and drops them after 7 days; they cannot be listed across blobs)",
        ))
    }
}

/// A listed blob as a record, if its name is under the store's prefix.
fn listed(root: &Root, item: BlobItem) -> Option<RemoteObject> {
    let full = item.name?;
    let key = root.key_of(&full)?.to_string();
    let props = item.properties.unwrap_or_default();
    let mut obj = RemoteObject::new(root.url_full(&full), key, props.content_length.unwrap_or(0));
    obj.etag = props.etag.map(|e| etag_text(&e));
    obj.content_type = props.content_type;
    obj.last_modified = props.last_modified.map(SystemTime::from);
    obj.version = item.version_id;
    obj.metadata = lower_keys(item.metadata.and_then(|m| m.values).unwrap_or_default());
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xferkit_core::{ErrorKind, Secret};

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    async fn store(endpoint: Option<&str>, prefix: &str) -> AzureStore {
        let mut c = AzureConfig::new("myaccount", "media");
        c.account_key = Some(Secret::new(KEY));
        c.endpoint = endpoint.map(str::to_string);
        c.prefix = prefix.into();
        AzureStore::new("main", c).await.unwrap()
    }

    #[tokio::test]
    async fn canonical_urls_round_trip_and_refuse_foreign_ones() {
        let s = store(None, "p/q").await;
        let url = s.url_for(&Key::new("a/b c#d.txt").unwrap());
        assert_eq!(url, "az://myaccount/media/p/q/a/b%20c%23d.txt");
        let parsed = ObjectUrl::parse(&url).unwrap();
        assert_eq!(s.key_for_url(&parsed).as_deref(), Some("a/b c#d.txt"));
        for foreign in [
            "az://other/media/p/q/k",
            "az://myaccount/other/p/q/k",
            "az://myaccount/media/p/k",
            "az://myaccount/media/p/qk",
            "az://myaccount/mediax/p/q/k",
            "s3://myaccount/media/p/q/k",
        ] {
            let p = ObjectUrl::parse(foreign).unwrap();
            assert_eq!(s.key_for_url(&p), None, "{foreign}");
        }
    }

    #[tokio::test]
    async fn request_urls_carry_the_name_as_one_segment() {
        let s = store(None, "").await;
        assert_eq!(
            s.blob("dir/a b+c%.txt").url().as_str(),
            "https://myaccount.blob.core.windows.net/media/dir%2Fa%20b+c%25.txt"
        );
        let s = store(Some("http://127.0.0.1:10000/devstoreaccount1/"), "").await;
        assert_eq!(
            s.blob("k").url().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/media/k"
        );
    }

    #[tokio::test]
    async fn presigned_put_url_shape() {
        let s = store(Some("http://127.0.0.1:10000/devstoreaccount1"), "p").await;
        let p = s
            .presign(
                &Key::new("a b/c.bin").unwrap(),
                PresignMethod::Put,
                Duration::from_secs(90),
            )
            .await
            .unwrap();
        assert!(
            p.url.starts_with(
                "http://127.0.0.1:10000/devstoreaccount1/media/p/a%20b/c.bin?sv=2022-11-02&spr=https%2Chttp&se="
            ),
            "{}",
            p.url
        );
        assert!(p.url.contains("&sr=b&sp=cw&sig="), "{}", p.url);
        assert_eq!(
            p.headers,
            vec![("x-ms-blob-type".to_string(), "BlockBlob".to_string())]
        );
        let left = p.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(88) && left <= Duration::from_secs(91),
            "{left:?}"
        );
        assert!(!format!("{p:?}").contains("sig="));
    }

    #[tokio::test]
    async fn debug_hides_the_key() {
        let s = store(None, "").await;
        let d = format!("{s:?}");
        assert!(!d.contains(KEY), "{d}");
        assert!(d.contains("account key"), "{d}");
    }

    #[tokio::test]
    async fn presign_needs_the_account_key() {
        let mut c = AzureConfig::new("myaccount", "media");
        c.sas_token = Some(Secret::new("sv=2022-11-02&sig=TOKEN"));
        let s = AzureStore::new("main", c).await.unwrap();
        let caps = s.capabilities();
        assert!(!caps.presign_get && !caps.presign_put && !caps.presign_verified);
        assert!(caps.range && caps.multipart && caps.copy && caps.conditional_create);
        let e = s
            .presign(
                &Key::new("k").unwrap(),
                PresignMethod::Put,
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
        assert!(!format!("{s:?} {e}").contains("TOKEN"));
        let e = s.list_pending_uploads("").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
    }

    #[test]
    fn expiry_rounds_up_to_a_second() {
        let t = expiry_after(Duration::from_millis(1500));
        assert_eq!(t.nanosecond(), 0);
        let left = t - OffsetDateTime::now_utc();
        assert!(
            left >= time::Duration::milliseconds(1400)
                && left <= time::Duration::milliseconds(2600)
        );
    }
}
