//! Where the bytes of parts come from: spans of a file (checksummed here,
//! streamed by the store's request), or cuts of a stream into reused
//! buffers.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio::task::JoinHandle;

use super::{Digest, PartBody};
use crate::{ByteStream, Error, Result};

/// Read size of the checksum pass over a file's part, and of each chunk of
/// a span sent to the store: what an upload holds per part in flight
/// instead of the part.
pub(crate) const SPAN_CHUNK: usize = 256 * 1024;

/// Buffers of one upload, reused once the store has taken their part (no
/// request holds them any more): the parts cut from a stream, or the
/// checksum pass's read buffers of a file's parts. An upload allocates
/// about `keep` of them, not one per part.
#[derive(Clone)]
pub(crate) struct Pool {
    free: Arc<Mutex<Vec<BytesMut>>>,
    keep: usize,
}

impl Pool {
    pub(crate) fn new(keep: usize) -> Self {
        Pool {
            free: Arc::default(),
            keep: keep.max(1),
        }
    }

    /// An empty buffer (one given back, else a new one).
    fn take(&self) -> BytesMut {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = free.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn keep(&self, b: BytesMut) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep {
            free.push(b);
        }
    }

    /// Give back a part's body; its buffer is kept only if nothing else
    /// holds it (a file span has none).
    pub(crate) fn give(&self, body: PartBody) {
        if let PartBody::Bytes(data) = body
            && let Ok(b) = data.try_into_mut()
        {
            self.keep(b);
        }
    }
}

/// A byte range of a file, with the CRC32C its bytes had when the engine
/// read them: the body of a part of a file, which the store's request
/// streams from the file itself ([`FileSpan::reader`]) instead of the
/// engine holding the part in memory. Re-readable: every try of a request
/// opens a new reader.
#[derive(Clone)]
pub struct FileSpan {
    path: Arc<Path>,
    offset: u64,
    len: u64,
    crc32c: Option<u32>,
}

impl std::fmt::Debug for FileSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpan")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl FileSpan {
    /// `len` bytes of `path` from `offset`; `crc32c`, when known, is what
    /// a reader checks the bytes against before it hands out the last ones.
    pub fn new(path: impl Into<PathBuf>, offset: u64, len: u64, crc32c: Option<u32>) -> Self {
        FileSpan {
            path: Arc::from(path.into()),
            offset,
            len,
            crc32c,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The span without its first `skip` bytes (the rest of a chunk the
    /// store took in part); its bytes are checked for length only.
    pub fn tail(&self, skip: u64) -> FileSpan {
        let skip = skip.min(self.len);
        FileSpan {
            path: self.path.clone(),
            offset: self.offset + skip,
            len: self.len - skip,
            crc32c: if skip == 0 { self.crc32c } else { None },
        }
    }

    /// A fresh stream of the span's bytes, read from the file in chunks of
    /// 256 KiB (`SPAN_CHUNK`) by blocking tasks. It never ends short: a file that
    /// no longer has the span's bytes fails it with the "changed size"
    /// error, and bytes whose CRC32C differs from the one the span was made
    /// with fail it before its last chunk, so a request whose declared
    /// length is the span's never completes with other bytes.
    pub fn reader(&self) -> SpanReader {
        SpanReader::new(self, SPAN_CHUNK)
    }

    /// The span's bytes in memory (for a store that needs them whole).
    pub async fn read(&self) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(usize::try_from(self.len).unwrap_or(0));
        let mut r = self.reader();
        while let Some(b) = r.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out.freeze())
    }

    /// After a failed request: the error to report if the file is the
    /// reason (shorter than the span, or other bytes than checksummed), a
    /// permanent one, or `None`.
    pub(crate) async fn changed(&self) -> Option<Error> {
        let Some(want) = self.crc32c else {
            let size = tokio::fs::metadata(&self.path).await.map(|m| m.len());
            return match size {
                Ok(n) if n < self.offset + self.len => Some(shrank(&self.path)),
                _ => None,
            };
        };
        match crate::journal::crc32c_of_range(&self.path, self.offset, self.len).await {
            None => Some(shrank(&self.path)),
            Some(got) if got != want => Some(rewritten(&self.path)),
            Some(_) => None,
        }
    }
}

/// A chunk read by a [`SpanReader`]: the open file, the bytes, and the
/// CRC32C of the span up to their end.
type Chunk = (Arc<std::fs::File>, Vec<u8>, u32);

