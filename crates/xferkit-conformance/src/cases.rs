//! The conformance cases. Each is an `async fn(Arc<Env>, case) -> R`; the
//! `case` name doubles as the key prefix the case writes under, so cases
//! run in parallel without seeing each other.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use xferkit_core::Key;
use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, Capabilities, DynHandler, ErrorKind, FileInfo, FileTransferExt, PresignMethod,
    PutOptions, Registry, TransferCtx, TransferManager, TransferRequest, TransferStatus,
    UploadSource,
};

use crate::support::{Counting, data, http, sha256, sha256_file};

pub struct Env {
    pub handler: DynHandler,
    pub caps: Capabilities,
    pub multipart_size: u64,
    /// A non-default storage class the store reports back ([`crate::Target::storage_class`]).
    pub storage_class: Option<String>,
    pub rt: Arc<tokio::runtime::Runtime>,
}

type R = Result<(), String>;
type Requires = fn(&Capabilities) -> Result<(), &'static str>;

pub struct Case {
    pub name: &'static str,
    pub requires: Requires,
    pub run: fn(Arc<Env>, &'static str) -> BoxFuture<'static, R>,
}

/// Names of all cases, in order.
pub fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}

fn any(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}
fn range(c: &Capabilities) -> Result<(), &'static str> {
    c.range.then_some(()).ok_or("range")
}
fn conditional(c: &Capabilities) -> Result<(), &'static str> {
    c.conditional_create
        .then_some(())
        .ok_or("conditional_create")
}
fn presign_get(c: &Capabilities) -> Result<(), &'static str> {
    c.presign_get.then_some(()).ok_or("presign_get")
}
fn presign_put(c: &Capabilities) -> Result<(), &'static str> {
    c.presign_put.then_some(()).ok_or("presign_put")
}
fn presign_verified(c: &Capabilities) -> Result<(), &'static str> {
    presign_get(c)?;
    c.presign_verified.then_some(()).ok_or("presign_verified")
}
fn copy(c: &Capabilities) -> Result<(), &'static str> {
    c.copy.then_some(()).ok_or("copy")
}
fn metadata(c: &Capabilities) -> Result<(), &'static str> {
    c.metadata.then_some(()).ok_or("metadata")
}
fn object_headers(c: &Capabilities) -> Result<(), &'static str> {
    c.object_headers.then_some(()).ok_or("object_headers")
}
fn storage_class(c: &Capabilities) -> Result<(), &'static str> {
    c.storage_class.then_some(()).ok_or("storage_class")
}
fn copy_and_headers(c: &Capabilities) -> Result<(), &'static str> {
    copy(c)?;
    object_headers(c)
}
fn sse_service_managed(c: &Capabilities) -> Result<(), &'static str> {
    c.sse_service_managed
        .then_some(())
        .ok_or("sse_service_managed")
}

macro_rules! case {
    ($name:ident) => {
        case!($name, any)
    };
    ($name:ident, $req:expr) => {
        Case {
            name: stringify!($name),
            requires: $req,
            run: |e, c| Box::pin($name(e, c)),
        }
    };
}

pub static CASES: &[Case] = &[
    case!(roundtrip_0b),
    case!(roundtrip_1b),
    case!(roundtrip_1mib),
    case!(roundtrip_multipart_file),
    case!(roundtrip_stream_unknown_size),
    case!(key_unicode),
    case!(key_spaces),
    case!(key_plus_and_percent),
    case!(key_hash_and_question),
    case!(key_deep_prefix),
    case!(invalid_keys_refused),
    case!(url_round_trip),
    case!(list_prefix_is_a_string_prefix),
    case!(list_paginates_past_1000),
    case!(list_missing_prefix_is_empty),
    case!(list_delimiter_groups_directories),
    case!(list_start_after_resumes_after_a_key),
    case!(list_limit_stops_after_n_entries),
    case!(stat_fields),
    case!(upload_result_matches_stat),
    case!(range_bounded, range),
    case!(range_from_offset, range),
    case!(range_suffix, range),
    case!(range_suffix_longer_than_object, range),
    case!(range_past_end_is_invalid, range),
    case!(overwrite_replaces),
    case!(create_only_new_key, conditional),
    case!(create_only_existing_key_already_exists, conditional),
    case!(delete_twice_is_fine),
    case!(delete_many_reports_each_key_and_missing_ones_are_fine),
    case!(missing_key_not_found_everywhere),
    case!(download_to_path_of_missing_key_leaves_no_file),
    case!(upload_of_missing_source_is_not_found),
    case!(content_type_and_metadata_round_trip, metadata),
    case!(header_cache_control_round_trips, object_headers),
    case!(header_content_disposition_round_trips, object_headers),
    case!(header_content_encoding_round_trips, object_headers),
    case!(header_content_language_round_trips, object_headers),
    case!(storage_class_round_trips, storage_class),
    case!(copy_keeps_object_headers, copy_and_headers),
    case!(sse_service_managed_is_reported, sse_service_managed),
    case!(server_options_the_store_cannot_honour_are_refused),
    case!(copy_keeps_content_and_metadata, copy),
    case!(
        copy_of_a_multipart_sized_object_keeps_content_and_metadata,
        copy
    ),
    case!(presign_get_plain_http, presign_get),
    case!(presign_put_plain_http, presign_put),
    case!(presign_expired_refused, presign_verified),
    case!(presign_tampered_refused, presign_verified),
    case!(progress_monotonic_and_ends_at_size),
    case!(stop_multipart_upload_leaves_nothing),
    case!(twenty_callers_of_one_url_get_their_files_from_one_download),
    case!(manager_download_by_canonical_url),
    case!(manager_upload_carries_title_and_message, metadata),
    case!(encrypted_attachment_round_trips),
    case!(encrypted_attachment_refuses_tampering),
];

// ---------- helpers ----------

/// `s` as a key, checked: an invalid one fails the case, naming it.
fn checked(s: &str) -> Result<Key, String> {
    Key::new(s).ctx("key")
}

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}
impl<T> Ctx<T> for xferkit_core::Result<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {} (kind {:?})", e.chain(), e.kind()))
    }
}
impl<T> Ctx<T> for std::io::Result<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn expect_kind<T: std::fmt::Debug>(r: xferkit_core::Result<T>, kind: ErrorKind, what: &str) -> R {
    match r {
        Ok(v) => Err(format!("{what}: expected {kind:?}, got Ok({v:?})")),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!(
            "{what}: expected {kind:?}, got {:?}: {}",
            e.kind(),
            e.chain()
        )),
    }
}

async fn put(e: &Env, key: &str, body: &[u8]) -> R {
    e.handler
        .upload(
            &checked(key)?,
            UploadSource::from_bytes(body.to_vec()),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .ctx(&format!("upload {key}"))
        .map(|_| ())
}

async fn get(e: &Env, key: &str, r: Option<ByteRange>) -> Result<Vec<u8>, String> {
    Ok(e.handler
        .read_bytes(&checked(key)?, r)
        .await
        .ctx(&format!("read {key}"))?
        .to_vec())
}

async fn roundtrip(e: &Env, key: &str, len: usize) -> R {
    let body = data(len, len as u64 + 7);
    let obj = e
        .handler
        .upload(
            &checked(key)?,
            UploadSource::from_bytes(body.clone()),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .ctx("upload")?;
    ensure!(
        obj.size == len as u64,
        "upload reported size {} for {len} bytes",
        obj.size
    );
    let back = get(e, key, None).await?;
    ensure!(
        sha256(&back) == sha256(&body),
        "{key}: {} bytes back, checksum differs from the {len} sent",
        back.len()
    );
    // And through a file, atomically.
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let dest = dir.path().join("out");
    let got = e
        .handler
        .download_to_path(&checked(key)?, &dest, None, &TransferCtx::none())
        .await
        .ctx("download_to_path")?;
    ensure!(got.size == len as u64, "stat size {} != {len}", got.size);
    ensure!(sha256_file(&dest) == sha256(&body), "file checksum differs");
    Ok(())
}

fn write_temp(dir: &Path, name: &str, body: &[u8]) -> Result<std::path::PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, body).ctx("write source file")?;
    Ok(p)
}

