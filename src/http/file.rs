//! Files as response bodies: validators (`Last-Modified`, `ETag`),
//! conditional requests (304) and single byte ranges (206, 416), decided
//! from the request before the body is sent. The body itself is sent by
//! the loop with `sendfile(2)`, in slices (see `conn::outgoing`).

use std::fs::File;
use std::io;
use std::time::UNIX_EPOCH;

use super::date::{format_imf_fixdate, parse_imf_fixdate};
use crate::{Request, Response};

/// The part of an open file a response sends.
#[derive(Debug)]
pub(crate) struct FileBody {
    pub(crate) file: File,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Answers `req` with `file`: 200 with the whole file, 206 with the one
/// range asked for, 304 when the client's copy is current, 416 for a range
/// outside the file. The status and the file's fields are set on `res`;
/// other fields (`Content-Type`) are the caller's.
pub(crate) fn respond(req: &Request<'_>, res: &mut Response, file: File) -> io::Result<()> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let len = meta.len();
    let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    let secs = modified.map(|d| d.as_secs());
    // Changes with the size or the modification time (to the nanosecond),
    // as nginx's does.
    let etag = format!("\"{:x}-{:x}\"", modified.map_or(0, |d| d.as_nanos()), len);
    res.header("ETag", etag.clone()).header("Accept-Ranges", "bytes");
    if let Some(secs) = secs {
        let date = format_imf_fixdate(secs);
        res.header("Last-Modified", String::from_utf8_lossy(&date).into_owned());
    }
    if not_modified(req, &etag, secs) {
        res.status(304);
        return Ok(());
    }
    let range = req.header("Range").filter(|_| range_applies(req, &etag, secs));
    let (status, offset, count) = match range.map(|value| parse_range(value, len)) {
        None | Some(RangeAsked::Ignored) => (200, 0, len),
        Some(RangeAsked::Satisfiable { first, last }) => {
            res.header("Content-Range", format!("bytes {first}-{last}/{len}"));
            (206, first, last - first + 1)
        }
        Some(RangeAsked::Unsatisfiable) => {
            res.status(416)
                .header("Content-Range", format!("bytes */{len}"))
                .header("Content-Type", "text/plain")
                .body_static(b"416 Range Not Satisfiable\n");
            return Ok(());
        }
    };
    res.status(status);
    res.body = super::response::Body::File(Box::new(FileBody { file, offset, len: count }));
    Ok(())
}

/// RFC 9110 13.1.2 and 13.1.3: `If-None-Match` decides when present (weak
/// comparison, `*` matches), otherwise `If-Modified-Since`; only for GET
/// and HEAD.
fn not_modified(req: &Request<'_>, etag: &str, secs: Option<u64>) -> bool {
    if !matches!(req.method(), "GET" | "HEAD") {
        return false;
    }
    if let Some(tags) = req.header("If-None-Match") {
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
        return std::str::from_utf8(tags)
            .map(|tags| tags.split(',').any(|tag| tag.trim() == "*" || opaque(tag) == etag))
            .unwrap_or(false);
    }
    match (req.header("If-Modified-Since").and_then(parse_imf_fixdate), secs) {
        (Some(since), Some(secs)) => secs <= since,
        _ => false,
    }
}

/// `If-Range`: the range is sent only if the representation is the one the
/// client has (a strong match of the ETag, or exactly its date).
fn range_applies(req: &Request<'_>, etag: &str, secs: Option<u64>) -> bool {
    match req.header("If-Range") {
        None => true,
        Some(value) if value.starts_with(b"\"") => value == etag.as_bytes(),
        Some(value) => parse_imf_fixdate(value).is_some_and(|date| Some(date) == secs),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeAsked {
    /// Not a single byte range this server serves (several ranges, another
    /// unit, a syntax error): the whole file is sent, as RFC 9110 allows.
    Ignored,
    Satisfiable {
        first: u64,
        last: u64,
    },
    Unsatisfiable,
}

/// A `Range` value against a file of `len` bytes: `bytes=a-b`, `bytes=a-`
/// or `bytes=-n`.
fn parse_range(value: &[u8], len: u64) -> RangeAsked {
    let Some(spec) = std::str::from_utf8(value).ok().and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return RangeAsked::Ignored;
    };
    if spec.contains(',') {
        return RangeAsked::Ignored;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsked::Ignored };
    let number = |text: &str| -> Option<u64> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())
            .flatten()
    };
    match (first, last) {
        ("", suffix) => match number(suffix) {
            None => RangeAsked::Ignored,
            Some(0) => RangeAsked::Unsatisfiable,
            Some(_) if len == 0 => RangeAsked::Unsatisfiable,
            Some(n) => RangeAsked::Satisfiable { first: len.saturating_sub(n), last: len - 1 },
        },
        (first, last) => {
            let Some(first) = number(first) else { return RangeAsked::Ignored };
            let last = if last.is_empty() { Some(u64::MAX) } else { number(last) };
            match last {
                None => RangeAsked::Ignored,
                Some(last) if last < first => RangeAsked::Ignored,
                Some(_) if first >= len => RangeAsked::Unsatisfiable,
                Some(last) => RangeAsked::Satisfiable { first, last: last.min(len - 1) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_are_read_as_rfc_9110_has_them() {
        use RangeAsked::*;
        let cases: [(&str, RangeAsked); 10] = [
            ("bytes=0-9", Satisfiable { first: 0, last: 9 }),
            ("bytes=90-", Satisfiable { first: 90, last: 99 }),
            ("bytes=-10", Satisfiable { first: 90, last: 99 }),
            ("bytes=-500", Satisfiable { first: 0, last: 99 }),
            ("bytes=50-5000", Satisfiable { first: 50, last: 99 }),
            ("bytes=100-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=0-1,5-6", Ignored),
            ("items=0-1", Ignored),
            ("bytes=9-1", Ignored),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_range(value.as_bytes(), 100), expected, "{value}");
        }
        assert_eq!(parse_range(b"bytes=-5", 0), Unsatisfiable);
    }
}
