#![doc = include_str!("../README.md")]
//!
//! ```no_run
//! use xferkit_conformance::{Target, run};
//! fn main() -> std::process::ExitCode {
//!     run(vec![Target::from_env("s3@moto", &["XFERKIT_MOTO_ENDPOINT"], |vars, prefix| async move {
//!         // Build a store rooted at `prefix` from the endpoint in `vars`.
//!         # let _ = (vars, prefix);
//!         Err(xferkit_core::Error::invalid_config("example only"))
//!     })])
//! }
//! ```
//!
//! Each target gets a fresh random prefix, so runs never see each other's
//! objects; everything under it is deleted when the target's cases finish.
//! Cases a target's capabilities exclude are reported as ignored, with the
//! reason printed. A target whose emulator is missing fails under `CI=true`
//! or `XFERKIT_REQUIRE_EMULATORS=1`, and is skipped (loudly) otherwise.
//! After each target one line goes to stdout and to
//! `target/conformance/LABEL.txt`:
//! `conformance: s3@moto 38 passed, 0 failed, 2 skipped`.
//!
//! A target given a [`faults::Faults`] description ([`Target::faults`]) also
//! runs the fault and resume cases through a fault proxy, named
//! `LABEL::faults::CASE` and `LABEL::resume::CASE` and counted in its line.

mod cases;
pub mod fault;
pub mod faults;
pub mod gcs;
pub mod range_store;
mod support;
pub mod testkit;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Trial};
use xferkit_core::{Capabilities, DynHandler, Result};

pub use cases::case_names;

type Factory = Box<dyn FnOnce(String) -> BoxFuture<'static, Result<DynHandler>> + Send>;

/// A capability switched off for one target, and why.
struct Limit {
    apply: Box<dyn Fn(&mut Capabilities) + Send>,
    reason: String,
}

/// One store to run the suite against (a backend on one emulator).
pub struct Target {
    label: String,
    factory: std::result::Result<Factory, String>,
    multipart_size: u64,
    limits: Vec<Limit>,
    skips: Vec<(String, String)>,
    /// The values of [`Target::from_env`]'s variables.
    vars: Vec<String>,
    faults: Option<faults::Faults>,
    storage_class: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("label", &self.label)
            .finish()
    }
}

impl Target {
    /// A target built by `factory`, which receives a fresh prefix to root
    /// the store at.
    pub fn new<F, Fut>(label: &str, factory: F) -> Self
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<DynHandler>> + Send + 'static,
    {
        Target {
            label: label.to_string(),
            factory: Ok(Box::new(move |p| Box::pin(factory(p)))),
            multipart_size: 16 * 1024 * 1024,
            limits: Vec::new(),
            skips: Vec::new(),
            vars: Vec::new(),
            faults: None,
            storage_class: None,
        }
    }

