//! Upload journals: what a multipart upload of a local file has stored, so
//! the same upload run again after a crash (`kill -9`, power loss) sends
//! only the parts the store has not acknowledged.
//!
//! One small JSON file per upload under `STATE_DIR/uploads/`, named by a
//! hash of the destination URL and the source path. It records the store's
//! upload id, the part size, each acknowledged part (number, offset, length,
//! ETag, CRC32C of its bytes) and a fingerprint of the source (size, mtime,
//! SHA-256 of its first and last 64 KiB). A journal whose fingerprint or
//! part size no longer matches is ignored (the upload starts over), and a
//! part is reused only if the store still lists it with the same ETag and
//! the file's bytes still have the recorded CRC32C. The journal is removed
//! when the upload completes, fails or is stopped (those abort the upload);
//! only a process that dies mid-upload leaves one behind.
//!
//! Upload ids are not credentials (they need the store's credentials to
//! use), but the file is written owner-only anyway.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{Error, Result};

/// Bytes hashed at each end of the source for its fingerprint.
pub const FINGERPRINT_EDGE: u64 = 64 * 1024;

/// Identifies the content of a local file cheaply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct SourceFingerprint {
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 if unknown).
    pub mtime_ns: u64,
    /// SHA-256 (hex) of the first and the last 64 KiB.
    pub head_sha256: String,
    pub tail_sha256: String,
}

impl SourceFingerprint {
    /// Fingerprint the file at `path`.
    pub async fn of(path: &Path) -> Result<Self> {
        let shown = || path.display().to_string();
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::from_io(shown(), e))?;
        let meta = f.metadata().await.map_err(|e| Error::from_io(shown(), e))?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let edge = FINGERPRINT_EDGE.min(size);
        let mut buf = vec![0u8; usize::try_from(edge).unwrap_or(0)];
        f.read_exact(&mut buf)
            .await
            .map_err(|e| Error::from_io(shown(), e))?;
        let head_sha256 = hex::encode(Sha256::digest(&buf));
        f.seek(std::io::SeekFrom::Start(size - edge))
            .await
            .map_err(|e| Error::from_io(shown(), e))?;
        f.read_exact(&mut buf)
            .await
            .map_err(|e| Error::from_io(shown(), e))?;
        let tail_sha256 = hex::encode(Sha256::digest(&buf));
        Ok(SourceFingerprint {
            size,
            mtime_ns,
            head_sha256,
            tail_sha256,
        })
    }
}

/// One part the store acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct JournalPart {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
    /// The store's ETag for the part (or block id), as it returned it.
    pub etag: String,
    /// CRC32C of the part's bytes.
    pub crc32c: u32,
}

impl JournalPart {
    pub fn new(number: u32, offset: u64, len: u64, etag: String, crc32c: u32) -> Self {
        JournalPart {
            number,
            offset,
            len,
            etag,
            crc32c,
        }
    }
}

/// What one interrupted upload had stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct UploadJournal {
    pub version: u32,
    /// Canonical destination URL.
    pub target: String,
    pub source: PathBuf,
    pub fingerprint: SourceFingerprint,
    /// The store's multipart upload id.
    pub upload_id: String,
    pub part_size: u64,
    /// Whether the upload was create-only (a resumed one must be too).
    pub create_only: bool,
    pub parts: Vec<JournalPart>,
}

impl UploadJournal {
    /// 2: every part of every layout is recorded (GCS chunks included),
    /// numbered from 1.
    pub const VERSION: u32 = 2;

    pub fn new(
        target: String,
        source: PathBuf,
        fingerprint: SourceFingerprint,
        upload_id: String,
        part_size: u64,
        create_only: bool,
    ) -> Self {
        UploadJournal {
            version: Self::VERSION,
            target,
            source,
            fingerprint,
            upload_id,
            part_size,
            create_only,
            parts: Vec::new(),
        }
    }
}

/// Where the journal of one upload lives.
#[derive(Debug, Clone)]
pub struct JournalFile {
    path: PathBuf,
}

