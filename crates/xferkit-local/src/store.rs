use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::signed::UrlSigner;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use xferkit_core::url::{ObjectUrl, file_url};
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, Error, FileTransferHandler, Key, PendingUpload,
    PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx, UploadSource,
    async_trait,
};

use crate::tmp::{self, Sweep, Temp};
use crate::{LocalConfig, ServeSettings};

/// Name of the reserved directory under the root.
const RESERVED: &str = ".xferkit";
/// Where sidecars live under [`RESERVED`]: `meta2/HH/SHA256(KEY).json`, a
/// name no key can produce or collide with (see [`LocalStore::sidecar_path`]).
const META: &str = "meta2";
/// Where earlier versions kept sidecars: `meta/KEY.json`, which collided
/// (key `K.json/x` needs a directory where the sidecar of `K` is a file).
/// Still read; replaced by a [`META`] sidecar at the next write of the key.
const LEGACY_META: &str = "meta";
/// Longest file name most filesystems take (ext4, xfs, btrfs, APFS, NTFS).
const MAX_SEGMENT_BYTES: usize = 255;
const CHUNK: usize = 1 << 20;
/// Bytes per kernel copy call: big enough that the per-call cost vanishes,
/// small enough for progress and a prompt stop.
const COPY_STEP: u64 = 64 << 20;
/// How often, at most, a long-lived store looks again for stale temp files
/// when it uploads (a new process looks at its first upload).
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    name: String,
    root: PathBuf,
    root_str: String,
    /// `serve_url` and its signer, when the store is served (`xfer serve`).
    serve: Option<(String, UrlSigner)>,
    /// When this store last removed the stale temp files of dead uploads
    /// (see [`crate::tmp`]); `None` until its first upload.
    swept: Arc<Mutex<Option<Instant>>>,
    /// `max_upload_size`.
    max_upload: Option<u64>,
    /// The `serve_*` keys, for `xfer serve`.
    serve_settings: ServeSettings,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Sidecar {
    /// The key this sidecar describes (written since sidecars are named by
    /// the key's hash; checked when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    content_type: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// CRC32C of the content, 8 hex digits (written since the copy got a
    /// CRC32C instead of a SHA-256: the SHA-256 was the copy's bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc32c: Option<String>,
    /// SHA-256 of the content, hex: sidecars written before that still
    /// carry it and are still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    size: u64,
    mtime_ns: u128,
}

fn mtime_ns(m: &std::fs::Metadata) -> u128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The result of a background fdatasync of the copy.
async fn flushed(f: tokio::task::JoinHandle<std::io::Result<()>>, url: &str) -> Result<()> {
    f.await
        .map_err(|e| Error::backend(url, "worker task failed", e))?
        .map_err(|e| Error::from_io(url, e))
}

/// Remove directories `make_parents` created, deepest first; one that is
/// not empty (another upload uses it now) stays.
fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

