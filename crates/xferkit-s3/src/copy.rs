//! Server-side copies above `copy_threshold`: S3 copies at most 5 GiB with
//! one CopyObject, so a larger object is copied as a multipart upload whose
//! parts are `UploadPartCopy` ranges of the source, all pinned to the
//! source's ETag (`x-amz-copy-source-if-match`: a source replaced meanwhile
//! fails the copy with `PreconditionFailed` instead of mixing two versions).
//! The destination gets the source's content type and metadata; it keeps no
//! full-object checksum (S3 computes none for a copied part list).

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt, stream};
use xferkit_core::parts::Plan;
use xferkit_core::{Error, RemoteObject, Result, RetryPolicy};

use crate::config::{MAX_PART_SIZE, MAX_PARTS};
use crate::core::{Core, Mode, encode_metadata, map_sdk};

/// Copy `source` (a stat of the object at `copy_source`, `bucket/key`
/// percent-encoded) to the full name `dst`, in parts.
pub(crate) async fn in_parts(
    core: &Core,
    retry: &RetryPolicy,
    source: &RemoteObject,
    copy_source: &str,
    dst: &str,
) -> Result<()> {
    let target = core.root.url_full(dst);
    let target = target.as_str();
    let size = source.size;
    let part = Plan::new(0, core.part_size, MAX_PART_SIZE, MAX_PARTS).part_size_for(Some(size));
    let if_match = source.etag.as_ref().map(|e| format!("\"{e}\""));
    let metadata = encode_metadata(target, &source.metadata)?;
    let created = retry
        .retry(target, |_| {
            let req = core
                .client
                .create_multipart_upload()
                .bucket(&core.bucket)
                .key(dst)
                .set_content_type(source.content_type.clone())
                .set_metadata(metadata.clone());
            async move {
                req.send()
                    .await
                    .map_err(|e| map_sdk("CreateMultipartUpload", target, Mode::Plain, e))
            }
        })
        .await?;
    let Some(upload_id) = created.upload_id() else {
        return Err(Error::backend(
            target,
            "CreateMultipartUpload returned no upload id",
            "no upload id",
        ));
    };
    let parts = stream::iter(0..size.div_ceil(part))
        .map(|i| {
            let (first, last) = (i * part, ((i + 1) * part).min(size) - 1);
            let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
            let if_match = if_match.clone();
            retry.retry(target, move |_| {
                let req = core
                    .client
                    .upload_part_copy()
                    .bucket(&core.bucket)
                    .key(dst)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(copy_source)
                    .copy_source_range(format!("bytes={first}-{last}"))
                    .set_copy_source_if_match(if_match.clone());
                async move {
                    let out = req
                        .send()
                        .await
                        .map_err(|e| map_sdk("UploadPartCopy", target, Mode::Plain, e))?;
                    let etag = out.copy_part_result().and_then(|r| r.e_tag());
                    let etag = etag.ok_or_else(|| {
                        Error::backend(target, "UploadPartCopy returned no ETag", "no ETag")
                    })?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .build())
                }
            })
        })
        .buffered(core.concurrency)
        .try_collect::<Vec<_>>()
        .await;
    let done = match parts {
        Ok(parts) => {
            let list = CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build();
            retry
                .retry(target, |_| {
                    let req = core
                        .client
                        .complete_multipart_upload()
                        .bucket(&core.bucket)
                        .key(dst)
                        .upload_id(upload_id)
                        .multipart_upload(list.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| map_sdk("CompleteMultipartUpload", target, Mode::Plain, e))
                    }
                })
                .await
        }
        Err(e) => Err(e),
    };
    let Err(e) = done else { return Ok(()) };
    // Leave no parts behind (what an abort cannot remove, `xfer gc` finds).
    let abort = retry.retry(target, |_| {
        let req = core
            .client
            .abort_multipart_upload()
            .bucket(&core.bucket)
            .key(dst)
            .upload_id(upload_id);
        async move {
            req.send()
                .await
                .map_err(|e| map_sdk("AbortMultipartUpload", target, Mode::Plain, e))
        }
    });
    if let Err(a) = abort.await {
        tracing::warn!(target = %target, error = %a.chain(), "could not abort the multipart copy");
    }
    Err(e)
}
