//! `GcsStore`: the `FileTransferHandler` implementation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use futures::stream::BoxStream;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::rewrite::RewriteObjectRequest;
use gcloud_storage::sign::{SignedURLError, SignedURLMethod, SignedURLOptions};
use xferkit_core::body;
use xferkit_core::key::Root;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, ErrorKind, FileTransferHandler, Key, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, RetryPolicy, ServerEncryption,
    TransferCtx, UploadSource, async_trait,
};

use crate::SCHEME;
use crate::client::{Gcs, Signer, map_sdk, remote_from_headers, to_remote};
use crate::config::GcsConfig;
use crate::sign::{EndpointStyle, MAX_EXPIRY, V4Request, encode_segment, sign_v4};
use crate::upload::Resumable;

/// A Google Cloud Storage bucket (or a prefix of one) as an xferkit store.
///
/// Uses the JSON API through gcloud-storage; uploads above
/// `multipart_threshold` are resumable uploads in `chunk_size` chunks. See
/// the crate documentation for the configuration keys.
#[derive(Debug)]
pub struct GcsStore {
    name: String,
    bucket: String,
    /// Keys, object names and `gs://` URLs.
    root: Root,
    threshold: u64,
    chunk_size: u64,
    gcs: Arc<Gcs>,
    /// For requests outside a transfer (stat, list, delete, copy, GET).
    retry: RetryPolicy,
    /// Journals of resumable uploads of files (resume after a crash).
    state_dir: Option<std::path::PathBuf>,
    /// The configured defaults of the server-side upload options.
    defaults: PutOptions,
}

/// The CMEK key name of `opts`: GCS needs a key name, and has no bucket key.
fn cmek(store: &str, opts: &PutOptions) -> Result<Option<String>> {
    match &opts.encryption {
        Some(ServerEncryption::Kms {
            key_id: Some(k),
            bucket_key: None,
        }) => Ok(Some(k.clone())),
        None => Ok(None),
        Some(_) => Err(Error::not_supported(
            store,
            "uploads with a KMS key but no key name (sse_kms_key_id), or with sse_bucket_key",
        )),
    }
}

/// The server-side upload options GCS honours, added to `c`.
fn server_options(mut c: Capabilities) -> Capabilities {
    c.storage_class = true;
    c.object_headers = true;
    c.sse_kms = true;
    c
}

/// `backend = "gcs"`: a [`GcsConfig`] table, the server-side upload options
/// GCS honours, the application's retry policy and journal directory.
#[async_trait]
impl xferkit_core::Backend for GcsStore {
    const KIND: &'static str = "gcs";
    type Config = GcsConfig;

    fn endpoints(config: &GcsConfig) -> Vec<String> {
        config.endpoint.iter().cloned().collect()
    }

    fn upload_options() -> Capabilities {
        server_options(Capabilities::default())
    }

    async fn build(
        name: &str,
        mut config: GcsConfig,
        ctx: &xferkit_core::BuildContext,
    ) -> Result<Self> {
        config.upload = ctx.upload.clone();
        Ok(GcsStore::new(name, config)
            .await?
            .with_retry_policy(ctx.retry.clone())
            .with_state_dir(ctx.state_dir.clone()))
    }
}

impl GcsStore {
    /// A store called `name` from `config` (its `[stores.NAME]` table);
    /// errors name keys relative to the table.
    ///
    /// Invalid configuration is `InvalidConfig` naming the key. No request is
    /// sent to the bucket; the credentials are resolved here (which, for the
    /// application-default chain on Google Cloud, asks the metadata server).
    pub async fn new(name: &str, config: GcsConfig) -> Result<Self> {
        config.validate()?;
        let caps = server_options(Capabilities::default());
        let defaults = config.upload.put_options(&caps)?;
        cmek(name, &defaults).map_err(|e| {
            xferkit_core::settings::invalid(
                "sse_kms_key_id",
                format_args!("and sse_bucket_key: {e}"),
            )
        })?;
        let gcs = Gcs::connect(name, &config).await?;
        Ok(GcsStore {
            name: name.to_string(),
            bucket: config.bucket.clone(),
            root: Root::new(SCHEME, &config.bucket, &config.prefix),
            threshold: config.multipart_threshold,
            chunk_size: config.chunk_size,
            gcs: Arc::new(gcs),
            retry: RetryPolicy::default(),
            state_dir: None,
            defaults,
        })
    }

