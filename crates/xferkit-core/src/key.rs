//! Object keys: the portable subset every backend accepts, as the [`Key`]
//! type that holds one.
//!
//! A key is a `/`-separated path of non-empty segments. xferkit refuses, on
//! every backend alike, anything that could be read as a path escape or that
//! some store mangles: empty keys, a leading or trailing `/`, empty segments
//! (`a//b`), `.` and `..` segments, backslashes, NUL and other control
//! characters, and keys longer than [`MAX_KEY_LEN`] bytes. Unicode, spaces,
//! `+`, `%`, `#`, `?` and the like are fine (URLs percent-encode them).
//!
//! The rules are checked once, when a [`Key`] is built (from a URL, a CLI
//! argument, a config value, a listed name); a store receives `&Key` and
//! never checks them again.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::{Error, Result};

/// Longest key in bytes (S3's and GCS's limit; Azure allows a little more).
pub const MAX_KEY_LEN: usize = 1024;

/// An object key within a store, valid by construction.
///
/// Built only through [`Key::new`] (or `TryFrom<&str>`, `TryFrom<String>`,
/// [`FromStr`], or deserializing), each of which checks the portable rules
/// of [this module](self) and fails with [`Error::InvalidKey`] naming the key
/// and the rule it breaks. Every [`FileTransferHandler`](crate::FileTransferHandler)
/// method that addresses one object takes `&Key`, so a store never sees an
/// unchecked name and never checks one itself. List *prefixes* stay `&str`:
/// a prefix may be empty or end in `/`, which no key may.
///
/// Cheap to clone (a shared `Arc<str>`); compares, orders and hashes as its
/// string does, so a `HashMap<Key, _>` can be looked up by `&str`. `Display`
/// writes the key as is; `Debug` quotes it like a string.
///
/// A store whose objects are whole links (the facade's `HttpStore`) gets
/// its keys from [`Key::for_link`]: a portable key naming the link by its
/// digest, that carries the link for that store to read ([`Key::link`]).
///
/// ```
/// use xferkit_core::{ErrorKind, Key};
/// let k = Key::new("photos/2024/été.jpg")?;
/// assert_eq!(k.as_str(), "photos/2024/été.jpg");
/// assert_eq!(Key::new("a/../b").unwrap_err().kind(), ErrorKind::InvalidKey);
/// # Ok::<(), xferkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Key {
    name: Arc<str>,
    /// The whole `http(s)` URL, for a key made by [`Key::for_link`].
    link: Option<Arc<str>>,
}

impl Key {
    /// `key`, checked against the portable key rules.
    pub fn new(key: impl Into<String>) -> Result<Key> {
        let key = key.into();
        check(&key)?;
        Ok(Key {
            name: key.into(),
            link: None,
        })
    }

    /// The key of a whole `http(s)` link, for a store whose objects are
    /// links rather than names in a namespace; `None` for other URLs. A
    /// link (a query, `//`, more than [`MAX_KEY_LEN`] bytes) need not be a
    /// portable key, so the key is `link/SHA256-OF-THE-URL`, which is,
    /// and carries the link itself for [`Key::link`]. Equal links give
    /// equal keys. Serializing writes the key, not the link.
    pub fn for_link(url: &crate::url::ObjectUrl) -> Option<Key> {
        use sha2::Digest;
        if !url.is_http() {
            return None;
        }
        let digest = hex::encode(sha2::Sha256::digest(url.raw.as_bytes()));
        Some(Key {
            name: format!("link/{digest}").into(),
            link: Some(url.raw.as_str().into()),
        })
    }

    /// The link of a key made by [`Key::for_link`].
    pub fn link(&self) -> Option<&str> {
        self.link.as_deref()
    }

    /// `rel` (a relative `/`-separated path) under `prefix`: `prefix/rel`,
    /// or `rel` alone when `prefix` is empty; a `/` at either end of
    /// `prefix` is dropped. The joined key is checked as a whole, so the
    /// error names it.
    pub fn join(prefix: &str, rel: &str) -> Result<Key> {
        Key::new(join_prefix(prefix, rel))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.name == other.name
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

/// As the key's string hashes, as `Borrow<str>` requires.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

/// A `&Key` reads as the `&str` it holds (`key.len()`, `root.full(&key)`);
/// the way back is only through the checks of [`Key::new`].
impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.name
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        &*self.name == other
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        &*self.name == *other
    }
}

impl TryFrom<&str> for Key {
    type Error = Error;
    fn try_from(key: &str) -> Result<Key> {
        Key::new(key)
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(key: String) -> Result<Key> {
        Key::new(key)
    }
}

impl FromStr for Key {
    type Err = Error;
    fn from_str(key: &str) -> Result<Key> {
        Key::new(key)
    }
}

impl From<Key> for String {
    fn from(key: Key) -> String {
        key.name.to_string()
    }
}

impl From<&Key> for String {
    fn from(key: &Key) -> String {
        key.name.to_string()
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

/// Deserializing checks the key: an invalid one is an error, never a `Key`.
impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

/// Check `key` against the portable key rules, naming the rule it breaks.
fn check(key: &str) -> Result<()> {
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

    /// `key` as its object name and canonical URL.
    pub fn locate(&self, key: &Key) -> (String, String) {
        let full = self.full(key);
        let url = self.url_full(&full);
        (full, url)
    }

    /// The store key of the object named `full`, if it is under the prefix.
    pub fn key_of<'a>(&self, full: &'a str) -> Option<&'a str> {
        strip_prefix(&self.prefix, full)
    }