    /// A target needing environment variables `vars` (emulator endpoints,
    /// credentials); the factory gets their values in order. Missing
    /// variables make it unavailable.
    pub fn from_env<F, Fut>(label: &str, vars: &[&str], factory: F) -> Self
    where
        F: FnOnce(Vec<String>, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<DynHandler>> + Send + 'static,
    {
        let mut values = Vec::new();
        let mut missing = Vec::new();
        for v in vars {
            match std::env::var(v) {
                Ok(val) if !val.is_empty() => values.push(val),
                _ => missing.push(*v),
            }
        }
        if missing.is_empty() {
            let mut t = Target::new(label, {
                let values = values.clone();
                move |p| factory(values, p)
            });
            t.vars = values;
            t
        } else {
            Target::unavailable(
                label,
                format!(
                    "environment variable(s) {} not set (start the emulators: cargo xtask emulators start)",
                    missing.join(", ")
                ),
            )
        }
    }

    /// A target that cannot run here (say why).
    pub fn unavailable(label: &str, reason: impl Into<String>) -> Self {
        Target {
            label: label.to_string(),
            factory: Err(reason.into()),
            multipart_size: 0,
            limits: Vec::new(),
            skips: Vec::new(),
            vars: Vec::new(),
            faults: None,
            storage_class: None,
        }
    }

    /// An object size that the store uploads in at least three parts.
    pub fn multipart_size(mut self, bytes: u64) -> Self {
        self.multipart_size = bytes;
        self
    }

    /// A storage class (S3, GCS) or access tier (Azure) other than the
    /// default that the store keeps and reports back, for the
    /// `storage_class_round_trips` case (skipped without one).
    pub fn storage_class(mut self, class: &str) -> Self {
        self.storage_class = Some(class.to_string());
        self
    }

    /// Skip one case on this target because of a documented emulator bug
    /// (say which, precisely). Prefer [`limit`](Self::limit) when a whole
    /// capability is missing; this is for a single wrong answer.
    pub fn skip_case(mut self, case: &str, reason: &str) -> Self {
        self.skips.push((case.to_string(), reason.to_string()));
        self
    }

    /// Run the fault and resume cases ([`faults`]) on this target too,
    /// through a fault proxy, as `describe` says for the values of the
    /// target's variables (those of [`Target::from_env`], in order). Not
    /// called for a target that is unavailable.
    pub fn faults(mut self, describe: impl FnOnce(&[String]) -> faults::Faults) -> Self {
        if self.factory.is_ok() {
            self.faults = Some(describe(&self.vars));
        }
        self
    }

    /// Switch capabilities off for a gap of this emulator; `reason` is
    /// printed for every case that is skipped because of it.
    pub fn limit(
        mut self,
        apply: impl Fn(&mut Capabilities) + Send + 'static,
        reason: &str,
    ) -> Self {
        self.limits.push(Limit {
            apply: Box::new(apply),
            reason: reason.to_string(),
        });
        self
    }
}

/// True under `CI` or `XFERKIT_REQUIRE_EMULATORS` (set, not `0`/`false`):
/// tests that need an emulator must then fail, not skip, when it is missing.
pub fn emulators_required() -> bool {
    let on = |v: &str| {
        std::env::var(v)
            .map(|s| !s.is_empty() && s != "0" && s != "false")
            .unwrap_or(false)
    };
    on("CI") || on("XFERKIT_REQUIRE_EMULATORS")
}

/// The values of the environment variables `vars` (emulator endpoints,
/// credentials), in order; `None` with a note on stderr when one is missing —
/// or a panic naming them when [`emulators_required`].
pub fn emulator_env(vars: &[&str]) -> Option<Vec<String>> {
    let vals: Vec<_> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if vals.iter().all(Option::is_some) {
        return Some(vals.into_iter().flatten().collect());
    }
    assert!(
        !emulators_required(),
        "emulator variables {vars:?} are required (CI / XFERKIT_REQUIRE_EMULATORS)"
    );
    eprintln!("note: {vars:?} not set; start emulators with `cargo xtask emulators start`");
    None
}

/// The variables naming the test run's s3s-fs: endpoint, access key, secret
/// key (for [`emulator_env`]).
pub const S3S_VARS: [&str; 3] = [
    "XFERKIT_S3S_ENDPOINT",
    "XFERKIT_S3S_ACCESS_KEY",
    "XFERKIT_S3S_SECRET_KEY",
];

/// The store table (`backend = "azure"` …) of container `container` under
/// `prefix` on the test run's Azurite (`XFERKIT_AZURITE_*`); `None` (after
/// failing under CI, see [`emulator_env`]) when they are not set. Callers
/// append their own keys and create the container.
pub fn azurite_store_toml(container: &str, prefix: &str) -> Option<String> {
    let v = emulator_env(&[
        "XFERKIT_AZURITE_ENDPOINT",
        "XFERKIT_AZURITE_ACCOUNT",
        "XFERKIT_AZURITE_KEY",
    ])?;
    Some(format!(
        "backend = \"azure\"\naccount = {:?}\ncontainer = {container:?}\nendpoint = {:?}\n\
         account_key = {:?}\nprefix = {prefix:?}\n",
        v[1], v[0], v[2]
    ))
}

fn summary_dir() -> PathBuf {
    std::env::var_os("XFERKIT_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/conformance")
        })
}

/// Record a summary line (e.g. `crash: s3@moto 10 kills, …`) that
/// `cargo xtask test` prints at the end, and print it now.
pub fn report(label: &str, line: &str) {
    eprintln!("{line}");
    write_summary(label, line);
}

fn write_summary(label: &str, line: &str) {
    let dir = summary_dir();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{label}.txt")), format!("{line}\n"));
}

