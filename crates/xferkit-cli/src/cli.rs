//! The command line, as clap parses it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

/// Move files between this machine and its storage (local, S3, GCS, Azure), by URL.
#[derive(Debug, Parser)]
#[command(name = "xfer", version, propagate_version = true)]
#[command(
    after_help = "Configuration: --config FILE, else $XFERKIT_CONFIG, else ./xferkit.toml, \
else ~/.config/xferkit/config.toml; with none, a local store under the user data directory.\n\
Logging: $XFERKIT_LOG (tracing filter, default `warn`); -v, -vv, -vvv raise xferkit's own level."
)]
pub struct Cli {
    /// Configuration file (must exist).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// No progress bars or warnings; results still go to stdout.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Results as JSON (one document, or one per line for `ls` and `rm`).
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (repeat for more).
    #[arg(long, short, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Cap the rate of all transfers together, bytes per second ("10MiB",
    /// "500KB/s"; "0" or "off": none). Overrides `limits.bandwidth`.
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<Rate>,

    /// Let downloaded http(s) links reach this machine and private networks
    /// (loopback, 10/8, 192.168/16, link-local, ...), which are refused by
    /// default. Sets `links.allow_private`; `links.allow_hosts` allows single hosts.
    #[arg(long, global = true)]
    pub allow_private_links: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// A `--bwlimit` value: bytes per second, `None` for no cap.
#[derive(Debug, Clone, Copy)]
pub struct Rate(pub Option<u64>);

/// `START-END` (inclusive), `START-` or `-N`.
fn parse_range(text: &str) -> Result<xferkit::ByteRange, String> {
    use xferkit::ByteRange;
    let bad = || format!("{text:?} is not a range (START-END, START- or -N, in bytes)");
    let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    match (a.trim(), b.trim()) {
        ("", n) => Ok(ByteRange::Suffix(num(n)?)),
        (start, "") => Ok(ByteRange::From(num(start)?)),
        (start, end) => {
            let (start, end) = (num(start)?, num(end)?);
            if end < start {
                return Err(bad());
            }
            Ok(ByteRange::Bounded {
                start,
                end: end.saturating_add(1),
            })
        }
    }
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    xferkit::config::parse_rate(text).map(Rate)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a local file; prints its URL.
    Upload {
        /// The local file, or `-` for stdin (needs `--key`).
        file: PathBuf,
        /// Store to upload to (default: the configured default store).
        #[arg(long, short)]
        store: Option<String>,
        /// Key within the store (default: the file's name).
        // An OsString so that a key that is not UTF-8 gets xfer's one-line
        // error naming it rather than clap's usage text.
        #[arg(long, short)]
        key: Option<OsString>,
        /// MIME type (default: guessed from the key).
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        /// Title, stored as object metadata `title`.
        #[arg(long)]
        title: Option<String>,
        /// Message, stored as object metadata `message`.
        #[arg(long)]
        message: Option<String>,
        /// Fail if an object already exists under the key.
        #[arg(long)]
        if_not_exists: bool,
        /// Also make a shareable URL valid this long (`15m`, `1h`, `7days`)
        /// and print it instead of the canonical URL: S3/GCS presigned, Azure
        /// SAS, or a signed `xfer serve` URL for a local store.
        #[arg(long, value_name = "DURATION", value_parser = parse_expiry)]
        share: Option<Duration>,
        /// Do not store a thumbnail next to an image.
        #[arg(long)]
        no_thumbnail: bool,
        /// Encrypt end to end with a fresh key (RFC 8188 aes128gcm): the
        /// store gets only ciphertext; prints the link with the key and the
        /// ciphertext's digest in its `#fragment` (keep it secret). No
        /// thumbnail is made.
        #[arg(long)]
        encrypt: bool,
        #[command(flatten)]
        server: Box<ServerArgs>,
    },
    /// Download an object (or a plain http(s) link) to a local file.
    Download {
        /// Object URL (`s3://bucket/key`, `file:///…`, `https://…`).
        url: String,
        /// Destination file or existing directory (default: the URL's last
        /// path segment, in the current directory); `-` writes to stdout, as
        /// `xfer cat` does.
        dest: Option<PathBuf>,
        /// Overwrite an existing destination file.
        #[arg(long, short)]
        force: bool,
    },
    /// List objects under a URL prefix (size, last modified, URL), and
    /// directories (`PRE`) unless `-r`.
    Ls {
        /// URL prefix (`s3://bucket/photos/`); default: all of `--store` or the default store.
        prefix: Option<String>,
        /// Store to list (instead of a URL prefix).
        #[arg(long, short, conflicts_with = "prefix")]
        store: Option<String>,
        /// Every object under the prefix; without it, what is under the
        /// next `/` is one `PRE name/` line, as `aws s3 ls` shows it.
        #[arg(long, short)]
        recursive: bool,
    },
    /// Write an object (or a byte range of it) to stdout.
    Cat {
        /// Object URL, or a plain http(s) link.
        url: String,
        /// Bytes to write: `START-END` (inclusive), `START-`, or `-N` (the
        /// last N), as an HTTP Range.
        #[arg(long, value_name = "RANGE", value_parser = parse_range, allow_hyphen_values = true)]
        range: Option<xferkit::ByteRange>,
    },
    /// Show an object's size, etag, content type, last modified and metadata.
    Stat {
        /// Object URL.
        url: String,
    },
    /// Delete objects (deleting a missing object succeeds), or with -r
    /// everything under URL prefixes.
    Rm {
        /// Object URLs (with -r: URL prefixes).
        #[arg(required = true)]
        urls: Vec<String>,
        /// Delete every object under each URL prefix (a missing trailing `/`
        /// is added, so `s3://b/photos` does not touch `photos2/`).
        #[arg(long, short)]
        recursive: bool,
        /// With -r: list what would be deleted, delete nothing.
        #[arg(long, requires = "recursive")]
        dry_run: bool,
        /// With -r: delete even when more than 1000 objects would go.
        #[arg(long, short, requires = "recursive")]
        force: bool,
        /// With -r: batches of up to 1000 objects deleting at once (S3: one
        /// DeleteObjects request each).
        #[arg(long, value_name = "N", default_value_t = crate::batch::DEFAULT_CONCURRENCY,
              value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
    },
    /// Make DST hold what SRC holds, sending only what differs: a directory
    /// to a URL prefix, a prefix to a directory, or a prefix to a prefix
    /// (across stores too).
    #[command(
        after_help = "A file is sent when the destination lacks it, its size differs, or the \
source is newer than the destination (modification times compared to the second; a download \
gets the object's last-modified time as its mtime). With --checksum: when the checksums differ \
(where either side has none, size and time decide)."
    )]
    Sync {
        /// Source: a local directory or a URL prefix.
        src: OsString,
        /// Destination: a local directory (created if missing) or a URL prefix.
        dst: OsString,
        /// Compare by checksum (CRC32C or SHA-256, as the store reports it)
        /// instead of size and modification time.
        #[arg(long)]
        checksum: bool,
        /// Delete destination files the source does not have (not those
        /// --exclude/--include leave out), after every transfer succeeded.
        #[arg(long)]
        delete: bool,
        /// Print what would be sent and deleted, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave out paths matching GLOB (relative to SRC/DST; `*` crosses
        /// `/`: `*.tmp`, `cache/*`). Repeatable.
        #[arg(long, value_name = "GLOB")]
        exclude: Vec<String>,
        /// Consider only paths matching GLOB (then --exclude still applies). Repeatable.
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Files moving at once.
        #[arg(long, value_name = "N", default_value_t = crate::batch::DEFAULT_CONCURRENCY,
              value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
    },
    /// Move: copy SRC to DST, check the copy (size, and checksum where both
    /// sides have one), then delete SRC. Within one store a server-side copy.
    Mv {
        /// Source: a local file or an object URL.
        src: OsString,
        /// Destination: a local path or an object URL (a URL ending in `/`
        /// receives the source's name).
        dst: OsString,
        /// Overwrite an existing local destination file.
        #[arg(long, short)]
        force: bool,
    },
    /// Copy: path→URL uploads, URL→path downloads, URL→URL copies between or within stores.
    #[command(
        after_help = "A source containing `*` or `?` is a glob (quote it from the shell): `'s3://b/photos/*.jpg'`, `'dir/**/*.txt'`. `*` and `?` do not match `/`, `**` matches across it. Every match is copied, N at once, to DST taken as a directory or URL prefix, keeping its path below the glob's last literal directory. `-` as SRC reads stdin (DST must name an object), as DST writes to stdout."
    )]
    Cp {
        /// Source: a local path, an object URL, a glob of either, or `-` (stdin).
        src: OsString,
        /// Destination: a local path, an object URL (a URL ending in `/`
        /// receives the source's name), or `-` (stdout).
        dst: OsString,
        /// Overwrite an existing local destination file.
        #[arg(long, short)]
        force: bool,
        /// Copy a directory to a URL prefix, everything under a URL prefix
        /// to a directory, or a prefix to a prefix, keeping relative paths.
        #[arg(long, short)]
        recursive: bool,
        /// With -r or a glob: files moving at once.
        #[arg(long, value_name = "N", default_value_t = crate::batch::DEFAULT_CONCURRENCY,
              value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// With -r or a glob: print what would be copied, copy nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a presigned URL for an object.
    Presign {
        /// Object URL.
        url: String,
        /// How long the URL stays valid (`90s`, `15m`, `1h`, `7days`).
        #[arg(long, default_value = "1h", value_parser = parse_expiry)]
        expires: Duration,
        /// What the URL allows.
        #[arg(long, value_enum, default_value_t = Method::Get)]
        method: Method,
        /// With `--method put` on a local store behind `xfer serve`: the
        /// largest body the URL accepts ("1MiB", "500KB", bytes). The limit
        /// is signed into the URL; a larger body gets 413.
        #[arg(long, value_name = "SIZE", value_parser = xferkit::config::parse_size)]
        max_size: Option<u64>,
    },
    /// List the configured stores.
    Stores,
    /// Serve a local store over HTTP so its signed URLs (`xfer presign`,
    /// `xfer upload --share`) work for anyone holding them. Needs
    /// `serve_url` and `signing_key` in the store's config.
    Serve {
        /// The local store to serve (default: the default store).
        #[arg(long, short)]
        store: Option<String>,
        /// Address to listen on (default: 127.0.0.1 and the port of the
        /// store's `serve_url`).
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::SocketAddr>,
    },
    /// Abort orphaned multipart uploads older than an age (S3) and remove a local store's temp files left by killed processes; other stores say why they need none.
    Gc {
        /// URL prefix (`s3://bucket/photos/`); default: every configured store.
        prefix: Option<String>,
        /// Store to clean (instead of a URL prefix).
        #[arg(long, short, conflicts_with = "prefix")]
        store: Option<String>,
        /// Only uploads started longer ago than this (`0s`, `90m`, `24h`, `7days`).
        #[arg(long, default_value = "24h", value_parser = parse_age)]
        older_than: Duration,
        /// List what would be aborted, abort nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a shell completion script (`xfer completions bash > ~/.local/share/bash-completion/completions/xfer`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `xfer man | man -l -`).
    Man,
}

/// HTTP method of a presigned URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    Get,
    Put,
}

