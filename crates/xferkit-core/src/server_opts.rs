//! Server-side upload options: the standard headers stored with an object,
//! storage class, server-side encryption and tags ([`PutOptions`] fields),
//! the capability check every backend makes before sending anything, and
//! the per-store defaults of the config ([`UploadDefaults`]).

use std::collections::BTreeMap;

use crate::settings;
use crate::{Capabilities, Error, PutOptions, Result, Secret};

/// The standard HTTP headers a store keeps with an object and sends back on
/// every download of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectHeaders {
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
}

impl ObjectHeaders {
    /// The HTTP header names, in the order of [`ObjectHeaders::iter`].
    pub const NAMES: [&'static str; 4] = [
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
    ];

    fn slots(&self) -> [&Option<String>; 4] {
        [
            &self.cache_control,
            &self.content_disposition,
            &self.content_encoding,
            &self.content_language,
        ]
    }

    fn slots_mut(&mut self) -> [&mut Option<String>; 4] {
        [
            &mut self.cache_control,
            &mut self.content_disposition,
            &mut self.content_encoding,
            &mut self.content_language,
        ]
    }

    /// No header set.
    pub fn is_empty(&self) -> bool {
        self.slots().iter().all(|v| v.is_none())
    }

    /// `(http name, value)` of each header set.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        Self::NAMES
            .into_iter()
            .zip(self.slots())
            .filter_map(|(n, v)| Some((n, v.as_deref()?)))
    }

    /// Set the header `name` (case-insensitive); `false` if it is not one of
    /// [`ObjectHeaders::NAMES`]. For reading a response's headers.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> bool {
        let at = Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name));
        match at {
            Some(i) => {
                *self.slots_mut()[i] = Some(value.into());
                true
            }
            None => false,
        }
    }

    /// These headers, each missing one taken from `defaults`.
    pub fn or(&self, defaults: &ObjectHeaders) -> ObjectHeaders {
        let mut out = self.clone();
        for (slot, d) in out.slots_mut().into_iter().zip(defaults.slots()) {
            if slot.is_none() {
                slot.clone_from(d);
            }
        }
        out
    }
}

/// Server-side encryption of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEncryption {
    /// Keys the service manages (S3 SSE-S3, `AES256`).
    ServiceManaged,
    /// A key in the cloud's KMS: S3 SSE-KMS (`key_id` `None` is the
    /// account's `aws/s3` key; `bucket_key` sets the S3 Bucket Key), GCS
    /// CMEK (`key_id` the `kmsKeyName`, required).
    Kms {
        key_id: Option<String>,
        bucket_key: Option<bool>,
    },
    /// A key the customer keeps (S3 SSE-C): 32 bytes, base64. The service
    /// stores only its MD5; every read of the object must send the key again
    /// (a store reads with its configured `sse_customer_key`). Never printed.
    CustomerKey(Secret),
    /// An Azure encryption scope, by name.
    Scope(String),
}

impl ServerEncryption {
    /// How errors and `NotSupported` name this option.
    pub fn describe(&self) -> &'static str {
        match self {
            ServerEncryption::ServiceManaged => {
                "server-side encryption with service keys (sse = s3)"
            }
            ServerEncryption::Kms { .. } => "server-side encryption with a KMS key (sse = kms)",
            ServerEncryption::CustomerKey(_) => {
                "server-side encryption with a customer key (sse = customer)"
            }
            ServerEncryption::Scope(_) => "an encryption scope",
        }
    }

    fn supported(&self, c: &Capabilities) -> bool {
        match self {
            ServerEncryption::ServiceManaged => c.sse_service_managed,
            ServerEncryption::Kms { .. } => c.sse_kms,
            ServerEncryption::CustomerKey(_) => c.sse_customer_key,
            ServerEncryption::Scope(_) => c.encryption_scope,
        }
    }
}

impl PutOptions {
    /// These options, each one not given taken from `defaults` (a store's
    /// configured [`UploadDefaults`]); metadata and tags are merged, these
    /// winning per key.
    pub fn or_defaults(&self, defaults: &PutOptions) -> PutOptions {
        let merge = |d: &BTreeMap<String, String>, o: &BTreeMap<String, String>| {
            let mut m = d.clone();
            m.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        };
        PutOptions {
            content_type: self.content_type.clone().or(defaults.content_type.clone()),
            metadata: merge(&defaults.metadata, &self.metadata),
            if_not_exists: self.if_not_exists,
            headers: self.headers.or(&defaults.headers),
            storage_class: self
                .storage_class
                .clone()
                .or(defaults.storage_class.clone()),
            encryption: self.encryption.clone().or(defaults.encryption.clone()),
            tags: merge(&defaults.tags, &self.tags),
        }
    }

