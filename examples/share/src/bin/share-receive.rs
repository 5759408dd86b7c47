//! Receiver: read a chat message, download the file by its URL, verify it.
//! Needs no configuration and no credentials: only the URL in the message.
//! The URL is a stranger's: the link store's default policy refuses links
//! to this machine and its network; `--allow-host HOST[:PORT]` lets one
//! host through (a test's emulator, a store on the LAN).
//!
//! `share-receive MESSAGE.json DIR [--allow-host HOST[:PORT]]...`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use xferkit::{HttpStore, LinkPolicy, Registry, TransferManager, TransferRequest, TransferStatus};
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

async fn receive(message: &Path, dir: &Path, allow_hosts: Vec<String>) -> Result<(), String> {
    let text = std::fs::read(message).map_err(|e| format!("{}: {e}", message.display()))?;
    let msg: Message =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", message.display()))?;
    let name = safe_name(&msg.name)
        .ok_or_else(|| format!("the message names an unsafe file name {:?}", msg.name))?;
    let mut registry = Registry::new();
    let mut policy = LinkPolicy::default();
    policy.allow_hosts = allow_hosts;
    registry.register(Arc::new(HttpStore::with_policy(policy)));
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
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut allow_hosts = Vec::new();
    while let Some(i) = args.iter().position(|a| a == "--allow-host") {
        args.remove(i);
        if i < args.len() {
            allow_hosts.push(args.remove(i));
        }
    }
    let result = match args.as_slice() {
        [message, dir] => receive(Path::new(message), Path::new(dir), allow_hosts).await,
        _ => Err("usage: share-receive MESSAGE.json DIR [--allow-host HOST[:PORT]]...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("share-receive: {e}");
            ExitCode::FAILURE
        }
    }
}