impl JournalFile {
    /// The journal of uploading `source` to `target`, under `state_dir`.
    pub fn for_upload(state_dir: &Path, target: &str, source: &Path) -> Self {
        let source = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
        let mut h = Sha256::new();
        h.update(target.as_bytes());
        h.update([0]);
        h.update(source.as_os_str().as_encoded_bytes());
        let name = format!("{}.json", hex::encode(&h.finalize()[..16]));
        JournalFile {
            path: state_dir.join("uploads").join(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal, if there is a readable one of this format.
    pub async fn load(&self) -> Option<UploadJournal> {
        let bytes = tokio::fs::read(&self.path).await.ok()?;
        match serde_json::from_slice::<UploadJournal>(&bytes) {
            Ok(j) if j.version == UploadJournal::VERSION => Some(j),
            Ok(_) | Err(_) => {
                tracing::debug!(path = %self.path.display(), "ignoring an unreadable upload journal");
                None
            }
        }
    }

    /// Replace the journal atomically (temp file, then rename).
    pub async fn save(&self, journal: &UploadJournal) -> Result<()> {
        let shown = || self.path.display().to_string();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| Error::from_io(dir.display().to_string(), e))?;
        let json = serde_json::to_vec_pretty(journal)
            .map_err(|e| Error::backend(shown(), "cannot encode the upload journal", e))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        opts.mode(0o600);
        let mut f = opts
            .open(&tmp)
            .await
            .map_err(|e| Error::from_io(tmp.display().to_string(), e))?;
        tokio::io::AsyncWriteExt::write_all(&mut f, &json)
            .await
            .map_err(|e| Error::from_io(tmp.display().to_string(), e))?;
        f.sync_data()
            .await
            .map_err(|e| Error::from_io(tmp.display().to_string(), e))?;
        drop(f);
        tokio::fs::rename(&tmp, &self.path)
            .await
            .map_err(|e| Error::from_io(shown(), e))
    }

    /// Remove the journal (a missing one is fine).
    pub async fn remove(&self) {
        // A save cut short (a stop or pause mid-write) leaves its temp file.
        let _ = tokio::fs::remove_file(self.path.with_extension("json.tmp")).await;
        match tokio::fs::remove_file(&self.path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove an upload journal")
            }
        }
    }
}

/// A CRC32C as S3 and GCS spell it: base64 of its 4 big-endian bytes.
pub fn crc32c_to_base64(crc: u32) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// A whole object's CRC32C from its base64 form; a composite one (S3's
/// `…-N`, a checksum of the parts' checksums) or anything malformed: `None`.
pub fn crc32c_from_base64(v: &str) -> Option<u32> {
    use base64::Engine as _;
    if v.contains('-') {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    Some(u32::from_be_bytes(raw.try_into().ok()?))
}

/// A CRC32C as xferkit shows checksums (`crc32c:<hex>`, as `RemoteObject::checksum`).
pub fn crc32c_label(crc: u32) -> String {
    format!("crc32c:{crc:08x}")
}

/// CRC32C of `data` (what a journal records per part).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC32C of the bytes before and then `data` (`crc` is the CRC32C of the
/// bytes before).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// CRC32C of `len` bytes at `offset` of `path`, or `None` if they cannot
/// be read (the file shrank).
pub async fn crc32c_of_range(path: &Path, offset: u64, len: u64) -> Option<u32> {
    let mut f = tokio::fs::File::open(path).await.ok()?;
    f.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
    let mut left = len;
    let mut crc = 0u32;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        left -= n as u64;
    }
    Some(crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn journal_round_trips_and_is_keyed_by_target_and_source() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap_or_else(|e| panic!("{e}"));
        let fp = SourceFingerprint::of(&src)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fp.size, 200_000);
        assert_ne!(fp.head_sha256, fp.tail_sha256);

        let a = JournalFile::for_upload(dir.path(), "s3://b/k", &src);
        let b = JournalFile::for_upload(dir.path(), "s3://b/other", &src);
        assert_ne!(a.path(), b.path());
        assert!(a.load().await.is_none());
        let mut j = UploadJournal::new(
            "s3://b/k".into(),
            src.clone(),
            fp.clone(),
            "id-1".into(),
            65536,
            false,
        );
        let crc = crc32c_of_range(&src, 65536, 65536)
            .await
            .unwrap_or_default();
        assert_eq!(crc, crc32c::crc32c(&data[65536..131072]));
        j.parts
            .push(JournalPart::new(2, 65536, 65536, "\"e2\"".into(), crc));
        a.save(&j).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.load().await, Some(j));
        a.remove().await;
        assert!(a.load().await.is_none());
        a.remove().await; // twice is fine

        // A changed file changes the fingerprint.
        let mut changed = data.clone();
        changed[199_999] ^= 1;
        std::fs::write(&src, &changed).unwrap_or_else(|e| panic!("{e}"));
        let fp2 = SourceFingerprint::of(&src)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(fp.tail_sha256, fp2.tail_sha256);
        assert!(
            crc32c_of_range(&src, 190_000, 20_000).await.is_none(),
            "past the end"
        );
    }
}
