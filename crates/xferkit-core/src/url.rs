//! Object URLs: `SCHEME://AUTHORITY/key` for every store (`s3://bucket/key`,
//! `az://account/container/key`, ...), `file:///abs/path`, plus plain
//! `http(s)://` links (presigned URLs) that can be downloaded.
//!
//! Core knows no list of store schemes: each store reports the schemes of
//! its URLs ([`crate::FileTransferHandler::schemes`]), and
//! [`crate::Registry`] accepts those of the stores registered with it
//! ([`crate::Registry::parse`]). Only `file` (no host, an absolute path) and
//! `http`/`https` (a query kept) follow their own standard's syntax.
//!
//! Keys are percent-encoded in URLs (everything but unreserved characters
//! and `/`), so keys with `#`, `?`, `%` or spaces survive a round trip.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::{Error, Result};

/// Characters escaped in the path of an object URL.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Percent-encode a key (or path) for use in a URL path.
pub fn encode_path(key: &str) -> String {
    utf8_percent_encode(key, KEY_ESCAPE).to_string()
}

/// A parsed object URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    /// Lower-case scheme: `s3`, `file`, `http`, ... (any scheme).
    pub scheme: String,
    /// Bucket (s3, gs), account (az), `host[:port]` (http) or empty (file).
    pub authority: String,
    /// The decoded path without its leading `/` (for `file`: the absolute path, with it).
    pub path: String,
    /// The URL exactly as given.
    pub raw: String,
}

impl ObjectUrl {
    /// Parse and check an object URL of any scheme; errors name the URL and
    /// the problem. Which schemes a program serves is its registry's to say
    /// ([`crate::Registry::parse`]).
    pub fn parse(input: &str) -> Result<Self> {
        // Named without a query or fragment: a link's may carry a signature or a key.
        let url =
            url::Url::parse(input).map_err(|e| Error::invalid_url(shown(input), e.to_string()))?;
        let scheme = url.scheme().to_ascii_lowercase();
        match scheme.as_str() {
            "http" | "https" => {
                let authority = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => return Err(Error::invalid_url(input, "missing host")),
                };
                return Ok(ObjectUrl {
                    scheme,
                    authority,
                    path: url.path().to_string(),
                    raw: input.to_string(),
                });
            }
            _ => {}
        }
        if url.query().is_some() {
            // Shown without it: a presigned URL given where an object URL belongs
            // carries its signature there.
            return Err(Error::invalid_url(
                shown(input),
                "object URLs take no '?query'; percent-encode '?' in keys as %3F",
            ));
        }
        if url.fragment().is_some() {
            // Shown without it: an encrypted attachment's link carries its key there.
            return Err(Error::invalid_url(
                shown(input),
                "object URLs take no '#fragment'; percent-encode '#' in keys as %23",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Name the URL without the password the user put in it.
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            let _ = shown.set_username("");
            return Err(Error::invalid_url(
                shown.as_str(),
                "credentials (user:password@) in URLs are not accepted",
            ));
        }
        // `url` has already resolved `.`/`..` segments (also `%2e%2e`, and
        // `\` as `/` in file URLs): an object URL naming `a/%2e%2e/x` would
        // silently address `x`. Keys have no such segments, so refuse them,
        // judging by the path as typed.
        if has_dot_segment(input) {
            return Err(Error::invalid_url(
                input,
                "the path has a '.' or '..' segment (also as %2e or %2E); object keys cannot contain them",
            ));
        }
        let decoded = percent_decode_str(url.path())
            .decode_utf8()
            .map_err(|_| Error::invalid_url(input, "path is not valid UTF-8 once decoded"))?
            .into_owned();
        let authority = url.host_str().unwrap_or("").to_string();
        if scheme == "file" {
            if !authority.is_empty() && authority != "localhost" {
                return Err(Error::invalid_url(
                    input,
                    "file URLs must name no host (file:///abs/path)",
                ));
            }
            return Ok(ObjectUrl {
                scheme,
                authority: String::new(),
                path: decoded,
                raw: input.to_string(),
            });
        }
        if authority.is_empty() {
            return Err(Error::invalid_url(
                input,
                format!("missing bucket/account: expected {scheme}://NAME/key"),
            ));
        }
        Ok(ObjectUrl {
            scheme,
            authority,
            path: decoded.trim_start_matches('/').to_string(),
            raw: input.to_string(),
        })
    }

    /// Whether this is a plain web link rather than a store URL.
    pub fn is_http(&self) -> bool {
        self.scheme == "http" || self.scheme == "https"
    }
}

/// Whether the path of `input` (`scheme://authority/path?query#fragment`),
/// as typed, has a `.` or `..` segment once percent-decoded, with `/` or
/// `\\` as separators.
fn has_dot_segment(input: &str) -> bool {
    let Some((_, rest)) = input.split_once("://") else {
        return false;
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let Some(slash) = rest.find(['/', '\\']) else {
        return false;
    };
    percent_decode_str(&rest[slash..])
        .decode_utf8_lossy()
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}

/// Build `scheme://authority/encoded-path`.
pub fn object_url(scheme: &str, authority: &str, path: &str) -> String {
    format!("{scheme}://{authority}/{}", encode_path(path))
}

/// Build a `file://` URL for an absolute path.
pub fn file_url(abs_path: &str) -> String {
    format!("file://{}", encode_path(abs_path))
}

/// `url` with its query and fragment cut off, for messages and logs: a
/// link's query may carry a signature (a bearer credential) and its fragment
/// a decryption key. What was cut is marked `?…` or `#…`.
pub fn shown(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}{}…", &url[..i], &url[i..=i]),
        None => url.to_string(),
    }
}