    /// The first server-side option `caps` says the store cannot honour, by
    /// name (`"storage class"`, `"cache-control"`, ...).
    pub fn unsupported(&self, caps: &Capabilities) -> Option<&'static str> {
        if self.storage_class.is_some() && !caps.storage_class {
            return Some("storage class");
        }
        if !caps.object_headers
            && let Some((name, _)) = self.headers.iter().next()
        {
            return Some(name);
        }
        if !self.tags.is_empty() && !caps.tags {
            return Some("tags");
        }
        match &self.encryption {
            Some(e) if !e.supported(caps) => Some(e.describe()),
            _ => None,
        }
    }

    /// Check the server-side options before anything is sent: each must be
    /// one `caps` honours (else `NotSupported` naming it: never silently
    /// dropped), and no value may hold a control character (it would end
    /// up in a request header).
    pub fn check_server_options(
        &self,
        store: &str,
        target: &str,
        caps: &Capabilities,
    ) -> Result<()> {
        if let Some(what) = self.unsupported(caps) {
            return Err(Error::not_supported(store, format!("uploads with {what}")));
        }
        let scope = match &self.encryption {
            Some(ServerEncryption::Kms {
                key_id: Some(k), ..
            }) => Some(("KMS key id", k.as_str())),
            Some(ServerEncryption::Scope(s)) => Some(("encryption scope", s.as_str())),
            _ => None,
        };
        let texts = (self.headers.iter())
            .chain(self.storage_class.as_deref().map(|v| ("storage class", v)))
            .chain(self.tags.keys().map(|k| ("tag", k.as_str())))
            .chain(self.tags.values().map(|v| ("tag", v.as_str())))
            .chain(scope);
        for (what, v) in texts {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(Error::Backend {
                    target: target.to_string(),
                    message: format!("{what} {v:?} is empty or holds a control character"),
                    source: None,
                });
            }
        }
        if let Some(ServerEncryption::CustomerKey(key)) = &self.encryption {
            check_customer_key(key).map_err(|why| Error::Backend {
                target: target.to_string(),
                message: format!("the SSE-C key {why}"),
                source: None,
            })?;
        }
        Ok(())
    }
}

/// `sse` of a store's config table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SseMode {
    /// SSE-S3: keys the service manages.
    S3,
    /// SSE-KMS / CMEK (`sse_kms_key_id`).
    Kms,
    /// SSE-C (`sse_customer_key`).
    Customer,
}

/// Per-store defaults of the server-side upload options: keys of a
/// `[stores.NAME]` table, read from it beside each backend's config (its `upload` field). Each
/// upload's own [`PutOptions`] win ([`PutOptions::or_defaults`]). A backend
/// lists in its `KEYS` only those it honours.
#[derive(Clone, Default, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct UploadDefaults {
    /// S3 / GCS storage class, Azure access tier.
    pub storage_class: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// S3 object tags.
    pub tags: BTreeMap<String, String>,
    /// `"s3"`, `"kms"` or `"customer"`; implied by `sse_kms_key_id` (kms)
    /// and `sse_customer_key` (customer).
    pub sse: Option<SseMode>,
    /// S3 KMS key id or ARN; GCS `kmsKeyName`.
    pub sse_kms_key_id: Option<String>,
    /// S3 Bucket Key for SSE-KMS.
    pub sse_bucket_key: Option<bool>,
    /// S3 SSE-C key (32 bytes, base64); also sent on every read.
    pub sse_customer_key: Option<Secret>,
    /// Azure encryption scope.
    pub encryption_scope: Option<String>,
}

