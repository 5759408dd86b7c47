//! One function per subcommand.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use xferkit::url::ObjectUrl;
use xferkit::{
    Error, Key, PresignMethod, PutOptions, RemoteObject, ShareRequestExt, TransferRequest,
};

use crate::cli::{Command, Method};
use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::output::{self, line, object_json, print_object};
use crate::single::{
    check_source, destination, is_stdio, key_from_file_name, relay, upload, upload_request,
};
use crate::target::{self, Location, shown};
use crate::transfer;

pub async fn run(cx: &Ctx, command: Command) -> Result<(), Failure> {
    match command {
        Command::Upload {
            file,
            store,
            key,
            content_type,
            title,
            message,
            if_not_exists,
            share,
            no_thumbnail,
            encrypt,
            server,
        } => {
            let stdin = is_stdio(&file);
            if stdin && key.is_none() {
                return Err(Failure::usage("upload -: reading stdin needs --key KEY"));
            }
            if !stdin {
                check_source(&file)?;
            }
            let store = match store {
                Some(s) => cx.kit.registry().get(&s)?,
                None => cx.kit.registry().default_store()?,
            };
            let key = match key {
                Some(k) => k.into_string().map_err(|k| {
                    Failure::from(Error::invalid_key(
                        k.to_string_lossy(),
                        "--key is not valid UTF-8 (keys must be UTF-8)",
                    ))
                })?,
                None => key_from_file_name(&file)?,
            };
            let key = Key::new(key)?;
            let mut opts = PutOptions::default();
            if let Some(ct) = content_type {
                opts = opts.with_content_type(ct);
            }
            if if_not_exists {
                opts = opts.create_only();
            }
            let opts = server.apply(opts).map_err(Failure::usage)?;
            let mut request = upload_request(&file).with_options(opts);
            if let Some(t) = title {
                request = request.with_title(t);
            }
            if let Some(m) = message {
                request = request.with_message(m);
            }
            if let Some(d) = share {
                request = request.with_share(d);
            }
            if no_thumbnail {
                request = request.without_thumbnail();
            }
            if encrypt {
                request = request.encrypted();
            }
            request.url = store.url_for(&key);
            let label = file
                .file_name()
                .map_or_else(|| key.to_string(), |n| n.to_string_lossy().into_owned());
            let info = transfer::run_info(cx.kit.manager(), request, &label, cx.progress).await?;
            crate::share::print_upload(cx, &info)
        }
        Command::Download {
            url,
            dest: Some(dest),
            ..
        } if is_stdio(&dest) => cat(cx, &url, None).await,
        Command::Download { url, dest, force } => download(cx, &url, dest.as_deref(), force).await,
        Command::Ls {
            prefix,
            store,
            recursive,
        } => ls(cx, prefix.as_deref(), store.as_deref(), recursive).await,
        Command::Cat { url, range } => cat(cx, &url, range).await,
        Command::Stat { url } => {
            let (store, key) = target::object(cx.kit.registry(), &url)?;
            let obj = store.stat(&key).await?;
            print_object(cx, &obj, output::stat_text)
        }
        Command::Rm {
            urls,
            recursive: true,
            dry_run,
            force,
            concurrency,
        } => crate::sync::rm_r(cx, &urls, dry_run, force, usize::from(concurrency)).await,
        Command::Rm { urls, .. } => {
            for url in &urls {
                let (store, key) = target::object(cx.kit.registry(), url)?;
                store.delete(&key).await?;
                if cx.json {
                    line(json!({ "url": store.url_for(&key), "deleted": true }))?;
                }
            }
            Ok(())
        }
        Command::Cp {
            src,
            dst,
            force,
            recursive,
            concurrency,
            dry_run,
        } => {
            if recursive || crate::tree::is_glob(&src) {
                let n = usize::from(concurrency);
                crate::tree::cp(cx, &src, &dst, force, n, dry_run).await
            } else if dry_run {
                Err(Failure::usage(
                    "--dry-run lists the files of a many-file copy: add -r or give a glob source",
                ))
            } else {
                cp(cx, &src, &dst, force).await
            }
        }
        Command::Presign {
            url,
            expires,
            method,
            max_size,
        } => presign(cx, &url, expires, method, max_size).await,
        Command::Stores => stores(cx),
        Command::Serve { store, bind } => crate::share::serve(cx, store.as_deref(), bind).await,
        Command::Gc {
            prefix,
            store,
            older_than,
            dry_run,
        } => crate::gc::run(cx, prefix.as_deref(), store.as_deref(), older_than, dry_run).await,
        Command::Sync {
            src,
            dst,
            checksum,
            delete,
            dry_run,
            exclude,
            include,
            concurrency,
        } => {
            let opts = crate::sync::Options {
                checksum,
                delete,
                dry_run,
                filter: crate::sync::Filter::new(&include, &exclude)?,
                concurrency: usize::from(concurrency),
            };
            crate::sync::sync(cx, &src, &dst, &opts).await
        }
        Command::Mv { src, dst, force } => crate::sync::mv(cx, &src, &dst, force).await,
        // Answered before a configuration is read (see `crate::run`).
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// Download `url` to `dest` (see [`target::download_dest`]) and print where it went.
/// A link to an encrypted attachment (`#aes128gcm.…`) is decrypted and checked.
async fn download(cx: &Ctx, url: &str, dest: Option<&Path>, force: bool) -> Result<(), Failure> {
    let (url, secret) = xferkit::e2e::split_link(url)?;
    let (store, key) = target::object(cx.kit.registry(), &url)?;
    let name = target::file_name_for(&url, &key)?;
    let dest = target::download_dest(dest, &name, force)?;
    let canonical = store.url_for(&key);
    let link = secret.map_or_else(|| canonical.clone(), |s| s.attach(&canonical));
    let request = TransferRequest::download(link, &dest);
    let obj = transfer::run(cx.kit.manager(), request, &name, cx.progress).await?;
    print_download(cx, &obj, &dest)
}

fn print_download(cx: &Ctx, obj: &RemoteObject, dest: &Path) -> Result<(), Failure> {
    if !cx.json {
        return line(dest.display());
    }
    let mut v = object_json(obj);
    if ObjectUrl::parse(&obj.url).is_ok_and(|u| u.is_http()) {
        // A plain link's query may be a signature: keep it out of the output.
        v["url"] = Value::from(shown(&obj.url));
        v["key"] = Value::from(shown(&obj.key));
    }
    v["path"] = Value::from(dest.display().to_string());
    line(v)
}

/// Write `url` (or `range` of it) to stdout: `xfer cat`, and `download URL -`
/// and `cp URL -` (whole objects). A whole object whose store
/// reports a CRC32C is checked as it streams: a mismatch (the bytes were
/// written already) fails the command. A closed pipe ends it quietly. A
/// link to an encrypted attachment is decrypted record by record, and a
/// whole one checked against the link's digest at the end.
async fn cat(cx: &Ctx, url: &str, range: Option<xferkit::ByteRange>) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    use std::io::Write;
    let (url, secret) = xferkit::e2e::split_link(url)?;
    let (mut store, key) = target::object(reg, &url)?;
    if let Some(s) = secret {
        store = std::sync::Arc::new(xferkit::e2e::Encrypted::opening(store, s));
    }
    let (obj, mut stream) = store.download_stream(&key, range).await?;
    let target = shown(&store.url_for(&key));
    let want = obj
        .checksum
        .as_deref()
        .and_then(|c| c.strip_prefix("crc32c:"))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .filter(|_| range.is_none());
    let expected = match range {
        Some(r) => {
            let span = r.resolve(obj.size, &target)?;
            Some(span.end - span.start)
        }
        None => (obj.size > 0).then_some(obj.size),
    };
    let (mut crc, mut written) = (0u32, 0u64);
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        crc = crc32c::crc32c_append(crc, &chunk);
        written += chunk.len() as u64;
        out.write_all(&chunk).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::stdout_closed(),
            _ => Failure::from(Error::from_io("stdout", e)),
        })?;
    }
    out.flush()
        .map_err(|e| Failure::from(Error::from_io("stdout", e)))?;
    if expected.is_some_and(|n| n != written) {
        return Err(Failure::from(Error::Transient {
            target,
            retry_after: None,
            source: Some(format!("stream ended after {written} of {expected:?} bytes").into()),
        }));
    }
    if let Some(want) = want.filter(|w| *w != crc) {
        return Err(Failure::from(Error::ChecksumMismatch {
            target,
            expected: format!("crc32c:{want:08x}"),
            actual: format!("crc32c:{crc:08x}"),
        }));
    }
    Ok(())
}

