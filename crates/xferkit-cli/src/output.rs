//! Everything printed to stdout: results as text or JSON.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use bytesize::ByteSize;
use serde_json::{Value, json};
use xferkit::{Capabilities, Error, RemoteObject};

use crate::ctx::Ctx;
use crate::fail::Failure;

/// Last second `humantime` can format (end of year 9999).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

/// Write one line to stdout. A closed pipe ends the command quietly rather
/// than panicking the way `println!` does.
pub fn line(text: impl std::fmt::Display) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::stdout_closed(),
            _ => Failure::from(Error::from_io("stdout", e)),
        })
}

/// Print `obj` as JSON, or as `text(obj)`.
pub fn print_object(
    cx: &Ctx,
    obj: &RemoteObject,
    text: impl FnOnce(&RemoteObject) -> String,
) -> Result<(), Failure> {
    if cx.json {
        line(object_json(obj))
    } else {
        line(text(obj))
    }
}

/// RFC 3339 (UTC, seconds), or `None` for times it cannot represent
/// (before 1970 or after 9999; a file's mtime can be anything).
pub fn time(t: Option<SystemTime>) -> Option<String> {
    let secs = t?.duration_since(UNIX_EPOCH).ok()?.as_secs();
    (secs <= MAX_RFC3339_SECS).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .to_string()
    })
}

/// A size for people: `5.0 MiB`.
pub fn size(n: u64) -> String {
    ByteSize::b(n).display().iec().to_string()
}

/// An object as JSON (every field, `null` when unknown).
pub fn object_json(o: &RemoteObject) -> Value {
    json!({
        "url": o.url,
        "key": o.key,
        "size": o.size,
        "etag": o.etag,
        "version": o.version,
        "checksum": o.checksum,
        "content_type": o.content_type,
        "last_modified": time(o.last_modified),
        "metadata": o.metadata,
        "cache_control": o.headers.cache_control,
        "content_disposition": o.headers.content_disposition,
        "content_encoding": o.headers.content_encoding,
        "content_language": o.headers.content_language,
        "storage_class": o.storage_class,
        "encryption": o.encryption,
        "encryption_key": o.encryption_key,
    })
}

/// One `ls` line: size, last modified, URL.
pub fn ls_line(o: &RemoteObject) -> String {
    format!(
        "{:>10}  {:<20}  {}",
        size(o.size),
        time(o.last_modified).unwrap_or_else(|| "-".into()),
        o.url
    )
}

/// `stat` as aligned `field  value` lines.
pub fn stat_text(o: &RemoteObject) -> String {
    let dash = || "-".to_string();
    let mut rows: Vec<(String, String)> = vec![
        ("url".into(), o.url.clone()),
        ("size".into(), format!("{} ({})", o.size, size(o.size))),
        ("etag".into(), o.etag.clone().unwrap_or_else(dash)),
        (
            "content-type".into(),
            o.content_type.clone().unwrap_or_else(dash),
        ),
        (
            "last-modified".into(),
            time(o.last_modified).unwrap_or_else(dash),
        ),
    ];
    if let Some(v) = &o.version {
        rows.push(("version".into(), v.clone()));
    }
    if let Some(c) = &o.checksum {
        rows.push(("checksum".into(), c.clone()));
    }
    for (k, v) in o.headers.iter() {
        rows.push((k.into(), v.to_string()));
    }
    for (k, v) in [
        ("storage-class", &o.storage_class),
        ("encryption", &o.encryption),
        ("encryption-key", &o.encryption_key),
    ] {
        if let Some(v) = v {
            rows.push((k.into(), v.clone()));
        }
    }
    for (k, v) in &o.metadata {
        rows.push((format!("metadata.{k}"), v.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Capability names that are set, in a fixed order.
pub fn capability_names(c: &Capabilities) -> Vec<&'static str> {
    [
        ("presign-get", c.presign_get),
        ("presign-put", c.presign_put),
        ("range", c.range),
        ("conditional-create", c.conditional_create),
        ("multipart", c.multipart),
        ("list-pending-uploads", c.list_pending_uploads),
        ("copy", c.copy),
        ("metadata", c.metadata),
        ("storage-class", c.storage_class),
        ("object-headers", c.object_headers),
        ("tags", c.tags),
        ("sse-s3", c.sse_service_managed),
        ("sse-kms", c.sse_kms),
        ("sse-c", c.sse_customer_key),
        ("encryption-scope", c.encryption_scope),
    ]
    .into_iter()
    .filter_map(|(n, on)| on.then_some(n))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_outside_rfc3339_do_not_panic() {
        assert_eq!(time(None), None);
        assert_eq!(time(Some(UNIX_EPOCH)), Some("1970-01-01T00:00:00Z".into()));
        assert_eq!(time(UNIX_EPOCH.checked_sub(Duration::from_secs(10))), None);
        let far = UNIX_EPOCH.checked_add(Duration::from_secs(MAX_RFC3339_SECS + 1));
        assert_eq!(time(far), None);
        let last = UNIX_EPOCH.checked_add(Duration::from_secs(MAX_RFC3339_SECS));
        assert_eq!(time(last), Some("9999-12-31T23:59:59Z".into()));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(size(0), "0 B");
    }
}
