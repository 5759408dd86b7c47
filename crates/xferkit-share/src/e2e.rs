//! End-to-end encrypted attachments: content encrypted on the client with a
//! fresh key per file, the key and a digest of the ciphertext carried in the
//! link's `#fragment` (which no HTTP client sends to a server).
//!
//! # Format
//!
//! The stored object is [RFC 8188] `aes128gcm` content: a header (16-byte
//! random salt, record size 65,536 as a big-endian u32, key-id length 0),
//! then records of 65,536 bytes (the last one shorter), each AES-128-GCM
//! with a key and nonce derived by HKDF-SHA-256 from the file key and the
//! salt, the nonce XORed with the record's sequence number. xferkit writes
//! no padding: every record but the last holds exactly 65,519 plaintext
//! bytes and the delimiter `0x01`, the last one the rest and `0x02`. A reader
//! refuses anything else, so a plaintext byte range maps to whole records
//! and ranged, parallel and resumed downloads decrypt records on their own.
//!
//! # The link
//!
//! `URL#aes128gcm.KEY.DIGEST`: `KEY` is the 16-byte file key and `DIGEST`
//! the SHA-256 of the header followed by the SHA-256 of each record, in
//! order (a hash of hashes, so records fetched in any order, or resumed from
//! a partial file, can be checked). Both are base64url without padding.
//!
//! # What is checked
//!
//! Every record is authenticated by its GCM tag under the link's key, at its
//! sequence number, with the delimiter its position demands: tampering, a
//! wrong key, reordered records and a cut at a record boundary all fail. A
//! whole-object download also checks the digest, so the object must be the
//! very ciphertext the link names (the key alone cannot tell: whoever holds
//! it can encrypt other content). A ranged read ([`ByteRange`]) is
//! authenticated record by record, without the digest.
//!
//! The store sees the ciphertext, its size (the plaintext's plus 17 bytes
//! per 64 KiB, plus 21), the object's key and metadata (`encryption =
//! aes128gcm`, and a title or message if the upload set one), and the
//! content type only if the caller set one (else `application/octet-stream`).
//! None of those are encrypted: choose keys that say nothing.
//!
//! [RFC 8188]: https://www.rfc-editor.org/rfc/rfc8188

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use sha2::{Digest, Sha256};

use xferkit_core::url::ObjectUrl;
use xferkit_core::{
    ByteRange, ByteStream, Capabilities, DynHandler, Error, FileTransferHandler, Key,
    PendingUpload, PresignMethod, PresignedUrl, PutOptions, RemoteObject, Result, TransferCtx,
    UploadSource, async_trait,
};

/// The content coding, and the first word of a link's fragment.
pub const SCHEME: &str = "aes128gcm";
/// Bytes of one record on the store (RFC 8188 `rs`).
pub const RECORD_SIZE: u64 = 65_536;
/// Plaintext bytes in every record but the last.
pub const PLAIN_PER_RECORD: u64 = RECORD_SIZE - OVERHEAD;
/// GCM tag plus delimiter.
const OVERHEAD: u64 = 17;
/// The metadata entry that marks an encrypted object: `encryption = aes128gcm`
/// (a name every store accepts: Azure allows no `-`).
pub const METADATA: &str = "encryption";
/// Salt, record size, key-id length (0).
const HEADER: u64 = 21;
/// Plaintext records encrypted per blocking task while uploading (1 MiB).
const BATCH: u64 = 16;
/// GCM tag bytes.
const TAG: usize = 16;

/// The secret a link carries: the file key and the digest of the stored
/// ciphertext. Its `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSecret {
    key: [u8; 16],
    digest: [u8; 32],
}

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(<redacted>)")
    }
}

impl LinkSecret {
    /// The fragment (without `#`): `aes128gcm.KEY.DIGEST`.
    pub fn fragment(&self) -> String {
        format!(
            "{SCHEME}.{}.{}",
            B64.encode(self.key),
            B64.encode(self.digest)
        )
    }

    /// `url` with this secret as its fragment (replacing any fragment).
    pub fn attach(&self, url: &str) -> String {
        let base = url.split_once('#').map_or(url, |(b, _)| b);
        format!("{base}#{}", self.fragment())
    }

    /// A name for this secret that reveals nothing of it (transfer identities).
    pub(crate) fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"xferkit link fingerprint\0");
        h.update(self.key);
        h.update(self.digest);
        hex::encode(&h.finalize()[..16])
    }

    fn parse(fragment: &str, shown_url: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid_url(
                shown_url,
                format!("its #{SCHEME} fragment is not a key and digest ({why})"),
            )
        };
        let rest = fragment
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(|| bad("no scheme"))?;
        let (k, d) = rest
            .split_once('.')
            .ok_or_else(|| bad("two parts expected"))?;
        let key: [u8; 16] = B64
            .decode(k)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the key is not 16 bytes of base64url"))?;
        let digest: [u8; 32] = B64
            .decode(d)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("the digest is not 32 bytes of base64url"))?;
        Ok(LinkSecret { key, digest })
    }
}

