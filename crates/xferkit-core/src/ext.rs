//! Conveniences every handler gets for free, built on the trait's methods:
//! the download engine (concurrent ranged GETs written in place, resumable,
//! verified) and small helpers.
//!
//! # How a download runs
//!
//! [`FileTransferExt::download_to_path_with`] picks one of two paths:
//!
//! - **Ranges** (whole-object download, the store has
//!   [`Capabilities::range`](crate::Capabilities), the object is at least
//!   [`DownloadOptions::parallel_threshold`], and its stored checksum, if any,
//!   can be checked per part): the first whole-object GET's headers give the
//!   size and etag (remembered; the body is dropped unread), then up to [`DownloadOptions::concurrency`] ranged GETs of
//!   [`DownloadOptions::part_size`] bytes each (grown for big objects while
//!   [`DownloadOptions::auto_part_size`] is on), written with positional writes
//!   into a pre-sized file `.NAME.xferkit-partial` next to the destination.
//!   Each range buffers at most [`RANGE_WRITE_BUFFER`] bytes before writing,
//!   so memory is bounded by `concurrency × RANGE_WRITE_BUFFER` whatever the
//!   file size. A failed range is retried on its own and continues from the
//!   bytes it already wrote. A small JSON journal `.NAME.xferkit-partial.json`
//!   lists the finished parts (with their CRC32C), so a later download of the
//!   same URL to the same destination, with the same etag, fetches only the
//!   missing parts (resume after a crash or a transient failure). At the end
//!   the object is stat-ed again: a changed etag or size means the object
//!   changed while it was being read, and the download fails with
//!   `PreconditionFailed`.
//! - **One stream** (a range was asked for, the store cannot serve ranges,
//!   the object is small, or its checksum is a SHA-256 that can only be
//!   computed in order): the bytes go to a fresh hidden temp file. Up to
//!   1 MiB they are first collected (and verified) in memory, and one
//!   blocking task then writes, fsyncs and renames the file.
//!
//! Both paths fsync the file and rename it over the destination only when it
//! is complete and verified: the destination never holds a partial file.
//!
//! # Integrity
//!
//! When the store reports a checksum of the whole object
//! ([`RemoteObject::checksum`]) and [`DownloadOptions::verify_checksum`] is
//! on, it is verified while the bytes stream, without a second read:
//! `crc32c:` on both paths (per-part CRC32Cs are combined), `sha256:` on the
//! one-stream path (which is chosen for it). Other algorithms (`md5:`, which
//! GCS reports only for objects without a CRC32C) are not verified. A mismatch is `ChecksumMismatch` and nothing is
//! left at the destination.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::{
    ByteRange, Error, ErrorKind, FileTransferHandler, Key, RemoteObject, Result, TransferCtx,
};

const MIB: u64 = 1024 * 1024;

/// Default size of one ranged GET. Chosen by measurement (1 GiB from
/// s3s-fs on the 2-core bench machine, docs/benchmarks.md): 16 MiB × 8 in
/// flight was the fastest of 4–32 MiB × 4–16 (2.4–3.1 s, about 44 MiB peak
/// RSS); 4 in flight was clearly slower (3.4–5.3 s), 12–16 no faster and
/// larger in memory. Objects over [`AUTO_DOWNLOAD_PARTS`] × this grow their
/// parts (see [`DownloadOptions::auto_part_size`]).
pub const DEFAULT_DOWNLOAD_PART_SIZE: u64 = 16 * MIB;
/// With [`DownloadOptions::auto_part_size`], an object is split into at most
/// this many parts until they reach [`MAX_AUTO_DOWNLOAD_PART_SIZE`]. Chosen
/// by measurement (docs/benchmarks.md, "After the full run"): at 1 GiB,
/// 64 MiB parts (16 of them, 8 in flight) beat 16 MiB parts on s3s-fs and on
/// Azurite in every interleaved round (about 7 % and 18 % less time), while
/// at 256 MiB four 64 MiB parts were slower than sixteen of 16 MiB on s3s-fs:
/// fewer, longer requests pay only once the object is big enough to keep
/// every stream busy.
pub const AUTO_DOWNLOAD_PARTS: u64 = 16;
/// The largest part [`DownloadOptions::auto_part_size`] grows to.
pub const MAX_AUTO_DOWNLOAD_PART_SIZE: u64 = 64 * MIB;
/// Default number of ranged GETs in flight (see [`DEFAULT_DOWNLOAD_PART_SIZE`]).
pub const DEFAULT_DOWNLOAD_CONCURRENCY: usize = 8;
/// Default size from which a whole-object download uses ranges: two parts,
/// below which the extra `stat` calls cost more than the ranges win.
pub const DEFAULT_PARALLEL_THRESHOLD: u64 = 2 * DEFAULT_DOWNLOAD_PART_SIZE;
/// Bytes one range task collects before a positional write.
pub const RANGE_WRITE_BUFFER: usize = 1 << 20;
/// How often, at most, the resume journal is made durable while parts finish.
const JOURNAL_INTERVAL: Duration = Duration::from_secs(1);
const PARTIAL_SUFFIX: &str = ".xferkit-partial";

