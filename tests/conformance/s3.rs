//! The shared conformance suite against S3 emulators, with the fault and
//! resume cases through the fault proxy.
//!
//! - `s3@s3s-fs` checks SigV4 signatures, presigned URLs included.
//! - `s3@moto` covers broad semantics (ListMultipartUploads, conditionals).
//! - `s3@minio` runs only when `XFERKIT_MINIO_ENDPOINT` is set (no fault cases).
//!
//! Start the emulators with `cargo xtask emulators start`, then
//! `set -a; . target/emulators.env; set +a; cargo test -p xferkit-tests --test conformance_s3`.

use std::process::ExitCode;
use std::sync::Arc;

use xferkit_conformance::faults::{
    ChecksumHeader, Corrupted, Faults, Requests, Shape, StoreSpec, store_fn,
};
use xferkit_conformance::{S3S_VARS, Target, run};
use xferkit_core::{DynHandler, Secret};
use xferkit_s3::{S3Config, S3Store};

const MIB: u64 = 1024 * 1024;
const BUCKET: &str = "xferkit-conformance";
/// S3's smallest part.
const PART: u64 = 5 * MIB;

/// A store on the emulator at `endpoint`, rooted at `prefix`, in parts of
/// 5 MiB (S3's minimum), so a 16 MiB object takes four parts.
async fn store(
    label: &str,
    credentials: (String, String),
    spec: StoreSpec,
) -> xferkit_core::Result<DynHandler> {
    let mut c = S3Config::new(BUCKET);
    c.endpoint = Some(spec.endpoint);
    c.force_path_style = true;
    c.access_key_id = Some(credentials.0);
    c.secret_access_key = Some(Secret::new(credentials.1));
    c.prefix = spec.prefix;
    c.part_size = PART;
    c.multipart_threshold = spec.one_request_up_to;
    // Copies above one part are multipart copies (UploadPartCopy), so the
    // copy cases exercise them without 5 GiB objects.
    c.copy_threshold = PART;
    if let Some(n) = spec.concurrency {
        c.concurrency = n;
    }
    let mut s = S3Store::new(label, c).await?.with_state_dir(spec.state_dir);
    if let Some(policy) = spec.retry {
        s = s.with_retry_policy(policy);
    }
    s.ensure_bucket().await?;
    Ok(Arc::new(s) as DynHandler)
}

/// The conformance suite's store: the spec of a plain store at `prefix`.
fn plain(endpoint: String, prefix: String) -> StoreSpec {
    StoreSpec {
        endpoint,
        prefix,
        one_request_up_to: PART,
        concurrency: None,
        retry: None,
        state_dir: None,
    }
}

/// What S3's requests look like, and what `emulator` does with them.
fn faults(label: &'static str, endpoint: &str, credentials: (String, String)) -> Faults {
    let moto = label == "moto";
    Faults {
        upstream: endpoint.to_string(),
        store: store_fn(move |spec| store(label, credentials.clone(), spec)),
        part_size: PART,
        one_request: Shape {
            requests: Requests::any("PUT"),
            // s3s-fs refuses a PutObject whose CRC32C differs and it is sent
            // again; moto keeps the checksum as sent, and the download
            // refuses the object.
            corrupted_once: if moto {
                Corrupted::RefusedAtDownload
            } else {
                Corrupted::Resent
            },
            // s3s-fs answers a mismatched CRC32C with 500 InternalError.
            corrupted_always: (!moto).then_some("HTTP 500 InternalError"),
        },
        part: Shape {
            requests: Requests::with("PUT", "partNumber="),
            // s3s-fs refuses the part; moto computes the object's CRC32C
            // itself, and xferkit, seeing it differ, deletes the object.
            corrupted_once: if moto {
                Corrupted::RefusedAtUpload
            } else {
                Corrupted::Resent
            },
            corrupted_always: (!moto).then_some("HTTP 500 InternalError"),
        },
        part_names: "part",
        media_get: Requests::any("GET"),
        checksum_header: Some(ChecksumHeader {
            name: "x-amz-checksum-crc32c",
            len: 8,
            except: None,
        }),
        lists_pending: moto,
        resends_on_reset: false,
        part_retry_gap: None,
        resume_gap: moto.then_some(
            "moto 5.2.5 answers ListParts with a `ListPartsResponse` root that aws-sdk-s3 refuses \
             (\"expected ListPartsResult\"), so a resume there starts over",
        ),
        ranged_checksum_gap: (!moto)
            .then_some("s3s-fs 0.14 keeps no checksum for a multipart object"),
    }
}

fn main() -> ExitCode {
    let mut targets = vec![
        Target::from_env(
            "s3@s3s-fs",
            &S3S_VARS,
            |v: Vec<String>, prefix: String| async move {
                let [endpoint, key, secret] = <[String; 3]>::try_from(v).unwrap_or_default();
                store("s3s-fs", (key, secret), plain(endpoint, prefix)).await
            },
        )
        .multipart_size(16 * MIB)
        .limit(
            |c| c.sse_service_managed = false,
            "s3s-fs 0.14 accepts x-amz-server-side-encryption but keeps and reports nothing",
        )
        .limit(
            |c| c.storage_class = false,
            "s3s-fs 0.14 refuses every storage class but STANDARD (400 InvalidStorageClass)",
        )
        .limit(
            |c| c.list_pending_uploads = false,
            "s3s-fs 0.14 does not implement ListMultipartUploads (501 NotImplemented)",
        )
        .skip_case(
            "range_suffix_longer_than_object",
            "s3s-fs 0.14.1 answers 500 to `Range: bytes=-N` with N > size (src/s3.rs seeks to \
             SeekFrom::End(-N) with the unclamped length); moto and S3 return the whole object, \
             and the s3@moto target runs this case",
        )
        .faults(|v| faults("s3s-fs", &v[0], (v[1].clone(), v[2].clone()))),
        Target::from_env(
            "s3@moto",
            &["XFERKIT_MOTO_ENDPOINT"],
            |v: Vec<String>, prefix: String| async move {
                let endpoint = v.into_iter().next().unwrap_or_default();
                let credentials = ("testing".into(), "testing".into());
                store("moto", credentials, plain(endpoint, prefix)).await
            },
        )
        .multipart_size(16 * MIB)
        .storage_class("STANDARD_IA")
        .limit(
            |c| c.presign_verified = false,
            "moto accepts forged or expired presigned URLs",
        )
        .faults(|v| faults("moto", &v[0], ("testing".into(), "testing".into()))),
    ];
    // MinIO cannot be installed here; run against one when it is given.
    if std::env::var_os("XFERKIT_MINIO_ENDPOINT").is_some_and(|v| !v.is_empty()) {
        targets.push(
            Target::from_env(
                "s3@minio",
                &[
                    "XFERKIT_MINIO_ENDPOINT",
                    "XFERKIT_MINIO_ACCESS_KEY",
                    "XFERKIT_MINIO_SECRET_KEY",
                ],
                |v: Vec<String>, prefix: String| async move {
                    let [endpoint, key, secret] = <[String; 3]>::try_from(v).unwrap_or_default();
                    store("minio", (key, secret), plain(endpoint, prefix)).await
                },
            )
            .multipart_size(16 * MIB),
        );
    }
    run(targets)
}