/// `xfer ls`: objects, and (unless `recursive`) the common prefixes at the
/// next `/` as `PRE` lines (`{"prefix", "url"}` in JSON).
async fn ls(
    cx: &Ctx,
    prefix: Option<&str>,
    store: Option<&str>,
    recursive: bool,
) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let (store, prefix) = match (prefix, store) {
        (Some(url), _) => target::prefix(reg, url)?,
        (None, Some(name)) => (reg.get(name)?, String::new()),
        (None, None) => (reg.default_store()?, String::new()),
    };
    let mut opts = xferkit::ListOptions::default();
    if !recursive {
        opts = opts.with_delimiter("/");
    }
    let mut entries = store.list_with(&prefix, &opts);
    while let Some(entry) = entries.next().await {
        match entry? {
            xferkit::ListEntry::Prefix(p) => {
                let url = target::prefix_url(&store, &p);
                if cx.json {
                    line(json!({ "prefix": p, "url": url }))?;
                } else {
                    line(format!("{:>10}  {:<20}  {url}", "PRE", ""))?;
                }
            }
            xferkit::ListEntry::Object(obj) if cx.json => line(object_json(&obj))?,
            xferkit::ListEntry::Object(obj) => line(output::ls_line(&obj))?,
            _ => {}
        }
    }
    Ok(())
}

