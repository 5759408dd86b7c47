//! The shared conformance suite against a local store in a temp directory.

use std::sync::Arc;

use xferkit_conformance::{Target, run};
use xferkit_local::{LocalConfig, LocalStore};

fn main() -> std::process::ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a temp dir: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let root = dir.path().to_path_buf();
    let code = run(vec![
        Target::new("local", move |prefix| async move {
            let store = LocalStore::new("local", LocalConfig::with_root(root.join(prefix))).await?;
            Ok(Arc::new(store) as xferkit_core::DynHandler)
        })
        .multipart_size(8 * 1024 * 1024),
    ]);
    drop(dir);
    code
}