/// `xfer completions SHELL`: the completion script on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<(), crate::fail::Failure> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "xfer", &mut out);
    write_stdout(&out)
}

/// `xfer man`: the manual page, roff, on stdout.
pub fn man() -> Result<(), crate::fail::Failure> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| crate::fail::Failure::failed(format!("rendering the man page: {e}")))?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<(), crate::fail::Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Err(crate::fail::Failure::stdout_closed())
        }
        Err(e) => Err(xferkit::Error::from_io("stdout", e).into()),
    }
}

/// Server-side options of one upload, over the store's configured defaults
/// (`storage_class`, `cache_control`, ... in its table). A store that cannot
/// honour one refuses the upload naming it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Storage class (S3 `STANDARD_IA`, GCS `NEARLINE`) or Azure access tier (`Cool`).
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Cache-Control the store keeps and sends with every download.
    #[arg(long, value_name = "VALUE")]
    pub cache_control: Option<String>,
    /// Content-Disposition (`attachment; filename="a.pdf"`).
    #[arg(long, value_name = "VALUE")]
    pub content_disposition: Option<String>,
    /// Content-Encoding of the bytes as given (`gzip`: they are sent as they are).
    #[arg(long, value_name = "VALUE")]
    pub content_encoding: Option<String>,
    /// Content-Language (`de-CH`).
    #[arg(long, value_name = "VALUE")]
    pub content_language: Option<String>,
    /// An object tag (S3); repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Server-side encryption: `s3` (SSE-S3) or `kms` (S3 SSE-KMS, GCS
    /// CMEK). SSE-C only from the store's config (`sse_customer_key`), which
    /// reads need too.
    #[arg(long, value_enum)]
    pub sse: Option<SseArg>,
    /// KMS key id or ARN (S3), key name (GCS `projects/…/cryptoKeys/…`); implies `--sse kms`.
    #[arg(long, value_name = "KEY")]
    pub sse_kms_key_id: Option<String>,
    /// S3 Bucket Key for SSE-KMS; implies `--sse kms`.
    #[arg(long)]
    pub sse_bucket_key: bool,
    /// Azure encryption scope.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["sse", "sse_kms_key_id", "sse_bucket_key"])]
    pub encryption_scope: Option<String>,
}

