//! HMAC-signed URLs for stores that have no signing service of their own:
//! the local store signs them, and `xferkit-serve` (what `xfer serve` runs)
//! checks them.
//!
//! A signed URL is `BASE/ENCODED-KEY?expires=UNIX-SECONDS&sig=HEX`, where
//! `sig` is HMAC-SHA256 over
//!
//! ```text
//! xferkit-v1\n{METHOD}\n{key}\n{expires}
//! ```
//!
//! with the store's signing key. The method is part of the signature, so a
//! URL signed for GET cannot be used to PUT. Verification checks the expiry
//! first (in the past, or further away than [`MAX_SIGNED_URL_VALIDITY`]: a
//! URL signed by hand for a year is refused) and compares the MAC in
//! constant time.
//!
//! A PUT URL may carry a size limit, `...&max_size=BYTES&sig=HEX`; then the
//! signed text has one more line, `max_size={BYTES}`, so the limit can be
//! neither removed nor raised without breaking the signature (and a URL
//! without it signs text of one line less, which no limit can produce:
//! `expires` is digits only).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use xferkit_core::url::encode_path;
use xferkit_core::{Error, PresignMethod, PresignedUrl, Result, Secret};

/// Shortest accepted signing key, in bytes.
pub const MIN_SIGNING_KEY_LEN: usize = 32;

/// Longest validity a signed URL may have (like S3's seven days).
pub const MAX_SIGNED_URL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How far a verifier's clock may be behind the signer's: a URL may expire
/// at most [`MAX_SIGNED_URL_VALIDITY`] plus this after the verifier's now
/// (signing rounds up to the next second, and `xfer serve` may run on
/// another host than the one that signs).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Name of the query parameter carrying a PUT URL's signed size limit.
pub const MAX_SIZE_PARAM: &str = "max_size";

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies URLs with one secret key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Secret,
}

impl fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSigner").finish_non_exhaustive()
    }
}

/// Why a request was refused. Shown to the client (never the key or the
/// expected signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `expires` or `sig` parameter: the URL is not signed.
    Unsigned,
    /// `expires` or `sig` is not well formed.
    Malformed,
    /// The URL's expiry is in the past.
    Expired,
    /// The signature does not match (tampered URL, other key or method).
    BadSignature,
    /// The URL's expiry is further away than signing allows (7 days).
    TooLong,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Unsigned => "the URL is not signed",
            Refusal::Malformed => "the URL's signature parameters are malformed",
            Refusal::Expired => "the signed URL has expired",
            Refusal::BadSignature => "the URL's signature does not match",
            Refusal::TooLong => "the signed URL's expiry is further away than 7 days",
        })
    }
}

fn method_name(m: PresignMethod) -> &'static str {
    match m {
        PresignMethod::Get => "GET",
        PresignMethod::Put => "PUT",
    }
}

impl UrlSigner {
    /// A signer with `key`; `what` names the key's origin for the error
    /// (e.g. `stores.local.signing_key`). Keys shorter than
    /// [`MIN_SIGNING_KEY_LEN`] bytes are refused.
    pub fn new(key: Secret, what: &str) -> Result<Self> {
        if key.expose().len() < MIN_SIGNING_KEY_LEN {
            return Err(Error::invalid_config(format!(
                "{what} is too short: use at least {MIN_SIGNING_KEY_LEN} random characters \
                 (e.g. `openssl rand -hex 32`)"
            )));
        }
        Ok(UrlSigner { key })
    }

