//! Content-addressed dedupe: an upload is stored under its content's SHA-256.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use xferkit_core::{Error, Key, Result, TransferCtx};

/// How a store names uploaded objects (config `stores.NAME.dedupe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dedupe {
    /// The key the caller asked for.
    #[default]
    Off,
    /// A key derived from the content's SHA-256 (`sha256/HEX.ext`): an upload
    /// whose content is already stored sends nothing and returns the
    /// existing object.
    Content,
}

impl Dedupe {
    /// Parse the config value (`"off"` or `"content"`).
    pub fn parse(value: &str, what: &str) -> Result<Self> {
        match value {
            "off" | "none" => Ok(Dedupe::Off),
            "content" => Ok(Dedupe::Content),
            other => Err(Error::invalid_config(format!(
                "{what} = {other:?} is not a dedupe mode (use \"content\" or \"off\")"
            ))),
        }
    }
}

/// The content-addressed key for content with SHA-256 `hex`, keeping the
/// requested key's extension (so content types and receivers' file names
/// stay right): `sha256/HEX.ext`. Checked as every key is (it cannot fail
/// for a hex digest).
pub fn content_key(requested: &Key, hex: &str) -> Result<Key> {
    let name = requested.rsplit('/').next().unwrap_or(requested);
    let ext = name
        .rsplit_once('.')
        .map(|(stem, ext)| (stem, ext.to_ascii_lowercase()))
        .filter(|(stem, ext)| {
            !stem.is_empty()
                && (1..=10).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(|(_, ext)| format!(".{ext}"))
        .unwrap_or_default();
    Key::new(format!("sha256/{hex}{ext}"))
}

/// SHA-256 of a file, hex; reads on a blocking thread, stops when `ctx` is
/// cancelled.
pub async fn sha256_file(path: &Path, ctx: &TransferCtx) -> Result<String> {
    let path: PathBuf = path.to_path_buf();
    let token = ctx.token().clone();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> Result<String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(|e| Error::from_io(&shown, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if token.is_cancelled() {
                return Err(Error::cancelled(&shown));
            }
            let n = f.read(&mut buf).map_err(|e| Error::from_io(&shown, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Error::backend("sha256", "hashing task failed", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_keep_a_sane_extension() {
        let h = "ab".repeat(32);
        let ck = |k: &str| content_key(&Key::new(k).unwrap(), &h).unwrap();
        assert_eq!(ck("photos/Cat.JPG"), format!("sha256/{h}.jpg").as_str());
        assert_eq!(ck("notes"), format!("sha256/{h}").as_str());
        assert_eq!(ck(".bashrc"), format!("sha256/{h}").as_str());
        assert_eq!(ck("a.tar.gz"), format!("sha256/{h}.gz").as_str());
        assert_eq!(ck("x.not an ext"), format!("sha256/{h}").as_str());
        assert_eq!(ck("x.verylongextension"), format!("sha256/{h}").as_str());
        assert_eq!(ck("é/ü.png"), format!("sha256/{h}.png").as_str());
    }

    #[test]
    fn dedupe_modes_parse_and_name_the_key() {
        assert_eq!(Dedupe::parse("content", "k").unwrap(), Dedupe::Content);
        assert_eq!(Dedupe::parse("off", "k").unwrap(), Dedupe::Off);
        let e = Dedupe::parse("hash", "stores.s.dedupe").unwrap_err();
        assert!(e.to_string().contains("stores.s.dedupe"), "{e}");
    }
}
