//! The request-head parser: `vigil::__bench::parse_head` with default
//! limits, on arbitrary bytes. Besides not panicking (which includes the
//! parser's own debug assertions), an accepted head must satisfy what the
//! parser promises its caller, and the head memo must answer as the full
//! parse does, for the same bytes again and under another request line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::__bench::{head_memo_agrees, parse_head};

/// `Limits::default().max_head_bytes`.
const MAX_HEAD_BYTES: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    memo_agrees(data);
    let n = parse_head(data);
    assert!(n <= data.len(), "head of {n} bytes in {} bytes of input", data.len());
    if n == 0 {
        return;
    }
    assert!(n <= MAX_HEAD_BYTES, "head of {n} bytes over the limit");
    let head = &data[..n];

    // It ends with the blank line, and no line ends in a bare LF.
    assert!(head.ends_with(b"\r\n\r\n"), "head does not end in CRLF CRLF");
    for (i, &b) in head.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && head[i - 1] == b'\r'), "bare LF at {i}");
    }
    // Empty lines may come before the request line (RFC 9112 2.2), as
    // CRLF pairs; after them, the first blank line ends the head.
    let lead = head.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(n);
    assert!(lead % 2 == 0 && head[..lead].chunks(2).all(|l| l == b"\r\n"));
    let first_blank = head[lead..].windows(4).position(|w| w == b"\r\n\r\n");
    assert_eq!(first_blank.map(|i| lead + i + 4), Some(n), "head runs past its blank line");

    // What follows the head (a pipelined request, a body) plays no part,
    // and no strict prefix is a complete head.
    assert_eq!(parse_head(head), n, "head alone parses differently");
    assert_eq!(parse_head(&head[..n - 1]), 0, "head complete one byte early");
    assert_eq!(parse_head(&head[..n / 2]), 0, "head complete at half its length");
});

/// The memo, primed with `data`, on `data` again (its block recalled when
/// it was remembered), on `data` under another request line, and on the
/// halves of `data` one after the other.
fn memo_agrees(data: &[u8]) {
    assert!(head_memo_agrees(data, data), "memo differs on the same bytes again");
    if let Some(line_end) = data.iter().position(|&b| b == b'\n') {
        for line in [&b"GET /other?q HTTP/1.1\r\n"[..], b"OPTIONS * HTTP/1.0\r\n"] {
            let moved = [line, &data[line_end + 1..]].concat();
            assert!(head_memo_agrees(data, &moved), "memo differs under another request line");
        }
    }
    let (first, second) = data.split_at(data.len() / 2);
    assert!(head_memo_agrees(first, second), "memo differs after another head");
}
