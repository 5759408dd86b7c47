//! Why a command failed, and the exit code that says so.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also: stdout closed early, e.g. `xfer ls … \| head`) |
//! | 1 | the operation failed (not found, permission, network, already exists, not supported, …); for `cp -r`, `sync`, `rm -r`: a file failed |
//! | 2 | usage, configuration or invalid input (`InvalidConfig`, `InvalidUrl`, `InvalidKey`, bad arguments) |
//! | 130 | interrupted by Ctrl-C; the running transfer was stopped and left nothing behind |

use xferkit::{Error, ErrorKind};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INTERRUPTED: u8 = 130;

/// A failed command: a one-line message for stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    /// Printed as `xfer: <message>`; `None` exits silently.
    pub message: Option<String>,
    pub code: u8,
}

impl Failure {
    /// Bad arguments or input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code: EXIT_USAGE,
        }
    }

    /// The operation could not be done (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code: EXIT_FAILED,
        }
    }

    /// A failure of `kind` described by `message` (e.g. a transfer's `FileInfo::error`).
    pub fn of_kind(kind: Option<ErrorKind>, message: impl Into<String>) -> Self {
        Failure {
            message: Some(message.into()),
            code: kind.map_or(EXIT_FAILED, exit_code),
        }
    }

    /// Exit quietly with success: whoever read stdout stopped reading.
    pub fn stdout_closed() -> Self {
        Failure {
            message: None,
            code: 0,
        }
    }
}

/// The exit code for an error kind.
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidConfig
        | ErrorKind::InvalidUrl
        | ErrorKind::InvalidKey
        | ErrorKind::Refused => EXIT_USAGE,
        ErrorKind::Cancelled => EXIT_INTERRUPTED,
        _ => EXIT_FAILED,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::of_kind(Some(e.kind()), e.chain())
    }
}

/// Fold a possibly multi-line message (TOML parse errors come with a
/// source excerpt and a caret line) into one line.
pub fn one_line(message: &str) -> String {
    let is_gutter = |l: &str| {
        // `  |`, `3 | key = = 1` and `  |     ^^^` from TOML diagnostics
        let rest = l
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        rest.starts_with('|')
    };
    let is_marker =
        |l: &str| !l.is_empty() && l.chars().all(|c| matches!(c, '^' | '~' | '-' | ' '));
    let parts: Vec<String> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_gutter(l) && !is_marker(l))
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_exit_codes() {
        assert_eq!(exit_code(ErrorKind::InvalidUrl), 2);
        assert_eq!(exit_code(ErrorKind::InvalidKey), 2);
        assert_eq!(exit_code(ErrorKind::InvalidConfig), 2);
        assert_eq!(exit_code(ErrorKind::NotFound), 1);
        assert_eq!(exit_code(ErrorKind::NotSupported), 1);
        assert_eq!(exit_code(ErrorKind::Cancelled), 130);
    }

    #[test]
    fn toml_diagnostics_fold_to_one_line() {
        let msg = "TOML parse error at line 3, column 7\n  |\n3 | key = = 1\n  |       ^\nexpected a value\n in /tmp/x.toml TOML file";
        assert_eq!(
            one_line(msg),
            "TOML parse error at line 3, column 7 expected a value in /tmp/x.toml TOML file"
        );
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("a\tb"), "a b");
    }
}
