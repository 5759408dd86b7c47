//! Downloads of plain `http(s)://` links, e.g. a presigned URL a sender
//! put in a message. Read-only: every other operation is `NotSupported`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use url::Url;
use xferkit_core::Key;
use xferkit_core::body;
use xferkit_core::status::{self, Answer};
use xferkit_core::url::{ObjectUrl, shown};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, FileTransferHandler, PendingUpload, PresignMethod,
    PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx, UploadSource, async_trait,
};

use crate::links::{Guard, LinkPolicy, Refusal};

/// The policy's refusal inside a reqwest error (raised by the guard).
fn refusal_in(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

/// The store that owns every `http://` and `https://` URL; its keys are
/// [`Key::for_link`]s, which carry the URL.
///
/// Every request follows a [`LinkPolicy`]: by default a link may not reach
/// this machine or its network, at most 5 redirects are followed (each
/// checked again), and an object may be at most 4 GiB.
#[derive(Debug, Clone)]
pub struct HttpStore {
    policy: Arc<LinkPolicy>,
    /// For URLs the policy checks: names resolve through the guard, no proxy.
    guarded: reqwest::Client,
    /// For trusted origins, allowed hosts, or everything with `allow_private`.
    open: reqwest::Client,
}

impl Default for HttpStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest wait for any bytes from a link's server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl HttpStore {
    /// A link store with the default (safe) policy.
    pub fn new() -> Self {
        Self::with_policy(LinkPolicy::default())
    }

    /// A link store following `policy`.
    pub fn with_policy(policy: LinkPolicy) -> Self {
        let policy = Arc::new(policy);
        // A server that accepts and then says nothing must not hang a
        // transfer forever: a read that waits this long is a transient error
        // (retried, or resumed with a range). Redirects are followed here,
        // one checked hop at a time.
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(READ_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
        };
        let resolver = |check| {
            Arc::new(Guard {
                policy: policy.clone(),
                check,
            })
        };
        let guarded = builder()
            .no_proxy()
            .dns_resolver(resolver(true))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let open = builder()
            .dns_resolver(resolver(false))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        HttpStore {
            policy,
            guarded,
            open,
        }
    }

    /// The policy this store follows.
    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// GET `link` (with `range`), following redirects the policy allows;
    /// the final answer, whatever its status.
    async fn get(&self, link: &str, range: Option<String>) -> Result<reqwest::Response> {
        let mut url =
            Url::parse(link).map_err(|e| Error::invalid_url(shown(link), e.to_string()))?;
        let mut hops = 0;
        loop {
            let target = shown(url.as_str());
            let refuse = |why: String| {
                let why = match hops {
                    0 => why,
                    n => format!("{why} (after {n} redirect(s) from {})", shown(link)),
                };
                Error::refused(target.clone(), why)
            };
            if let Some(why) = self.policy.check_url(&url) {
                return Err(refuse(why));
            }
            let client = if self.policy.unguarded(&url) {
                &self.open
            } else {
                &self.guarded
            };
            let mut req = client.get(url.clone());
            if let Some(r) = &range {
                req = req.header("range", r);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Err(match refusal_in(&e) {
                        Some(why) => refuse(why),
                        None => Error::Transient {
                            target,
                            retry_after: None,
                            source: Some(e.without_url().into()),
                        },
                    });
                }
            };
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok());
            let (true, Some(location)) = (resp.status().is_redirection(), location) else {
                return Ok(resp);
            };
            if hops == self.policy.max_redirects {
                return Err(refuse(format!(
                    "it redirects more than [links] max_redirects = {} times",
                    self.policy.max_redirects
                )));
            }
            url = url
                .join(location)
                .map_err(|e| refuse(format!("it redirects to an invalid URL: {e}")))?;
            hops += 1;
        }
    }

    /// The link `key` carries; `InvalidKey` for a key not made by
    /// [`Key::for_link`] (a name in some store's namespace).
    fn link(key: &Key) -> Result<&str> {
        key.link().ok_or_else(|| {
            Error::invalid_key(
                key.as_str(),
                "not a link: this store serves http(s) URLs only",
            )
        })
    }

    /// Refuse an object larger than `max_size`.
    fn check_size(&self, link: &str, size: u64) -> Result<()> {
        if size <= self.policy.max_size {
            return Ok(());
        }
        Err(Error::refused(shown(link), self.too_large(size)))
    }

    fn too_large(&self, size: impl fmt::Display) -> String {
        format!(
            "it is {size} bytes, more than [links] max_size = {} bytes; raise max_size to fetch it",
            self.policy.max_size
        )
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
    fn schemes(&self) -> &[&str] {
        &["http", "https"]
    }
    fn url_for(&self, key: &Key) -> String {
        key.link().unwrap_or(key.as_str()).to_string()
    }
    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        Key::for_link(url)
    }
    async fn upload(
        &self,
        key: &Key,
        _source: UploadSource,
        _opts: &PutOptions,
        _ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        Err(Error::not_supported(
            shown(&self.url_for(key)),
            "upload to a plain http(s) link",
        ))
    }
    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let key = Self::link(key)?;
        let resp = self.get(key, range.map(|r| r.to_http_header())).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Self::status_error(key, &resp));
        }
        let obj = Self::describe(key, &resp);
        self.check_size(key, obj.size)?;
        let target = shown(key);
        // The bytes received count too: a body without a length (chunked)
        // or longer than it said ends in an error at the cap.
        let (max, mut received) = (self.policy.max_size, 0u64);
        let too_large = self.too_large(format!("more than {max}"));
        let stream = resp.bytes_stream().map(move |r| {
            let chunk = r.map_err(|e| Error::Transient {
                target: target.clone(),
                retry_after: None,
                source: Some(e.without_url().into()),
            })?;
            received += chunk.len() as u64;
            if received > max {
                return Err(Error::refused(target.clone(), too_large.clone()));
            }
            Ok(chunk)
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
    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        // GET of the first byte, not HEAD: a presigned URL is signed for GET
        // only, and S3-style stores refuse a HEAD with it.
        let key = Self::link(key)?;
        let resp = self.get(key, Some("bytes=0-0".into())).await?;
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
        let obj = Self::describe(key, &resp);
        self.check_size(key, obj.size)?;
        Ok(obj)
    }
    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let e = Error::not_supported(shown(prefix), "listing a plain http(s) link");
        futures::stream::iter([Err(e)]).boxed()
    }
    async fn delete(&self, key: &Key) -> Result<()> {
        Err(Error::not_supported(
            shown(&self.url_for(key)),
            "delete of a plain http(s) link",
        ))
    }
    async fn copy(&self, from: &Key, _to: &Key) -> Result<RemoteObject> {
        Err(Error::not_supported(
            shown(&self.url_for(from)),
            "copy of a plain http(s) link",
        ))
    }
    async fn presign(
        &self,
        key: &Key,
        _method: PresignMethod,
        _expires_in: Duration,
    ) -> Result<PresignedUrl> {
        Err(Error::not_supported(
            shown(&self.url_for(key)),
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

    fn link_key(link: &str) -> Key {
        Key::for_link(&ObjectUrl::parse(link).unwrap()).unwrap()
    }

    /// A link's answers go through the shared status table, and a
    /// `Retry-After` reaches the error the retry layer reads.
    #[tokio::test]
    async fn link_statuses_map_through_the_shared_table() {
        use std::time::Duration;
        use xferkit_conformance::fault::{Fault, FaultProxy, Rule};
        use xferkit_core::ErrorKind as K;

        // Nothing is forwarded: every request gets the injected answer.
        let proxy = FaultProxy::start("127.0.0.1:9").await.unwrap();
        let store = HttpStore::with_policy(crate::LinkPolicy {
            allow_private: true,
            ..Default::default()
        });
        let link = format!("{}/f.bin?X-Amz-Signature=SECRETSIG", proxy.url());
        let answer = |fault| {
            proxy.set_rules(vec![Rule::new(fault)]);
            async {
                store
                    .download_stream(&link_key(&link), None)
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
        let e = store.stat(&link_key(&link)).await.unwrap_err();
        assert!(
            matches!(e, Error::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)),
            "{e:?}"
        );
    }
}
