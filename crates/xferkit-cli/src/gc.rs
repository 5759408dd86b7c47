//! `xfer gc`: find and abort orphaned multipart uploads, and remove the
//! temp files of local uploads whose process died.
//!
//! An S3 multipart upload that was never completed or aborted (a process
//! killed mid-upload, a crashed tool) keeps its parts, billed, and invisible
//! to `ls`. xferkit aborts its own uploads when they fail or are stopped;
//! `gc` cleans up after everything else. A local store lists the temp files
//! under `ROOT/.xferkit/tmp` that no live process holds (each writer keeps a
//! `flock` on its file; the kernel drops it when the process dies): those
//! are collected whatever their age, as their writer is known to be gone.
//! Stores that have nothing of the kind say why (see docs/reliability.md,
//! "Garbage collection").

use std::time::{Duration, SystemTime};

use serde_json::json;
use xferkit::{DynHandler, PendingUpload, Registry};

use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::output::{line, time};
use crate::target;

/// Run `xfer gc` on `--store NAME`, a URL prefix, or every configured store.
pub async fn run(
    cx: &Ctx,
    prefix: Option<&str>,
    store: Option<&str>,
    older_than: Duration,
    dry_run: bool,
) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let targets: Vec<(DynHandler, String)> = match (prefix, store) {
        (Some(url), _) => vec![target::prefix(reg, url)?],
        (None, Some(name)) => vec![(reg.get(name)?, String::new())],
        (None, None) => all_stores(reg)?,
    };
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut failures = Vec::new();
    for (store, prefix) in targets {
        if !store.capabilities().list_pending_uploads {
            if !cx.quiet {
                crate::note(&format!(
                    "store `{}`: {}",
                    store.name(),
                    nothing_to_collect(&target::prefix_url(&store, "x"))
                ));
            }
            continue;
        }
        let pending = store.list_pending_uploads(&prefix).await?;
        let dead = writer_known_dead(&target::prefix_url(&store, "x"));
        for p in pending {
            if !dead && !is_old(p.initiated, cutoff, older_than) {
                continue;
            }
            let result = if dry_run {
                Ok(())
            } else {
                store.abort_pending_upload(&p).await
            };
            match result {
                Ok(()) => report(
                    cx,
                    &store,
                    &p,
                    if dry_run { "would-abort" } else { "aborted" },
                )?,
                Err(e) => {
                    report(cx, &store, &p, "failed")?;
                    failures.push(e);
                }
            }
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0).into()),
        n => {
            let first = failures.remove(0);
            let mut f = Failure::from(first);
            f.message = f
                .message
                .map(|m| format!("{m} (and {} more aborts failed)", n - 1));
            Err(f)
        }
    }
}

/// Whether an upload started at `initiated` is older than `older_than`
/// (started at or before `cutoff`, which is now − `older_than`). An upload
/// of unknown age is taken only by an explicit `--older-than 0s`.
fn is_old(initiated: Option<SystemTime>, cutoff: SystemTime, older_than: Duration) -> bool {
    match initiated {
        Some(t) => t <= cutoff,
        None => older_than.is_zero(),
    }
}

/// Whether a store lists only uploads whose writer is known to be gone, so
/// that no age needs to pass first: a local store lists the temp files whose
/// lock no process holds. By URL scheme, as [`nothing_to_collect`] does (a
/// capability flag in xferkit-core would say it better).
fn writer_known_dead(url: &str) -> bool {
    url.starts_with("file://")
}

/// Every configured store except the `http` link store, which holds nothing.
fn all_stores(reg: &Registry) -> Result<Vec<(DynHandler, String)>, Failure> {
    let mut out = Vec::new();
    for name in reg.names() {
        let store = reg.get(&name)?;
        if target::prefix_url(&store, "x").starts_with("http") || name == "http" {
            continue;
        }
        out.push((store, String::new()));
    }
    Ok(out)
}

/// Why a store without pending-upload listing needs no collecting, by the
/// scheme of its URLs.
fn nothing_to_collect(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s) {
        Some("az") => {
            "nothing to list or abort: Azure discards uncommitted blocks by itself 7 days after \
             they were staged, and they never become a visible blob"
        }
        Some("gs") => {
            "nothing to list or abort: GCS resumable upload sessions expire by themselves after \
             7 days and never become a visible object"
        }
        _ => "nothing to list or abort: this store has no pending multipart uploads",
    }
}

fn report(cx: &Ctx, store: &DynHandler, p: &PendingUpload, action: &str) -> Result<(), Failure> {
    let url = target::prefix_url(store, &p.key);
    if cx.json {
        return line(json!({
            "store": store.name(),
            "url": url,
            "key": p.key,
            "upload_id": p.upload_id,
            "initiated": time(p.initiated),
            "action": action,
        }));
    }
    if cx.quiet && action != "failed" {
        return Ok(());
    }
    line(format!(
        "{action:<11}  {:<20}  {url}  (upload id {})",
        time(p.initiated).unwrap_or_else(|| "-".into()),
        p.upload_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uploads_older_than_the_age_are_collected() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let cutoff = now - day;
        assert!(is_old(Some(now - 2 * day), cutoff, day));
        assert!(is_old(Some(cutoff), cutoff, day));
        assert!(!is_old(Some(now - day / 2), cutoff, day));
        assert!(!is_old(Some(now), cutoff, day));
        // Unknown age: only with --older-than 0s.
        assert!(!is_old(None, cutoff, day));
        assert!(is_old(None, now, Duration::ZERO));
        // 0s takes everything started up to now.
        assert!(is_old(Some(now), now, Duration::ZERO));
    }

    #[test]
    fn stores_without_uploads_say_why() {
        assert!(nothing_to_collect("az://acct/c/x").contains("7 days"));
        assert!(nothing_to_collect("gs://b/x").contains("7 days"));
        assert!(writer_known_dead("file:///r/x"));
        assert!(!writer_known_dead("s3://b/x"));
    }
}
