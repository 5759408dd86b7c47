//! Uploads: GCS's calls for the core parts engine (`xferkit_core::parts`),
//! which chooses one request or a resumable upload, sends its chunks in
//! order (`Layout::Sequential`), retries, journals, resumes and cancels.
//!
//! Small uploads are `uploadType=multipart` (metadata and data in one
//! request) rather than `uploadType=media`: it carries content type and user
//! metadata, and fake-gcs-server enforces `ifGenerationMatch=0` on it (not on
//! media uploads). The data part carries the content type too: fake-gcs-server
//! takes the object's type from it.
//!
//! A chunk is not blindly resent: a try after a failed one first asks the
//! session how much it has (`PUT` with `Content-Range: bytes */SIZE`) and
//! sends only the rest. Status queries always name the size: fake-gcs-server
//! finalizes a session on `bytes */*`.
//!
//! Integrity: the CRC32C of the data is checked by the store where it can:
//! in the object resource of a one-request upload whose data is in memory,
//! and as `X-Goog-Hash: crc32c=...` on the last chunk of a resumable upload
//! (the engine combines it from the chunks'). GCS refuses a mismatch (400)
//! and creates nothing. Whatever was sent, the CRC32C in the object resource
//! the store returns is compared with the one of the bytes sent (emulators
//! verify nothing): on a mismatch that generation is deleted
//! (`ifGenerationMatch`, so a newer write is never removed); a one-request
//! upload is then sent again (a `Transient` error for the retry loop) and a
//! resumable one fails with `ChecksumMismatch`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::TryStreamExt;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use reqwest_middleware::reqwest;
use xferkit_core::journal::{JournalPart, crc32c_from_base64, crc32c_label, crc32c_to_base64};
use xferkit_core::parts::{
    Acked, Body, Held, Part, PartBody, PartStore, Plan, Stored, exact_length,
};
use xferkit_core::{ByteStream, Error, ErrorKind, PutOptions, RemoteObject, Result};

use crate::client::{Gcs, ServiceError, map_sdk, to_remote};

/// File read size of a streamed one-request upload.
const READ_BUF: usize = 256 * 1024;
/// GCS chunks are multiples of this.
const CHUNK_GRANULE: u64 = 256 * 1024;
/// Chunk answers in a row that acknowledge nothing before giving up.
const MAX_STALLS: u32 = 3;

/// The CRC32C in an object resource, if it has one that can be read.
fn stored_crc(obj: &Object) -> Option<u32> {
    crc32c_from_base64(obj.crc32c.as_deref()?)
}

/// GCS's message when it refused data whose CRC32C does not match the one
/// sent with it (HTTP 400, "Provided CRC32C ... doesn't match calculated
/// CRC32C ...").
fn refused_checksum(e: &Error) -> Option<&str> {
    let Error::Backend {
        source: Some(s), ..
    } = e
    else {
        return None;
    };
    let s = s.downcast_ref::<ServiceError>()?;
    (s.status == 400 && s.message.to_ascii_lowercase().contains("crc32c"))
        .then_some(s.message.as_str())
}

/// One upload to one object.
pub(crate) struct Resumable {
    pub gcs: Arc<Gcs>,
    pub bucket: String,
    /// Full object name (store prefix included).
    pub name: String,
    /// Key within the store, for the returned record.
    pub key: String,
    /// Canonical URL, for errors.
    pub target: String,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
    pub create_only: bool,
    pub headers: xferkit_core::ObjectHeaders,
    pub storage_class: Option<String>,
    /// CMEK: sent as the `kmsKeyName` query parameter.
    pub kms_key_name: Option<String>,
}

impl Resumable {
    /// How the engine cuts uploads for this store: chunks in order.
    pub(crate) fn plan(
        threshold: u64,
        chunk_size: u64,
        opts: &PutOptions,
        state_dir: Option<std::path::PathBuf>,
    ) -> Plan {
        Plan::new(threshold, chunk_size, u64::MAX, u64::MAX)
            .granule(CHUNK_GRANULE)
            .sequential()
            .create_only(opts.if_not_exists)
            .state_dir(state_dir)
    }

    /// Fail early on a content type no header can carry.
    pub(crate) fn check_content_type(&self) -> Result<()> {
        if self.content_type.chars().any(|c| c.is_control()) {
            return Err(Error::backend(
                &self.target,
                "content type contains control characters",
                format!("{:?}", self.content_type),
            ));
        }
        Ok(())
    }

