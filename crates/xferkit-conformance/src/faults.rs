//! Fault and resume cases, written once and run through the TCP fault proxy
//! ([`crate::fault`]) on every target that describes its requests with a
//! [`Faults`] ([`Target::faults`](crate::Target::faults)). What differs
//! between backends is data: how to build a store on an endpoint, which
//! requests carry an upload part (S3 `partNumber=`, Azure `blockid=`, a GCS
//! resumable session's `upload_id=`) or a one-request upload, and what the
//! emulator does with a flipped byte. What every target must show:
//!
//! - 64 MiB up (in parts, and in one request) and down (ranged GETs) through
//!   resets mid-body and 503s finish byte-identical, and the proxy counts the
//!   faults it injected;
//! - 503s or resets that never clear fail with `RetriesExhausted` naming the
//!   request, within the budget, and leave nothing visible (nor a pending
//!   upload where the emulator lists them);
//! - a byte flipped on the way up never ends as a wrong file: the store
//!   refuses it and it is sent again, or the upload fails with
//!   `ChecksumMismatch` leaving nothing, or the download refuses it leaving
//!   no file; which one is declared per target and asserted; flipped on every
//!   try, the upload fails within the budget leaving nothing;
//! - a byte flipped on the way down fails a ranged download on the combined
//!   checksum, leaving no file;
//! - a crashed upload (its task dropped, as `kill -9` would) resumes sending
//!   only the parts the store has not acknowledged; a source that changed
//!   meanwhile starts over.
//!
//! Cases a target cannot run are skipped with the emulator gap printed.
//! Each case starts its own proxy and writes under its own prefix.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use xferkit_core::journal::JournalFile;
use xferkit_core::{
    DynHandler, ErrorKind, FileTransferExt, PutOptions, Result, RetryPolicy, TransferCtx,
    UploadSource,
};

use crate::fault::{Fault, FaultProxy, Rule, SeenRequest};
use crate::testkit::{assert_exhausted, data, quick_retry, unique_prefix, valid_key, write_file};

const MIB: usize = 1024 * 1024;

/// Builds a store for a case from a [`StoreSpec`].
pub type StoreFn = Arc<dyn Fn(StoreSpec) -> BoxFuture<'static, Result<DynHandler>> + Send + Sync>;

/// Wrap an async store builder as a [`StoreFn`].
pub fn store_fn<F, Fut>(f: F) -> StoreFn
where
    F: Fn(StoreSpec) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<DynHandler>> + Send + 'static,
{
    Arc::new(move |spec| Box::pin(f(spec)))
}

/// What a case asks of a store: where it talks to, under which prefix, and
/// the settings only the backend's own config can set.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// The emulator's endpoint, or the proxy's standing in for it.
    pub endpoint: String,
    pub prefix: String,
    /// Upload in one request up to this size (the multipart threshold);
    /// above it in parts of [`Faults::part_size`].
    pub one_request_up_to: u64,
    /// Parts in flight at once (where the backend has the setting); `None`:
    /// its default.
    pub concurrency: Option<usize>,
    /// The store's own retry policy; `None`: its default.
    pub retry: Option<RetryPolicy>,
    /// Where the store keeps upload journals; `None`: no journal.
    pub state_dir: Option<PathBuf>,
}

/// Which requests of a backend do one job: a method and a piece of the
/// path or query every one of them has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    pub method: &'static str,
    pub path_contains: Option<&'static str>,
}

impl Requests {
    /// Requests with `method` whose target contains `needle`.
    pub const fn with(method: &'static str, needle: &'static str) -> Self {
        Requests {
            method,
            path_contains: Some(needle),
        }
    }

    /// Every request with `method`.
    pub const fn any(method: &'static str) -> Self {
        Requests {
            method,
            path_contains: None,
        }
    }

    /// A proxy rule injecting `fault` into these requests.
    pub fn rule(&self, fault: Fault) -> Rule {
        let r = Rule::new(fault).method(self.method);
        match self.path_contains {
            Some(n) => r.path_contains(n),
            None => r,
        }
    }

