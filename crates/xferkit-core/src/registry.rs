//! Named stores, and resolving a URL to the store that owns it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::layer::TransferLayer;
use crate::url::ObjectUrl;
use crate::{Error, FileTransferHandler, Key, Result};

/// A shared handler.
pub type DynHandler = Arc<dyn FileTransferHandler>;

/// The configured stores of one application.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    stores: BTreeMap<String, DynHandler>,
    default_store: Option<String>,
    layer: Option<Arc<dyn TransferLayer>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a store under its [`FileTransferHandler::name`]; the first one
    /// added becomes the default unless [`set_default`](Self::set_default) says otherwise.
    pub fn register(&mut self, handler: DynHandler) -> &mut Self {
        let name = handler.name().to_string();
        if self.default_store.is_none() {
            self.default_store = Some(name.clone());
        }
        self.stores.insert(name, handler);
        self
    }

    /// Make `name` the default store.
    pub fn set_default(&mut self, name: &str) -> Result<()> {
        if !self.stores.contains_key(name) {
            return Err(Error::invalid_config(format!(
                "default_store = {name:?} names no configured store (have: {})",
                self.names().join(", ")
            )));
        }
        self.default_store = Some(name.to_string());
        Ok(())
    }

    /// The store called `name`.
    pub fn get(&self, name: &str) -> Result<DynHandler> {
        self.stores.get(name).cloned().ok_or_else(|| {
            Error::invalid_config(format!(
                "no store named {name:?} is configured (have: {})",
                self.names().join(", ")
            ))
        })
    }

    /// The default store.
    pub fn default_store(&self) -> Result<DynHandler> {
        match &self.default_store {
            Some(n) => self.get(n),
            None => Err(Error::invalid_config("no store is configured")),
        }
    }

    /// Run every transfer of the managers over this registry through
    /// `layer` (the sharing layer; see [`crate::layer`]), replacing the one set
    /// before.
    pub fn set_layer(&mut self, layer: Arc<dyn TransferLayer>) -> &mut Self {
        self.layer = Some(layer);
        self
    }

    /// The layer set with [`set_layer`](Self::set_layer). To reach the
    /// concrete type: `registry.layer().and_then(|l| (&**l as &dyn Any).downcast_ref::<T>())`.
    pub fn layer(&self) -> Option<&Arc<dyn TransferLayer>> {
        self.layer.as_ref()
    }

    /// Names of all stores, sorted.
    pub fn names(&self) -> Vec<String> {
        self.stores.keys().cloned().collect()
    }

    /// The URL schemes the registered stores serve
    /// ([`FileTransferHandler::schemes`]), each once, in the order of the
    /// stores' names.
    pub fn schemes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in self.stores.values().flat_map(|h| h.schemes()) {
            if !out.contains(s) {
                out.push(s);
            }
        }
        out
    }

    /// Parse `url` ([`ObjectUrl::parse`]), refusing a scheme that no
    /// registered store serves: `InvalidUrl` naming the URL, the stores and
    /// the schemes they serve.
    pub fn parse(&self, url: &str) -> Result<ObjectUrl> {
        let parsed = ObjectUrl::parse(url)?;
        let schemes = self.schemes();
        if !schemes.contains(&parsed.scheme.as_str()) {
            return Err(Error::invalid_url(
                crate::url::shown(url),
                format!(
                    "unsupported scheme '{}': no configured store serves it (stores: {}; schemes served: {})",
                    parsed.scheme,
                    self.names().join(", "),
                    schemes.join(", ")
                ),
            ));
        }
        Ok(parsed)
    }

    /// The store owning `url` and the key it addresses there.
    pub fn resolve(&self, url: &str) -> Result<(DynHandler, Key)> {
        let parsed = self.parse(url)?;
        // Several stores may share a bucket with different prefixes: the
        // one with the longest canonical prefix (shortest key) wins.
        let mut best: Option<(DynHandler, Key)> = None;
        for h in self.stores.values() {
            if let Some(key) = h.key_for_url(&parsed)
                && best.as_ref().is_none_or(|(_, k)| key.len() < k.len())
            {
                best = Some((h.clone(), key));
            }
        }
        best.ok_or_else(|| {
            Error::invalid_url(
                url,
                format!(
                    "no configured store owns this URL (stores: {})",
                    self.names().join(", ")
                ),
            )
        })
    }
}