/// How [`FileTransferExt::download_to_path_with`] downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// Bytes per ranged GET (min 64 KiB). Default [`DEFAULT_DOWNLOAD_PART_SIZE`].
    pub part_size: u64,
    /// Grow the parts of a big object so it has at most
    /// [`AUTO_DOWNLOAD_PARTS`] of them, up to [`MAX_AUTO_DOWNLOAD_PART_SIZE`]
    /// (never below `part_size`). Default on; [`Self::with_part_size`]
    /// turns it off, so a part size that was asked for is kept exactly.
    pub auto_part_size: bool,
    /// Ranged GETs in flight (min 1). Default [`DEFAULT_DOWNLOAD_CONCURRENCY`].
    pub concurrency: usize,
    /// Objects at least this big are fetched in ranges. Default [`DEFAULT_PARALLEL_THRESHOLD`].
    pub parallel_threshold: u64,
    /// Keep and reuse `.NAME.xferkit-partial` + journal across runs. Default on.
    pub resume: bool,
    /// Verify the store's checksum while downloading (see the module docs). Default on.
    pub verify_checksum: bool,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            part_size: DEFAULT_DOWNLOAD_PART_SIZE,
            auto_part_size: true,
            concurrency: DEFAULT_DOWNLOAD_CONCURRENCY,
            parallel_threshold: DEFAULT_PARALLEL_THRESHOLD,
            resume: true,
            verify_checksum: true,
        }
    }
}

impl DownloadOptions {
    /// A fixed part size: also turns [`Self::auto_part_size`] off.
    pub fn with_part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes;
        self.auto_part_size = false;
        self
    }
    pub fn with_auto_part_size(mut self, on: bool) -> Self {
        self.auto_part_size = on;
        self
    }
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
    pub fn with_parallel_threshold(mut self, bytes: u64) -> Self {
        self.parallel_threshold = bytes;
        self
    }
    pub fn with_resume(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }
    pub fn with_verify_checksum(mut self, on: bool) -> Self {
        self.verify_checksum = on;
        self
    }
    /// The part size for an object of `size` bytes.
    fn part_size_for(&self, size: u64) -> u64 {
        let base = self.part_size.max(64 * 1024);
        if !self.auto_part_size {
            return base;
        }
        size.div_ceil(AUTO_DOWNLOAD_PARTS)
            .min(MAX_AUTO_DOWNLOAD_PART_SIZE)
            .max(base)
    }
}

/// Extension methods for every [`FileTransferHandler`].
#[async_trait]
pub trait FileTransferExt: FileTransferHandler {
    /// Download `key` (or `range` of it) to `dest`, atomically, with the
    /// default [`DownloadOptions`].
    ///
    /// Bytes go to a hidden file next to `dest`, which is fsynced and
    /// renamed over `dest` only once complete; a failed or stopped download
    /// never leaves a file under `dest`.
    async fn download_to_path(
        &self,
        key: &Key,
        dest: &Path,
        range: Option<ByteRange>,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        self.download_to_path_with(key, dest, range, &DownloadOptions::default(), ctx)
            .await
    }

    /// [`download_to_path`](Self::download_to_path) with explicit options;
    /// see the module docs for how it runs.
    async fn download_to_path_with(
        &self,
        key: &Key,
        dest: &Path,
        range: Option<ByteRange>,
        opts: &DownloadOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        download_file(self, key, dest, range, opts, ctx, None).await
    }

    /// Read a whole object (or a range) into memory. For small objects.
    async fn read_bytes(&self, key: &Key, range: Option<ByteRange>) -> Result<Bytes> {
        let (_, mut stream) = self.download_stream(key, range).await?;
        let mut buf = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

impl<T: FileTransferHandler + ?Sized> FileTransferExt for T {}

/// Where a complete, verified and fsynced download goes instead of being
/// renamed over its destination: called once, on a blocking thread, with the
/// file's path. It may rename the file away; whatever is left at that path
/// afterwards is removed. The transfer manager uses it to hand one download
/// to every caller that asked for the same URL.
pub(crate) type Deliver = Arc<dyn Fn(&Path) -> Result<()> + Send + Sync>;

/// The download engine behind [`FileTransferExt::download_to_path_with`]:
/// `dest` names the destination (temp, partial and journal files sit next to
/// it); `deliver`, if given, places the verified file instead of a rename
/// over `dest`.
pub(crate) async fn download_file<H: FileTransferHandler + ?Sized>(
    h: &H,
    key: &Key,
    dest: &Path,
    range: Option<ByteRange>,
    opts: &DownloadOptions,
    ctx: &TransferCtx,
    deliver: Option<Deliver>,
) -> Result<RemoteObject> {
    let target = h.url_for(key);
    refuse_directory(dest)?;
    // One GET for everything: its headers tell the size, etag and
    // checksum. A big object's stream is dropped unread (the connection
    // closes) and fetched in ranges instead; a small one just streams, so
    // small files cost no extra request.
    let (obj, stream) = ctx
        .cancellable(&target, h.download_stream(key, range))
        .await?;
    if range.is_none() && h.capabilities().range {
        let sequential_checksum =
            opts.verify_checksum && matches!(Checksum::parse(&obj), Some(Checksum::Sha256(_)));
        if obj.size >= opts.parallel_threshold.max(1) && !sequential_checksum {
            drop(stream);
            return download_ranges(h, key, dest, obj, opts, ctx, deliver).await;
        }
    }
    let expected = match range {
        Some(r) => {
            let span = r.resolve(obj.size, &target)?;
            span.end - span.start
        }
        None => obj.size,
    };
    let verify = match range {
        None if opts.verify_checksum => Checksum::parse(&obj),
        _ => None,
    };
    ctx.set_total(expected);
    write_stream_verified(stream, dest, expected, &target, ctx, verify, deliver).await?;
    Ok(obj)
}

/// Remove the partial file and journal that a paused download to `dest`
/// kept.
pub(crate) async fn discard_partial(dest: &Path) -> Result<()> {
    let paths = PartialPaths::for_dest(dest);
    tokio::task::spawn_blocking(move || paths.remove())
        .await
        .map_err(|e| Error::backend(dest.display().to_string(), "file task failed", e))
}

/// Hand the verified file at `path` to `deliver` on a blocking thread, then
/// remove what is left at `path`.
async fn run_deliver(deliver: Deliver, path: PathBuf, target: &str) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let r = deliver(&path);
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| Error::backend(target, "file task failed", e))?
}