/// A [`FileSpan`]'s bytes as a stream (`Send + Sync + Unpin`, as SDK
/// bodies want them). See [`FileSpan::reader`].
pub struct SpanReader {
    path: Arc<Path>,
    file: Option<Arc<std::fs::File>>,
    /// Where the next read starts, and what is left to read.
    at: u64,
    left: u64,
    /// The CRC32C of the bytes read so far; the span's, to check at the end.
    crc: u32,
    want: Option<u32>,
    chunk: usize,
    reading: Option<JoinHandle<Result<Chunk>>>,
    failed: bool,
}

impl std::fmt::Debug for SpanReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanReader")
            .field("path", &self.path)
            .field("at", &self.at)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl SpanReader {
    fn new(span: &FileSpan, chunk: usize) -> Self {
        SpanReader {
            path: span.path.clone(),
            file: None,
            at: span.offset,
            left: span.len,
            crc: 0,
            want: span.crc32c,
            chunk: chunk.max(1),
            reading: None,
            failed: false,
        }
    }

    /// Bytes not handed out yet.
    pub fn remaining(&self) -> u64 {
        if self.failed { 0 } else { self.left }
    }

    /// Read the next chunk in a blocking task: the file is opened and
    /// positioned once, then read on (no zeroed buffers: `read_to_end` of
    /// exactly the chunk's length).
    fn start_read(&mut self) -> JoinHandle<Result<Chunk>> {
        use std::io::{Read, Seek};
        let n = self.left.min(self.chunk as u64);
        let (path, file, at, crc) = (self.path.clone(), self.file.clone(), self.at, self.crc);
        tokio::task::spawn_blocking(move || {
            let io = |e: std::io::Error| Error::from_io(shown_of(&path), e);
            let file = match file {
                Some(f) => f,
                None => {
                    let mut f = std::fs::File::open(&path).map_err(io)?;
                    f.seek(std::io::SeekFrom::Start(at)).map_err(io)?;
                    Arc::new(f)
                }
            };
            let mut buf = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            (&*file).take(n).read_to_end(&mut buf).map_err(io)?;
            if (buf.len() as u64) < n {
                return Err(shrank(&path));
            }
            let crc = crc32c::crc32c_append(crc, &buf);
            Ok((file, buf, crc))
        })
    }
}

impl Stream for SpanReader {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = self.get_mut();
        if this.failed || (this.left == 0 && this.reading.is_none()) {
            return Poll::Ready(None);
        }
        let mut reading = match this.reading.take() {
            Some(r) => r,
            None => this.start_read(),
        };
        let Poll::Ready(done) = Pin::new(&mut reading).poll(cx) else {
            this.reading = Some(reading);
            return Poll::Pending;
        };
        let read = done
            .map_err(|e| Error::backend(shown_of(&this.path), "could not read a part", e))
            .and_then(|r| r);
        let (file, buf, crc) = match read {
            Ok(r) => r,
            Err(e) => {
                this.failed = true;
                return Poll::Ready(Some(Err(e)));
            }
        };
        this.file = Some(file);
        this.at += buf.len() as u64;
        this.left -= buf.len() as u64;
        this.crc = crc;
        if this.left == 0 && this.want.is_some_and(|w| w != crc) {
            // Other bytes than were checksummed: never send the last ones.
            this.failed = true;
            return Poll::Ready(Some(Err(rewritten(&this.path))));
        }
        Poll::Ready(Some(Ok(Bytes::from(buf))))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let chunks = usize::try_from(self.remaining().div_ceil(self.chunk as u64)).ok();
        (chunks.unwrap_or(usize::MAX), chunks)
    }
}

/// One part's bytes: not yet read (a file) or already cut (a stream).
pub(crate) enum Piece {
    File {
        path: Arc<Path>,
        offset: u64,
        len: u64,
    },
    Bytes {
        offset: u64,
        data: Bytes,
    },
}

/// A part's body with its CRC32C and digest.
pub(crate) struct Loaded {
    pub offset: u64,
    pub body: PartBody,
    pub crc32c: u32,
    pub digest: Option<Vec<u8>>,
}

