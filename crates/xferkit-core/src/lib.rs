#![doc = include_str!("../README.md")]

pub mod backend;
pub mod body;
mod ctx;
mod error;
mod ext;
pub mod extensions;
mod handler;
pub mod journal;
pub mod key;
pub mod layer;
pub mod list;
pub mod manager;
pub mod parts;
mod registry;
mod retry;
mod secret;
pub mod server_opts;
pub mod settings;
pub mod status;
mod types;
pub mod url;

pub use backend::{Backend, BuildContext};
pub use ctx::{Bandwidth, ProgressSink, TransferCtx};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use ext::{
    AUTO_DOWNLOAD_PARTS, DEFAULT_DOWNLOAD_CONCURRENCY, DEFAULT_DOWNLOAD_PART_SIZE,
    DEFAULT_PARALLEL_THRESHOLD, DownloadOptions, FileTransferExt, MAX_AUTO_DOWNLOAD_PART_SIZE,
    RANGE_WRITE_BUFFER, write_stream_atomically,
};
pub use extensions::{Extension, Extensions};
pub use handler::{FileTransferHandler, delete_each};
pub use key::{Key, MAX_KEY_LEN};
pub use layer::TransferLayer;
pub use list::{ListEntry, ListOptions};
pub use manager::{
    Direction, FileInfo, FileTransferListener, Transfer, TransferError, TransferManager,
    TransferRequest, TransferStatus,
};
pub use registry::{DynHandler, Registry};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use server_opts::{ObjectHeaders, ServerEncryption, SseMode, UploadDefaults};
pub use types::{
    ByteRange, ByteStream, Capabilities, PendingUpload, PresignMethod, PresignedUrl, PutOptions,
    RemoteObject, UploadSource,
};

/// Re-exported so backends and callers use the same versions.
pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;
