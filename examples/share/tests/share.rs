//! The sharing flow end to end on every backend: `share-send` uploads an
//! image through the transfer manager and writes a message; `share-receive`,
//! with no configuration or credentials, downloads it by the message's URL,
//! checks the checksum and fetches the thumbnail. Local runs behind an
//! in-process `xferkit-serve`; S3, GCS and Azure run on the emulators that
//! `cargo xtask test` starts (missing emulators fail under CI /
//! XFERKIT_REQUIRE_EMULATORS, and pass with a note otherwise).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use xferkit::Key;

use xferkit_example_share::Message;

const MAX_SIDE: u32 = 96;

use xferkit_conformance::emulator_env as env;

/// A noisy 640x400 PNG (about 750 KB): big enough to need several reads,
/// small enough for a quick test.
fn write_png(path: &Path, seed: u32) {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(640, 400, |i, j| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([(i % 256) as u8, (j % 256) as u8, (x & 0xff) as u8])
    });
    img.save(path).unwrap();
}

/// Run `bin` in `dir`, with `dir` as its home and XDG directories (nothing
/// of the real home is read or written); panics naming what it ran if it
/// cannot start or if it panicked.
fn run(bin: &str, dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("cfg"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("XFERKIT_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin} {args:?} (in {}): {e}", dir.display()));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{bin} panicked: {stderr}");
    (out.status.success(), stderr)
}

