//! Listing like the peers: a delimiter ("directories"), start-after and a
//! limit ([`crate::FileTransferHandler::list_with`]), and the one emulation
//! of them over a plain listing that stores without them use.

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{RemoteObject, Result};

/// One entry of [`crate::FileTransferHandler::list_with`].
#[allow(clippy::large_enum_variant)] // a RemoteObject: moved once, not worth a Box
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListEntry {
    /// An object.
    Object(RemoteObject),
    /// With a delimiter: the keys that continue past `prefix` to a
    /// delimiter, as one common prefix (ending in the delimiter), relative
    /// to the store like keys: `photos/2024/`.
    Prefix(String),
}

impl ListEntry {
    /// The key, or the common prefix: what entries are ordered and
    /// `start_after` is compared by.
    pub fn name(&self) -> &str {
        match self {
            ListEntry::Object(o) => &o.key,
            ListEntry::Prefix(p) => p,
        }
    }
}

/// How [`crate::FileTransferHandler::list_with`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListOptions {
    /// Group the keys that continue past the prefix to this string (`"/"`)
    /// into one [`ListEntry::Prefix`] each, as S3's `delimiter` does.
    pub delimiter: Option<String>,
    /// Only keys that sort after this one (byte order), as S3's `StartAfter`:
    /// a listing resumes after the last key it saw. Relative to the store.
    pub start_after: Option<String>,
    /// At most this many entries (objects and prefixes together).
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Directories: group by `/`.
    pub fn with_delimiter(mut self, d: impl Into<String>) -> Self {
        self.delimiter = Some(d.into());
        self
    }
    pub fn with_start_after(mut self, key: impl Into<String>) -> Self {
        self.start_after = Some(key.into());
        self
    }
    pub fn with_limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
}

/// The options over `objects`, a plain listing of `prefix` in ascending key
/// order (as every [`crate::FileTransferHandler::list`] yields it): keys
/// after `start_after`, grouped at the delimiter, at most `limit` entries.
/// Stores whose service does this server-side override `list_with`; the
/// result is the same.
pub fn emulate(
    objects: BoxStream<'static, Result<RemoteObject>>,
    prefix: &str,
    opts: &ListOptions,
) -> BoxStream<'static, Result<ListEntry>> {
    let prefix = prefix.to_string();
    let ListOptions {
        delimiter,
        start_after,
        limit,
    } = opts.clone();
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let mut last_prefix: Option<String> = None;
    let entries = objects.filter_map(move |o| {
        let out = match o {
            Err(e) => Some(Err(e)),
            Ok(o) if start_after.as_deref().is_some_and(|s| o.key.as_str() <= s) => None,
            Ok(o) => {
                let group = delimiter.as_deref().and_then(|d| {
                    let rest = o.key.get(prefix.len()..)?;
                    let i = rest.find(d)?;
                    Some(format!("{prefix}{}", &rest[..i + d.len()]))
                });
                match group {
                    // Keys come in order: one prefix's keys are consecutive.
                    Some(p) if last_prefix.as_deref() == Some(p.as_str()) => None,
                    Some(p) => {
                        last_prefix = Some(p.clone());
                        Some(Ok(ListEntry::Prefix(p)))
                    }
                    None => Some(Ok(ListEntry::Object(o))),
                }
            }
        };
        futures::future::ready(out)
    });
    match limit {
        Some(n) => entries.take(n).boxed(),
        None => entries.boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(keys: &[&str], prefix: &str, opts: ListOptions) -> Vec<String> {
        let objects: Vec<Result<RemoteObject>> = keys
            .iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| Ok(RemoteObject::new(format!("t://{k}"), *k, 1)))
            .collect();
        let s = emulate(futures::stream::iter(objects).boxed(), prefix, &opts);
        futures::executor::block_on(
            s.map(|e| match e.unwrap() {
                ListEntry::Object(o) => o.key,
                ListEntry::Prefix(p) => format!("PRE {p}"),
            })
            .collect(),
        )
    }

    #[test]
    fn delimiter_start_after_and_limit_behave_as_s3s() {
        let keys = ["a.txt", "d/1", "d/2", "d/e/3", "dz", "f/1"];
        let dirs = ListOptions::default().with_delimiter("/");
        assert_eq!(
            names(&keys, "", dirs.clone()),
            ["a.txt", "PRE d/", "dz", "PRE f/"]
        );
        assert_eq!(names(&keys, "d/", dirs.clone()), ["d/1", "d/2", "PRE d/e/"]);
        // A string prefix, not only whole segments.
        assert_eq!(names(&keys, "d", dirs.clone()), ["PRE d/", "dz"]);
        let after = dirs.clone().with_start_after("d/1");
        assert_eq!(names(&keys, "", after), ["PRE d/", "dz", "PRE f/"]);
        assert_eq!(
            names(&keys, "", ListOptions::default().with_start_after("d/2")),
            ["d/e/3", "dz", "f/1"]
        );
        assert_eq!(names(&keys, "", dirs.with_limit(2)), ["a.txt", "PRE d/"]);
        assert_eq!(
            names(&keys, "", ListOptions::default().with_limit(0)),
            Vec::<String>::new()
        );
    }
}
