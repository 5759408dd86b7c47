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

#[cfg(test)]
mod tests {
    use super::*;

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
