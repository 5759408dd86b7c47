//! `MemoryStore`: objects in a map, behind the same trait as the real stores.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use xferkit_core::key::Root;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    Backend, BuildContext, ByteRange, ByteStream, Capabilities, Error, FileTransferHandler, Key,
    PendingUpload, PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx,
    UploadSource, async_trait,
};

use crate::{MemoryConfig, SCHEME};

/// One stored object: its bytes and what the store reports about them.
#[derive(Debug)]
struct Object {
    data: Bytes,
    /// The record, `url` and `key` included.
    record: RemoteObject,
}

/// The objects of a store and its clones.
#[derive(Default)]
struct Objects {
    map: Mutex<BTreeMap<String, Arc<Object>>>,
    /// Numbers each write: etag and version.
    writes: AtomicU64,
}

impl Objects {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Object>>> {
        // A panic while holding the lock leaves the map as it was: a write
        // is one insert.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &str) -> Option<Arc<Object>> {
        self.lock().get(key).cloned()
    }
}

/// A store that keeps its objects in memory, for tests: of an application
/// that uses xferkit (build a registry with it instead of a bucket), and of
/// xferkit itself (it passes the conformance suite). URLs are
/// `mem://NAME/[PREFIX/]KEY`.
///
/// The objects live as long as the store and its clones (a clone shares
/// them); two stores built separately share nothing, whatever their names.
/// Uploads become visible only when complete; a stopped or failed one
/// leaves nothing. See [`MemoryConfig`] for making transfers take time.
#[derive(Clone)]
pub struct MemoryStore {
    name: String,
    root: Root,
    objects: Arc<Objects>,
    part_size: usize,
    part_delay: Option<Duration>,
    /// The configured server-side upload defaults (headers, storage class).
    defaults: PutOptions,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("name", &self.name)
            .field("url", &self.root.url_full(""))
            .field("objects", &self.objects.lock().len())
            .field("part_size", &self.part_size)
            .field("part_delay", &self.part_delay)
            .finish_non_exhaustive()
    }
}

/// What the store keeps and reports besides content: type, metadata, the
/// four headers and a storage class (any name; nothing is done with it).
fn capabilities() -> Capabilities {
    let mut c = Capabilities::default();
    c.range = true;
    c.conditional_create = true;
    c.copy = true;
    c.metadata = true;
    c.object_headers = true;
    c.storage_class = true;
    c
}

/// `backend = "memory"`: a [`MemoryConfig`] table, and the defaults of the
/// server-side options it keeps (the four headers, `storage_class`).
#[async_trait]
impl Backend for MemoryStore {
    const KIND: &'static str = "memory";
    type Config = MemoryConfig;

    fn upload_options() -> Capabilities {
        capabilities()
    }

    async fn build(name: &str, config: MemoryConfig, ctx: &BuildContext) -> Result<Self> {
        let mut store = MemoryStore::new(name, config)?;
        store.defaults = ctx.upload.put_options(&capabilities())?;
        Ok(store)
    }
}

