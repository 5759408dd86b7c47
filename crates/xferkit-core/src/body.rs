//! Bodies of ranged GETs, for the stores that speak HTTP: what a
//! `Content-Range` says, and the bytes of a range cut out of a whole-object
//! answer (a server may ignore `Range` and answer 200 with everything).

use std::ops::Range;

use futures::{StreamExt, TryStreamExt};

use crate::ByteStream;

/// `bytes START-END/TOTAL` → `(START, TOTAL)`; `None` for anything else
/// (`bytes */TOTAL` included).
pub fn content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// Bytes `span` of `stream`, ending as soon as the span is read (the rest of
/// the body is not waited for). Empty chunks are dropped; an error ends it.
pub fn slice(stream: ByteStream, span: Range<u64>) -> ByteStream {
    let (start, end) = (span.start, span.end.max(span.start));
    let mut pos = 0u64;
    let cut = stream.map(move |chunk| {
        chunk.map(|b| {
            let from = pos;
            let to = pos + b.len() as u64;
            pos = to;
            let lo = start.clamp(from, to) - from;
            let hi = end.clamp(from, to) - from;
            (b.slice(lo as usize..hi as usize), to >= end)
        })
    });
    let until_end = cut.scan(false, |done, item| {
        if *done {
            return futures::future::ready(None);
        }
        *done = !matches!(item, Ok((_, false)));
        futures::future::ready(Some(item.map(|(b, _)| b)))
    });
    Box::pin(until_end.try_filter(|b| futures::future::ready(!b.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 100)));
        assert_eq!(content_range("bytes 5-5/6"), Some((5, 6)));
        assert_eq!(content_range("bytes */100"), None);
        assert_eq!(content_range("junk"), None);
    }

    #[tokio::test]
    async fn slice_cuts_the_span_across_chunks_and_stops_there() {
        for (start, end, want) in [
            (0, 10, "abcdefghij"),
            (2, 5, "cde"),
            (3, 7, "defg"),
            (9, 10, "j"),
            (4, 4, ""),
        ] {
            let chunks = ["abc", "defg", "hij"].map(|s| Ok(Bytes::from(s)));
            // A body that would fail after its last byte: never read past the span.
            let body = futures::stream::iter(chunks).chain(futures::stream::iter([Err(
                crate::Error::invalid_config("read past the end"),
            )]));
            let got: Vec<Bytes> = slice(Box::pin(body), start..end)
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("{start}..{end}: {e}"));
            assert_eq!(got.concat(), want.as_bytes(), "{start}..{end}");
            assert!(got.iter().all(|b| !b.is_empty()));
        }
    }
}
