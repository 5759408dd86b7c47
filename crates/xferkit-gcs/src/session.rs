//! The upload requests GCS speaks, built here because gcloud-storage's take
//! no extra header: one `multipart/related` request, and a resumable
//! session's start and chunks.

use bytes::Bytes;
use futures::StreamExt;
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus, UploadedRange,
};
use reqwest_middleware::reqwest;
use xferkit_core::{ByteStream, Error, Result};

use crate::client::{check, map_sdk, parse_object};
use crate::upload::Resumable;

impl Resumable {
    pub(crate) async fn multipart_once(
        &self,
        data: ByteStream,
        size: u64,
        crc: Option<u32>,
    ) -> Result<Object> {
        let boundary = format!("xferkit-{:032x}", rand::random::<u128>());
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{}\r\n\
             --{boundary}\r\nContent-Type: {}\r\n\r\n",
            self.resource_json(crc),
            self.content_type
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let len = head.len() as u64 + size + tail.len() as u64;
        let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
            .chain(data)
            .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
        let rb = self
            .gcs
            .http
            .post(self.upload_url("multipart"))
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/related; boundary={boundary}"),
            )
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.gcs.send(&self.target, rb).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        parse_object(&self.target, &body)
    }

    /// Start a session; returns its URI (a capability: never logged).
    pub(crate) async fn start_session(&self, declared: Option<u64>) -> Result<String> {
        let mut rb = self
            .gcs
            .http
            .post(self.upload_url("resumable"))
            .header("X-Upload-Content-Type", &self.content_type)
            .json(&self.resource_json(None));
        if let Some(n) = declared {
            rb = rb.header("X-Upload-Content-Length", n);
        }
        let resp = self.gcs.send(&self.target, rb).await?;
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read the (small) body so the connection can be reused.
        let _ = resp.bytes().await;
        loc.ok_or_else(|| {
            Error::backend(
                &self.target,
                "resumable upload started without a session URI",
                "no Location header",
            )
        })
    }

    /// `PUT` `data` (`range`) to the session; with `crc` (the last chunk),
    /// `X-Goog-Hash: crc32c=...` of the whole object, which GCS checks
    /// before it creates the object. (gcloud-storage's chunk upload takes
    /// no extra header.) The session URI is not authenticated and never
    /// appears in errors.
    pub(crate) async fn put_chunk(
        &self,
        session: &ResumableUploadClient,
        data: reqwest::Body,
        range: &ChunkSize,
        crc: Option<u32>,
    ) -> Result<UploadStatus> {
        let mut rb = self
            .gcs
            .http
            .put(session.url())
            .header(reqwest::header::CONTENT_RANGE, range.to_string())
            .header(reqwest::header::CONTENT_LENGTH, range.size())
            .body(data);
        if let Some(crc) = crc {
            rb = rb.header(
                "X-Goog-Hash",
                format!("crc32c={}", xferkit_core::journal::crc32c_to_base64(crc)),
            );
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        if resp.status().as_u16() == 308 {
            let range = resp
                .headers()
                .get(reqwest::header::RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            // Read the (empty) body so the connection can be reused.
            let _ = resp.bytes().await;
            return match range {
                None => Ok(UploadStatus::NotStarted),
                Some(r) => parse_range(&r)
                    .map(UploadStatus::ResumeIncomplete)
                    .ok_or_else(|| {
                        Error::backend(
                            &self.target,
                            "the service acknowledged a chunk with an unreadable Range",
                            r,
                        )
                    }),
            };
        }
        let resp = check(&self.target, resp).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| map_sdk(&self.target, e.into()))?;
        parse_object(&self.target, &body).map(UploadStatus::Ok)
    }
}

/// `bytes=A-B` of a `308` answer.
fn parse_range(r: &str) -> Option<UploadedRange> {
    let (a, b) = r.trim().strip_prefix("bytes=")?.split_once('-')?;
    Some(UploadedRange {
        first_byte: a.trim().parse().ok()?,
        last_byte: b.trim().parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_308_answers_parse_and_bad_ones_do_not() {
        let r = parse_range("bytes=0-262143").unwrap();
        assert_eq!((r.first_byte, r.last_byte), (0, 262_143));
        assert!(parse_range("0-1").is_none());
        assert!(parse_range("bytes=a-1").is_none());
        assert!(parse_range("bytes=5").is_none());
    }
}