impl UploadDefaults {
    /// Every key.
    pub const KEYS: &'static [&'static str] = &[
        "storage_class",
        "cache_control",
        "content_disposition",
        "content_encoding",
        "content_language",
        "tags",
        "sse",
        "sse_kms_key_id",
        "sse_bucket_key",
        "sse_customer_key",
        "encryption_scope",
    ];

    /// The keys of the options a store with `caps` honours: those its
    /// table accepts (see [`crate::backend::Backend::keys`]). `sse` picks a
    /// mode no key implies (SSE-S3), so it comes with
    /// `sse_service_managed`; `sse_bucket_key` is S3's Bucket Key for SSE-KMS,
    /// of stores that have both.
    pub fn keys_for(caps: &Capabilities) -> Vec<&'static str> {
        let honoured = |key: &str| match key {
            "storage_class" => caps.storage_class,
            "tags" => caps.tags,
            "sse" => caps.sse_service_managed,
            "sse_kms_key_id" => caps.sse_kms,
            "sse_bucket_key" => caps.sse_kms && caps.sse_service_managed,
            "sse_customer_key" => caps.sse_customer_key,
            "encryption_scope" => caps.encryption_scope,
            _ => caps.object_headers,
        };
        Self::KEYS.iter().copied().filter(|k| honoured(k)).collect()
    }

    /// The defaults as upload options, checked against what the store
    /// honours; errors name the key relative to the store's table
    /// (`sse_customer_key is missing ...`).
    pub fn put_options(&self, caps: &Capabilities) -> Result<PutOptions> {
        let kms = || ServerEncryption::Kms {
            key_id: self.sse_kms_key_id.clone(),
            bucket_key: self.sse_bucket_key,
        };
        let sse = self.sse.or(if self.sse_customer_key.is_some() {
            Some(SseMode::Customer)
        } else if self.sse_kms_key_id.is_some() || self.sse_bucket_key.is_some() {
            Some(SseMode::Kms)
        } else {
            None
        });
        let conflict = |key: &str, with: &str| {
            settings::invalid(key, format_args!("cannot be set together with {with}"))
        };
        let encryption = match sse {
            None => None,
            Some(SseMode::S3) => Some(ServerEncryption::ServiceManaged),
            Some(SseMode::Kms) => Some(kms()),
            Some(SseMode::Customer) => Some(ServerEncryption::CustomerKey(
                self.sse_customer_key.clone().ok_or_else(|| {
                    settings::invalid(
                        "sse_customer_key",
                        "is missing (sse = \"customer\" needs the key)",
                    )
                })?,
            )),
        };
        if !matches!(sse, Some(SseMode::Kms) | None) {
            if self.sse_kms_key_id.is_some() {
                return Err(conflict("sse_kms_key_id", "sse"));
            }
            if self.sse_bucket_key.is_some() {
                return Err(conflict("sse_bucket_key", "sse"));
            }
        }
        if self.sse_customer_key.is_some() && sse != Some(SseMode::Customer) {
            return Err(conflict("sse_customer_key", "sse"));
        }
        let encryption = match (&self.encryption_scope, encryption) {
            (Some(_), Some(_)) => return Err(conflict("encryption_scope", "sse")),
            (Some(s), None) => Some(ServerEncryption::Scope(s.clone())),
            (None, e) => e,
        };
        if let Some(ServerEncryption::CustomerKey(key)) = &encryption {
            check_customer_key(key).map_err(|why| settings::invalid("sse_customer_key", why))?;
        }
        let opts = PutOptions {
            headers: ObjectHeaders {
                cache_control: self.cache_control.clone(),
                content_disposition: self.content_disposition.clone(),
                content_encoding: self.content_encoding.clone(),
                content_language: self.content_language.clone(),
            },
            storage_class: self.storage_class.clone(),
            encryption,
            tags: self.tags.clone(),
            ..Default::default()
        };
        if let Some(what) = opts.unsupported(caps) {
            let key = match what {
                "storage class" => "storage_class".to_string(),
                "tags" => "tags".to_string(),
                h if ObjectHeaders::NAMES.contains(&h) => h.replace('-', "_"),
                _ if self.encryption_scope.is_some() => "encryption_scope".to_string(),
                _ => "sse".to_string(),
            };
            return Err(settings::invalid(&key, "is not supported by this backend"));
        }
        // Values with control characters: the option and value are named
        // (which key held it, the facade's table says no more precisely).
        opts.check_server_options("", "", caps)
            .map_err(|e| match e {
                Error::Backend { message, .. } => Error::invalid_config(message),
                e => Error::invalid_config(e.to_string()),
            })?;
        Ok(opts)
    }
}

