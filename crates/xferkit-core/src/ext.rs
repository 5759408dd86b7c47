//! Conveniences every handler gets for free, built on the trait's methods.

use std::path::Path;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{ByteRange, Error, FileTransferHandler, RemoteObject, Result, TransferCtx};

/// Extension methods for every [`FileTransferHandler`].
#[async_trait]
pub trait FileTransferExt: FileTransferHandler {
    /// Download `key` (or `range` of it) to `dest`, atomically.
    ///
    /// Bytes go to a hidden temp file next to `dest`, which is fsynced and
    /// renamed over `dest` only once complete; a failed or stopped download
    /// removes the temp file and never leaves a file under `dest`.
    async fn download_to_path(
        &self,
        key: &str,
        dest: &Path,
        range: Option<ByteRange>,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let target = self.url_for(key);
        let (obj, stream) = ctx
            .cancellable(&target, self.download_stream(key, range))
            .await?;
        let expected = match range {
            Some(r) => {
                let span = r.resolve(obj.size, &target)?;
                span.end - span.start
            }
            None => obj.size,
        };
        ctx.set_total(expected);
        write_stream_atomically(stream, dest, expected, &target, ctx).await?;
        Ok(obj)
    }

    /// Read a whole object (or a range) into memory. For small objects.
    async fn read_bytes(&self, key: &str, range: Option<ByteRange>) -> Result<Bytes> {
        let (_, mut stream) = self.download_stream(key, range).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl<T: FileTransferHandler + ?Sized> FileTransferExt for T {}

/// Write `stream` to `dest` through a temp file in the same directory,
/// checking that exactly `expected` bytes arrived before renaming.
pub async fn write_stream_atomically(
    mut stream: crate::ByteStream,
    dest: &Path,
    expected: u64,
    target: &str,
    ctx: &TransferCtx,
) -> Result<()> {
    let dest_s = dest.display().to_string();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if dest.is_dir() {
        return Err(Error::backend(
            &dest_s,
            "destination is a directory",
            "refusing to replace a directory with a file",
        ));
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".xferkit-part")
        .tempfile_in(&parent)
        .map_err(|e| Error::from_io(parent.display().to_string(), e))?;
    let std_file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::from_io(&dest_s, e))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut written = 0u64;
    loop {
        let next = ctx
            .cancellable(target, async { Ok(stream.next().await) })
            .await?;
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::from_io(&dest_s, e))?;
        written += chunk.len() as u64;
        ctx.add_progress(chunk.len() as u64);
    }
    if written != expected {
        return Err(Error::Transient {
            target: target.to_string(),
            retry_after: None,
            source: Some(format!("stream ended after {written} of {expected} bytes").into()),
        });
    }
    file.flush().await.map_err(|e| Error::from_io(&dest_s, e))?;
    file.sync_all()
        .await
        .map_err(|e| Error::from_io(&dest_s, e))?;
    drop(file);
    ctx.check(target)?;
    tmp.persist(dest)
        .map_err(|e| Error::from_io(&dest_s, e.error))?;
    Ok(())
}