fn refuse_directory(dest: &Path) -> Result<()> {
    if dest.is_dir() {
        return Err(Error::backend(
            dest.display().to_string(),
            "destination is a directory",
            "refusing to replace a directory with a file",
        ));
    }
    Ok(())
}

fn parent_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name_of(dest: &Path) -> String {
    dest.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into())
}

/// A whole-object checksum this engine can verify.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checksum {
    /// Lower-case hex of the 4 big-endian bytes (as GCS reports it).
    Crc32c(u32),
    /// Lower-case hex digest.
    Sha256(String),
}

impl Checksum {
    fn parse(obj: &RemoteObject) -> Option<Checksum> {
        let (alg, value) = obj.checksum.as_deref()?.split_once(':')?;
        match alg.to_ascii_lowercase().as_str() {
            "crc32c" => u32::from_str_radix(value, 16).ok().map(Checksum::Crc32c),
            "sha256" => Some(Checksum::Sha256(value.to_ascii_lowercase())),
            _ => None,
        }
    }
    fn shown(&self) -> String {
        match self {
            Checksum::Crc32c(v) => format!("crc32c:{v:08x}"),
            Checksum::Sha256(h) => format!("sha256:{h}"),
        }
    }
}

fn mismatch(target: &str, expected: &Checksum, actual: Checksum) -> Error {
    Error::ChecksumMismatch {
        target: target.to_string(),
        expected: expected.shown(),
        actual: actual.shown(),
    }
}

/// Write `stream` to `dest` through a temp file in the same directory,
/// checking that exactly `expected` bytes arrived before renaming.
pub async fn write_stream_atomically(
    stream: crate::ByteStream,
    dest: &Path,
    expected: u64,
    target: &str,
    ctx: &TransferCtx,
) -> Result<()> {
    write_stream_verified(stream, dest, expected, target, ctx, None, None).await
}

enum Hasher {
    Crc32c(u32),
    Sha256(Box<Sha256>),
}

impl Hasher {
    fn for_checksum(verify: &Option<Checksum>) -> Option<Hasher> {
        verify.as_ref().map(|c| match c {
            Checksum::Crc32c(_) => Hasher::Crc32c(0),
            Checksum::Sha256(_) => Hasher::Sha256(Box::default()),
        })
    }

    fn update(&mut self, chunk: &[u8]) {
        match self {
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, chunk),
            Hasher::Sha256(h) => h.update(chunk),
        }
    }
}

/// The end of a one-stream download: every byte arrived, and the checksum
/// (if one is to be verified) matches.
fn check_end(
    target: &str,
    written: u64,
    expected: u64,
    verify: &Option<Checksum>,
    hasher: Option<Hasher>,
) -> Result<()> {
    if written != expected {
        return Err(Error::Transient {
            target: target.to_string(),
            retry_after: None,
            source: Some(format!("stream ended after {written} of {expected} bytes").into()),
        });
    }
    if let (Some(want), Some(h)) = (verify, hasher) {
        let got = match h {
            Hasher::Crc32c(c) => Checksum::Crc32c(c),
            Hasher::Sha256(h) => Checksum::Sha256(hex::encode(h.finalize())),
        };
        if &got != want {
            return Err(mismatch(target, want, got));
        }
    }
    Ok(())
}

async fn write_stream_verified(
    mut stream: crate::ByteStream,
    dest: &Path,
    expected: u64,
    target: &str,
    ctx: &TransferCtx,
    verify: Option<Checksum>,
    deliver: Option<Deliver>,
) -> Result<()> {
    // Size 0 may be a link that announced no length: the streaming path.
    if (1..=SMALL_DOWNLOAD).contains(&expected) {
        return write_small(stream, dest, expected, target, ctx, verify, deliver).await;
    }
    let dest_s = dest.display().to_string();
    let parent = parent_of(dest);
    refuse_directory(dest)?;
    // What earlier runs for this destination left behind when their process
    // died goes first; then a new temp file, locked while this one writes it.
    let (tmp, mode) = {
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || {
            PartialPaths::remove_stale_parts(&dest);
            PartialPaths::new_part(&dest)
        })
        .await
        .map_err(|e| Error::backend(target, "file task failed", e))?
        .map_err(|e| Error::from_io(parent.display().to_string(), e))?
    };
    let std_file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| Error::from_io(&dest_s, e))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut hasher = Hasher::for_checksum(&verify);
    let mut written = 0u64;
    loop {
        let next = ctx
            .cancellable(target, async { Ok(stream.next().await) })
            .await?;
        let Some(chunk) = next else { break };
        let chunk = chunk?;
        ctx.throttle(target, chunk.len() as u64).await?;
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::from_io(&dest_s, e))?;
        written += chunk.len() as u64;
        ctx.add_progress(chunk.len() as u64);
    }
    check_end(target, written, expected, &verify, hasher)?;
    file.flush().await.map_err(|e| Error::from_io(&dest_s, e))?;
    file.sync_all()
        .await
        .map_err(|e| Error::from_io(&dest_s, e))?;
    drop(file);
    ctx.check(target)?;
    // The final file gets the mode a new file gets here (umask), as with `cp`.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::from_io(&dest_s, e))?;
    match deliver {
        None => {
            tmp.persist(dest)
                .map_err(|e| Error::from_io(&dest_s, e.error))?;
            Ok(())
        }
        Some(d) => {
            // The lock stays (with a descriptor of the same open file) until
            // the file is delivered, so no sweeper takes it meanwhile.
            let held = tmp
                .as_file()
                .try_clone()
                .map_err(|e| Error::from_io(&dest_s, e))?;
            let path = tmp.into_temp_path();
            let r = run_deliver(d, path.to_path_buf(), target).await;
            drop(path);
            drop(held);
            r
        }
    }
}