/// Check that an SSE-C key is base64 of 32 bytes (the message shows no part
/// of the key).
pub fn check_customer_key(key: &Secret) -> std::result::Result<(), &'static str> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(key.expose().trim());
    match raw {
        Ok(raw) if raw.len() == 32 => Ok(()),
        _ => Err("must be a base64 AES-256 key (32 bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Capabilities {
        Capabilities {
            storage_class: true,
            object_headers: true,
            tags: true,
            sse_service_managed: true,
            sse_kms: true,
            sse_customer_key: true,
            encryption_scope: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_store_accepts_the_keys_of_the_options_it_honours() {
        assert_eq!(UploadDefaults::keys_for(&all()), UploadDefaults::KEYS);
        assert!(UploadDefaults::keys_for(&Capabilities::default()).is_empty());
        let cmek = Capabilities {
            storage_class: true,
            object_headers: true,
            sse_kms: true,
            ..Default::default()
        };
        assert_eq!(
            UploadDefaults::keys_for(&cmek),
            [
                "storage_class",
                "cache_control",
                "content_disposition",
                "content_encoding",
                "content_language",
                "sse_kms_key_id"
            ]
        );
        let d = UploadDefaults {
            storage_class: Some("A\nB".into()),
            ..Default::default()
        };
        let e = d.put_options(&all()).unwrap_err().to_string();
        assert!(
            e.ends_with("storage class \"A\\nB\" is empty or holds a control character"),
            "{e}"
        );
    }

    #[test]
    fn the_upload_wins_over_the_store_defaults_per_field() {
        let h = ObjectHeaders {
            cache_control: Some("no-store".into()),
            ..Default::default()
        };
        let mine = PutOptions::default().with_headers(h).with_tag("a", "1");
        let d = ObjectHeaders {
            cache_control: Some("max-age=60".into()),
            content_language: Some("de".into()),
            ..Default::default()
        };
        let defaults = PutOptions::default()
            .with_headers(d)
            .with_tag("a", "0")
            .with_tag("b", "2")
            .with_storage_class("COLD");
        let got = mine.or_defaults(&defaults);
        assert_eq!(got.headers.cache_control.as_deref(), Some("no-store"));
        assert_eq!(got.headers.content_language.as_deref(), Some("de"));
        assert_eq!(got.storage_class.as_deref(), Some("COLD"));
        assert_eq!(got.tags.get("a").map(String::as_str), Some("1"));
        assert_eq!(got.tags.len(), 2);
    }

    #[test]
    fn an_option_the_store_cannot_honour_is_named() {
        let none = Capabilities::default();
        let check = |o: PutOptions| o.check_server_options("st", "t", &none).unwrap_err();
        let h = ObjectHeaders {
            content_encoding: Some("gzip".into()),
            ..Default::default()
        };
        let e = check(PutOptions::default().with_headers(h));
        assert_eq!(e.kind(), crate::ErrorKind::NotSupported);
        assert!(e.to_string().contains("content-encoding"), "{e}");
        let e = check(PutOptions::default().with_tag("k", "v"));
        assert!(e.to_string().contains("tags"), "{e}");
        let e = check(PutOptions::default().with_encryption(ServerEncryption::Scope("s".into())));
        assert!(e.to_string().contains("encryption scope"), "{e}");
        assert!(
            PutOptions::default()
                .check_server_options("st", "t", &none)
                .is_ok()
        );
        let bad = ObjectHeaders {
            cache_control: Some("a\r\nx-evil: 1".into()),
            ..Default::default()
        };
        let e = PutOptions::default()
            .with_headers(bad)
            .check_server_options("st", "t", &all())
            .unwrap_err();
        assert!(e.to_string().contains("control character"), "{e}");
    }

    #[test]
    fn config_defaults_resolve_and_conflicts_name_the_key() {
        let mut d = UploadDefaults {
            sse_kms_key_id: Some("k1".into()),
            ..Default::default()
        };
        let o = d.put_options(&all()).unwrap();
        assert_eq!(
            o.encryption,
            Some(ServerEncryption::Kms {
                key_id: Some("k1".into()),
                bucket_key: None
            })
        );
        d.encryption_scope = Some("s".into());
        let e = d.put_options(&all()).unwrap_err().to_string();
        assert!(
            e.contains("encryption_scope cannot be set together with sse"),
            "{e}"
        );
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let d = UploadDefaults {
            sse_customer_key: Some(Secret::new(key)),
            ..Default::default()
        };
        let o = d.put_options(&all()).unwrap();
        assert!(!format!("{o:?} {d:?}").contains(key));
        let d = UploadDefaults {
            sse: Some(SseMode::Customer),
            ..Default::default()
        };
        let e = d.put_options(&all()).unwrap_err().to_string();
        assert!(
            e.contains("configuration: sse_customer_key is missing"),
            "{e}"
        );
        let d = UploadDefaults {
            content_disposition: Some("inline".into()),
            ..Default::default()
        };
        let e = d.put_options(&Capabilities::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("configuration: content_disposition is not supported"),
            "{e}"
        );
    }
}
