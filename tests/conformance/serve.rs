//! The shared conformance suite against a local store served by
//! `xferkit-serve`, so the presign cases (plain-HTTP GET/PUT, expired and
//! tampered URLs refused) run on the local backend too.

use std::sync::Arc;

use xferkit_conformance::{Target, run};
use xferkit_core::Secret;
use xferkit_local::{LocalConfig, LocalStore};
use xferkit_serve::{ServeOptions, Server, router};

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
        Target::new("local+serve", move |prefix| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| xferkit_core::Error::from_io("127.0.0.1:0", e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| xferkit_core::Error::from_io("127.0.0.1:0", e))?;
            let base = format!("http://{addr}/files");
            let config = LocalConfig::with_root(root.join(prefix)).with_serve(
                &base,
                Secret::new("conformance-signing-key-0123456789abcdef"),
            );
            let store = Arc::new(LocalStore::new("local", config).await?);
            let Some((_, signer)) = store.serve_config() else {
                return Err(xferkit_core::Error::invalid_config("serve config missing"));
            };
            let app = router(
                store.clone(),
                signer.clone(),
                ServeOptions::for_serve_url(&base),
            );
            let server = Server::start(listener, app)
                .map_err(|e| xferkit_core::Error::from_io(base.clone(), e))?;
            // Serve for the rest of the run (the suite's runtime outlives it).
            std::mem::forget(server);
            Ok(store as xferkit_core::DynHandler)
        })
        .multipart_size(8 * 1024 * 1024),
    ]);
    drop(dir);
    code
}
