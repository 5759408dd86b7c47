//! Shared access signatures signed with the account key (HMAC-SHA256).
//!
//! `azure_storage_blob` 1.x has no SharedKey credential, so a store configured
//! with an account key authorizes its own requests with a short-lived
//! **account SAS** minted here, and presigned URLs are **service SAS** tokens
//! for one blob. Both follow Microsoft's documented string-to-sign for
//! `sv` 2020-12-06 and later ("Create an account SAS", "Create a service SAS").

use std::fmt;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use xferkit_core::Secret;

/// The SAS version (`sv`) we sign. Any version from 2020-12-06 on shares the
/// string-to-sign layouts below.
pub(crate) const SAS_VERSION: &str = "2022-11-02";

/// ISO 8601 UTC to the second, as SAS `st`/`se` want it.
const SAS_TIME: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// The decoded account key. `Debug` shows nothing.
#[derive(Clone)]
pub(crate) struct AccountKey(Vec<u8>);

impl AccountKey {
    pub(crate) fn from_base64(b64: &str) -> Option<Self> {
        let bytes = BASE64.decode(b64.trim()).ok()?;
        (!bytes.is_empty()).then_some(AccountKey(bytes))
    }

    /// base64(HMAC-SHA256(key, string_to_sign)).
    pub(crate) fn sign(&self, string_to_sign: &str) -> String {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(string_to_sign.as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `2026-01-02T03:04:05Z`.
pub(crate) fn sas_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(SAS_TIME)
        .unwrap_or_else(|_| unreachable!("UTC times always format"))
}

/// `https` for https endpoints; Azurite and other plain-http endpoints need
/// `https,http`.
pub(crate) fn protocol_for(scheme: &str) -> &'static str {
    if scheme == "https" {
        "https"
    } else {
        "https,http"
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Fields of an account SAS (blob service only, no IP range or encryption scope).
#[derive(Debug, Clone)]
pub(crate) struct AccountSas<'a> {
    pub account: &'a str,
    pub permissions: &'a str,
    pub resource_types: &'a str,
    pub start: Option<&'a str>,
    pub expiry: &'a str,
    pub protocol: &'a str,
    pub version: &'a str,
}

impl AccountSas<'_> {
    /// The documented string-to-sign (version 2020-12-06 and later): note
    /// the empty encryption-scope line and the trailing newline.
    pub(crate) fn string_to_sign(&self) -> String {
        [
            self.account,
            self.permissions,
            "b", // signedservice: blob
            self.resource_types,
            self.start.unwrap_or(""),
            self.expiry,
            "", // signedIP
            self.protocol,
            self.version,
            "", // signedEncryptionScope
            "",
        ]
        .join("\n")
    }

    /// The token (query string, `sig` last).
    pub(crate) fn token(&self, key: &AccountKey) -> String {
        let sig = key.sign(&self.string_to_sign());
        let mut pairs = vec![
            ("sv", self.version),
            ("ss", "b"),
            ("srt", self.resource_types),
            ("sp", self.permissions),
        ];
        if let Some(st) = self.start {
            pairs.push(("st", st));
        }
        pairs.extend([("se", self.expiry), ("spr", self.protocol), ("sig", &sig)]);
        query(&pairs)
    }
}

/// Fields of a service SAS for one blob (`sr=b`).
#[derive(Debug, Clone)]
pub(crate) struct BlobSas<'a> {
    pub account: &'a str,
    pub container: &'a str,
    /// The blob name, not URL-encoded.
    pub blob: &'a str,
    pub permissions: &'a str,
    pub expiry: &'a str,
    pub protocol: &'a str,
    pub version: &'a str,
}

impl BlobSas<'_> {
    /// The documented string-to-sign (version 2020-12-06 and later), 16 lines
    /// without a trailing newline.
    pub(crate) fn string_to_sign(&self) -> String {
        let resource = format!("/blob/{}/{}/{}", self.account, self.container, self.blob);
        [
            self.permissions,
            "", // signedStart
            self.expiry,
            &resource,
            "", // signedIdentifier
            "", // signedIP
            self.protocol,
            self.version,
            "b", // signedResource
            "",  // signedSnapshotTime
            "",  // signedEncryptionScope
            "",  // rscc
            "",  // rscd
            "",  // rsce
            "",  // rscl
            "",  // rsct
        ]
        .join("\n")
    }

    /// The token (query string, `sig` last).
    pub(crate) fn token(&self, key: &AccountKey) -> String {
        let sig = key.sign(&self.string_to_sign());
        query(&[
            ("sv", self.version),
            ("spr", self.protocol),
            ("se", self.expiry),
            ("sr", "b"),
            ("sp", self.permissions),
            ("sig", &sig),
        ])
    }
}

/// Where the SAS appended to every request comes from.
pub(crate) enum SasSource {
    /// A token given in the configuration.
    Fixed(Secret),
    /// Account SAS tokens minted from the key, cached until close to expiry.
    Minted {
        account: String,
        key: AccountKey,
        protocol: &'static str,
        cache: Mutex<Option<(String, OffsetDateTime)>>,
    },
}

/// A minted account SAS is valid this long ...
const MINTED_LIFETIME: time::Duration = time::Duration::hours(1);
/// ... and replaced when less than this is left (covers retries and an async
/// copy's source authorization).
const MINTED_MIN_LEFT: time::Duration = time::Duration::minutes(20);
/// Read, write, delete, list, add, create.
const ACCOUNT_PERMISSIONS: &str = "rwdlac";

impl SasSource {
    pub(crate) fn minted(account: &str, key: AccountKey, scheme: &str) -> Self {
        SasSource::Minted {
            account: account.to_string(),
            key,
            protocol: protocol_for(scheme),
            cache: Mutex::new(None),
        }
    }

