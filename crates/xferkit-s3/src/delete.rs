//! Batch deletes: S3's DeleteObjects, up to 1000 keys a request, in quiet
//! mode (the answer lists only the keys that failed, each with its code).
//! A store without DeleteObjects (some S3-compatible services answer
//! `NotImplemented`) gets one DeleteObject per key instead, and so does a
//! store configured with `checksum = "md5"` or `"none"`: DeleteObjects must
//! carry a checksum, which the SDK sends as the `x-amz-checksum-*` header
//! such stores refuse.

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use xferkit_core::status::Answer;
use xferkit_core::{Error, ErrorKind, Key, Result, RetryPolicy};

use crate::S3Checksum;
use crate::core::{Core, Mode, S3Failure, map_sdk};

/// Keys one DeleteObjects request takes at most (S3's limit).
pub(crate) const MAX_KEYS: usize = 1000;

/// DeleteObject requests at once where there is no DeleteObjects.
const ONE_BY_ONE: usize = 16;

/// Each key of `keys` with its result, in order, deleted `MAX_KEYS` to a
/// request. A failed
/// request is the outer error when it is the first (no key's fate known);
/// after that its keys fail one by one. `one` deletes a single key (the
/// store's `delete`), for a service that has no DeleteObjects.
pub(crate) async fn delete_many<'a>(
    core: &Core,
    retry: &RetryPolicy,
    keys: &[Key],
    one: &(dyn Fn(Key) -> BoxFuture<'a, Result<()>> + Sync),
) -> Result<Vec<(Key, Result<()>)>> {
    let mut out: Vec<(Key, Result<()>)> = keys.iter().map(|k| (k.clone(), Ok(()))).collect();
    let valid: Vec<usize> = (0..out.len()).collect();
    if core.checksum != S3Checksum::Crc32c {
        one_by_one(&mut out, &valid, one).await;
        return Ok(out);
    }
    let mut sent_any = false;
    for chunk in valid.chunks(MAX_KEYS) {
        match request(core, retry, keys, chunk).await {
            Ok(failed) => {
                for (i, e) in failed {
                    out[i].1 = Err(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::NotSupported => one_by_one(&mut out, chunk, one).await,
            Err(e) if !sent_any => return Err(e),
            Err(e) => {
                for &i in chunk {
                    out[i].1 = Err(Error::Backend {
                        target: core.root.url(&keys[i]),
                        message: format!("not deleted: {}", e.chain()),
                        source: None,
                    });
                }
            }
        }
        sent_any = true;
    }
    Ok(out)
}

/// `out[i]`'s key deleted with `one`, for each `i` of `which`, a few at once.
async fn one_by_one<'a>(
    out: &mut [(Key, Result<()>)],
    which: &[usize],
    one: &(dyn Fn(Key) -> BoxFuture<'a, Result<()>> + Sync),
) {
    let results: Vec<(usize, Result<()>)> = stream::iter(which.iter().copied())
        .map(|i| {
            let key = out[i].0.clone();
            async move { (i, one(key).await) }
        })
        .buffered(ONE_BY_ONE)
        .collect()
        .await;
    for (i, r) in results {
        out[i].1 = r;
    }
}

/// One DeleteObjects request for `keys[i]`, `i` in `chunk`: the indexes of
/// the keys S3 did not delete, with why.
async fn request(
    core: &Core,
    retry: &RetryPolicy,
    keys: &[Key],
    chunk: &[usize],
) -> Result<Vec<(usize, Error)>> {
    let full: Vec<String> = chunk.iter().map(|&i| core.root.full(&keys[i])).collect();
    let objects = full
        .iter()
        .map(|f| ObjectIdentifier::builder().key(f).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::backend(core.root.url(""), "DeleteObjects", e))?;
    let delete = Delete::builder()
        .set_objects(Some(objects))
        .quiet(true)
        .build()
        .map_err(|e| Error::backend(core.root.url(""), "DeleteObjects", e))?;
    let target = core.root.url_full(&full[0]);
    let answer = retry
        .retry(&target, |_| async {
            core.client
                .delete_objects()
                .bucket(&core.bucket)
                .delete(delete.clone())
                .send()
                .await
                .map_err(|e| map_sdk("DeleteObjects", &target, Mode::Plain, e))
        })
        .await?;
    let mut failed = Vec::new();
    for err in answer.errors() {
        let Some(pos) = err.key().and_then(|k| full.iter().position(|f| f == k)) else {
            continue;
        };
        let code = err.code();
        // A key that is not there is deleted already (as `delete` has it).
        if code == Some("NoSuchKey") {
            continue;
        }
        let url = core.root.url_full(&full[pos]);
        let failure = S3Failure::of_key("DeleteObjects", code, err.message());
        let e = Answer::new(None)
            .code(code)
            .operation("DeleteObjects")
            .error(url, failure);
        failed.push((chunk[pos], e));
    }
    Ok(failed)
}