    fn mac(
        &self,
        method: PresignMethod,
        key: &str,
        expires: u64,
        max_size: Option<u64>,
    ) -> HmacSha256 {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.key.expose().as_bytes()) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(b"xferkit-v1\n");
        mac.update(method_name(method).as_bytes());
        mac.update(b"\n");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        if let Some(max) = max_size {
            mac.update(b"\n");
            mac.update(MAX_SIZE_PARAM.as_bytes());
            mac.update(b"=");
            mac.update(max.to_string().as_bytes());
        }
        mac
    }

    /// The signature for `method` on `key` until `expires` (Unix seconds), hex.
    pub fn signature(&self, method: PresignMethod, key: &str, expires: u64) -> String {
        self.signature_with_limit(method, key, expires, None)
    }

    /// [`UrlSigner::signature`] of a URL that also carries `max_size`.
    pub fn signature_with_limit(
        &self,
        method: PresignMethod,
        key: &str,
        expires: u64,
        max_size: Option<u64>,
    ) -> String {
        hex::encode(
            self.mac(method, key, expires, max_size)
                .finalize()
                .into_bytes(),
        )
    }

    /// A signed URL under `base` (e.g. `http://127.0.0.1:8080/files`), valid
    /// for `expires_in` from now. `target` names the object for errors.
    pub fn sign(
        &self,
        base: &str,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.sign_with_limit(base, method, key, expires_in, None)
    }

    /// [`UrlSigner::sign`], and for a PUT URL an optional limit on the body's
    /// size that is part of the signature: the server refuses a larger body
    /// (`413`) however often the URL is used.
    pub fn sign_with_limit(
        &self,
        base: &str,
        method: PresignMethod,
        key: &str,
        expires_in: Duration,
        max_size: Option<u64>,
    ) -> Result<PresignedUrl> {
        if max_size.is_some() && method != PresignMethod::Put {
            return Err(Error::invalid_config(format!(
                "a size limit applies to PUT URLs only (asked for {} on {key:?})",
                method_name(method)
            )));
        }
        if expires_in.is_zero() || expires_in > MAX_SIGNED_URL_VALIDITY {
            return Err(Error::invalid_config(format!(
                "presign expiry for {key:?} must be between 1 second and 7 days, got {}s",
                expires_in.as_secs()
            )));
        }
        // Whole seconds, rounded up: valid for at least `expires_in`, at most
        // one second more.
        let at = (SystemTime::now() + expires_in)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let expires = at.as_secs() + u64::from(at.subsec_nanos() > 0);
        let sig = self.signature_with_limit(method, key, expires, max_size);
        let limit = max_size
            .map(|m| format!("&{MAX_SIZE_PARAM}={m}"))
            .unwrap_or_default();
        let url = format!(
            "{}/{}?expires={expires}{limit}&sig={sig}",
            base.trim_end_matches('/'),
            encode_path(key)
        );
        Ok(PresignedUrl::new(
            url,
            method,
            UNIX_EPOCH + Duration::from_secs(expires),
        ))
    }

    /// Checks a request's `expires` and `sig` parameters for `method` on
    /// `key` at time `now`. The MAC comparison is constant-time.
    pub fn verify(
        &self,
        method: PresignMethod,
        key: &str,
        expires: Option<&str>,
        sig: Option<&str>,
        now: SystemTime,
    ) -> std::result::Result<(), Refusal> {
        self.verify_with_limit(method, key, expires, None, sig, now)
            .map(|_| ())
    }

    /// [`UrlSigner::verify`] for a URL that may carry a signed size limit
    /// (its `max_size` parameter); returns the limit. A `max_size` that is
    /// not digits is `Malformed`.
    pub fn verify_with_limit(
        &self,
        method: PresignMethod,
        key: &str,
        expires: Option<&str>,
        max_size: Option<&str>,
        sig: Option<&str>,
        now: SystemTime,
    ) -> std::result::Result<Option<u64>, Refusal> {
        let (Some(expires), Some(sig)) = (expires, sig) else {
            return Err(Refusal::Unsigned);
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(expires) || max_size.is_some_and(|m| !digits(m)) {
            return Err(Refusal::Malformed);
        }
        let expires: u64 = expires.parse().map_err(|_| Refusal::Malformed)?;
        let max_size: Option<u64> = match max_size {
            Some(m) => Some(m.parse().map_err(|_| Refusal::Malformed)?),
            None => None,
        };
        let sig = hex::decode(sig).map_err(|_| Refusal::Malformed)?;
        let now = unix_secs(now);
        if now >= expires {
            return Err(Refusal::Expired);
        }
        if expires - now > (MAX_SIGNED_URL_VALIDITY + CLOCK_SKEW).as_secs() {
            return Err(Refusal::TooLong);
        }
        self.mac(method, key, expires, max_size)
            .verify_slice(&sig)
            .map_err(|_| Refusal::BadSignature)?;
        Ok(max_size)
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(Secret::new("k".repeat(32)), "test.signing_key").unwrap()
    }

    fn params(url: &str) -> (String, String) {
        let q = url.split_once('?').unwrap().1;
        let mut e = String::new();
        let mut s = String::new();
        for kv in q.split('&') {
            let (k, v) = kv.split_once('=').unwrap();
            match k {
                "expires" => e = v.to_string(),
                "sig" => s = v.to_string(),
                _ => {}
            }
        }
        (e, s)
    }

    #[test]
    fn short_keys_are_refused_naming_the_key() {
        let e = UrlSigner::new(Secret::new("short"), "stores.x.signing_key").unwrap_err();
        assert!(e.to_string().contains("stores.x.signing_key"), "{e}");
        assert!(!e.to_string().contains("short\""), "{e}");
    }

    #[test]
    fn signed_urls_verify_only_for_their_method_key_and_time() {
        let s = signer();
        let p = s
            .sign(
                "http://h:1/base/",
                PresignMethod::Get,
                "a b/c.txt",
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            p.url.starts_with("http://h:1/base/a%20b/c.txt?expires="),
            "{}",
            p.url
        );
        let (e, sig) = params(&p.url);
        let now = SystemTime::now();
        let ok = |m, k: &str, e: &str, sig: &str, t| s.verify(m, k, Some(e), Some(sig), t);
        assert_eq!(ok(PresignMethod::Get, "a b/c.txt", &e, &sig, now), Ok(()));
        assert_eq!(
            ok(PresignMethod::Put, "a b/c.txt", &e, &sig, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok(PresignMethod::Get, "a b/d.txt", &e, &sig, now),
            Err(Refusal::BadSignature)
        );
        let later: u64 = e.parse::<u64>().unwrap() + 3600;
        assert_eq!(
            ok(
                PresignMethod::Get,
                "a b/c.txt",
                &later.to_string(),
                &sig,
                now
            ),
            Err(Refusal::BadSignature),
            "extending the expiry must break the signature"
        );
        let after = now + Duration::from_secs(120);
        assert_eq!(
            ok(PresignMethod::Get, "a b/c.txt", &e, &sig, after),
            Err(Refusal::Expired)
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            ok(PresignMethod::Get, "a b/c.txt", &e, &flipped, now),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            s.verify(PresignMethod::Get, "a b/c.txt", None, Some(&sig), now),
            Err(Refusal::Unsigned)
        );
        assert_eq!(
            ok(PresignMethod::Get, "a b/c.txt", "soon", &sig, now),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            ok(PresignMethod::Get, "a b/c.txt", &e, "zz", now),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn another_key_does_not_verify() {
        let other = UrlSigner::new(Secret::new("o".repeat(40)), "t").unwrap();
        let p = signer()
            .sign("http://h", PresignMethod::Put, "k", Duration::from_secs(60))
            .unwrap();
        let (e, sig) = params(&p.url);
        assert_eq!(
            other.verify(
                PresignMethod::Put,
                "k",
                Some(&e),
                Some(&sig),
                SystemTime::now()
            ),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn expiry_bounds_are_enforced() {
        let s = signer();
        for d in [
            Duration::ZERO,
            MAX_SIGNED_URL_VALIDITY + Duration::from_secs(1),
        ] {
            assert!(s.sign("http://h", PresignMethod::Get, "k", d).is_err());
        }
    }

    #[test]
    fn expiries_beyond_the_signing_limit_are_refused_even_when_signed() {
        let s = signer();
        let now = SystemTime::now();
        let at = |d: Duration| unix_secs(now + d);
        for (d, want) in [
            (MAX_SIGNED_URL_VALIDITY, Ok(())),
            (MAX_SIGNED_URL_VALIDITY + CLOCK_SKEW, Ok(())),
            (
                MAX_SIGNED_URL_VALIDITY + CLOCK_SKEW + Duration::from_secs(2),
                Err(Refusal::TooLong),
            ),
            (Duration::from_secs(365 * 86_400), Err(Refusal::TooLong)),
        ] {
            let e = at(d);
            let sig = s.signature(PresignMethod::Get, "k", e);
            assert_eq!(
                s.verify(
                    PresignMethod::Get,
                    "k",
                    Some(&e.to_string()),
                    Some(&sig),
                    now
                ),
                want,
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_size_limit_is_signed_and_cannot_be_removed_or_raised() {
        let s = signer();
        let p = s
            .sign_with_limit(
                "http://h",
                PresignMethod::Put,
                "k",
                Duration::from_secs(60),
                Some(1000),
            )
            .unwrap();
        assert!(p.url.contains("&max_size=1000&sig="), "{}", p.url);
        let (e, sig) = params(&p.url);
        let now = SystemTime::now();
        let check = |max: Option<&str>| {
            s.verify_with_limit(PresignMethod::Put, "k", Some(&e), max, Some(&sig), now)
        };
        assert_eq!(check(Some("1000")), Ok(Some(1000)));
        assert_eq!(check(None), Err(Refusal::BadSignature), "limit stripped");
        assert_eq!(check(Some("1001")), Err(Refusal::BadSignature), "raised");
        assert_eq!(check(Some("+1000")), Err(Refusal::Malformed));
        // A URL without a limit does not verify with one added.
        let p = s
            .sign("http://h", PresignMethod::Put, "k", Duration::from_secs(60))
            .unwrap();
        let (e, sig) = params(&p.url);
        assert_eq!(
            s.verify_with_limit(
                PresignMethod::Put,
                "k",
                Some(&e),
                Some("5"),
                Some(&sig),
                now
            ),
            Err(Refusal::BadSignature)
        );
        assert!(
            s.sign_with_limit(
                "http://h",
                PresignMethod::Get,
                "k",
                Duration::from_secs(60),
                Some(1)
            )
            .is_err()
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = signer();
        assert!(!format!("{s:?}").contains("kkkk"));
    }
}