/// Downloads of at most this many bytes are collected in memory and written
/// in one blocking task (see [`write_small`]).
const SMALL_DOWNLOAD: u64 = 1 << 20;

/// [`write_stream_verified`] for a small object: the bytes are collected
/// (and verified) in memory, then one blocking task does everything the
/// file needs (stale sweep, temp file, write, fsync, mode, rename or
/// delivery) instead of a hand-off to the blocking pool per step: `cp -r`
/// of 2,000 small files spent a fifth of its CPU on those hand-offs. The
/// promises are the same: fsynced before the rename, nothing at `dest`
/// unless complete and verified, a stop before the rename leaves nothing.
async fn write_small(
    mut stream: crate::ByteStream,
    dest: &Path,
    expected: u64,
    target: &str,
    ctx: &TransferCtx,
    verify: Option<Checksum>,
    deliver: Option<Deliver>,
) -> Result<()> {
    let mut chunks = Vec::new();
    let mut hasher = Hasher::for_checksum(&verify);
    let mut written = 0u64;
    while let Some(chunk) = ctx
        .cancellable(target, async { Ok(stream.next().await) })
        .await?
    {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > expected {
            break;
        }
        ctx.throttle(target, chunk.len() as u64).await?;
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
        ctx.add_progress(chunk.len() as u64);
        chunks.push(chunk);
    }
    check_end(target, written, expected, &verify, hasher)?;
    let (dest, target, ctx) = (dest.to_path_buf(), target.to_string(), ctx.clone());
    let task_target = target.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let target = task_target;
        let dest_s = dest.display().to_string();
        let io = |e| Error::from_io(&dest_s, e);
        refuse_directory(&dest)?;
        PartialPaths::remove_stale_parts(&dest);
        let (mut tmp, mode) = PartialPaths::new_part(&dest)
            .map_err(|e| Error::from_io(parent_of(&dest).display().to_string(), e))?;
        for c in &chunks {
            tmp.write_all(c).map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        ctx.check(&target)?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
        match deliver {
            None => tmp.persist(&dest).map(drop).map_err(|e| io(e.error)),
            // The lock stays (the temp file is open) until delivered.
            Some(d) => {
                let r = d(tmp.path());
                drop(tmp); // whatever delivery left at the path goes
                r
            }
        }
    })
    .await
    .map_err(|e| Error::backend(target, "file task failed", e))?
}

// ---------------------------------------------------------------------------------------------
// Ranged download
// ---------------------------------------------------------------------------------------------

/// The partial file and its journal for a destination.
#[derive(Debug, Clone)]
struct PartialPaths {
    data: PathBuf,
    journal: PathBuf,
}