    fn stored(&self, obj: &Object) -> Stored {
        let remote = to_remote(self.target.clone(), self.key.clone(), obj);
        Stored::new(remote, stored_crc(obj))
    }

    fn session(&self, session: &str) -> ResumableUploadClient {
        self.gcs.client.get_resumable_upload(session.to_string())
    }

    pub(crate) fn upload_url(&self, kind: &str) -> String {
        let mut u = format!(
            "{}/b/{}/o?uploadType={kind}",
            self.gcs.upload_base,
            crate::sign::encode_segment(&self.bucket)
        );
        if self.create_only {
            u.push_str("&ifGenerationMatch=0");
        }
        if let Some(k) = &self.kms_key_name {
            u.push_str("&kmsKeyName=");
            u.push_str(&crate::sign::encode_segment(k));
        }
        u
    }

    /// The object resource; with `crc`, the store checks the data against it.
    pub(crate) fn resource_json(&self, crc: Option<u32>) -> serde_json::Value {
        let mut r = serde_json::json!({
            "name": self.name,
            "contentType": self.content_type,
            "metadata": self.metadata,
        });
        if let Some(crc) = crc {
            r["crc32c"] = crc32c_to_base64(crc).into();
        }
        let h = &self.headers;
        for (field, v) in [
            ("cacheControl", &h.cache_control),
            ("contentDisposition", &h.content_disposition),
            ("contentEncoding", &h.content_encoding),
            ("contentLanguage", &h.content_language),
            ("storageClass", &self.storage_class),
        ] {
            if let Some(v) = v {
                r[field] = v.clone().into();
            }
        }
        r
    }

    /// Delete exactly `generation` (`ifGenerationMatch`: a newer write of
    /// the key is never removed). Gone already, or replaced by a newer
    /// write: not visible, fine.
    async fn delete_generation(&self, generation: i64) -> Result<()> {
        let req = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: self.name.clone(),
            if_generation_match: Some(generation),
            ..Default::default()
        };
        match self
            .gcs
            .client
            .delete_object(&req)
            .await
            .map_err(|e| map_sdk(&self.target, e))
        {
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::PreconditionFailed
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }
}

#[xferkit_core::async_trait]
impl PartStore for Resumable {
    fn target(&self) -> &str {
        &self.target
    }

    /// One `uploadType=multipart` request, streaming the data; a store that
    /// holds other bytes than were sent fails it `Transient` (sent again).
    async fn put_whole(&self, body: &Body, size: u64, crc32c: u32) -> Result<Stored> {
        let data: ByteStream = match body {
            Body::Bytes(b) => {
                let b = b.clone();
                Box::pin(futures::stream::once(async move { Ok(b) }))
            }
            Body::File(path) => {
                let shown = path.display().to_string();
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?;
                let stream: ByteStream = Box::pin(
                    tokio_util::io::ReaderStream::with_capacity(file, READ_BUF)
                        .map_err(move |e| Error::from_io(&shown, e)),
                );
                exact_length(stream, size, self.target.clone())
            }
        };
        // The CRC32C goes in the resource, ahead of the data: GCS refuses
        // bytes that do not match it (400) and stores nothing.
        match self.multipart_once(data, size, Some(crc32c)).await {
            Ok(obj) => Ok(self.stored(&obj)),
            Err(e) => Err(match refused_checksum(&e) {
                Some(msg) => Error::transient(
                    &self.target,
                    format!(
                        "the store's checksum did not match what was sent \
                         (corrupted in transit; nothing stored): {msg}"
                    ),
                ),
                None => e,
            }),
        }
    }

    async fn exists(&self) -> Result<bool> {
        let req = gcloud_storage::http::objects::get::GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.name.clone(),
            ..Default::default()
        };
        match self
            .gcs
            .client
            .get_object(&req)
            .await
            .map_err(|e| map_sdk(&self.target, e))
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn start(&self, size: Option<u64>) -> Result<String> {
        self.start_session(size).await
    }