/// `--sse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SseArg {
    S3,
    Kms,
}

impl ServerArgs {
    /// `opts` with these options set.
    pub fn apply(self, mut opts: xferkit::PutOptions) -> Result<xferkit::PutOptions, String> {
        use xferkit::ServerEncryption as E;
        let h = &mut opts.headers;
        h.cache_control = self.cache_control;
        h.content_disposition = self.content_disposition;
        h.content_encoding = self.content_encoding;
        h.content_language = self.content_language;
        opts.storage_class = self.storage_class;
        opts.tags.extend(self.tags);
        let kms = self.sse_kms_key_id.is_some() || self.sse_bucket_key;
        opts.encryption = match (self.sse, kms) {
            (Some(SseArg::S3), true) => {
                return Err(
                    "--sse s3 cannot be combined with --sse-kms-key-id or --sse-bucket-key".into(),
                );
            }
            (Some(SseArg::S3), false) => Some(E::ServiceManaged),
            (Some(SseArg::Kms), _) | (None, true) => Some(E::Kms {
                key_id: self.sse_kms_key_id,
                bucket_key: self.sse_bucket_key.then_some(true),
            }),
            (None, false) => self.encryption_scope.map(E::Scope),
        };
        Ok(opts)
    }
}

/// `KEY=VALUE` of `--tag`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_expiry(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 15m, 1h, 7days)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (try e.g. 0s, 90m, 24h, 7days)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `xfer upload`'s server-side flags, parsed into upload options.
    fn server(args: &[&str]) -> Result<xferkit::PutOptions, String> {
        let all = [&["xfer", "upload", "f"], args].concat();
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Upload { server, .. } => server.apply(Default::default()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn upload_server_side_flags() {
        use xferkit::ServerEncryption as E;
        let o = server(&[
            "--sse-kms-key-id",
            "k1",
            "--tag",
            "a=b=c",
            "--storage-class",
            "X",
        ])
        .unwrap();
        assert_eq!(
            o.encryption,
            Some(E::Kms {
                key_id: Some("k1".into()),
                bucket_key: None
            })
        );
        assert_eq!(o.tags.get("a").map(String::as_str), Some("b=c"));
        assert_eq!(o.storage_class.as_deref(), Some("X"));
        let o = server(&["--sse", "s3", "--content-encoding", "gzip"]).unwrap();
        assert_eq!(o.encryption, Some(E::ServiceManaged));
        assert_eq!(o.headers.content_encoding.as_deref(), Some("gzip"));
        let o = server(&["--encryption-scope", "sc"]).unwrap();
        assert_eq!(o.encryption, Some(E::Scope("sc".into())));
        assert!(server(&["--sse", "s3", "--sse-bucket-key"]).is_err());
        assert!(server(&["--sse", "kms", "--encryption-scope", "sc"]).is_err());
        assert!(server(&["--tag", "novalue"]).is_err());
        assert!(server(&["--sse", "customer"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn expiry_parses_human_durations() {
        assert_eq!(parse_expiry("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_expiry("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_expiry("0s").is_err());
        assert!(parse_expiry("soon").is_err());
    }
}
