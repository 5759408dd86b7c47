//! `S3Config`: the keys of one `[stores.NAME]` table with `backend = "s3"`.

use std::fmt;

use xferkit_core::settings;
use xferkit_core::{Result, Secret};

const MIB: u64 = 1024 * 1024;

/// S3's smallest part (all parts but the last): 5 MiB.
pub(crate) const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part, and largest single PUT: 5 GiB.
pub(crate) const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3 numbers parts 1..=10000.
pub(crate) const MAX_PARTS: u64 = 10_000;

/// Configuration of an S3 (or S3-compatible) store.
///
/// Credentials are optional: without `access_key_id` and
/// `secret_access_key` the AWS default credential chain is used
/// (environment, shared config/credentials files and SSO, web identity,
/// ECS and EC2 instance metadata), with `profile` if set. The region is
/// `region`, else the SDK's (`AWS_REGION`, `AWS_DEFAULT_REGION`, then the
/// profile's `region`), else `us-east-1` when `endpoint` is set.
#[derive(Clone, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct S3Config {
    /// Bucket name. Required.
    pub bucket: String,
    /// AWS region (alias `aws_region`). Default: the AWS SDK's region chain
    /// (`AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's `region`);
    /// with none there, `us-east-1` if `endpoint` is set, else an error.
    #[serde(alias = "aws_region")]
    pub region: Option<String>,
    /// Profile of the AWS shared config files (`~/.aws/config`,
    /// `~/.aws/credentials`) to take credentials and region from, instead of
    /// `AWS_PROFILE` or `default`. Not with `access_key_id`.
    pub profile: Option<String>,
    /// Endpoint URL for S3-compatible services and emulators, e.g.
    /// `http://127.0.0.1:9000` (alias `endpoint_url`). Default: AWS.
    #[serde(alias = "endpoint_url")]
    pub endpoint: Option<String>,
    /// Address buckets as `ENDPOINT/BUCKET/KEY` instead of
    /// `BUCKET.ENDPOINT/KEY`. MinIO and most emulators need `true`. Default `false`.
    pub force_path_style: bool,
    /// Key prefix inside the bucket under which this store lives
    /// (no leading or trailing `/`). Default: the whole bucket.
    pub prefix: String,
    /// Static access key id. With `secret_access_key`; default: the AWS credential chain.
    pub access_key_id: Option<String>,
    /// Static secret access key. With `access_key_id`.
    pub secret_access_key: Option<Secret>,
    /// Session token for temporary static credentials.
    pub session_token: Option<Secret>,
    /// Uploads larger than this many bytes use multipart upload; smaller ones a
    /// single PUT. Default 16 MiB, at most 5 GiB.
    pub multipart_threshold: u64,
    /// Multipart part size in bytes. Default 8 MiB; at least 5 MiB (S3's
    /// minimum), at most 5 GiB. Raised automatically for files that would need
    /// more than 10 000 parts.
    pub part_size: u64,
    /// Parts uploaded at once per multipart upload. Default 4. Memory used by
    /// one upload is about `concurrency × part_size`.
    pub concurrency: usize,
    /// The checksum each upload request carries for the store to check.
    /// Default [`S3Checksum::Crc32c`].
    pub checksum: S3Checksum,
    /// Server-side copies of objects up to this many bytes are one
    /// `CopyObject`; larger ones a multipart copy (`UploadPartCopy` parts of
    /// `part_size`). Default 5 GiB, S3's largest `CopyObject`, and at most that.
    pub copy_threshold: u64,
    /// Defaults of the server-side upload options (`storage_class`, the four
    /// headers, `tags`, `sse`, `sse_kms_key_id`, `sse_bucket_key`,
    /// `sse_customer_key`), under each upload's own. With
    /// `sse_customer_key`, every read of the store sends that key too.
    /// (Read from the same table by the facade; `#[serde(skip)]` here so the
    /// other keys keep their names in errors.)
    #[serde(skip)]
    pub upload: xferkit_core::UploadDefaults,
}

