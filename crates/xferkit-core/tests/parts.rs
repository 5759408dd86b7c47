//! The parts engine (`xferkit_core::parts`) against an in-memory store
//! that speaks both layouts: what is sent, what a crash leaves, what the
//! re-run trusts, and what a store reporting other bytes gets.
//!
//! The crash is the real shape for a task: the uploading future is dropped
//! (as `kill -9` drops everything) while parts are in flight; the emulator
//! versions of these promises are the conformance `resume` cases and the
//! `xfer` crash tests.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use xferkit_core::journal::{JournalFile, JournalPart};
use xferkit_core::parts::{self, Acked, Body, Held, Part, PartStore, Plan, Stored};
use xferkit_core::{
    Error, ErrorKind, RemoteObject, Result, RetryPolicy, TransferCtx, UploadSource,
};

const TARGET: &str = "mem://b/k";
const KIB: u64 = 1024;

/// Runs once, when the first part is put (after the engine checksummed it).
type Hook = Box<dyn FnOnce() + Send>;

/// A store in memory. Parts of a session that reaches `hang_from` never
/// answer (the crash happens while they are on the wire). A part's body is
/// read as a store's request reads it: a file's span streamed from the file.
#[derive(Default)]
struct Mem {
    sequential: bool,
    sessions: Mutex<HashMap<String, BTreeMap<u32, Bytes>>>,
    object: Mutex<Option<Vec<u8>>>,
    next: AtomicU32,
    /// Part numbers from this one on hang (0: none).
    hang_from: AtomicU32,
    /// Report another CRC32C than the stored bytes have, this many times.
    lie: AtomicU32,
    parts_put: AtomicU32,
    log: Mutex<Vec<String>>,
    refuse_parts: AtomicBool,
    before_first_put: Mutex<Option<Hook>>,
    /// Read this many parts' bodies whole, then fail them (a reset
    /// connection), so that they are sent again.
    fail_after_read: AtomicU32,
    bodies_read: AtomicU32,
    /// A whole put answers "exists" early, as s3s-fs does for a create-only
    /// put: the connection closes while the body is written (the client
    /// sees a broken pipe, transient), never a 412.
    early_close_if_exists: AtomicBool,
}

impl Mem {
    fn note(&self, what: impl Into<String>) {
        self.log.lock().unwrap().push(what.into());
    }

    fn count(&self, prefix: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    fn stored(&self, data: Vec<u8>) -> Stored {
        let mut crc = crc32c::crc32c(&data);
        if self.lie.load(Ordering::SeqCst) > 0 {
            self.lie.fetch_sub(1, Ordering::SeqCst);
            crc ^= 1;
        }
        let obj = RemoteObject::new(TARGET, "k", data.len() as u64);
        *self.object.lock().unwrap() = Some(data);
        Stored::new(obj, Some(crc))
    }

    fn gone(session: &str) -> Error {
        Error::not_found(format!("{TARGET} session {session}"))
    }
}

#[xferkit_core::async_trait]
impl PartStore for Mem {
    fn target(&self) -> &str {
        TARGET
    }

    async fn put_whole(&self, body: &Body, _size: u64, _crc32c: u32) -> Result<Stored> {
        self.note("put_whole");
        let hook = self.before_first_put.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        if self.early_close_if_exists.load(Ordering::SeqCst)
            && self.object.lock().unwrap().is_some()
        {
            return Err(Error::transient(
                TARGET,
                "error writing a body to connection: Broken pipe",
            ));
        }
        let data = match body {
            Body::Bytes(b) => b.to_vec(),
            Body::File(p) => std::fs::read(p).unwrap(),
        };
        Ok(self.stored(data))
    }

    async fn exists(&self) -> Result<bool> {
        Ok(self.object.lock().unwrap().is_some())
    }