impl Piece {
    #[cfg(test)]
    pub(crate) fn offset(&self) -> u64 {
        match self {
            Piece::File { offset, .. } | Piece::Bytes { offset, .. } => *offset,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        match self {
            Piece::File { len, .. } => *len,
            Piece::Bytes { data, .. } => data.len() as u64,
        }
    }

    /// Checksum the part (in a blocking task). A file's part is read
    /// through one small pooled buffer, not held: its body is the span,
    /// which the store's request reads again (from the page cache).
    pub(crate) async fn load(self, pool: &Pool, digest: Option<Digest>) -> Result<Loaded> {
        match self {
            Piece::Bytes { offset, data } => {
                let d = data.clone();
                let (crc32c, digest) = blocking("checksum", "part", move || {
                    let digest = digest.map(|new| {
                        let mut h = new();
                        h.update(&d);
                        h.finish()
                    });
                    Ok((crc32c::crc32c(&d), digest))
                })
                .await?;
                Ok(Loaded {
                    offset,
                    body: PartBody::Bytes(data),
                    crc32c,
                    digest,
                })
            }
            Piece::File { path, offset, len } => {
                let shown = path.display().to_string();
                let mut buf = pool.take();
                let p = path.clone();
                let (buf, crc32c, digest) = blocking(&shown, "read a part", move || {
                    let n = usize::try_from(len.min(SPAN_CHUNK as u64)).unwrap_or(SPAN_CHUNK);
                    buf.resize(n, 0);
                    let file =
                        std::fs::File::open(&p).map_err(|e| Error::from_io(shown_of(&p), e))?;
                    let mut hash = digest.map(|new| new());
                    let (mut crc, mut done) = (0u32, 0u64);
                    while done < len {
                        let n = usize::try_from((len - done).min(buf.len() as u64))
                            .unwrap_or(buf.len());
                        let b = &mut buf[..n];
                        read_exact_at(&file, b, offset + done).map_err(|e| read_error(&p, e))?;
                        crc = crc32c::crc32c_append(crc, b);
                        if let Some(h) = hash.as_mut() {
                            h.update(b);
                        }
                        done += n as u64;
                    }
                    Ok((buf, crc, hash.map(|h| h.finish())))
                })
                .await?;
                pool.keep(buf);
                let span = FileSpan {
                    path,
                    offset,
                    len,
                    crc32c: Some(crc32c),
                };
                Ok(Loaded {
                    offset,
                    body: PartBody::File(span),
                    crc32c,
                    digest,
                })
            }
        }
    }
}

fn shown_of(path: &Path) -> String {
    path.display().to_string()
}

/// The error for a failed read of an upload's source file: a short read
/// (`UnexpectedEof`, the file ended before its size) is the file having
/// shrunk during the upload.
pub fn read_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        shrank(path)
    } else {
        Error::from_io(shown_of(path), e)
    }
}

/// The error for a source file that got shorter during its upload.
pub(crate) fn shrank(path: &Path) -> Error {
    Error::backend(
        shown_of(path),
        "the source file changed size during the upload",
        "file shrank",
    )
}

/// The error for a source file whose bytes changed during its upload.
fn rewritten(path: &Path) -> Error {
    Error::backend(
        shown_of(path),
        "the source file changed during the upload",
        "its bytes are not the ones checksummed",
    )
}

async fn blocking<T: Send + 'static>(
    target: &str,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::backend(target, format!("could not {what}"), e))?
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The parts of one object, in order.
pub(crate) enum Source {
    File {
        path: Arc<Path>,
        size: u64,
        part_size: u64,
        offset: u64,
    },
    Stream {
        chunker: Chunker,
        part_size: usize,
        offset: u64,
        declared: Option<u64>,
    },
}

impl Source {
    pub(crate) fn file(path: PathBuf, size: u64, part_size: u64) -> Self {
        Source::File {
            path: Arc::from(path),
            size,
            part_size,
            offset: 0,
        }
    }

    /// The file and its size, for a file source.
    pub(crate) fn path(&self) -> Option<(&Path, u64)> {
        match self {
            Source::File { path, size, .. } => Some((path, *size)),
            Source::Stream { .. } => None,
        }
    }

    /// The object's size, when known before its end.
    pub(crate) fn size(&self) -> Option<u64> {
        match self {
            Source::File { size, .. } => Some(*size),
            Source::Stream { declared, .. } => *declared,
        }
    }

    /// Start at byte `offset` (a resumed sequential upload).
    pub(crate) fn skip_to(&mut self, to: u64) {
        if let Source::File { offset, .. } = self {
            *offset = to;
        }
    }

