//! Configuration: which stores exist and how each is reached.
//!
//! Layers, later ones overriding earlier ones (figment):
//! 1. embedded defaults: `default_store = "local"`, `concurrency = 4`, and a
//!    store `local` (`backend = "local"`) under the user data directory
//!    (`~/.local/share/xferkit/files` on Linux), so a first run needs nothing;
//! 2. one TOML file: `--config FILE`, else `$XFERKIT_CONFIG`, else
//!    `./xferkit.toml`, else `CONFIG_DIR/xferkit/config.toml` (the first that
//!    applies; an explicitly named file must exist);
//! 3. environment variables `XFERKIT_…`, `__` separating levels:
//!    `XFERKIT_DEFAULT_STORE=media`, `XFERKIT_STORES__MEDIA__BUCKET=photos`.
//!
//! Errors name the key and where its value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use futures::future::BoxFuture;
use xferkit_core::{Backend, BuildContext, DynHandler, Error, Registry, Result};

/// Top-level keys (anything else in the file is an error).
pub const TOP_KEYS: &[&str] = &[
    "default_store",
    "concurrency",
    "stores",
    "thumbnail",
    "retry",
    "state_dir",
    "download",
    "limits",
    "links",
];

/// Keys every store accepts, whatever its backend.
pub const STORE_KEYS: &[&str] = &["backend", "dedupe"];

/// Builds the store called NAME from `stores.NAME` (a row of [`backends!`]).
type Build = for<'a> fn(&'a Figment, &'a str) -> BoxFuture<'a, Result<DynHandler>>;

/// [`Backend::endpoints`] of store `NAME`'s table, as a row of the table.
type Endpoints = fn(&Figment, &str) -> Vec<String>;

/// The one table of backends: `"KIND" => crate::StoreType as module`: the
/// `backend = "KIND"` value (also the name of its Cargo feature), the type
/// implementing [`Backend`] for it, and the name its crate is re-exported
/// under in [`crate::backends`]. A row whose feature is off is still known,
/// so a config naming it gets "rebuild with feature `KIND`".
macro_rules! backends {
    ($($kind:literal => $krate:ident :: $store:ident as $module:ident,)*) => {
        /// Backends this build knows of, compiled in or not.
        pub const ALL_BACKENDS: &[&str] = &[$($kind),*];

        /// The backends compiled in, by [`Backend::KIND`].
        const BUILDERS: &[(&str, Build, Endpoints)] = &[
            $(#[cfg(feature = $kind)] (
                <$krate::$store as Backend>::KIND,
                build_with::<$krate::$store>,
                endpoints_with::<$krate::$store>,
            ),)*
        ];

        /// Re-exports of the compiled-in backends.
        pub mod backends {
            $(#[cfg(feature = $kind)] pub use $krate as $module;)*
        }
    };
}

backends! {
    "local" => xferkit_local::LocalStore as local,
    "s3" => xferkit_s3::S3Store as s3,
    "gcs" => xferkit_gcs::GcsStore as gcs,
    "azure" => xferkit_azure::AzureStore as azure,
    "memory" => xferkit_memory::MemoryStore as memory,
}

/// Global settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[non_exhaustive]
pub struct Settings {
    /// Store used when a command names none.
    pub default_store: String,
    /// Transfers the manager runs at once.
    pub concurrency: usize,
    /// Thumbnails of image uploads (`[thumbnail]`).
    #[serde(default)]
    pub thumbnail: ThumbnailSettings,
    /// How failed requests are retried (`[retry]`).
    #[serde(default)]
    pub retry: RetrySettings,
    /// How big downloads are split into ranged GETs (`[download]`).
    #[serde(default)]
    pub download: DownloadSettings,
    /// Caps on what transfers may take (`[limits]`).
    #[serde(default)]
    pub limits: LimitSettings,
    /// What a downloaded http(s) link may reach (`[links]`).
    #[serde(default)]
    pub links: LinkSettings,
    /// Where interrupted uploads keep their journals (resume after a crash);
    /// `None`: [`default_state_dir`].
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Store names, in order.
    #[serde(skip)]
    pub store_names: Vec<String>,
}

