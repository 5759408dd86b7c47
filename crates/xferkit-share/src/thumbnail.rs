//! Thumbnails of image uploads, stored next to the object.

use std::path::Path;
use std::sync::Arc;

use xferkit_core::{Error, Key, Result};

/// Makes a small JPEG preview of an image file. The `xferkit` facade's
/// `thumbnail` feature implements it with the `image` crate; this crate has
/// no image code.
pub trait Thumbnailer: Send + Sync {
    /// `None` if `content_type` is not an image type this thumbnailer
    /// handles; otherwise the JPEG bytes, or an error that names the file.
    /// Called on a blocking thread.
    fn thumbnail(&self, path: &Path, content_type: &str) -> Option<Result<Vec<u8>>>;
}

/// The key of a thumbnail stored next to `key`; `InvalidKey` if the suffix
/// makes it longer than [`xferkit_core::MAX_KEY_LEN`].
pub fn thumbnail_key(key: &Key) -> Result<Key> {
    Key::new(format!("{key}.thumb.jpg"))
}

/// Run `t` on a blocking thread.
pub(crate) async fn make(
    t: Arc<dyn Thumbnailer>,
    path: &Path,
    content_type: &str,
) -> Option<Result<Vec<u8>>> {
    let path = path.to_path_buf();
    let ct = content_type.to_string();
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || t.thumbnail(&path, &ct)).await {
        Ok(r) => r,
        Err(e) => Some(Err(Error::backend(shown, "thumbnailer panicked", e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_live_next_to_their_object() {
        let key = Key::new("a/b.png").unwrap();
        assert_eq!(thumbnail_key(&key).unwrap(), "a/b.png.thumb.jpg");
        let long = Key::new("x".repeat(xferkit_core::MAX_KEY_LEN - 4)).unwrap();
        let e = thumbnail_key(&long).unwrap_err();
        assert_eq!(e.kind(), xferkit_core::ErrorKind::InvalidKey);
    }
}