/// Split `link` into the URL to fetch and the secret in its fragment, if the
/// fragment is an encrypted attachment's (`#aes128gcm.…`). Any other link is
/// returned as it is. A malformed `aes128gcm` fragment is `InvalidUrl`, and
/// the error shows the URL without its fragment.
pub fn split_link(link: &str) -> Result<(String, Option<LinkSecret>)> {
    match link.split_once('#') {
        Some((base, frag)) if frag.starts_with(SCHEME) => {
            let secret = LinkSecret::parse(frag, &xferkit_core::url::shown(link))?;
            Ok((base.to_string(), Some(secret)))
        }
        _ => Ok((link.to_string(), None)),
    }
}

/// Records holding `plain` bytes (an empty file is one empty record).
fn records(plain: u64) -> u64 {
    plain.div_ceil(PLAIN_PER_RECORD).max(1)
}

/// Size on the store of `plain` bytes of content.
pub fn sealed_size(plain: u64) -> u64 {
    HEADER + plain + OVERHEAD * records(plain)
}

/// Content size of a stored object of `sealed` bytes, or `None` if no
/// content encrypts to that size.
pub fn plain_size(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(HEADER)?;
    let n = body.div_ceil(RECORD_SIZE).max(1);
    let plain = body.checked_sub(OVERHEAD * n)?;
    (sealed_size(plain) == sealed).then_some(plain)
}

/// The keys of one file: AES-128-GCM with the content key, and the nonce base.
struct Keys {
    cipher: LessSafeKey,
    nonce: [u8; 12],
    header: [u8; HEADER as usize],
}

impl Keys {
    fn derive(ikm: &[u8; 16], salt: [u8; 16], rs: u64) -> Keys {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        // Both lengths are far below HKDF-SHA-256's limit (255 × 32 bytes).
        hk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .expect("16 bytes is a valid HKDF length");
        hk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .expect("12 bytes is a valid HKDF length");
        let mut header = [0u8; HEADER as usize];
        header[..16].copy_from_slice(&salt);
        header[16..20].copy_from_slice(&u32::try_from(rs).unwrap_or(u32::MAX).to_be_bytes());
        let cek = UnboundKey::new(&AES_128_GCM, &cek).expect("16 bytes is AES-128's key length");
        Keys {
            cipher: LessSafeKey::new(cek),
            nonce,
            header,
        }
    }

    /// From a stored header: salt, `rs` = [`RECORD_SIZE`], no key id.
    fn from_header(ikm: &[u8; 16], header: &[u8], target: &str) -> Result<Keys> {
        let not_ours = |why: String| {
            Error::backend(
                target,
                format!("not an xferkit encrypted attachment: {why}"),
                "bad aes128gcm header",
            )
        };
        if header.len() < HEADER as usize {
            return Err(not_ours(format!("{} bytes, no header", header.len())));
        }
        let rs = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
        if u64::from(rs) != RECORD_SIZE || header[20] != 0 {
            return Err(not_ours(format!(
                "record size {rs} and key id length {} (xferkit writes {RECORD_SIZE} and 0)",
                header[20]
            )));
        }
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&header[..16]);
        Ok(Keys::derive(ikm, salt, RECORD_SIZE))
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = self.nonce;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Record `seq` of `plain`, the last one if `last`.
    fn seal(&self, seq: u64, plain: &[u8], last: bool) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plain.len() + OVERHEAD as usize);
        buf.extend_from_slice(plain);
        self.seal_tail(seq, &mut buf, 0, last);
        buf
    }

    /// Make the plaintext `out` holds from `start` record `seq` (the last
    /// one if `last`): append its delimiter, encrypt it where it lies and
    /// append the tag.
    fn seal_tail(&self, seq: u64, out: &mut Vec<u8>, start: usize, last: bool) {
        out.push(if last { 2 } else { 1 });
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(self.nonce(seq)),
                Aad::empty(),
                &mut out[start..],
            )
            .expect("a record is far below GCM's length limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Decrypt record `seq` where it lies, which must be the last one if
    /// `last`: the length of its plaintext, now at the start of `record`.
    fn open(&self, seq: u64, record: &mut [u8], last: bool, target: &str) -> Result<usize> {
        let fail = |actual: &str| Error::ChecksumMismatch {
            target: target.to_string(),
            expected: format!("record {seq} authentic under the link's key"),
            actual: actual.to_string(),
        };
        if record.len() < OVERHEAD as usize {
            return Err(fail(
                "a record too short to hold its tag (truncated content)",
            ));
        }
        let (body, tag) = record.split_at_mut(record.len() - TAG);
        let mut t = [0u8; TAG];
        t.copy_from_slice(tag);
        let buf = self
            .cipher
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(self.nonce(seq)),
                Aad::empty(),
                Tag::from(t),
                body,
                0..,
            )
            .map_err(|_| {
                fail(
                    "a record that does not authenticate (tampered or reordered content, \
                     or a wrong key)",
                )
            })?;
        match (buf.last(), last) {
            (Some(2), true) | (Some(1), false) => Ok(buf.len() - 1),
            (Some(1), true) => Err(fail("a record that is not the last (truncated content)")),
            _ => Err(fail("a record with padding or a wrong delimiter")),
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| Error::backend("e2e", "the system random generator failed", e.to_string()))?;
    Ok(b)
}