fn manager(h: DynHandler) -> TransferManager {
    let mut reg = Registry::new();
    reg.register(h);
    TransferManager::new(Arc::new(reg))
}

// ---------- cases ----------

async fn roundtrip_0b(e: Arc<Env>, c: &'static str) -> R {
    roundtrip(&e, &format!("{c}/empty"), 0).await
}
async fn roundtrip_1b(e: Arc<Env>, c: &'static str) -> R {
    roundtrip(&e, &format!("{c}/one"), 1).await
}
async fn roundtrip_1mib(e: Arc<Env>, c: &'static str) -> R {
    roundtrip(&e, &format!("{c}/mib"), 1 << 20).await
}

async fn roundtrip_multipart_file(e: Arc<Env>, c: &'static str) -> R {
    let size = e.multipart_size as usize;
    let body = data(size, 42);
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let src = write_temp(dir.path(), "big.bin", &body)?;
    let key = format!("{c}/big.bin");
    let obj = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::Path(src),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .ctx("multipart upload")?;
    ensure!(obj.size == size as u64, "size {} != {size}", obj.size);
    let dest = dir.path().join("back.bin");
    e.handler
        .download_to_path(&checked(&key)?, &dest, None, &TransferCtx::none())
        .await
        .ctx("download")?;
    ensure!(
        sha256_file(&dest) == sha256(&body),
        "multipart round trip differs"
    );
    Ok(())
}

async fn roundtrip_stream_unknown_size(e: Arc<Env>, c: &'static str) -> R {
    let body = data(3 * 1024 * 1024 + 5, 9);
    let chunks: Vec<xferkit_core::Result<bytes::Bytes>> = body
        .chunks(64 * 1024)
        .map(|ch| Ok(bytes::Bytes::copy_from_slice(ch)))
        .collect();
    let key = format!("{c}/streamed");
    let obj = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::Stream {
                stream: Box::pin(futures::stream::iter(chunks)),
                size: None,
            },
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .ctx("stream upload")?;
    ensure!(obj.size == body.len() as u64, "size {}", obj.size);
    ensure!(
        sha256(&get(&e, &key, None).await?) == sha256(&body),
        "differs"
    );
    Ok(())
}

async fn key_roundtrip(e: &Env, key: &str) -> R {
    let body = format!("content of {key}").into_bytes();
    put(e, key, &body).await?;
    ensure!(get(e, key, None).await? == body, "{key:?}: content differs");
    let st = e.handler.stat(&checked(key)?).await.ctx("stat")?;
    ensure!(st.key == key, "stat key {:?} != {key:?}", st.key);
    let listed: Vec<String> = e
        .handler
        .list(key)
        .map(|r| r.map(|o| o.key))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<xferkit_core::Result<_>>()
        .ctx("list")?;
    ensure!(
        listed == vec![key.to_string()],
        "list({key:?}) gave {listed:?}"
    );
    let url = e.handler.url_for(&checked(key)?);
    let parsed = ObjectUrl::parse(&url).ctx("parse canonical URL")?;
    ensure!(
        e.handler.key_for_url(&parsed).as_deref() == Some(key),
        "URL {url} does not map back to {key:?}"
    );
    Ok(())
}

async fn key_unicode(e: Arc<Env>, c: &'static str) -> R {
    key_roundtrip(&e, &format!("{c}/日本語/файл-ünï.txt")).await
}
async fn key_spaces(e: Arc<Env>, c: &'static str) -> R {
    key_roundtrip(&e, &format!("{c}/with some spaces/a b.txt")).await
}
async fn key_plus_and_percent(e: Arc<Env>, c: &'static str) -> R {
    key_roundtrip(&e, &format!("{c}/a+b%20c%2F.txt")).await
}
async fn key_hash_and_question(e: Arc<Env>, c: &'static str) -> R {
    key_roundtrip(&e, &format!("{c}/what#is?this&x=1.txt")).await
}
async fn key_deep_prefix(e: Arc<Env>, c: &'static str) -> R {
    key_roundtrip(&e, &format!("{c}/a/b/c/d/e/f/g/h/i/j/deep.txt")).await
}

/// A store takes only [`Key`]s, so an invalid key is refused where keys are
/// built, before any store is asked: by `Key::new` (CLI arguments, config,
/// listings) and, for a URL naming one of this store's objects, by the
/// registry that maps it to the store, so no transfer of it starts.
async fn invalid_keys_refused(e: Arc<Env>, c: &'static str) -> R {
    let mut reg = Registry::new();
    reg.register(e.handler.clone());
    let m = manager(e.handler.clone());
    let dir = tempfile::tempdir().ctx("tempdir")?;
    // This store's URLs of keys under the case's prefix: `{base}/REST`.
    let base = e.handler.url_for(&checked(&format!("{c}/x"))?);
    let base = base.strip_suffix("/x").ok_or(format!("url_for: {base}"))?;
    let url_of = |rest: &str| format!("{base}/{}", xferkit_core::url::encode_path(rest));
    // The same way to a valid key resolves to it: the refusals below are
    // of the keys, not of how their URLs are made.
    let (_, ok) = reg.resolve(&url_of("ok key")).ctx("resolve a valid key")?;
    ensure!(ok == format!("{c}/ok key").as_str(), "resolved to {ok:?}");
    for bad in [
        "",
        "../escape",
        "a/../../b",
        "/abs",
        "a//b",
        "a\\..\\b",
        "nul\0",
        "./x",
        "x/",
    ] {
        let key = format!("{c}/{bad}");
        match Key::new(key.as_str()) {
            Ok(k) => return Err(format!("Key::new accepted {k:?}")),
            Err(err) => ensure!(
                err.kind() == ErrorKind::InvalidKey
                    && err.to_string().contains(&format!("{key:?}")),
                "Key::new({key:?}): {err} ({:?}), not InvalidKey naming the key",
                err.kind()
            ),
        }
        let url = url_of(bad);
        match reg.resolve(&url) {
            Err(err) => ensure!(
                matches!(err.kind(), ErrorKind::InvalidUrl | ErrorKind::InvalidKey),
                "resolve {url:?}: {err} ({:?})",
                err.kind()
            ),
            // A URL parser may resolve `.`/`..` segments itself (a file
            // URL's path): the key is then another one, inside the store.
            // Anything else must be refused.
            Ok((_, k)) => ensure!(
                bad.split('/').any(|s| s == "." || s == ".."),
                "resolve {url:?} gave the key {k:?}"
            ),
        }
        let dest = dir.path().join("never");
        let refused = match m.start(TransferRequest::download(url.clone(), &dest)) {
            Err(err) => Some(err.kind()),
            Ok(t) => t.wait_info().await.error_kind,
        };
        if !bad.split('/').any(|s| s == "." || s == "..") {
            ensure!(
                matches!(refused, Some(ErrorKind::InvalidUrl | ErrorKind::InvalidKey)),
                "download of {url:?}: {refused:?}"
            );
        }
        ensure!(!dest.exists(), "download of {url:?} left a file");
    }
    Ok(())
}