    async fn start(&self, _size: Option<u64>) -> Result<String> {
        let id = format!("s{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.sessions
            .lock()
            .unwrap()
            .insert(id.clone(), BTreeMap::new());
        self.note(format!("start {id}"));
        Ok(id)
    }

    async fn put_part(&self, session: &str, part: &Part, _attempt: u32) -> Result<Acked> {
        let hang = self.hang_from.load(Ordering::SeqCst);
        if hang > 0 && part.number >= hang {
            std::future::pending::<()>().await;
        }
        if self.refuse_parts.load(Ordering::SeqCst) {
            return Err(Error::backend(TARGET, "refused", "refused"));
        }
        self.note(format!("put {}", part.number));
        let hook = self.before_first_put.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        // A body that fails to read fails the request, as an SDK reports
        // it: a transient failure of the connection.
        let data = part
            .body
            .to_bytes()
            .await
            .map_err(|e| Error::transient(TARGET, format!("request body: {}", e.chain())))?;
        assert_eq!(data.len() as u64, part.len(), "a body is never short");
        self.bodies_read.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail_after_read.load(Ordering::SeqCst);
        if fail > 0
            && self
                .fail_after_read
                .compare_exchange(fail, fail - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(Error::transient(TARGET, "connection reset after the body"));
        }
        self.parts_put.fetch_add(1, Ordering::SeqCst);
        let mut sessions = self.sessions.lock().unwrap();
        let parts = sessions
            .get_mut(session)
            .ok_or_else(|| Self::gone(session))?;
        if self.sequential {
            let have: u64 = parts.values().map(|b| b.len() as u64).sum();
            assert_eq!(part.offset, have, "a chunk starts where the session ends");
        }
        parts.insert(part.number, data);
        if let Some((size, crc)) = part.last {
            let data: Vec<u8> = parts.values().flat_map(|b| b.to_vec()).collect();
            assert_eq!((data.len() as u64, crc32c::crc32c(&data)), (size, crc));
            sessions.remove(session);
            drop(sessions);
            return Ok(Acked::Done(self.stored(data)));
        }
        Ok(Acked::Part(format!("etag-{}", part.number)))
    }

    async fn held(&self, session: &str, _size: u64) -> Result<Held> {
        let sessions = self.sessions.lock().unwrap();
        let parts = sessions.get(session).ok_or_else(|| Self::gone(session))?;
        if self.sequential {
            return Ok(Held::Prefix(parts.values().map(|b| b.len() as u64).sum()));
        }
        let listed = parts
            .iter()
            .map(|(n, b)| (*n, (b.len() as u64, Some(format!("\"etag-{n}\"")))))
            .collect();
        Ok(Held::Parts(listed))
    }

    async fn complete(
        &self,
        session: &str,
        parts: &[JournalPart],
        total: u64,
        crc32c: u32,
        _attempt: u32,
    ) -> Result<Stored> {
        self.note("complete");
        let stored = self.sessions.lock().unwrap().remove(session);
        let stored = stored.ok_or_else(|| Self::gone(session))?;
        let data: Vec<u8> = parts
            .iter()
            .flat_map(|p| stored[&p.number].to_vec())
            .collect();
        assert_eq!(data.len() as u64, total);
        assert_eq!(
            crc32c::crc32c(&data),
            crc32c,
            "the complete's CRC32C is the parts' combined"
        );
        Ok(self.stored(data))
    }

    async fn abort(&self, session: &str) -> Result<()> {
        self.note(format!("abort {session}"));
        self.sessions.lock().unwrap().remove(session);
        Ok(())
    }

    async fn discard(&self, _object: &RemoteObject) -> Result<()> {
        self.note("discard");
        *self.object.lock().unwrap() = None;
        Ok(())
    }
}

fn quick() -> TransferCtx {
    TransferCtx::none().with_retry_policy(
        RetryPolicy::default()
            .with_max_attempts(3)
            .with_initial_backoff(Duration::from_millis(1)),
    )
}

fn plan(mem: &Mem, state: Option<&Path>) -> Plan {
    let p = Plan::new(64 * KIB, 64 * KIB, 1024 * KIB, 10_000)
        .concurrency(3)
        .state_dir(state.map(Path::to_path_buf));
    if mem.sequential { p.sequential() } else { p }
}

async fn assert_no_journal(state: &Path, src: &Path) {
    let journal = JournalFile::for_upload(state, TARGET, src);
    assert!(journal.load().await.is_none(), "a journal was left");
}

fn file(dir: &Path, len: u64, seed: u8) -> (std::path::PathBuf, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let path = dir.join("src.bin");
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

async fn upload(mem: &Arc<Mem>, state: Option<&Path>, src: &Path) -> Result<RemoteObject> {
    let plan = plan(mem, state);
    parts::upload(
        mem.clone(),
        &plan,
        UploadSource::Path(src.to_path_buf()),
        &quick(),
    )
    .await
}

/// Upload until the journal lists `parts` parts, then drop the upload.
async fn crash_after(mem: &Arc<Mem>, state: &Path, src: &Path, parts: usize) {
    mem.hang_from.store(parts as u32 + 1, Ordering::SeqCst);
    let journal = JournalFile::for_upload(state, TARGET, src);
    let task = {
        let (mem, state, src) = (mem.clone(), state.to_path_buf(), src.to_path_buf());
        tokio::spawn(async move { upload(&mem, Some(&state), &src).await })
    };
    for _ in 0..500 {
        if journal.load().await.is_some_and(|j| j.parts.len() >= parts) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    assert!(
        task.await.is_err(),
        "the upload was still running when dropped"
    );
    assert_eq!(journal.load().await.map(|j| j.parts.len()), Some(parts));
    mem.hang_from.store(0, Ordering::SeqCst);
}

#[tokio::test]
async fn parts_in_parallel_make_the_object_and_leave_no_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 640 * KIB + 7, 1);
    let mem = Arc::new(Mem::default());
    let obj = upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(obj.size, data.len() as u64);
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
    assert_eq!(mem.parts_put.load(Ordering::SeqCst), 11);
    assert_no_journal(dir.path(), &src).await;
}

#[tokio::test]
async fn a_crashed_parallel_upload_sends_only_what_the_store_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 640 * KIB, 2);
    let mem = Arc::new(Mem::default());
    crash_after(&mem, dir.path(), &src, 4).await;
    let before = mem.parts_put.load(Ordering::SeqCst);
    upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(
        mem.parts_put.load(Ordering::SeqCst) - before,
        6,
        "10 parts, 4 kept"
    );
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
    assert_eq!(mem.count("start"), 1, "the same session went on");
    assert_no_journal(dir.path(), &src).await;
}