/// Where an upload's plaintext comes from.
enum Plain {
    /// A file of `size` bytes, read straight into its records' places.
    File {
        file: Arc<std::fs::File>,
        path: Arc<std::path::Path>,
        size: u64,
    },
    /// A stream, gathered a batch of records at a time.
    Stream(ByteStream),
}

/// Records `seq..` holding `len` plaintext bytes, the object's last record
/// among them if `ended`, and the SHA-256 of each: `put(from, n, out)`
/// appends plaintext bytes `from..from + n` of the batch to `out`, where
/// they are encrypted in place (one copy of each byte, into the records).
fn seal_batch(
    keys: &Keys,
    seq: u64,
    len: usize,
    ended: bool,
    mut put: impl FnMut(usize, usize, &mut Vec<u8>) -> Result<()>,
) -> Result<(Bytes, Vec<[u8; 32]>)> {
    let per = PLAIN_PER_RECORD as usize;
    let n = len.div_ceil(per).max(1);
    let mut out = Vec::with_capacity(len + n * OVERHEAD as usize);
    let mut hashes = Vec::with_capacity(n);
    for i in 0..n {
        let from = i * per;
        let start = out.len();
        put(from, (len - from).min(per), &mut out)?;
        keys.seal_tail(seq + i as u64, &mut out, start, ended && i + 1 == n);
        hashes.push(sha256(&out[start..]));
    }
    Ok((Bytes::from(out), hashes))
}

/// The ciphertext of `plain` (header, then records), as a stream, and the
/// digest once the stream has ended.
fn seal_stream(keys: Arc<Keys>, plain: Plain, digest: Arc<Mutex<Option<[u8; 32]>>>) -> ByteStream {
    struct St {
        input: Plain,
        /// A stream's bytes received and not sealed yet.
        buf: BytesMut,
        /// A file's bytes sealed so far.
        pos: u64,
        seq: u64,
        outer: Sha256,
        ended: bool,
        done: bool,
    }
    let mut outer = Sha256::new();
    outer.update(keys.header);
    let header = Bytes::copy_from_slice(&keys.header);
    let st = St {
        input: plain,
        buf: BytesMut::new(),
        pos: 0,
        seq: 0,
        outer,
        ended: false,
        done: false,
    };
    let batch = (BATCH * PLAIN_PER_RECORD) as usize;
    let body = futures::stream::unfold(st, move |mut st| {
        let (keys, digest) = (keys.clone(), digest.clone());
        async move {
            if st.done {
                return None;
            }
            let seq = st.seq;
            let task = match &mut st.input {
                Plain::File { file, path, size } => {
                    // Up to a batch of records, read where they go.
                    let left = *size - st.pos;
                    let take = left.min(BATCH * PLAIN_PER_RECORD);
                    let (file, path, at) = (file.clone(), path.clone(), st.pos);
                    st.pos += take;
                    st.ended = st.pos == *size;
                    let ended = st.ended;
                    tokio::task::spawn_blocking(move || {
                        let len = usize::try_from(take).unwrap_or(usize::MAX);
                        seal_batch(&keys, seq, len, ended, |from, n, out| {
                            let start = out.len();
                            out.resize(start + n, 0);
                            file.read_exact_at(&mut out[start..], at + from as u64)
                                .map_err(|e| xferkit_core::parts::read_error(&path, e))
                        })
                    })
                }
                Plain::Stream(input) => {
                    // Gather a batch, keeping at least one byte past it (or
                    // the end) so the last record is known when it is sealed.
                    while !st.ended && st.buf.len() <= batch {
                        match input.next().await {
                            Some(Ok(chunk)) => st.buf.extend_from_slice(&chunk),
                            Some(Err(e)) => return Some((Err(e), St { done: true, ..st })),
                            None => st.ended = true,
                        }
                    }
                    let per = PLAIN_PER_RECORD as usize;
                    let take = if st.ended {
                        st.buf.len()
                    } else {
                        (st.buf.len() - 1) / per * per
                    };
                    let chunk = st.buf.split_to(take).freeze();
                    let ended = st.ended;
                    tokio::task::spawn_blocking(move || {
                        seal_batch(&keys, seq, chunk.len(), ended, |from, n, out| {
                            out.extend_from_slice(&chunk[from..from + n]);
                            Ok(())
                        })
                    })
                }
            };
            let (bytes, hashes) = match task.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Some((Err(e), St { done: true, ..st })),
                Err(e) => {
                    let e = Error::backend("e2e", "encryption task failed", e);
                    return Some((Err(e), St { done: true, ..st }));
                }
            };
            st.seq += hashes.len() as u64;
            for h in &hashes {
                st.outer.update(h);
            }
            if st.ended {
                *digest.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(st.outer.clone().finalize().into());
                st.done = true;
            }
            Some((Ok(bytes), st))
        }
    });
    Box::pin(futures::stream::once(async move { Ok(header) }).chain(body))
}

