//! The shared conformance suite against fake-gcs-server
//! (`cargo xtask emulators start`, then `XFERKIT_FAKE_GCS_ENDPOINT` is set).

use std::process::ExitCode;
use std::sync::Arc;

use xferkit_conformance::{Target, run};
use xferkit_core::{DynHandler, Error, Result};
use xferkit_gcs::{GcsConfig, GcsStore};

const BUCKET: &str = "xferkit-conformance";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Small chunks, so a few MiB make many of them.
const CHUNK: u64 = 256 * KIB;
const THRESHOLD: u64 = MIB;

/// A throwaway key (tests/fixtures/README.md): fake-gcs-server does not check
/// signatures, but the URLs are signed exactly as for GCS.
use xferkit_conformance::gcs::TEST_KEY_PEM;

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
        .limit(
            |c| c.presign_verified = false,
            "fake-gcs-server does not check signed-URL signatures or expiry",
        ),
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
