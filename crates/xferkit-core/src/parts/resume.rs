//! Resuming an upload of a file after a crash: the journal is a hint, the
//! store is the truth.

use std::path::Path;

use super::session::{abort, verify};
use super::{Held, PartStore};
use crate::journal::{JournalFile, JournalPart, SourceFingerprint, UploadJournal, crc32c_of_range};
use crate::{RemoteObject, TransferCtx};

/// The journal of one upload of a file, kept up to date as parts are
/// acknowledged.
pub(crate) struct Journaled {
    pub file: JournalFile,
    pub data: UploadJournal,
}

impl Journaled {
    /// A fresh journal (no session yet) for uploading `path` to `target`,
    /// or `None` when the file cannot be fingerprinted (no resume).
    pub(crate) async fn open(
        dir: &Path,
        target: &str,
        path: &Path,
        part_size: u64,
        create_only: bool,
    ) -> Option<Self> {
        let fingerprint = match SourceFingerprint::of(path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e.chain(), "no upload journal: cannot fingerprint the source");
                return None;
            }
        };
        let data = UploadJournal::new(
            target.to_string(),
            path.to_path_buf(),
            fingerprint,
            String::new(),
            part_size,
            create_only,
        );
        let file = JournalFile::for_upload(dir, target, path);
        Some(Journaled { file, data })
    }

    pub(crate) async fn record(&mut self, part: JournalPart) {
        self.data.parts.push(part);
        if let Err(e) = self.file.save(&self.data).await {
            tracing::warn!(path = %self.file.path().display(), error = %e.chain(), "could not update the upload journal");
        }
    }
}

/// What a previous run left that this one can use.
#[allow(clippy::large_enum_variant)] // a RemoteObject: moved once, not worth a Box
pub(crate) enum Resume {
    Fresh,
    /// Go on with `session`; `kept` are stored and verified, in order.
    Continue {
        session: String,
        kept: Vec<JournalPart>,
    },
    /// The previous run's upload had completed, and is this file.
    Done(RemoteObject),
}

/// Compare the journal a previous run left (if any) with the store and the
/// file; `j` becomes the journal to go on with.
pub(crate) async fn resume(
    store: &dyn PartStore,
    j: &mut Journaled,
    path: &Path,
    size: u64,
    ctx: &TransferCtx,
) -> Resume {
    let target = store.target();
    let policy = ctx.retry_policy();
    let Some(old) = j.file.load().await else {
        return Resume::Fresh;
    };
    if old.upload_id.is_empty() {
        return Resume::Fresh;
    }
    let same = old.target == j.data.target
        && old.fingerprint == j.data.fingerprint
        && old.part_size == j.data.part_size
        && old.create_only == j.data.create_only;
    let fresh = |why: &str| {
        tracing::info!(target = %target, "{why}; starting over");
        Resume::Fresh
    };
    if !same {
        abort(store, &old.upload_id, policy).await;
        return fresh("the source changed since the interrupted upload");
    }
    let held = match ctx
        .retry(target, |_| store.held(&old.upload_id, size))
        .await
    {
        Ok(h) => h,
        Err(e) => {
            // Gone already, or unreadable (moto's ListParts): abort it so
            // that it is not left pending either way.
            tracing::info!(target = %target, error = %e.chain(), "the interrupted upload cannot be resumed");
            abort(store, &old.upload_id, policy).await;
            return fresh("the interrupted upload cannot be resumed");
        }
    };
    let kept = match held {
        Held::Done(stored) => {
            // A crash after the last chunk was stored: the object must be
            // this file's bytes. Else (a store that completed a session on
            // a status query; the file changed) it is deleted, and the file
            // sent again.
            let crc = match stored.object.size == size {
                true => crc32c_of_range(path, 0, size).await,
                false => None,
            };
            if let Some(crc) = crc
                && let Ok(obj) = verify(store, stored.clone(), crc, policy).await
            {
                return Resume::Done(obj);
            }
            if let Err(e) = policy
                .retry(target, |_| store.discard(&stored.object))
                .await
            {
                tracing::warn!(target = %target, error = %e.chain(), "could not delete an object that is not this file");
            }
            return fresh("the stored object is not this file");
        }
        Held::Parts(listed) => {
            if listed.is_empty() && !old.parts.is_empty() {
                // None of the recorded parts is listed: the upload is gone
                // (completed or aborted), or the store answers an unknown
                // upload with an empty list (s3s-fs).
                abort(store, &old.upload_id, policy).await;
                return fresh("the interrupted upload is gone from the store");
            }
            let mut keep = Vec::new();
            for p in old.parts {
                let unquote = |e: &str| e.trim_matches('"').to_string();
                let listed_same = listed.get(&p.number).is_some_and(|(len, etag)| {
                    *len == p.len
                        && etag
                            .as_deref()
                            .is_none_or(|e| unquote(e) == unquote(&p.etag))
                });
                // A part the store lacks, holds at another size or that the
                // file no longer has is sent again.
                if listed_same && crc32c_of_range(path, p.offset, p.len).await == Some(p.crc32c) {
                    keep.push(p);
                }
            }
            keep.sort_by_key(|p| p.number);
            keep
        }
        Held::Prefix(have) => {
            let mut parts = old.parts;
            parts.sort_by_key(|p| p.number);
            let mut keep: Vec<JournalPart> = Vec::new();
            let mut end = 0;
            for p in parts {
                if p.offset != end || p.offset + p.len > have {
                    break;
                }
                if crc32c_of_range(path, p.offset, p.len).await != Some(p.crc32c) {
                    // The store has bytes the file no longer has.
                    abort(store, &old.upload_id, policy).await;
                    return fresh("the source changed since the interrupted upload");
                }
                end += p.len;
                keep.push(p);
            }
            if end < have {
                // Bytes the store took after the last journaled chunk (the
                // crash came between its answer and the journal's update);
                // the last chunk's whole-object CRC32C checks them.
                let Some(crc) = crc32c_of_range(path, end, have - end).await else {
                    abort(store, &old.upload_id, policy).await;
                    return fresh("the source file shrank");
                };
                let number = keep.last().map_or(1, |p| p.number + 1);
                keep.push(JournalPart::new(
                    number,
                    end,
                    have - end,
                    String::new(),
                    crc,
                ));
            }
            keep
        }
    };
    let stored: u64 = keep_len(&kept);
    tracing::info!(
        target = %target,
        parts = kept.len(),
        bytes = stored,
        "resuming an interrupted upload: {stored} bytes already stored"
    );
    j.data.upload_id = old.upload_id.clone();
    j.data.parts = kept.clone();
    if let Err(e) = j.file.save(&j.data).await {
        tracing::warn!(error = %e.chain(), "could not update the upload journal");
    }
    Resume::Continue {
        session: old.upload_id,
        kept,
    }
}

fn keep_len(parts: &[JournalPart]) -> u64 {
    parts.iter().map(|p| p.len).sum()
}