    /// The current token (no leading `?`).
    pub(crate) fn token(&self) -> String {
        match self {
            SasSource::Fixed(t) => t.expose().to_string(),
            SasSource::Minted {
                account,
                key,
                protocol,
                cache,
            } => {
                let now = OffsetDateTime::now_utc();
                let mut guard = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((token, expiry)) = guard.as_ref()
                    && *expiry - now > MINTED_MIN_LEFT
                {
                    return token.clone();
                }
                let expiry = now + MINTED_LIFETIME;
                let se = sas_time(expiry);
                let token = AccountSas {
                    account,
                    permissions: ACCOUNT_PERMISSIONS,
                    resource_types: "sco",
                    start: None,
                    expiry: &se,
                    protocol,
                    version: SAS_VERSION,
                }
                .token(key);
                *guard = Some((token.clone(), expiry));
                token
            }
        }
    }
}

impl fmt::Debug for SasSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SasSource::Fixed(_) => f.write_str("SasSource::Fixed(<redacted>)"),
            SasSource::Minted { account, .. } => {
                write!(
                    f,
                    "SasSource::Minted {{ account: {account:?}, key: <redacted> }}"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Known-answer vectors. The expected signatures were computed
    //! independently of this code, with Python's standard library, from the
    //! string-to-sign layouts in Microsoft's "Create an account SAS" and
    //! "Create a service SAS" pages (which Azurite implements the same way):
    //!
    //! ```text
    //! import base64, hmac, hashlib
    //! key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
    //! def sig(s): return base64.b64encode(hmac.new(key, s.encode(), hashlib.sha256).digest()).decode()
    //! account = "\n".join(["devstoreaccount1", "rwdlac", "b", "sco", "", "2030-01-02T03:04:05Z",
    //!                      "", "https,http", "2022-11-02", "", ""])
    //! service = "\n".join(["r", "", "2030-01-02T03:04:05Z", "/blob/devstoreaccount1/media/dir/a b+c.txt",
    //!                      "", "", "https", "2022-11-02", "b", "", "", "", "", "", "", ""])
    //! print(sig(account)); print(sig(service))
    //! ```
    use super::*;

    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    const ACCOUNT_SIG: &str = "Qh3+WzOW1y6ToTeC/kd49AamYMe++VXWL3ppsFGDEEY=";
    const SERVICE_SIG: &str = "VY2w2gW5IJlcRxkN0zRFuqWf3tI/bOfULWYX/FCmm7U=";

    fn key() -> AccountKey {
        AccountKey::from_base64(DEV_KEY).unwrap()
    }

    fn account_sas() -> AccountSas<'static> {
        AccountSas {
            account: "devstoreaccount1",
            permissions: "rwdlac",
            resource_types: "sco",
            start: None,
            expiry: "2030-01-02T03:04:05Z",
            protocol: "https,http",
            version: "2022-11-02",
        }
    }

    fn blob_sas() -> BlobSas<'static> {
        BlobSas {
            account: "devstoreaccount1",
            container: "media",
            blob: "dir/a b+c.txt",
            permissions: "r",
            expiry: "2030-01-02T03:04:05Z",
            protocol: "https",
            version: "2022-11-02",
        }
    }

    #[test]
    fn account_sas_string_to_sign_and_signature() {
        let s = account_sas();
        assert_eq!(
            s.string_to_sign(),
            "devstoreaccount1\nrwdlac\nb\nsco\n\n2030-01-02T03:04:05Z\n\nhttps,http\n2022-11-02\n\n"
        );
        assert_eq!(key().sign(&s.string_to_sign()), ACCOUNT_SIG);
        let token = s.token(&key());
        let sig_q: String = url::form_urlencoded::byte_serialize(ACCOUNT_SIG.as_bytes()).collect();
        assert_eq!(
            token,
            format!(
                "sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&se=2030-01-02T03%3A04%3A05Z&spr=https%2Chttp&sig={sig_q}"
            )
        );
    }

    #[test]
    fn service_sas_string_to_sign_and_signature() {
        let s = blob_sas();
        assert_eq!(
            s.string_to_sign(),
            "r\n\n2030-01-02T03:04:05Z\n/blob/devstoreaccount1/media/dir/a b+c.txt\n\n\nhttps\n2022-11-02\nb\n\n\n\n\n\n\n"
        );
        assert_eq!(key().sign(&s.string_to_sign()), SERVICE_SIG);
        let token = s.token(&key());
        assert!(
            token.starts_with("sv=2022-11-02&spr=https&se=2030-01-02T03%3A04%3A05Z&sr=b&sp=r&sig="),
            "{token}"
        );
        assert!(token.ends_with(
            &url::form_urlencoded::byte_serialize(SERVICE_SIG.as_bytes()).collect::<String>()
        ));
    }

    #[test]
    fn sas_time_format() {
        let t = OffsetDateTime::from_unix_timestamp(1_893_553_445).unwrap();
        assert_eq!(sas_time(t), "2030-01-02T03:04:05Z");
    }

    #[test]
    fn minted_tokens_are_cached() {
        let src = SasSource::minted("devstoreaccount1", key(), "http");
        let a = src.token();
        assert_eq!(a, src.token());
        assert!(a.contains("spr=https%2Chttp") && a.contains("sig="));
        let d = format!("{src:?} {:?}", key());
        assert!(!d.contains(DEV_KEY) && !d.contains("sig="), "{d}");
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(AccountKey::from_base64("not base64!").is_none());
        assert!(AccountKey::from_base64("").is_none());
    }
}