/// `text` (an error message, say) with the query of every URL in it
/// replaced by `<redacted>`, and any bare `sig=` value (a SAS token outside
/// a URL) blanked. Running it again changes nothing.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | ','))
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.find(['?', '#']) {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?<redacted>");
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.find("sig=") {
        let (head, tail) = rest.split_at(pos + 4);
        result.push_str(head);
        result.push_str("<redacted>");
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || matches!(c, ')' | '"' | '\''))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    result.push_str(rest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_cuts_queries_and_fragments() {
        assert_eq!(shown("https://h/k?sig=1"), "https://h/k?…");
        assert_eq!(shown("https://h/k#key=SECRET"), "https://h/k#…");
        assert_eq!(shown("s3://b/k"), "s3://b/k");
    }

    #[test]
    fn redact_handles_urls_bare_tokens_and_plain_text() {
        assert_eq!(redact("no urls here"), "no urls here");
        assert_eq!(
            redact("token sv=1&sig=abc&se=2 end"),
            "token sv=1&sig=<redacted>&se=2 end"
        );
        assert_eq!(
            redact("a https://h/p?x=1 and (http://h2/q?sig=z) c://d#k"),
            "a https://h/p?<redacted> and (http://h2/q?<redacted>) c://d?<redacted>"
        );
        let once = redact("(http://h/k?sv=1&sig=abc%3D): refused");
        assert_eq!(once, "(http://h/k?<redacted>): refused");
        assert_eq!(redact(&once), once);
    }

    #[test]
    fn keys_with_reserved_characters_round_trip() {
        for key in ["a b/c+d", "100%/x#y?z", "日本/語", "a/b/c/d/e"] {
            let u = object_url("s3", "bucket", key);
            let p = ObjectUrl::parse(&u).unwrap();
            assert_eq!(p.scheme, "s3");
            assert_eq!(p.authority, "bucket");
            assert_eq!(p.path, key, "{u}");
        }
        let u = file_url("/tmp/a b#c");
        assert_eq!(ObjectUrl::parse(&u).unwrap().path, "/tmp/a b#c");
    }

    #[test]
    fn bad_urls_name_the_problem() {
        for (u, needle) in [
            ("not a url", "not a url"),
            ("s3:///key", "missing bucket"),
            ("s3://b/k?x=1", "query"),
            ("s3://b/k#f", "fragment"),
            ("s3://user:pw@b/k", "credentials"),
            ("file://host/x", "no host"),
            ("s3://b/a/../x", "'..' segment"),
            ("s3://b/a/%2e%2e/x", "'..' segment"),
            ("s3://b/a/%2E%2e/x", "'..' segment"),
            ("s3://b/./x", "'..' segment"),
            ("file:///r/a%2F..%2Fx", "'..' segment"),
            ("file:///r/a\\..\\x", "'..' segment"),
            ("gs://b/..", "'..' segment"),
        ] {
            let e = ObjectUrl::parse(u).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidUrl, "{u}");
            assert!(e.to_string().contains(needle), "{u}: {e}");
        }
        for u in ["s3://b/k?X-Amz-Signature=hunter2", "s3://b/k?sig=hunter2#x"] {
            let e = ObjectUrl::parse(u).unwrap_err();
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{u}: {e:?}");
        }
        let e = ObjectUrl::parse("s3://user:hunter2@b/k").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // Dots inside a segment are ordinary characters.
        assert_eq!(
            ObjectUrl::parse("s3://b/a/..x/.y").unwrap().path,
            "a/..x/.y"
        );
    }

    #[test]
    fn any_scheme_parses_as_scheme_authority_key() {
        let p = ObjectUrl::parse("MEM://box/a/b").unwrap();
        assert_eq!((p.scheme.as_str(), p.authority.as_str()), ("mem", "box"));
        assert_eq!(p.path, "a/b");
        let e = ObjectUrl::parse("mem:///a").unwrap_err();
        assert!(e.to_string().contains("expected mem://NAME/key"), "{e}");
    }

    #[test]
    fn http_urls_keep_query() {
        let p = ObjectUrl::parse("https://h:9000/b/k?X-Amz-Signature=1").unwrap();
        assert!(p.is_http());
        assert_eq!(p.authority, "h:9000");
    }
}
