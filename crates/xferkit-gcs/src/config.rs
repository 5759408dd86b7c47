//! `GcsConfig`: the keys of one `[stores.NAME]` table with `backend = "gcs"`.

use std::path::PathBuf;

use xferkit_core::Result;
use xferkit_core::settings;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// GCS requires every resumable chunk but the last to be a multiple of 256 KiB.
pub(crate) const CHUNK_GRANULE: u64 = 256 * KIB;
/// Largest `multipart_threshold`: one single-request upload of at most this
/// much (a stream of unknown size is buffered up to it).
pub(crate) const MAX_THRESHOLD: u64 = 5 * 1024 * MIB;
/// Largest `chunk_size` (one chunk is held in memory).
pub(crate) const MAX_CHUNK: u64 = 1024 * MIB;
/// The public endpoint.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

/// Configuration of a Google Cloud Storage store.
///
/// Credentials, in order: `anonymous = true` sends requests without any
/// (emulators, public buckets); `credentials_file` names a key file; otherwise
/// the application-default chain is used (`GOOGLE_APPLICATION_CREDENTIALS`,
/// the gcloud well-known file, then the metadata server on Google Cloud).
/// Signed URLs need a service-account key (from `credentials_file` or the
/// application-default chain) or, on Google Cloud, the IAM `signBlob` API.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct GcsConfig {
    /// Bucket name. Required.
    pub bucket: String,
    /// Object-name prefix inside the bucket under which this store lives
    /// (no leading or trailing `/`). Default: the whole bucket.
    pub prefix: String,
    /// JSON API endpoint for emulators and private endpoints, e.g.
    /// `http://127.0.0.1:4443` (alias `storage_endpoint`).
    /// Default `https://storage.googleapis.com`.
    #[serde(alias = "storage_endpoint")]
    pub endpoint: Option<String>,
    /// Project id, where one is needed; default: the one of the credentials.
    pub project_id: Option<String>,
    /// Path of a credentials JSON file (a service-account key, or any type the
    /// application-default chain accepts). With `anonymous = true` it is used
    /// only to sign URLs. Default: the application-default chain.
    pub credentials_file: Option<PathBuf>,
    /// Send requests without credentials (emulators, public buckets).
    /// Default `false`.
    pub anonymous: bool,
    /// Uploads larger than this many bytes use a resumable upload; smaller
    /// ones a single multipart request. Default 16 MiB, at most 5 GiB.
    pub multipart_threshold: u64,
    /// Resumable-upload chunk size in bytes: a multiple of 256 KiB, at most
    /// 1 GiB. Default 16 MiB (as Google's Go client and rclone; 256 MiB to
    /// fake-gcs-server took 6.1–6.3 s against 9.1–13.5 s at 8 MiB). One
    /// chunk is held in memory per upload.
    pub chunk_size: u64,
    /// Defaults of the server-side upload options (`storage_class`, the four
    /// headers, `sse_kms_key_id`: the CMEK `kmsKeyName`), under each upload's own.
    /// (Read from the same table by the facade; `#[serde(skip)]` here so the
    /// other keys keep their names in errors.)
    #[serde(skip)]
    pub upload: xferkit_core::UploadDefaults,
}

impl Default for GcsConfig {
    fn default() -> Self {
        GcsConfig {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            project_id: None,
            credentials_file: None,
            anonymous: false,
            multipart_threshold: 16 * MIB,
            chunk_size: 16 * MIB,
            upload: Default::default(),
        }
    }
}

