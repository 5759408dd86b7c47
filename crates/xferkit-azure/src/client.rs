//! The SDK client and how its requests are authorized.
//!
//! `azure_storage_blob` 1.x authorizes only with Entra ID bearer tokens
//! (and refuses them over plain http). For account keys and SAS tokens a
//! per-call pipeline policy appends a SAS to every request's query: a fixed
//! token from the configuration, or an account SAS minted from the key and
//! renewed before it expires (see `sas.rs`).
//!
//! Requests the SDK has no call for (Blob Batch, `batch.rs`) go through
//! [`Client::pipeline`]: the same policies and the same HTTP client.

use std::fmt;
use std::sync::{Arc, Mutex};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, HttpClientOptions, Pipeline, Request, RetryOptions, Transport, Url,
    new_http_client,
};
use azure_storage_blob::{BlobContainerClient, BlobContainerClientOptions};
use xferkit_core::{Error, Result};

use crate::config::{Credential, Resolved};
use crate::sas::SasSource;

/// Appends a SAS token to each call's URL (once per call, before retries).
#[derive(Debug)]
struct SasPolicy(Arc<SasSource>);

// The trait spells `&Context` without its lifetime; async_trait needs the
// impl to match it exactly.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        append_query(request.url_mut(), &self.0.token());
        match next.split_first() {
            Some((first, rest)) => first.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "SAS policy is the last policy of the pipeline",
            )),
        }
    }
}

/// The MD5 of a request's body, put into the call's [`Context`] by the
/// upload code; [`ContentMd5Policy`] sends it as `Content-MD5`.
#[derive(Debug, Clone)]
pub(crate) struct ContentMd5(pub String);

/// Sends a call's [`ContentMd5`] as the `Content-MD5` header, which the
/// service checks against the body it received (400 `Md5Mismatch` if they
/// differ). It exists for Put Blob: the SDK's managed upload has no option
/// for a transactional MD5 (Put Block has one, `transactional_content_md5`).
#[derive(Debug)]
struct ContentMd5Policy;

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl Policy for ContentMd5Policy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if let Some(ContentMd5(b64)) = ctx.value::<ContentMd5>() {
            request.insert_header("content-md5", b64.clone());
        }
        match next.split_first() {
            Some((first, rest)) => first.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "Content-MD5 policy is the last policy of the pipeline",
            )),
        }
    }
}

/// `url` with `extra` (an encoded query string) added to its query.
pub(crate) fn append_query(url: &mut Url, extra: &str) {
    let q = match url.query() {
        Some(q) if !q.is_empty() => format!("{q}&{extra}"),
        _ => extra.to_string(),
    };
    url.set_query(Some(&q));
}

/// The SDK client plus what requests need to be authorized.
pub(crate) struct Client {
    /// Shared so a `'static` list stream can hold it.
    pub container: Arc<BlobContainerClient>,
    /// The SAS appended to requests (and to copy sources), unless Entra ID.
    pub sas: Option<Arc<SasSource>>,
    /// The container client's policies (SAS, no retries) and HTTP client,
    /// for requests built here; no bearer token policy: with Entra ID it is
    /// not used.
    pub pipeline: Pipeline,
    /// The service version the SDK's requests name (`x-ms-version`).
    pub version: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("sas", &self.sas)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn new(cfg: &Resolved) -> Result<Self> {
        let sas = match &cfg.credential {
            Credential::AccountKey(key) => Some(Arc::new(SasSource::minted(
                &cfg.account,
                key.clone(),
                cfg.endpoint.scheme(),
            ))),
            Credential::Sas(token) => Some(Arc::new(SasSource::Fixed(token.clone()))),
            Credential::EntraId => None,
        };
        // Exactly one retry layer: xferkit's (`TransferCtx::retry` /
        // `RetryPolicy::retry` around each request), which sees throttling,
        // 5xx and connection failures as `Transient`. The SDK's own retries
        // would multiply attempts and hide RetryLater from callers.
        //
        // One HTTP client for the SDK's requests and the pipeline's, built
        // as the SDK builds its own (no automatic decompression).
        #[allow(clippy::needless_update)] // as the SDK: options may grow
        let mut client_options = ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(Transport::new(new_http_client(Some(HttpClientOptions {
                automatic_decompression: false,
                ..Default::default()
            })))),
            ..Default::default()
        };
        client_options
            .per_call_policies
            .push(Arc::new(ContentMd5Policy));
        let credential: Option<Arc<dyn TokenCredential>> = match &sas {
            Some(s) => {
                client_options
                    .per_call_policies
                    .push(Arc::new(SasPolicy(s.clone())));
                None
            }
            None => Some(entra_id_chain()?),
        };
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            client_options.clone(),
            Vec::new(),
            Vec::new(),
            None,
        );
        let options = BlobContainerClientOptions {
            client_options,
            ..Default::default()
        };
        let version = options.version.clone();
        // Blob names are pushed as one path segment onto the container URL
        // (so '/' in a name travels as %2F, which the service decodes).
        let mut container_url = cfg.endpoint.clone();
        match container_url.path_segments_mut() {
            Ok(mut segments) => {
                segments.pop_if_empty().push(&cfg.container);
            }
            Err(()) => {
                return Err(Error::invalid_config("endpoint cannot be a base URL"));
            }
        }
        let container = BlobContainerClient::new(container_url, credential, Some(options))
            .map_err(|e| {
                Error::invalid_config(format!(
                    "cannot create the Azure client: {}",
                    xferkit_core::url::redact(&e.to_string())
                ))
            })?;
        Ok(Client {
            container: Arc::new(container),
            sas,
            pipeline,
            version,
        })
    }
}

