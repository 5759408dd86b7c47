//! Server-side copies above `copy_threshold`: S3 copies at most 5 GiB with
//! one CopyObject, so a larger object is copied as a multipart upload whose
//! parts are `UploadPartCopy` ranges of the source, all pinned to the
//! source's ETag (`x-amz-copy-source-if-match`: a source replaced meanwhile
//! fails the copy with `PreconditionFailed` instead of mixing two versions).
//! The destination gets the source's content type and metadata, and, with
//! `checksum = "crc32c"`, the source's full-object CRC32C: the parts are
//! copied with CRC32C and the complete carries the source's, which S3 checks
//! against the parts' and keeps for downloads to verify.

use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt, stream};
use xferkit_core::journal::crc32c_to_base64;
use xferkit_core::parts::Plan;
use xferkit_core::{Error, RemoteObject, Result, RetryPolicy};

use crate::S3Checksum;
use crate::config::{MAX_PART_SIZE, MAX_PARTS};
use crate::core::{Core, Mode, encode_metadata, map_sdk, server_options, sse_c};

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
    // The source's full-object CRC32C, which the complete asks S3 to check
    // against the parts' and keep for downloads.
    let crc = source
        .checksum
        .as_deref()
        .and_then(|c| c.strip_prefix("crc32c:"))
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .filter(|_| core.checksum == S3Checksum::Crc32c);
    // The source's headers; the store's storage class and encryption (the
    // copy is a new upload: nothing else would carry them over). Tags are
    // not copied by a multipart copy.
    let mut dest = core.defaults.clone();
    dest.headers = source.headers.clone();
    dest.tags.clear();
    let key = core.read_key.as_ref();
    let created = retry
        .retry(target, |_| {
            let req = core
                .client
                .create_multipart_upload()
                .bucket(&core.bucket)
                .key(dst)
                .set_content_type(source.content_type.clone())
                .set_metadata(metadata.clone())
                .set_checksum_algorithm(crc.map(|_| ChecksumAlgorithm::Crc32C))
                .set_checksum_type(crc.map(|_| ChecksumType::FullObject));
            let req = server_options!(req, &dest);
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
                let req = sse_c!(copy_source sse_c!(req, key), key);
                async move {
                    let out = req
                        .send()
                        .await
                        .map_err(|e| map_sdk("UploadPartCopy", target, Mode::Plain, e))?;
                    let result = out.copy_part_result();
                    let part_crc = result.and_then(|r| r.checksum_crc32_c());
                    let etag = result.and_then(|r| r.e_tag());
                    let etag = etag.ok_or_else(|| {
                        Error::backend(target, "UploadPartCopy returned no ETag", "no ETag")
                    })?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .set_checksum_crc32_c(part_crc.map(str::to_string))
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
                        .set_checksum_crc32_c(crc.map(crc32c_to_base64))
                        .set_checksum_type(crc.map(|_| ChecksumType::FullObject))
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