    /// The next part and whether it is the last, or `None` once all bytes
    /// are handed out. A stream's part is copied into a buffer of `pool`.
    pub(crate) async fn next(&mut self, pool: &Pool) -> Result<Option<(Piece, bool)>> {
        match self {
            Source::File {
                path,
                size,
                part_size,
                offset,
            } => {
                if *offset >= *size {
                    return Ok(None);
                }
                let len = (*size - *offset).min(*part_size);
                let piece = Piece::File {
                    path: path.clone(),
                    offset: *offset,
                    len,
                };
                *offset += len;
                Ok(Some((piece, *offset == *size)))
            }
            Source::Stream {
                chunker,
                part_size,
                offset,
                ..
            } => {
                let mut buf = pool.take();
                chunker.cut(&mut buf, *part_size).await?;
                if buf.is_empty() {
                    pool.keep(buf);
                    return Ok(None);
                }
                // Is there more after it?
                chunker.fill(1).await?;
                let last = chunker.held() == 0;
                let n = buf.len() as u64;
                let piece = Piece::Bytes {
                    offset: *offset,
                    data: buf.freeze(),
                };
                *offset += n;
                Ok(Some((piece, last)))
            }
        }
    }
}

/// Cuts an upload stream into parts: what it received and has not handed
/// out yet is held as received (no copy) until a part is cut.
pub(crate) struct Chunker {
    stream: ByteStream,
    held: VecDeque<Bytes>,
    len: usize,
    done: bool,
}

impl Chunker {
    pub(crate) fn new(stream: ByteStream) -> Self {
        Chunker {
            stream,
            held: VecDeque::new(),
            len: 0,
            done: false,
        }
    }

    /// Bytes received and not handed out.
    pub(crate) fn held(&self) -> usize {
        self.len
    }

    async fn receive(&mut self) -> Result<bool> {
        match self.stream.next().await {
            Some(Ok(b)) => {
                if !b.is_empty() {
                    self.len += b.len();
                    self.held.push_back(b);
                }
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.done = true;
                Ok(false)
            }
        }
    }

    /// Receive until `n` bytes are held or the stream ends.
    pub(crate) async fn fill(&mut self, n: usize) -> Result<()> {
        while self.len < n && !self.done {
            self.receive().await?;
        }
        Ok(())
    }

    /// Everything held, as one buffer.
    pub(crate) fn take_all(&mut self) -> Bytes {
        self.len = 0;
        if self.held.len() == 1 {
            return self.held.pop_front().unwrap_or_default();
        }
        let mut out = BytesMut::with_capacity(self.held.iter().map(Bytes::len).sum());
        for b in self.held.drain(..) {
            out.extend_from_slice(&b);
        }
        out.freeze()
    }

    /// Append up to `n` bytes to `buf`: the held ones first, then as they
    /// arrive (fewer only at the stream's end).
    async fn cut(&mut self, buf: &mut BytesMut, n: usize) -> Result<()> {
        buf.reserve(n);
        while buf.len() < n {
            let Some(front) = self.held.front_mut() else {
                if self.done || !self.receive().await? {
                    break;
                }
                continue;
            };
            let k = (n - buf.len()).min(front.len());
            buf.extend_from_slice(&front[..k]);
            front.advance(k);
            self.len -= k;
            if front.is_empty() {
                self.held.pop_front();
            }
        }
        Ok(())
    }
}

fn length_mismatch(target: &str, declared: u64, got: u64, ended: bool) -> Error {
    let what = if ended { "only" } else { "more than" };
    Error::backend(
        target,
        "the upload source changed size",
        format!("declared {declared} bytes, produced {what} {got}"),
    )
}

