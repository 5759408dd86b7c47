//! Shared helpers for the `xfer` integration tests: a sandbox with a clean
//! environment ([`Sandbox`]), `xfer` run in one temp dir ([`xfer_in`]),
//! starting processes with a useful message when they cannot start
//! ([`Spawn`]), and the emulator variables. Each test binary uses a
//! different subset; the CLI tests of the workspace's `tests/` member
//! (crash tests, share flow) include this file too.

#![allow(dead_code, clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

/// The unprivileged user `xfer` runs as when a test needs permissions to
/// bite and the tests run as root (root reads a chmod-000 file anyway).
pub const NOBODY: u32 = 65534;

/// The `xfer` binary cargo built for these tests: this crate's, or, in the
/// workspace's `tests/` member (whose CLI tests include this file), its
/// `xfer-under-test`, the same program built there.
pub const XFER: &str = match (
    option_env!("CARGO_BIN_EXE_xfer"),
    option_env!("CARGO_BIN_EXE_xfer-under-test"),
) {
    (Some(p), _) | (None, Some(p)) => p,
    (None, None) => {
        panic!("no xfer binary: this file serves the tests of xferkit-cli and xferkit-tests")
    }
};

/// Starting a process, panicking with what was started (program,
/// arguments, working directory) and why when it cannot be: a bare
/// `unwrap()` only says "Permission denied".
pub trait Spawn {
    fn output_or_panic(&mut self) -> Output;
    fn status_or_panic(&mut self) -> ExitStatus;
    fn spawn_or_panic(&mut self) -> Child;
}

impl Spawn for Command {
    #[track_caller]
    fn output_or_panic(&mut self) -> Output {
        start(self, None, Command::output)
    }

    #[track_caller]
    fn status_or_panic(&mut self) -> ExitStatus {
        start(self, None, Command::status)
    }

    #[track_caller]
    fn spawn_or_panic(&mut self) -> Child {
        start(self, None, Command::spawn)
    }
}

/// `how(cmd)`, or a panic `cannot start "PROGRAM" "ARG"... (in DIR, as uid
/// UID): ERROR` (`uid`: the one [`CommandExt::uid`] set, if any).
#[track_caller]
fn start<T>(cmd: &mut Command, uid: Option<u32>, how: fn(&mut Command) -> std::io::Result<T>) -> T {
    let e = match how(cmd) {
        Ok(v) => return v,
        Err(e) => e,
    };
    let mut what = format!("{:?}", cmd.get_program());
    for a in cmd.get_args() {
        what.push_str(&format!(" {a:?}"));
    }
    let mut context = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        context.push(format!("in {}", dir.display()));
    }
    if let Some(uid) = uid {
        context.push(format!("as uid {uid}"));
    }
    if !context.is_empty() {
        what.push_str(&format!(" ({})", context.join(", ")));
    }
    panic!("cannot start {what}: {e}")
}

