//! The shared conformance suite against fake-gcs-server
//! (`cargo xtask emulators start`, then `XFERKIT_FAKE_GCS_ENDPOINT` is set),
//! with the fault cases through the fault proxy (which rewrites the
//! resumable session URIs the emulator hands out, so chunks go through it).

use std::process::ExitCode;
use std::sync::Arc;

use xferkit_conformance::faults::{Corrupted, Faults, Requests, Shape, StoreSpec, store_fn};
use xferkit_conformance::{Target, run};
use xferkit_core::{DynHandler, Error, Result};
use xferkit_gcs::{GcsConfig, GcsStore};

const BUCKET: &str = "xferkit-conformance";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Small chunks, so a few MiB make many of them.
const CHUNK: u64 = 256 * KIB;
const THRESHOLD: u64 = MIB;
/// Chunks of the fault cases' stores.
const FAULT_CHUNK: u64 = 2 * MIB;

/// A throwaway key (crates/xferkit-gcs/tests/fixtures/README.md): fake-gcs-server does not check
/// signatures, but the URLs are signed exactly as for GCS.
use xferkit_conformance::gcs::TEST_KEY_PEM;

/// Why chunks are neither retried nor resumed on fake-gcs-server.
const STATUS_QUERY: &str = "fake-gcs-server 1.54 completes a resumable session when asked how much \
     it holds (`Content-Range: bytes */N`), which a chunk retry or a resume asks first; \
     crates/xferkit-gcs/tests/faults.rs proves the quirk, tests/resumable_mock.rs the retry";

/// A store for the fault cases: resumable in 2 MiB chunks above the spec's threshold.
async fn fault_store(spec: StoreSpec) -> Result<DynHandler> {
    ensure_bucket(&spec.endpoint).await?;
    let mut c = GcsConfig::new(BUCKET);
    c.endpoint = Some(spec.endpoint);
    c.anonymous = true;
    c.prefix = spec.prefix;
    c.multipart_threshold = spec.one_request_up_to;
    c.chunk_size = FAULT_CHUNK;
    let mut s = GcsStore::new("faults", c)
        .await?
        .with_state_dir(spec.state_dir);
    if let Some(policy) = spec.retry {
        s = s.with_retry_policy(policy);
    }
    Ok(Arc::new(s) as DynHandler)
}

fn main() -> ExitCode {
    run(vec![
        Target::from_env(
            "gcs@fake-gcs-server",
            &["XFERKIT_FAKE_GCS_ENDPOINT"],
            |vars: Vec<String>, prefix: String| async move {
                let endpoint = vars.into_iter().next().unwrap_or_default();
                ensure_bucket(&endpoint).await?;
                // Requests go out anonymously; the key file only signs URLs.
                let key_file = signing_key_file()?;
                let mut c = GcsConfig::new(BUCKET);
                c.prefix = prefix;
                c.endpoint = Some(endpoint);
                c.anonymous = true;
                c.credentials_file = Some(key_file.path().to_path_buf());
                c.multipart_threshold = THRESHOLD;
                c.chunk_size = CHUNK;
                let store = GcsStore::new("gcs-conformance", c).await?;
                Ok(Arc::new(store) as DynHandler)
            },
        )
        // 24 chunks of 256 KiB (the stop case uploads twice that).
        .multipart_size(6 * MIB)
        .storage_class("NEARLINE")
        .limit(
            |c| c.presign_verified = false,
            "fake-gcs-server does not check signed-URL signatures or expiry",
        )
        .faults(|v| Faults {
            upstream: v[0].clone(),
            store: store_fn(fault_store),
            part_size: FAULT_CHUNK,
            one_request: Shape {
                requests: Requests::with("POST", "uploadType=multipart"),
                // fake-gcs-server checks no client checksum and stores the
                // flipped byte; xferkit compares the CRC32C it reports with
                // the one computed while streaming, deletes the generation
                // and sends the request again.
                corrupted_once: Corrupted::Resent,
                corrupted_always: Some("the store's checksum did not match what was sent"),
            },
            part: Shape {
                requests: Requests::with("PUT", "upload_id="),
                // The session is complete when the mismatch shows.
                corrupted_once: Corrupted::RefusedAtUpload,
                corrupted_always: None,
            },
            part_names: "part 1",
            media_get: Requests::with("GET", "alt=media"),
            // Only the last chunk carries the CRC32C (X-Goog-Hash), the
            // one-request upload in its body: crates/xferkit-gcs/tests/faults.rs.
            checksum_header: None,
            lists_pending: false,
            resends_on_reset: false,
            part_retry_gap: Some(STATUS_QUERY),
            resume_gap: Some(STATUS_QUERY),
            ranged_checksum_gap: None,
        }),
    ])
}

/// Create the bucket unless it exists.
async fn ensure_bucket(endpoint: &str) -> Result<()> {
    xferkit_conformance::gcs::ensure_bucket(endpoint, BUCKET).await
}

/// A service-account JSON file holding the throwaway test key.
fn signing_key_file() -> Result<tempfile::NamedTempFile> {
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "xferkit-test",
        "client_email": "xferkit-test@xferkit-test.iam.gserviceaccount.com",
        "private_key": TEST_KEY_PEM,
    });
    let f = tempfile::NamedTempFile::new().map_err(|e| Error::from_io("temp key file", e))?;
    std::fs::write(f.path(), json.to_string()).map_err(|e| Error::from_io("temp key file", e))?;
    Ok(f)
}