/// A store seen through end-to-end encryption: uploads are encrypted with a
/// fresh key ([`Encrypted::sealing`]), downloads of one link decrypted and
/// checked ([`Encrypted::opening`]). Sizes it reports are content sizes;
/// checksums it reports none (the store's are of the ciphertext). Listing,
/// deleting, copying and presigning go to the store unchanged.
pub struct Encrypted {
    inner: DynHandler,
    mode: Mode,
}

enum Mode {
    Seal {
        key: [u8; 16],
        digest: Arc<Mutex<Option<[u8; 32]>>>,
    },
    Open {
        secret: LinkSecret,
        keys: tokio::sync::OnceCell<Arc<Keys>>,
        /// SHA-256 of each record this download authenticated, by number.
        hashes: Arc<Mutex<HashMap<u64, Seen>>>,
    },
}

impl fmt::Debug for Encrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Seal { .. } => "sealing",
            Mode::Open { .. } => "opening",
        };
        f.debug_struct("Encrypted")
            .field("store", &self.inner.name())
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

impl Encrypted {
    /// Uploads through this encrypt with a fresh random key; after one
    /// completes, [`secret`](Self::secret) gives its link's secret.
    pub fn sealing(inner: DynHandler) -> Result<Self> {
        Ok(Encrypted {
            inner,
            mode: Mode::Seal {
                key: random()?,
                digest: Arc::default(),
            },
        })
    }

    /// Downloads through this decrypt and check the object that `secret`'s
    /// link names.
    pub fn opening(inner: DynHandler, secret: LinkSecret) -> Self {
        Encrypted {
            inner,
            mode: Mode::Open {
                secret,
                keys: tokio::sync::OnceCell::new(),
                hashes: Arc::default(),
            },
        }
    }

    /// The secret of the last completed upload (key and digest), for its link.
    pub fn secret(&self) -> Option<LinkSecret> {
        match &self.mode {
            Mode::Seal { key, digest } => (*digest.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|digest| LinkSecret { key: *key, digest }),
            Mode::Open { secret, .. } => Some(secret.clone()),
        }
    }

    fn plain(&self, mut obj: RemoteObject) -> Result<RemoteObject> {
        obj.size = plain_size(obj.size).ok_or_else(|| {
            Error::backend(
                xferkit_core::url::shown(&obj.url),
                format!(
                    "not an xferkit encrypted attachment: no content encrypts to {} bytes",
                    obj.size
                ),
                "bad aes128gcm size",
            )
        })?;
        obj.checksum = None;
        Ok(obj)
    }

    fn wrong_mode(&self, what: &str) -> Error {
        Error::not_supported(self.inner.name(), what)
    }

    /// The file keys, from the object's header (fetched once).
    async fn keys(&self, key: &Key) -> Result<Arc<Keys>> {
        let Mode::Open { secret, keys, .. } = &self.mode else {
            return Err(self.wrong_mode("decrypting with an upload's handler"));
        };
        keys.get_or_try_init(|| async {
            let target = xferkit_core::url::shown(&self.inner.url_for(key));
            let range = ByteRange::Bounded {
                start: 0,
                end: HEADER,
            };
            let (_, mut s) = self.inner.download_stream(key, Some(range)).await?;
            let mut head = Vec::new();
            while let Some(c) = s.next().await {
                head.extend_from_slice(&c?);
            }
            Keys::from_header(&secret.key, &head, &target).map(Arc::new)
        })
        .await
        .cloned()
    }
}

/// A record an opening download authenticated: the SHA-256 of its stored
/// bytes, and which bytes of its plaintext this run handed out.
struct Seen {
    hash: [u8; 32],
    spans: Vec<(usize, usize)>,
}

impl Seen {
    /// Whether this run handed out all `len` bytes of the record, so the
    /// file holds exactly what was authenticated; else part of it came
    /// from an earlier run, and the file is what must be checked.
    fn covers(&self, len: usize) -> bool {
        let mut spans = self.spans.clone();
        spans.sort_unstable();
        let mut end = 0;
        for (a, b) in spans {
            if a > end {
                return false;
            }
            end = end.max(b);
        }
        end >= len
    }
}

/// Decrypts records `first..` of a stored object as they arrive, emitting
/// `skip..skip+len` of their plaintext; with `whole`, parses the header
/// first and checks the digest at the end.
struct Opener {
    input: ByteStream,
    buf: BytesMut,
    seq: u64,
    /// Records in the object.
    count: u64,
    /// Stored size of the last record.
    last_len: usize,
    keys: Option<Arc<Keys>>,
    ikm: [u8; 16],
    /// The digest the link carries, checked at the end of a whole read.
    whole: Option<([u8; 32], Sha256)>,
    hashes: Arc<Mutex<HashMap<u64, Seen>>>,
    skip: usize,
    left: u64,
    target: String,
}

impl Opener {
    fn record_len(&self) -> usize {
        if self.seq + 1 == self.count {
            self.last_len
        } else {
            RECORD_SIZE as usize
        }
    }