#[tokio::test]
async fn a_crashed_sequential_upload_goes_on_from_the_stores_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 640 * KIB + 100, 3);
    let mem = Arc::new(Mem {
        sequential: true,
        ..Default::default()
    });
    crash_after(&mem, dir.path(), &src, 3).await;
    let before = mem.parts_put.load(Ordering::SeqCst);
    upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(
        mem.parts_put.load(Ordering::SeqCst) - before,
        8,
        "11 chunks, 3 kept"
    );
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
    assert_eq!(mem.count("start"), 1);
}

#[tokio::test]
async fn a_journal_whose_session_is_gone_starts_one_fresh_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 640 * KIB, 4);
    let mem = Arc::new(Mem::default());
    crash_after(&mem, dir.path(), &src, 2).await;
    mem.sessions.lock().unwrap().clear(); // expired, or aborted behind our back
    upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
    assert_eq!(mem.count("start"), 2, "one fresh session");
    assert_eq!(
        mem.count("abort s0"),
        1,
        "the stale one aborted where possible"
    );
}

#[tokio::test]
async fn a_changed_source_starts_over_and_aborts_the_old_session() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = file(dir.path(), 640 * KIB, 5);
    let mem = Arc::new(Mem::default());
    crash_after(&mem, dir.path(), &src, 3).await;
    let (_, changed) = file(dir.path(), 640 * KIB, 6);
    let before = mem.parts_put.load(Ordering::SeqCst);
    upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(
        mem.parts_put.load(Ordering::SeqCst) - before,
        10,
        "every part again"
    );
    assert_eq!(
        mem.object.lock().unwrap().as_deref(),
        Some(changed.as_slice())
    );
    assert_eq!(mem.count("abort s0"), 1);
}