async fn cp(cx: &Ctx, src: &OsString, dst: &OsString, force: bool) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    match (target::classify(src)?, target::classify(dst)?) {
        (Location::Path(s), Location::Path(d)) => Err(Failure::usage(format!(
            "both `{}` and `{}` are local paths; use cp(1) to copy local files",
            s.display(),
            d.display()
        ))),
        (Location::Path(s), Location::Url(d)) => {
            let (store, key) = if is_stdio(&s) {
                destination(reg, &d, || {
                    Err(Failure::usage(format!(
                        "cp - {}: reading stdin needs an object URL to name the object, not a prefix ending in `/`",
                        target::shown(&d)
                    )))
                })?
            } else {
                check_source(&s)?;
                destination(reg, &d, || key_from_file_name(&s))?
            };
            let obj = upload(cx, &s, &store, &key, upload_request(&s)).await?;
            print_object(cx, &obj, |o| o.url.clone())
        }
        (Location::Url(s), Location::Path(d)) if is_stdio(&d) => cat(cx, &s, None).await,
        (Location::Url(s), Location::Path(d)) => download(cx, &s, Some(&d), force).await,
        (Location::Url(s), Location::Url(d)) => {
            let (from, from_key) = target::object(reg, &s)?;
            let (to, to_key) = destination(reg, &d, || target::file_name_for(&s, &from_key))?;
            let obj = if from.name() == to.name() && from.capabilities().copy {
                from.copy(&from_key, &to_key).await?
            } else {
                relay(cx, &from, &from_key, &s, &to, &to_key).await?
            };
            print_object(cx, &obj, |o| o.url.clone())
        }
    }
}

async fn presign(
    cx: &Ctx,
    url: &str,
    expires: Duration,
    method: Method,
    max_size: Option<u64>,
) -> Result<(), Failure> {
    let (store, key) = target::object(cx.kit.registry(), url)?;
    let p = match (method, max_size) {
        (Method::Get, None) => store.presign(&key, PresignMethod::Get, expires).await?,
        (Method::Put, None) => store.presign(&key, PresignMethod::Put, expires).await?,
        (Method::Get, Some(_)) => {
            return Err(Failure::usage(
                "--max-size limits a PUT URL: add --method put",
            ));
        }
        // Only a local store behind `xfer serve` checks a signed limit.
        (Method::Put, Some(max)) => match cx.kit.local_store(store.name()).await {
            Ok(local) => local.presign_put_with_limit(&key, expires, max)?,
            Err(_) => {
                return Err(Failure::usage(format!(
                    "--max-size: store {:?} cannot sign a size limit into a PUT URL (local stores served by `xfer serve` can)",
                    store.name()
                )));
            }
        },
    };
    if cx.json {
        let headers: serde_json::Map<String, Value> = p
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        return line(json!({
            "url": p.url,
            "method": match p.method { PresignMethod::Get => "GET", PresignMethod::Put => "PUT" },
            "expires_at": output::time(Some(p.expires_at)),
            "headers": headers,
        }));
    }
    line(&p.url)?;
    if !cx.quiet {
        for (k, v) in &p.headers {
            crate::note(&format!("the request must carry the header `{k}: {v}`"));
        }
    }
    Ok(())
}

fn stores(cx: &Ctx) -> Result<(), Failure> {
    let reg = cx.kit.registry();
    let default = reg.default_store()?.name().to_string();
    // The backend each store was configured with (the registry only knows handlers).
    let figment = xferkit::figment_for(cx.config.as_deref()).ok();
    let mut rows = Vec::new();
    for name in reg.names() {
        let store = reg.get(&name)?;
        let root = target::prefix_url(&store, "x");
        let root = root.strip_suffix('x').unwrap_or_default().to_string();
        let backend = figment
            .as_ref()
            .and_then(|f| {
                f.extract_inner::<String>(&format!("stores.{name}.backend"))
                    .ok()
            })
            .unwrap_or_else(|| backend_from_url(&root).to_string());
        let caps = output::capability_names(&store.capabilities());
        rows.push((name.clone(), name == default, backend, root, caps));
    }
    if cx.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(name, is_default, backend, root, caps)| {
                json!({
                    "name": name,
                    "default": is_default,
                    "backend": backend,
                    "root_url": if root.is_empty() { Value::Null } else { Value::from(root.clone()) },
                    "capabilities": caps,
                })
            })
            .collect();
        return line(Value::from(list));
    }
    let w_name = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w_backend = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let w_root = rows
        .iter()
        .map(|r| r.3.len().max("(http(s) links)".len()))
        .max()
        .unwrap_or(0);
    for (name, is_default, backend, root, caps) in &rows {
        let mark = if *is_default { "*" } else { " " };
        let root = if root.is_empty() {
            "(http(s) links)"
        } else {
            root.as_str()
        };
        let caps = if caps.is_empty() {
            "-".to_string()
        } else {
            caps.join(",")
        };
        line(format!(
            "{mark} {name:<w_name$}  {backend:<w_backend$}  {root:<w_root$}  {caps}"
        ))?;
    }
    Ok(())
}

/// A backend name guessed from a root URL, for stores the config does not list.
fn backend_from_url(root: &str) -> &'static str {
    match root.split_once("://").map(|(s, _)| s) {
        Some("file") => "local",
        Some("s3") => "s3",
        Some("gs") => "gcs",
        Some("az") => "azure",
        _ => "http",
    }
}
