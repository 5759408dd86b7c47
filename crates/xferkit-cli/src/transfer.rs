//! Running one transfer through the manager: progress bar, Ctrl-C, result.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use xferkit::{
    ErrorKind, FileInfo, RemoteObject, TransferManager, TransferRequest, TransferStatus,
};

use crate::fail::{EXIT_INTERRUPTED, Failure};
use crate::target::shown;

const BAR_TEMPLATE: &str =
    "{msg:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";

/// Start `request`, follow it to the end and return the stored object.
///
/// With `progress`, a bar labelled `label` is drawn on stderr. Ctrl-C stops
/// the transfer (which removes anything partial), waits for it to end and
/// fails with exit code 130.
pub async fn run(
    manager: &TransferManager,
    request: TransferRequest,
    label: &str,
    progress: bool,
) -> Result<RemoteObject, Failure> {
    let info = run_info(manager, request, label, progress).await?;
    info.object.ok_or_else(|| {
        Failure::failed(format!(
            "{}: transfer completed without an object record",
            shown(&info.url)
        ))
    })
}

/// Like [`run`], returning the completed transfer's whole [`FileInfo`]
/// (share URL, thumbnail, dedupe).
pub async fn run_info(
    manager: &TransferManager,
    request: TransferRequest,
    label: &str,
    progress: bool,
) -> Result<FileInfo, Failure> {
    let transfer = manager.file_instance(request)?;
    let mut rx = transfer.subscribe();
    let bar = progress.then(|| new_bar(label));

    // Listen for Ctrl-C before starting, so an early one is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut listening = true;
    let mut interrupted = false;

    transfer.start();
    loop {
        let info = rx.borrow_and_update().clone();
        if let Some(bar) = &bar {
            show(bar, &info);
        }
        if info.status.is_terminal() {
            break;
        }
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            signal = &mut ctrl_c, if listening => {
                listening = false;
                match signal {
                    Ok(()) => {
                        interrupted = true;
                        if let Some(bar) = &bar {
                            bar.set_message("stopping");
                        }
                        transfer.stop();
                    }
                    // No signal handling here: run on, uninterruptible but correct.
                    Err(e) => tracing::warn!(error = %e, "cannot listen for Ctrl-C"),
                }
            }
        }
    }
    let info = transfer.wait_info().await;
    if interrupted {
        // The stopped transfer's cleanup (a multipart abort, temp files)
        // runs in the background: let it finish before the process exits.
        settle(manager).await;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match info.status {
        TransferStatus::Completed => Ok(info),
        TransferStatus::Cancelled if interrupted => Err(Failure {
            message: Some(format!(
                "interrupted: stopped the transfer of {}; nothing was written",
                shown(&info.url)
            )),
            code: EXIT_INTERRUPTED,
        }),
        TransferStatus::Cancelled => Err(Failure::of_kind(
            Some(ErrorKind::Cancelled),
            format!("cancelled: {}", shown(&info.url)),
        )),
        _ => Err(Failure::of_kind(
            info.error_kind,
            info.error
                .unwrap_or_else(|| format!("{}: transfer failed", shown(&info.url))),
        )),
    }
}

/// How long `xfer` waits, after Ctrl-C, for stopped transfers to clean up.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(30);

/// Wait for the cleanups of stopped transfers, saying so if one is slow.
pub async fn settle(manager: &TransferManager) {
    if !manager.settled(CLEANUP_GRACE).await {
        tracing::warn!(
            "a stopped transfer was still cleaning up after {CLEANUP_GRACE:?}; `xfer gc` finds what it left"
        );
    }
}

fn new_bar(label: &str) -> ProgressBar {
    let bar = ProgressBar::no_length().with_message(label.to_string());
    if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn show(bar: &ProgressBar, info: &FileInfo) {
    if let Some(size) = info.size {
        bar.set_length(size);
    }
    bar.set_position(info.transferred);
}
