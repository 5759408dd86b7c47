//! Checks that every backend's configuration makes: a required name, an
//! endpoint URL, a key prefix, a number within limits; and the keys a
//! backend's table accepts ([`fields`]).
//!
//! Each check names the key it refuses relative to the backend's table
//! (`part_size = 1 must be between ...`): a backend does not know where its
//! table sits. The facade, which does, adds the `stores.NAME.` in front and
//! the file or variable the value came from (see [`crate::backend`]). A
//! check shows a URL without its query, so a token pasted into the wrong
//! key is not repeated in an error.

use std::fmt;
use std::ops::RangeInclusive;

use url::Url;

use crate::{Error, Result};

/// `InvalidConfig`: `KEY {what}`.
pub fn invalid(key: &str, what: impl fmt::Display) -> Error {
    Error::invalid_config(format!("{key} {what}"))
}

/// `value` without surrounding white space; `KEY is missing (what)` when empty.
pub fn required<'v>(key: &str, value: &'v str, what: &str) -> Result<&'v str> {
    match value.trim() {
        "" => Err(invalid(key, format_args!("is missing ({what})"))),
        v => Ok(v),
    }
}

/// An `http://` or `https://` URL with a host, and no query, fragment or
/// `user:password`, with any trailing `/` of its path removed.
pub fn endpoint(key: &str, value: &str) -> Result<Url> {
    let shown = crate::url::shown(value);
    let mut url = match Url::parse(value.trim()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        Ok(_) => {
            return Err(invalid(
                key,
                format_args!("= {shown:?} must be an http:// or https:// URL with a host"),
            ));
        }
        Err(e) => return Err(invalid(key, format_args!("= {shown:?} is not a URL: {e}"))),
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            key,
            format_args!(
                "= {shown:?} must not carry a '?query' or '#fragment' (a token goes in its own key)"
            ),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(key, "must not carry user:password"));
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// A key prefix: `value` without leading or trailing `/`, each segment a
/// valid key segment; empty means none.
pub fn prefix(key: &str, value: &str) -> Result<String> {
    let prefix = value.trim_matches('/');
    if !prefix.is_empty()
        && let Err(e) = crate::Key::new(prefix)
    {
        return Err(invalid(
            key,
            format_args!("= {value:?} is not a valid key prefix: {e}"),
        ));
    }
    Ok(prefix.to_string())
}

/// `value` if it lies in `range`; otherwise an error saying the bounds,
/// followed by `why` (the service's limit, say).
pub fn within<T>(key: &str, value: T, range: RangeInclusive<T>, why: &str) -> Result<T>
where
    T: PartialOrd + fmt::Display + Copy,
{
    if range.contains(&value) {
        return Ok(value);
    }
    Err(invalid(
        key,
        format_args!(
            "= {value} must be between {} and {}{why}",
            range.start(),
            range.end()
        ),
    ))
}

/// The keys a table read as `T` accepts: its fields and their aliases, as
/// serde's derive lists them (`#[serde(skip)]` fields left out). So a
/// backend's accepted keys are its config struct, not a list kept beside
/// it. `T` must be a struct that derives `Deserialize` (without
/// `#[serde(flatten)]`, which reads a map and names no fields); anything
/// else gives no keys.
pub fn fields<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    let probe = probe::Probe::default();
    let _ = T::deserialize(&probe);
    probe.fields.get()
}

/// A deserializer that records the fields a struct asks for, and stops.
mod probe {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    #[derive(Default)]
    pub(super) struct Probe {
        pub(super) fields: Cell<&'static [&'static str]>,
    }

    #[derive(Debug)]
    pub(super) struct Stop;

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("only the fields were asked for")
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    impl<'de> Deserializer<'de> for &Probe {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.fields.set(fields);
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused<T: fmt::Debug>(r: Result<T>) -> String {
        r.expect_err("should be refused").to_string()
    }

    #[test]
    fn required_names_the_key_and_what_it_wants() {
        assert_eq!(required("bucket", " b ", "a bucket").unwrap(), "b");
        assert_eq!(
            refused(required("bucket", "  ", "the S3 bucket name")),
            "invalid configuration: bucket is missing (the S3 bucket name)"
        );
    }

    #[test]
    fn endpoints_are_http_urls_without_secrets() {
        let u = endpoint("endpoint", "http://127.0.0.1:9000/acct/").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/acct");
        assert_eq!(
            endpoint("endpoint", "https://h").unwrap().as_str(),
            "https://h/"
        );
        for (bad, says) in [
            ("localhost:9000", "must be an http:// or https:// URL"),
            ("ftp://h", "must be an http:// or https:// URL"),
            ("not a url", "is not a URL"),
            ("http://h/?sv=1&sig=SECRET", "must not carry a '?query'"),
            ("http://u:SECRET@h/", "must not carry user:password"),
        ] {
            let e = refused(endpoint("endpoint", bad));
            assert!(e.starts_with("invalid configuration: endpoint "), "{e}");
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn prefixes_lose_their_slashes_and_must_be_keys() {
        assert_eq!(prefix("prefix", "/a/b/").unwrap(), "a/b");
        assert_eq!(prefix("prefix", "").unwrap(), "");
        let e = refused(prefix("prefix", "a/../b"));
        assert!(e.contains(": prefix = \"a/../b\""), "{e}");
    }

    #[test]
    fn within_says_the_bounds_and_why() {
        assert_eq!(within("concurrency", 4, 1..=64, "").unwrap(), 4);
        assert_eq!(
            refused(within("part_size", 1u64, 5..=10, " (S3's limits)")),
            "invalid configuration: part_size = 1 must be between 5 and 10 (S3's limits)"
        );
    }

    #[test]
    fn fields_are_the_keys_serde_reads() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Table {
            bucket: String,
            #[serde(alias = "aws_region")]
            region: Option<String>,
            #[serde(skip)]
            derived: u8,
        }
        let mut keys = fields::<Table>().to_vec();
        keys.sort_unstable();
        assert_eq!(keys, ["aws_region", "bucket", "region"]);
        assert!(fields::<u64>().is_empty());
    }
}
