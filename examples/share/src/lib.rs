//! The out-of-band sharing flow of a messaging app, as two small programs
//! over xferkit:
//!
//! - `share-send FILE MESSAGE.json` uploads FILE through the transfer
//!   manager of the configured store and writes the message a chat app would
//!   send: `{url, name, size, content_type, checksum, thumbnail_url}`, where
//!   `url` is a shareable (signed) URL.
//! - `share-receive MESSAGE.json DIR` needs no configuration and no
//!   credentials: it downloads `url` through its own manager (the plain
//!   http(s) link store), shows progress, checks the checksum, and fetches the
//!   thumbnail if there is one.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use xferkit::{FileInfo, FileTransferListener};

/// The message the sender writes and the receiver reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Shareable URL of the file (expires).
    pub url: String,
    /// The file's name, as the receiver should save it.
    pub name: String,
    pub size: u64,
    pub content_type: String,
    /// `sha256:HEX` of the content.
    pub checksum: String,
    /// Shareable URL of a JPEG preview, for images.
    pub thumbnail_url: Option<String>,
}

/// `sha256:HEX` of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// A file name from a message, safe to join to a directory: one normal path
/// component, no separators, not `.`/`..`, not hidden.
pub fn safe_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control);
    ok.then_some(name)
}

/// Prints one progress line per 10 % (and the end) on stderr.
#[derive(Debug, Default)]
pub struct PrintProgress {
    last: std::sync::Mutex<u64>,
}

impl FileTransferListener for PrintProgress {
    fn on_progress(&self, info: &FileInfo) {
        let Some(size) = info.size.filter(|s| *s > 0) else {
            return;
        };
        let pct = info.transferred * 100 / size;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if pct >= *last + 10 || (pct == 100 && *last != 100) {
            *last = pct;
            eprintln!(
                "{:?} {:>3}% ({}/{} bytes) {:?}",
                info.direction, pct, info.transferred, size, info.status
            );
        }
    }
}

/// A listener for `manager.add_listener`.
pub fn progress() -> Arc<dyn FileTransferListener> {
    Arc::new(PrintProgress::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_cannot_escape_the_directory() {
        assert_eq!(safe_name("photo.jpg"), Some("photo.jpg"));
        for bad in ["", "../x", "a/b", "..", ".hidden", "a\\b", "a\0b", "a\nb"] {
            assert_eq!(safe_name(bad), None, "{bad:?}");
        }
    }
}