    /// Whether the proxy's `r` is one of these requests.
    pub fn matches(&self, r: &SeenRequest) -> bool {
        r.method.eq_ignore_ascii_case(self.method)
            && self.path_contains.is_none_or(|n| r.target.contains(n))
    }
}

/// Where a byte flipped once in an upload body is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupted {
    /// The store (or xferkit, comparing the checksum the store reports) refuses
    /// the body, it is sent again once, and the object is byte-identical.
    Resent,
    /// The upload fails with `ChecksumMismatch` and nothing is left under
    /// the key.
    RefusedAtUpload,
    /// The upload succeeds (the store keeps the checksum as sent), and a
    /// download fails on it leaving no file.
    RefusedAtDownload,
}

/// One kind of upload request (a whole object in one request, or one part)
/// and what the emulator does with a flipped byte in it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub requests: Requests,
    /// A byte flipped once.
    pub corrupted_once: Corrupted,
    /// A byte flipped on every try: `Some(text)` when the store refuses each
    /// one (the failure's chain holds `text`), `None` when the case does not
    /// apply (the store keeps what it got, or the upload is not retried).
    pub corrupted_always: Option<&'static str>,
}

/// A header every upload body request carries with its checksum.
#[derive(Debug, Clone, Copy)]
pub struct ChecksumHeader {
    pub name: &'static str,
    /// Length of its value (8 hex digits of a CRC32C, 24 base64 of an MD5).
    pub len: usize,
    /// Body requests that carry none, by a piece of their target (Azure's
    /// Put Block List).
    pub except: Option<&'static str>,
}

/// How to run the fault cases on one target: data, not code, but for the
/// store builder.
pub struct Faults {
    /// The emulator's endpoint (the proxy forwards to it).
    pub upstream: String,
    /// A store on a [`StoreSpec`]'s endpoint.
    pub store: StoreFn,
    /// Size of one part (block, chunk).
    pub part_size: u64,
    /// A whole object in one request.
    pub one_request: Shape,
    /// One part of a multipart (staged, resumable) upload.
    pub part: Shape,
    /// What a spent retry budget of a part names (`part`, `block`, `chunk at byte 0`).
    pub part_names: &'static str,
    /// The GETs that carry an object's bytes.
    pub media_get: Requests,
    pub checksum_header: Option<ChecksumHeader>,
    /// The emulator lists pending multipart uploads, so "nothing pending" is checked.
    pub lists_pending: bool,
    /// The HTTP client may send a request again on a fresh connection when a
    /// reused one is reset under it, so a reset can cost no try: the cases
    /// then count at least one reset per try instead of exactly one.
    pub resends_on_reset: bool,
    /// Why a failed part cannot be retried on this emulator, if so.
    pub part_retry_gap: Option<&'static str>,
    /// Why a crashed upload cannot resume on this emulator, if so.
    pub resume_gap: Option<&'static str>,
    /// Why a ranged download cannot check a whole-object checksum of a
    /// multipart upload here, if so.
    pub ranged_checksum_gap: Option<&'static str>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("upstream", &self.upstream)
            .field("part_size", &self.part_size)
            .field("part", &self.part)
            .field("one_request", &self.one_request)
            .finish_non_exhaustive()
    }
}

/// What a fault case runs with.
pub(crate) struct Env {
    pub label: String,
    pub f: Faults,
}

type Gap = fn(&Faults) -> Option<&'static str>;

pub(crate) struct FaultCase {
    pub name: &'static str,
    pub gap: Gap,
    pub run: fn(Arc<Env>) -> BoxFuture<'static, ()>,
}

