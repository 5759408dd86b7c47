//! `AzureConfig`: the keys of one `[stores.NAME]` table with `backend = "azure"`,
//! and their resolution into an endpoint and one credential.

use std::fmt;

use url::Url;
use xferkit_core::settings;
use xferkit_core::{Error, Result, Secret};

use crate::sas::AccountKey;

const MIB: u64 = 1024 * 1024;

/// Largest block Azure accepts (service version 2019-12-12 and later): 4000 MiB.
pub(crate) const MAX_BLOCK_SIZE: u64 = 4000 * MIB;
/// Largest single Put Blob (service version 2019-12-12 and later): 5000 MiB.
pub(crate) const MAX_SINGLE_PUT: u64 = 5000 * MIB;
/// A block blob has at most 50 000 committed blocks.
pub(crate) const MAX_BLOCKS: u64 = 50_000;

/// Azurite's well-known development account (public, documented by Microsoft),
/// used for `UseDevelopmentStorage=true` connection strings.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Configuration of an Azure Blob Storage store.
///
/// Give at most one credential: `connection_string`, `account_key` or
/// `sas_token`. With none, Microsoft Entra ID is used (environment client
/// secret, workload identity, managed identity, then Azure CLI / Azure
/// Developer CLI), which needs an `https` endpoint.
#[derive(Clone, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AzureConfig {
    /// Storage account name. Required unless `connection_string` names it
    /// (`AccountName=`). Also the authority of canonical URLs
    /// (`az://ACCOUNT/CONTAINER/KEY`).
    pub account: String,
    /// Blob container name. Required.
    pub container: String,
    /// Key prefix inside the container under which this store lives (no
    /// leading or trailing `/`). Default: the whole container.
    pub prefix: String,
    /// Blob service endpoint, e.g. `http://127.0.0.1:10000/devstoreaccount1`
    /// for Azurite or `https://files.example.com` for a custom domain.
    /// Default: `BlobEndpoint` of `connection_string`, else
    /// `https://ACCOUNT.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// A storage connection string (`AccountName=…;AccountKey=…` or
    /// `BlobEndpoint=…;SharedAccessSignature=…`, or
    /// `UseDevelopmentStorage=true`). Secret.
    pub connection_string: Option<Secret>,
    /// The storage account key (base64), as shown in the portal. Secret.
    /// Enables presigned URLs (service SAS).
    pub account_key: Option<Secret>,
    /// A SAS token (`sv=…&sig=…`, with or without the leading `?`) with read,
    /// write, delete, list, add and create permissions on the container.
    /// Secret. Presigned URLs are not available with it.
    pub sas_token: Option<Secret>,
    /// Uploads larger than this many bytes are sent as staged blocks; smaller
    /// ones as a single Put Blob. Default 16 MiB, at most 5000 MiB.
    pub multipart_threshold: u64,
    /// Block size in bytes for staged uploads. Default 8 MiB, at most
    /// 4000 MiB. Raised automatically for files that would need more than
    /// 50 000 blocks.
    pub block_size: u64,
    /// Blocks uploaded at once per upload. Default 4. Memory used by one
    /// upload is about `concurrency × block_size`.
    pub concurrency: usize,
    /// Defaults of the server-side upload options (`storage_class`: the
    /// access tier, the four headers, `encryption_scope`), under each
    /// upload's own.
    /// (Read from the same table by the facade; `#[serde(skip)]` here so the
    /// other keys keep their names in errors.)
    #[serde(skip)]
    pub upload: xferkit_core::UploadDefaults,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            account: String::new(),
            container: String::new(),
            prefix: String::new(),
            endpoint: None,
            connection_string: None,
            account_key: None,
            sas_token: None,
            multipart_threshold: 16 * MIB,
            block_size: 8 * MIB,
            concurrency: 4,
            upload: Default::default(),
        }
    }
}

impl fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets print as <redacted>; an endpoint with a query (a SAS put in
        // the wrong key) is shown without it.
        f.debug_struct("AzureConfig")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("prefix", &self.prefix)
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(xferkit_core::url::shown),
            )
            .field("connection_string", &self.connection_string)
            .field("account_key", &self.account_key)
            .field("sas_token", &self.sas_token)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("block_size", &self.block_size)
            .field("concurrency", &self.concurrency)
            .field("upload", &self.upload)
            .finish()
    }
}

