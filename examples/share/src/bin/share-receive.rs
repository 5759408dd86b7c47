//! Receiver: read a chat message, download the file by its URL, verify it.
//! Needs no configuration and no credentials: only the URL in the message.
//!
//! `share-receive MESSAGE.json DIR`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use xferkit::{HttpStore, Registry, TransferManager, TransferRequest, TransferStatus};
use xferkit_example_share::{Message, progress, safe_name, sha256_file};

async fn fetch(m: &TransferManager, url: &str, dest: &Path) -> Result<(), String> {
    let t = m
        .start(TransferRequest::download(url, dest))
        .map_err(|e| e.to_string())?;
    let info = t.wait_info().await;
    match info.status {
        TransferStatus::Completed => Ok(()),
        s => Err(info.error.unwrap_or_else(|| format!("download {s:?}"))),
    }
}

async fn receive(message: &Path, dir: &Path) -> Result<(), String> {
    let text = std::fs::read(message).map_err(|e| format!("{}: {e}", message.display()))?;
    let msg: Message =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", message.display()))?;
    let name = safe_name(&msg.name)
        .ok_or_else(|| format!("the message names an unsafe file name {:?}", msg.name))?;
    let mut registry = Registry::new();
    registry.register(Arc::new(HttpStore::new()));
    let manager = TransferManager::new(Arc::new(registry));
    manager.add_listener(progress());

    let dest = dir.join(name);
    fetch(&manager, &msg.url, &dest).await?;
    let got = sha256_file(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    if got != msg.checksum {
        let _ = std::fs::remove_file(&dest);
        return Err(format!(
            "{name}: checksum mismatch (message says {}, received {got}); file removed",
            msg.checksum
        ));
    }
    if let Some(thumb) = &msg.thumbnail_url {
        let tdest: PathBuf = dir.join(format!("{name}.thumb.jpg"));
        fetch(&manager, thumb, &tdest).await?;
    }
    eprintln!(
        "received {name} ({} bytes, {}), checksum ok",
        msg.size, msg.content_type
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let result = match args.as_slice() {
        [message, dir] => receive(message, dir).await,
        _ => Err("usage: share-receive MESSAGE.json DIR".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("share-receive: {e}");
            ExitCode::FAILURE
        }
    }
}