/// `xfer --config DIR/xferkit.toml`, run in `dir` with `dir` as its home
/// and `dir/data`, `dir/cfg`, `dir/state` as its XDG directories, so that
/// nothing of the real home is read or written; for the tests that keep
/// their config and files in one temp dir. The rest of the environment
/// (emulator endpoints, `XFERKIT_LOG`) is inherited, but `XFERKIT_CONFIG`.
pub fn xfer_in(dir: &Path) -> Command {
    let mut c = Command::new(XFER);
    c.arg("--config")
        .arg(dir.join("xferkit.toml"))
        .current_dir(dir)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("cfg"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env_remove("XFERKIT_CONFIG");
    c
}

/// [`Run::of`] as exit code (-1 if killed by a signal), stdout trimmed, stderr.
#[track_caller]
pub fn outcome(cmd: &mut Command) -> (i32, String, String) {
    let r = Run::of(cmd);
    (r.code.unwrap_or(-1), r.stdout.trim().to_string(), r.stderr)
}

/// A temp home, XDG dirs, a working directory and (usually) a config file.
pub struct Sandbox {
    pub dir: TempDir,
    pub config: Option<PathBuf>,
    /// Run `xfer` as this uid/gid (see [`Sandbox::unprivileged`]).
    pub uid: Option<u32>,
    /// The `xfer` that runs: [`XFER`], or a copy that uid can execute.
    pub program: PathBuf,
    /// Holds that copy (beside the sandbox, so snapshots leave it out).
    bin: Option<TempDir>,
    /// Extra environment variables for every run.
    pub env: Vec<(String, String)>,
}

/// What one run of `xfer` did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Run `cmd` to the end; panics if it cannot start or if it panicked.
    #[track_caller]
    pub fn of(cmd: &mut Command) -> Run {
        let r = Run::from(cmd.output_or_panic());
        assert!(
            !r.stderr.contains("panicked"),
            "xfer panicked: {}",
            r.stderr
        );
        r
    }

    /// stdout without its trailing newline.
    pub fn out(&self) -> &str {
        self.stdout.trim_end_matches('\n')
    }

    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

impl Sandbox {
    /// A local store `local` rooted at `<sandbox>/root`.
    pub fn local() -> Self {
        let sb = Self::bare();
        std::fs::create_dir(sb.root()).unwrap();
        let toml = format!(
            "[stores.local]\nbackend = \"local\"\nroot = {:?}\n",
            sb.root().display().to_string()
        );
        sb.with_config(&toml)
    }

    /// No config file.
    pub fn bare() -> Self {
        let dir = tempfile::tempdir_in(sandbox_base()).unwrap();
        for d in ["home", "data", "cfg", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Sandbox {
            dir,
            config: None,
            uid: None,
            program: XFER.into(),
            bin: None,
            env: Vec::new(),
        }
    }

    /// Use `toml` as the config file (`XFERKIT_CONFIG`).
    pub fn with_config(mut self, toml: &str) -> Self {
        let path = self.path("xferkit-test.toml");
        std::fs::write(&path, toml).unwrap();
        self.config = Some(path);
        self
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn work(&self) -> PathBuf {
        self.path("work")
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    /// `file://` URL prefix of the store `local`.
    pub fn root_url(&self) -> String {
        let root = std::fs::canonicalize(self.root()).unwrap();
        format!("file://{}/", root.display())
    }

    /// Write a file in the working directory.
    pub fn file(&self, name: impl AsRef<OsStr>, data: &[u8]) -> PathBuf {
        let p = self.work().join(name.as_ref());
        std::fs::write(&p, data).unwrap();
        p
    }

    /// From now on run `xfer` as an unprivileged user if the tests run as
    /// root, so that permission bits apply. Everything created so far is
    /// opened up to that user; make the paths meant to be unreadable or
    /// unwritable afterwards. Returns whether it switched.
    ///
    /// That user runs a copy of `xfer` in a 0755 temp dir beside the
    /// sandbox: the one under `target/` may sit in a checkout it cannot
    /// reach (a clone under a 0700 directory, as root's `mktemp -d` makes).
    /// Panics, naming the directory, if it could not reach the sandbox.
    pub fn unprivileged(&mut self) -> bool {
        if !is_root() {
            return false;
        }
        let base = self.dir.path().parent().unwrap();
        if let Some(closed) = unsearchable_ancestor(base) {
            panic!(
                "uid {NOBODY} cannot reach the sandbox {}: {closed} is not searchable by \
                 others; point TMPDIR at a directory that it and each directory above it \
                 let every user search (o+x)",
                self.dir.path().display()
            );
        }
        let bin = tempfile::Builder::new()
            .prefix(".xfer-bin")
            .tempdir_in(base)
            .unwrap();
        let program = bin.path().join("xfer");
        std::fs::copy(XFER, &program)
            .unwrap_or_else(|e| panic!("cannot copy {XFER} to {}: {e}", program.display()));
        for p in [bin.path(), &program] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        open_up(self.dir.path());
        self.program = program;
        self.bin = Some(bin);
        self.uid = Some(NOBODY);
        true
    }

    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .current_dir(self.work())
            .env_clear()
            .env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("data"))
            .env("XDG_CONFIG_HOME", self.path("cfg"))
            // A panic would print its backtrace: more lines, caught below.
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        if let Some(c) = &self.config {
            cmd.env("XFERKIT_CONFIG", c);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(uid) = self.uid {
            cmd.uid(uid).gid(uid);
        }
        cmd
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        Run::from(start(&mut self.command(args), self.uid, Command::output))
    }

    /// Run and expect success.
    pub fn ok<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, Some(0), "xfer {args:?} failed: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
        r
    }

    /// Run `args` and expect the failure [`check_failure`] describes.
    pub fn fails<S: AsRef<OsStr> + std::fmt::Debug>(
        &self,
        args: &[S],
        code: i32,
        needles: &[&str],
    ) -> Run {
        let r = self.run(args);
        check_failure(&r, code, needles, &format!("{args:?}"));
        r
    }

    /// Every file under the sandbox with its content (`None`: unreadable).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// Run `args`, expect the failure `check_failure` describes, and that
    /// nothing changed: every file under the sandbox (sources, store, work
    /// dir) has the same content as before, no file was added, and the
    /// local store's temp directory is empty.
    pub fn fails_cleanly<S: AsRef<OsStr> + std::fmt::Debug>(
        &self,
        args: &[S],
        code: i32,
        needles: &[&str],
    ) -> Run {
        let before = self.snapshot();
        let r = self.fails(args, code, needles);
        let after = self.snapshot();
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "xfer {args:?} added or removed files"
        );
        for (k, v) in &before {
            assert!(after[k] == *v, "xfer {args:?} changed {}", k.display());
        }
        assert_no_temp_files(&self.root());
        r
    }
}

/// A failure: exit `code`, exactly one line on stderr that starts with
/// `xfer: ` and contains every needle, no panic or backtrace.
pub fn check_failure(r: &Run, code: i32, needles: &[&str], what: &str) {
    assert_eq!(r.code, Some(code), "xfer {what}: {r:?}");
    assert!(
        r.stderr.ends_with('\n') && r.stderr.lines().count() == 1,
        "xfer {what}: stderr is not exactly one line: {:?}",
        r.stderr
    );
    assert!(
        r.stderr.starts_with("xfer: "),
        "xfer {what}: {:?}",
        r.stderr
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!r.stderr.contains(bad), "xfer {what}: {:?}", r.stderr);
    }
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "xfer {what}: stderr does not name {n:?}: {:?}",
            r.stderr
        );
    }
}

