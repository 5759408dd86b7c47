//! `AzureStore` itself: what the store holds, and the two things its
//! upload and batch-delete requests take from it besides its fields (a blob's
//! client, an etag's text). Its behaviour is in `backend.rs`; `upload.rs` and
//! `batch.rs` import the type from here, not from there.

use azure_core::http::Etag;
use azure_storage_blob::BlobClient;
use xferkit_core::key::Root;
use xferkit_core::{PutOptions, RetryPolicy};

use crate::client::Client;
use crate::config::Resolved;

/// An Azure Blob Storage container (or a prefix of one) as an xferkit store.
#[derive(Debug)]
pub struct AzureStore {
    pub(crate) name: String,
    pub(crate) cfg: Resolved,
    /// Keys, blob names and `az://` URLs.
    pub(crate) root: Root,
    pub(crate) client: Client,
    /// For requests outside a transfer (stat, list, delete, copy, GET).
    pub(crate) retry: RetryPolicy,
    /// Journals of staged uploads of files (resume after a crash).
    pub(crate) state_dir: Option<std::path::PathBuf>,
    /// The configured defaults of the server-side upload options.
    pub(crate) defaults: PutOptions,
}

impl AzureStore {
    /// The client of the blob named `full` (prefix included).
    pub(crate) fn blob(&self, full: &str) -> BlobClient {
        self.client.container.blob_client(full)
    }
}

/// An etag as the store reports it, quotes removed.
pub(crate) fn etag_text(e: &Etag) -> String {
    e.to_string().trim_matches('"').to_string()
}
