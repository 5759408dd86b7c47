//! Sender: upload a file, write the chat message that carries its URL.
//!
//! `share-send [--config FILE] [--store NAME] [--expires 1h] FILE MESSAGE.json`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xferkit::{ShareInfo, ShareRequestExt, TransferRequest, TransferStatus, Xferkit};
use xferkit_example_share::{Message, progress, sha256_file};

struct Args {
    config: Option<PathBuf>,
    store: Option<String>,
    expires: Duration,
    file: PathBuf,
    out: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut config = None;
    let mut store = None;
    let mut expires = Duration::from_secs(3600);
    let mut rest = Vec::new();
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--config") => config = it.next().map(PathBuf::from),
            Some("--store") => store = it.next().and_then(|s| s.into_string().ok()),
            Some("--expires") => {
                let v = it
                    .next()
                    .and_then(|s| s.into_string().ok())
                    .unwrap_or_default();
                expires = v
                    .parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| format!("--expires {v:?}: give seconds"))?;
            }
            _ => rest.push(PathBuf::from(a)),
        }
    }
    match <[PathBuf; 2]>::try_from(rest) {
        Ok([file, out]) => Ok(Args {
            config,
            store,
            expires,
            file,
            out,
        }),
        Err(_) => Err(
            "usage: share-send [--config FILE] [--store NAME] [--expires SECS] FILE MESSAGE.json"
                .into(),
        ),
    }
}

async fn send(a: Args) -> Result<(), String> {
    let kit = Xferkit::load(a.config.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let store = match &a.store {
        Some(s) => kit.registry().get(s),
        None => kit.registry().default_store(),
    }
    .map_err(|e| e.to_string())?;
    let name = a
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: the file name is not UTF-8", a.file.display()))?
        .to_string();
    let checksum = sha256_file(&a.file).map_err(|e| format!("{}: {e}", a.file.display()))?;
    // One key per share; the hash keeps keys of different files apart.
    let key = xferkit::Key::new(format!(
        "shared/{}/{name}",
        &checksum["sha256:".len().."sha256:".len() + 16]
    ))
    .map_err(|e| e.to_string())?;
    kit.manager().add_listener(progress());
    let t = kit
        .manager()
        .start(TransferRequest::upload(&a.file, store.url_for(&key)).with_share(a.expires))
        .map_err(|e| e.to_string())?;
    let info = t.wait_info().await;
    if info.status != TransferStatus::Completed {
        return Err(info
            .error
            .unwrap_or_else(|| format!("upload {:?}", info.status)));
    }
    let share = ShareInfo::of(&info).clone();
    if let Some(e) = &share.thumbnail_error {
        eprintln!("warning: {e}");
    }
    let obj = info.object.ok_or("upload completed without an object")?;
    let msg = Message {
        url: share.share_url.ok_or("the store returned no share URL")?,
        name,
        size: obj.size,
        content_type: obj
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        checksum,
        thumbnail_url: share.thumbnail_share_url,
    };
    let json = serde_json::to_vec_pretty(&msg).map_err(|e| e.to_string())?;
    std::fs::write(&a.out, json).map_err(|e| format!("{}: {e}", a.out.display()))?;
    eprintln!(
        "sent {} ({} bytes); message in {}",
        msg.name,
        msg.size,
        a.out.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match args() {
        Ok(a) => send(a).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("share-send: {e}");
            ExitCode::FAILURE
        }
    }
}