async fn url_round_trip(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/x y#z");
    let url = e.handler.url_for(&checked(&key)?);
    let parsed = ObjectUrl::parse(&url).ctx("parse")?;
    ensure!(
        e.handler.key_for_url(&parsed).as_deref() == Some(key.as_str()),
        "{url} does not map back"
    );
    // The registry finds the store by the schemes it reports.
    ensure!(
        e.handler.schemes().contains(&parsed.scheme.as_str()),
        "{url}: scheme {:?} is not among the store's schemes {:?}",
        parsed.scheme,
        e.handler.schemes()
    );
    for foreign in [
        "s3://some-other-bucket-xk/k",
        "gs://some-other-bucket-xk/k",
        "az://otheraccount/othercontainer/k",
        "file:///nonexistent-xferkit-root/k",
    ] {
        let p = ObjectUrl::parse(foreign).ctx("parse foreign")?;
        ensure!(
            e.handler.key_for_url(&p).is_none(),
            "store claims foreign URL {foreign}"
        );
    }
    Ok(())
}

async fn list_keys(e: &Env, prefix: &str) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = e
        .handler
        .list(prefix)
        .map(|r| r.map(|o| o.key))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<xferkit_core::Result<_>>()
        .ctx(&format!("list {prefix:?}"))?;
    keys.sort();
    Ok(keys)
}

async fn list_prefix_is_a_string_prefix(e: Arc<Env>, c: &'static str) -> R {
    for k in ["a/1", "a/2", "ab/3", "b/4", "a/sub/5"] {
        put(&e, &format!("{c}/{k}"), b"x").await?;
    }
    let got = list_keys(&e, &format!("{c}/a/")).await?;
    let want: Vec<String> = ["a/1", "a/2", "a/sub/5"]
        .iter()
        .map(|k| format!("{c}/{k}"))
        .collect();
    ensure!(got == want, "list a/ gave {got:?}");
    let got = list_keys(&e, &format!("{c}/a")).await?;
    ensure!(got.len() == 4, "list 'a' (string prefix) gave {got:?}");
    Ok(())
}

async fn list_paginates_past_1000(e: Arc<Env>, c: &'static str) -> R {
    let n = 1050;
    let results = futures::stream::iter(0..n)
        .map(|i| {
            let e = e.clone();
            async move { put(&e, &format!("{c}/o{i:05}"), b"").await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    let got = list_keys(&e, &format!("{c}/")).await?;
    ensure!(got.len() == n, "listed {} of {n} objects", got.len());
    let mut dedup = got.clone();
    dedup.dedup();
    ensure!(dedup.len() == n, "list returned duplicates");
    Ok(())
}

async fn list_missing_prefix_is_empty(e: Arc<Env>, c: &'static str) -> R {
    let got = list_keys(&e, &format!("{c}/nothing-here/")).await?;
    ensure!(got.is_empty(), "got {got:?}");
    Ok(())
}

async fn stat_fields(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/photo.png");
    let before = SystemTime::now() - Duration::from_secs(300);
    put(&e, &key, &data(1234, 1)).await?;
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(st.size == 1234, "size {}", st.size);
    ensure!(
        st.etag
            .as_deref()
            .is_some_and(|t| !t.is_empty() && !t.contains('"')),
        "etag {:?}",
        st.etag
    );
    ensure!(
        st.content_type.as_deref() == Some("image/png"),
        "content type {:?}",
        st.content_type
    );
    let lm = st.last_modified.ok_or("no last_modified")?;
    ensure!(
        lm > before && lm < SystemTime::now() + Duration::from_secs(300),
        "last_modified {lm:?}"
    );
    ensure!(
        st.url == e.handler.url_for(&checked(&key)?),
        "url {} != canonical",
        st.url
    );
    Ok(())
}

async fn upload_result_matches_stat(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/doc.txt");
    let up = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::from_bytes(&b"hello"[..]),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
        .ctx("upload")?;
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(
        up.url == st.url && up.key == st.key && up.size == st.size,
        "{up:?} vs {st:?}"
    );
    ensure!(
        up.etag.is_some() && up.etag == st.etag,
        "etag {:?} vs {:?}",
        up.etag,
        st.etag
    );
    ensure!(
        up.content_type == st.content_type,
        "{:?} vs {:?}",
        up.content_type,
        st.content_type
    );
    Ok(())
}

async fn range_setup(e: &Env, c: &str) -> Result<(String, Vec<u8>), String> {
    let key = format!("{c}/ranged");
    let body = data(10_000, 5);
    put(e, &key, &body).await?;
    Ok((key, body))
}

async fn range_bounded(e: Arc<Env>, c: &'static str) -> R {
    let (key, body) = range_setup(&e, c).await?;
    let got = get(
        &e,
        &key,
        Some(ByteRange::Bounded {
            start: 100,
            end: 2100,
        }),
    )
    .await?;
    ensure!(
        got == body[100..2100],
        "bounded range differs ({} bytes)",
        got.len()
    );
    let got = get(
        &e,
        &key,
        Some(ByteRange::Bounded {
            start: 9990,
            end: 20_000,
        }),
    )
    .await?;
    ensure!(
        got == body[9990..],
        "range past the end not clipped ({} bytes)",
        got.len()
    );
    Ok(())
}
async fn range_from_offset(e: Arc<Env>, c: &'static str) -> R {
    let (key, body) = range_setup(&e, c).await?;
    let got = get(&e, &key, Some(ByteRange::From(7777))).await?;
    ensure!(got == body[7777..], "from-offset range differs");
    Ok(())
}
async fn range_suffix(e: Arc<Env>, c: &'static str) -> R {
    let (key, body) = range_setup(&e, c).await?;
    let got = get(&e, &key, Some(ByteRange::Suffix(321))).await?;
    ensure!(
        got == body[10_000 - 321..],
        "suffix range differs ({} bytes)",
        got.len()
    );
    Ok(())
}
async fn range_suffix_longer_than_object(e: Arc<Env>, c: &'static str) -> R {
    let (key, body) = range_setup(&e, c).await?;
    let got = get(&e, &key, Some(ByteRange::Suffix(50_000))).await?;
    ensure!(
        got == body,
        "long suffix should give the whole object ({} bytes)",
        got.len()
    );
    Ok(())
}
async fn range_past_end_is_invalid(e: Arc<Env>, c: &'static str) -> R {
    let (key, _) = range_setup(&e, c).await?;
    expect_kind(
        e.handler
            .read_bytes(&checked(&key)?, Some(ByteRange::From(10_000)))
            .await,
        ErrorKind::InvalidRange,
        "range starting at the size",
    )?;
    expect_kind(
        e.handler
            .read_bytes(
                &checked(&key)?,
                Some(ByteRange::Bounded {
                    start: 50_000,
                    end: 60_000,
                }),
            )
            .await,
        ErrorKind::InvalidRange,
        "range past the end",
    )
}

async fn overwrite_replaces(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/k");
    put(&e, &key, b"first version, longer").await?;
    put(&e, &key, b"second").await?;
    ensure!(
        get(&e, &key, None).await? == b"second",
        "overwrite did not replace"
    );
    ensure!(
        e.handler.stat(&checked(&key)?).await.ctx("stat")?.size == 6,
        "stale size"
    );
    Ok(())
}

async fn create_only_new_key(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/new");
    e.handler
        .upload(
            &checked(&key)?,
            UploadSource::from_bytes(&b"x"[..]),
            &PutOptions::default().create_only(),
            &TransferCtx::none(),
        )
        .await
        .ctx("create-only on a new key")?;
    Ok(())
}

async fn create_only_existing_key_already_exists(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/taken");
    put(&e, &key, b"original").await?;
    let r = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::from_bytes(&b"intruder"[..]),
            &PutOptions::default().create_only(),
            &TransferCtx::none(),
        )
        .await;
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "create-only on an existing key",
    )?;
    // Multipart path too.
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let src = write_temp(dir.path(), "big", &data(e.multipart_size as usize, 3))?;
    let r = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::Path(src),
            &PutOptions::default().create_only(),
            &TransferCtx::none(),
        )
        .await;
    expect_kind(
        r,
        ErrorKind::AlreadyExists,
        "multipart create-only on an existing key",
    )?;
    ensure!(
        get(&e, &key, None).await? == b"original",
        "original content was replaced"
    );
    Ok(())
}