/// Fail the stream (rather than send a short or long body) if it does not
/// produce exactly `size` bytes.
pub fn exact_length(stream: ByteStream, size: u64, target: String) -> ByteStream {
    let mut seen: u64 = 0;
    let mut ended = false;
    Box::pin(
        stream
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .filter_map(move |item| {
                let out = match item {
                    Some(Ok(b)) => {
                        seen += b.len() as u64;
                        if seen > size {
                            Some(Err(length_mismatch(&target, size, seen, false)))
                        } else {
                            Some(Ok(b))
                        }
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None if !ended && seen != size => {
                        ended = true;
                        Some(Err(length_mismatch(&target, size, seen, true)))
                    }
                    None => None,
                };
                futures::future::ready(out)
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let v: Vec<Result<Bytes>> = sizes
            .iter()
            .map(|n| Ok(Bytes::from(vec![0u8; *n])))
            .collect();
        Box::pin(futures::stream::iter(v))
    }

    async fn drain(s: ByteStream) -> Result<u64> {
        s.try_fold(0u64, |n, b| futures::future::ready(Ok(n + b.len() as u64)))
            .await
    }

    fn chain(e: Option<Error>) -> String {
        e.map(|e| e.chain()).unwrap_or_default()
    }

    #[tokio::test]
    async fn exact_length_passes_exact_streams_and_fails_others() {
        assert_eq!(
            drain(exact_length(chunks(&[3, 4]), 7, "t".into()))
                .await
                .ok(),
            Some(7)
        );
        let short = drain(exact_length(chunks(&[3]), 7, "t".into())).await;
        assert!(short.is_err_and(|e| e.chain().contains("only 3")));
        let long = drain(exact_length(chunks(&[5, 5]), 7, "t".into())).await;
        assert!(long.is_err_and(|e| e.chain().contains("more than 10")));
    }

    #[tokio::test]
    async fn a_stream_is_cut_into_exact_parts_and_the_last_is_marked() {
        let mut src = Source::Stream {
            chunker: Chunker::new(chunks(&[7, 0, 7, 7, 7, 7, 7, 7, 7, 7, 7])),
            part_size: 16,
            offset: 0,
            declared: None,
        };
        let pool = Pool::new(2);
        let mut seen = Vec::new();
        while let Some((piece, last)) = src.next(&pool).await.unwrap_or(None) {
            seen.push((piece.offset(), piece.len(), last));
        }
        assert_eq!(
            seen,
            vec![
                (0, 16, false),
                (16, 16, false),
                (32, 16, false),
                (48, 16, false),
                (64, 6, true)
            ]
        );
        // A stream that ends exactly at a part's end: that part is the last.
        let mut src = Source::Stream {
            chunker: Chunker::new(chunks(&[10, 6])),
            part_size: 8,
            offset: 0,
            declared: None,
        };
        let mut seen = Vec::new();
        while let Some((piece, last)) = src.next(&pool).await.unwrap_or(None) {
            seen.push((piece.offset(), piece.len(), last));
        }
        assert_eq!(seen, vec![(0, 8, false), (8, 8, true)]);
    }

    #[tokio::test]
    async fn a_streams_parts_reuse_the_pools_buffers() {
        let mut src = Source::Stream {
            chunker: Chunker::new(chunks(&[5; 40])),
            part_size: 64,
            offset: 0,
            declared: None,
        };
        let pool = Pool::new(1);
        let mut bufs = std::collections::HashSet::new();
        while let Some((piece, _)) = src.next(&pool).await.unwrap_or(None) {
            let Piece::Bytes { data, .. } = piece else {
                panic!("a stream's part is bytes")
            };
            bufs.insert(data.as_ptr() as usize);
            pool.give(PartBody::Bytes(data));
        }
        assert_eq!(bufs.len(), 1, "one buffer, reused for every part");
    }

    #[tokio::test]
    async fn file_parts_are_spans_checksummed_and_read_back_exactly() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::new(2);
        let mut src = Source::file(path.clone(), data.len() as u64, 300_000);
        let mut got = Vec::new();
        while let Some((piece, last)) = src.next(&pool).await.unwrap_or(None) {
            let l = piece
                .load(&pool, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let PartBody::File(span) = &l.body else {
                panic!("a file's part is a span")
            };
            let bytes = span.read().await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(l.crc32c, crc32c::crc32c(&bytes));
            // Read again: a span is re-readable.
            assert_eq!(span.read().await.ok(), Some(bytes.clone()));
            got.extend_from_slice(&bytes);
            assert_eq!(last, got.len() == data.len());
        }
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn a_span_of_a_changed_file_fails_rather_than_end_short_or_send_other_bytes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::new(1);
        let piece = Piece::File {
            path: Arc::from(path.as_path()),
            offset: 100_000,
            len: 400_000,
        };
        let l = piece
            .load(&pool, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let PartBody::File(span) = l.body else {
            panic!("a file's part is a span")
        };
        assert!(span.changed().await.is_none());

        // Shorter than the span: the reader fails, never ends early.
        std::fs::write(&path, &data[..300_000]).unwrap_or_else(|e| panic!("{e}"));
        let mut sent = 0u64;
        let mut r = span.reader();
        let err = loop {
            match r.next().await {
                Some(Ok(b)) => sent += b.len() as u64,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        assert!(chain(err).contains("changed size"));
        assert!(sent < span.len());
        assert!(chain(span.changed().await).contains("changed size"));

        // The same length, other bytes: the last chunk is never handed out.
        let mut other = data.clone();
        other[450_000] ^= 0xff;
        std::fs::write(&path, &other).unwrap_or_else(|e| panic!("{e}"));
        let err = span.read().await.err();
        assert!(chain(err).contains("changed during the upload"));
        assert!(chain(span.changed().await).contains("changed during the upload"));

        // A tail is checked for length only.
        let tail = span.tail(300_000);
        assert_eq!(
            tail.read().await.ok().map(|b| b.to_vec()),
            Some(other[400_000..500_000].to_vec())
        );
    }
}