/// The checksum S3 uploads send (`checksum` key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum S3Checksum {
    /// `x-amz-checksum-crc32c` on every `PutObject` and `UploadPart`, and the
    /// whole object's (`FULL_OBJECT`) on `CompleteMultipartUpload`, which S3
    /// keeps for downloads to verify.
    #[default]
    Crc32c,
    /// `Content-MD5` on every `PutObject` and `UploadPart`, for
    /// S3-compatible stores that refuse the newer checksum headers.
    Md5,
    /// No checksum header at all (the SDK computes none either).
    None,
}

impl S3Config {
    /// A configuration for `bucket` with every other key at its default.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            ..Default::default()
        }
    }

    /// Check every key; errors name the key relative to the table (`part_size = …`).
    pub(crate) fn validate(&self) -> Result<()> {
        let bucket = settings::required("bucket", &self.bucket, "the S3 bucket name")?;
        if bucket.contains('/') {
            return Err(settings::invalid(
                "bucket",
                format_args!(
                    "= {bucket:?} must be a bucket name, without '/' (put a key prefix in `prefix`)"
                ),
            ));
        }
        if let Some(region) = &self.region {
            settings::required(
                "region",
                region,
                "e.g. \"us-east-1\"; leave it out for the SDK's",
            )?;
        }
        if let Some(profile) = &self.profile {
            settings::required("profile", profile, "a profile of ~/.aws/config")?;
            if self.access_key_id.is_some() {
                return Err(settings::invalid(
                    "profile",
                    "is set together with access_key_id (the profile's credentials would not \
                     be used; give one or the other)",
                ));
            }
        }
        if let Some(ep) = &self.endpoint {
            settings::endpoint("endpoint", ep)?;
        }
        settings::prefix("prefix", &self.prefix)?;
        let missing = |key, other| {
            settings::invalid(
                key,
                format_args!("is missing ({other} is set; give both or neither)"),
            )
        };
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => return Err(missing("secret_access_key", "access_key_id")),
            (None, Some(_)) => return Err(missing("access_key_id", "secret_access_key")),
            (Some(id), Some(_)) if id.trim().is_empty() => {
                return Err(settings::invalid("access_key_id", "is empty"));
            }
            _ => {}
        }
        if self.session_token.is_some() && self.access_key_id.is_none() {
            return Err(settings::invalid(
                "session_token",
                "is set without access_key_id and secret_access_key",
            ));
        }
        let limits = " bytes (S3's part sizes are 5 MiB to 5 GiB)";
        settings::within(
            "part_size",
            self.part_size,
            MIN_PART_SIZE..=MAX_PART_SIZE,
            limits,
        )?;
        let single = " bytes (5 GiB is S3's largest single PUT)";
        settings::within(
            "multipart_threshold",
            self.multipart_threshold,
            0..=MAX_PART_SIZE,
            single,
        )?;
        settings::within("concurrency", self.concurrency, 1..=usize::MAX, "")?;
        let copy = " bytes (5 GiB is S3's largest CopyObject)";
        settings::within(
            "copy_threshold",
            self.copy_threshold,
            0..=MAX_PART_SIZE,
            copy,
        )?;
        Ok(())
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: None,
            profile: None,
            endpoint: None,
            force_path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            concurrency: 4,
            checksum: S3Checksum::Crc32c,
            copy_threshold: MAX_PART_SIZE,
            upload: Default::default(),
        }
    }
}