/// Microsoft Entra ID: the first of these that yields a token, remembered.
///
/// `azure_identity` 1.0 has no `DefaultAzureCredential`; this is the same
/// order other Azure SDKs use for it: a client secret from the environment
/// (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`), workload
/// identity (`AZURE_FEDERATED_TOKEN_FILE`), managed identity, then the
/// developer tools (Azure CLI, Azure Developer CLI).
struct ChainCredential {
    sources: Vec<(&'static str, Arc<dyn TokenCredential>)>,
    winner: Mutex<Option<usize>>,
}

impl fmt::Debug for ChainCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.sources.iter().map(|(n, _)| *n).collect();
        f.debug_struct("ChainCredential")
            .field("sources", &names)
            .finish()
    }
}

#[async_trait::async_trait]
impl TokenCredential for ChainCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let winner = *self.winner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = winner
            && let Some((_, c)) = self.sources.get(i)
        {
            return c.get_token(scopes, options).await;
        }
        let mut failures = Vec::new();
        for (i, (name, c)) in self.sources.iter().enumerate() {
            match c.get_token(scopes, options.clone()).await {
                Ok(t) => {
                    *self.winner.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                    return Ok(t);
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!(
                "no Microsoft Entra ID credential worked ({})",
                failures.join("; ")
            ),
        ))
    }
}

fn entra_id_chain() -> Result<Arc<dyn TokenCredential>> {
    use azure_identity::{
        ClientSecretCredential, DeveloperToolsCredential, ManagedIdentityCredential,
        WorkloadIdentityCredential,
    };
    let mut sources: Vec<(&'static str, Arc<dyn TokenCredential>)> = Vec::new();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(tenant), Some(client), Some(secret)) = (
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID"),
        var("AZURE_CLIENT_SECRET"),
    ) && let Ok(c) = ClientSecretCredential::new(
        &tenant,
        client,
        azure_core::credentials::Secret::new(secret),
        None,
    ) {
        sources.push(("environment client secret", c));
    }
    if var("AZURE_FEDERATED_TOKEN_FILE").is_some()
        && let Ok(c) = WorkloadIdentityCredential::new(None)
    {
        sources.push(("workload identity", c));
    }
    if let Ok(c) = ManagedIdentityCredential::new(None) {
        sources.push(("managed identity", c));
    }
    if let Ok(c) = DeveloperToolsCredential::new(None) {
        sources.push(("developer tools (az, azd)", c));
    }
    if sources.is_empty() {
        return Err(Error::invalid_config(
            "no credential is set and no Microsoft Entra ID credential is available",
        ));
    }
    Ok(Arc::new(ChainCredential {
        sources,
        winner: Mutex::new(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_appended() {
        let mut u = Url::parse("http://h/a/b?comp=block").unwrap();
        append_query(&mut u, "sv=1&sig=x");
        assert_eq!(u.as_str(), "http://h/a/b?comp=block&sv=1&sig=x");
        let mut u = Url::parse("http://h/a/b").unwrap();
        append_query(&mut u, "sv=1&sig=x");
        assert_eq!(u.as_str(), "http://h/a/b?sv=1&sig=x");
    }
}