/// Send, receive, compare; then send the same content again to a dedupe
/// store and check that nothing moved.
fn share_through(store_toml: &str, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("xferkit.toml");
    std::fs::write(
        &config,
        format!(
            "default_store = \"remote\"\n[thumbnail]\nmax_side = {MAX_SIDE}\n\
             [stores.remote]\n{store_toml}"
        ),
    )
    .unwrap();
    let photo = d.join("holiday photo.png");
    write_png(&photo, std::process::id() ^ label.len() as u32);
    let cfg = config.to_str().unwrap();

    let (ok, err) = run(
        env!("CARGO_BIN_EXE_share-send"),
        d,
        &["--config", cfg, "holiday photo.png", "message.json"],
    );
    assert!(ok, "{label}: share-send failed: {err}");
    let msg: Message =
        serde_json::from_slice(&std::fs::read(d.join("message.json")).unwrap()).unwrap();
    assert_eq!(msg.name, "holiday photo.png");
    assert_eq!(msg.content_type, "image/png", "{label}");
    assert!(msg.url.starts_with("http"), "{label}: {}", msg.url);
    assert!(msg.thumbnail_url.is_some(), "{label}: no thumbnail: {err}");

    // The receiver has its own directory and no configuration at all. Its
    // link store refuses links to this machine by default (the emulators
    // are on 127.0.0.1), and nothing is written; naming the host lets the
    // link through.
    let inbox = d.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let message = d.join("message.json");
    let (message, inbox_s) = (message.to_str().unwrap(), inbox.to_str().unwrap());
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_share-receive"),
        &inbox,
        &[message, inbox_s],
    );
    assert!(!ok && err.contains("loopback address"), "{label}: {err}");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count(), 0, "{label}");
    let host = msg
        .url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap();
    let allow = ["--allow-host", host];
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_share-receive"),
        &inbox,
        &[message, inbox_s, allow[0], allow[1]],
    );
    assert!(ok, "{label}: share-receive failed: {err}");
    assert!(err.contains("checksum ok"), "{label}: {err}");
    assert!(err.contains("100%"), "{label}: no progress shown: {err}");
    let sent = std::fs::read(&photo).unwrap();
    let got = std::fs::read(inbox.join("holiday photo.png")).unwrap();
    assert!(sent == got, "{label}: received bytes differ");
    let thumb = image::open(inbox.join("holiday photo.png.thumb.jpg")).unwrap();
    assert!(
        thumb.width() <= MAX_SIDE && thumb.height() <= MAX_SIDE,
        "{label}: thumbnail is {}x{}",
        thumb.width(),
        thumb.height()
    );
    assert_eq!(
        thumb.width(),
        MAX_SIDE,
        "{label}: aspect ratio kept, long side = max"
    );

    // A tampered message is caught by the receiver's checksum check, and
    // nothing is left behind.
    let mut bad = msg.clone();
    bad.checksum = format!("sha256:{}", "0".repeat(64));
    bad.name = "tampered.png".into();
    bad.thumbnail_url = None;
    std::fs::write(d.join("bad.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
    let (ok, err) = run(
        env!("CARGO_BIN_EXE_share-receive"),
        &inbox,
        &[
            d.join("bad.json").to_str().unwrap(),
            inbox.to_str().unwrap(),
            allow[0],
            allow[1],
        ],
    );
    assert!(!ok && err.contains("checksum mismatch"), "{label}: {err}");
    assert!(!inbox.join("tampered.png").exists());
}

/// The second upload of the same content to a `dedupe = "content"` store
/// sends nothing and returns the same object.
async fn dedupe_through(handler: xferkit::DynHandler) {
    use xferkit::{Registry, ShareInfo, TransferManager, TransferRequest, TransferStatus};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("same.bin");
    let body: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(31) ^ std::process::id()) as u8)
        .collect();
    std::fs::write(&file, &body).unwrap();
    let name = handler.name().to_string();
    let mut reg = Registry::new();
    reg.register(handler.clone());
    reg.set_layer(Arc::new(
        xferkit::Sharing::new().with_dedupe(&name, xferkit::Dedupe::Content),
    ));
    let m = TransferManager::new(Arc::new(reg));
    let mut infos = Vec::new();
    for attempt in ["first.bin", "second-name.bin"] {
        let t = m
            .start(TransferRequest::upload(
                &file,
                handler.url_for(&Key::new(format!("x/{attempt}")).unwrap()),
            ))
            .unwrap();
        let info = t.wait_info().await;
        assert_eq!(info.status, TransferStatus::Completed, "{name}: {info:?}");
        infos.push(info);
    }
    let (a, b) = (&infos[0], &infos[1]);
    let (sa, sb) = (ShareInfo::of(a), ShareInfo::of(b));
    assert!(
        !sa.deduplicated && a.transferred == body.len() as u64,
        "{name}: {a:?}"
    );
    assert!(
        sb.deduplicated,
        "{name}: second upload was not deduplicated"
    );
    assert_eq!(b.transferred, 0, "{name}: the second upload moved bytes");
    assert_eq!(a.url, b.url, "{name}: same content, same URL");
    assert_eq!(sa.checksum, sb.checksum);
    let key = handler
        .key_for_url(&xferkit::url::ObjectUrl::parse(&a.url).unwrap())
        .unwrap();
    assert!(key.starts_with("sha256/") && key.ends_with(".bin"), "{key}");
    let got = xferkit::FileTransferExt::read_bytes(&*handler, &key, None).await;
    assert!(got.unwrap() == body, "{name}: stored content differs");
    handler.delete(&key).await.unwrap();

    // Four uploads of the same new content at once (different source files,
    // so four transfers): all complete, one object, whoever loses the
    // create-only race reports a dedupe instead of an error.
    let fresh: Vec<u8> = body.iter().map(|b| b ^ 0x5a).collect();
    let mut transfers = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("copy{i}.bin"));
        std::fs::write(&p, &fresh).unwrap();
        transfers.push(
            m.start(TransferRequest::upload(
                &p,
                handler.url_for(&Key::new(format!("y/copy{i}.bin")).unwrap()),
            ))
            .unwrap(),
        );
    }
    let mut urls = std::collections::BTreeSet::new();
    for t in transfers {
        let info = t.wait_info().await;
        assert_eq!(info.status, TransferStatus::Completed, "{name}: {info:?}");
        urls.insert(info.url);
    }
    assert_eq!(
        urls.len(),
        1,
        "{name}: concurrent identical uploads gave {urls:?}"
    );
    let url = urls.into_iter().next().unwrap();
    let key = handler
        .key_for_url(&xferkit::url::ObjectUrl::parse(&url).unwrap())
        .unwrap();
    let got = xferkit::FileTransferExt::read_bytes(&*handler, &key, None).await;
    assert!(got.unwrap() == fresh, "{name}: stored content differs");
    handler.delete(&key).await.unwrap();
}