fn none(_: &Faults) -> Option<&'static str> {
    None
}
fn part_retry(f: &Faults) -> Option<&'static str> {
    f.part_retry_gap
}
fn resume(f: &Faults) -> Option<&'static str> {
    f.resume_gap
}
fn ranged_checksum(f: &Faults) -> Option<&'static str> {
    f.ranged_checksum_gap
}
fn corrupted_always(f: &Faults) -> Option<&'static str> {
    (f.one_request.corrupted_always.is_none() && f.part.corrupted_always.is_none())
        .then_some("the store keeps a body whose checksum does not match (or does not retry it)")
}

macro_rules! case {
    ($group:literal, $name:ident, $gap:expr) => {
        FaultCase {
            name: concat!($group, "::", stringify!($name)),
            gap: $gap,
            run: |e| Box::pin($name(e)),
        }
    };
}

pub(crate) static CASES: &[FaultCase] = &[
    case!(
        "faults",
        upload_64mib_in_parts_through_resets_and_503s_is_byte_identical,
        part_retry
    ),
    case!(
        "faults",
        upload_64mib_in_one_request_through_resets_and_503s_is_byte_identical,
        none
    ),
    case!(
        "faults",
        download_64mib_through_resets_and_503s_is_byte_identical,
        none
    ),
    case!(
        "faults",
        faults_that_never_clear_fail_within_the_budget_leaving_nothing,
        none
    ),
    case!(
        "faults",
        a_body_corrupted_once_on_the_way_up_never_downloads_as_a_wrong_file,
        none
    ),
    case!(
        "faults",
        a_body_corrupted_on_every_try_fails_leaving_nothing,
        corrupted_always
    ),
    case!(
        "faults",
        a_byte_corrupted_on_the_way_down_fails_a_ranged_download,
        ranged_checksum
    ),
    case!(
        "resume",
        a_crashed_upload_resumes_sending_only_the_missing_parts,
        resume
    ),
    case!("resume", a_changed_source_starts_over, resume),
];

// ---------- helpers ----------

impl Env {
    fn spec(&self, endpoint: &str, prefix: &str) -> StoreSpec {
        StoreSpec {
            endpoint: endpoint.to_string(),
            prefix: prefix.to_string(),
            one_request_up_to: self.f.part_size,
            concurrency: Some(4),
            retry: Some(quick_retry(6)),
            state_dir: None,
        }
    }

    async fn store(&self, spec: StoreSpec) -> DynHandler {
        let what = format!("{}: store on {}", self.label, spec.endpoint);
        (self.f.store)(spec)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", e.chain()))
    }
}

/// A proxy in front of the emulator, a store through it and one straight on
/// the emulator (to check what is left), both under a fresh prefix, and a
/// temp dir for files.
struct Bed {
    proxy: FaultProxy,
    via: DynHandler,
    direct: DynHandler,
    dir: tempfile::TempDir,
}

impl Bed {
    /// `tune` adjusts the spec of the store through the proxy.
    async fn new(e: &Env, tag: &str, tune: impl FnOnce(&mut StoreSpec)) -> Bed {
        let proxy = FaultProxy::start(&e.f.upstream)
            .await
            .unwrap_or_else(|err| panic!("{}: fault proxy: {err}", e.label));
        let prefix = unique_prefix("faults", tag);
        let mut spec = e.spec(&proxy.endpoint_for(&e.f.upstream), &prefix);
        tune(&mut spec);
        let via = e.store(spec).await;
        let direct = e.store(e.spec(&e.f.upstream, &prefix)).await;
        Bed {
            proxy,
            via,
            direct,
            dir: tempdir(),
        }
    }

    fn file(&self, name: &str, body: &[u8]) -> PathBuf {
        write_file(self.dir.path(), name, body)
    }

    /// Download `key` straight from the emulator; whether it equals `body`.
    async fn stored_equals(&self, key: &str, body: &[u8]) -> bool {
        let dest = self.dir.path().join(format!("{key}.direct"));
        self.direct
            .download_to_path(&valid_key(key), &dest, None, &TransferCtx::none())
            .await
            .unwrap_or_else(|e| panic!("download of {key}: {}", e.chain()));
        read(&dest) == body
    }