async fn delete_twice_is_fine(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/gone");
    put(&e, &key, b"x").await?;
    e.handler
        .delete(&checked(&key)?)
        .await
        .ctx("first delete")?;
    e.handler
        .delete(&checked(&key)?)
        .await
        .ctx("second delete")?;
    expect_kind(
        e.handler.stat(&checked(&key)?).await,
        ErrorKind::NotFound,
        "stat after delete",
    )
}

async fn delete_many_reports_each_key_and_missing_ones_are_fine(e: Arc<Env>, c: &'static str) -> R {
    let present: Vec<String> = (0..5).map(|i| format!("{c}/k{i}")).collect();
    for k in &present {
        put(&e, k, b"x").await?;
    }
    let keep = format!("{c}/keep");
    put(&e, &keep, b"kept").await?;
    let mut keys = present.clone();
    keys.insert(2, format!("{c}/missing"));
    // (An invalid key cannot be asked for: no `Key` holds one.)
    let keys = keys
        .iter()
        .map(|k| checked(k))
        .collect::<Result<Vec<_>, _>>()?;
    let out = e.handler.delete_many(&keys).await.ctx("delete_many")?;
    ensure!(
        out.iter().map(|(k, _)| k).eq(keys.iter()),
        "keys did not come back one each, in order: {out:?}"
    );
    for (k, r) in &out {
        ensure!(
            r.is_ok(),
            "delete_many of {k:?} (missing ones included): {r:?}"
        );
    }
    for k in &present {
        expect_kind(
            e.handler.stat(&checked(k)?).await,
            ErrorKind::NotFound,
            "stat after delete_many",
        )?;
    }
    ensure!(
        get(&e, &keep, None).await? == b"kept",
        "delete_many touched a key it was not given"
    );
    let none = e
        .handler
        .delete_many(&[])
        .await
        .ctx("delete_many of no keys")?;
    ensure!(none.is_empty(), "delete_many of no keys: {none:?}");
    Ok(())
}

async fn missing_key_not_found_everywhere(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/never-written");
    expect_kind(
        e.handler.stat(&checked(&key)?).await,
        ErrorKind::NotFound,
        "stat",
    )?;
    expect_kind(
        e.handler
            .download_stream(&checked(&key)?, None)
            .await
            .map(|(o, _)| o),
        ErrorKind::NotFound,
        "download_stream",
    )?;
    expect_kind(
        e.handler
            .download_stream(&checked(&key)?, Some(ByteRange::From(0)))
            .await
            .map(|(o, _)| o),
        ErrorKind::NotFound,
        "ranged download_stream",
    )?;
    if e.caps.copy {
        expect_kind(
            e.handler
                .copy(&checked(&key)?, &checked(&format!("{c}/dst"))?)
                .await,
            ErrorKind::NotFound,
            "copy",
        )?;
    }
    e.handler
        .delete(&checked(&key)?)
        .await
        .ctx("delete of a missing key")?;
    Ok(())
}

async fn download_to_path_of_missing_key_leaves_no_file(e: Arc<Env>, c: &'static str) -> R {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let dest = dir.path().join("never");
    let r = e
        .handler
        .download_to_path(
            &checked(&format!("{c}/missing"))?,
            &dest,
            None,
            &TransferCtx::none(),
        )
        .await;
    expect_kind(r, ErrorKind::NotFound, "download of a missing key")?;
    let left: Vec<_> = std::fs::read_dir(dir.path()).ctx("read_dir")?.collect();
    ensure!(left.is_empty(), "files left behind: {left:?}");
    Ok(())
}

async fn upload_of_missing_source_is_not_found(e: Arc<Env>, c: &'static str) -> R {
    let r = e
        .handler
        .upload(
            &checked(&format!("{c}/k"))?,
            UploadSource::Path("/nonexistent/xferkit/source.bin".into()),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await;
    expect_kind(r, ErrorKind::NotFound, "upload of a missing file")?;
    expect_kind(
        e.handler.stat(&checked(&format!("{c}/k"))?).await,
        ErrorKind::NotFound,
        "object after failed upload",
    )
}

async fn content_type_and_metadata_round_trip(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/meta.bin");
    let opts = PutOptions::default()
        .with_content_type("application/x-xferkit-test")
        .with_metadata("title", "Holiday photo")
        .with_metadata("sender", "alice");
    e.handler
        .upload(
            &checked(&key)?,
            UploadSource::from_bytes(&b"m"[..]),
            &opts,
            &TransferCtx::none(),
        )
        .await
        .ctx("upload")?;
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(
        st.content_type.as_deref() == Some("application/x-xferkit-test"),
        "content type {:?}",
        st.content_type
    );
    ensure!(
        st.metadata.get("title").map(String::as_str) == Some("Holiday photo"),
        "metadata {:?}",
        st.metadata
    );
    ensure!(
        st.metadata.get("sender").map(String::as_str) == Some("alice"),
        "metadata {:?}",
        st.metadata
    );
    let (dl, _) = e
        .handler
        .download_stream(&checked(&key)?, None)
        .await
        .ctx("download")?;
    ensure!(
        dl.metadata == st.metadata,
        "download metadata {:?} != stat {:?}",
        dl.metadata,
        st.metadata
    );
    Ok(())
}

/// Upload `len` bytes with `content_type` and metadata `k=v`, copy them
/// server-side, and check the copy's content, type and metadata, and that
/// the source is unchanged.
async fn copy_check(e: &Env, from: &str, to: &str, len: usize, content_type: Option<&str>) -> R {
    let body = data(len, 77 + len as u64);
    let mut opts = PutOptions::default().with_metadata("k", "v");
    if let Some(ct) = content_type {
        opts = opts.with_content_type(ct);
    }
    e.handler
        .upload(
            &checked(from)?,
            UploadSource::from_bytes(body.clone()),
            &opts,
            &TransferCtx::none(),
        )
        .await
        .ctx("upload")?;
    let obj = e
        .handler
        .copy(&checked(from)?, &checked(to)?)
        .await
        .ctx("copy")?;
    ensure!(
        obj.key == to && obj.size == body.len() as u64,
        "copy result {obj:?}"
    );
    ensure!(get(e, to, None).await? == body, "copied content differs");
    let st = e.handler.stat(&checked(to)?).await.ctx("stat copy")?;
    let want = content_type.map_or_else(|| opts.content_type_for(from), str::to_string);
    ensure!(
        st.content_type.as_deref() == Some(want.as_str()),
        "content type {:?}, expected {want}",
        st.content_type
    );
    if e.caps.metadata {
        ensure!(
            st.metadata.get("k").map(String::as_str) == Some("v"),
            "metadata {:?}",
            st.metadata
        );
    }
    ensure!(get(e, from, None).await? == body, "source changed");
    Ok(())
}

async fn copy_keeps_content_and_metadata(e: Arc<Env>, c: &'static str) -> R {
    copy_check(
        &e,
        &format!("{c}/src.txt"),
        &format!("{c}/dst.txt"),
        200_000,
        None,
    )
    .await
}

/// A copy of an object just over the target's multipart size. S3's
/// conformance stores lower `copy_threshold` to one 5 MiB part, so there it
/// is a multipart copy (UploadPartCopy, four parts); elsewhere the store's own
/// server-side copy of a large object.
async fn copy_of_a_multipart_sized_object_keeps_content_and_metadata(
    e: Arc<Env>,
    c: &'static str,
) -> R {
    let (from, to) = (format!("{c}/big-src.bin"), format!("{c}/big-dst.bin"));
    let len = e.multipart_size.max(1 << 20) as usize + 1234;
    copy_check(&e, &from, &to, len, Some("application/x-xferkit-test")).await?;
    for k in [&from, &to] {
        e.handler.delete(&checked(k)?).await.ctx("delete")?;
    }
    Ok(())
}

fn request(client: &reqwest::Client, p: &xferkit_core::PresignedUrl) -> reqwest::RequestBuilder {
    let mut r = match p.method {
        PresignMethod::Get => client.get(&p.url),
        PresignMethod::Put => client.put(&p.url),
    };
    for (k, v) in &p.headers {
        r = r.header(k, v);
    }
    r
}

async fn presign_get_plain_http(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/shared file.bin");
    let body = data(300_000, 11);
    put(&e, &key, &body).await?;
    let p = e
        .handler
        .presign(
            &checked(&key)?,
            PresignMethod::Get,
            Duration::from_secs(600),
        )
        .await
        .ctx("presign")?;
    ensure!(p.expires_at > SystemTime::now(), "expiry in the past");
    let resp = request(&http(), &p)
        .send()
        .await
        .map_err(|e| format!("GET: {e}"))?;
    ensure!(
        resp.status().is_success(),
        "GET presigned: HTTP {}",
        resp.status()
    );
    let got = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    ensure!(
        sha256(&got) == sha256(&body),
        "presigned GET body differs ({} bytes)",
        got.len()
    );
    expect_kind(
        e.handler
            .presign(
                &checked(&format!("{c}/missing"))?,
                PresignMethod::Get,
                Duration::from_secs(60),
            )
            .await,
        ErrorKind::NotFound,
        "presign GET of a missing key",
    )
    .or_else(|m| {
        // Signing is local for most stores; a URL for a missing object is
        // acceptable as long as fetching it fails.
        if m.contains("got Ok(") {
            Ok(())
        } else {
            Err(m)
        }
    })
}

async fn presign_put_plain_http(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/uploaded by url.bin");
    let body = data(100_000, 12);
    let p = e
        .handler
        .presign(
            &checked(&key)?,
            PresignMethod::Put,
            Duration::from_secs(600),
        )
        .await
        .ctx("presign")?;
    let resp = request(&http(), &p)
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("PUT: {e}"))?;
    ensure!(
        resp.status().is_success(),
        "PUT presigned: HTTP {}",
        resp.status()
    );
    ensure!(
        get(&e, &key, None).await? == body,
        "content uploaded by presigned PUT differs"
    );
    Ok(())
}

