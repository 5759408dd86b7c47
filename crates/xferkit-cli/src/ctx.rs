//! What every command gets: the configured stores and manager, and the output flags.

use std::path::PathBuf;

use xferkit::Xferkit;

/// What every command needs.
#[derive(Debug)]
pub struct Ctx {
    pub kit: Xferkit,
    pub config: Option<PathBuf>,
    pub json: bool,
    pub quiet: bool,
    /// Draw progress bars (stderr is a terminal, not `--quiet`/`--json`).
    pub progress: bool,
}