/// How requests are authorized.
#[derive(Clone)]
pub(crate) enum Credential {
    /// Account SAS tokens are minted from the key (and presigned URLs signed).
    AccountKey(AccountKey),
    /// A fixed SAS token (no leading `?`).
    Sas(Secret),
    /// Microsoft Entra ID bearer tokens.
    EntraId,
}

impl Credential {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Credential::AccountKey(_) => "account key (account SAS)",
            Credential::Sas(_) => "SAS token",
            Credential::EntraId => "Microsoft Entra ID",
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub account: String,
    pub container: String,
    pub prefix: String,
    /// Service endpoint without query or trailing `/`.
    pub endpoint: Url,
    pub credential: Credential,
    pub multipart_threshold: u64,
    pub block_size: u64,
    pub concurrency: usize,
}

/// The parts of a connection string this backend uses.
#[derive(Default)]
struct ConnectionString {
    account_name: Option<String>,
    account_key: Option<String>,
    blob_endpoint: Option<String>,
    sas: Option<String>,
    protocol: Option<String>,
    endpoint_suffix: Option<String>,
    development: bool,
}

/// Parse `Key=Value;Key=Value`. Keys are case-insensitive; values may hold
/// `=` (base64 keys, SAS tokens). Errors never quote the string, only key names.
fn parse_connection_string(s: &str) -> std::result::Result<ConnectionString, String> {
    let mut cs = ConnectionString::default();
    for part in s.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err("has a segment without '=' (expected Key=Value;Key=Value)".into());
        };
        let v = v.trim().to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "accountname" => cs.account_name = Some(v),
            "accountkey" => cs.account_key = Some(v),
            "blobendpoint" => cs.blob_endpoint = Some(v),
            "sharedaccesssignature" => cs.sas = Some(v),
            "defaultendpointsprotocol" => cs.protocol = Some(v),
            "endpointsuffix" => cs.endpoint_suffix = Some(v),
            "usedevelopmentstorage" => cs.development = v.eq_ignore_ascii_case("true"),
            // Endpoints of other services and unknown keys do not concern blobs.
            _ => {}
        }
    }
    if cs.development {
        cs.account_name.get_or_insert_with(|| DEV_ACCOUNT.into());
        cs.account_key.get_or_insert_with(|| DEV_KEY.into());
        cs.blob_endpoint.get_or_insert_with(|| DEV_ENDPOINT.into());
    }
    if cs.account_key.is_some() && cs.sas.is_some() {
        return Err("holds both AccountKey and SharedAccessSignature; keep one".into());
    }
    Ok(cs)
}

impl AzureConfig {
    /// A configuration for `container` of `account` with every other key at
    /// its default (Entra ID until a credential is set).
    pub fn new(account: impl Into<String>, container: impl Into<String>) -> Self {
        AzureConfig {
            account: account.into(),
            container: container.into(),
            ..Default::default()
        }
    }

    /// Check every key and pick the credential; errors name the key
    /// relative to the table (`account = …`) and never show a secret.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let bad =
            |key: &str, what: String| -> Result<Resolved> { Err(settings::invalid(key, what)) };