    /// The next plaintext piece, `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.left == 0 && self.whole.is_none() {
                return Ok(None);
            }
            let need = match self.keys {
                None => HEADER as usize,
                Some(_) if self.seq >= self.count => {
                    if let Some((want, outer)) = self.whole.take()
                        && <[u8; 32]>::from(outer.finalize()) != want
                    {
                        return Err(Error::ChecksumMismatch {
                            target: self.target.clone(),
                            expected: "the ciphertext digest the link carries".into(),
                            actual: "another ciphertext (not the object the link names)".into(),
                        });
                    }
                    return Ok(None);
                }
                Some(_) => self.record_len(),
            };
            while self.buf.len() < need {
                match self.input.next().await {
                    Some(c) => self.buf.extend_from_slice(&c?),
                    None => {
                        return Err(Error::Transient {
                            target: self.target.clone(),
                            retry_after: None,
                            source: Some(format!("stream ended inside record {}", self.seq).into()),
                        });
                    }
                }
            }
            let mut piece = self.buf.split_to(need);
            let Some(keys) = self.keys.clone() else {
                let keys = Keys::from_header(&self.ikm, &piece, &self.target)?;
                if let Some((_, outer)) = &mut self.whole {
                    outer.update(keys.header);
                }
                self.keys = Some(Arc::new(keys));
                continue;
            };
            let last = self.seq + 1 == self.count;
            // The hash is of the stored bytes, which decryption overwrites.
            let hash = sha256(&piece);
            let len = keys.open(self.seq, &mut piece, last, &self.target)?;
            piece.truncate(len);
            let plain = piece.freeze();
            if let Some((_, outer)) = &mut self.whole {
                outer.update(hash);
            }
            let from = self.skip.min(plain.len());
            self.skip -= from;
            let n = (plain.len() - from).min(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.left -= n as u64;
            {
                let mut seen = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
                let entry = seen.entry(self.seq).or_insert(Seen {
                    hash,
                    spans: Vec::new(),
                });
                // Read twice (by two ranges, or a retry), a record must be the
                // same both times: else the file could mix two versions.
                if entry.hash != hash {
                    return Err(Error::ChecksumMismatch {
                        target: self.target.clone(),
                        expected: format!("record {} the same on every read", self.seq),
                        actual: "a record that changed between two reads".into(),
                    });
                }
                entry.spans.push((from, from + n));
            }
            self.seq += 1;
            if n > 0 {
                return Ok(Some(plain.slice(from..from + n)));
            }
        }
    }
}

#[async_trait]
impl FileTransferHandler for Encrypted {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn schemes(&self) -> &[&str] {
        self.inner.schemes()
    }
    fn url_for(&self, key: &Key) -> String {
        self.inner.url_for(key)
    }

    fn key_for_url(&self, url: &ObjectUrl) -> Option<Key> {
        self.inner.key_for_url(url)
    }

    async fn upload(
        &self,
        key: &Key,
        source: UploadSource,
        opts: &PutOptions,
        ctx: &TransferCtx,
    ) -> Result<RemoteObject> {
        let Mode::Seal { key: ikm, digest } = &self.mode else {
            return Err(self.wrong_mode("uploading through a download link"));
        };
        let (plain, size) = match source {
            UploadSource::Path(p) => {
                let shown = p.display().to_string();
                let file = tokio::fs::File::open(&p)
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?;
                let size = file
                    .metadata()
                    .await
                    .map_err(|e| Error::from_io(&shown, e))?
                    .len();
                let file = Arc::new(file.into_std().await);
                let path = Arc::from(p.as_path());
                (Plain::File { file, path, size }, Some(size))
            }
            UploadSource::Stream { stream, size } => (Plain::Stream(stream), size),
        };
        let keys = Arc::new(Keys::derive(ikm, random()?, RECORD_SIZE));
        *digest.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let fresh = Arc::new(Mutex::new(None));
        let sealed = seal_stream(keys, plain, fresh.clone());
        let size = size.map(sealed_size);
        if let Some(s) = size {
            ctx.set_total(s);
        }
        // The type a key's extension suggests would tell the store what the
        // content is: it gets the type only when the caller set one.
        let mut opts = opts.clone();
        if opts.content_type.is_none() {
            opts.content_type = Some("application/octet-stream".into());
        }
        opts.metadata.insert(METADATA.into(), SCHEME.into());
        let obj = self
            .inner
            .upload(
                key,
                UploadSource::Stream {
                    stream: sealed,
                    size,
                },
                &opts,
                ctx,
            )
            .await?;
        let got = *fresh.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = got else {
            return Err(Error::backend(
                xferkit_core::url::shown(&obj.url),
                "the store finished the upload before reading all of it",
                "e2e stream not ended",
            ));
        };
        *digest.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        self.plain(obj)
    }