async fn presign_expired_refused(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/soon-expired");
    put(&e, &key, b"secret content").await?;
    let p = e
        .handler
        .presign(&checked(&key)?, PresignMethod::Get, Duration::from_secs(1))
        .await
        .ctx("presign")?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = request(&http(), &p)
        .send()
        .await
        .map_err(|e| format!("GET: {e}"))?;
    ensure!(
        resp.status().is_client_error(),
        "expired URL answered HTTP {}",
        resp.status()
    );
    let body = resp.bytes().await.unwrap_or_default();
    ensure!(
        !body.windows(14).any(|w| w == b"secret content"),
        "expired URL served the content"
    );
    Ok(())
}

async fn presign_tampered_refused(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/private");
    let other = format!("{c}/other");
    put(&e, &key, b"private").await?;
    put(&e, &other, b"other content").await?;
    let p = e
        .handler
        .presign(
            &checked(&key)?,
            PresignMethod::Get,
            Duration::from_secs(600),
        )
        .await
        .ctx("presign")?;
    // Point the signed URL at another object.
    let tampered_key = p.url.replacen("/private", "/other", 1);
    ensure!(
        tampered_key != p.url,
        "could not find the key in {}",
        p.url.split('?').next().unwrap_or("")
    );
    // Flip one character of the signature (the last query value).
    let mut flipped = p.url.clone();
    if let Some(last) = flipped.pop() {
        flipped.push(if last == 'a' { 'b' } else { 'a' });
    }
    for (what, url) in [("other key", tampered_key), ("altered signature", flipped)] {
        let mut t = p.clone();
        t.url = url;
        let resp = request(&http(), &t)
            .send()
            .await
            .map_err(|e| format!("GET: {e}"))?;
        ensure!(
            resp.status().is_client_error(),
            "tampered URL ({what}) answered HTTP {}",
            resp.status()
        );
    }
    Ok(())
}

fn recorder() -> (
    Arc<std::sync::Mutex<Vec<FileInfo>>>,
    Arc<dyn xferkit_core::FileTransferListener>,
) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l2 = log.clone();
    let listener = Arc::new(move |i: &FileInfo| {
        l2.lock().unwrap_or_else(|p| p.into_inner()).push(i.clone());
    });
    (log, listener)
}

async fn progress_monotonic_and_ends_at_size(e: Arc<Env>, c: &'static str) -> R {
    let size = e.multipart_size;
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let src = write_temp(dir.path(), "p.bin", &data(size as usize, 8))?;
    let m = manager(e.handler.clone());
    let (log, listener) = recorder();
    m.add_listener(listener);
    let t = m
        .start(TransferRequest::upload(
            &src,
            e.handler.url_for(&checked(&format!("{c}/p.bin"))?),
        ))
        .ctx("start")?;
    let fin = t.wait_info().await;
    ensure!(
        fin.status == TransferStatus::Completed,
        "upload ended {:?}: {:?}",
        fin.status,
        fin.error
    );
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut last = 0;
    for i in &log {
        ensure!(
            i.transferred >= last,
            "progress went back from {last} to {}",
            i.transferred
        );
        last = i.transferred;
    }
    ensure!(last == size, "last progress {last} != size {size}");
    ensure!(
        log.len() >= 3,
        "only {} progress events for {size} bytes",
        log.len()
    );
    // Download direction too.
    let (log2, l2) = recorder();
    let m2 = manager(e.handler.clone());
    m2.add_listener(l2);
    let t = m2
        .start(TransferRequest::download(
            e.handler.url_for(&checked(&format!("{c}/p.bin"))?),
            dir.path().join("d.bin"),
        ))
        .ctx("start download")?;
    let fin = t.wait_info().await;
    ensure!(
        fin.status == TransferStatus::Completed,
        "download ended {:?}: {:?}",
        fin.status,
        fin.error
    );
    let log2 = log2.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut last = 0;
    for i in &log2 {
        ensure!(i.transferred >= last, "download progress went back");
        last = i.transferred;
    }
    ensure!(last == size, "last download progress {last} != {size}");
    Ok(())
}