    /// Nothing under the prefix: each key is `NotFound`, the listing is
    /// empty, and (where the emulator lists them) no upload is pending.
    async fn assert_nothing_left(&self, e: &Env, keys: &[&str]) {
        self.proxy.clear();
        for key in keys {
            let err = self
                .direct
                .stat(&valid_key(key))
                .await
                .expect_err("nothing may be visible");
            assert_eq!(
                err.kind(),
                ErrorKind::NotFound,
                "{}: {key}: {}",
                e.label,
                err.chain()
            );
        }
        let listed: Vec<_> = self.direct.list("").collect().await;
        assert!(listed.is_empty(), "{}: {listed:?}", e.label);
        if e.f.lists_pending {
            let pending = self
                .direct
                .list_pending_uploads("")
                .await
                .unwrap_or_else(|err| panic!("{}: list pending uploads: {}", e.label, err.chain()));
            assert!(
                pending.is_empty(),
                "{}: upload left pending: {pending:?}",
                e.label
            );
        }
    }

    /// The proxy's requests from index `from` on that `r` matches.
    fn count(&self, from: usize, r: &Requests) -> usize {
        self.proxy.requests()[from..]
            .iter()
            .filter(|q| r.matches(q))
            .count()
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"))
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

async fn delete(s: &DynHandler, key: &str) {
    s.delete(&valid_key(key))
        .await
        .unwrap_or_else(|e| panic!("delete {key}: {}", e.chain()));
}

fn retrying(attempts: u32) -> TransferCtx {
    TransferCtx::none().with_retry_policy(quick_retry(attempts))
}

async fn upload(s: &DynHandler, key: &str, src: PathBuf, ctx: &TransferCtx) -> Result<u64> {
    s.upload(
        &valid_key(key),
        UploadSource::Path(src),
        &PutOptions::default(),
        ctx,
    )
    .await
    .map(|o| o.size)
}

// ---------- faults ----------

/// Parts: every 4th is cut after 1 MiB, every 5th of the rest gets a 503.
async fn upload_64mib_in_parts_through_resets_and_503s_is_byte_identical(e: Arc<Env>) {
    let b = Bed::new(&e, "up", |_| {}).await;
    let body = data(64 * MIB, 7);
    let src = b.file("src.bin", &body);
    let part = e.f.part.requests;
    b.proxy.set_rules(vec![
        part.rule(Fault::ResetRequestAfter(MIB as u64)).every(4),
        part.rule(Fault::Status(503)).every(5),
    ]);
    let size = upload(&b.via, "big.bin", src, &retrying(6))
        .await
        .unwrap_or_else(|err| panic!("{}: upload through faults: {}", e.label, err.chain()));
    assert_eq!(size, body.len() as u64);
    let stats = b.proxy.stats();
    assert!(stats.resets > 0 && stats.statuses > 0, "{stats:?}");
    assert!(
        b.stored_equals("big.bin", &body).await,
        "stored bytes differ"
    );
    delete(&b.direct, "big.bin").await;
}

/// One request (below the multipart threshold), so a retry resends it
/// whole: the first two tries are cut 8 MiB and 40 MiB into the body, the
/// third gets a 503, the fourth goes through.
async fn upload_64mib_in_one_request_through_resets_and_503s_is_byte_identical(e: Arc<Env>) {
    let b = Bed::new(&e, "up1", |s| s.one_request_up_to = 128 * MIB as u64).await;
    let body = data(64 * MIB, 7);
    let src = b.file("src.bin", &body);
    let one = e.f.one_request.requests;
    b.proxy.set_rules(vec![
        one.rule(Fault::ResetRequestAfter(8 * MIB as u64)).times(1),
        one.rule(Fault::ResetRequestAfter(40 * MIB as u64)).times(1),
        one.rule(Fault::Status(503)).times(1),
    ]);
    let size = upload(&b.via, "big.bin", src, &retrying(6))
        .await
        .unwrap_or_else(|err| panic!("{}: upload through faults: {}", e.label, err.chain()));
    assert_eq!(size, body.len() as u64);
    let stats = b.proxy.stats();
    assert_eq!((stats.resets, stats.statuses), (2, 1), "{stats:?}");
    assert!(
        b.stored_equals("big.bin", &body).await,
        "stored bytes differ"
    );
    delete(&b.direct, "big.bin").await;
}

/// GETs of the object's bytes: every 3rd is cut 3 MiB into its answer;
/// every 4th GET of the rest is a 503.
async fn download_64mib_through_resets_and_503s_is_byte_identical(e: Arc<Env>) {
    let b = Bed::new(&e, "down", |_| {}).await;
    let body = data(64 * MIB, 11);
    let src = b.file("src.bin", &body);
    upload(&b.direct, "big.bin", src, &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: upload: {}", e.label, err.chain()));
    b.proxy.set_rules(vec![
        e.f.media_get
            .rule(Fault::ResetResponseAfter(3 * MIB as u64))
            .every(3),
        Rule::new(Fault::Status(503)).method("GET").every(4),
    ]);
    let dest = b.dir.path().join("back.bin");
    let obj = b
        .via
        .download_to_path(&valid_key("big.bin"), &dest, None, &retrying(6))
        .await
        .unwrap_or_else(|err| panic!("{}: download through faults: {}", e.label, err.chain()));
    assert_eq!(obj.size, body.len() as u64);
    let stats = b.proxy.stats();
    assert!(stats.resets > 0 && stats.statuses > 0, "{stats:?}");
    assert!(read(&dest) == body, "downloaded bytes differ");
    delete(&b.direct, "big.bin").await;
}

/// Parts that always answer 503 (the abort still gets through, as it would
/// with a broken data path), then a one-request upload cut 64 KiB into the
/// body on every try: both fail naming the request after exactly 3 tries,
/// and leave nothing.
async fn faults_that_never_clear_fail_within_the_budget_leaving_nothing(e: Arc<Env>) {
    let b = Bed::new(&e, "dead", |_| {}).await;
    let ctx = retrying(3);

    b.proxy
        .set_rules(vec![e.f.part.requests.rule(Fault::Status(503))]);
    let src = b.file("multi.bin", &data(12 * MIB, 3));
    let err = upload(&b.via, "multi.bin", src, &ctx)
        .await
        .expect_err("parts that always fail must fail the upload");
    assert_exhausted(&err, 3, e.f.part_names);
    assert!(b.proxy.stats().statuses >= 3, "{:?}", b.proxy.stats());

    b.proxy.set_rules(vec![
        e.f.one_request
            .requests
            .rule(Fault::ResetRequestAfter(64 * 1024)),
    ]);
    let src = b.file("single.bin", &data(MIB, 5));
    let before = b.proxy.stats().resets;
    let err = upload(&b.via, "single.bin", src, &ctx)
        .await
        .expect_err("an upload that is always cut must fail");
    assert_exhausted(&err, 3, "single.bin");
    let resets = b.proxy.stats().resets - before;
    if e.f.resends_on_reset {
        assert!(resets >= 3, "at least one reset per try: {resets}");
    } else {
        assert_eq!(resets, 3, "one reset per try");
    }
    b.assert_nothing_left(&e, &["multi.bin", "single.bin"])
        .await;
}

/// One byte flipped on the way up, in a one-request upload and in the
/// second part request of a multipart one: whatever the store does with it,
/// no wrong file comes out, and it does what the target declares. Every
/// body request carried the target's checksum header.
async fn a_body_corrupted_once_on_the_way_up_never_downloads_as_a_wrong_file(e: Arc<Env>) {
    let b = Bed::new(&e, "corrupt", |_| {}).await;
    let ctx = retrying(4);
    let start = b.proxy.requests().len();
    let parts = (12 * MIB as u64).div_ceil(e.f.part_size) as usize;
    for (key, len, shape, rule, requests) in [
        (
            "single.bin",
            MIB,
            e.f.one_request,
            e.f.one_request
                .requests
                .rule(Fault::CorruptRequestBody(300_000)),
            1,
        ),
        (
            "multi.bin",
            12 * MIB,
            e.f.part,
            e.f.part
                .requests
                .rule(Fault::CorruptRequestBody(1_000_000))
                .after(1),
            parts,
        ),
    ] {
        let who = format!("{}: {key}", e.label);
        let body = data(len, 33);
        let src = b.file(key, &body);
        let before = b.proxy.stats().corruptions;
        let seen = b.proxy.requests().len();
        b.proxy.set_rules(vec![rule.times(1)]);
        let up = upload(&b.via, key, src, &ctx).await;
        b.proxy.clear();
        assert_eq!(b.proxy.stats().corruptions - before, 1, "{who}");
        let outcome = match up {
            Err(err) => {
                assert_eq!(
                    err.kind(),
                    ErrorKind::ChecksumMismatch,
                    "{who}: {}",
                    err.chain()
                );
                let gone = b
                    .direct
                    .stat(&valid_key(key))
                    .await
                    .expect_err("a corrupted object stayed");
                assert_eq!(gone.kind(), ErrorKind::NotFound, "{who}");
                Corrupted::RefusedAtUpload
            }
            Ok(_) => {
                let dest = b.dir.path().join(format!("{key}.back"));
                match b
                    .direct
                    .download_to_path(&valid_key(key), &dest, None, &ctx)
                    .await
                {
                    Ok(_) => {
                        assert!(
                            read(&dest) == body,
                            "{who}: a corrupted object downloaded as if whole"
                        );
                        // Intact after a flipped byte: it was sent again, once.
                        let sent = b.count(seen, &shape.requests);
                        assert_eq!(sent, requests + 1, "{who}: sent again once");
                        Corrupted::Resent
                    }
                    Err(err) => {
                        assert!(
                            err.chain().to_ascii_lowercase().contains("checksum"),
                            "{who}: {}",
                            err.chain()
                        );
                        assert!(!dest.exists(), "{who}: a refused download left a file");
                        Corrupted::RefusedAtDownload
                    }
                }
            }
        };
        eprintln!("{who}: {outcome:?}");
        assert_eq!(outcome, shape.corrupted_once, "{who}");
        let _ = b.direct.delete(&valid_key(key)).await;
    }
    if let Some(h) = e.f.checksum_header {
        let bodies: Vec<_> = b.proxy.requests()[start..]
            .iter()
            .filter(|r| e.f.one_request.requests.matches(r) || e.f.part.requests.matches(r))
            .filter(|r| h.except.is_none_or(|x| !r.target.contains(x)))
            .filter(|r| r.header("content-length").is_some_and(|l| l != "0"))
            .cloned()
            .collect();
        assert!(bodies.len() > parts, "{}: {bodies:?}", e.label);
        for r in &bodies {
            assert!(
                r.header(h.name).is_some_and(|v| v.len() == h.len),
                "{}: no {} on {} {}",
                e.label,
                h.name,
                r.method,
                r.target
            );
        }
    }
}

/// A body flipped on every try, where the store refuses each: the upload
/// fails within the budget naming the request and the refusal, and nothing
/// is visible.
async fn a_body_corrupted_on_every_try_fails_leaving_nothing(e: Arc<Env>) {
    let b = Bed::new(&e, "corrupt-dead", |_| {}).await;
    let ctx = retrying(3);
    let mut keys = Vec::new();
    for (key, len, shape, names) in [
        ("single.bin", MIB, e.f.one_request, "single.bin"),
        ("multi.bin", 12 * MIB, e.f.part, e.f.part_names),
    ] {
        let Some(refusal) = shape.corrupted_always else {
            continue;
        };
        keys.push(key);
        let before = b.proxy.stats().corruptions;
        b.proxy
            .set_rules(vec![shape.requests.rule(Fault::CorruptRequestBody(1000))]);
        let src = b.file(key, &data(len, 9));
        let err = upload(&b.via, key, src, &ctx)
            .await
            .expect_err("a body corrupted on every try must fail");
        b.proxy.clear();
        assert_exhausted(&err, 3, names);
        assert!(err.chain().contains(refusal), "{}", err.chain());
        let flipped = b.proxy.stats().corruptions - before;
        if key == "single.bin" {
            assert_eq!(flipped, 3, "{}: one flip per try", e.label);
        } else {
            assert!(flipped >= 3, "{}: {flipped} flips", e.label);
        }
    }
    b.assert_nothing_left(&e, &keys).await;
}

/// One byte flipped on the way down in one range of a ranged download
/// (40 MiB, 16 MiB ranges): the checksum combined from the ranges differs
/// from the object's, the download fails with `ChecksumMismatch` naming the
/// object, and no file (nor partial file) is left; without the fault it
/// downloads byte-identical.
async fn a_byte_corrupted_on_the_way_down_fails_a_ranged_download(e: Arc<Env>) {
    let b = Bed::new(&e, "corrupt-down", |_| {}).await;
    let body = data(40 * MIB, 44);
    let src = b.file("big.bin", &body);
    upload(&b.via, "big.bin", src, &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: upload: {}", e.label, err.chain()));
    b.proxy.set_rules(vec![
        e.f.media_get
            .rule(Fault::CorruptResponseBody(5 * MIB as u64))
            .after(2)
            .times(1),
    ]);
    let down = tempdir();
    let dest = down.path().join("back.bin");
    let err = b
        .via
        .download_to_path(&valid_key("big.bin"), &dest, None, &TransferCtx::none())
        .await
        .expect_err("a corrupted range must fail the download");
    assert_eq!(b.proxy.stats().corruptions, 1);
    assert_eq!(err.kind(), ErrorKind::ChecksumMismatch, "{}", err.chain());
    assert!(err.to_string().contains("big.bin"), "{err}");
    assert!(!dest.exists());
    let leftovers: Vec<_> = std::fs::read_dir(down.path())
        .unwrap_or_else(|err| panic!("{err}"))
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    b.proxy.clear();
    b.via
        .download_to_path(&valid_key("big.bin"), &dest, None, &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: download: {}", e.label, err.chain()));
    assert!(read(&dest) == body);
    delete(&b.via, "big.bin").await;
}

// ---------- resume ----------

/// A store through `proxy` journaling under `state`, 2 parts in flight,
/// with the backend's own retry policy.
async fn journaled(e: &Env, proxy: &FaultProxy, prefix: &str, state: &Path) -> DynHandler {
    let mut spec = e.spec(&proxy.endpoint_for(&e.f.upstream), prefix);
    spec.concurrency = Some(2);
    spec.retry = None;
    spec.state_dir = Some(state.to_path_buf());
    e.store(spec).await
}

/// Upload `src` to `key` through `proxy` and let it die once the journal
/// lists `parts` acknowledged parts (later parts stall, so it cannot
/// finish): the future is dropped mid-upload, as with `kill -9`, so
/// nothing is aborted or cleaned up.
async fn upload_then_crash(
    e: &Env,
    proxy: &FaultProxy,
    s: DynHandler,
    key: &str,
    src: &Path,
    state: &Path,
    parts: usize,
) {
    proxy.set_rules(vec![
        e.f.part
            .requests
            .rule(Fault::Stall(Duration::from_secs(3600)))
            .after(parts as u64),
    ]);
    let journal = JournalFile::for_upload(state, &s.url_for(&valid_key(key)), src);
    let (k, p) = (key.to_string(), src.to_path_buf());
    let task = tokio::spawn(async move {
        s.upload(
            &valid_key(&k),
            UploadSource::Path(p),
            &PutOptions::default(),
            &TransferCtx::none(),
        )
        .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if journal.load().await.is_some_and(|j| j.parts.len() >= parts) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: journal never reached {parts} parts",
            e.label
        );
        assert!(!task.is_finished(), "upload ended early: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    let _ = task.await;
    proxy.clear();
    assert!(
        journal.load().await.is_some(),
        "the journal survives the crash"
    );
}

/// 8 parts, the first run dies after 3: the same upload in a new store
/// (same config, same state dir) sends the other 5 only, the object is
/// byte-identical, and the journal is gone.
async fn a_crashed_upload_resumes_sending_only_the_missing_parts(e: Arc<Env>) {
    let part = e.f.part_size;
    let proxy = FaultProxy::start(&e.f.upstream)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let prefix = unique_prefix("resume", "crash");
    let state = tempdir();
    let dir = tempdir();
    let size = 8 * part;
    let body = data(size as usize, 5);
    let src = write_file(dir.path(), "src.bin", &body);

    let first = journaled(&e, &proxy, &prefix, state.path()).await;
    upload_then_crash(&e, &proxy, first, "big.bin", &src, state.path(), 3).await;

    let again = journaled(&e, &proxy, &prefix, state.path()).await;
    // Bytes the crashed run had in flight may still be on their way through
    // the proxy (a busy machine lags): they are not the second run's.
    let before = settled_bytes_up(&proxy).await;
    let stored = upload(&again, "big.bin", src.clone(), &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: resumed upload: {}", e.label, err.chain()));
    let sent = proxy.stats().bytes_up - before;
    assert_eq!(stored, size);
    // 5 of 8 parts (plus request heads), not the 3 the first run stored.
    let mib = MIB as u64;
    assert!(
        (5 * part..5 * part + mib).contains(&sent),
        "{}: sent {sent} bytes; 5 parts expected",
        e.label
    );

    let direct = e.store(e.spec(&e.f.upstream, &prefix)).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path(&valid_key("big.bin"), &dest, None, &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: download: {}", e.label, err.chain()));
    assert!(read(&dest) == body, "{}: resumed object differs", e.label);
    let journal =
        JournalFile::for_upload(state.path(), &again.url_for(&valid_key("big.bin")), &src);
    assert!(
        journal.load().await.is_none(),
        "journal removed after success"
    );
    delete(&direct, "big.bin").await;
}

/// The proxy's upstream byte count once it has not moved for 300 ms.
async fn settled_bytes_up(proxy: &FaultProxy) -> u64 {
    let mut last = proxy.stats().bytes_up;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = proxy.stats().bytes_up;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The file changes (same size) between the crash and the re-run: every
/// part is sent again and the object holds the new bytes.
async fn a_changed_source_starts_over(e: Arc<Env>) {
    let part = e.f.part_size;
    let proxy = FaultProxy::start(&e.f.upstream)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let prefix = unique_prefix("resume", "changed");
    let state = tempdir();
    let dir = tempdir();
    let size = 4 * part;
    let src = write_file(dir.path(), "src.bin", &data(size as usize, 7));

    let first = journaled(&e, &proxy, &prefix, state.path()).await;
    upload_then_crash(&e, &proxy, first, "k.bin", &src, state.path(), 2).await;

    let body = data(size as usize, 8);
    write_file(dir.path(), "src.bin", &body);
    let again = journaled(&e, &proxy, &prefix, state.path()).await;
    let before = proxy.stats().bytes_up;
    upload(&again, "k.bin", src.clone(), &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: upload: {}", e.label, err.chain()));
    let sent = proxy.stats().bytes_up - before;
    assert!(sent >= size, "every part sent again: {sent} bytes");

    let direct = e.store(e.spec(&e.f.upstream, &prefix)).await;
    let dest = dir.path().join("back.bin");
    direct
        .download_to_path(&valid_key("k.bin"), &dest, None, &TransferCtx::none())
        .await
        .unwrap_or_else(|err| panic!("{}: download: {}", e.label, err.chain()));
    assert!(read(&dest) == body, "{}: not the new bytes", e.label);
    delete(&direct, "k.bin").await;
}
