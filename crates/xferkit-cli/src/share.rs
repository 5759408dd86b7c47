//! The sharing side of `xfer`: what `upload` prints (share URL, thumbnail,
//! dedupe) and `xfer serve`.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::json;
use xferkit::{FileInfo, ShareInfo};
use xferkit_serve::{ServeOptions, Server, router};

use crate::ctx::Ctx;
use crate::fail::Failure;
use crate::output::{line, object_json};

/// `upload`'s result: the share URL if one was asked for, else the canonical
/// URL; `--json` carries everything. Thumbnail problems are warnings.
pub fn print_upload(cx: &Ctx, info: &FileInfo) -> Result<(), Failure> {
    let Some(obj) = &info.object else {
        return Err(Failure::failed(format!(
            "{}: upload completed without an object record",
            info.url
        )));
    };
    let share = ShareInfo::of(info);
    if let Some(e) = &share.thumbnail_error
        && !cx.quiet
        && !cx.json
    {
        eprintln!("warning: {}", crate::fail::one_line(e));
    }
    if share.deduplicated && !cx.quiet && !cx.json {
        eprintln!("already stored (same content): nothing was sent");
    }
    if cx.json {
        let mut v = object_json(obj);
        v["share_url"] = json!(share.share_url);
        v["share_expires_at"] = json!(share.share_expires_at);
        v["thumbnail_url"] = json!(share.thumbnail_url);
        v["thumbnail_share_url"] = json!(share.thumbnail_share_url);
        v["thumbnail_error"] = json!(share.thumbnail_error);
        v["deduplicated"] = json!(share.deduplicated);
        v["transferred"] = json!(info.transferred);
        if obj.checksum.is_none() {
            v["checksum"] = json!(share.checksum);
        }
        line(v)
    } else {
        line(share.share_url.as_deref().unwrap_or(&obj.url))
    }
}

/// `xfer serve`: serve a local store's signed URLs until Ctrl-C.
pub async fn serve(cx: &Ctx, store: Option<&str>, bind: Option<SocketAddr>) -> Result<(), Failure> {
    let name = match store {
        Some(s) => s.to_string(),
        None => cx.kit.settings().default_store.clone(),
    };
    let local = cx.kit.local_store(&name).await?;
    let Some((base, signer)) = local.serve_config() else {
        return Err(Failure::usage(format!(
            "store {name:?} has no serve_url and signing_key: set stores.{name}.serve_url \
             (e.g. \"http://127.0.0.1:8080\") and XFERKIT_STORES__{}__SIGNING_KEY",
            name.to_uppercase()
        )));
    };
    let base = base.to_string();
    let signer = signer.clone();
    let addr = match bind {
        Some(a) => a,
        None => {
            let port = url::Url::parse(&base)
                .ok()
                .and_then(|u| u.port_or_known_default())
                .unwrap_or(8080);
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::failed(format!("cannot listen on {addr}: {e}")))?;
    let root = local.root().display().to_string();
    // The store's serve_* keys and max_upload_size.
    let settings = local.serve_settings();
    let mut options = ServeOptions::for_serve_url(&base);
    options.header_timeout = settings.header_timeout;
    options.idle_timeout = settings.idle_timeout;
    options.max_connections = settings.max_connections;
    options.inline_types = settings.inline_types.clone();
    options.max_upload_size = settings.max_upload_size;
    let app = router(std::sync::Arc::new(local), signer, options.clone());
    let server = Server::start_with(listener, app, &options)
        .map_err(|e| Failure::failed(format!("{addr}: {e}")))?;
    if cx.json {
        line(
            json!({ "store": name, "root": root, "serve_url": base, "listening": addr.to_string() }),
        )?;
    } else if !cx.quiet {
        eprintln!("serving store {name} ({root}) as {base} on http://{addr}; Ctrl-C stops");
    }
    server
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::failed(format!("server on {addr} failed: {e}")))
}