impl LocalStore {
    /// Open (creating if needed) the store rooted at `config.root`.
    /// Configuration errors name the key relative to the store's table
    /// (`root = "…" cannot be created`).
    pub async fn new(name: &str, config: LocalConfig) -> Result<Self> {
        let root = config
            .root
            .ok_or_else(|| Error::invalid_config("root is missing"))?;
        let shown = root.display().to_string();
        if shown.is_empty() {
            return Err(Error::invalid_config("root is empty"));
        }
        tokio::fs::create_dir_all(root.join(RESERVED).join("tmp"))
            .await
            .map_err(|e| Error::InvalidConfig {
                message: format!("root = {shown:?} cannot be created"),
                source: Some(e.into()),
            })?;
        let root = tokio::fs::canonicalize(&root)
            .await
            .map_err(|e| Error::from_io(&shown, e))?;
        let root_str = root
            .to_str()
            .ok_or_else(|| Error::invalid_config(format!("root = {shown:?} is not valid UTF-8")))?
            .trim_end_matches('/')
            .to_string();
        let serve = match (config.serve_url, config.signing_key) {
            (None, None) => None,
            (Some(base), Some(key)) => {
                let parsed = url::Url::parse(&base).map_err(|e| {
                    Error::invalid_config(format!("serve_url = {base:?} is not a URL: {e}"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https")
                    || parsed.query().is_some()
                    || parsed.fragment().is_some()
                {
                    return Err(Error::invalid_config(format!(
                        "serve_url = {base:?} must be an http(s) URL without query or fragment"
                    )));
                }
                let signer = UrlSigner::new(key, "signing_key")?;
                Some((base.trim_end_matches('/').to_string(), signer))
            }
            (Some(_), None) => {
                return Err(Error::invalid_config(format!(
                    "serve_url is set but signing_key is missing \
                     (set XFERKIT_STORES__{}__SIGNING_KEY)",
                    name.to_uppercase()
                )));
            }
            (None, Some(_)) => {
                return Err(Error::invalid_config(
                    "signing_key is set but serve_url is missing",
                ));
            }
        };
        if config.serve_max_connections == Some(0) {
            return Err(Error::invalid_config(
                "serve_max_connections must be at least 1",
            ));
        }
        let mut inline_types = Vec::new();
        for t in &config.serve_inline_types {
            let t = t.trim().to_ascii_lowercase();
            if t.is_empty() || t.contains(';') || t.split('/').count() != 2 {
                return Err(Error::invalid_config(format!(
                    "serve_inline_types: {t:?} is not a content type \
                     such as \"application/pdf\" (no parameters)"
                )));
            }
            inline_types.push(t);
        }
        let defaults = ServeSettings::default();
        let serve_settings = ServeSettings {
            header_timeout: config
                .serve_header_timeout
                .unwrap_or(defaults.header_timeout),
            idle_timeout: config.serve_idle_timeout.unwrap_or(defaults.idle_timeout),
            max_connections: config
                .serve_max_connections
                .unwrap_or(defaults.max_connections),
            inline_types,
            max_upload_size: config.max_upload_size,
        };
        Ok(LocalStore {
            name: name.to_string(),
            root,
            root_str,
            serve,
            swept: Arc::default(),
            max_upload: config.max_upload_size,
            serve_settings,
        })
    }

    /// A signed PUT URL for `key` (as `presign` makes) whose body may be at
    /// most `max_size` bytes: the limit is part of the signature, and
    /// `xfer serve` answers a larger body `413` however often the URL is
    /// used.
    pub fn presign_put_with_limit(
        &self,
        key: &Key,
        expires_in: Duration,
        max_size: u64,
    ) -> Result<PresignedUrl> {
        self.path_for(key)?;
        match &self.serve {
            Some((base, signer)) => {
                signer.sign_with_limit(base, PresignMethod::Put, key, expires_in, Some(max_size))
            }
            None => Err(Error::not_supported(
                &self.name,
                format!(
                    "presign (set stores.{0}.serve_url and stores.{0}.signing_key, then run `xfer serve`)",
                    self.name
                ),
            )),
        }
    }

    /// The `serve_*` keys and `max_upload_size`, defaults applied: how
    /// `xfer serve` should run in front of this store.
    pub fn serve_settings(&self) -> &ServeSettings {
        &self.serve_settings
    }

    /// Refuse an upload of `size` bytes (so far, or announced) if it is
    /// over `max_upload_size`.
    fn check_size(&self, url: &str, size: u64) -> Result<()> {
        match self.max_upload {
            Some(max) if size > max => Err(Error::refused(
                url,
                format!(
                    "larger than stores.{}.max_upload_size ({max} bytes)",
                    self.name
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The `serve_url` and signer, when configured: what `xfer serve` needs
    /// to check the URLs this store's `presign` hands out.
    pub fn serve_config(&self) -> Option<(&str, &UrlSigner)> {
        self.serve.as_ref().map(|(b, s)| (b.as_str(), s))
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn url(&self, key: &str) -> String {
        file_url(&format!("{}/{key}", self.root_str))
    }

    /// Map `key` to a path under the root, refusing what this store refuses
    /// beyond the portable key rules: the reserved `.xferkit/`, over-long
    /// segments and any path that goes through a symlink.
    fn path_for(&self, key: &Key) -> Result<PathBuf> {
        if key == RESERVED || key.starts_with(&format!("{RESERVED}/")) {
            return Err(Error::invalid_key(
                key,
                "'.xferkit/' is reserved for the store's own files",
            ));
        }
        if key.split('/').any(|seg| seg.len() > MAX_SEGMENT_BYTES) {
            return Err(Error::invalid_key(
                key,
                format!("a path segment is longer than {MAX_SEGMENT_BYTES} bytes"),
            ));
        }
        let mut p = self.root.clone();
        let mut exists = true;
        for seg in key.split('/') {
            p.push(seg);
            if !exists {
                continue; // below a missing directory: nothing to follow
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::invalid_key(key, "path goes through a symlink"));
                }
                Ok(_) => {}
                Err(_) => exists = false,
            }
        }
        Ok(p)
    }

    /// The sidecar of `key`: `ROOT/.xferkit/meta2/HH/HEX.json`, `HEX` the
    /// SHA-256 of the key and `HH` its first two digits. Sidecars are never
    /// in the key namespace, and every key's is one file in a flat
    /// directory, so no key's sidecar can be a directory another one needs.
    pub fn sidecar_path(&self, key: &str) -> PathBuf {
        Self::sidecar_path_under(&self.root, key)
    }

    /// [`LocalStore::sidecar_path`] for a store rooted at `root`.
    pub fn sidecar_path_under(root: &Path, key: &str) -> PathBuf {
        use sha2::Digest;
        let hex = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        root.join(RESERVED)
            .join(META)
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    /// Where earlier versions kept the sidecar of `key`.
    fn legacy_sidecar_path(&self, key: &str) -> PathBuf {
        self.root
            .join(RESERVED)
            .join(LEGACY_META)
            .join(format!("{key}.json"))
    }

    /// The sidecar of `key`: the hashed one, else one an earlier version wrote.
    fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        let read = |p: PathBuf| -> Option<Sidecar> {
            let m = std::fs::symlink_metadata(&p).ok()?;
            if !m.is_file() {
                return None;
            }
            serde_json::from_slice(&std::fs::read(p).ok()?).ok()
        };
        match read(self.sidecar_path(key)) {
            Some(s) if s.key.as_deref() == Some(key) => Some(s),
            Some(_) => None,
            None => read(self.legacy_sidecar_path(key)),
        }
    }

    fn record(&self, key: &str, m: &std::fs::Metadata) -> RemoteObject {
        let side = self.read_sidecar(key);
        let mut obj = RemoteObject::new(self.url(key), key, m.len());
        obj.last_modified = m.modified().ok();
        let fresh = side
            .as_ref()
            .is_some_and(|s| s.size == m.len() && s.mtime_ns == mtime_ns(m));
        match side {
            Some(s) if fresh => {
                if let Some(c) = s.crc32c {
                    // Content, size and write time: a new upload of the
                    // same bytes is a new version to a cache.
                    obj.etag = Some(format!("{c}-{:x}-{:x}", mtime_ns(m), m.len()));
                    obj.checksum = Some(format!("crc32c:{c}"));
                } else {
                    obj.etag = s.sha256.as_ref().map(|h| h[..32.min(h.len())].to_string());
                    obj.checksum = s.sha256.map(|h| format!("sha256:{h}"));
                }
                obj.content_type = s.content_type;
                obj.metadata = s.metadata;
            }
            _ => {
                // Written by something else: derive what we can.
                obj.etag = Some(format!("{:x}-{:x}", mtime_ns(m), m.len()));
                obj.content_type = Some(PutOptions::default().content_type_for(key));
            }
        }
        obj
    }

    fn stat_sync(&self, key: &Key) -> Result<RemoteObject> {
        let path = self.path_for(key)?;
        let m = std::fs::metadata(&path).map_err(|e| Error::from_io(self.url(key), e))?;
        if !m.is_file() {
            return Err(Error::not_found(self.url(key)));
        }
        Ok(self.record(key, &m))
    }

    /// Create parent directories of `path` (below the root), refusing
    /// symlinks. Returns the directories it created, deepest last, so that
    /// a write that fails afterwards can take them away again.
    fn make_parents(&self, key: &Key, path: &Path) -> Result<Vec<PathBuf>> {
        let mut created = Vec::new();
        if let Some(parent) = path.parent() {
            let mut missing = parent;
            while missing != self.root && std::fs::symlink_metadata(missing).is_err() {
                created.push(missing.to_path_buf());
                match missing.parent() {
                    Some(p) => missing = p,
                    None => break,
                }
            }
            created.reverse();
            if let Err(e) = std::fs::create_dir_all(parent) {
                remove_dirs(&created);
                // A parent name that is an object: `a` stored, `a/b` asked.
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotADirectory | std::io::ErrorKind::AlreadyExists
                ) {
                    return Err(Error::invalid_key(
                        key,
                        "a parent of this key is an object: a key cannot be both",
                    ));
                }
                return Err(Error::from_io(self.url(key), e));
            }
        }
        // Re-check after creation: a concurrent writer could have raced a symlink in.
        if let Err(e) = self.path_for(key) {
            remove_dirs(&created);
            return Err(e);
        }
        Ok(created)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join(RESERVED).join("tmp")
    }

    /// A new temp file, locked while this process writes it (the rule in
    /// [`crate::tmp`]).
    fn new_temp(&self) -> Result<Temp> {
        Temp::new(&self.tmp_dir(), "up.").map_err(|e| Error::from_io(self.root_str.clone(), e))
    }

    /// Remove the temp files that uploads of dead processes left, at the
    /// first upload of this store and then at most every [`SWEEP_INTERVAL`].
    fn sweep_if_due(&self) {
        {
            let mut last = self.swept.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < SWEEP_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let n = tmp::sweep(&self.tmp_dir());
        if n > 0 {
            tracing::info!(store = %self.name, removed = n, "removed temp files of uploads whose process died");
        }
    }

    /// The path of a pending upload's temp file, from its key
    /// (`.xferkit/tmp/NAME`, as `list_pending_uploads` makes it).
    fn pending_path(&self, key: &str) -> Result<PathBuf> {
        let name = key
            .strip_prefix(RESERVED)
            .and_then(|k| k.strip_prefix("/tmp/"))
            .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
            .ok_or_else(|| {
                Error::invalid_key(key, "not a temp file of this store (.xferkit/tmp/NAME)")
            })?;
        Ok(self.tmp_dir().join(name))
    }

    /// Move a complete temp file into place and write its sidecar. A
    /// failure leaves the store as it was: every step that can fail for a
    /// reason of the key's runs before the object is renamed into place, and
    /// the parent directories made for it are removed again.
    fn commit(&self, key: &Key, tmp: Temp, crc: u32, opts: &PutOptions) -> Result<RemoteObject> {
        let path = self.path_for(key)?;
        let created = self.make_parents(key, &path)?;
        let placed = self.place(key, &path, tmp, crc, opts);
        if placed.is_err() {
            remove_dirs(&created);
        }
        placed?;
        self.stat_sync(key)
    }

    fn place(&self, key: &str, path: &Path, tmp: Temp, crc: u32, opts: &PutOptions) -> Result<()> {
        let url = self.url(key);
        if path.is_dir() {
            return Err(Error::invalid_key(
                key,
                "other keys are stored under this name as a prefix: a key cannot be both",
            ));
        }
        let m = tmp
            .file
            .as_file()
            .metadata()
            .map_err(|e| Error::from_io(&url, e))?;
        let side = Sidecar {
            key: Some(key.to_string()),
            content_type: Some(opts.content_type_for(key)),
            metadata: opts.metadata.clone(),
            crc32c: Some(format!("{crc:08x}")),
            sha256: None,
            size: m.len(),
            mtime_ns: mtime_ns(&m),
        };
        let side_path = self.sidecar_path(key);
        if let Some(p) = side_path.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::from_io(&url, e))?;
        }
        let json = serde_json::to_vec(&side).map_err(|e| Error::backend(&url, "sidecar", e))?;
        // The sidecar stays private (0600); the object gets the umask's mode.
        let mut side_tmp = self.new_temp()?;
        side_tmp
            .file
            .write_all(&json)
            .map_err(|e| Error::from_io(&url, e))?;
        tmp.publish().map_err(|e| Error::from_io(&url, e))?;
        if opts.if_not_exists {
            // A hard link fails atomically if the name is taken.
            std::fs::hard_link(tmp.file.path(), path).map_err(|e| Error::from_io(&url, e))?;
            drop(tmp);
        } else {
            tmp.file
                .persist(path)
                .map_err(|e| Error::from_io(&url, e.error))?;
        }
        // A rename of a file over a file in one directory of our own: no key
        // can make it fail. Should the disk fail it, a create-only write is
        // undone; an overwrite has replaced the old bytes already and stands
        // with a stale sidecar (read as a foreign file: no checksum).
        if let Err(e) = side_tmp.file.persist(&side_path) {
            if opts.if_not_exists {
                let _ = std::fs::remove_file(path);
            }
            return Err(Error::from_io(&url, e.error));
        }
        // The earlier version's sidecar of this key, if any, is superseded.
        let legacy = self.legacy_sidecar_path(key);
        if std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(legacy);
        }
        Ok(())
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<RemoteObject>> {
        // Start from the deepest existing directory the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut start = self.root.clone();
        if !dir_part.is_empty() {
            if Key::new(dir_part).is_err() {
                return Ok(Vec::new());
            }
            start.push(dir_part);
        }
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(Error::from_io(dir.display().to_string(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::from_io(dir.display().to_string(), e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue; // not a valid key: invisible to the store
                };
                let key = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if key == RESERVED {
                    continue;
                }
                let ft = entry.file_type().map_err(|e| Error::from_io(&key, e))?;
                if ft.is_dir() {
                    if prefix.starts_with(&format!("{key}/"))
                        || key.starts_with(prefix)
                        || prefix.starts_with(&key)
                    {
                        stack.push((entry.path(), key));
                    }
                } else if ft.is_file() && key.starts_with(prefix) && Key::new(&key).is_ok() {
                    let m = entry.metadata().map_err(|e| Error::from_io(&key, e))?;
                    out.push(self.record(&key, &m));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Copy the file `src` into `file` (a fresh temp file) with the kernel's
    /// copy (`copy_file_range` through `std::io::copy`: no bytes through user
    /// space, and a reflink where the filesystem does that for it), in
    /// [`COPY_STEP`] steps for progress and cancellation, then fsync. The
    /// CRC32C for the sidecar is computed at the same time by a second
    /// reader (from the page cache), so the copy does not wait for it.
    /// Returns the CRC32C. Fails if the source changed meanwhile.
    async fn copy_path(
        &self,
        src: &Path,
        file: &std::fs::File,
        url: &str,
        ctx: &TransferCtx,
    ) -> Result<u32> {
        let src_s = src.display().to_string();
        let input = std::fs::File::open(src).map_err(|e| Error::from_io(&src_s, e))?;
        let before = input.metadata().map_err(|e| Error::from_io(&src_s, e))?;
        let hash_input = std::fs::File::open(src).map_err(|e| Error::from_io(&src_s, e))?;
        let stop = ctx.token().clone();
        let hasher = tokio::task::spawn_blocking(move || {
            let mut input = hash_input;
            let mut crc = 0u32;
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                if stop.is_cancelled() {
                    return Ok(None);
                }
                let n = input.read(&mut buf)?;
                if n == 0 {
                    return Ok(Some((crc, total)));
                }
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                total += n as u64;
            }
        });
        let mut out = file.try_clone().map_err(|e| Error::from_io(url, e))?;
        let mut input = input;
        let mut copied = 0u64;
        // Write-back runs beside the copy: after each step, unless one is
        // still running, an fdatasync of what is copied so far starts on the
        // blocking pool, so the final fsync has only the last steps left
        // (the disk works while the kernel copies, not after).
        let mut flushing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        loop {
            // A stop drops a running flush (it ends on its own; the temp
            // file goes with the caller's handle).
            ctx.check(url)?;
            let step = before.len().saturating_sub(copied).min(COPY_STEP);
            ctx.throttle(url, step).await?;
            let (n, i, o) = tokio::task::spawn_blocking(move || {
                let n = std::io::copy(&mut (&input).take(COPY_STEP), &mut out)?;
                Ok::<_, std::io::Error>((n, input, out))
            })
            .await
            .map_err(|e| Error::backend(url, "worker task failed", e))?
            .map_err(|e| Error::from_io(&src_s, e))?;
            (input, out) = (i, o);
            if n == 0 {
                break;
            }
            copied += n;
            ctx.add_progress(n);
            if flushing.as_ref().is_none_or(|f| f.is_finished()) {
                if let Some(f) = flushing.take() {
                    flushed(f, url).await?;
                }
                let handle = out.try_clone().map_err(|e| Error::from_io(url, e))?;
                flushing = Some(tokio::task::spawn_blocking(move || handle.sync_data()));
            }
        }
        if let Some(f) = flushing.take() {
            flushed(f, url).await?;
        }
        let synced = tokio::task::spawn_blocking(move || out.sync_all())
            .await
            .map_err(|e| Error::backend(url, "worker task failed", e))?;
        synced.map_err(|e| Error::from_io(url, e))?;
        let hashed = hasher
            .await
            .map_err(|e| Error::backend(url, "hash task failed", e))?
            .map_err(|e| Error::from_io(&src_s, e))?;
        ctx.check(url)?;
        let after = std::fs::metadata(src).map_err(|e| Error::from_io(&src_s, e))?;
        match hashed {
            Some((crc, total))
                if total == copied
                    && after.len() == before.len()
                    && after.modified().ok() == before.modified().ok() =>
            {
                Ok(crc)
            }
            Some(_) => Err(Error::backend(
                &src_s,
                "the file changed while it was being uploaded",
                "size or modification time changed",
            )),
            None => Err(Error::cancelled(url)),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| Error::backend("local store", "worker task failed", e))?
    }
}

#[async_trait]
impl FileTransferHandler for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.range = true;
        c.conditional_create = true;
        c.copy = true;
        c.metadata = true;
        // The temp files of uploads whose process died (see `crate::tmp`).
        c.list_pending_uploads = true;
        if self.serve.is_some() {
            c.presign_get = true;
            c.presign_put = true;
            c.presign_verified = true;
        }
        c
    }

    fn schemes(&self) -> &[&str] {
        &[crate::SCHEME]
    }
    fn url_for(&self, key: &Key) -> String {
        self.url(key)
    }

    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        if url.scheme != crate::SCHEME {
            return None;
        }
        let key = url.path.strip_prefix(&self.root_str)?.strip_prefix('/')?;
        Key::new(key).ok()
    }

    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let url = self.url(key);
        self.path_for(key)?;
        // No headers, storage class, encryption or tags here: refused by name.
        opts.check_server_options(self.name(), &url, &self.capabilities())?;
        self.blocking(|s| {
            s.sweep_if_due();
            Ok(())
        })
        .await?;
        let tmp = self.new_temp()?;
        let mut file = tmp
            .file
            .as_file()
            .try_clone()
            .map_err(|e| Error::from_io(&url, e))?;
        let mut crc = 0u32;
        match source {
            UploadSource::Path(src) => {
                if self.max_upload.is_some() {
                    let len = std::fs::metadata(&src)
                        .map_err(|e| Error::from_io(src.display().to_string(), e))?
                        .len();
                    self.check_size(&url, len)?;
                }
                let crc = self.copy_path(&src, &file, &url, ctx).await?;
                ctx.check(&url)?;
                let key = key.clone();
                let opts = opts.clone();
                return self
                    .blocking(move |s| s.commit(&key, tmp, crc, &opts))
                    .await;
            }
            UploadSource::Stream { mut stream, size } => {
                if let Some(size) = size {
                    self.check_size(&url, size)?;
                }
                let mut total = 0u64;
                while let Some(chunk) = ctx
                    .cancellable(&url, async { Ok(stream.next().await) })
                    .await?
                {
                    let chunk = chunk?;
                    total += chunk.len() as u64;
                    self.check_size(&url, total)?;
                    ctx.throttle(&url, chunk.len() as u64).await?;
                    file.write_all(&chunk)
                        .map_err(|e| Error::from_io(&url, e))?;
                    crc = crc32c::crc32c_append(crc, &chunk);
                    ctx.add_progress(chunk.len() as u64);
                }
                file.sync_all().map_err(|e| Error::from_io(&url, e))?;
            }
        }
        ctx.check(&url)?;
        let key = key.clone();
        let opts = opts.clone();
        self.blocking(move |s| s.commit(&key, tmp, crc, &opts))
            .await
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let url = self.url(key);
        let path = self.path_for(key)?;
        let key_owned = key.to_string();
        let (obj, mut file) = self
            .blocking(move |s| {
                let file =
                    std::fs::File::open(&path).map_err(|e| Error::from_io(s.url(&key_owned), e))?;
                let m = file
                    .metadata()
                    .map_err(|e| Error::from_io(s.url(&key_owned), e))?;
                if !m.is_file() {
                    return Err(Error::not_found(s.url(&key_owned)));
                }
                Ok((s.record(&key_owned, &m), file))
            })
            .await?;
        let span = match range {
            Some(r) => r.resolve(obj.size, &url)?,
            None => 0..obj.size,
        };
        file.seek(SeekFrom::Start(span.start))
            .map_err(|e| Error::from_io(&url, e))?;
        let reader = tokio::fs::File::from_std(file);
        use tokio::io::AsyncReadExt;
        let limited = reader.take(span.end - span.start);
        let stream = tokio_util::io::ReaderStream::with_capacity(limited, 256 * 1024)
            .map(move |r: std::io::Result<Bytes>| r.map_err(|e| Error::from_io(&url, e)));
        Ok((obj, Box::pin(stream)))
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        let key = key.clone();
        self.blocking(move |s| s.stat_sync(&key)).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let me = self.clone();
        let prefix = prefix.to_string();
        futures::stream::once(async move { me.blocking(move |s| s.list_sync(&prefix)).await })
            .flat_map(|r| match r {
                Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path_for(key)?;
        let key = key.to_string();
        self.blocking(move |s| {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::from_io(s.url(&key), e)),
            }
            let _ = std::fs::remove_file(s.sidecar_path(&key));
            let legacy = s.legacy_sidecar_path(&key);
            if std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file()) {
                let _ = std::fs::remove_file(legacy);
            }
            // Prune now-empty parent directories, never the root.
            let mut dir = path.parent().map(Path::to_path_buf);
            while let Some(d) = dir {
                if d == s.root || std::fs::remove_dir(&d).is_err() {
                    break;
                }
                dir = d.parent().map(Path::to_path_buf);
            }
            Ok(())
        })
        .await
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        let src = self.stat(from).await?;
        let src_path = self.path_for(from)?;
        self.path_for(to)?;
        let mut opts = PutOptions::default();
        opts.content_type = src.content_type.clone();
        opts.metadata = src.metadata.clone();
        self.upload(
            to,
            UploadSource::Path(src_path),
            &opts,
            &TransferCtx::none(),
        )
        .await
    }

    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.path_for(key)?;
        match &self.serve {
            Some((base, signer)) => signer.sign(base, method, key, expires_in),
            None => Err(Error::not_supported(
                &self.name,
                format!(
                    "presign (set stores.{0}.serve_url and stores.{0}.signing_key, then run `xfer serve`)",
                    self.name
                ),
            )),
        }
    }

    /// The temp files that uploads of dead processes left under
    /// `ROOT/.xferkit/tmp` (stale by the rule in the `tmp` module; a live
    /// upload's file is never listed): key `.xferkit/tmp/NAME`, upload id
    /// `NAME`, initiated = the file's last write. A temp file does not know
    /// the key it was for, so only a prefix of `.xferkit/tmp/` (e.g. the
    /// empty one) selects them.
    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| {
            let dir = s.tmp_dir();
            let stale =
                tmp::stale_in(&dir).map_err(|e| Error::from_io(dir.display().to_string(), e))?;
            Ok(stale
                .into_iter()
                .filter_map(|(path, modified)| {
                    let name = path.file_name()?.to_str()?.to_string();
                    let key = format!("{RESERVED}/tmp/{name}");
                    key.starts_with(&prefix)
                        .then(|| PendingUpload::new(key, name, modified))
                })
                .collect())
        })
        .await
    }

    /// Remove a stale temp file that `list_pending_uploads` returned; one
    /// already gone is `Ok`, one a live process holds is refused
    /// (`PreconditionFailed`) and kept.
    async fn abort_pending_upload(&self, pending: &PendingUpload) -> Result<()> {
        let path = self.pending_path(&pending.key)?;
        let url = self.url(&pending.key);
        self.blocking(move |_| match tmp::remove_if_stale(&path) {
            Ok(Sweep::Removed | Sweep::Gone) => Ok(()),
            Ok(Sweep::Live) => Err(Error::PreconditionFailed {
                target: url,
                source: Some("a running process is writing it (it holds the file's lock)".into()),
            }),
            Err(e) => Err(Error::from_io(url, e)),
        })
        .await
    }
}