    /// Send the chunk until the session holds all of it. After a failed try
    /// the session may hold part of it: ask, then send only the rest.
    async fn put_part(&self, session: &str, part: &Part, attempt: u32) -> Result<Acked> {
        let session = self.session(session);
        let map = |e| map_sdk(&self.target, e);
        let end = part.offset + part.len();
        let whole = part.last.map(|(_, crc)| crc);
        let mut from = part.offset;
        if attempt > 1 {
            match session.status(part.total).await.map_err(map)? {
                UploadStatus::Ok(obj) => return Ok(Acked::Done(self.stored(&obj))),
                UploadStatus::ResumeIncomplete(r) => from = (r.last_byte + 1).clamp(from, end),
                UploadStatus::NotStarted => {}
            }
        }
        let mut stalls = 0;
        loop {
            if from == end && whole.is_none() {
                return Ok(Acked::Part(String::new()));
            }
            let range = if from == end {
                ChunkSize::new(from, from, Some(from))
            } else {
                ChunkSize::new(from, end - 1, part.last.map(|(size, _)| size))
            };
            let skip = from - part.offset;
            // A file's chunk streams from the file (a fresh reader each send).
            let data: reqwest::Body = match &part.body {
                PartBody::Bytes(b) => b.slice(usize::try_from(skip).unwrap_or(0)..).into(),
                PartBody::File(span) => reqwest::Body::wrap_stream(span.tail(skip).reader()),
            };
            let status = self
                .put_chunk(&session, data, &range, whole)
                .await
                .map_err(|e| match (whole, refused_checksum(&e)) {
                    (Some(sent), Some(msg)) => Error::ChecksumMismatch {
                        target: self.target.clone(),
                        expected: crc32c_label(sent),
                        actual: format!("refused by the store: {msg}"),
                    },
                    _ => e,
                })?;
            let have = match status {
                UploadStatus::Ok(obj) => return Ok(Acked::Done(self.stored(&obj))),
                UploadStatus::ResumeIncomplete(r) => r.last_byte + 1,
                UploadStatus::NotStarted => 0,
            };
            if have < from || have > end {
                return Err(Error::backend(
                    &self.target,
                    "the service acknowledged an unexpected range",
                    format!("persisted {have} bytes after sending {from}..{end}"),
                ));
            }
            stalls = if have == from { stalls + 1 } else { 0 };
            if stalls >= MAX_STALLS {
                return Err(Error::transient(
                    &self.target,
                    format!("resumable upload made no progress at byte {from}"),
                ));
            }
            from = have;
        }
    }

    async fn held(&self, session: &str, size: u64) -> Result<Held> {
        let status = self.session(session).status(Some(size)).await;
        Ok(match status.map_err(|e| map_sdk(&self.target, e))? {
            UploadStatus::Ok(obj) => Held::Done(self.stored(&obj)),
            UploadStatus::ResumeIncomplete(r) => Held::Prefix(r.last_byte + 1),
            UploadStatus::NotStarted => Held::Prefix(0),
        })
    }

    async fn complete(&self, _: &str, _: &[JournalPart], _: u64, _: u32, _: u32) -> Result<Stored> {
        Err(Error::not_supported(
            &self.target,
            "complete (the last chunk completes)",
        ))
    }

    async fn abort(&self, session: &str) -> Result<()> {
        self.session(session)
            .cancel()
            .await
            .map_err(|e| map_sdk(&self.target, e))?;
        tracing::debug!(target = %self.target, "resumable upload cancelled");
        Ok(())
    }

    async fn discard(&self, object: &RemoteObject) -> Result<()> {
        let generation = object
            .version
            .as_deref()
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        self.delete_generation(generation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_values_read_and_write_as_gcs_spells_them() {
        // The CRC32C of "hello world" as GCS reports it (client.rs tests use the same resource).
        let crc = xferkit_core::journal::crc32c(b"hello world");
        assert_eq!(crc32c_to_base64(crc), "yZRlqg==");
        assert_eq!(crc32c_label(crc), "crc32c:c99465aa");
        let mut o = Object {
            crc32c: Some("yZRlqg==".into()),
            ..Default::default()
        };
        assert_eq!(stored_crc(&o), Some(crc));
        o.crc32c = Some("not base64!".into());
        assert_eq!(stored_crc(&o), None);
        o.crc32c = Some("AAAA".into()); // 3 bytes
        assert_eq!(stored_crc(&o), None);
        o.crc32c = None;
        assert_eq!(stored_crc(&o), None);
    }

    #[test]
    fn only_a_400_about_crc32c_is_a_checksum_refusal() {
        let e =
            |status, msg: &str| crate::client::status_error("gs://b/k", status, msg.to_string());
        let gcs = "Provided CRC32C \"AAAAAA==\" doesn't match calculated CRC32C \"2HvlZg==\".";
        assert_eq!(refused_checksum(&e(400, gcs)), Some(gcs));
        assert_eq!(refused_checksum(&e(400, "Invalid argument.")), None);
        assert_eq!(refused_checksum(&e(503, gcs)), None);
    }
}
