//! Object keys: the portable subset every backend accepts.
//!
//! A key is a `/`-separated path of non-empty segments. xferkit refuses, on
//! every backend alike, anything that could be read as a path escape or that
//! some store mangles: empty keys, a leading or trailing `/`, empty segments
//! (`a//b`), `.` and `..` segments, backslashes, NUL and other control
//! characters, and keys longer than [`MAX_KEY_LEN`] bytes. Unicode, spaces,
//! `+`, `%`, `#`, `?` and the like are fine (URLs percent-encode them).

use crate::{Error, Result};

/// Longest key in bytes (S3's and GCS's limit; Azure allows a little more).
pub const MAX_KEY_LEN: usize = 1024;

/// Check `key` against the portable key rules, naming the rule it breaks.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::invalid_key(key, reason));
    if key.is_empty() {
        return bad("key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad(&format!(
            "key is {} bytes, longer than the {MAX_KEY_LEN}-byte limit",
            key.len()
        ));
    }
    if key.starts_with('/') {
        return bad("key must not start with '/'");
    }
    if key.ends_with('/') {
        return bad("key must not end with '/'");
    }
    if key.contains('\\') {
        return bad("key must not contain a backslash");
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return bad(&format!("key contains control character {:?}", c));
    }
    for seg in key.split('/') {
        match seg {
            "" => return bad("key contains an empty segment ('//')"),
            "." | ".." => return bad("key contains a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Join a store prefix (possibly empty, no leading/trailing `/`) and a key.
pub fn join_prefix(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Strip a store prefix from a full object name, if it is under it.
pub fn strip_prefix<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        Some(full)
    } else {
        full.strip_prefix(prefix)?.strip_prefix('/')
    }
}

/// Where a cloud store's keys live: `SCHEME://AUTHORITY/[CONTAINER/]PREFIX/KEY`.
/// One place for the mapping between a store's keys, the service's full
/// object names and canonical URLs, both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    scheme: &'static str,
    authority: String,
    /// `CONTAINER/` for services with an account above the container (Azure).
    container: String,
    prefix: String,
    fold_case: bool,
}

impl Root {
    /// Keys under `prefix` (no leading or trailing `/`; empty: none) of the
    /// bucket `authority`, in URLs of `scheme`.
    pub fn new(scheme: &'static str, authority: &str, prefix: &str) -> Self {
        Root {
            scheme,
            authority: authority.to_string(),
            container: String::new(),
            prefix: prefix.trim_matches('/').to_string(),
            fold_case: false,
        }
    }

    /// Object names sit under `container/` of the authority (an account);
    /// the authority matches case-insensitively, as a host name does.
    pub fn in_container(mut self, container: &str) -> Self {
        self.container = format!("{container}/");
        self.fold_case = true;
        self
    }

    /// The scheme of the store's URLs, as a one-element list for
    /// [`FileTransferHandler::schemes`](crate::FileTransferHandler::schemes).
    pub fn schemes(&self) -> &[&'static str] {
        std::slice::from_ref(&self.scheme)
    }

    /// The store prefix (no leading or trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The service's object name of `key`.
    pub fn full(&self, key: &str) -> String {
        join_prefix(&self.prefix, key)
    }

    /// The canonical URL of the object named `full`.
    pub fn url_full(&self, full: &str) -> String {
        crate::url::object_url(
            self.scheme,
            &self.authority,
            &format!("{}{full}", self.container),
        )
    }

    /// The canonical URL of `key`.
    pub fn url(&self, key: &str) -> String {
        self.url_full(&self.full(key))
    }

    /// `key`, checked, as its object name and canonical URL.
    pub fn locate(&self, key: &str) -> Result<(String, String)> {
        validate_key(key)?;
        let full = self.full(key);
        let url = self.url_full(&full);
        Ok((full, url))
    }

    /// The store key of the object named `full`, if it is under the prefix.
    pub fn key_of<'a>(&self, full: &'a str) -> Option<&'a str> {
        strip_prefix(&self.prefix, full)
    }

    /// The store key a canonical URL names, if it is in this store and valid.
    pub fn key_for_url(&self, url: &crate::url::ObjectUrl) -> Option<String> {
        let same = if self.fold_case {
            url.authority.eq_ignore_ascii_case(&self.authority)
        } else {
            url.authority == self.authority
        };
        if url.scheme != self.scheme || !same {
            return None;
        }
        let full = url.path.strip_prefix(self.container.as_str())?;
        let key = self.key_of(full)?;
        validate_key(key).ok()?;
        Some(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_map_keys_names_and_urls_both_ways() {
        use crate::url::ObjectUrl;
        let parse = |u: &str| ObjectUrl::parse(u).unwrap();
        let r = Root::new("gs", "bkt", "/p/q/");
        assert_eq!(r.full("a"), "p/q/a");
        assert_eq!(r.url("a/b#c.txt"), "gs://bkt/p/q/a/b%23c.txt");
        let u = r.url("a/b#c.txt");
        assert_eq!(r.key_for_url(&parse(&u)).as_deref(), Some("a/b#c.txt"));
        for foreign in [
            "gs://other/p/q/a",
            "gs://bkt/p/qa",
            "s3://bkt/p/q/a",
            "gs://BKT/p/q/a",
        ] {
            assert_eq!(r.key_for_url(&parse(foreign)), None, "{foreign}");
        }
        assert!(r.locate("../k").is_err());
        let az = Root::new("az", "acct", "").in_container("c");
        assert_eq!(az.url("k"), "az://acct/c/k");
        assert_eq!(
            az.key_for_url(&parse("az://ACCT/c/k")).as_deref(),
            Some("k")
        );
        assert_eq!(az.key_for_url(&parse("az://acct/d/k")), None);
    }

    #[test]
    fn accepts_portable_keys() {
        for k in [
            "a",
            "a/b/c/d/e/f",
            "héllo wörld/日本語.txt",
            "plus+percent%hash#q?",
            "..a/b..",
            ".hidden",
        ] {
            validate_key(k).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for k in [
            "",
            "/abs",
            "a/",
            "a//b",
            "..",
            "../x",
            "a/../b",
            "a/./b",
            ".",
            "a\\..\\b",
            "nul\0byte",
            "new\nline",
            long.as_str(),
        ] {
            let e = validate_key(k).expect_err(k);
            assert_eq!(e.kind(), crate::ErrorKind::InvalidKey, "{k:?}");
        }
    }

    #[test]
    fn prefix_join_and_strip_are_inverse() {
        assert_eq!(join_prefix("", "k"), "k");
        assert_eq!(join_prefix("p/q/", "k"), "p/q/k");
        assert_eq!(strip_prefix("p/q", "p/q/k"), Some("k"));
        assert_eq!(strip_prefix("p/q", "p/qk"), None);
        assert_eq!(strip_prefix("", "k"), Some("k"));
    }
}
