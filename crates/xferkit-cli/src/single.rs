//! Steps on one object that the single-file commands (`upload`, `cp`) and the
//! many-file ones (`sync`, `mv`, `cp -r`) share: checking a source file,
//! uploading it, naming a `cp` destination, copying between stores.

use std::path::Path;

use xferkit::{DynHandler, Error, Key, RemoteObject, TransferRequest};

use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::{target, transfer};

/// Whether a file operand is `-`: stdin for a source, stdout for a
/// destination (a file of that name is `./-`).
pub fn is_stdio(file: &Path) -> bool {
    file.as_os_str() == "-"
}

/// The request for an upload of `file` (its URL is set later), or of stdin
/// for `-`: a stream of unknown size, sent in parts with bounded memory by
/// stores that have them. `upload -` and `cp - URL` both come here.
pub fn upload_request(file: &Path) -> TransferRequest {
    if is_stdio(file) {
        TransferRequest::upload_reader(tokio::io::stdin(), None, "")
    } else {
        TransferRequest::upload(file, "")
    }
}

/// The default key for an upload: the file's name.
pub fn key_from_file_name(file: &Path) -> Result<String, Failure> {
    file.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Failure::usage(format!(
                "cannot use the name of {} as a key; pass --key",
                file.display()
            ))
        })
}

/// An upload source must exist and not be a directory.
pub fn check_source(file: &Path) -> Result<(), Failure> {
    let meta =
        std::fs::metadata(file).map_err(|e| Error::from_io(file.display().to_string(), e))?;
    if meta.is_dir() {
        return Err(Failure::usage(format!(
            "{} is a directory; xfer uploads one file at a time",
            file.display()
        )));
    }
    Ok(())
}

/// Upload `file` to `key` of `store` through the manager. `request` carries
/// the options; its URL is set here.
pub async fn upload(
    cx: &Ctx,
    file: &Path,
    store: &DynHandler,
    key: &Key,
    mut request: TransferRequest,
) -> Result<RemoteObject, Failure> {
    request.url = store.url_for(key);
    let label = file
        .file_name()
        .filter(|_| !is_stdio(file))
        .map_or_else(|| key.to_string(), |n| n.to_string_lossy().into_owned());
    transfer::run(cx.kit.manager(), request, &label, cx.progress).await
}

/// The store and key a `cp` destination URL names; a URL ending in `/`
/// names a prefix, to which `name()` is appended (the key checked then).
pub fn destination(
    reg: &xferkit::Registry,
    url: &str,
    name: impl FnOnce() -> Result<String, Failure>,
) -> Result<(DynHandler, Key), Failure> {
    if url.ends_with('/') {
        let (store, prefix) = target::prefix(reg, url)?;
        Ok((store, Key::join(&prefix, &name()?)?))
    } else {
        target::object(reg, url)
    }
}

/// Copy between stores: download to a temp file, then upload it.
pub async fn relay(
    cx: &Ctx,
    from: &DynHandler,
    from_key: &Key,
    from_url: &str,
    to: &DynHandler,
    to_key: &Key,
) -> Result<RemoteObject, Failure> {
    let name = target::file_name_for(from_url, from_key).unwrap_or_else(|_| "object".into());
    let dir = tempfile::Builder::new()
        .prefix("xfer-cp.")
        .tempdir()
        .map_err(|e| Error::from_io("temporary directory", e))?;
    let tmp = dir.path().join(&name);
    let down = TransferRequest::download(from.url_for(from_key), &tmp);
    let obj = transfer::run(cx.kit.manager(), down, &name, cx.progress).await?;
    let opts = crate::batch::options_like(&obj);
    let up = TransferRequest::upload(&tmp, to.url_for(to_key)).with_options(opts);
    transfer::run(cx.kit.manager(), up, &name, cx.progress).await
    // `dir` and the temp file in it are removed here, on success or not.
}