/// `[download]`: ranged downloads (every store with range support, and
/// http(s) links). See [`xferkit_core::DownloadOptions`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DownloadSettings {
    /// Bytes per ranged GET (at least 64 KiB). Unset: 16 MiB, grown for big
    /// objects (see [`xferkit_core::DownloadOptions::auto_part_size`]); set:
    /// exactly this.
    pub part_size: Option<u64>,
    /// Ranged GETs in flight per download (1..=64).
    pub concurrency: usize,
    /// Objects at least this big are fetched in ranges; smaller ones in one GET.
    pub parallel_threshold: u64,
}

impl Default for DownloadSettings {
    fn default() -> Self {
        let d = xferkit_core::DownloadOptions::default();
        DownloadSettings {
            part_size: None,
            concurrency: d.concurrency,
            parallel_threshold: d.parallel_threshold,
        }
    }
}

impl DownloadSettings {
    /// The engine options these settings stand for.
    pub fn options(&self) -> xferkit_core::DownloadOptions {
        let d = xferkit_core::DownloadOptions::default();
        match self.part_size {
            Some(bytes) => d.with_part_size(bytes),
            None => d,
        }
        .with_concurrency(self.concurrency)
        .with_parallel_threshold(self.parallel_threshold)
    }

    fn check(&self, figment: &Figment) -> Result<()> {
        if let Some(part_size) = self.part_size
            && part_size < 64 * 1024
        {
            return Err(Error::invalid_config(format!(
                "download.part_size = {} (in {}) must be at least 65536 bytes",
                part_size,
                origin(figment, "download.part_size")
            )));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(Error::invalid_config(format!(
                "download.concurrency = {} (in {}) must be between 1 and 64",
                self.concurrency,
                origin(figment, "download.concurrency")
            )));
        }
        Ok(())
    }
}

/// `[limits]`: caps on what the manager's transfers may take.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitSettings {
    /// Bytes per second for all transfers of the manager together
    /// (`"10MiB"`, `"500 KB/s"`, or an integer); `None`: no cap.
    #[serde(deserialize_with = "rate")]
    pub bandwidth: Option<u64>,
}

/// Parse a rate: bytes per second as an integer, or a size with a unit and
/// an optional `/s` (`"10MiB"`, `"10 MiB/s"`, `"500KB/s"`, `"1.5GB"`);
/// `"0"`, `"off"` or `""`: no cap.
pub fn parse_rate(text: &str) -> std::result::Result<Option<u64>, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    if t.is_empty() || t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bytes = match t.parse::<u64>() {
        Ok(n) => n,
        Err(_) => t
            .parse::<bytesize::ByteSize>()
            .map_err(|_| {
                format!("{text:?} is not a rate (bytes per second, e.g. \"10MiB\" or \"500KB/s\")")
            })?
            .as_u64(),
    };
    Ok((bytes > 0).then_some(bytes))
}

/// A number in the config: an integer, or text with a unit.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Raw {
    Int(u64),
    Text(String),
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Int(n) => Ok((n > 0).then_some(n)),
        Raw::Text(t) => parse_rate(&t).map_err(serde::de::Error::custom),
    }
}

/// `[links]`: what a downloaded http(s) link may reach. By default a link
/// may not lead to this machine or its network (loopback, private,
/// link-local, ... addresses), except to a configured store's endpoint or
/// `serve_url`; see [`crate::links`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LinkSettings {
    /// Let links reach private and local addresses too.
    pub allow_private: bool,
    /// Hosts a link may reach whatever they resolve to: `name` (any port)
    /// or `name:port`.
    pub allow_hosts: Vec<String>,
    /// Redirects followed at most (0..=20); each hop is checked again.
    pub max_redirects: usize,
    /// Largest object a link may deliver (`"4GiB"`, or bytes), checked on the
    /// announced length and on the bytes received.
    #[serde(deserialize_with = "size")]
    pub max_size: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            allow_private: false,
            allow_hosts: Vec::new(),
            max_redirects: 5,
            max_size: 4 << 30,
        }
    }
}