impl GcsConfig {
    /// A configuration for `bucket` with every other key at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsConfig {
            bucket: bucket.into(),
            ..Default::default()
        }
    }

    /// The endpoint without a trailing `/`.
    pub(crate) fn endpoint_url(&self) -> String {
        self.endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_string()
    }

    /// Check every key; errors name the key relative to the table (`chunk_size = …`).
    pub(crate) fn validate(&self) -> Result<()> {
        let bucket = settings::required("bucket", &self.bucket, "the GCS bucket name")?;
        if bucket.contains('/') || bucket != self.bucket {
            return Err(settings::invalid(
                "bucket",
                format_args!(
                    "= {:?} must be a bucket name, without '/' or spaces (put an object prefix in `prefix`)",
                    self.bucket
                ),
            ));
        }
        if let Some(ep) = &self.endpoint {
            settings::endpoint("endpoint", ep)?;
        }
        settings::prefix("prefix", &self.prefix)?;
        if let Some(p) = &self.project_id {
            settings::required("project_id", p, "omit it to use the credentials' project")?;
        }
        if let Some(p) = &self.credentials_file
            && p.as_os_str().is_empty()
        {
            return Err(settings::invalid(
                "credentials_file",
                "is empty (a path to a JSON key file)",
            ));
        }
        let chunk = " bytes, a multiple of 262144 (256 KiB)";
        settings::within(
            "chunk_size",
            self.chunk_size,
            CHUNK_GRANULE..=MAX_CHUNK,
            chunk,
        )?;
        if !self.chunk_size.is_multiple_of(CHUNK_GRANULE) {
            return Err(settings::invalid(
                "chunk_size",
                format_args!(
                    "= {} is not a multiple of 262144 (256 KiB)",
                    self.chunk_size
                ),
            ));
        }
        let single = " bytes (5 GiB)";
        settings::within(
            "multipart_threshold",
            self.multipart_threshold,
            0..=MAX_THRESHOLD,
            single,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(edit: impl FnOnce(&mut GcsConfig), key: &str) {
        let mut c = GcsConfig::new("bkt");
        edit(&mut c);
        let e = c.validate().expect_err(key);
        assert_eq!(e.kind(), xferkit_core::ErrorKind::InvalidConfig);
        let msg = e.to_string();
        let relative = format!("invalid configuration: {key} ");
        assert!(msg.starts_with(&relative), "{msg}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = GcsConfig::new("bkt");
        c.validate().unwrap();
        assert_eq!(c.multipart_threshold, 16 * MIB);
        assert_eq!(c.chunk_size, 16 * MIB);
        assert_eq!(c.endpoint_url(), "https://storage.googleapis.com");
    }

    #[test]
    fn bad_values_name_their_key() {
        check(|c| c.bucket.clear(), "bucket");
        check(|c| c.bucket = "b/p".into(), "bucket");
        check(|c| c.endpoint = Some("ftp://x".into()), "endpoint");
        check(|c| c.endpoint = Some("not a url".into()), "endpoint");
        check(|c| c.prefix = "a/../b".into(), "prefix");
        check(|c| c.project_id = Some(" ".into()), "project_id");
        check(
            |c| c.credentials_file = Some(PathBuf::new()),
            "credentials_file",
        );
        check(|c| c.chunk_size = 0, "chunk_size");
        check(|c| c.chunk_size = 1_000_000, "chunk_size");
        check(|c| c.chunk_size = 256 * KIB + 1, "chunk_size");
        check(|c| c.chunk_size = 2048 * MIB, "chunk_size");
        check(
            |c| c.multipart_threshold = 6 * 1024 * MIB,
            "multipart_threshold",
        );
    }

    #[test]
    fn chunk_size_multiples_of_256_kib_are_accepted() {
        let mut c = GcsConfig::new("bkt");
        c.chunk_size = 3 * 256 * KIB;
        c.validate().unwrap();
    }

    #[test]
    fn deserializes_every_key_and_alias() {
        let c: GcsConfig = serde_json::from_value(serde_json::json!({
            "bucket": "b",
            "prefix": "p/q",
            "storage_endpoint": "http://127.0.0.1:4443/",
            "project_id": "proj",
            "credentials_file": "/k.json",
            "anonymous": true,
            "multipart_threshold": 1048576,
            "chunk_size": 524288,
        }))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.endpoint_url(), "http://127.0.0.1:4443");
        assert!(c.anonymous);
        assert_eq!(c.chunk_size, 512 * KIB);
    }
}
