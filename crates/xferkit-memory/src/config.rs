//! `MemoryConfig`: the keys of one `[stores.NAME]` table with `backend = "memory"`.

use std::time::Duration;

use xferkit_core::{Result, settings};

/// Largest `part_size`: 1 GiB.
const MAX_PART_SIZE: u64 = 1 << 30;

/// Configuration of an in-memory store. Every key has a default: a table
/// with `backend = "memory"` alone is a store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Key prefix in the store's URLs (`mem://NAME/PREFIX/KEY`); empty: none.
    pub prefix: String,
    /// Bytes an upload or download moves per step. Each part is one
    /// progress report, one draw on the transfer's bandwidth caps, one
    /// `part_delay` and one check for a stop. Default 1 MiB.
    pub part_size: u64,
    /// Wait this long per part (`"20ms"`): transfers then take time, as
    /// over a network, for tests of progress, stop and pause. Default none.
    #[serde(deserialize_with = "duration")]
    pub part_delay: Option<Duration>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            prefix: String::new(),
            part_size: 1024 * 1024,
            part_delay: None,
        }
    }
}

impl MemoryConfig {
    /// URLs under `prefix` (`mem://NAME/PREFIX/KEY`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Move `bytes` per part.
    pub fn with_part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes;
        self
    }

    /// Wait `delay` per part.
    pub fn with_part_delay(mut self, delay: Duration) -> Self {
        self.part_delay = Some(delay);
        self
    }

    /// Check every key; errors name the key relative to the table.
    pub(crate) fn validate(&self) -> Result<String> {
        settings::within("part_size", self.part_size, 1..=MAX_PART_SIZE, " bytes")?;
        settings::prefix("prefix", &self.prefix)
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let Some(text) = <Option<String> as serde::Deserialize>::deserialize(d)? else {
        return Ok(None);
    };
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration (e.g. \"20ms\"): {e}"))
        })
}
