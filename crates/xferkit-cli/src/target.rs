//! Turning command-line operands into stores, keys and local paths.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use xferkit::url::ObjectUrl;
use xferkit::{DynHandler, Error, ErrorKind, Key, Registry};

use crate::fail::Failure;

/// A `cp` operand.
#[derive(Debug)]
pub enum Location {
    Path(PathBuf),
    Url(String),
}

/// An operand containing `://` is a URL; anything else is a local path.
/// A URL that is not valid UTF-8 is refused (a lossy conversion would
/// address another key).
pub fn classify(arg: &OsStr) -> Result<Location, Failure> {
    match arg.to_str() {
        Some(s) if s.contains("://") => Ok(Location::Url(s.to_string())),
        None if arg.to_string_lossy().contains("://") => Err(Failure::from(Error::invalid_url(
            arg.to_string_lossy(),
            "not valid UTF-8 (object URLs and keys must be UTF-8)",
        ))),
        _ => Ok(Location::Path(PathBuf::from(arg))),
    }
}

/// `url` with any query and fragment cut off, for messages.
pub use xferkit::url::shown;

/// The store owning the object `url` and its key there. A URL naming a
/// prefix rather than an object (e.g. ending in `/`) gets a message saying so.
pub fn object(reg: &Registry, url: &str) -> Result<(DynHandler, Key), Failure> {
    match reg.resolve(url) {
        Ok(found) => Ok(found),
        Err(e) if e.kind() == ErrorKind::InvalidUrl => {
            if let Ok((store, p)) = prefix(reg, url)
                && (p.is_empty() || p.ends_with('/'))
            {
                return Err(Failure::from(Error::invalid_url(
                    url,
                    format!(
                        "names a prefix in store `{}`, not an object (`xfer ls` lists what is under it)",
                        store.name()
                    ),
                )));
            }
            Err(invalid_key_in(reg, url).unwrap_or(e).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Why no store owns `url`, when one owns a parent of it and the key it
/// names there breaks the key rules (`%00`, `%5C`, too long, ...): an error
/// naming the URL, the store and the rule, instead of "no store owns it".
fn invalid_key_in(reg: &Registry, url: &str) -> Option<Error> {
    let scheme_end = url.find("://")? + 3;
    let mut cut = url.len();
    while let Some(i) = url[scheme_end..cut].rfind('/') {
        let parent = &url[..scheme_end + i + 1];
        if let Ok((store, p)) = prefix(reg, parent) {
            let rest = percent_decode_str(&url[scheme_end + i + 1..]).decode_utf8_lossy();
            let key = format!("{p}{rest}");
            return Key::new(key.as_str()).err().map(|e| {
                let reason = match e {
                    Error::InvalidKey { reason, .. } => reason,
                    other => other.to_string(),
                };
                Error::invalid_url(
                    url,
                    format!("store `{}` cannot hold key {key:?}: {reason}", store.name()),
                )
            });
        }
        cut = scheme_end + i;
    }
    None
}

/// The store owning the URL prefix `url` and the key prefix it names there.
///
/// A prefix (`s3://bucket/photos/`, `file:///root`) is usually not a valid
/// key, so it cannot go through [`Registry::resolve`]. Instead each store
/// is asked about `url + "x"` (and, for a URL not ending in `/`, also
/// `url + "/x"`), and the `x` is taken off the key it answers with. As in
/// `resolve`, the store giving the shortest key prefix wins: it is the one
/// whose root the URL is nearest to.
pub fn prefix(reg: &Registry, url: &str) -> Result<(DynHandler, String), Failure> {
    let parsed = reg.parse(url)?;
    if parsed.is_http() {
        return Err(Error::not_supported(shown(url), "listing a plain http(s) link").into());
    }
    let mut candidates = vec![format!("{url}x")];
    if !url.ends_with('/') {
        candidates.push(format!("{url}/x"));
    }
    let mut best: Option<(DynHandler, String)> = None;
    for candidate in &candidates {
        let Ok(c) = ObjectUrl::parse(candidate) else {
            continue;
        };
        for name in reg.names() {
            let Ok(store) = reg.get(&name) else { continue };
            if let Some(key) = store.key_for_url(&c)
                && let Some(p) = key.strip_suffix('x')
                && best.as_ref().is_none_or(|(_, b)| p.len() < b.len())
            {
                best = Some((store, p.to_string()));
            }
        }
    }
    best.ok_or_else(|| {
        Failure::from(Error::invalid_url(
            url,
            format!(
                "no configured store owns this URL prefix (stores: {})",
                reg.names().join(", ")
            ),
        ))
    })
}

/// The URL of the prefix `prefix` (a key prefix, e.g. ending in `/`) of
/// `store`: the store's root URL with the prefix appended, as `url_for`
/// would give a key (a prefix need not be a key, so it cannot ask it).
pub fn prefix_url(store: &DynHandler, prefix: &str) -> String {
    let x = Key::new("x").map(|x| store.url_for(&x)).unwrap_or_default();
    let root = x.strip_suffix('x').unwrap_or(&x);
    format!("{root}{}", xferkit::url::encode_path(prefix))
}

/// The file name a download of `url` (key `key`) gets by default: the last
/// segment of the key, or for a plain http(s) link the last segment of its
/// path (the query dropped).
pub fn file_name_for(url: &str, key: &str) -> Result<String, Failure> {
    let parsed = ObjectUrl::parse(url)?;
    let last = if parsed.is_http() {
        let seg = parsed.path.rsplit('/').next().unwrap_or("");
        percent_decode_str(seg).decode_utf8_lossy().into_owned()
    } else {
        key.rsplit('/').next().unwrap_or("").to_string()
    };
    let unusable = last.is_empty()
        || last == "."
        || last == ".."
        || last.contains(['/', '\\'])
        || last.chars().any(char::is_control);
    if unusable {
        return Err(Failure::usage(format!(
            "cannot take a file name from {}; give a destination path",
            shown(url)
        )));
    }
    Ok(last)
}

/// Where a download goes: `dest`, or `name` inside `dest` when it is an
/// existing directory, or `name` in the current directory. Refuses a
/// missing parent directory, and an existing file unless `force`.
pub fn download_dest(dest: Option<&Path>, name: &str, force: bool) -> Result<PathBuf, Failure> {
    let path = match dest {
        None => PathBuf::from(name),
        Some(d) if d.is_dir() => d.join(name),
        Some(d) => {
            let s = d.as_os_str().to_string_lossy();
            if s.ends_with('/') || s.ends_with(std::path::MAIN_SEPARATOR) {
                return Err(Failure::failed(format!(
                    "destination directory {} does not exist",
                    d.display()
                )));
            }
            d.to_path_buf()
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failure::failed(format!(
                "{} is not a directory",
                parent.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::failed(format!(
                "destination directory {} does not exist",
                parent.display()
            )));
        }
        Err(e) => return Err(Error::from_io(parent.display().to_string(), e).into()),
    }
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Err(Failure::failed(format!(
            "{} is a directory",
            path.display()
        ))),
        Ok(_) if !force => Err(Failure::failed(format!(
            "{} already exists (use --force to overwrite it)",
            path.display()
        ))),
        _ => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operands_with_a_scheme_are_urls() {
        assert!(matches!(
            classify(OsStr::new("s3://b/k")),
            Ok(Location::Url(_))
        ));
        assert!(matches!(
            classify(OsStr::new("a/b.txt")),
            Ok(Location::Path(_))
        ));
        assert!(matches!(classify(OsStr::new("c:x")), Ok(Location::Path(_))));
        use std::os::unix::ffi::OsStrExt;
        assert!(classify(OsStr::from_bytes(b"s3://b/\xff")).is_err());
        assert!(matches!(
            classify(OsStr::from_bytes(b"a\xff.txt")),
            Ok(Location::Path(_))
        ));
    }

    #[test]
    fn http_names_drop_the_query() {
        let n = file_name_for("https://h/d/r%C3%A9sum%C3%A9.pdf?X-Sig=abc", "ignored").unwrap();
        assert_eq!(n, "résumé.pdf");
        assert!(file_name_for("https://h/", "x").is_err());
        assert!(file_name_for("https://h/d/%2E%2E", "x").is_err());
        assert!(file_name_for("https://h/d/a%2Fb", "x").is_err());
        assert_eq!(file_name_for("s3://b/p/q.txt", "p/q.txt").unwrap(), "q.txt");
    }
}