#[tokio::test]
async fn a_store_that_reports_other_bytes_loses_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = file(dir.path(), 640 * KIB, 7);
    let mem = Arc::new(Mem::default());
    mem.lie.store(1, Ordering::SeqCst);
    let err = upload(&mem, None, &src).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ChecksumMismatch, "{}", err.chain());
    assert_eq!(mem.count("discard"), 1);
    assert!(
        mem.object.lock().unwrap().is_none(),
        "no wrong object stays"
    );
}

#[tokio::test]
async fn a_one_request_upload_stored_wrong_is_deleted_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 40 * KIB, 8);
    let mem = Arc::new(Mem::default());
    mem.lie.store(1, Ordering::SeqCst);
    upload(&mem, None, &src).await.unwrap();
    assert_eq!((mem.count("put_whole"), mem.count("discard")), (2, 1));
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
}

#[tokio::test]
async fn a_failed_upload_aborts_its_session_and_removes_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = file(dir.path(), 640 * KIB, 9);
    let mem = Arc::new(Mem::default());
    mem.refuse_parts.store(true, Ordering::SeqCst);
    let err = upload(&mem, Some(dir.path()), &src).await.unwrap_err();
    assert!(err.chain().contains("refused"), "{}", err.chain());
    assert_eq!(mem.count("abort s0"), 1);
    assert!(mem.sessions.lock().unwrap().is_empty(), "nothing pending");
    assert_no_journal(dir.path(), &src).await;
}

#[tokio::test]
async fn a_stream_of_declared_size_that_ends_short_fails_and_aborts() {
    let mem = Arc::new(Mem::default());
    let chunks: Vec<Result<Bytes>> = (0..5)
        .map(|_| Ok(Bytes::from(vec![1u8; 64 * 1024])))
        .collect();
    let source = UploadSource::Stream {
        stream: Box::pin(futures::stream::iter(chunks)),
        size: Some(400 * KIB),
    };
    let err = parts::upload(mem.clone(), &plan(&mem, None), source, &quick())
        .await
        .unwrap_err();
    assert!(err.chain().contains("only 327680"), "{}", err.chain());
    assert!(mem.object.lock().unwrap().is_none());
    assert!(
        mem.sessions.lock().unwrap().is_empty(),
        "the session was aborted"
    );
}

#[tokio::test]
async fn a_part_the_store_holds_at_another_length_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (src, data) = file(dir.path(), 640 * KIB, 10);
    let mem = Arc::new(Mem::default());
    crash_after(&mem, dir.path(), &src, 4).await;
    {
        // Part 2 as a store that kept a body cut short would list it.
        let mut sessions = mem.sessions.lock().unwrap();
        let parts = sessions.get_mut("s0").unwrap();
        let cut = parts[&2].slice(..1000);
        parts.insert(2, cut);
    }
    let before = mem.parts_put.load(Ordering::SeqCst);
    upload(&mem, Some(dir.path()), &src).await.unwrap();
    assert_eq!(
        mem.parts_put.load(Ordering::SeqCst) - before,
        7,
        "6 missing + part 2"
    );
    assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
}

/// Change the source file when the first part is put, after the engine
/// checksummed it: what a writer racing the upload does.
fn change_at_first_put(mem: &Mem, src: &Path, change: impl FnOnce(&Path) + Send + 'static) {
    let src = src.to_path_buf();
    *mem.before_first_put.lock().unwrap() = Some(Box::new(move || change(&src)));
}

