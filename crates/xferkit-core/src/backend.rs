//! The one seam between configuration and a backend crate: [`Backend`].
//!
//! A backend crate implements `Backend` for its store type: the name of its
//! kind (`backend = "s3"`), the serde struct its `[stores.NAME]` table is
//! read into, and how the store is built from it. The keys the table
//! accepts follow from that struct and from the server-side options the
//! store honours ([`Backend::keys`]), so no list of keys is kept by hand.
//!
//! The facade (`xferkit`) holds one table of backends and, for a store,
//! checks the table's keys against `keys()`, reads the table into
//! [`Backend::Config`] (errors name the key and the file or variable it came
//! from), and calls [`Backend::build`]. Configuration errors of `build`
//! name keys relative to the table (`part_size = 1 must be between ...`) or
//! speak of the whole table; the facade adds `stores.NAME.` (or
//! `stores.NAME: `) in front and where the value came from. The trait lives
//! here, in core, because backend crates depend on core only: the facade
//! depends on them.

use std::path::PathBuf;

use async_trait::async_trait;

use crate::{Capabilities, FileTransferHandler, Result, RetryPolicy, UploadDefaults};

/// What a store may take from its application's configuration besides its
/// own table.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BuildContext {
    /// How requests outside a transfer are retried (`[retry]`).
    pub retry: RetryPolicy,
    /// Where interrupted uploads keep their journals (`state_dir`); `None`:
    /// no journals.
    pub state_dir: Option<PathBuf>,
    /// The table's server-side upload defaults: only keys of the options
    /// the store honours ([`Backend::upload_options`]) can be set.
    pub upload: UploadDefaults,
}

impl BuildContext {
    /// Requests outside a transfer retried under `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Journals of interrupted uploads under `dir`.
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// The table's server-side upload defaults.
    pub fn with_upload(mut self, upload: UploadDefaults) -> Self {
        self.upload = upload;
        self
    }
}

/// A kind of store that configuration can name (`backend = "KIND"`). See
/// the [module](self) for the division of work with the facade.
#[async_trait]
pub trait Backend: FileTransferHandler + Sized + 'static {
    /// The `backend = "…"` value of its tables (`"s3"`).
    const KIND: &'static str;

    /// Its table as serde reads it: a struct deriving `Deserialize`, its
    /// fields (and aliases) the keys of the table, without the facade's own
    /// (`backend`, and those of layers above the stores).
    type Config: serde::de::DeserializeOwned + Send;

    /// The server-side upload options the store honours: their keys are
    /// accepted in its table and reach [`build`](Self::build) as
    /// [`BuildContext::upload`]. Default: none.
    fn upload_options() -> Capabilities {
        Capabilities::default()
    }

    /// Every key its table accepts: the fields of [`Config`](Self::Config)
    /// and the keys of [`upload_options`](Self::upload_options).
    fn keys() -> Vec<&'static str> {
        let mut keys = crate::settings::fields::<Self::Config>().to_vec();
        keys.extend(UploadDefaults::keys_for(&Self::upload_options()));
        keys
    }

    /// The service endpoints a store of this table sends its requests to
    /// (an emulator's, a private endpoint, `xfer serve`'s URL), as URLs.
    /// The facade's link policy trusts their hosts: a link to a store this
    /// process talks to anyway is not a stranger's, even on a private
    /// address. Default: none (the service's public endpoint needs no
    /// trust). Called on a table that may not build; return what it names.
    fn endpoints(config: &Self::Config) -> Vec<String> {
        let _ = config;
        Vec::new()
    }

    /// The store called `name`, from its table. An `InvalidConfig` error
    /// names the key relative to the table (`bucket is missing (...)`), or
    /// speaks of the whole table; see the [module](self).
    async fn build(name: &str, config: Self::Config, ctx: &BuildContext) -> Result<Self>;
}