impl LinkSettings {
    fn check(&self, figment: &Figment) -> Result<()> {
        let bad = |key: &str, what: String| {
            Err(Error::invalid_config(format!(
                "links.{key} {what} (in {})",
                origin(figment, &format!("links.{key}"))
            )))
        };
        if self.max_redirects > 20 {
            return bad(
                "max_redirects",
                format!("= {} must be between 0 and 20", self.max_redirects),
            );
        }
        if self.max_size == 0 {
            return bad("max_size", "must be at least 1 byte".into());
        }
        for h in &self.allow_hosts {
            let h = h.trim();
            if h.is_empty() || h.contains(['/', '?', '#', '@', ' ']) {
                return bad(
                    "allow_hosts",
                    format!("has {h:?}, which is not a host name or host:port (no scheme or path)"),
                );
            }
        }
        Ok(())
    }
}

/// Parse a size: bytes as an integer, or a size with a unit (`"4GiB"`,
/// `"500 MB"`, `"1.5KiB"`).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    t.parse::<u64>()
        .ok()
        .or_else(|| t.parse::<bytesize::ByteSize>().ok().map(|b| b.as_u64()))
        .ok_or_else(|| format!("{text:?} is not a size (bytes, or e.g. \"4GiB\", \"500 MB\")"))
}

/// A size in bytes: an integer, or a size with a unit (`"4GiB"`, `"500 MB"`).
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// `[thumbnail]`: previews of image uploads (feature `thumbnail`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ThumbnailSettings {
    /// Make a thumbnail when an image (JPEG, PNG, WebP, GIF) is uploaded.
    pub enabled: bool,
    /// Longest side of the thumbnail, in pixels (16..=4096).
    pub max_side: u32,
    /// Images with more pixels than this are not decoded (the thumbnail
    /// fails with a clear error; the upload still succeeds).
    pub max_pixels: u64,
}

impl Default for ThumbnailSettings {
    fn default() -> Self {
        ThumbnailSettings {
            enabled: true,
            max_side: 320,
            max_pixels: 50_000_000,
        }
    }
}

/// `[retry]`: how every store retries a request that failed transiently
/// (5xx, throttling, timeouts, connection resets). Durations are humantime
/// strings (`"200ms"`, `"10s"`, `"2m"`). See [`xferkit_core::RetryPolicy`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySettings {
    /// Tries per request, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Upper bound of the first wait (full jitter, doubling per try).
    #[serde(deserialize_with = "humantime_duration")]
    pub initial_backoff: std::time::Duration,
    /// Upper bound of any computed wait.
    #[serde(deserialize_with = "humantime_duration")]
    pub max_backoff: std::time::Duration,
    /// No retry starts later than this after a request's first try.
    #[serde(deserialize_with = "humantime_duration")]
    pub max_elapsed: std::time::Duration,
    /// One try is abandoned (and retried) after this long.
    #[serde(deserialize_with = "humantime_duration")]
    pub attempt_timeout: std::time::Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        let p = xferkit_core::RetryPolicy::default();
        RetrySettings {
            max_attempts: p.max_attempts,
            initial_backoff: p.initial_backoff,
            max_backoff: p.max_backoff,
            max_elapsed: p.max_elapsed,
            attempt_timeout: p.attempt_timeout,
        }
    }
}

impl RetrySettings {
    /// The policy these settings describe.
    pub fn policy(&self) -> xferkit_core::RetryPolicy {
        xferkit_core::RetryPolicy::default()
            .with_max_attempts(self.max_attempts)
            .with_initial_backoff(self.initial_backoff)
            .with_max_backoff(self.max_backoff)
            .with_max_elapsed(self.max_elapsed)
            .with_attempt_timeout(self.attempt_timeout)
    }