#[tokio::test]
async fn a_file_that_shrinks_between_checksum_and_send_fails_and_leaves_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = file(dir.path(), 640 * KIB, 11);
    let mem = Arc::new(Mem::default());
    change_at_first_put(&mem, &src, |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(10 * KIB).unwrap();
    });
    let err = upload(&mem, Some(dir.path()), &src).await.unwrap_err();
    assert!(err.chain().contains("changed size"), "{}", err.chain());
    assert!(!err.is_retryable());
    let puts: Vec<String> = mem
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("put "))
        .cloned()
        .collect();
    let once: std::collections::HashSet<&String> = puts.iter().collect();
    assert_eq!(puts.len(), once.len(), "no part was tried twice: {puts:?}");
    assert_eq!(
        mem.bodies_read.load(Ordering::SeqCst),
        0,
        "no body was read whole"
    );
    assert!(mem.object.lock().unwrap().is_none(), "no object");
    assert_eq!(mem.count("complete"), 0);
    assert_eq!(mem.count("abort s0"), 1);
    assert!(mem.sessions.lock().unwrap().is_empty(), "nothing pending");
    assert_no_journal(dir.path(), &src).await;
}

#[tokio::test]
async fn a_file_rewritten_between_checksum_and_send_fails_before_its_part_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = file(dir.path(), 640 * KIB, 12);
    let mem = Arc::new(Mem::default());
    // The same length, other bytes: every part's last byte changes. In
    // place, never truncated (`fs::write` would be), so a part read while
    // this runs sees other bytes and never a shorter file.
    change_at_first_put(&mem, &src, |p| {
        use std::io::Write;
        let mut data = std::fs::read(p).unwrap();
        for i in (0..data.len()).skip(64 * 1024 - 1).step_by(64 * 1024) {
            data[i] ^= 0xff;
        }
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.write_all(&data).unwrap();
    });
    let err = upload(&mem, None, &src).await.unwrap_err();
    assert!(
        err.chain().contains("changed during the upload"),
        "{}",
        err.chain()
    );
    assert!(mem.object.lock().unwrap().is_none(), "no object");
    assert_eq!(mem.count("complete"), 0);
    assert_eq!(mem.count("abort s0"), 1);
}

#[tokio::test]
async fn a_create_only_put_that_loses_the_race_mid_body_is_already_exists() {
    // Another writer's object lands while this whole put is on the wire;
    // the store closes the connection instead of answering 412, on every
    // try. The retry looks first and answers as the condition would.
    for size in [100 * KIB, 1536 * KIB] {
        let dir = tempfile::tempdir().unwrap();
        let (src, _) = file(dir.path(), size, 14);
        let mem = Arc::new(Mem {
            early_close_if_exists: AtomicBool::new(true),
            ..Default::default()
        });
        let theirs = mem.clone();
        *mem.before_first_put.lock().unwrap() = Some(Box::new(move || {
            *theirs.object.lock().unwrap() = Some(b"theirs".to_vec());
        }));
        let plan = Plan::new(4096 * KIB, 4096 * KIB, 8192 * KIB, 10_000).create_only(true);
        let err = parts::upload(mem.clone(), &plan, UploadSource::Path(src), &quick())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::AlreadyExists,
            "{size}: {}",
            err.chain()
        );
        assert_eq!(mem.count("put_whole"), 1, "{size}: not sent again");
        assert_eq!(
            mem.object.lock().unwrap().as_deref(),
            Some(&b"theirs"[..]),
            "the other writer's object stays"
        );
    }
}

#[tokio::test]
async fn a_file_part_sent_again_is_read_again_from_the_file() {
    for sequential in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (src, data) = file(dir.path(), 640 * KIB + 3, 13);
        let mem = Arc::new(Mem {
            sequential,
            ..Default::default()
        });
        mem.fail_after_read.store(2, Ordering::SeqCst);
        upload(&mem, Some(dir.path()), &src).await.unwrap();
        assert_eq!(mem.object.lock().unwrap().as_deref(), Some(data.as_slice()));
        assert_eq!(mem.parts_put.load(Ordering::SeqCst), 11);
        assert_eq!(
            mem.bodies_read.load(Ordering::SeqCst),
            13,
            "11 parts, 2 of them read twice"
        );
    }
}