impl PartialPaths {
    fn for_dest(dest: &Path) -> Self {
        let parent = parent_of(dest);
        let name = file_name_of(dest);
        PartialPaths {
            data: parent.join(format!(".{name}{PARTIAL_SUFFIX}")),
            journal: parent.join(format!(".{name}{PARTIAL_SUFFIX}.json")),
        }
    }
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(&self.journal);
    }

    /// Suffix of the one-stream temp files `.NAME.RANDOM.xferkit-part`
    /// (not resumable, unlike the ranged path's `.NAME.xferkit-partial`).
    const PART_SUFFIX: &'static str = ".xferkit-part";
    /// Length of their RANDOM (alphanumeric).
    const PART_RANDOM: usize = 6;

    /// A new one-stream temp file for `dest`, `.NAME.RANDOM.xferkit-part`
    /// next to it, and the mode the final file is to get: what a new file
    /// gets here from the umask (or a default ACL), `0o666 & !umask`, as
    /// `cp` and `curl` leave it. The temp file is at most 0600 meanwhile.
    ///
    /// **Stale or live.** The file is locked (`flock`, [`std::fs::File::lock`])
    /// from just after its creation until it is renamed away or removed.
    /// The kernel drops that lock when the last descriptor closes, and so
    /// when the process dies however it dies. A part file whose lock can be
    /// taken therefore has no live writer: it is stale, and the next run for
    /// the same destination removes it ([`Self::remove_stale_parts`]). One
    /// whose lock is held is live and never touched; where locks do not work
    /// at all, nothing is removed. Between creation and lock a sweeper could
    /// remove the fresh file: the lock holder checks the name still leads to
    /// its file and starts over with a new one if not.
    fn new_part(dest: &Path) -> std::io::Result<(tempfile::NamedTempFile, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let parent = parent_of(dest);
        let prefix = format!(".{}.", file_name_of(dest));
        for _ in 0..8 {
            let tmp = tempfile::Builder::new()
                .prefix(&prefix)
                .suffix(Self::PART_SUFFIX)
                .rand_bytes(Self::PART_RANDOM)
                .permissions(std::fs::Permissions::from_mode(0o666))
                .tempfile_in(&parent)?;
            let mode = tmp.as_file().metadata()?.permissions().mode() & 0o777;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode & 0o600))?;
            let locked = loop {
                match tmp.as_file().lock() {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            if let Err(e) = locked {
                // No locks here (e.g. NFS without a lock manager): no sweeper
                // can take the lock to remove it either.
                tracing::debug!(path = %tmp.path().display(), error = %e, "temp file not locked");
                return Ok((tmp, mode));
            }
            if Self::names(tmp.path(), tmp.as_file())? {
                return Ok((tmp, mode));
            }
            // A sweeper removed it before the lock: it is not ours to remove.
            let _ = tmp.keep();
        }
        Err(std::io::Error::other(format!(
            "no temp file next to {} stayed ours",
            dest.display()
        )))
    }

    /// Remove the one-stream temp files of `dest` whose process is gone
    /// (the rule in [`Self::new_part`]); returns how many. Only names of
    /// exactly that form are touched: `.a.x.RANDOM.xferkit-part` belongs to
    /// `a.x`, not to `a`.
    ///
    /// The folder is listed once per [`STALE_RESCAN`] for every destination
    /// in it, not once per download: `cp -r` of 2,000 files into one folder
    /// listed it 2,000 times (quadratic). A temp file left by a process that
    /// died after the listing is found at the next listing.
    fn remove_stale_parts(dest: &Path) -> usize {
        let parent = parent_of(dest);
        let name = file_name_of(dest);
        let fresh = |s: &Scan| s.at.elapsed() < STALE_RESCAN;
        let listed = lock(&SCANS).get(&parent).is_some_and(fresh);
        if !listed {
            let scan = Scan::of(&parent);
            let mut scans = lock(&SCANS);
            scans.retain(|_, s| fresh(s));
            scans.insert(parent.clone(), scan);
        }
        let candidates = lock(&SCANS)
            .get_mut(&parent)
            .and_then(|s| s.parts.remove(&name))
            .unwrap_or_default();
        let mut removed = 0;
        for path in candidates {
            match Self::remove_if_stale(&path) {
                Ok(true) => {
                    tracing::debug!(path = %path.display(), "removed a stale download temp file");
                    removed += 1;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "temp file kept"),
            }
        }
        removed
    }

    /// The destination name a `.NAME.RANDOM.xferkit-part` file belongs to.
    fn part_owner(file: &str) -> Option<&str> {
        let (name, random) = file
            .strip_prefix('.')?
            .strip_suffix(Self::PART_SUFFIX)?
            .rsplit_once('.')?;
        let ok = random.len() == Self::PART_RANDOM
            && random.bytes().all(|b| b.is_ascii_alphanumeric())
            && !name.is_empty();
        ok.then_some(name)
    }

    /// Whether `file` is named `.NAME.RANDOM.xferkit-part` for `name`.
    #[cfg(test)]
    fn is_part_of(file: &str, name: &str) -> bool {
        Self::part_owner(file) == Some(name)
    }

    /// Remove the regular file at `path` if no one holds its lock: `true`
    /// if removed, `false` if live, unlockable or gone.
    fn remove_if_stale(path: &Path) -> std::io::Result<bool> {
        use std::io::ErrorKind;
        // Never open a FIFO or a device (that could block), nor follow a link.
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
            return Ok(false);
        }
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) if e.kind() == ErrorKind::Unsupported => {
                return Ok(false);
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        if !Self::names(path, &file)? {
            return Ok(false);
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `path` still names the open `file` (same device and inode).
    fn names(path: &Path, file: &std::fs::File) -> std::io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(m) => Ok(m.dev() == held.dev() && m.ino() == held.ino()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// How long one listing of a folder's temp files serves the downloads into it.
const STALE_RESCAN: Duration = Duration::from_secs(30);

/// The folders listed for stale temp files lately, by folder.
static SCANS: std::sync::LazyLock<Mutex<std::collections::HashMap<PathBuf, Scan>>> =
    std::sync::LazyLock::new(Default::default);

/// One listing of a folder: its one-stream temp files by destination name.
struct Scan {
    at: Instant,
    parts: std::collections::HashMap<String, Vec<PathBuf>>,
}

impl Scan {
    fn of(dir: &Path) -> Scan {
        let mut parts = std::collections::HashMap::<String, Vec<PathBuf>>::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            if let Some(name) = PartialPaths::part_owner(&file) {
                parts
                    .entry(name.to_string())
                    .or_default()
                    .push(entry.path());
            }
        }
        Scan {
            at: Instant::now(),
            parts,
        }
    }
}

/// What a partial download has finished, for resuming it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Journal {
    url: String,
    etag: String,
    size: u64,
    part_size: u64,
    /// Finished parts: index → CRC32C of the part's bytes.
    parts: BTreeMap<u64, u32>,
}

impl Journal {
    fn load(path: &Path) -> Option<Journal> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write atomically (temp + rename) so a crash leaves the old or the new one.
    fn store(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

struct Shared {
    journal: Journal,
    last_flush: Instant,
    dirty: bool,
    /// The download was dropped mid-way and its files removed: write no journal.
    abandoned: bool,
}

/// Removes the partial file and journal when the download future is dropped
/// before it decided what to keep (e.g. the manager abandons a stopped
/// transfer that did not return in time).
struct Cleanup {
    paths: PartialPaths,
    shared: Arc<Mutex<Shared>>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shared).abandoned = true;
            self.paths.remove();
        }
    }
}