    /// Keep a journal of each resumable upload of a file under
    /// `DIR/uploads/` (see [`xferkit_core::journal`]): running the same
    /// upload again after the process died continues the session from the
    /// offset GCS reports. The journal holds the session URI, which
    /// authorizes uploading to that one object until the session expires
    /// (a week): it is written owner-only. `None` (the default): no journal.
    pub fn with_state_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// Retry requests made outside a transfer (stat, list, delete, copy,
    /// opening a download) under `policy`. Uploads use the transfer's policy
    /// ([`TransferCtx::retry_policy`]). gcloud-storage is built without its
    /// retry middleware, so this is the only retry layer.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    async fn get_object(&self, full: &str, url: &str) -> Result<Object> {
        let req = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: full.to_string(),
            ..Default::default()
        };
        self.retry
            .retry(url, |_| async {
                self.gcs
                    .client
                    .get_object(&req)
                    .await
                    .map_err(|e| map_sdk(url, e))
            })
            .await
    }

    fn can_sign(&self) -> bool {
        !matches!(self.gcs.signer, Signer::None)
    }
}

#[async_trait]
impl FileTransferHandler for GcsStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        let sign = self.can_sign();
        c.presign_get = sign;
        c.presign_put = sign;
        // GCS checks V4 signatures and expiry (fake-gcs-server does not: the
        // conformance target switches this off).
        c.presign_verified = sign;
        c.range = true;
        c.conditional_create = true;
        c.multipart = true;
        // GCS has no API listing resumable upload sessions.
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
        let (full, url) = self.root.locate(key);
        let opts = &opts.or_defaults(&self.defaults);
        opts.check_server_options(&self.name, &url, &self.capabilities())?;
        let kms_key_name = cmek(&self.name, opts)?;
        let upload = Resumable {
            gcs: self.gcs.clone(),
            bucket: self.bucket.clone(),
            name: full,
            key: key.to_string(),
            target: url,
            content_type: opts.content_type_for(key),
            metadata: opts.metadata.clone(),
            create_only: opts.if_not_exists,
            headers: opts.headers.clone(),
            storage_class: opts.storage_class.clone(),
            kms_key_name,
        };
        upload.check_content_type()?;
        let plan = Resumable::plan(
            self.threshold,
            self.chunk_size,
            opts,
            self.state_dir.clone(),
        );
        xferkit_core::parts::upload(Arc::new(upload), &plan, source, ctx)
            .await
            .map_err(|e| match e {
                // With `if_not_exists`, a failed generation precondition means the key exists.
                Error::PreconditionFailed { target, source } if opts.if_not_exists => {
                    Error::AlreadyExists { target, source }
                }
                e => e,
            })
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let (full, url) = self.root.locate(key);
        let invalid = |r: ByteRange| Error::InvalidRange {
            target: url.clone(),
            range: r.to_string(),
        };
        if let Some(r) = range {
            // Refuse what no size satisfies (an empty bounded range, a zero
            // suffix) here: a malformed Range header is ignored, not refused.
            r.resolve(u64::MAX, &url)?;
        }
        // One GET: its headers carry the record (a range's Content-Range the
        // size), so each record comes from the answer that carries its bytes.
        let media = format!(
            "{}/b/{}/o/{}?alt=media",
            self.gcs.json_base,
            encode_segment(&self.bucket),
            encode_segment(&full)
        );
        let get = |_| {
            let rb = self.gcs.http.get(&media);
            let rb = match range {
                Some(r) => rb.header("Range", r.to_http_header()),
                None => rb,
            };
            self.gcs.send(&url, rb)
        };
        let resp = match (self.retry.retry(&url, get).await, range) {
            (Ok(resp), _) => resp,
            (Err(e), Some(r)) if e.kind() == ErrorKind::InvalidRange => {
                // A suffix of an empty object is the empty object: decide by the size.
                let obj = self.stat(key).await?;
                return match r.resolve(obj.size, &url) {
                    Ok(_) if obj.size == 0 => Ok((obj, Box::pin(futures::stream::empty()))),
                    _ => Err(invalid(r)),
                };
            }
            (Err(e), _) => return Err(e),
        };
        let partial = (resp.headers().get("content-range"))
            .and_then(|v| v.to_str().ok())
            .and_then(body::content_range);
        let mut remote = remote_from_headers(url.clone(), key.to_string(), resp.headers())?;
        if let Some((_, total)) = partial {
            remote.size = total;
        }
        let target = url.clone();
        let mut bytes: ByteStream =
            Box::pin((resp.bytes_stream()).map_err(move |e| map_sdk(&target, e.into())));
        // A server that ignored the range sent the whole object: cut it here.
        if let (None, Some(r)) = (partial, range) {
            bytes = body::slice(bytes, r.resolve(remote.size, &url).map_err(|_| invalid(r))?);
        }
        Ok((remote, bytes))
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        let (full, url) = self.root.locate(key);
        let obj = self.get_object(&full, &url).await?;
        Ok(to_remote(url, key.to_string(), &obj))
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let gcs = self.gcs.clone();
        let bucket = self.bucket.clone();
        let root = self.root.clone();
        let full_prefix = root.full(prefix);
        let target = root.url_full(&full_prefix);
        let policy = self.retry.clone();
        // State: the next page token, or None once the last page was read.
        // Each page is one retried request.
        let pages = futures::stream::try_unfold(Some(None::<String>), move |state| {
            let (gcs, bucket, full_prefix, root, target, policy) = (
                gcs.clone(),
                bucket.clone(),
                full_prefix.clone(),
                root.clone(),
                target.clone(),
                policy.clone(),
            );
            async move {
                let Some(page_token) = state else {
                    return Ok(None);
                };
                let req = ListObjectsRequest {
                    bucket: bucket.clone(),
                    prefix: (!full_prefix.is_empty()).then_some(full_prefix),
                    page_token,
                    ..Default::default()
                };
                let resp = policy
                    .retry(&target, |_| async {
                        gcs.client
                            .list_objects(&req)
                            .await
                            .map_err(|e| map_sdk(&target, e))
                    })
                    .await?;
                let items: Vec<Result<RemoteObject>> = resp
                    .items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|o| {
                        let key = root.key_of(&o.name)?;
                        // Objects no xferkit key can name (folder placeholders
                        // ending in '/', "a//b"...) are left out.
                        if Key::new(key).is_err() {
                            tracing::debug!(object = %o.name, "list: skipping an object whose name is not a valid key");
                            return None;
                        }
                        let url = root.url_full(&o.name);
                        Some(Ok(to_remote(url, key.to_string(), o)))
                    })
                    .collect();
                let next = resp.next_page_token.filter(|t| !t.is_empty()).map(Some);
                Ok(Some((futures::stream::iter(items), next)))
            }
        });
        Box::pin(pages.try_flatten())
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let (full, url) = self.root.locate(key);
        let req = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: full,
            ..Default::default()
        };
        let r = self
            .retry
            .retry(&url, |_| async {
                self.gcs
                    .client
                    .delete_object(&req)
                    .await
                    .map_err(|e| map_sdk(&url, e))
            })
            .await;
        match r {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        let (src, src_url) = self.root.locate(from);
        let (dst, dst_url) = self.root.locate(to);
        let source = self.get_object(&src, &src_url).await?;
        // State the destination's content type and metadata explicitly (the
        // source's), rather than rely on what an empty request body means.
        let meta = Object {
            content_type: source.content_type.clone(),
            content_encoding: source.content_encoding.clone(),
            content_disposition: source.content_disposition.clone(),
            content_language: source.content_language.clone(),
            cache_control: source.cache_control.clone(),
            metadata: source.metadata.clone(),
            ..Default::default()
        };
        let mut token = None;
        // Rewrite copies large objects over several calls; each returns a token.
        loop {
            let req = RewriteObjectRequest {
                source_bucket: self.bucket.clone(),
                source_object: src.clone(),
                destination_bucket: self.bucket.clone(),
                destination_object: dst.clone(),
                source_generation: (source.generation != 0).then_some(source.generation),
                rewrite_token: token.take(),
                destination_metadata: Some(meta.clone()),
                ..Default::default()
            };
            let resp = self
                .retry
                .retry(&dst_url, |_| async {
                    self.gcs
                        .client
                        .rewrite_object(&req)
                        .await
                        .map_err(|e| map_sdk(&src_url, e))
                })
                .await?;
            if resp.done {
                let obj = match resp.resource {
                    Some(o) => o,
                    None => self.get_object(&dst, &dst_url).await?,
                };
                return Ok(to_remote(dst_url, to.to_string(), &obj));
            }
            token = resp.rewrite_token;
            if token.is_none() {
                return Err(Error::backend(
                    &dst_url,
                    "copy (rewrite) is not done but gave no token to continue",
                    format!("from {src_url}"),
                ));
            }
        }
    }

    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        let (full, url) = self.root.locate(key);
        if !self.can_sign() {
            return Err(Error::not_supported(
                &self.name,
                "presign (signed URLs need a service-account key: set credentials_file)",
            ));
        }
        if expires_in > MAX_EXPIRY {
            return Err(Error::not_supported(
                &self.name,
                format!(
                    "presign for {}s (GCS signed URLs last at most 604800 s, 7 days)",
                    expires_in.as_secs()
                ),
            ));
        }
        if method == PresignMethod::Get {
            // A URL for a missing object is NotFound now rather than a 404 later.
            self.get_object(&full, &url).await?;
        }
        // Whole seconds, rounded up, at least one.
        let secs = expires_in
            .as_secs()
            .saturating_add(u64::from(expires_in.subsec_nanos() > 0))
            .max(1);
        let now = SystemTime::now();
        let verb = match method {
            PresignMethod::Get => "GET",
            PresignMethod::Put => "PUT",
        };
        let signed = match &self.gcs.signer {
            Signer::Key(k) => {
                let req = V4Request {
                    method: verb,
                    endpoint: &self.gcs.endpoint,
                    bucket: &self.bucket,
                    object: &full,
                    now,
                    expires_secs: secs,
                };
                sign_v4(k, &req).map_err(|e| Error::backend(&url, "signing failed", e))?
            }
            Signer::Iam => {
                let ep = &self.gcs.endpoint;
                let host = match (ep.host_str(), ep.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    (None, _) => String::new(),
                };
                let opts = SignedURLOptions {
                    method: match method {
                        PresignMethod::Get => SignedURLMethod::GET,
                        PresignMethod::Put => SignedURLMethod::PUT,
                    },
                    start_time: Some(now),
                    expires: Duration::from_secs(secs),
                    style: Box::new(EndpointStyle {
                        host,
                        base_path: ep.path().trim_end_matches('/').to_string(),
                    }),
                    insecure: ep.scheme() == "http",
                    ..Default::default()
                };
                self.gcs
                    .client
                    .signed_url(&self.bucket, &full, None, None, opts)
                    .await
                    .map_err(|e| match e {
                        SignedURLError::SignBlob(e) => map_sdk(&url, e),
                        other => Error::backend(&url, "signing failed", other),
                    })?
            }
            Signer::None => unreachable_signer(&self.name)?,
        };
        Ok(PresignedUrl::new(
            signed,
            method,
            now + Duration::from_secs(secs),
        ))
    }

    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported(
            &self.name,
            "listing pending uploads (GCS has no API listing resumable upload sessions; \
             failed uploads cancel their session)",
        ))
    }
}