/// `root/.xferkit/tmp`, if present, holds nothing.
pub fn assert_no_temp_files(root: &Path) {
    let tmp = root.join(".xferkit").join("tmp");
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        let left: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).ok());
        }
    }
}

/// chmod a+rwX everything under `dir` (and `dir`).
fn open_up(dir: &Path) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let mode = if meta.is_dir() { 0o777 } else { 0o666 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            open_up(&e.unwrap().path());
        }
    }
}

/// Where sandboxes are made: the temp dir, except when the tests run as root
/// and others cannot search it (e.g. `TMPDIR` inside a 0700 directory) while
/// they can search `/tmp`: then `/tmp`, so that [`Sandbox::unprivileged`]
/// works (it fails, naming the directory, where neither will do).
fn sandbox_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if is_root()
            && let Some(closed) = unsearchable_ancestor(&tmp)
            && unsearchable_ancestor(Path::new("/tmp")).is_none()
        {
            eprintln!(
                "note: sandboxes go under /tmp: uid {NOBODY}, which some tests run xfer as, \
                 cannot reach the temp dir {} ({closed} is not searchable by others)",
                tmp.display()
            );
            return PathBuf::from("/tmp");
        }
        tmp
    })
}

/// The first directory from `/` down to `dir` (symlinks resolved) that others
/// cannot search (no `o+x`), with its mode; or `dir` itself if it is missing.
fn unsearchable_ancestor(dir: &Path) -> Option<String> {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return Some(format!("{} (missing)", dir.display()));
    };
    let mut chain: Vec<&Path> = real.ancestors().collect();
    chain.reverse();
    chain.into_iter().find_map(|d| {
        let mode = std::fs::metadata(d).map_or(0, |m| m.permissions().mode());
        (mode & 0o001 == 0).then(|| format!("{} (mode {:o})", d.display(), mode & 0o7777))
    })
}

