//! `xfer`: the xferkit command line. See README.md for usage.
//!
//! The program lives in this library so that the workspace's `tests/`
//! member can build the very same `xfer` as a binary of its own (cargo
//! hands a package's tests only its own binaries); `src/main.rs` calls
//! [`main`]. Nothing here is an API.

mod batch;
mod cli;
mod commands;
mod ctx;
mod fail;
mod gc;
mod output;
mod share;
mod single;
mod sync;
mod target;
mod transfer;
mod tree;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;
use crate::fail::{EXIT_FAILED, Failure, one_line};

/// How long, after the command, background work (a stopped transfer's
/// cleanup) gets before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Run `xfer` with the process's arguments; the exit code to end with.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors (exit 2) keep clap's format, with its hint at `--help`;
            // `--help` and `--version` print and exit 0.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(fail::EXIT_USAGE));
        }
    };
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(m) = &f.message {
                error(m);
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    // Neither needs (nor may fail on) a configuration.
    match &cli.command {
        cli::Command::Completions { shell } => return cli::completions(*shell),
        cli::Command::Man => return cli::man(),
        _ => {}
    }
    let mut figment = xferkit::figment_for(cli.config.as_deref())?;
    if cli.allow_private_links {
        figment = figment.merge(("links.allow_private", true));
    }
    let mut kit = xferkit::Xferkit::from_figment(&figment).await?;
    if let Some(rate) = cli.bwlimit {
        kit.set_bandwidth_limit(rate.0);
    }
    let cx = ctx::Ctx {
        kit,
        config: cli.config,
        json: cli.json,
        quiet: cli.quiet,
        progress: !cli.quiet && !cli.json && std::io::stderr().is_terminal(),
    };
    commands::run(&cx, cli.command).await
}

/// `xfer: <message>` on one line of stderr.
fn error(message: &str) {
    let _ = writeln!(std::io::stderr(), "xfer: {}", one_line(message));
}

/// `xfer: note: <message>` on stderr.
pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "xfer: note: {}", one_line(message));
}

/// Log to stderr. `XFERKIT_LOG` is a tracing filter (default `warn` plus the
/// backends' resume notices, or `error` with `--quiet`); each `-v` raises the level of xferkit's own
/// crates (info, debug, trace) without opening up every dependency's logs.
fn init_logging(cli: &Cli) {
    // The parts engine logs at info only to say an upload resumes (or
    // cannot, and starts over): xfer says so by default.
    let fallback = if cli.quiet {
        "error"
    } else {
        "warn,xferkit_core::parts=info,xferkit_s3=info,xferkit_gcs=info,xferkit_azure=info"
    };
    let env = std::env::var("XFERKIT_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let mut filter = match env.as_deref().map(EnvFilter::try_new) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            error(&format!("ignoring XFERKIT_LOG: {e}"));
            EnvFilter::new(fallback)
        }
        None => EnvFilter::new(fallback),
    };
    let own = match cli.verbose {
        0 => None,
        1 => Some("xfer=info"),
        2 => Some("xfer=debug"),
        _ => Some("xfer=trace"),
    };
    // `xfer` as a target prefix covers this binary and every `xferkit*` crate.
    if let Some(directive) = own.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(cli.verbose > 0)
        .try_init();
}
