//! The parts engine: one upload driver for every store that takes an object
//! in parts.
//!
//! A backend implements [`PartStore`] with its SDK's calls and nothing
//! else: put an object in one request; start a session (S3 multipart
//! upload, Azure block list, GCS resumable session); put part N; say what
//! the store holds of a session; complete; abort. [`upload`] owns the rest,
//! once for every backend:
//!
//! - **choosing** one request or parts (`Plan::threshold`), and the part
//!   size (raised to fit the store's part limit);
//! - **scheduling**: up to `Plan::concurrency` parts in flight. A part of a
//!   file is checksummed through a small reused buffer and goes to the store
//!   as a [`FileSpan`] that its request streams from the file, so a file's
//!   upload holds no part in memory; a part of a stream is cut into a buffer
//!   the upload reuses (memory bounded by `concurrency × part size`).
//!   [`Layout::Sequential`] stores (GCS) take one chunk at a time, in order;
//! - **per-part retry, bandwidth and progress**: each request runs under
//!   the transfer's retry policy on its own, so a failure resends one part;
//! - **checksums**: the CRC32C of every part (and the digest the store wants,
//!   e.g. Azure's MD5, through `Plan::digest`), combined into the whole
//!   object's CRC32C for the complete (S3 full-object, GCS last chunk) and
//!   checked against what the store reports: a mismatch deletes the object;
//! - **the journal** of an upload of a file (`Plan::state_dir`), and resume
//!   after a crash: the journal is a hint, the store is the truth (see
//!   [`upload`]);
//! - **abort** on failure or stop, within a bounded time; pause keeps the
//!   session and the journal for `resume()`.
//!
//! OpenDAL (`raw/oio/write`) and object_store (`WriteMultipart`) split the
//! work the same way; neither resumes across a restart.

mod driver;
mod resume;
mod schedule;
mod session;
mod source;

use std::collections::HashMap;
use std::path::PathBuf;

use bytes::Bytes;

use crate::journal::JournalPart;
use crate::{RemoteObject, Result};

pub use driver::upload;
pub use session::ABORT_BUDGET;
pub use source::{FileSpan, SpanReader, exact_length, read_error};

/// How a store takes the parts of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Numbered parts in any order and concurrently, then one complete that
    /// lists them (S3 multipart uploads, Azure block blobs).
    Parallel,
    /// Chunks one after another at increasing offsets; the last chunk,
    /// which carries the object's size and CRC32C, completes the upload
    /// (GCS resumable uploads).
    Sequential,
}

/// A digest computed over each part's bytes, fed in order, besides its
/// CRC32C (e.g. MD5).
pub trait PartDigest: Send {
    fn update(&mut self, data: &[u8]);
    fn finish(self: Box<Self>) -> Vec<u8>;
}

/// Makes the [`PartDigest`] of one part.
pub type Digest = fn() -> Box<dyn PartDigest>;

/// How one store wants its uploads cut and sent.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Plan {
    /// Objects of at most this many bytes go in one request.
    pub threshold: u64,
    /// The configured part (block, chunk) size.
    pub part_size: u64,
    /// Part sizes are multiples of this (S3: 1 MiB; GCS: 256 KiB).
    pub granule: u64,
    pub max_part_size: u64,
    /// The most parts one object may have.
    pub max_parts: u64,
    /// Parts in flight at once (`Sequential` always sends one).
    pub concurrency: usize,
    pub layout: Layout,
    /// A digest each part carries besides its CRC32C.
    pub digest: Option<Digest>,
    /// The upload must not replace an existing object.
    pub create_only: bool,
    /// Where uploads of files keep their journal (no resume without one).
    pub state_dir: Option<PathBuf>,
}

impl Plan {
    /// A plan for parallel parts of `part_size`, at most `max_parts` of at
    /// most `max_part_size` bytes; one request up to `threshold`.
    pub fn new(threshold: u64, part_size: u64, max_part_size: u64, max_parts: u64) -> Self {
        Plan {
            threshold,
            part_size,
            granule: 1,
            max_part_size,
            max_parts,
            concurrency: 1,
            layout: Layout::Parallel,
            digest: None,
            create_only: false,
            state_dir: None,
        }
    }

