//! Downloads of plain `http(s)://` links, e.g. a presigned URL a sender
//! put in a message. Read-only: every other operation is `NotSupported`.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, FileTransferHandler, PendingUpload, PresignMethod,
    PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx, UploadSource, async_trait,
};

/// The store that owns every `http://` and `https://` URL; keys are the URLs.
#[derive(Debug, Clone)]
pub struct HttpStore {
    client: reqwest::Client,
}

impl Default for HttpStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A URL with its query (which may hold a signature) cut off, for messages.
fn shown(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

impl HttpStore {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpStore { client }
    }

    fn status_error(url: &str, status: reqwest::StatusCode) -> Error {
        let target = shown(url);
        let source = Some(format!("HTTP {status}").into());
        match status.as_u16() {
            404 | 410 => Error::NotFound { target, source },
            401 | 403 => Error::PermissionDenied { target, source },
            412 => Error::PreconditionFailed { target, source },
            416 => Error::InvalidRange {
                target,
                range: "requested".into(),
            },
            408 | 429 | 500..=599 => Error::Transient {
                target,
                retry_after: None,
                source,
            },
            _ => Error::Backend {
                target,
                message: format!("HTTP {status}"),
                source: None,
            },
        }
    }
}

#[async_trait]
impl FileTransferHandler for HttpStore {
    fn name(&self) -> &str {
        "http"
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.range = true;
        c
    }
    fn url_for(&self, key: &str) -> String {
        key.to_string()
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<String> {
        url.is_http().then(|| url.raw.clone())
    }
    async fn upload(
        &self,
        key: &str,
        _source: UploadSource,
        _opts: &PutOptions,
        _ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        Err(Error::not_supported(
            shown(key),
            "upload to a plain http(s) link",
        ))
    }
    async fn download_stream(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let mut req = self.client.get(key);
        if let Some(r) = range {
            req = req.header("range", r.to_http_header());
        }
        let resp = req.send().await.map_err(|e| Error::Transient {
            target: shown(key),
            retry_after: None,
            source: Some(e.without_url().into()),
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Self::status_error(key, status));
        }
        let len = resp.content_length().unwrap_or(0);
        let total = resp
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(len);
        let mut obj = RemoteObject::new(key, key, total);
        obj.etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string());
        obj.content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let target = shown(key);
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| Error::Transient {
                target: target.clone(),
                retry_after: None,
                source: Some(e.without_url().into()),
            })
        });
        Ok((obj, Box::pin(stream)))
    }
    async fn stat(&self, key: &str) -> Result<RemoteObject> {
        let resp = self
            .client
            .head(key)
            .send()
            .await
            .map_err(|e| Error::Transient {
                target: shown(key),
                retry_after: None,
                source: Some(e.without_url().into()),
            })?;
        if !resp.status().is_success() {
            return Err(Self::status_error(key, resp.status()));
        }
        Ok(RemoteObject::new(
            key,
            key,
            resp.content_length().unwrap_or(0),
        ))
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let e = Error::not_supported(shown(prefix), "listing a plain http(s) link");
        futures::stream::iter([Err(e)]).boxed()
    }
    async fn delete(&self, key: &str) -> Result<()> {
        Err(Error::not_supported(
            shown(key),
            "delete of a plain http(s) link",
        ))
    }
    async fn copy(&self, from: &str, _to: &str) -> Result<RemoteObject> {
        Err(Error::not_supported(
            shown(from),
            "copy of a plain http(s) link",
        ))
    }
    async fn presign(
        &self,
        key: &str,
        _method: PresignMethod,
        _expires_in: Duration,
    ) -> Result<PresignedUrl> {
        Err(Error::not_supported(
            shown(key),
            "presign of a plain http(s) link",
        ))
    }
    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported("http", "listing pending uploads"))
    }
}