/// Fsync the data, then write the journal: an entry never claims bytes that a
/// power cut could still lose. Runs on the blocking pool without being polled,
/// so ranges keep streaming meanwhile.
fn start_flush(
    file: &Arc<std::fs::File>,
    shared: &Arc<Mutex<Shared>>,
    path: &Path,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let file = file.clone();
    let shared = shared.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // Snapshot first: every part listed is already written, so the fsync
        // that follows covers it.
        let journal = {
            let mut s = lock(&shared);
            s.dirty = false;
            s.last_flush = Instant::now();
            s.journal.clone()
        };
        file.sync_data()?;
        if lock(&shared).abandoned {
            return Ok(());
        }
        journal.store(&path)
    })
}

/// Wait for a flush; its failure only costs resumability, so it is logged.
async fn finish_flush(
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    target: &str,
) -> bool {
    let Some(h) = handle else { return true };
    match h.await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(url = %target, error = %e, "cannot write the resume journal");
            false
        }
        Err(e) => {
            tracing::debug!(url = %target, error = %e, "journal task failed");
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn part_spans(size: u64, part_size: u64) -> Vec<Range<u64>> {
    (0..size.div_ceil(part_size))
        .map(|i| i * part_size..((i + 1) * part_size).min(size))
        .collect()
}

async fn download_ranges<H: FileTransferHandler + ?Sized>(
    h: &H,
    key: &Key,
    dest: &Path,
    obj: RemoteObject,
    opts: &DownloadOptions,
    ctx: &TransferCtx,
    deliver: Option<Deliver>,
) -> Result<RemoteObject> {
    let target = h.url_for(key);
    let paths = PartialPaths::for_dest(dest);
    let part_size = opts.part_size_for(obj.size);
    let spans = part_spans(obj.size, part_size);
    let etag = obj.etag.clone().unwrap_or_default();

    // Reuse an earlier partial download only if it is of the same object
    // version, split the same way, and its data file is intact in size.
    let previous = if opts.resume && !etag.is_empty() {
        Journal::load(&paths.journal).filter(|j| {
            j.url == target
                && j.etag == etag
                && j.size == obj.size
                && j.part_size == part_size
                && std::fs::metadata(&paths.data).is_ok_and(|m| m.is_file() && m.len() == obj.size)
        })
    } else {
        None
    };
    let resumed = previous.is_some();
    let journal = previous.unwrap_or_else(|| Journal {
        url: target.clone(),
        etag: etag.clone(),
        size: obj.size,
        part_size,
        parts: BTreeMap::new(),
    });
    let data_s = paths.data.display().to_string();
    let file = {
        let data = paths.data.clone();
        let journal_path = paths.journal.clone();
        let size = obj.size;
        let data_s = data_s.clone();
        let dest_s = dest.display().to_string();
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&data)
                .map_err(|e| Error::from_io(&data_s, e))?;
            // The partial file is locked while this download writes it: a
            // second download to the same destination (another process, or
            // another URL) must neither reuse nor remove it, or one of the
            // two would rename the other's unfinished file into place.
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::backend(
                        dest_s,
                        "another download to this destination is running",
                        format!("{data_s} is locked by its writer"),
                    ));
                }
                // No locks on this filesystem: nothing to tell, go on.
                Err(std::fs::TryLockError::Error(e))
                    if e.kind() == std::io::ErrorKind::Unsupported => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::from_io(&data_s, e)),
            }
            if !resumed {
                let _ = std::fs::remove_file(&journal_path);
                f.set_len(0).map_err(|e| Error::from_io(&data_s, e))?;
            }
            f.set_len(size).map_err(|e| Error::from_io(&data_s, e))?;
            Ok::<_, Error>(f)
        })
        .await
        .map_err(|e| Error::backend(&target, "file task failed", e))??
    };
    let file = Arc::new(file);
    ctx.set_total(obj.size);
    let already: u64 = journal
        .parts
        .keys()
        .filter_map(|&i| spans.get(usize::try_from(i).ok()?))
        .map(|s| s.end - s.start)
        .sum();
    if resumed {
        tracing::debug!(url = %target, parts = journal.parts.len(), bytes = already, "resuming download");
    }
    ctx.add_progress(already);
    let pending: Vec<(u64, Range<u64>)> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64, s.clone()))
        .filter(|(i, _)| !journal.parts.contains_key(i))
        .collect();
    let shared = Arc::new(Mutex::new(Shared {
        journal,
        last_flush: Instant::now(),
        dirty: false,
        abandoned: false,
    }));
    let mut cleanup = Cleanup {
        paths: paths.clone(),
        shared: shared.clone(),
        armed: true,
    };

    let mut flusher = None;
    let run = async {
        let mut parts = futures::stream::iter(pending.into_iter().map(|(i, span)| {
            let file = file.clone();
            let target = target.as_str();
            let obj = &obj;
            async move {
                let crc = fetch_range(h, key, target, obj, span, file, ctx).await?;
                Ok::<_, Error>((i, crc))
            }
        }))
        .buffer_unordered(opts.concurrency.max(1));
        while let Some(done) = parts.next().await {
            let (i, crc) = done?;
            let due = {
                let mut s = lock(&shared);
                s.journal.parts.insert(i, crc);
                s.dirty = true;
                opts.resume && s.last_flush.elapsed() >= JOURNAL_INTERVAL
            };
            if due
                && flusher
                    .as_ref()
                    .is_none_or(|f: &tokio::task::JoinHandle<_>| f.is_finished())
            {
                finish_flush(flusher.take(), &target).await;
                flusher = Some(start_flush(&file, &shared, &paths.journal));
            }
        }
        Ok::<_, Error>(())
    };
    let outcome = run.await;
    // No journal write may still be running when the files are removed or renamed.
    finish_flush(flusher.take(), &target).await;
    if let Err(e) = outcome {
        // A transient failure or a pause keeps what is done for the next attempt; a stop,
        // or an error that a retry cannot fix, leaves nothing behind.
        let keep = opts.resume
            && !etag.is_empty()
            && (ctx.is_paused()
                || matches!(e.kind(), ErrorKind::Transient | ErrorKind::RetriesExhausted));
        if keep && lock(&shared).dirty {
            let last = start_flush(&file, &shared, &paths.journal);
            if !finish_flush(Some(last), &target).await {
                paths.remove();
            }
        } else if !keep || !paths.journal.exists() {
            paths.remove();
        }
        cleanup.armed = false;
        return Err(e);
    }

    let fail = |e: Error| {
        paths.remove();
        Err(e)
    };
    // The object must not have changed while its parts were read.
    let after = match ctx
        .retry(&format!("{target} stat"), |_| {
            ctx.cancellable(&target, h.stat(key))
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if after.size != obj.size || after.etag != obj.etag {
        return fail(changed(&target, &obj, &after));
    }
    // A ranged answer carries no whole-object checksum on S3; the stat
    // that proved the object unchanged does.
    if opts.verify_checksum
        && let Some(want @ Checksum::Crc32c(_)) =
            Checksum::parse(&obj).or_else(|| Checksum::parse(&after))
    {
        let s = lock(&shared);
        let mut crc = 0u32;
        for (i, span) in spans.iter().enumerate() {
            let part = s.journal.parts.get(&(i as u64)).copied().unwrap_or(0);
            let len = usize::try_from(span.end - span.start).unwrap_or(usize::MAX);
            crc = crc32c::crc32c_combine(crc, part, len);
        }
        drop(s);
        let got = Checksum::Crc32c(crc);
        if got != want {
            return fail(mismatch(&target, &want, got));
        }
    }
    if let Err(e) = h.check_ranged_download(key, &file).await {
        return fail(e);
    }
    if let Err(e) = ctx.check(&target) {
        return fail(e);
    }
    let done = {
        let file = file.clone();
        let data = paths.data.clone();
        let dest = dest.to_path_buf();
        let synced = tokio::task::spawn_blocking(move || {
            file.sync_all()
                .map_err(|e| Error::from_io(data.display().to_string(), e))?;
            drop(file);
            match deliver {
                None => std::fs::rename(&data, &dest)
                    .map_err(|e| Error::from_io(dest.display().to_string(), e))
                    .map(|()| None),
                Some(d) => Ok(Some(d)),
            }
        })
        .await
        .map_err(|e| Error::backend(&target, "file task failed", e))
        .and_then(|r| r);
        match synced {
            Ok(Some(d)) => run_deliver(d, paths.data.clone(), &target).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = done {
        return fail(e);
    }
    cleanup.armed = false;
    let _ = std::fs::remove_file(&paths.journal);
    Ok(obj)
}

fn changed(target: &str, before: &RemoteObject, after: &RemoteObject) -> Error {
    Error::PreconditionFailed {
        target: target.to_string(),
        source: Some(
            format!(
                "the object changed during the download (etag {:?} size {} became etag {:?} size {})",
                before.etag, before.size, after.etag, after.size
            )
            .into(),
        ),
    }
}

/// Bytes of one range written so far (contiguous from its start) and their CRC32C.
#[derive(Debug, Default, Clone, Copy)]
struct RangeProgress {
    written: u64,
    crc: u32,
}

/// Fetch `span` of the object into `file` at the same offsets, retrying on
/// its own; a retry continues after the bytes already written. Returns the
/// CRC32C of the span.
async fn fetch_range<H: FileTransferHandler + ?Sized>(
    h: &H,
    key: &Key,
    target: &str,
    expect: &RemoteObject,
    span: Range<u64>,
    file: Arc<std::fs::File>,
    ctx: &TransferCtx,
) -> Result<u32> {
    let progress = Mutex::new(RangeProgress::default());
    let what = format!(
        "{target} bytes={}-{}",
        span.start,
        span.end.saturating_sub(1)
    );
    ctx.retry(&what, |_| {
        fetch_range_once(h, key, target, expect, span.clone(), &file, ctx, &progress)
    })
    .await?;
    let p = *lock(&progress);
    Ok(p.crc)
}

#[allow(clippy::too_many_arguments)]
async fn fetch_range_once<H: FileTransferHandler + ?Sized>(
    h: &H,
    key: &Key,
    target: &str,
    expect: &RemoteObject,
    span: Range<u64>,
    file: &Arc<std::fs::File>,
    ctx: &TransferCtx,
    progress: &Mutex<RangeProgress>,
) -> Result<()> {
    let start = span.start + lock(progress).written;
    if start >= span.end {
        return Ok(());
    }
    let range = ByteRange::Bounded {
        start,
        end: span.end,
    };
    let (got, mut stream) = ctx
        .cancellable(target, h.download_stream(key, Some(range)))
        .await?;
    if got.size != expect.size
        || (got.etag.is_some() && expect.etag.is_some() && got.etag != expect.etag)
    {
        return Err(changed(target, expect, &got));
    }
    let mut buf = Vec::with_capacity(RANGE_WRITE_BUFFER);
    let mut pos = start;
    loop {
        let next = ctx
            .cancellable(target, async { Ok(stream.next().await) })
            .await?;
        let last = match next {
            Some(chunk) => {
                let chunk = chunk?;
                if pos + (buf.len() + chunk.len()) as u64 > span.end {
                    return Err(Error::backend(
                        target,
                        format!("the store sent more than the {range} asked for"),
                        "range response too long",
                    ));
                }
                ctx.throttle(target, chunk.len() as u64).await?;
                buf.extend_from_slice(&chunk);
                false
            }
            None => true,
        };
        if buf.len() >= RANGE_WRITE_BUFFER || (last && !buf.is_empty()) {
            let n = buf.len() as u64;
            let crc = lock(progress).crc;
            let f = file.clone();
            let (b, crc) = tokio::task::spawn_blocking(move || {
                f.write_all_at(&buf, pos)?;
                let crc = crc32c::crc32c_append(crc, &buf);
                buf.clear();
                Ok::<_, std::io::Error>((buf, crc))
            })
            .await
            .map_err(|e| Error::backend(target, "write task failed", e))?
            .map_err(|e| Error::from_io(target, e))?;
            buf = b;
            pos += n;
            {
                let mut p = lock(progress);
                p.written += n;
                p.crc = crc;
            }
            ctx.add_progress(n);
        }
        if last {
            break;
        }
    }
    if pos != span.end {
        return Err(Error::Transient {
            target: target.to_string(),
            retry_after: None,
            source: Some(
                format!(
                    "range {range} ended after {} of {} bytes",
                    pos - start,
                    span.end - start
                )
                .into(),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_objects_get_bigger_parts_unless_a_size_was_asked_for() {
        let auto = DownloadOptions::default();
        assert_eq!(auto.part_size_for(100 * MIB), DEFAULT_DOWNLOAD_PART_SIZE);
        assert_eq!(auto.part_size_for(256 * MIB), DEFAULT_DOWNLOAD_PART_SIZE);
        assert_eq!(auto.part_size_for(512 * MIB), 32 * MIB);
        assert_eq!(auto.part_size_for(1024 * MIB), 64 * MIB);
        assert_eq!(
            auto.part_size_for(10 * 1024 * MIB),
            MAX_AUTO_DOWNLOAD_PART_SIZE
        );
        let fixed = DownloadOptions::default().with_part_size(8 * MIB);
        assert!(!fixed.auto_part_size);
        assert_eq!(fixed.part_size_for(1024 * MIB), 8 * MIB);
        // A floor above the cap wins over it.
        let big = DownloadOptions::default()
            .with_part_size(128 * MIB)
            .with_auto_part_size(true);
        assert_eq!(big.part_size_for(1024 * MIB), 128 * MIB);
        assert_eq!(big.part_size_for(100 * 1024 * MIB), 128 * MIB);
    }

    #[test]
    fn parts_cover_the_object_exactly() {
        assert_eq!(part_spans(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(part_spans(8, 4), vec![0..4, 4..8]);
        assert!(part_spans(0, 4).is_empty());
    }

    #[test]
    fn checksums_parse_and_combine() {
        let mut o = RemoteObject::new("u", "k", 3);
        o.checksum = Some("crc32c:E3069283".into());
        assert_eq!(Checksum::parse(&o), Some(Checksum::Crc32c(0xe306_9283)));
        o.checksum = Some("md5:abcd".into());
        assert_eq!(Checksum::parse(&o), None);
        let data = b"123456789";
        assert_eq!(crc32c::crc32c(data), 0xe306_9283);
        let combined =
            crc32c::crc32c_combine(crc32c::crc32c(&data[..4]), crc32c::crc32c(&data[4..]), 5);
        assert_eq!(combined, 0xe306_9283);
    }

    #[test]
    fn only_the_destinations_own_part_files_are_its_leftovers() {
        let of = PartialPaths::is_part_of;
        assert!(of(".x.bin.aB3dE9.xferkit-part", "x.bin"));
        assert!(!of(".x.bin.gz.aB3dE9.xferkit-part", "x.bin"));
        assert!(!of(".x.bin.aB3dE.xferkit-part", "x.bin"));
        assert!(!of(".x.bin.aB3-E9.xferkit-part", "x.bin"));
        assert!(!of(".x.bin.xferkit-partial", "x.bin"));
        assert!(!of("x.bin.aB3dE9.xferkit-part", "x.bin"));
    }

    #[test]
    fn one_listing_serves_every_destination_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let stale = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"left by a dead process").unwrap();
            p
        };
        let a1 = stale(".a.bin.AAAAA1.xferkit-part");
        let a2 = stale(".a.bin.AAAAA2.xferkit-part");
        let b1 = stale(".b.bin.BBBBB1.xferkit-part");
        let other = stale(".a.bin.gz.CCCCC1.xferkit-part");
        let live = dir.path().join(".a.bin.LiVe01.xferkit-part");
        let held = std::fs::File::create(&live).unwrap();
        held.lock().unwrap();
        assert_eq!(
            PartialPaths::remove_stale_parts(&dir.path().join("a.bin")),
            2
        );
        assert!(!a1.exists() && !a2.exists());
        assert!(b1.exists() && other.exists() && live.exists());
        assert_eq!(
            PartialPaths::remove_stale_parts(&dir.path().join("b.bin")),
            1
        );
        assert!(!b1.exists() && other.exists() && live.exists());
        // Listed already: a second download to `a.bin` does not list again.
        assert_eq!(
            PartialPaths::remove_stale_parts(&dir.path().join("a.bin")),
            0
        );
        assert!(live.exists());
    }

    #[test]
    fn partial_names_sit_next_to_the_destination() {
        let p = PartialPaths::for_dest(Path::new("/d/x.bin"));
        assert_eq!(p.data, Path::new("/d/.x.bin.xferkit-partial"));
        assert_eq!(p.journal, Path::new("/d/.x.bin.xferkit-partial.json"));
    }
}