        // Exactly one credential.
        let given: Vec<&str> = [
            ("connection_string", self.connection_string.is_some()),
            ("account_key", self.account_key.is_some()),
            ("sas_token", self.sas_token.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        if given.len() > 1 {
            return Err(Error::invalid_config(format!(
                "{} are all set; give exactly one credential (or none for Microsoft Entra ID)",
                given.join(" and ")
            )));
        }

        let cs = match &self.connection_string {
            Some(s) => match parse_connection_string(s.expose()) {
                Ok(cs) => Some(cs),
                Err(why) => return bad("connection_string", why),
            },
            None => None,
        };

        // Account.
        let cs_account = cs.as_ref().and_then(|c| c.account_name.clone());
        let account = match (self.account.trim(), cs_account) {
            ("", Some(a)) => a,
            ("", None) => {
                return bad(
                    "account",
                    "is missing (the storage account name, e.g. \"mystorageaccount\")".into(),
                );
            }
            (a, Some(c)) if a != c => {
                return bad(
                    "account",
                    format!("= {a:?} differs from AccountName {c:?} in connection_string"),
                );
            }
            (a, _) => a.to_string(),
        };
        if !account
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            || account.len() < 3
            || account.len() > 24
        {
            return bad(
                "account",
                format!(
                    "= {account:?} is not a storage account name (3-24 lower-case letters and digits)"
                ),
            );
        }

        // Container.
        let container =
            settings::required("container", &self.container, "the blob container name")?
                .to_string();
        let container_ok = container.len() >= 3
            && container.len() <= 63
            && container
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !container.starts_with('-')
            && !container.ends_with('-')
            && !container.contains("--");
        if !container_ok && container != "$root" {
            return bad(
                "container",
                format!(
                    "= {container:?} is not a container name (3-63 lower-case letters, digits and single '-'; put a key prefix in `prefix`)"
                ),
            );
        }

        let prefix = settings::prefix("prefix", &self.prefix)?;

        // Endpoint: explicit key, then the connection string, then Azure's default.
        let (endpoint_key, endpoint_str) = if let Some(ep) = &self.endpoint {
            ("endpoint", ep.clone())
        } else if let Some(ep) = cs.as_ref().and_then(|c| c.blob_endpoint.clone()) {
            ("connection_string", ep)
        } else {
            let (proto, suffix) = cs
                .as_ref()
                .map(|c| {
                    (
                        c.protocol.clone().unwrap_or_else(|| "https".into()),
                        c.endpoint_suffix
                            .clone()
                            .unwrap_or_else(|| "core.windows.net".into()),
                    )
                })
                .unwrap_or_else(|| ("https".into(), "core.windows.net".into()));
            ("endpoint", format!("{proto}://{account}.blob.{suffix}"))
        };
        let endpoint = settings::endpoint(endpoint_key, &endpoint_str)?;

        // Credential.
        let key_credential = |k: &str, which: &str| -> Result<Credential> {
            AccountKey::from_base64(k)
                .map(Credential::AccountKey)
                .ok_or_else(|| {
                    Error::invalid_config(format!(
                        "{} {which} is not valid base64 (copy the key from the portal)",
                        if which == "AccountKey" {
                            "connection_string"
                        } else {
                            "account_key"
                        }
                    ))
                })
        };
        let sas_credential = |t: &str, key: &str| -> Result<Credential> {
            let t = t.trim().trim_start_matches('?');
            if !t.split('&').any(|p| p.starts_with("sig=")) {
                return Err(Error::invalid_config(format!(
                    "{key} does not look like a SAS token (no sig= parameter)"
                )));
            }
            Ok(Credential::Sas(Secret::new(t)))
        };
        let credential = if let Some(k) = &self.account_key {
            key_credential(k.expose(), "value")?
        } else if let Some(t) = &self.sas_token {
            sas_credential(t.expose(), "sas_token")?
        } else if let Some(cs) = &cs {
            match (&cs.account_key, &cs.sas) {
                (Some(k), _) => key_credential(k, "AccountKey")?,
                (None, Some(t)) => sas_credential(t, "connection_string")?,
                (None, None) => Credential::EntraId,
            }
        } else {
            Credential::EntraId
        };
        if matches!(credential, Credential::EntraId) && endpoint.scheme() != "https" {
            return Err(Error::invalid_config(format!(
                "no credential is set, so Microsoft Entra ID is used, and it needs an https endpoint (got {}); set account_key, sas_token or connection_string",
                endpoint
            )));
        }

        // Sizes.
        let single = " bytes (5000 MiB, Azure's largest single Put Blob)";
        settings::within(
            "multipart_threshold",
            self.multipart_threshold,
            1..=MAX_SINGLE_PUT,
            single,
        )?;
        let block = " bytes (4000 MiB, Azure's largest block)";
        settings::within("block_size", self.block_size, 1..=MAX_BLOCK_SIZE, block)?;
        if usize::try_from(self.block_size).is_err() {
            return bad(
                "block_size",
                "does not fit in memory on this platform".into(),
            );
        }
        settings::within("concurrency", self.concurrency, 1..=64, "")?;

        Ok(Resolved {
            account,
            container,
            prefix,
            endpoint,
            credential,
            multipart_threshold: self.multipart_threshold,
            block_size: self.block_size,
            concurrency: self.concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xferkit_core::ErrorKind;

    const KEY: &str = DEV_KEY;

    fn with_key() -> AzureConfig {
        let mut c = AzureConfig::new("myaccount", "media");
        c.account_key = Some(Secret::new(KEY));
        c
    }

    fn err(c: &AzureConfig) -> String {
        let e = c.resolve().expect_err("config should be refused");
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        e.to_string()
    }

    #[test]
    fn defaults_and_default_endpoint() {
        let r = with_key().resolve().unwrap();
        assert_eq!(
            r.endpoint.as_str(),
            "https://myaccount.blob.core.windows.net/"
        );
        assert_eq!(r.multipart_threshold, 16 * MIB);
        assert_eq!(r.block_size, 8 * MIB);
        assert_eq!(r.concurrency, 4);
        assert!(matches!(r.credential, Credential::AccountKey(_)));
    }

    #[test]
    fn missing_required_keys_are_named() {
        let mut c = with_key();
        c.container.clear();
        assert!(err(&c).contains("container is missing"));
        let mut c = with_key();
        c.account.clear();
        assert!(err(&c).contains("account is missing"));
    }

    #[test]
    fn bad_values_are_named() {
        let named = |edit: fn(&mut AzureConfig), key: &str| {
            let mut c = with_key();
            edit(&mut c);
            let m = err(&c);
            let relative = format!("invalid configuration: {key} ");
            assert!(m.starts_with(&relative), "{m}");
            m
        };
        named(|c| c.container = "Has/Slash".into(), "container");
        named(|c| c.account = "Not_An_Account".into(), "account");
        named(|c| c.block_size = 0, "block_size");
        named(|c| c.concurrency = 0, "concurrency");
        named(|c| c.multipart_threshold = 0, "multipart_threshold");
        named(|c| c.prefix = "a/../b".into(), "prefix");
        named(|c| c.endpoint = Some("ftp://x".into()), "endpoint");
        let q = |c: &mut AzureConfig| c.endpoint = Some("https://a.b/?sv=1&sig=SECRETSIG".into());
        let m = named(q, "endpoint");
        assert!(!m.contains("SECRETSIG"), "{m}");
        let m = named(
            |c| c.account_key = Some(Secret::new("not base64 !!")),
            "account_key",
        );
        assert!(!m.contains("not base64 !!"), "{m}");
    }

    #[test]
    fn more_than_one_credential_names_the_keys() {
        let mut c = with_key();
        c.sas_token = Some(Secret::new("sv=x&sig=y"));
        let m = err(&c);
        assert!(m.contains("account_key"), "{m}");
        assert!(m.contains("sas_token"), "{m}");
        let mut c = with_key();
        c.connection_string = Some(Secret::new("AccountName=myaccount;AccountKey=abcd"));
        let m = err(&c);
        assert!(
            m.contains("connection_string") && m.contains("account_key"),
            "{m}"
        );
    }

    #[test]
    fn entra_id_needs_https() {
        let mut c = AzureConfig::new("myaccount", "media");
        assert!(matches!(
            c.resolve().unwrap().credential,
            Credential::EntraId
        ));
        c.endpoint = Some("http://127.0.0.1:10000/devstoreaccount1".into());
        assert!(err(&c).contains("https"));
    }

    #[test]
    fn sas_token_is_checked_and_trimmed() {
        let mut c = AzureConfig::new("myaccount", "media");
        c.sas_token = Some(Secret::new("?sv=2022-11-02&sig=abc"));
        match c.resolve().unwrap().credential {
            Credential::Sas(t) => assert_eq!(t.expose(), "sv=2022-11-02&sig=abc"),
            other => panic!("{other:?}"),
        }
        c.sas_token = Some(Secret::new("sv=2022-11-02"));
        assert!(err(&c).contains("sas_token"));
    }

    #[test]
    fn connection_string_with_key_and_endpoint() {
        let mut c = AzureConfig::new("", "media");
        c.connection_string = Some(Secret::new(format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
        )));
        let r = c.resolve().unwrap();
        assert_eq!(r.account, "devstoreaccount1");
        assert_eq!(
            r.endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );
        assert!(matches!(r.credential, Credential::AccountKey(_)));
    }

    #[test]
    fn connection_string_with_suffix_and_protocol() {
        let mut c = AzureConfig::new("", "media");
        c.connection_string = Some(Secret::new(format!(
            "defaultendpointsprotocol=https;accountname=myaccount;accountkey={KEY};endpointsuffix=core.chinacloudapi.cn"
        )));
        let r = c.resolve().unwrap();
        assert_eq!(
            r.endpoint.as_str(),
            "https://myaccount.blob.core.chinacloudapi.cn/"
        );
    }

    #[test]
    fn connection_string_with_sas() {
        let mut c = AzureConfig::new("myaccount", "media");
        c.connection_string = Some(Secret::new(
            "BlobEndpoint=https://myaccount.blob.core.windows.net;SharedAccessSignature=sv=2022-11-02&ss=b&sig=abc%3D",
        ));
        let r = c.resolve().unwrap();
        match r.credential {
            Credential::Sas(t) => assert_eq!(t.expose(), "sv=2022-11-02&ss=b&sig=abc%3D"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn development_storage_connection_string() {
        let mut c = AzureConfig::new("", "media");
        c.connection_string = Some(Secret::new("UseDevelopmentStorage=true"));
        let r = c.resolve().unwrap();
        assert_eq!(r.account, DEV_ACCOUNT);
        assert_eq!(r.endpoint.as_str(), DEV_ENDPOINT);
        assert!(matches!(r.credential, Credential::AccountKey(_)));
    }

    #[test]
    fn connection_string_errors_name_the_key_not_the_value() {
        let mut c = AzureConfig::new("", "media");
        c.connection_string = Some(Secret::new(
            "AccountName=myaccount;AccountKey=SECRET!!;junk",
        ));
        let m = err(&c);
        assert!(m.contains("connection_string"), "{m}");
        assert!(!m.contains("SECRET"), "{m}");
        c.connection_string = Some(Secret::new("AccountName=myaccount;AccountKey=SECRET!!"));
        let m = err(&c);
        assert!(
            m.contains("connection_string") && m.contains("AccountKey"),
            "{m}"
        );
        assert!(!m.contains("SECRET"), "{m}");
        c.connection_string = Some(Secret::new(format!("AccountName=other;AccountKey={KEY}")));
        c.account = "myaccount".into();
        assert!(err(&c).contains("account"));
        c.account.clear();
        c.connection_string = Some(Secret::new(format!(
            "AccountName=myaccount;AccountKey={KEY};SharedAccessSignature=sv=1&sig=2"
        )));
        assert!(err(&c).contains("both AccountKey and SharedAccessSignature"));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = with_key();
        c.endpoint = Some("https://x.example/?sig=ENDPOINTSIG".into());
        let d = format!("{c:?}");
        assert!(!d.contains(KEY) && !d.contains("ENDPOINTSIG"), "{d}");
        let mut c = AzureConfig::new("myaccount", "media");
        c.sas_token = Some(Secret::new("sv=1&sig=TOKENSIG"));
        c.connection_string = Some(Secret::new("AccountKey=CSKEY"));
        let d = format!("{c:?}");
        assert!(!d.contains("TOKENSIG") && !d.contains("CSKEY"), "{d}");
        let r = with_key().resolve().unwrap();
        let d = format!("{r:?}");
        assert!(!d.contains(KEY), "{d}");
    }

    #[test]
    fn keys_list_every_field() {
        let json = serde_json::json!({
            "account": "myaccount", "container": "media", "prefix": "p",
            "endpoint": "https://e.example", "connection_string": "x", "account_key": "y",
            "sas_token": "z", "multipart_threshold": 1, "block_size": 2, "concurrency": 3,
            "storage_class": "Cool", "cache_control": "c", "content_disposition": "d",
            "content_encoding": "e", "content_language": "l", "encryption_scope": "s"
        });
        let mut want: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        want.sort_unstable();
        let mut keys = <crate::AzureStore as xferkit_core::Backend>::keys();
        keys.sort_unstable();
        assert_eq!(keys, want);
        let c: AzureConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            (c.multipart_threshold, c.block_size, c.concurrency),
            (1, 2, 3)
        );
    }
}