/// Whether this process runs as root (uid 0), from `/proc/self/status`.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Whether missing emulators must fail tests (CI, `cargo xtask test`).
pub use xferkit_conformance::emulators_required as required;

/// The values of `vars`, or None (after failing under CI) when one is missing.
pub fn emulator(vars: &[&str]) -> Option<Vec<String>> {
    let vals: Vec<_> = vars
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    if vals.iter().all(Option::is_some) {
        return Some(vals.into_iter().flatten().collect());
    }
    assert!(
        !required(),
        "emulator variables {vars:?} are required (CI / XFERKIT_REQUIRE_EMULATORS)"
    );
    eprintln!(
        "note: {vars:?} not set; skipping (start emulators with `cargo xtask emulators start`)"
    );
    None
}

/// A prefix unique to this test process and `tag`.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A small random source, seeded from `XFERKIT_TEST_SEED` or the clock; the
/// seed is printed so that a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("XFERKIT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (XFERKIT_TEST_SEED={seed} repeats the kill points)");
        Rng(seed)
    }

    /// splitmix64.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub const MIB: u64 = 1 << 20;

/// Write `len` bytes (a multiple of 1 MiB) that are neither sparse nor the
/// same in any two blocks.
pub fn big_file(path: &Path, len: u64) {
    use std::io::Write;
    let block = pseudo_random(MIB as usize, 7);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..len / MIB {
        f.write_all(&i.to_le_bytes()).unwrap();
        f.write_all(&block[8..]).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// Whether the two files hold the same bytes (read 1 MiB at a time).
pub fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

/// A store table parsed the way the facade does (serde over TOML, without
/// its `backend` key), to build a backend directly in a test.
pub fn store_config<T: serde::de::DeserializeOwned>(toml: &str) -> T {
    let mut table: toml::Table = toml.parse().unwrap();
    table.remove("backend");
    table.try_into().unwrap()
}

/// The `[stores.NAME]` body of an S3 store on s3s-fs (bucket `bucket`
/// created, keys under `prefix`), or None (after failing under CI) without
/// the emulator.
pub async fn s3_store_toml(bucket: &str, prefix: &str) -> Option<String> {
    let v = xferkit_conformance::emulator_env(&xferkit_conformance::S3S_VARS)?;
    let toml = format!(
        "backend = \"s3\"\nbucket = {bucket:?}\nendpoint = {:?}\nforce_path_style = true\n\
         access_key_id = {:?}\nsecret_access_key = {:?}\nprefix = {prefix:?}\n",
        v[0], v[1], v[2]
    );
    let store = xferkit_s3::S3Store::new("setup", store_config(&toml))
        .await
        .unwrap();
    store.ensure_bucket().await.unwrap();
    Some(toml)
}

/// Likewise an Azure store on Azurite (container created).
pub async fn azure_store_toml(container: &str, prefix: &str) -> Option<String> {
    let toml = xferkit_conformance::azurite_store_toml(container, prefix)?;
    let store = xferkit_azure::AzureStore::new("setup", store_config(&toml))
        .await
        .unwrap();
    store.create_container_if_missing().await.unwrap();
    Some(toml)
}

/// Likewise a GCS store on fake-gcs-server (bucket created), with a service
/// account file written into `dir` so that it can sign URLs.
pub async fn gcs_store_toml(bucket: &str, prefix: &str, dir: &Path) -> Option<String> {
    let endpoint = xferkit_conformance::gcs::emulator_with_bucket(bucket).await?;
    let cred = xferkit_conformance::gcs::service_account_file(dir).unwrap();
    Some(format!(
        "backend = \"gcs\"\nbucket = {bucket:?}\nendpoint = {endpoint:?}\nanonymous = true\n\
         credentials_file = {:?}\nprefix = {prefix:?}\n",
        cred.display().to_string()
    ))
}

/// Write `tree` (relative path → content) under `root`.
pub fn write_tree(root: &Path, tree: &BTreeMap<String, Vec<u8>>) {
    for (rel, data) in tree {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Every regular file under `root` (the local store's `.xferkit` left out).
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if e.file_name() == ".xferkit" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}
