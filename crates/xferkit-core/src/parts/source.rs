//! Where the bytes of parts come from: positional reads of a file into
//! reused buffers, or cuts of a stream.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::Digest;
use crate::{ByteStream, Error, Result};

/// Part buffers of one upload: a buffer whose part the store has taken
/// (no request holds it any more) is read into again, so an upload
/// allocates about `concurrency` buffers, not one per part.
#[derive(Clone, Default)]
pub(crate) struct Pool(Arc<Mutex<Vec<BytesMut>>>);

impl Pool {
    fn take(&self) -> BytesMut {
        let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
        free.pop().unwrap_or_default()
    }

    /// Give back a part's bytes; kept only if nothing else holds them.
    pub(crate) fn give(&self, data: Bytes, keep: usize) {
        if let Ok(mut b) = data.try_into_mut() {
            b.clear();
            let mut free = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < keep {
                free.push(b);
            }
        }
    }
}

/// One part's bytes, not yet read (a file) or already cut (a stream).
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

/// A part's bytes with their CRC32C and digest.
pub(crate) struct Loaded {
    pub offset: u64,
    pub data: Bytes,
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

    /// Read (in a blocking task: one positional read straight into a pooled
    /// buffer) and checksum, while the bytes are hot in cache.
    pub(crate) async fn load(self, pool: &Pool, digest: Option<Digest>) -> Result<Loaded> {
        match self {
            Piece::Bytes { offset, data } => {
                let d = data.clone();
                let (crc32c, digest) = blocking("checksum", "part", move || {
                    Ok((crc32c::crc32c(&d), digest.map(|f| f(&d))))
                })
                .await?;
                Ok(Loaded {
                    offset,
                    data,
                    crc32c,
                    digest,
                })
            }
            Piece::File { path, offset, len } => {
                let shown = path.display().to_string();
                let n = usize::try_from(len).map_err(|_| {
                    Error::backend(&shown, "a part does not fit in memory", "part too large")
                })?;
                let mut buf = pool.take();
                let (buf, crc32c, digest) = blocking(&shown, "read a part", move || {
                    buf.resize(n, 0);
                    let file = std::fs::File::open(&path)
                        .map_err(|e| Error::from_io(shown_of(&path), e))?;
                    read_exact_at(&file, &mut buf, offset).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            shrank(&path)
                        } else {
                            Error::from_io(shown_of(&path), e)
                        }
                    })?;
                    let crc = crc32c::crc32c(&buf);
                    let digest = digest.map(|f| f(&buf));
                    Ok((buf, crc, digest))
                })
                .await?;
                Ok(Loaded {
                    offset,
                    data: buf.freeze(),
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

/// The error for a source file that got shorter during its upload.
pub(crate) fn shrank(path: &Path) -> Error {
    Error::backend(
        shown_of(path),
        "the source file changed size during the upload",
        "file shrank",
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
    /// are handed out.
    pub(crate) async fn next(&mut self) -> Result<Option<(Piece, bool)>> {
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
                // One byte past the part: is there more after it?
                chunker.fill(part_size.saturating_add(1)).await?;
                if chunker.buf.is_empty() {
                    return Ok(None);
                }
                let n = (*part_size).min(chunker.buf.len());
                let data = chunker.buf.split_to(n).freeze();
                let piece = Piece::Bytes {
                    offset: *offset,
                    data,
                };
                *offset += n as u64;
                Ok(Some((piece, chunker.buf.is_empty())))
            }
        }
    }
}

/// Cuts an upload stream into parts.
pub(crate) struct Chunker {
    stream: ByteStream,
    pub(crate) buf: BytesMut,
    done: bool,
}

impl Chunker {
    pub(crate) fn new(stream: ByteStream) -> Self {
        Chunker {
            stream,
            buf: BytesMut::new(),
            done: false,
        }
    }

    /// Buffer until `n` bytes are held or the stream ends.
    pub(crate) async fn fill(&mut self, n: usize) -> Result<()> {
        while self.buf.len() < n && !self.done {
            match self.stream.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(e),
                None => self.done = true,
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
            chunker: Chunker::new(chunks(&[7; 10])),
            part_size: 16,
            offset: 0,
            declared: None,
        };
        let mut seen = Vec::new();
        while let Some((piece, last)) = src.next().await.unwrap_or(None) {
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
    }

    #[tokio::test]
    async fn file_parts_read_exactly_and_a_shrunk_file_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..100u8).collect();
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        let pool = Pool::default();
        let mut src = Source::file(path.clone(), 100, 40);
        let mut got = Vec::new();
        while let Some((piece, last)) = src.next().await.unwrap_or(None) {
            let l = piece
                .load(&pool, None)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(l.crc32c, crc32c::crc32c(&l.data));
            got.extend_from_slice(&l.data);
            assert_eq!(last, got.len() == 100);
            pool.give(l.data, 2);
        }
        assert_eq!(got, data);
        std::fs::write(&path, &data[..50]).unwrap_or_else(|e| panic!("{e}"));
        let piece = Piece::File {
            path: Arc::from(path.as_path()),
            offset: 40,
            len: 40,
        };
        let err = piece
            .load(&pool, None)
            .await
            .err()
            .map(|e| e.chain())
            .unwrap_or_default();
        assert!(err.contains("changed size"), "{err}");
    }
}