impl MemoryStore {
    /// An empty store called `name`, its URLs `mem://NAME/…`: `name` is
    /// their host, so letters, digits, `-`, `_` and `.` only.
    pub fn new(name: &str, config: MemoryConfig) -> Result<Self> {
        let prefix = config.validate()?;
        let host_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !host_ok {
            return Err(Error::invalid_config(format!(
                "the store name {name:?} cannot be the host of its mem:// URLs \
                 (letters, digits, '-', '_' and '.')"
            )));
        }
        Ok(MemoryStore {
            name: name.to_string(),
            root: Root::new(SCHEME, name, &prefix),
            objects: Arc::default(),
            part_size: usize::try_from(config.part_size).unwrap_or(usize::MAX),
            part_delay: config.part_delay,
            defaults: PutOptions::default(),
        })
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.objects.lock().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait for one part of `n` bytes: the transfer's bandwidth caps, then
    /// `part_delay`; `Cancelled` when the transfer is stopped.
    async fn pace(&self, url: &str, n: usize, ctx: &TransferCtx) -> Result<()> {
        ctx.check(url)?;
        ctx.throttle(url, n as u64).await?;
        if let Some(d) = self.part_delay {
            ctx.cancellable(url, async {
                tokio::time::sleep(d).await;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Every byte of `source`, a part at a time, each reported as progress.
    async fn receive(&self, url: &str, source: UploadSource, ctx: &TransferCtx) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        match source {
            UploadSource::Path(path) => {
                let mut file = open(&path).await?;
                loop {
                    let mut part = BytesMut::with_capacity(self.part_size.min(8 << 20));
                    while part.len() < self.part_size {
                        let want = (self.part_size - part.len()).min(8 << 20);
                        let mut chunk = (&mut file).take(want as u64);
                        let n = chunk
                            .read_buf(&mut part)
                            .await
                            .map_err(|e| Error::from_io(path.display().to_string(), e))?;
                        if n == 0 {
                            break;
                        }
                    }
                    if part.is_empty() {
                        break;
                    }
                    self.pace(url, part.len(), ctx).await?;
                    ctx.add_progress(part.len() as u64);
                    buf.extend_from_slice(&part);
                }
            }
            UploadSource::Stream { stream, size } => {
                let mut stream = match size {
                    Some(size) => xferkit_core::parts::exact_length(stream, size, url.to_string()),
                    None => stream,
                };
                while let Some(chunk) = ctx.cancellable(url, stream.try_next()).await? {
                    for part in chunk.chunks(self.part_size) {
                        self.pace(url, part.len(), ctx).await?;
                        ctx.add_progress(part.len() as u64);
                        buf.extend_from_slice(part);
                    }
                }
            }
        }
        Ok(buf.freeze())
    }

    /// The object at `key`, or `NotFound` naming its URL.
    fn object(&self, key: &Key) -> Result<Arc<Object>> {
        let (_, url) = self.root.locate(key);
        self.objects.get(key).ok_or_else(|| Error::not_found(url))
    }

    /// Store `data` under `key` as one new write; with `create_only`,
    /// `AlreadyExists` if the key is taken (checked and written under one
    /// lock).
    fn put(
        &self,
        key: &Key,
        data: Bytes,
        mut record: RemoteObject,
        create_only: bool,
    ) -> Result<RemoteObject> {
        let write = self.objects.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let crc = crc32c::crc32c(&data);
        record.url = self.root.url(key);
        record.key = key.to_string();
        record.size = data.len() as u64;
        record.etag = Some(format!("{crc:08x}-{write}"));
        record.version = Some(write.to_string());
        record.checksum = Some(xferkit_core::journal::crc32c_label(crc));
        record.last_modified = Some(SystemTime::now());
        let mut map = self.objects.lock();
        if create_only && map.contains_key(key.as_str()) {
            return Err(Error::already_exists(record.url));
        }
        map.insert(
            key.to_string(),
            Arc::new(Object {
                data,
                record: record.clone(),
            }),
        );
        Ok(record)
    }
}

async fn open(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::from_io(path.display().to_string(), e))
}

/// `data` as a stream of parts, each after `delay`.
fn parts(data: Bytes, part_size: usize, delay: Option<Duration>) -> ByteStream {
    let count = data.len().div_ceil(part_size);
    Box::pin(futures::stream::iter(0..count).then(move |i| {
        let part = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            Ok(part)
        }
    }))
}

#[async_trait]
impl FileTransferHandler for MemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn schemes(&self) -> &[&str] {
        self.root.schemes()
    }

    fn url_for(&self, key: &Key) -> String {
        self.root.url(key)
    }

    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.root.key_for_url(url)
    }

    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let (_, url) = self.root.locate(key);
        let opts = opts.or_defaults(&self.defaults);
        opts.check_server_options(&self.name, &url, &capabilities())?;
        if opts.if_not_exists && self.objects.get(key).is_some() {
            return Err(Error::already_exists(url));
        }
        let data = self.receive(&url, source, ctx).await?;
        // The point of no return: from here the object becomes visible.
        ctx.commit(&url)?;
        let mut record = RemoteObject::new(url, key, 0);
        record.content_type = Some(opts.content_type_for(key));
        record.metadata = opts
            .metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        record.headers = opts.headers.clone();
        record.storage_class = opts.storage_class.clone();
        self.put(key, data, record, opts.if_not_exists)
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let obj = self.object(key)?;
        let data = match range {
            Some(r) => {
                let span = r.resolve(obj.record.size, &obj.record.url)?;
                obj.data.slice(span.start as usize..span.end as usize)
            }
            None => obj.data.clone(),
        };
        let stream = parts(data, self.part_size, self.part_delay);
        Ok((obj.record.clone(), stream))
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        Ok(self.object(key)?.record.clone())
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        let listed: Vec<Result<RemoteObject>> = self
            .objects
            .lock()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, o)| Ok(o.record.clone()))
            .collect();
        futures::stream::iter(listed).boxed()
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.objects.lock().remove(key.as_str());
        Ok(())
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        let src = self.object(from)?;
        self.put(to, src.data.clone(), src.record.clone(), false)
    }

    async fn presign(
        &self,
        key: &Key,
        _method: PresignMethod,
        _expires_in: Duration,
    ) -> Result<PresignedUrl> {
        let _ = key;
        Err(Error::not_supported(
            &self.name,
            "presign (a memory store has no URL that another program can fetch)",
        ))
    }

    async fn list_pending_uploads(&self, _prefix: &str) -> Result<Vec<PendingUpload>> {
        Err(Error::not_supported(
            &self.name,
            "listing pending uploads (an unfinished upload is never stored)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_no_url_host_are_refused() {
        for bad in ["", "two words", "a/b", "x:1"] {
            let e = MemoryStore::new(bad, MemoryConfig::default()).unwrap_err();
            assert!(e.to_string().contains("cannot be the host"), "{bad}: {e}");
        }
        let s = MemoryStore::new("t-1.x_y", MemoryConfig::default().with_prefix("/p/q/")).unwrap();
        assert_eq!(
            s.url_for(&Key::new("a b").unwrap()),
            "mem://t-1.x_y/p/q/a%20b"
        );
    }

    #[test]
    fn bad_keys_name_themselves_relative_to_the_table() {
        let e = MemoryStore::new("t", MemoryConfig::default().with_part_size(0)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid configuration: part_size = 0"),
            "{e}"
        );
        let e = MemoryStore::new("t", MemoryConfig::default().with_prefix("a/../b")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid configuration: prefix = "),
            "{e}"
        );
    }

    #[test]
    fn its_table_accepts_its_fields_and_the_options_it_keeps() {
        let mut keys = MemoryStore::keys();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cache_control",
                "content_disposition",
                "content_encoding",
                "content_language",
                "part_delay",
                "part_size",
                "prefix",
                "storage_class"
            ]
        );
    }

    #[test]
    fn debug_shows_no_contents() {
        let s = MemoryStore::new("t", MemoryConfig::default()).unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("mem://t/") && d.contains("objects: 0"), "{d}");
    }
}