    /// Read `[retry]` (defaults when absent) and check its values.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        let s: RetrySettings = match figment.find_value("retry") {
            Ok(_) => figment.extract_inner("retry").map_err(figment_err)?,
            Err(_) => RetrySettings::default(),
        };
        if s.max_attempts == 0 {
            return Err(Error::invalid_config(format!(
                "retry.max_attempts must be at least 1 (in {})",
                origin(figment, "retry.max_attempts")
            )));
        }
        if s.attempt_timeout.is_zero() {
            return Err(Error::invalid_config(format!(
                "retry.attempt_timeout must be more than 0 (in {})",
                origin(figment, "retry.attempt_timeout")
            )));
        }
        Ok(s)
    }
}

fn humantime_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<std::time::Duration, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration ({e}); write e.g. \"200ms\", \"10s\", \"2m\""
        ))
    })
}

/// Where upload journals live by default: `<state dir>/xferkit`
/// (`~/.local/state/xferkit` on Linux), else under the data directory.
pub fn default_state_dir() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("xferkit")
}

/// `state_dir` from the configuration, or the default.
#[allow(dead_code)] // in a build without any backend feature
fn state_dir(figment: &Figment) -> PathBuf {
    figment
        .extract_inner::<PathBuf>("state_dir")
        .unwrap_or_else(|_| default_state_dir())
}

/// Where a local store whose table names no `root` keeps its files:
/// [`xferkit_local::default_root`].
#[cfg(feature = "local")]
pub fn default_local_root() -> PathBuf {
    xferkit_local::default_root()
}

/// The config file that applies, if any.
pub fn config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.is_file() {
            return Err(Error::invalid_config(format!(
                "config file {} (from --config) does not exist or is not a file",
                p.display()
            )));
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("XFERKIT_CONFIG").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::invalid_config(format!(
                "config file {} (from XFERKIT_CONFIG) does not exist or is not a file",
                p.display()
            )));
        }
        return Ok(Some(p));
    }
    let local = PathBuf::from("xferkit.toml");
    if local.is_file() {
        return Ok(Some(local));
    }
    Ok(dirs::config_dir()
        .map(|d| d.join("xferkit").join("config.toml"))
        .filter(|p| p.is_file()))
}

/// Assemble the layered configuration.
pub fn figment_for(explicit: Option<&Path>) -> Result<Figment> {
    let mut f = defaults();
    if let Some(file) = config_file(explicit)? {
        check_toml(&file)?;
        f = f.merge(Toml::file_exact(file));
    }
    Ok(f.merge(env()))
}

/// Read and parse `file` up front, so a malformed file is reported with its
/// path and position on one line.
fn check_toml(file: &Path) -> Result<()> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| Error::InvalidConfig {
        message: format!("cannot read config file {shown}"),
        source: Some(e.into()),
    })?;
    if let Err(e) = text.parse::<toml::Table>() {
        let detail = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" at line {line}")
            })
            .unwrap_or_default();
        return Err(Error::invalid_config(format!(
            "config file {shown} is not valid TOML{at}: {detail}"
        )));
    }
    Ok(())
}

/// The embedded defaults alone.
pub fn defaults() -> Figment {
    Figment::new()
        .merge(Serialized::default("default_store", "local"))
        .merge(Serialized::default(
            "concurrency",
            xferkit_core::manager::DEFAULT_CONCURRENCY,
        ))
        // Its `root`: the local backend's default.
        .merge(Serialized::default("stores.local.backend", "local"))
}

/// `XFERKIT_*` variables that address config keys (others, like
/// `XFERKIT_CONFIG`, are ignored here).
pub fn env() -> Env {
    Env::prefixed("XFERKIT_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        let top = k.split(['.']).next().unwrap_or("");
        let top = top.split("__").next().unwrap_or("");
        TOP_KEYS.contains(&top)
    })
}

/// Where the value at `key` came from, for error messages.
pub fn origin(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(m) => match &m.source {
            Some(src) => format!("{} {src}", m.name),
            None => m.name.to_string(),
        },
        None => "the configuration".to_string(),
    }
}