    async fn download_stream(
        &self,
        key: &Key,
        range: Option<ByteRange>,
    ) -> Result<(RemoteObject, ByteStream)> {
        let Mode::Open { secret, hashes, .. } = &self.mode else {
            return Err(self.wrong_mode("decrypting with an upload's handler"));
        };
        let target = xferkit_core::url::shown(&self.inner.url_for(key));
        let per = PLAIN_PER_RECORD;
        // Whole records: the first one the range touches onwards, up to the
        // last one (a suffix needs the size first).
        let range = match range {
            Some(ByteRange::Suffix(n)) if n > 0 => {
                let size = self.plain(self.inner.stat(key).await?)?.size;
                Some(ByteRange::From(size.saturating_sub(n)))
            }
            r => r,
        };
        let (stored, first) = match range {
            None => (None, 0),
            Some(ByteRange::Bounded { start, end }) => {
                let (a, b) = (start / per, end.saturating_sub(1).max(start) / per);
                let r = ByteRange::Bounded {
                    start: HEADER + a * RECORD_SIZE,
                    end: HEADER + (b + 1) * RECORD_SIZE,
                };
                (Some(r), a)
            }
            Some(ByteRange::From(start)) => {
                let a = start / per;
                (Some(ByteRange::From(HEADER + a * RECORD_SIZE)), a)
            }
            Some(r @ ByteRange::Suffix(_)) => {
                return Err(Error::InvalidRange {
                    target,
                    range: r.to_string(),
                });
            }
        };
        let keys = match range {
            Some(_) => Some(self.keys(key).await?),
            None => None,
        };
        let (obj, input) = match self.inner.download_stream(key, stored).await {
            // The range asked for starts past the last record.
            Err(e) if e.kind() == xferkit_core::ErrorKind::InvalidRange => {
                let size = self.plain(self.inner.stat(key).await?)?.size;
                let r = range.unwrap_or(ByteRange::From(0));
                r.resolve(size, &target)?;
                return Err(e);
            }
            r => r?,
        };
        let stored_size = obj.size;
        let obj = self.plain(obj)?;
        let span = match range {
            Some(r) => r.resolve(obj.size, &target)?,
            None => 0..obj.size,
        };
        let count = records(obj.size);
        let body = stored_size - HEADER;
        let opener = Opener {
            input,
            buf: BytesMut::new(),
            seq: first,
            count,
            last_len: usize::try_from(body - (count - 1) * RECORD_SIZE).unwrap_or(usize::MAX),
            keys,
            ikm: secret.key,
            whole: range.is_none().then(|| (secret.digest, Sha256::new())),
            hashes: hashes.clone(),
            skip: usize::try_from(span.start - first * per).unwrap_or(0),
            left: span.end - span.start,
            target,
        };
        let stream = futures::stream::unfold(Some(opener), |st| async move {
            let mut o = st?;
            match o.next().await {
                Ok(Some(b)) => Some((Ok(b), Some(o))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok((obj, Box::pin(stream)))
    }

    async fn check_ranged_download(&self, key: &Key, file: &std::fs::File) -> Result<()> {
        let Mode::Open { secret, hashes, .. } = &self.mode else {
            return Ok(());
        };
        let keys = self.keys(key).await?;
        let target = xferkit_core::url::shown(&self.inner.url_for(key));
        let file = file.try_clone().map_err(|e| Error::from_io(&target, e))?;
        let hashes = hashes.clone();
        let want = secret.digest;
        let shown = target.clone();
        // Records whose plaintext this run did not wholly write (a resumed
        // download's, or one straddling a resumed part) are sealed again
        // from the file: encryption with the same key, salt and sequence
        // number is deterministic, so the hash is the stored record's
        // exactly when the bytes on disk are its plaintext.
        let digest = tokio::task::spawn_blocking(move || -> Result<[u8; 32]> {
            let size = file
                .metadata()
                .map_err(|e| Error::from_io(&shown, e))?
                .len();
            let count = records(size);
            let known = std::mem::take(&mut *hashes.lock().unwrap_or_else(|p| p.into_inner()));
            let mut outer = Sha256::new();
            outer.update(keys.header);
            let mut buf = vec![0u8; PLAIN_PER_RECORD as usize];
            for seq in 0..count {
                let start = seq * PLAIN_PER_RECORD;
                let len = (size - start).min(PLAIN_PER_RECORD) as usize;
                let hash = match known.get(&seq) {
                    Some(s) if s.covers(len) => s.hash,
                    _ => {
                        file.read_exact_at(&mut buf[..len], start)
                            .map_err(|e| Error::from_io(&shown, e))?;
                        sha256(&keys.seal(seq, &buf[..len], seq + 1 == count))
                    }
                };
                outer.update(hash);
            }
            Ok(outer.finalize().into())
        })
        .await
        .map_err(|e| Error::backend(&target, "digest task failed", e))??;
        if digest != want {
            return Err(Error::ChecksumMismatch {
                target,
                expected: "the ciphertext digest the link carries".into(),
                actual: "another ciphertext (not the object the link names)".into(),
            });
        }
        Ok(())
    }

    async fn stat(&self, key: &Key) -> Result<RemoteObject> {
        self.plain(self.inner.stat(key).await?)
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<RemoteObject>> {
        self.inner.list(prefix)
    }

    fn list_with(
        &self,
        prefix: &str,
        opts: &xferkit_core::ListOptions,
    ) -> BoxStream<'static, Result<xferkit_core::ListEntry>> {
        self.inner.list_with(prefix, opts)
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<Vec<(Key, Result<()>)>> {
        self.inner.delete_many(keys).await
    }

    async fn copy(&self, from: &Key, to: &Key) -> Result<RemoteObject> {
        self.plain(self.inner.copy(from, to).await?)
    }

    async fn presign(
        &self,
        key: &Key,
        method: PresignMethod,
        expires_in: Duration,
    ) -> Result<PresignedUrl> {
        self.inner.presign(key, method, expires_in).await
    }

    async fn list_pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        self.inner.list_pending_uploads(prefix).await
    }

    async fn abort_pending_upload(&self, pending: &PendingUpload) -> Result<()> {
        self.inner.abort_pending_upload(pending).await
    }
}

/// Encrypt a local file to `out` (tests and tools): returns its secret.
#[doc(hidden)]
pub fn seal_file(src: &std::path::Path, out: &mut impl std::io::Write) -> Result<LinkSecret> {
    let shown = src.display().to_string();
    let key: [u8; 16] = random()?;
    let keys = Keys::derive(&key, random()?, RECORD_SIZE);
    let mut f = std::fs::File::open(src).map_err(|e| Error::from_io(&shown, e))?;
    let size = f.metadata().map_err(|e| Error::from_io(&shown, e))?.len();
    let count = records(size);
    let mut outer = Sha256::new();
    outer.update(keys.header);
    out.write_all(&keys.header)
        .map_err(|e| Error::from_io("output", e))?;
    let mut buf = vec![0u8; PLAIN_PER_RECORD as usize];
    for seq in 0..count {
        let len = (size - seq * PLAIN_PER_RECORD).min(PLAIN_PER_RECORD) as usize;
        f.read_exact(&mut buf[..len])
            .map_err(|e| Error::from_io(&shown, e))?;
        let rec = keys.seal(seq, &buf[..len], seq + 1 == count);
        outer.update(sha256(&rec));
        out.write_all(&rec)
            .map_err(|e| Error::from_io("output", e))?;
    }
    Ok(LinkSecret {
        key,
        digest: outer.finalize().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8188 section 3.1: "I am the walrus", one record, rs 4096.
    #[test]
    fn rfc8188_example_decrypts_and_encrypts_back() {
        let ikm: [u8; 16] = B64
            .decode("yqdlZ-tYemfogSmv7Ws5PQ")
            .unwrap()
            .try_into()
            .unwrap();
        let stored = B64
            .decode("I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg")
            .unwrap();
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&stored[..16]);
        let keys = Keys::derive(&ikm, salt, 4096);
        assert_eq!(&stored[..21], &keys.header[..]);
        let plain = open(&keys, 0, &stored[21..], true).unwrap();
        assert_eq!(plain, b"I am the walrus");
        assert_eq!(keys.seal(0, b"I am the walrus", true), &stored[21..]);
    }

    /// The plaintext of a record (decrypted in a copy).
    fn open(keys: &Keys, seq: u64, record: &[u8], last: bool) -> Result<Vec<u8>> {
        let mut buf = record.to_vec();
        let n = keys.open(seq, &mut buf, last, "t")?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn a_record_counts_as_written_only_when_every_byte_was_handed_out() {
        let seen = |spans: &[(usize, usize)]| Seen {
            hash: [0; 32],
            spans: spans.to_vec(),
        };
        assert!(seen(&[(0, 10)]).covers(10));
        assert!(seen(&[(4, 10), (0, 4)]).covers(10));
        // Overlaps from a retry do not fill a gap.
        assert!(!seen(&[(0, 4), (0, 4), (5, 10)]).covers(10));
        assert!(!seen(&[(3, 10)]).covers(10));
        assert!(seen(&[]).covers(0));
    }

    /// The stored bytes and digest `seal_stream` makes of `plain`.
    async fn sealed(keys: &Arc<Keys>, plain: Plain) -> Result<(Vec<u8>, [u8; 32])> {
        let digest = Arc::new(Mutex::new(None));
        let mut s = seal_stream(keys.clone(), plain, digest.clone());
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        let d = digest
            .lock()
            .unwrap()
            .expect("a digest once the stream ended");
        Ok((out, d))
    }

    /// A file's records are read into their places and sealed there, a
    /// stream's gathered and copied in: both must be the records one by one
    /// (`seal`, checked against RFC 8188 above), at every batch boundary.
    #[tokio::test]
    async fn files_and_streams_seal_to_the_same_records_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(Keys::derive(&[3; 16], [4; 16], RECORD_SIZE));
        let per = PLAIN_PER_RECORD as usize;
        let batch = BATCH as usize * per;
        for len in [
            0,
            1,
            per,
            per + 1,
            batch - 1,
            batch,
            batch + 1,
            2 * batch + per + 7,
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let mut want = keys.header.to_vec();
            let mut outer = Sha256::new();
            outer.update(keys.header);
            let n = records(len as u64) as usize;
            for i in 0..n {
                let p = &body[(i * per).min(len)..((i + 1) * per).min(len)];
                let rec = keys.seal(i as u64, p, i + 1 == n);
                outer.update(sha256(&rec));
                want.extend_from_slice(&rec);
            }
            let want_digest: [u8; 32] = outer.finalize().into();

            let path = dir.path().join(format!("p{len}"));
            std::fs::write(&path, &body).unwrap();
            let file = Plain::File {
                file: Arc::new(std::fs::File::open(&path).unwrap()),
                path: Arc::from(path.as_path()),
                size: len as u64,
            };
            let (got, d) = sealed(&keys, file).await.unwrap();
            assert!(got == want, "file of {len} bytes");
            assert_eq!(d, want_digest, "file of {len} bytes");

            // Chunks that straddle records and batches.
            let chunks: Vec<Result<Bytes>> = body
                .chunks(40_000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let stream = Plain::Stream(Box::pin(futures::stream::iter(chunks)));
            let (got, d) = sealed(&keys, stream).await.unwrap();
            assert!(got == want, "stream of {len} bytes");
            assert_eq!(d, want_digest, "stream of {len} bytes");
        }
    }

    #[tokio::test]
    async fn a_file_that_shrinks_during_the_upload_fails_it_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(Keys::derive(&[3; 16], [4; 16], RECORD_SIZE));
        let path = dir.path().join("shrinks");
        std::fs::write(&path, vec![1u8; 100_000]).unwrap();
        let file = Plain::File {
            file: Arc::new(std::fs::File::open(&path).unwrap()),
            path: Arc::from(path.as_path()),
            // Its size when the upload began.
            size: 3 * PLAIN_PER_RECORD,
        };
        let e = sealed(&keys, file).await.unwrap_err();
        assert!(e.to_string().contains("changed size"), "{e}");
        assert!(e.to_string().contains("shrinks"), "{e}");
    }

    #[test]
    fn sizes_invert_and_refuse_impossible_ones() {
        let per = PLAIN_PER_RECORD;
        for plain in [0, 1, per - 1, per, per + 1, 3 * per, 3 * per + 7, 1 << 30] {
            let sealed = sealed_size(plain);
            assert_eq!(plain_size(sealed), Some(plain), "plain {plain}");
        }
        assert_eq!(sealed_size(0), 38);
        assert_eq!(plain_size(37), None);
        assert_eq!(plain_size(0), None);
        // A cut right after a full record leaves a size no content has.
        assert_eq!(plain_size(HEADER + RECORD_SIZE + 5), None);
    }

    #[test]
    fn records_refuse_tampering_reordering_truncation_and_a_wrong_key() {
        let keys = Keys::derive(&[7; 16], [9; 16], RECORD_SIZE);
        let a = keys.seal(0, b"first", false);
        let b = keys.seal(1, b"second", true);
        assert_eq!(open(&keys, 0, &a, false).unwrap(), b"first");
        assert_eq!(open(&keys, 1, &b, true).unwrap(), b"second");
        let mut flipped = a.clone();
        flipped[2] ^= 1;
        let e = open(&keys, 0, &flipped, false).unwrap_err();
        assert!(e.to_string().contains("does not authenticate"), "{e}");
        // Swapped: each record is bound to its sequence number.
        assert!(open(&keys, 0, &b, false).is_err());
        assert!(open(&keys, 1, &a, true).is_err());
        // Cut after the first record: it is not a last record.
        let e = open(&keys, 0, &a, true).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let other = Keys::derive(&[8; 16], [9; 16], RECORD_SIZE);
        assert!(open(&other, 0, &a, false).is_err());
    }

    #[test]
    fn links_carry_the_secret_only_in_the_fragment_and_never_show_it() {
        let s = LinkSecret {
            key: [1; 16],
            digest: [2; 32],
        };
        let link = s.attach("https://h/o?sig=x#old");
        assert!(link.starts_with("https://h/o?sig=x#aes128gcm."), "{link}");
        let (url, back) = split_link(&link).unwrap();
        assert_eq!(url, "https://h/o?sig=x");
        assert_eq!(back, Some(s.clone()));
        assert_eq!(format!("{s:?}"), "LinkSecret(<redacted>)");
        let (plain, none) = split_link("https://h/o#section").unwrap();
        assert_eq!((plain.as_str(), none), ("https://h/o#section", None));
        // A download request keeps the secret out of Debug, and the sharing
        // layer takes it apart from its URL.
        use xferkit_core::{TransferLayer, TransferRequest};
        let mut req = TransferRequest::download(&link, "/tmp/x");
        let shown = format!("{req:?}");
        assert!(!shown.contains(&B64.encode(s.key)), "{shown}");
        crate::Sharing::new().prepare(&mut req).unwrap();
        assert_eq!(req.url, "https://h/o?sig=x");
        let shown = format!("{req:?}");
        assert!(!shown.contains(&B64.encode(s.key)), "{shown}");
        assert!(!shown.contains(&B64.encode(s.digest)), "{shown}");
        let mut bad_req = TransferRequest::download("s3://b/k#aes128gcm.AAAA.secretish", "x");
        assert!(!format!("{bad_req:?}").contains("secretish"));
        let bad = crate::Sharing::new().prepare(&mut bad_req).unwrap_err();
        assert_eq!(bad.kind(), xferkit_core::ErrorKind::InvalidUrl);
        assert!(!bad.to_string().contains("secretish"), "{bad}");
        let bad = split_link("s3://b/k#aes128gcm.AAAA.secretish").unwrap_err();
        assert!(!bad.to_string().contains("secretish"), "{bad}");
        assert!(!format!("{bad:?}").contains("secretish"), "{bad:?}");
    }
}
