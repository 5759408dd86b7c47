//! fake-gcs-server fixtures shared by the tests that run against it.

use std::path::{Path, PathBuf};

use xferkit_core::{Error, Result};

/// The repository's throwaway RSA key (never a real credential).
pub const TEST_KEY_PEM: &str =
    include_str!("../../xferkit-gcs/tests/fixtures/TEST-ONLY-rsa-2048.pem");

/// Create `bucket` on the emulator at `endpoint` unless it exists (409).
pub async fn ensure_bucket(endpoint: &str, bucket: &str) -> Result<()> {
    let url = format!(
        "{}/storage/v1/b?project=xferkit-test",
        endpoint.trim_end_matches('/')
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "name": bucket }).to_string())
        .send()
        .await
        .map_err(|e| Error::backend(&url, "creating the test bucket", e))?;
    let status = resp.status();
    if status.is_success() || status.as_u16() == 409 {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(Error::backend(
        &url,
        "creating the test bucket",
        format!("HTTP {status}: {body}"),
    ))
}

/// Write `DIR/sa.json`, a service-account key file holding [`TEST_KEY_PEM`];
/// its `token_uri` is a closed port, so a non-anonymous store cannot get a
/// token (signing URLs needs only the key).
pub fn service_account_file(dir: &Path) -> std::io::Result<PathBuf> {
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "xferkit-test",
        "private_key_id": "test",
        "private_key": TEST_KEY_PEM,
        "client_email": "xferkit-test@xferkit-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:1/token",
    });
    let p = dir.join("sa.json");
    std::fs::write(&p, sa.to_string())?;
    Ok(p)
}

/// The fake-gcs-server endpoint of the test run (`XFERKIT_FAKE_GCS_ENDPOINT`,
/// without a trailing `/`), with `bucket` created on it; `None` (after
/// failing under CI, see [`crate::emulator_env`]) when it is not set.
pub async fn emulator_with_bucket(bucket: &str) -> Option<String> {
    let v = crate::emulator_env(&["XFERKIT_FAKE_GCS_ENDPOINT"])?;
    let endpoint = v[0].trim_end_matches('/').to_string();
    if let Err(e) = ensure_bucket(&endpoint, bucket).await {
        panic!("cannot create the bucket {bucket} on fake-gcs-server: {e}");
    }
    Some(endpoint)
}