/// `can_sign` was checked above; kept as an error rather than a panic.
fn unreachable_signer(store: &str) -> Result<String> {
    Err(Error::not_supported(store, "presign"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY_PEM: &str = include_str!("../tests/fixtures/TEST-ONLY-rsa-2048.pem");

    /// An anonymous store (no request is sent by `new`), optionally with the
    /// test key for signing.
    async fn store(prefix: &str, with_key: bool) -> (GcsStore, Option<tempfile::NamedTempFile>) {
        let mut c = GcsConfig::new("bkt");
        c.prefix = prefix.into();
        c.endpoint = Some("http://127.0.0.1:4443".into());
        c.anonymous = true;
        let key = with_key.then(|| {
            let f = tempfile::NamedTempFile::new().unwrap();
            let json = serde_json::json!({
                "type": "service_account",
                "client_email": "t@p.iam.gserviceaccount.com",
                "private_key": TEST_KEY_PEM,
            });
            std::fs::write(f.path(), json.to_string()).unwrap();
            f
        });
        c.credentials_file = key.as_ref().map(|f| f.path().to_path_buf());
        (GcsStore::new("media", c).await.unwrap(), key)
    }

    #[tokio::test]
    async fn new_rejects_bad_config_naming_the_key() {
        let mut c = GcsConfig::new("bkt");
        c.anonymous = true;
        c.chunk_size = 300 * 1024;
        let e = GcsStore::new("media", c).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("configuration: chunk_size "), "{e}");

        let e = GcsStore::new("media", GcsConfig::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("configuration: bucket is missing"),
            "{e}"
        );

        let mut c = GcsConfig::new("bkt");
        c.anonymous = true;
        c.credentials_file = Some("/nonexistent/xferkit/key.json".into());
        let e = GcsStore::new("media", c).await.unwrap_err();
        assert!(
            e.to_string().contains("configuration: credentials_file "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_broken_key_file_is_refused_without_quoting_it() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": "t@p.iam.gserviceaccount.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\nTOPSECRETbutbroken\n-----END PRIVATE KEY-----\n",
        });
        std::fs::write(f.path(), json.to_string()).unwrap();
        let mut c = GcsConfig::new("bkt");
        c.anonymous = true;
        c.credentials_file = Some(f.path().to_path_buf());
        let e = GcsStore::new("media", c).await.unwrap_err();
        assert!(
            e.to_string().contains("configuration: credentials_file "),
            "{e}"
        );
        assert!(!e.chain().contains("TOPSECRET"), "{}", e.chain());
        assert!(!format!("{e:?}").contains("TOPSECRET"));
    }

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let (s, _k) = store("p", true).await;
        let d = format!("{s:?}");
        assert!(d.contains("bkt") && d.contains("<redacted>"), "{d}");
        let body: String = TEST_KEY_PEM
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(20)
            .collect();
        assert!(!d.contains(&body) && !d.contains("PRIVATE KEY"), "{d}");
    }

    #[tokio::test]
    async fn capabilities_follow_the_signing_key() {
        let (s, _) = store("", false).await;
        let c = s.capabilities();
        assert!(!c.presign_get && !c.presign_put && !c.presign_verified);
        assert!(c.range && c.conditional_create && c.multipart && c.copy && c.metadata);
        assert!(!c.list_pending_uploads);
        let e = s
            .presign(
                &Key::new("a").unwrap(),
                PresignMethod::Put,
                Duration::from_secs(60),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
        let e = s.list_pending_uploads("").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);

        let (s, _k) = store("", true).await;
        let c = s.capabilities();
        assert!(c.presign_get && c.presign_put && c.presign_verified);
    }

    #[tokio::test]
    async fn presigned_urls_follow_the_endpoint() {
        let (s, _k) = store("pre/fix", true).await;
        // PUT signs without asking the service whether the object exists.
        let p = s
            .presign(
                &Key::new("a b/c.txt").unwrap(),
                PresignMethod::Put,
                Duration::from_millis(1500),
            )
            .await
            .unwrap();
        assert!(
            p.url.starts_with(
                "http://127.0.0.1:4443/bkt/pre/fix/a%20b/c.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&"
            ),
            "{}",
            p.url
        );
        assert!(
            p.url.contains("&X-Goog-Expires=2&"),
            "rounded up: {}",
            p.url
        );
        assert!(p.url.contains("&X-Goog-Signature="));
        assert!(!format!("{p:?}").contains("X-Goog-Signature"));
        let e = s
            .presign(
                &Key::new("k").unwrap(),
                PresignMethod::Put,
                Duration::from_secs(8 * 24 * 3600),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotSupported);
    }

    #[tokio::test]
    async fn urls_map_to_keys_only_in_this_store() {
        let (s, _) = store("p/q", false).await;
        let u = s.url_for(&Key::new("a/b#c.txt").unwrap());
        assert_eq!(u, "gs://bkt/p/q/a/b%23c.txt");
        let parse = |u: &str| ObjectUrl::parse(u).unwrap();
        assert_eq!(s.key_for_url(&parse(&u)).as_deref(), Some("a/b#c.txt"));
        assert_eq!(s.key_for_url(&parse("gs://other/p/q/a")), None);
        assert_eq!(s.key_for_url(&parse("gs://bkt/p/qa")), None);
        assert_eq!(s.key_for_url(&parse("gs://bkt/other/a")), None);
        assert_eq!(s.key_for_url(&parse("s3://bkt/p/q/a")), None);
    }
}
