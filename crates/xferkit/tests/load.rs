//! Load: 1,000 small uploads, then 1,000 downloads, queued at once through
//! ONE `TransferManager` at concurrency 16 against s3s-fs. Every transfer
//! completes, every download is byte-identical to its source, and the
//! process's open file descriptors stay bounded while they run (sampled
//! from `/proc/self/fd` every few milliseconds): a leak of one descriptor
//! per transfer would show as hundreds. No timing is asserted.
//!
//! Passes vacuously with a note without the s3s-fs variables, except under
//! `CI` / `XFERKIT_REQUIRE_EMULATORS=1`, where it fails.

#![cfg(all(feature = "s3", target_os = "linux"))]
#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use xferkit::Key;

use xferkit::backends::s3::{S3Config, S3Store};
use xferkit::{Registry, Secret, TransferManager, TransferRequest, TransferStatus};

const TRANSFERS: usize = 1_000;
const CONCURRENCY: usize = 16;
/// Descriptors one running transfer may hold: its HTTP connection and its
/// local file — an upload's source, or a download's temp file, which is
/// open twice (the `NamedTempFile` that persists it and the cloned handle
/// the bytes are written through).
const PER_TRANSFER: usize = 3;
/// Slack per slot: an idle pooled connection kept after a transfer ends
/// (the pool holds at most one per slot that ever ran at once) and one
/// transient descriptor (a socket being closed while its replacement opens).
/// Measured peak here: baseline + 46 of the bound's + 80.
const SLACK_PER_SLOT: usize = 2;

use xferkit_conformance::emulators_required as required;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Samples `open_fds` on a thread until dropped; `max()` is the peak seen.
struct FdSampler {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSampler {
    fn start() -> Self {
        let max = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // The sampler's own read_dir handle is counted too: take it off.
                m.fetch_max(open_fds().saturating_sub(1), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        FdSampler {
            max,
            stop,
            thread: Some(thread),
        }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Content of file `i`: distinct per file, 1–4 KiB.
fn content(i: usize) -> Vec<u8> {
    let len = 1024 + (i * 37) % 3072;
    (0..len).map(|j| ((i * 131 + j * 7) % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_transfers_through_one_manager_with_bounded_fds() {
    let vars = [
        "XFERKIT_S3S_ENDPOINT",
        "XFERKIT_S3S_ACCESS_KEY",
        "XFERKIT_S3S_SECRET_KEY",
    ];
    let vals: Vec<Option<String>> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if vals.iter().any(Option::is_none) {
        assert!(
            !required(),
            "{vars:?} are required (CI / XFERKIT_REQUIRE_EMULATORS)"
        );
        eprintln!("note: {vars:?} not set; skipping");
        return;
    }
    let v: Vec<String> = vals.into_iter().flatten().collect();
    let mut c = S3Config::new("xferkit-load");
    c.endpoint = Some(v[0].clone());
    c.force_path_style = true;
    c.access_key_id = Some(v[1].clone());
    c.secret_access_key = Some(Secret::new(v[2].clone()));
    c.prefix = format!("load-{}", std::process::id());
    let store = S3Store::new("load", c).await.unwrap();
    store.ensure_bucket().await.unwrap();
    let mut reg = Registry::new();
    reg.register(Arc::new(store.clone()));
    let manager = TransferManager::with_concurrency(Arc::new(reg), CONCURRENCY);

    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    for i in 0..TRANSFERS {
        std::fs::write(src.join(format!("f{i:04}.bin")), content(i)).unwrap();
    }
    let url = |i: usize| {
        use xferkit::FileTransferHandler;
        store.url_for(&Key::new(format!("d/f{i:04}.bin")).unwrap())
    };

    // One warm-up transfer opens the HTTP client's first connection and
    // whatever the runtime creates lazily, so the baseline counts them.
    let warm = manager
        .start(TransferRequest::upload(src.join("f0000.bin"), url(0)))
        .unwrap();
    assert_eq!(warm.wait_info().await.status, TransferStatus::Completed);
    let baseline = open_fds();
    let bound = baseline + CONCURRENCY * (PER_TRANSFER + SLACK_PER_SLOT);
    let sampler = FdSampler::start();

    let uploads: Vec<_> = (0..TRANSFERS)
        .map(|i| {
            manager
                .start(TransferRequest::upload(
                    src.join(format!("f{i:04}.bin")),
                    url(i),
                ))
                .unwrap()
        })
        .collect();
    for (i, t) in uploads.iter().enumerate() {
        let info = t.wait_info().await;
        assert_eq!(
            info.status,
            TransferStatus::Completed,
            "upload {i}: {:?}",
            info.error
        );
        assert_eq!(info.object.unwrap().size, content(i).len() as u64);
    }
    let after_uploads = sampler.max();

    let downloads: Vec<_> = (0..TRANSFERS)
        .map(|i| {
            manager
                .start(TransferRequest::download(
                    url(i),
                    dst.join(format!("f{i:04}.bin")),
                ))
                .unwrap()
        })
        .collect();
    for (i, t) in downloads.iter().enumerate() {
        let info = t.wait_info().await;
        assert_eq!(
            info.status,
            TransferStatus::Completed,
            "download {i}: {:?}",
            info.error
        );
    }
    let peak = sampler.max();
    drop(sampler);
    for i in 0..TRANSFERS {
        let got = std::fs::read(dst.join(format!("f{i:04}.bin"))).unwrap();
        assert!(got == content(i), "download {i} differs from its source");
    }
    // Only the downloads are in dst: no temp file was left behind.
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), TRANSFERS);
    eprintln!(
        "open fds: baseline {baseline}, peak during uploads {after_uploads}, \
         peak overall {peak}, bound {bound}, after {}",
        open_fds()
    );
    assert!(
        peak <= bound,
        "open file descriptors peaked at {peak}, above baseline {baseline} + \
         {CONCURRENCY} x {} = {bound}",
        PER_TRANSFER + SLACK_PER_SLOT
    );

    for i in 0..TRANSFERS {
        use xferkit::FileTransferHandler;
        store
            .delete(&Key::new(format!("d/f{i:04}.bin")).unwrap())
            .await
            .unwrap();
    }
}