// Hand-written so no credential is ever printed: only whether each is set.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |b: bool| if b { "<set>" } else { "<unset>" };
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("prefix", &self.prefix)
            .field("access_key_id", &set(self.access_key_id.is_some()))
            .field("secret_access_key", &set(self.secret_access_key.is_some()))
            .field("session_token", &set(self.session_token.is_some()))
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .field("checksum", &self.checksum)
            .field("copy_threshold", &self.copy_threshold)
            .field("upload", &self.upload)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(c: &S3Config) -> String {
        c.validate()
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn defaults() {
        let c = S3Config::new("b");
        c.validate().unwrap();
        assert_eq!(c.region, None, "the SDK's chain decides");
        assert_eq!(c.checksum, S3Checksum::Crc32c);
        assert_eq!(c.multipart_threshold, 16 * MIB);
        assert_eq!(c.part_size, 8 * MIB);
        assert_eq!(c.concurrency, 4);
        assert!(!c.force_path_style);
    }

    #[test]
    fn errors_name_the_key() {
        let named = |edit: fn(&mut S3Config), key: &str| {
            let mut c = S3Config::new("b");
            edit(&mut c);
            let e = err(&c);
            // Relative to the table: the facade adds `stores.NAME.`.
            assert!(
                e.starts_with(&format!("invalid configuration: {key} ")),
                "{e}"
            );
            e
        };
        assert!(named(|c| c.bucket.clear(), "bucket").contains("bucket is missing"));
        assert!(named(|c| c.part_size = 5 * MIB - 1, "part_size").contains("5 MiB"));
        named(|c| c.part_size = 6 * 1024 * MIB, "part_size");
        named(|c| c.concurrency = 0, "concurrency");
        named(|c| c.copy_threshold = 6 * 1024 * MIB, "copy_threshold");
        named(
            |c| c.multipart_threshold = 6 * 1024 * MIB,
            "multipart_threshold",
        );
        named(|c| c.region = Some(" ".into()), "region");
        named(|c| c.profile = Some("".into()), "profile");
        let both = named(
            |c| {
                c.profile = Some("work".into());
                c.access_key_id = Some("AKID".into());
                c.secret_access_key = Some(Secret::new("s"));
            },
            "profile",
        );
        assert!(both.contains("one or the other"), "{both}");
        named(|c| c.endpoint = Some("localhost:9000".into()), "endpoint");
        named(|c| c.prefix = "a/../b".into(), "prefix");
        named(|c| c.bucket = "b/x".into(), "bucket");
        named(
            |c| c.access_key_id = Some("AKID".into()),
            "secret_access_key",
        );
        named(
            |c| c.secret_access_key = Some(Secret::new("s")),
            "access_key_id",
        );
        named(
            |c| c.session_token = Some(Secret::new("t")),
            "session_token",
        );
    }

    #[test]
    fn five_mib_parts_are_accepted() {
        let mut c = S3Config::new("b");
        c.part_size = 5 * MIB;
        c.multipart_threshold = 5 * MIB;
        c.validate().unwrap();
    }

    #[test]
    fn debug_never_shows_credentials() {
        let mut c = S3Config::new("b");
        c.access_key_id = Some("AKIAEXAMPLEKEYID".into());
        c.secret_access_key = Some(Secret::new("wJalrXUtnFEMI-secret"));
        c.session_token = Some(Secret::new("FwoGZXIvYXdz-token"));
        let d = format!("{c:?} {c:#?}");
        for s in [
            "AKIAEXAMPLEKEYID",
            "wJalrXUtnFEMI-secret",
            "FwoGZXIvYXdz-token",
        ] {
            assert!(!d.contains(s), "{d}");
        }
        assert!(d.contains("<set>"), "{d}");
    }

    #[test]
    fn deserializes_with_aliases_and_defaults() {
        let c: S3Config = serde_json::from_value(serde_json::json!({
            "bucket": "media",
            "aws_region": "eu-west-1",
            "endpoint_url": "http://127.0.0.1:9000",
            "force_path_style": true,
            "secret_access_key": "s",
            "access_key_id": "a",
        }))
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.force_path_style);
        assert_eq!(c.secret_access_key.as_ref().map(Secret::expose), Some("s"));
        assert_eq!(c.part_size, 8 * MIB);
        c.validate().unwrap();
    }

    #[test]
    fn checksum_choices() {
        for (v, want) in [
            ("crc32c", S3Checksum::Crc32c),
            ("md5", S3Checksum::Md5),
            ("none", S3Checksum::None),
        ] {
            let c: S3Config =
                serde_json::from_value(serde_json::json!({"bucket": "b", "checksum": v})).unwrap();
            assert_eq!(c.checksum, want);
        }
        let e = serde_json::from_value::<S3Config>(serde_json::json!({"checksum": "sha1"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("crc32c") && e.contains("md5") && e.contains("none"),
            "{e}"
        );
    }
}