async fn stop_multipart_upload_leaves_nothing(e: Arc<Env>, c: &'static str) -> R {
    let size = e.multipart_size * 2;
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let src = write_temp(dir.path(), "s.bin", &data(size as usize, 4))?;
    let key = format!("{c}/stopped.bin");
    let m = manager(e.handler.clone());
    let t = m
        .start(TransferRequest::upload(
            &src,
            e.handler.url_for(&checked(&key)?),
        ))
        .ctx("start")?;
    // Stop once the first bytes are acknowledged (or after 2 s at most).
    let mut rx = t.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if rx.borrow_and_update().transferred > 0 || rx.borrow().status.is_terminal() {
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    let stopped_at = std::time::Instant::now();
    t.stop();
    let fin = t.wait_info().await;
    let took = stopped_at.elapsed();
    if fin.status == TransferStatus::Completed {
        return Err(
            "upload completed before it could be stopped; use a larger multipart_size".into(),
        );
    }
    ensure!(
        fin.status == TransferStatus::Cancelled,
        "status {:?} ({:?})",
        fin.status,
        fin.error
    );
    ensure!(took < Duration::from_millis(1500), "stop took {took:?}");
    // The cleanup (the multipart abort) runs on after `Cancelled`; the
    // manager tracks it to its end.
    ensure!(
        m.settled(Duration::from_secs(30)).await,
        "the stopped upload's cleanup did not end within 30 s"
    );
    expect_kind(
        e.handler.stat(&checked(&key)?).await,
        ErrorKind::NotFound,
        "object after stop",
    )?;
    if e.caps.list_pending_uploads {
        let pending = e
            .handler
            .list_pending_uploads(c)
            .await
            .ctx("list pending uploads")?;
        ensure!(
            pending.is_empty(),
            "multipart uploads left dangling: {pending:?}"
        );
    }
    Ok(())
}

async fn twenty_callers_of_one_url_get_their_files_from_one_download(
    e: Arc<Env>,
    c: &'static str,
) -> R {
    let key = format!("{c}/popular.bin");
    let body = data(500_000, 21);
    put(&e, &key, &body).await?;
    let counting = Counting::new(e.handler.clone());
    let m = manager(counting.clone());
    let url = e.handler.url_for(&checked(&key)?);
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (m, url, b) = (m.clone(), url.clone(), barrier.clone());
        let dest = dir.path().join(format!("copy{i}"));
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            let t = m.file_instance(TransferRequest::download(url, dest))?;
            t.start();
            Ok::<_, xferkit_core::Error>(t)
        }));
    }
    let mut handles = Vec::new();
    for task in tasks {
        let t = task
            .await
            .map_err(|e| e.to_string())?
            .ctx("file_instance")?;
        handles.push(t);
    }
    let ids: std::collections::BTreeSet<u64> = handles.iter().map(|t| t.id()).collect();
    ensure!(ids.len() == 20, "{} handles for 20 callers", ids.len());
    let want = sha256(&body);
    for t in &handles {
        let fin = t.wait().await.map_err(|e| e.to_string())?;
        ensure!(
            sha256_file(&fin.path) == want,
            "{} differs from the object",
            fin.path.display()
        );
    }
    ensure!(
        counting.downloads() == 1,
        "{} downloads for one URL",
        counting.downloads()
    );
    let files = std::fs::read_dir(dir.path()).ctx("read_dir")?.count();
    ensure!(
        files == 20,
        "{files} files for 20 destinations (temp files left?)"
    );
    Ok(())
}

async fn manager_download_by_canonical_url(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/by url/ü.bin");
    let body = data(70_000, 31);
    put(&e, &key, &body).await?;
    let m = manager(e.handler.clone());
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let dest = dir.path().join("got");
    let t = m
        .start(TransferRequest::download(
            e.handler.url_for(&checked(&key)?),
            &dest,
        ))
        .ctx("start")?;
    let fin = t.wait_info().await;
    ensure!(
        fin.status == TransferStatus::Completed,
        "{:?} {:?}",
        fin.status,
        fin.error
    );
    ensure!(
        fin.transferred == body.len() as u64 && fin.size == Some(body.len() as u64),
        "{fin:?}"
    );
    ensure!(
        sha256_file(&dest) == sha256(&body),
        "downloaded content differs"
    );
    Ok(())
}

async fn manager_upload_carries_title_and_message(e: Arc<Env>, c: &'static str) -> R {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let src = write_temp(dir.path(), "note.txt", b"hi")?;
    let key = format!("{c}/note.txt");
    let m = manager(e.handler.clone());
    let t = m
        .start(
            TransferRequest::upload(&src, e.handler.url_for(&checked(&key)?))
                .with_title("A note")
                .with_message("see attached"),
        )
        .ctx("start")?;
    let fin = t.wait_info().await;
    ensure!(
        fin.status == TransferStatus::Completed,
        "{:?} {:?}",
        fin.status,
        fin.error
    );
    let key = checked(&key)?;
    let st = e.handler.stat(&key).await.ctx("stat")?;
    ensure!(
        st.metadata.get("title").map(String::as_str) == Some("A note"),
        "{:?}",
        st.metadata
    );
    ensure!(
        st.metadata.get("message").map(String::as_str) == Some("see attached"),
        "{:?}",
        st.metadata
    );
    ensure!(
        fin.object.is_some_and(|o| o.url == e.handler.url_for(&key)),
        "no object in FileInfo"
    );
    Ok(())
}

// ---------- end-to-end encrypted attachments (xferkit_share::e2e) ----------

/// A manager with the sharing layer whose downloads use ranges from 128 KiB,
/// in 64 KiB parts: the ranged path (records straddling parts) on small files.
fn ranged_manager(h: DynHandler) -> TransferManager {
    let m = sharing_manager(h);
    m.set_download_options(
        xferkit_core::DownloadOptions::default()
            .with_part_size(64 * 1024)
            .with_parallel_threshold(128 * 1024),
    );
    m
}

/// A manager whose registry has the sharing layer (which encrypts).
fn sharing_manager(h: DynHandler) -> TransferManager {
    let mut reg = Registry::new();
    reg.register(h);
    reg.set_layer(Arc::new(xferkit_share::Sharing::new()));
    TransferManager::new(Arc::new(reg))
}

/// Upload `body` encrypted to `key`; the link to hand out.
async fn upload_encrypted(e: &Env, key: &str, body: &[u8], dir: &Path) -> Result<String, String> {
    use xferkit_share::ShareRequestExt;
    let src = write_temp(dir, "plain", body)?;
    let m = sharing_manager(e.handler.clone());
    let t = m
        .start(TransferRequest::upload(&src, e.handler.url_for(&checked(key)?)).encrypted())
        .ctx("start encrypted upload")?;
    let fin = t.wait_info().await;
    ensure!(
        fin.status == TransferStatus::Completed,
        "encrypted upload: {:?} {:?}",
        fin.status,
        fin.error
    );
    let link = xferkit_share::ShareInfo::of(&fin)
        .share_url
        .clone()
        .ok_or("no share_url for an encrypted upload")?;
    ensure!(
        link.starts_with(&format!("{}#aes128gcm.", e.handler.url_for(&checked(key)?))),
        "link is not the canonical URL with an aes128gcm fragment"
    );
    ensure!(
        !format!("{fin:?}").contains("aes128gcm."),
        "FileInfo's Debug shows the link's fragment"
    );
    Ok(link)
}

/// Download `link` with `m` to a fresh directory: the file's bytes, or the error.
async fn download_link(
    m: &TransferManager,
    link: &str,
) -> Result<Result<Vec<u8>, xferkit_core::TransferError>, String> {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let dest = dir.path().join("got");
    let t = m
        .start(TransferRequest::download(link, &dest))
        .ctx("start download")?;
    match t.wait().await {
        Ok(_) => Ok(Ok(std::fs::read(&dest).ctx("read download")?)),
        Err(err) => {
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .ctx("read_dir")?
                .filter_map(|d| d.ok().map(|d| d.file_name()))
                .collect();
            ensure!(left.is_empty(), "a failed download left {left:?}");
            Ok(Err(err))
        }
    }
}