fn prefix(label: &str) -> String {
    format!("share-{label}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_on_local_served() {
    use xferkit_local::{LocalConfig, LocalStore};
    use xferkit_serve::{ServeOptions, Server, router};
    let root = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let key = "example-share-signing-key-0123456789abcdef";
    let store = Arc::new(
        LocalStore::new(
            "remote",
            LocalConfig::with_root(root.path()).with_serve(&base, xferkit::Secret::new(key)),
        )
        .await
        .unwrap(),
    );
    let signer = store.serve_config().unwrap().1.clone();
    let server = Server::start(
        listener,
        router(store.clone(), signer, ServeOptions::for_serve_url(&base)),
    )
    .unwrap();
    let toml = format!(
        "backend = \"local\"\nroot = {:?}\nserve_url = {base:?}\nsigning_key = {key:?}\n",
        root.path().display().to_string()
    );
    tokio::task::spawn_blocking(move || share_through(&toml, "local"))
        .await
        .unwrap();
    dedupe_through(store).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_on_s3() {
    let Some(v) = env(&xferkit_conformance::S3S_VARS) else {
        return;
    };
    let toml = format!(
        "backend = \"s3\"\nbucket = \"xferkit-share\"\nendpoint = {:?}\nforce_path_style = true\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\nprefix = {:?}\n",
        v[0],
        v[1],
        v[2],
        prefix("s3")
    );
    let store = xferkit_s3::S3Store::new("remote", store_config(&toml))
        .await
        .unwrap();
    store.ensure_bucket().await.unwrap();
    let t = toml.clone();
    tokio::task::spawn_blocking(move || share_through(&t, "s3"))
        .await
        .unwrap();
    dedupe_through(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_on_azure() {
    let Some(toml) = xferkit_conformance::azurite_store_toml("xferkit-share", &prefix("az")) else {
        return;
    };
    let store = xferkit_azure::AzureStore::new("remote", store_config(&toml))
        .await
        .unwrap();
    store.create_container_if_missing().await.unwrap();
    let t = toml.clone();
    tokio::task::spawn_blocking(move || share_through(&t, "azure"))
        .await
        .unwrap();
    dedupe_through(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_on_gcs() {
    let Some(endpoint) = xferkit_conformance::gcs::emulator_with_bucket("xferkit-share").await
    else {
        return;
    };
    // Signed URLs need a service-account key; the emulator does not check
    // signatures, so the repository's throwaway test key serves.
    let dir = tempfile::tempdir().unwrap();
    let cred = xferkit_conformance::gcs::service_account_file(dir.path()).unwrap();
    let toml = format!(
        "backend = \"gcs\"\nbucket = \"xferkit-share\"\nendpoint = {endpoint:?}\nanonymous = true\n\
         credentials_file = {:?}\nprefix = {:?}\n",
        cred.display().to_string(),
        prefix("gs")
    );
    let t = toml.clone();
    tokio::task::spawn_blocking(move || share_through(&t, "gcs"))
        .await
        .unwrap();
    use figment::providers::Format;
    let figment = figment::Figment::from(figment::providers::Toml::string(&format!(
        "[stores.remote]\n{toml}"
    )));
    let store = xferkit::config::build_store(&figment, "remote")
        .await
        .unwrap();
    dedupe_through(store).await;
}

/// A store table parsed the way the facade does (serde over TOML).
fn store_config<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    let mut table: toml::Table = toml.parse().unwrap();
    table.remove("backend");
    table.try_into().unwrap()
}
