//! The `Range` request header, single ranges only.

use xferkit_core::ByteRange;

/// The requested range, or `None` to serve the whole object. Per RFC 9110 a
/// malformed header, another unit or several ranges are ignored (the whole
/// object is served with 200).
pub(crate) fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return b.parse().ok().map(ByteRange::Suffix);
    }
    let start: u64 = a.parse().ok()?;
    if b.is_empty() {
        return Some(ByteRange::From(start));
    }
    let last: u64 = b.parse().ok()?;
    if last < start {
        return None;
    }
    Some(ByteRange::Bounded {
        start,
        end: last.checked_add(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_parse_and_the_rest_is_ignored() {
        assert_eq!(
            parse("bytes=0-9"),
            Some(ByteRange::Bounded { start: 0, end: 10 })
        );
        assert_eq!(parse("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(
            parse(" bytes= 1 - 2 "),
            Some(ByteRange::Bounded { start: 1, end: 3 })
        );
        for ignored in [
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=9-3",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-18446744073709551615",
            "",
        ] {
            assert_eq!(parse(ignored), None, "{ignored:?}");
        }
    }
}
