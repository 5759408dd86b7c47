//! Downloads of plain `http(s)://` links, e.g. a presigned URL a sender
//! put in a message. Read-only: every other operation is `NotSupported`.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use xferkit_core::body;
use xferkit_core::status::{self, Answer};
use xferkit_core::url::{ObjectUrl, shown};
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

/// Longest wait for any bytes from a link's server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl HttpStore {
    pub fn new() -> Self {
        // A server that accepts and then says nothing must not hang a
        // transfer forever: a read that waits this long is a transient error
        // (retried, or resumed with a range).
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpStore { client }
    }

    /// What a GET response says about the whole object: size from
    /// `Content-Range` (ranged) or `Content-Length`, etag, content type.
    fn describe(key: &str, resp: &reqwest::Response) -> RemoteObject {
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
        let total = header("content-range")
            .and_then(body::content_range)
            .map(|(_, total)| total)
            .or_else(|| resp.content_length())
            .unwrap_or(0);
        let mut obj = RemoteObject::new(key, key, total);
        obj.etag = header("etag").map(|s| s.trim_start_matches("W/").trim_matches('"').to_string());
        obj.content_type = header("content-type").map(str::to_string);
        obj
    }

    /// The error for a link's non-2xx answer, from the one status table
    /// ([`xferkit_core::status`]): a link has no service error code, so the
    /// status decides (410 Gone is `NotFound`, as 404), with `Retry-After`.
    fn status_error(url: &str, resp: &reqwest::Response) -> Error {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(status::parse_retry_after);
        Answer::new(Some(status.as_u16()))
            .retry_after(retry_after)
            .operation("GET")
            .range("requested")
            .error(shown(url), format!("HTTP {status}"))
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
            return Err(Self::status_error(key, &resp));
        }
        let obj = Self::describe(key, &resp);
        let target = shown(key);
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| Error::Transient {
                target: target.clone(),
                retry_after: None,
                source: Some(e.without_url().into()),
            })
        });
        match range {
            // A server that ignores `Range` answers 200 with everything:
            // cut the wanted bytes out so callers never get the wrong ones.
            Some(r) if status.as_u16() == 200 => {
                let span = r.resolve(obj.size, &shown(key))?;
                Ok((obj, body::slice(Box::pin(stream), span)))
            }
            _ => Ok((obj, Box::pin(stream))),
        }
    }
    async fn stat(&self, key: &str) -> Result<RemoteObject> {
        // GET of the first byte, not HEAD: a presigned URL is signed for GET
        // only, and S3-style stores refuse a HEAD with it.
        let resp = self
            .client
            .get(key)
            .header("range", "bytes=0-0")
            .send()
            .await
            .map_err(|e| Error::Transient {
                target: shown(key),
                retry_after: None,
                source: Some(e.without_url().into()),
            })?;
        let status = resp.status();
        if status.as_u16() == 416 {
            // Only an empty object has no first byte: `Content-Range: bytes */0`.
            let mut obj = Self::describe(key, &resp);
            obj.size = 0;
            return Ok(obj);
        }
        if !status.is_success() {
            return Err(Self::status_error(key, &resp));
        }
        Ok(Self::describe(key, &resp))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A link's answers go through the shared status table, and a
    /// `Retry-After` reaches the error the retry layer reads.
    #[tokio::test]
    async fn link_statuses_map_through_the_shared_table() {
        use std::time::Duration;
        use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
        use xferkit_core::ErrorKind as K;

        // Nothing is forwarded: every request gets the injected answer.
        let proxy = FaultProxy::start("127.0.0.1:9").await.unwrap();
        let store = HttpStore::new();
        let link = format!("{}/f.bin?X-Amz-Signature=SECRETSIG", proxy.url());
        let answer = |fault| {
            proxy.set_rules(vec![Rule::new(fault)]);
            async {
                store
                    .download_stream(&link, None)
                    .await
                    .map(|_| ())
                    .unwrap_err()
            }
        };
        for (status, kind) in [
            (404, K::NotFound),
            (410, K::NotFound),
            (403, K::PermissionDenied),
            (409, K::Backend),
            (429, K::Transient),
            (500, K::Transient),
            (501, K::NotSupported),
            (503, K::Transient),
            (505, K::Backend),
        ] {
            let e = answer(Fault::Status(status)).await;
            assert_eq!(e.kind(), kind, "{status}: {}", e.chain());
            assert!(!e.chain().contains("SECRETSIG"), "{}", e.chain());
            assert!(e.chain().contains("/f.bin?…"), "{}", e.chain());
        }
        let e = answer(Fault::StatusRetryAfter(503, 4)).await;
        let Error::Transient { retry_after, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*retry_after, Some(Duration::from_secs(4)));
        assert!(e.chain().contains("HTTP 503"), "{}", e.chain());
        // stat reads the same way.
        proxy.set_rules(vec![Rule::new(Fault::StatusRetryAfter(429, 2))]);
        let e = store.stat(&link).await.unwrap_err();
        assert!(
            matches!(e, Error::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)),
            "{e:?}"
        );
    }
}