/// Run the suite for every target; the process exit code says whether all
/// cases passed.
pub fn run(targets: Vec<Target>) -> ExitCode {
    let args = Arguments::from_args();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("conformance: cannot start a Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut summaries = Vec::new();
    for target in targets {
        let label = target.label.clone();
        let factory = match target.factory {
            Ok(f) => f,
            Err(reason) => {
                if emulators_required() {
                    eprintln!(
                        "conformance: {label} UNAVAILABLE and emulators are required: {reason}"
                    );
                    let line = format!(
                        "conformance: {label} 0 passed, 1 failed, 0 skipped (unavailable: {reason})"
                    );
                    write_summary(&label, &line);
                    summaries.push(line);
                    failed = true;
                } else {
                    let line = format!(
                        "conformance: {label} 0 passed, 0 failed, {} skipped (unavailable: {reason})",
                        cases::CASES.len()
                    );
                    eprintln!("{line}");
                    write_summary(&label, &line);
                    summaries.push(line);
                }
                continue;
            }
        };
        let prefix = format!("xk-{:016x}", rand::random::<u64>());
        let handler = match rt.block_on(factory(prefix.clone())) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("conformance: {label}: setup failed: {}", e.chain());
                let line =
                    format!("conformance: {label} 0 passed, 1 failed, 0 skipped (setup failed)");
                write_summary(&label, &line);
                summaries.push(line);
                failed = true;
                continue;
            }
        };
        let mut caps = handler.capabilities();
        let base = caps;
        let mut gaps: Vec<(Capabilities, String)> = Vec::new();
        for l in &target.limits {
            let before = caps;
            (l.apply)(&mut caps);
            gaps.push((before, l.reason.clone()));
        }
        let env = Arc::new(cases::Env {
            handler: handler.clone(),
            caps,
            multipart_size: target.multipart_size,
            storage_class: target.storage_class.clone(),
            rt: rt.clone(),
        });
        let mut trials = Vec::new();
        let mut skipped = Vec::new();
        for case in cases::CASES {
            let name = format!("{label}::{}", case.name);
            if let Some((_, why)) = target.skips.iter().find(|(c, _)| c == case.name) {
                skipped.push((name.clone(), format!("emulator bug: {why}")));
                trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
                continue;
            }
            match (case.requires)(&caps) {
                Ok(()) => {
                    let env = env.clone();
                    let run = case.run;
                    trials.push(Trial::test(name, move || {
                        let env2 = env.clone();
                        env.rt.block_on(run(env2, case.name)).map_err(|e| e.into())
                    }));
                }
                Err(missing) => {
                    // Why is it off: the store itself, or an emulator gap
                    // (the last limit before which the case could run)?
                    let reason = if (case.requires)(&base).is_ok() {
                        gaps.iter()
                            .rfind(|(before, _)| (case.requires)(before).is_ok())
                            .map(|(_, r)| format!("emulator gap: {r}"))
                            .unwrap_or_else(|| format!("needs {missing}"))
                    } else {
                        format!("store lacks capability {missing}")
                    };
                    skipped.push((name.clone(), reason));
                    trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
                }
            }
        }
        if let Some(f) = target.faults {
            let env = Arc::new(faults::Env {
                label: label.clone(),
                f,
            });
            for case in faults::CASES {
                let name = format!("{label}::{}", case.name);
                if let Some((_, why)) = target.skips.iter().find(|(c, _)| c == case.name) {
                    skipped.push((name.clone(), format!("emulator bug: {why}")));
                    trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
                } else if let Some(gap) = (case.gap)(&env.f) {
                    skipped.push((name.clone(), format!("emulator gap: {gap}")));
                    trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
                } else {
                    let (env, rt, run) = (env.clone(), rt.clone(), case.run);
                    trials.push(Trial::test(name, move || {
                        rt.block_on(run(env));
                        Ok(())
                    }));
                }
            }
        }
        for (name, reason) in &skipped {
            println!("skipped: {name}: {reason}");
        }
        for (before, reason) in &gaps {
            if *before != caps && !skipped.iter().any(|(_, r)| r.contains(reason.as_str())) {
                println!(
                    "limited: {label}: {reason} (checks depending on it are left out of the cases that still run)"
                );
            }
        }
        if let Some((c, _)) = target.skips.iter().find(|(c, _)| {
            !cases::CASES.iter().any(|k| k.name == c) && !faults::CASES.iter().any(|k| k.name == c)
        }) {
            eprintln!("conformance: {label}: skip_case names no case {c:?}");
            failed = true;
        }
        let conclusion = libtest_mimic::run(&args, trials);
        // Clean up everything this run created under its prefix.
        let cleanup = rt.block_on(async {
            let mut keys = Vec::new();
            let mut s = handler.list("");
            while let Some(o) = s.next().await {
                // A name no key can address cannot be deleted either.
                if let Ok(k) = o?.to_key() {
                    keys.push(k);
                }
            }
            futures::stream::iter(keys)
                .map(|k| {
                    let h = handler.clone();
                    async move { h.delete(&k).await }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()
        });
        if let Err(e) = cleanup {
            eprintln!(
                "conformance: {label}: cleanup under {prefix} failed: {}",
                e.chain()
            );
        }
        let skipped_n = conclusion.num_ignored + conclusion.num_filtered_out;
        let line = format!(
            "conformance: {label} {} passed, {} failed, {} skipped",
            conclusion.num_passed, conclusion.num_failed, skipped_n
        );
        write_summary(&label, &line);
        summaries.push(line);
        if conclusion.has_failed() {
            failed = true;
        }
    }
    println!();
    for s in &summaries {
        println!("{s}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