fn figment_err(e: figment::Error) -> Error {
    // figment's message names the key and the file or variable it came from.
    // Parse errors span several lines (a source excerpt): keep one line.
    let msg = e
        .into_iter()
        .map(|mut e| {
            // figment 0.10 appends an `extract_inner("stores.NAME")` path
            // after the field (`bucket.stores.NAME`): put it in front.
            let n = e.path.len();
            if n > 2 && e.path[n - 2] == "stores" {
                e.path.rotate_right(2);
            }
            // With a key: `KEY: what is wrong`, the key as written in the
            // file (figment's own text prefixes the profile, `default.`).
            let text = if e.path.is_empty() {
                e.to_string()
            } else {
                format!("{}: {}", e.path.join("."), e.kind)
            };
            let mut line = text
                .lines()
                .filter(|l| !l.contains('|') && !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(": ");
            if let Some(m) = e.metadata.as_ref() {
                let src = match &m.source {
                    Some(src) => src.to_string(),
                    None => m.name.to_string(),
                };
                if !line.contains(&src) {
                    line = format!("{line} (in {src})");
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ");
    Error::InvalidConfig {
        message: msg,
        source: None,
    }
}

impl Settings {
    /// Read and check the global settings.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        let top = figment.data().map_err(figment_err)?;
        for dict in top.values() {
            for k in dict.keys() {
                if !TOP_KEYS.contains(&k.as_str()) {
                    return Err(Error::invalid_config(format!(
                        "unknown key `{k}` in {} (known top-level keys: {})",
                        origin(figment, k),
                        TOP_KEYS.join(", ")
                    )));
                }
            }
        }
        let mut s: Settings = figment.extract().map_err(figment_err)?;
        s.retry = RetrySettings::from_figment(figment)?;
        s.download.check(figment)?;
        s.links.check(figment)?;
        let stores: BTreeMap<String, figment::value::Value> =
            figment.extract_inner("stores").map_err(figment_err)?;
        s.store_names = stores.keys().cloned().collect();
        if !(16..=4096).contains(&s.thumbnail.max_side) {
            return Err(Error::invalid_config(format!(
                "thumbnail.max_side = {} (in {}) must be between 16 and 4096",
                s.thumbnail.max_side,
                origin(figment, "thumbnail.max_side")
            )));
        }
        if s.concurrency == 0 {
            return Err(Error::invalid_config(format!(
                "concurrency must be at least 1 (in {})",
                origin(figment, "concurrency")
            )));
        }
        if !s.store_names.contains(&s.default_store) {
            return Err(Error::invalid_config(format!(
                "default_store = {:?} (in {}) names no configured store (have: {})",
                s.default_store,
                origin(figment, "default_store"),
                s.store_names.join(", ")
            )));
        }
        Ok(s)
    }
}

/// Check that `stores.NAME` has only keys its backend accepts.
#[allow(dead_code)] // in a build without any backend feature
fn check_keys(figment: &Figment, name: &str, backend: &str, keys: &[&str]) -> Result<()> {
    let path = format!("stores.{name}");
    let dict = figment
        .find_value(&path)
        .map_err(figment_err)?
        .into_dict()
        .ok_or_else(|| {
            Error::invalid_config(format!(
                "{path} must be a table (in {})",
                origin(figment, &path)
            ))
        })?;
    for k in dict.keys() {
        if !STORE_KEYS.contains(&k.as_str()) && !keys.contains(&k.as_str()) {
            let key = format!("{path}.{k}");
            return Err(Error::invalid_config(format!(
                "unknown key `{key}` in {} (backend `{backend}` accepts: backend, dedupe, {})",
                origin(figment, &key),
                keys.join(", ")
            )));
        }
    }
    Ok(())
}

#[allow(dead_code)] // in a build without any backend feature
fn extract<T: serde::de::DeserializeOwned>(figment: &Figment, name: &str) -> Result<T> {
    figment
        .extract_inner(&format!("stores.{name}"))
        .map_err(figment_err)
}

/// Build one store from `stores.NAME`, by the row of its `backend`.
pub async fn build_store(figment: &Figment, name: &str) -> Result<DynHandler> {
    let key = format!("stores.{name}.backend");
    let backend: String = figment.extract_inner(&key).map_err(|_| {
        Error::invalid_config(format!(
            "{key} is missing or not a string (store defined in {}; expected one of: {})",
            origin(figment, &format!("stores.{name}")),
            ALL_BACKENDS.join(", ")
        ))
    })?;
    match BUILDERS.iter().find(|(kind, ..)| *kind == backend) {
        Some((_, build, _)) => build(figment, name).await,
        None if ALL_BACKENDS.contains(&backend.as_str()) => Err(Error::invalid_config(format!(
            "{key} = {backend:?} (in {}): this build lacks backend `{backend}`; rebuild with feature `{backend}`",
            origin(figment, &key)
        ))),
        None => Err(Error::invalid_config(format!(
            "{key} = {backend:?} (in {}) is not a known backend (expected one of: {})",
            origin(figment, &key),
            ALL_BACKENDS.join(", ")
        ))),
    }
}

/// [`build_backend`] as a row of the table.
#[allow(dead_code)] // in a build without any backend feature
fn build_with<'a, B: Backend>(
    figment: &'a Figment,
    name: &'a str,
) -> BoxFuture<'a, Result<DynHandler>> {
    Box::pin(async move {
        let store: DynHandler = std::sync::Arc::new(build_backend::<B>(figment, name).await?);
        Ok(store)
    })
}

/// [`Backend::endpoints`] of `stores.NAME`; none for a table that does not
/// read (building it reports why).
#[allow(dead_code)] // in a build without any backend feature
fn endpoints_with<B: Backend>(figment: &Figment, name: &str) -> Vec<String> {
    extract::<B::Config>(figment, name)
        .map(|c| B::endpoints(&c))
        .unwrap_or_default()
}

/// Store `name` of backend `B`: the keys of `stores.NAME` checked against
/// [`Backend::keys`], the table read into its config, the store built with
/// the retry policy, journal directory and server-side upload defaults.
#[allow(dead_code)] // in a build without any backend feature
async fn build_backend<B: Backend>(figment: &Figment, name: &str) -> Result<B> {
    let keys = B::keys();
    check_keys(figment, name, B::KIND, &keys)?;
    let config: B::Config = extract(figment, name)?;
    let ctx = BuildContext::default()
        .with_retry(RetrySettings::from_figment(figment)?.policy())
        .with_state_dir(Some(state_dir(figment)))
        .with_upload(extract(figment, name)?);
    B::build(name, config, &ctx)
        .await
        .map_err(|e| in_table(figment, name, &keys, e))
}

/// A backend's configuration error put in its place: the backend names a
/// key relative to its table (`part_size = 1 must be ...`) or speaks of the
/// whole table; this adds `stores.NAME.` (or `stores.NAME: `) in front, and
/// where the key's value (or, for one not set, the table) came from.
#[allow(dead_code)] // in a build without any backend feature
fn in_table(figment: &Figment, name: &str, keys: &[&str], e: Error) -> Error {
    let Error::InvalidConfig { message, source } = e else {
        return e;
    };
    let table = format!("stores.{name}");
    let first = message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default();
    let (message, at) = if keys.contains(&first) || STORE_KEYS.contains(&first) {
        let key = format!("{table}.{first}");
        let at = match figment.find_metadata(&key) {
            Some(_) => key,
            None => table.clone(),
        };
        (format!("{table}.{message}"), at)
    } else {
        (format!("{table}: {message}"), table.clone())
    };
    let message = if message.contains("(in ") {
        message
    } else {
        format!("{message} (in {})", origin(figment, &at))
    };
    Error::InvalidConfig { message, source }
}

/// Store `name` as a concrete local store (`xfer serve` needs its signer).
#[cfg(feature = "local")]
pub async fn build_local_store(figment: &Figment, name: &str) -> Result<xferkit_local::LocalStore> {
    use xferkit_local::LocalStore;
    let key = format!("stores.{name}.backend");
    match figment.extract_inner::<String>(&key) {
        Ok(b) if b == LocalStore::KIND => build_backend::<LocalStore>(figment, name).await,
        Ok(b) => Err(Error::invalid_config(format!(
            "store {name:?} has backend {b:?}; only local stores are served by `xfer serve` \
             (S3, GCS and Azure sign their own URLs)"
        ))),
        Err(_) => Err(Error::invalid_config(format!(
            "no store named {name:?} is configured"
        ))),
    }
}

/// Build every configured store (plus the `http` link store) into a registry.
pub async fn build_registry(figment: &Figment, settings: &Settings) -> Result<Registry> {
    let mut reg = Registry::new();
    let mut sharing = crate::Sharing::new();
    for name in &settings.store_names {
        if name == "http" {
            return Err(Error::invalid_config(
                "stores.http: the store name `http` is reserved for plain http(s) links",
            ));
        }
        reg.register(build_store(figment, name).await?);
        let key = format!("stores.{name}.dedupe");
        if let Ok(mode) = figment.extract_inner::<String>(&key) {
            let what = format!("{key} (in {})", origin(figment, &key));
            sharing = sharing.with_dedupe(name, crate::Dedupe::parse(&mode, &what)?);
        } else if figment.find_value(&key).is_ok() {
            return Err(Error::invalid_config(format!(
                "{key} (in {}) must be a string: \"content\" or \"off\"",
                origin(figment, &key)
            )));
        }
    }
    reg.set_default(&settings.default_store)?;
    #[cfg(feature = "thumbnail")]
    if settings.thumbnail.enabled {
        sharing = sharing.with_thumbnailer(std::sync::Arc::new(
            crate::thumbnail::ImageThumbnailer::new(
                settings.thumbnail.max_side,
                settings.thumbnail.max_pixels,
            ),
        ));
    }
    reg.set_layer(std::sync::Arc::new(sharing));
    #[cfg(feature = "http")]
    reg.register(std::sync::Arc::new(crate::HttpStore::with_policy(
        link_policy(figment, settings),
    )));
    Ok(reg)
}

/// The `[links]` policy, trusting every configured store's endpoint (and
/// `serve_url`): links to the stores this process talks to anyway.
#[cfg(feature = "http")]
pub fn link_policy(figment: &Figment, settings: &Settings) -> crate::LinkPolicy {
    let l = &settings.links;
    let mut policy = crate::LinkPolicy {
        allow_private: l.allow_private,
        allow_hosts: l.allow_hosts.clone(),
        max_redirects: l.max_redirects,
        max_size: l.max_size,
        ..Default::default()
    };
    for name in &settings.store_names {
        let backend: Option<String> = figment
            .extract_inner(&format!("stores.{name}.backend"))
            .ok();
        if let Some((.., endpoints)) = BUILDERS
            .iter()
            .find(|(kind, ..)| Some(*kind) == backend.as_deref())
        {
            for endpoint in endpoints(figment, name) {
                policy = policy.trust_endpoint(&endpoint);
            }
        }
    }
    policy
}

#[cfg(all(
    test,
    feature = "http",
    feature = "s3",
    feature = "gcs",
    feature = "azure",
    feature = "memory"
))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use figment::providers::{Format, Toml};

    /// Each backend names its endpoints (`Backend::endpoints`); the facade
    /// knows none of their keys.
    #[test]
    fn the_link_policy_trusts_what_each_backend_names() {
        let toml = r#"
            default_store = "m"
            [stores.m]
            backend = "memory"
            [stores.s]
            backend = "s3"
            bucket = "b"
            endpoint_url = "http://127.0.0.1:9000"
            [stores.g]
            backend = "gcs"
            bucket = "b"
            storage_endpoint = "http://127.0.0.1:4443"
            [stores.a]
            backend = "azure"
            container = "files"
            connection_string = "UseDevelopmentStorage=true"
            [stores.l]
            backend = "local"
            root = "/tmp/x"
            serve_url = "http://127.0.0.1:8080/files"
        "#;
        let figment = super::defaults().merge(Toml::string(toml));
        let settings = super::Settings::from_figment(&figment).unwrap();
        let mut trusted = super::link_policy(&figment, &settings).trusted;
        trusted.sort();
        assert_eq!(
            trusted,
            [
                "127.0.0.1:10000",
                "127.0.0.1:4443",
                "127.0.0.1:8080",
                "127.0.0.1:9000"
            ]
        );
    }
}