    pub fn granule(mut self, granule: u64) -> Self {
        self.granule = granule.max(1);
        self
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn sequential(mut self) -> Self {
        self.layout = Layout::Sequential;
        self.concurrency = 1;
        self
    }

    pub fn digest(mut self, digest: Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    pub fn create_only(mut self, yes: bool) -> Self {
        self.create_only = yes;
        self
    }

    pub fn state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// The part size for an object of `size` bytes (unknown: `None`): the
    /// configured one, raised to a multiple of the granule so that the
    /// object fits in `max_parts`, and at most `max_part_size`.
    pub fn part_size_for(&self, size: Option<u64>) -> u64 {
        let needed = size.unwrap_or(0).div_ceil(self.max_parts.max(1));
        let needed = needed.div_ceil(self.granule) * self.granule;
        self.part_size.max(needed).min(self.max_part_size).max(1)
    }
}

/// The body of a one-request upload. A file's is opened again for each try.
#[derive(Debug, Clone)]
pub enum Body {
    Bytes(Bytes),
    File(PathBuf),
}

/// The bytes of a part.
#[derive(Debug, Clone)]
pub enum PartBody {
    /// In memory (a part of a stream).
    Bytes(Bytes),
    /// A span of the source file (a part of a file), checksummed by the
    /// engine; the request streams it ([`FileSpan::reader`], a fresh one
    /// for each try).
    File(FileSpan),
}

impl PartBody {
    pub fn len(&self) -> u64 {
        match self {
            PartBody::Bytes(b) => b.len() as u64,
            PartBody::File(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory (a span is read: for a store that needs them
    /// whole, and tests).
    pub async fn to_bytes(&self) -> Result<Bytes> {
        match self {
            PartBody::Bytes(b) => Ok(b.clone()),
            PartBody::File(s) => s.read().await,
        }
    }
}

/// One part to put.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Part {
    /// From 1, in the order of the object's bytes.
    pub number: u32,
    pub offset: u64,
    pub body: PartBody,
    /// The CRC32C of the body's bytes.
    pub crc32c: u32,
    /// `Plan::digest` of the body's bytes.
    pub digest: Option<Vec<u8>>,
    /// The object's size, when known before its end (a file, a stream of
    /// declared size).
    pub total: Option<u64>,
    /// `Sequential` only, on the last chunk: the object's size and CRC32C.
    pub last: Option<(u64, u32)>,
}

impl Part {
    /// The part's length in bytes.
    pub fn len(&self) -> u64 {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

/// What the store returned for an upload that completed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stored {
    pub object: RemoteObject,
    /// The whole object's CRC32C as the store reports it, when it does.
    pub crc32c: Option<u32>,
}

impl Stored {
    pub fn new(object: RemoteObject, crc32c: Option<u32>) -> Self {
        Stored { object, crc32c }
    }
}

/// The answer to one part.
#[allow(clippy::large_enum_variant)] // a RemoteObject: moved once, not worth a Box
#[derive(Debug)]
pub enum Acked {
    /// Stored; the store's ETag or id for it (may be empty).
    Part(String),
    /// The upload completed with this part (`Sequential`, last chunk).
    Done(Stored),
}

/// What the store holds of a session it still knows.
#[allow(clippy::large_enum_variant)] // a RemoteObject: moved once, not worth a Box
#[derive(Debug)]
pub enum Held {
    /// Parts by number: length, and ETag where the store lists one.
    Parts(HashMap<u32, (u64, Option<String>)>),
    /// `Sequential`: the first N bytes.
    Prefix(u64),
    /// The session already became the object (a crash after its last chunk).
    Done(Stored),
}

/// A store's upload calls: SDK requests and their mapping, nothing more.
/// Each call is one request (or one paginated listing); the driver retries,
/// throttles, counts progress and cancels.
#[crate::async_trait]
pub trait PartStore: Send + Sync {
    /// The destination URL, for errors, logs and the journal.
    fn target(&self) -> &str;

    /// Put the whole object in one request; `crc32c` is its CRC32C (for a
    /// store that checks one sent ahead of the data). A `Stored` whose
    /// CRC32C differs is deleted and the request sent again.
    async fn put_whole(&self, body: &Body, size: u64, crc32c: u32) -> Result<Stored>;

    /// Whether an object is already stored under the key (create-only
    /// uploads fail before sending parts; the complete still decides).
    async fn exists(&self) -> Result<bool>;

    /// Start a session for an object of `size` bytes (when known); its id.
    async fn start(&self, size: Option<u64>) -> Result<String>;

    /// Put one part; `attempt` counts from 1 (a store that can ask what a
    /// failed try left, like GCS, does so before trying again). A
    /// [`PartBody::File`] is sent with a fresh [`FileSpan::reader`] on each
    /// try, with the part's length declared: a reader fails rather than end
    /// short, and the engine reports a failure the file caused (it shrank
    /// or changed) as such, not retried.
    async fn put_part(&self, session: &str, part: &Part, attempt: u32) -> Result<Acked>;

    /// What the store holds of `session` (an upload of `size` bytes);
    /// `NotFound` or `PermissionDenied` when it no longer knows it.
    async fn held(&self, session: &str, size: u64) -> Result<Held>;

    /// Complete a `Parallel` session with `parts` (sorted by number), the
    /// object being `total` bytes with CRC32C `crc32c`. `attempt` > 1 after
    /// a try whose answer was lost (the store may have completed it).
    async fn complete(
        &self,
        session: &str,
        parts: &[JournalPart],
        total: u64,
        crc32c: u32,
        attempt: u32,
    ) -> Result<Stored>;

    /// Drop the session and its parts (`Ok` when already gone).
    async fn abort(&self, session: &str) -> Result<()>;

    /// Delete a completed object whose content is not what was sent.
    async fn discard(&self, object: &RemoteObject) -> Result<()>;
}