async fn encrypted_attachment_round_trips(e: Arc<Env>, c: &'static str) -> R {
    use xferkit_share::e2e;
    let dir = tempfile::tempdir().ctx("tempdir")?;
    // Empty, two records through one stream, and 300 KB in ranges.
    for (n, len) in [0usize, 70_000, 300_000].into_iter().enumerate() {
        let key = format!("{c}/secret-{n}.bin");
        let body = data(len, 77 + n as u64);
        let link = upload_encrypted(&e, &key, &body, dir.path()).await?;
        let raw = get(&e, &key, None).await?;
        ensure!(
            raw.len() as u64 == e2e::sealed_size(len as u64),
            "{key}: {} bytes stored for {len} of content",
            raw.len()
        );
        ensure!(
            len < 64
                || !raw
                    .windows(64)
                    .any(|w| w == &body[1000.min(len - 64)..][..64]),
            "{key}: the store holds plaintext"
        );
        let m = ranged_manager(e.handler.clone());
        let got = download_link(&m, &link)
            .await?
            .map_err(|e| format!("{key}: {e}"))?;
        ensure!(
            sha256(&got) == sha256(&body),
            "{key}: decrypted content differs"
        );
        // Ranges decrypt their records only: one across a record boundary.
        if len > 70_000 && e.caps.range {
            let (url, secret) = e2e::split_link(&link).ctx("split")?;
            let (h, k) = (
                e.handler.clone(),
                e.handler.key_for_url(&ObjectUrl::parse(&url).ctx("url")?),
            );
            let k = k.ok_or("the store does not own its own URL")?;
            let open = e2e::Encrypted::opening(h, secret.ok_or("no secret")?);
            let r = ByteRange::Bounded {
                start: 65_000,
                end: 140_000,
            };
            let part = open.read_bytes(&k, Some(r)).await.ctx("ranged read")?;
            ensure!(
                part[..] == body[65_000..140_000],
                "{key}: ranged read differs"
            );
            let tail = open
                .read_bytes(&k, Some(ByteRange::Suffix(10)))
                .await
                .ctx("suffix")?;
            ensure!(tail[..] == body[len - 10..], "{key}: suffix differs");
            expect_kind(
                open.read_bytes(&k, Some(ByteRange::From(len as u64))).await,
                ErrorKind::InvalidRange,
                "range at the end",
            )?;
        }
    }
    Ok(())
}

async fn encrypted_attachment_refuses_tampering(e: Arc<Env>, c: &'static str) -> R {
    let dir = tempfile::tempdir().ctx("tempdir")?;
    let key = format!("{c}/victim.bin");
    // Four records: three full, the last 3,443 bytes of content.
    let body = data(200_000, 5);
    let link = upload_encrypted(&e, &key, &body, dir.path()).await?;
    let raw = get(&e, &key, None).await?;
    let (head, rs) = (21usize, 65_536usize);
    let rec = |i: usize| &raw[head + i * rs..(head + (i + 1) * rs).min(raw.len())];
    let mut flipped = raw.clone();
    flipped[head + rs + 100] ^= 0x40;
    let swapped = [&raw[..head], rec(1), rec(0), rec(2), rec(3)].concat();
    let cut = raw[..head + 3 * rs].to_vec();
    let (base, frag) = link.split_once('#').ok_or("no fragment")?;
    let secret: Vec<String> = frag.split('.').map(str::to_string).collect();
    let flipped_part = |n: usize| {
        let mut parts = secret.clone();
        let mut b = parts[n].as_bytes().to_vec();
        b[0] = if b[0] == b'A' { b'B' } else { b'A' };
        parts[n] = String::from_utf8(b).unwrap_or_default();
        format!("{base}#{}", parts.join("."))
    };
    let (wrong_key, wrong_digest) = (flipped_part(1), flipped_part(2));
    let stored: [(&str, Option<&Vec<u8>>, &str); 5] = [
        ("a flipped bit", Some(&flipped), link.as_str()),
        ("swapped records", Some(&swapped), link.as_str()),
        ("a cut after a record", Some(&cut), link.as_str()),
        ("a wrong key", None, wrong_key.as_str()),
        ("a wrong digest", None, wrong_digest.as_str()),
    ];
    for (what, content, link) in stored {
        let body = content.unwrap_or(&raw);
        put(&e, &key, body).await?;
        for (path, m) in [
            ("one stream", sharing_manager(e.handler.clone())),
            ("ranges", ranged_manager(e.handler.clone())),
        ] {
            match download_link(&m, link).await? {
                Ok(_) => return Err(format!("{what} ({path}): the download succeeded")),
                Err(err) => {
                    ensure!(
                        err.kind() == ErrorKind::ChecksumMismatch,
                        "{what} ({path}): {:?} {}",
                        err.kind(),
                        err.error()
                    );
                    let shown = format!("{} {:?}", err.error(), err);
                    ensure!(
                        !shown.contains(&secret[1]) && !shown.contains(&secret[2]),
                        "{what} ({path}): the error shows the link's secret: {shown}"
                    );
                }
            }
        }
    }
    Ok(())
}

// ---------- listing like the peers: delimiter, start-after, limit ----------

/// `c/` holds a file, a directory with a subdirectory, a key that shares the
/// directory's first letter, and another directory.
async fn list_tree(e: &Env, c: &str) -> R {
    for k in ["a.txt", "d/1", "d/2", "d/e/3", "dz", "f/1"] {
        put(e, &format!("{c}/{k}"), b"x").await?;
    }
    Ok(())
}

/// `list_with` as names (`PRE ` before a common prefix), relative to `c/`.
async fn listed(
    e: &Env,
    c: &str,
    prefix: &str,
    opts: xferkit_core::ListOptions,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut s = e.handler.list_with(&format!("{c}/{prefix}"), &opts);
    while let Some(entry) = s.next().await {
        let entry = entry.ctx("list_with")?;
        let strip = |n: &str| n.strip_prefix(&format!("{c}/")).unwrap_or(n).to_string();
        out.push(match entry {
            xferkit_core::ListEntry::Object(o) => strip(&o.key),
            xferkit_core::ListEntry::Prefix(p) => format!("PRE {}", strip(&p)),
            other => format!("{other:?}"),
        });
    }
    Ok(out)
}

async fn list_delimiter_groups_directories(e: Arc<Env>, c: &'static str) -> R {
    use xferkit_core::ListOptions;
    list_tree(&e, c).await?;
    let dirs = ListOptions::default().with_delimiter("/");
    let top = listed(&e, c, "", dirs.clone()).await?;
    ensure!(
        top == ["a.txt", "PRE d/", "dz", "PRE f/"],
        "top level: {top:?}"
    );
    let inner = listed(&e, c, "d/", dirs.clone()).await?;
    ensure!(inner == ["d/1", "d/2", "PRE d/e/"], "d/: {inner:?}");
    // A string prefix, not only whole segments.
    let part = listed(&e, c, "d", dirs).await?;
    ensure!(part == ["PRE d/", "dz"], "prefix d: {part:?}");
    let flat = listed(&e, c, "", ListOptions::default()).await?;
    ensure!(
        flat == ["a.txt", "d/1", "d/2", "d/e/3", "dz", "f/1"],
        "no delimiter, in key order: {flat:?}"
    );
    Ok(())
}

async fn list_start_after_resumes_after_a_key(e: Arc<Env>, c: &'static str) -> R {
    use xferkit_core::ListOptions;
    list_tree(&e, c).await?;
    let after = |k: &str| ListOptions::default().with_start_after(format!("{c}/{k}"));
    let rest = listed(&e, c, "", after("d/2")).await?;
    ensure!(rest == ["d/e/3", "dz", "f/1"], "after d/2: {rest:?}");
    let none = listed(&e, c, "", after("f/1")).await?;
    ensure!(none.is_empty(), "after the last key: {none:?}");
    let dirs = listed(&e, c, "", after("a.txt").with_delimiter("/")).await?;
    ensure!(
        dirs == ["PRE d/", "dz", "PRE f/"],
        "after a.txt, by directory: {dirs:?}"
    );
    Ok(())
}

async fn list_limit_stops_after_n_entries(e: Arc<Env>, c: &'static str) -> R {
    use xferkit_core::ListOptions;
    list_tree(&e, c).await?;
    let two = listed(&e, c, "", ListOptions::default().with_limit(2)).await?;
    ensure!(two == ["a.txt", "d/1"], "limit 2: {two:?}");
    let dirs = ListOptions::default().with_delimiter("/").with_limit(3);
    let three = listed(&e, c, "", dirs).await?;
    ensure!(
        three == ["a.txt", "PRE d/", "dz"],
        "limit 3 by directory: {three:?}"
    );
    // Page by page, as a UI would: a limit, then start-after the last key.
    let page = ListOptions::default()
        .with_limit(4)
        .with_start_after(format!("{c}/d/1"));
    let next = listed(&e, c, "", page).await?;
    ensure!(next == ["d/2", "d/e/3", "dz", "f/1"], "next page: {next:?}");
    Ok(())
}

