//! Checks that every backend's configuration makes: a required name, an
//! endpoint URL, a key prefix, a number within limits.
//!
//! Each check names the key it refuses as `stores.NAME.KEY`, so an operator
//! finds the line in the config file, and shows a URL without its query, so
//! a token pasted into the wrong key is not repeated in an error.

use std::fmt;
use std::ops::RangeInclusive;

use url::Url;

use crate::{Error, Result};

/// The keys of one `[stores.NAME]` table, for naming them in errors.
#[derive(Debug, Clone, Copy)]
pub struct StoreKeys<'a> {
    store: &'a str,
}

impl<'a> StoreKeys<'a> {
    /// The keys of store `store`.
    pub fn new(store: &'a str) -> Self {
        StoreKeys { store }
    }

    /// `stores.NAME.KEY`.
    pub fn name(&self, key: &str) -> String {
        format!("stores.{}.{key}", self.store)
    }

    /// `InvalidConfig`: `stores.NAME.KEY {what}`.
    pub fn error(&self, key: &str, what: impl fmt::Display) -> Error {
        Error::invalid_config(format!("{} {what}", self.name(key)))
    }

    /// `value` without surrounding white space; `is missing (what)` when empty.
    pub fn required<'v>(&self, key: &str, value: &'v str, what: &str) -> Result<&'v str> {
        match value.trim() {
            "" => Err(self.error(key, format_args!("is missing ({what})"))),
            v => Ok(v),
        }
    }

    /// An `http://` or `https://` URL with a host, and no query, fragment or
    /// `user:password`, with any trailing `/` of its path removed.
    pub fn endpoint(&self, key: &str, value: &str) -> Result<Url> {
        let shown = crate::url::shown(value);
        let mut url = match Url::parse(value.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            Ok(_) => {
                return Err(self.error(
                    key,
                    format_args!("= {shown:?} must be an http:// or https:// URL with a host"),
                ));
            }
            Err(e) => return Err(self.error(key, format_args!("= {shown:?} is not a URL: {e}"))),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.error(
                key,
                format_args!(
                    "= {shown:?} must not carry a '?query' or '#fragment' (a token goes in its own key)"
                ),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.error(key, "must not carry user:password"));
        }
        let path = url.path().trim_end_matches('/').to_string();
        url.set_path(&path);
        Ok(url)
    }

    /// A key prefix: `value` without leading or trailing `/`, each segment a
    /// valid key segment; empty means none.
    pub fn prefix(&self, key: &str, value: &str) -> Result<String> {
        let prefix = value.trim_matches('/');
        if !prefix.is_empty()
            && let Err(e) = crate::validate_key(prefix)
        {
            return Err(self.error(
                key,
                format_args!("= {value:?} is not a valid key prefix: {e}"),
            ));
        }
        Ok(prefix.to_string())
    }

    /// `value` if it lies in `range`; otherwise an error saying the bounds,
    /// followed by `why` (the service's limit, say).
    pub fn within<T>(&self, key: &str, value: T, range: RangeInclusive<T>, why: &str) -> Result<T>
    where
        T: PartialOrd + fmt::Display + Copy,
    {
        if range.contains(&value) {
            return Ok(value);
        }
        Err(self.error(
            key,
            format_args!(
                "= {value} must be between {} and {}{why}",
                range.start(),
                range.end()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: StoreKeys<'static> = StoreKeys { store: "media" };

    fn refused<T: fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn required_names_the_key_and_what_it_wants() {
        assert_eq!(K.required("bucket", " b ", "a bucket").unwrap(), "b");
        assert_eq!(
            refused(K.required("bucket", "  ", "the S3 bucket name")),
            "invalid configuration: stores.media.bucket is missing (the S3 bucket name)"
        );
    }

    #[test]
    fn endpoints_are_http_urls_without_secrets() {
        let u = K
            .endpoint("endpoint", "http://127.0.0.1:9000/acct/")
            .unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/acct");
        assert_eq!(
            K.endpoint("endpoint", "https://h").unwrap().as_str(),
            "https://h/"
        );
        for (bad, says) in [
            ("localhost:9000", "must be an http:// or https:// URL"),
            ("ftp://h", "must be an http:// or https:// URL"),
            ("not a url", "is not a URL"),
            ("http://h/?sv=1&sig=SECRET", "must not carry a '?query'"),
            ("http://u:SECRET@h/", "must not carry user:password"),
        ] {
            let e = refused(K.endpoint("endpoint", bad));
            assert!(e.contains("stores.media.endpoint"), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn prefixes_lose_their_slashes_and_must_be_keys() {
        assert_eq!(K.prefix("prefix", "/a/b/").unwrap(), "a/b");
        assert_eq!(K.prefix("prefix", "").unwrap(), "");
        let e = refused(K.prefix("prefix", "a/../b"));
        assert!(e.contains("stores.media.prefix = \"a/../b\""), "{e}");
    }

    #[test]
    fn within_says_the_bounds_and_why() {
        assert_eq!(K.within("concurrency", 4, 1..=64, "").unwrap(), 4);
        assert_eq!(
            refused(K.within("part_size", 1u64, 5..=10, " (S3's limits)")),
            "invalid configuration: stores.media.part_size = 1 must be between 5 and 10 (S3's limits)"
        );
    }
}