    /// The store key a canonical URL names, if it is in this store and valid.
    pub fn key_for_url(&self, url: &crate::url::ObjectUrl) -> Option<Key> {
        let same = if self.fold_case {
            url.authority.eq_ignore_ascii_case(&self.authority)
        } else {
            url.authority == self.authority
        };
        if url.scheme != self.scheme || !same {
            return None;
        }
        let full = url.path.strip_prefix(self.container.as_str())?;
        Key::new(self.key_of(full)?).ok()
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
        assert_eq!(r.key_for_url(&parse("gs://bkt/p/q/a//b")), None);
        for foreign in [
            "gs://other/p/q/a",
            "gs://bkt/p/qa",
            "s3://bkt/p/q/a",
            "gs://BKT/p/q/a",
        ] {
            assert_eq!(r.key_for_url(&parse(foreign)), None, "{foreign}");
        }
        let k = Key::new("a").unwrap();
        assert_eq!(r.locate(&k), ("p/q/a".into(), "gs://bkt/p/q/a".into()));
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
            "with space/x",
            "plus+percent%hash#q?",
            "..a/b..",
            ".hidden",
        ] {
            let key = Key::new(k).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(key.as_str(), k);
            assert_eq!(Key::try_from(k).unwrap(), key);
            assert_eq!(Key::try_from(k.to_string()).unwrap(), key);
            assert_eq!(k.parse::<Key>().unwrap(), key);
        }
        let max = "x".repeat(MAX_KEY_LEN);
        Key::new(max).unwrap();
    }

    #[test]
    fn refuses_each_rule_with_its_reason() {
        let long = "x".repeat(MAX_KEY_LEN + 1);
        for (k, reason) in [
            ("", "key is empty"),
            ("/abs", "must not start with '/'"),
            ("a/", "must not end with '/'"),
            ("a//b", "empty segment"),
            ("..", "'.' or '..' segment"),
            ("../x", "'.' or '..' segment"),
            ("a/../b", "'.' or '..' segment"),
            ("a/./b", "'.' or '..' segment"),
            (".", "'.' or '..' segment"),
            ("a\\..\\b", "backslash"),
            ("nul\0byte", "control character"),
            ("new\nline", "control character"),
            (long.as_str(), "longer than the 1024-byte limit"),
        ] {
            for e in [
                Key::new(k).unwrap_err(),
                Key::try_from(k).unwrap_err(),
                Key::try_from(k.to_string()).unwrap_err(),
                k.parse::<Key>().unwrap_err(),
            ] {
                assert_eq!(e.kind(), crate::ErrorKind::InvalidKey, "{k:?}");
                let Error::InvalidKey { key, reason: why } = &e else {
                    panic!("{e:?}");
                };
                assert_eq!(key, k);
                assert!(why.contains(reason), "{k:?}: {why}");
                assert!(e.to_string().contains(&format!("{k:?}")), "{e}");
            }
        }
    }

    #[test]
    fn displays_as_the_key_and_debugs_as_a_string() {
        let k = Key::new("a/b \"c\".txt").unwrap();
        assert_eq!(k.to_string(), "a/b \"c\".txt");
        assert_eq!(format!("{k:?}"), r#""a/b \"c\".txt""#);
        assert_eq!(format!("{:?}", Some(&k)), r#"Some("a/b \"c\".txt")"#);
    }

    #[test]
    fn serde_round_trips_and_deserializing_checks() {
        let k = Key::new("a/é b").unwrap();
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, r#""a/é b""#);
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), k);
        for bad in [r#""../etc/passwd""#, r#""""#, r#""a//b""#, "7"] {
            let e = serde_json::from_str::<Key>(bad).expect_err(bad);
            if bad != "7" {
                assert!(e.to_string().contains("invalid key"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn hashes_and_orders_as_its_string() {
        use std::collections::{BTreeSet, HashSet};
        let set: HashSet<Key> = ["a", "b"].map(|k| Key::new(k).unwrap()).into();
        assert!(set.contains("a") && !set.contains("c"));
        let ord: BTreeSet<Key> = ["b", "a/b", "a"].map(|k| Key::new(k).unwrap()).into();
        let ord: Vec<&str> = ord.iter().map(Key::as_str).collect();
        assert_eq!(ord, ["a", "a/b", "b"]);
    }

    #[test]
    fn a_link_key_is_portable_and_carries_the_link() {
        use crate::url::ObjectUrl;
        let raw = format!(
            "https://h.example/a//b/../c?sig={}&x=/../y",
            "z".repeat(2000)
        );
        let url = ObjectUrl::parse(&raw).unwrap();
        let k = Key::for_link(&url).unwrap();
        assert_eq!(k.link(), Some(url.raw.as_str()));
        assert!(k.starts_with("link/") && k.len() == 5 + 64, "{k}");
        Key::new(k.as_str()).unwrap();
        assert_eq!(Key::for_link(&url).unwrap(), k);
        assert_eq!(Key::new("a").unwrap().link(), None);
        assert!(Key::for_link(&ObjectUrl::parse("s3://b/k").unwrap()).is_none());
    }

    #[test]
    fn join_puts_a_relative_path_under_a_prefix() {
        assert_eq!(Key::join("", "x/y").unwrap(), "x/y");
        assert_eq!(Key::join("/p/q/", "x").unwrap(), "p/q/x");
        let e = Key::join("p", "../x").unwrap_err();
        assert!(e.to_string().contains("\"p/../x\""), "{e}");
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