// ---------- server-side upload options ----------

/// Upload with one standard header set to `value`: stat and a download's
/// record report it, and the bytes come back as sent (a store must not
/// transcode on a Content-Encoding it does not know).
async fn header_round_trip(e: Arc<Env>, c: &'static str, name: &'static str, value: &str) -> R {
    let key = format!("{c}/h.txt");
    let mut headers = xferkit_core::ObjectHeaders::default();
    ensure!(headers.set(name, value), "{name} is no ObjectHeaders name");
    let opts = PutOptions::default().with_headers(headers.clone());
    let body = b"header test".to_vec();
    let up = e
        .handler
        .upload(
            &checked(&key)?,
            UploadSource::from_bytes(body.clone()),
            &opts,
            &TransferCtx::none(),
        )
        .await
        .ctx("upload")?;
    ensure!(
        up.headers == headers,
        "upload result {:?}, sent {headers:?}",
        up.headers
    );
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(
        st.headers == headers,
        "stat reports {:?}, sent {headers:?}",
        st.headers
    );
    let (dl, _) = e
        .handler
        .download_stream(&checked(&key)?, None)
        .await
        .ctx("download")?;
    ensure!(
        dl.headers == headers,
        "download reports {:?}, sent {headers:?}",
        dl.headers
    );
    ensure!(get(&e, &key, None).await? == body, "content changed");
    Ok(())
}

async fn header_cache_control_round_trips(e: Arc<Env>, c: &'static str) -> R {
    header_round_trip(e, c, "cache-control", "public, max-age=3600").await
}

async fn header_content_disposition_round_trips(e: Arc<Env>, c: &'static str) -> R {
    let v = "attachment; filename=\"report 1.txt\"";
    header_round_trip(e, c, "content-disposition", v).await
}

async fn header_content_encoding_round_trips(e: Arc<Env>, c: &'static str) -> R {
    // Not gzip: GCS would decompress it on download (transcoding).
    header_round_trip(e, c, "content-encoding", "x-xferkit-test").await
}

async fn header_content_language_round_trips(e: Arc<Env>, c: &'static str) -> R {
    header_round_trip(e, c, "content-language", "de-CH").await
}

/// The target's non-default storage class (or Azure tier) is kept and
/// reported by stat.
async fn storage_class_round_trips(e: Arc<Env>, c: &'static str) -> R {
    let Some(class) = e.storage_class.clone() else {
        return Err("the target names no storage class (Target::storage_class) to send".into());
    };
    let key = format!("{c}/cold.bin");
    let opts = PutOptions::default().with_storage_class(&class);
    let src = UploadSource::from_bytes(&b"cold"[..]);
    let ctx = TransferCtx::none();
    e.handler
        .upload(&checked(&key)?, src, &opts, &ctx)
        .await
        .ctx("upload")?;
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(
        st.storage_class.as_deref().map(str::to_ascii_lowercase)
            == Some(class.to_ascii_lowercase()),
        "stat reports storage class {:?}, sent {class:?}",
        st.storage_class
    );
    Ok(())
}

/// SSE with service-managed keys is reported by stat.
async fn sse_service_managed_is_reported(e: Arc<Env>, c: &'static str) -> R {
    let key = format!("{c}/sse.bin");
    let opts =
        PutOptions::default().with_encryption(xferkit_core::ServerEncryption::ServiceManaged);
    let src = UploadSource::from_bytes(&b"sse"[..]);
    let ctx = TransferCtx::none();
    e.handler
        .upload(&checked(&key)?, src, &opts, &ctx)
        .await
        .ctx("upload")?;
    let st = e.handler.stat(&checked(&key)?).await.ctx("stat")?;
    ensure!(
        st.encryption.is_some(),
        "stat reports no encryption: {st:?}"
    );
    Ok(())
}

/// Each server-side option the store's capabilities leave out fails the
/// upload with `NotSupported` naming it, and nothing is stored.
async fn server_options_the_store_cannot_honour_are_refused(e: Arc<Env>, c: &'static str) -> R {
    use xferkit_core::ServerEncryption as E;
    let caps = e.handler.capabilities();
    let mut headers = xferkit_core::ObjectHeaders::default();
    headers.content_language = Some("de".into());
    let key32 = xferkit_core::Secret::new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    let kms = E::Kms {
        key_id: Some("k".into()),
        bucket_key: None,
    };
    let options = [
        (
            caps.storage_class,
            "storage class",
            PutOptions::default().with_storage_class("COLD"),
        ),
        (
            caps.object_headers,
            "content-language",
            PutOptions::default().with_headers(headers),
        ),
        (caps.tags, "tags", PutOptions::default().with_tag("k", "v")),
        (
            caps.sse_service_managed,
            "sse = s3",
            PutOptions::default().with_encryption(E::ServiceManaged),
        ),
        (
            caps.sse_kms,
            "sse = kms",
            PutOptions::default().with_encryption(kms),
        ),
        (
            caps.sse_customer_key,
            "sse = customer",
            PutOptions::default().with_encryption(E::CustomerKey(key32)),
        ),
        (
            caps.encryption_scope,
            "encryption scope",
            PutOptions::default().with_encryption(E::Scope("s".into())),
        ),
    ];
    for (i, (honoured, name, opts)) in options.into_iter().enumerate() {
        if honoured {
            continue;
        }
        let key = format!("{c}/refused-{i}");
        let src = UploadSource::from_bytes(&b"x"[..]);
        let r = e
            .handler
            .upload(&checked(&key)?, src, &opts, &TransferCtx::none())
            .await;
        match r {
            Err(err) if err.kind() == ErrorKind::NotSupported && err.to_string().contains(name) => {
            }
            other => {
                return Err(format!(
                    "{name}: expected NotSupported naming it, got {other:?}"
                ));
            }
        }
        expect_kind(
            e.handler.stat(&checked(&key)?).await,
            ErrorKind::NotFound,
            "stat after refusal",
        )?;
    }
    Ok(())
}

/// A server-side copy keeps the four headers, of a small object (one copy
/// request) and of a multipart-sized one (a multipart copy on S3).
async fn copy_keeps_object_headers(e: Arc<Env>, c: &'static str) -> R {
    let mut headers = xferkit_core::ObjectHeaders::default();
    for (name, v) in xferkit_core::ObjectHeaders::NAMES.into_iter().zip([
        "private, max-age=10",
        "inline; filename=\"c.bin\"",
        "x-xferkit-test",
        "fr",
    ]) {
        headers.set(name, v);
    }
    let opts = PutOptions::default().with_headers(headers.clone());
    for (i, len) in [10, e.multipart_size.max(1 << 20) as usize + 1234]
        .into_iter()
        .enumerate()
    {
        let (from, to) = (format!("{c}/src{i}"), format!("{c}/dst{i}"));
        let src = UploadSource::from_bytes(data(len, 3));
        let ctx = TransferCtx::none();
        e.handler
            .upload(&checked(&from)?, src, &opts, &ctx)
            .await
            .ctx("upload")?;
        let copied = e
            .handler
            .copy(&checked(&from)?, &checked(&to)?)
            .await
            .ctx("copy")?;
        let st = e
            .handler
            .stat(&checked(&to)?)
            .await
            .ctx("stat of the copy")?;
        ensure!(
            st.headers == headers && copied.headers == headers,
            "copy of {len} bytes: stat {:?}, copy result {:?}, sent {headers:?}",
            st.headers,
            copied.headers
        );
        for k in [&from, &to] {
            e.handler.delete(&checked(k)?).await.ctx("delete")?;
        }
    }
    Ok(())
}
