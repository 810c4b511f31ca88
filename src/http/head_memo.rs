//! A loop's memory of the last header block it parsed.
//!
//! A loop's clients send the same header fields request after request
//! (wrk, a load balancer's health check, one browser tab's keep-alive
//! connection): only the request line changes. When the bytes after the
//! request line are the block remembered from the last request, the
//! request line is read by [`request_line`] and the fields are rebuilt
//! from the remembered offsets, with what [`Fields::scan`] said of them.
//! The bytes are the same, so every check on them has the same outcome;
//! only the request line and the checks that join it to the fields (Host
//! for 1.1, framing for 1.0) run again. Anything else, or anything in
//! doubt, goes through the full parse (httparse and every check), whose
//! block then becomes the memory. Debug builds check every recall against
//! the full parse, so the whole test suite checks the memo.
//!
//! Measured with `make bench-instructions`: see the figures at
//! [`HeadMemo::parse`].

use std::mem::MaybeUninit;

use super::request::{parse_head, parse_scanned, validated_head, Fields, Head};
use super::{is_tchar, Limits, Reject};

/// Longer blocks are parsed every time. Browsers send 400-900 bytes of
/// fields without cookies; the compare and the copy on a miss grow with
/// the block.
const BLOCK_CAP: usize = 1024;

/// Blocks with more fields are parsed every time.
const FIELDS_CAP: usize = 16;

/// Where one field lies in the block.
#[derive(Clone, Copy, Default)]
struct Span {
    name_start: u16,
    name_end: u16,
    value_start: u16,
    value_end: u16,
}

/// The last header block parsed on a loop, with its fields' offsets and
/// what they said. Fixed size (about 1.2 KiB), one per loop, not per
/// connection: an idle connection costs what it did.
pub(crate) struct HeadMemo {
    /// The field lines after the request line and the empty line ending
    /// them, all ASCII; `len == 0` when nothing is remembered.
    block: [u8; BLOCK_CAP],
    len: usize,
    spans: [Span; FIELDS_CAP],
    count: usize,
    fields: Fields,
    /// The remembered block was recalled at least once.
    recalled: bool,
    /// Full parses to let pass before remembering again, and how many the
    /// next back-off lets pass (see [`HeadMemo::learn`]).
    skip: u32,
    backoff: u32,
}

/// The longest back-off, in full parses.
const MAX_BACKOFF: u32 = 64;

impl Default for HeadMemo {
    fn default() -> Self {
        HeadMemo {
            block: [0; BLOCK_CAP],
            len: 0,
            spans: [Span::default(); FIELDS_CAP],
            count: 0,
            fields: Fields::default(),
            recalled: false,
            skip: 0,
            backoff: 0,
        }
    }
}

impl HeadMemo {
    /// [`parse_head`](super::request::parse_head), with the same result for
    /// every input, remembering the block of each head it parses in full.
    ///
    /// `make bench-instructions`, pipelined `GET /` with a Host field:
    /// 1,348 instructions per request without the memo, of which the head
    /// was 775 (httparse 490); 924 with it, the head 350. With a field that
    /// changes on every request the memo never recalls, and costs 39 (a
    /// failed recall, the back-off's counter, an occasional copy).
    pub(crate) fn parse<'b, 'h>(
        &mut self,
        buf: &'b [u8],
        headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
        limits: &Limits,
    ) -> Result<Option<Head<'b, 'h>>, Reject> {
        let window = &buf[..buf.len().min(limits.max_head_bytes)];
        if let Some((text, line)) = self.recall(window, limits) {
            let block = &text[line.end..];
            let head = validated_head(
                &text[..line.method_end],
                &text[line.method_end + 1..line.target_end],
                line.minor,
                crate::sys::fill_uninit(headers, self.headers(block)),
                line.end + self.len,
                &self.fields,
            );
            #[cfg(debug_assertions)]
            check_against_full_parse(buf, limits, &head);
            self.recalled = true;
            return head.map(Some);
        }
        parse_scanned(buf, headers, limits, |head, fields| self.learn(buf, head, fields))
    }

    /// After a full parse: remember its block, unless remembering has not
    /// paid lately. A block replaced before it was ever recalled was a
    /// wasted copy (a client whose fields change on every request, or
    /// clients taking turns with different blocks), so the memo then
    /// forgets and stays empty for 1, 2, 4 ... up to 64 full parses; a
    /// recall ends the back-off. Without it, a field that changed on every
    /// request cost 343 instructions a request more (`make
    /// bench-instructions`, varied: 2,036 against 1,693).
    fn learn(&mut self, buf: &[u8], head: &Head<'_, '_>, fields: &Fields) {
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        if self.len != 0 && !self.recalled {
            self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
            self.skip = self.backoff;
            self.len = 0;
            return;
        }
        if self.recalled {
            self.backoff = 0;
        }
        self.remember(buf, head, fields);
    }

    /// The head at the start of `window` as text, with its request line,
    /// if the bytes after that line are the remembered block and the line
    /// is one the full parse would accept.
    fn recall<'b>(&self, window: &'b [u8], limits: &Limits) -> Option<(&'b str, RequestLine)> {
        if self.len == 0 || self.count > limits.max_headers {
            return None;
        }
        let line = request_line(window)?;
        let head = window.get(..line.end + self.len)?;
        if head[line.end..] != self.block[..self.len] {
            return None;
        }
        // One check over the whole head: the block was ASCII when it was
        // remembered and the line was scanned byte by byte, so this cannot
        // fail, and failing would only mean a full parse.
        Some((crate::sys::ascii_str(head)?, line))
    }

    /// The remembered fields, pointing into `block` (the input's copy).
    fn headers<'m, 'b: 'm>(
        &'m self,
        block: &'b str,
    ) -> impl Iterator<Item = httparse::Header<'b>> + 'm {
        self.spans[..self.count].iter().map(move |s| httparse::Header {
            name: &block[usize::from(s.name_start)..usize::from(s.name_end)],
            value: &block.as_bytes()[usize::from(s.value_start)..usize::from(s.value_end)],
        })
    }

    /// Keeps `head`'s block, when it is small and ASCII; forgets the last
    /// one either way.
    fn remember(&mut self, buf: &[u8], head: &Head<'_, '_>, fields: &Fields) {
        self.len = 0;
        self.recalled = false;
        let offset = |p: *const u8| p as usize - buf.as_ptr() as usize;
        // httparse refuses whitespace before a field name, so the block
        // starts at the first name, or is the final CRLF alone (the full
        // parse took only CRLF line ends).
        let block_start = head.headers.first().map_or(head.len - 2, |h| offset(h.name.as_ptr()));
        let block = &buf[block_start..head.len];
        if block.len() > BLOCK_CAP || head.headers.len() > FIELDS_CAP || !block.is_ascii() {
            return;
        }
        // Offsets below BLOCK_CAP, so they fit in u16.
        let at = |p: *const u8| (offset(p) - block_start) as u16;
        for (span, h) in self.spans.iter_mut().zip(head.headers) {
            let name_start = at(h.name.as_ptr());
            let value_start = at(h.value.as_ptr());
            *span = Span {
                name_start,
                name_end: name_start + h.name.len() as u16,
                value_start,
                value_end: value_start + h.value.len() as u16,
            };
        }
        self.block[..block.len()].copy_from_slice(block);
        self.count = head.headers.len();
        self.fields = *fields;
        self.len = block.len();
    }
}

const HTTP_1_1: u64 = u64::from_be_bytes(*b"HTTP/1.1");
const HTTP_1_0: u64 = u64::from_be_bytes(*b"HTTP/1.0");
const CRLF: [u8; 2] = *b"\r\n";

/// Where the parts of a request line lie, from the start of the head.
struct RequestLine {
    method_end: usize,
    target_end: usize,
    minor: u8,
    /// Past the CRLF.
    end: usize,
}

/// The request line at the start of `buf`, in its common shape only: a
/// token, SP, an ASCII target, SP, `HTTP/1.0` or `HTTP/1.1`, CRLF. What
/// this accepts httparse accepts too, with the same method, target and
/// version; anything else (empty lines first, obs-text in the target, a
/// bare LF, other versions) is `None`, for the full parse to judge.
///
/// httparse spends 282 instructions on `GET / HTTP/1.1` alone, mostly in
/// setting up its vectorised target scan.
fn request_line(buf: &[u8]) -> Option<RequestLine> {
    // GET first, as httparse does: 4 loads and a compare, not a scan.
    let method_end =
        if buf.starts_with(b"GET ") { 3 } else { buf.iter().position(|&b| !is_tchar(b))? };
    if method_end == 0 || buf[method_end] != b' ' {
        return None;
    }
    let target_start = method_end + 1;
    let target_end =
        target_start + buf[target_start..].iter().position(|&b| !matches!(b, 0x21..=0x7e))?;
    if target_end == target_start || buf[target_end] != b' ' {
        return None;
    }
    // Compared as one word and a half-word: matching the 10 bytes as a
    // slice pattern cost 22 instructions.
    let version: [u8; 10] = buf.get(target_end + 1..target_end + 11)?.try_into().ok()?;
    let [v0, v1, v2, v3, v4, v5, v6, v7, cr, lf] = version;
    let word = u64::from_be_bytes([v0, v1, v2, v3, v4, v5, v6, v7]);
    let minor = match (word, [cr, lf]) {
        (HTTP_1_1, CRLF) => 1,
        (HTTP_1_0, CRLF) => 0,
        _ => return None,
    };
    Some(RequestLine { method_end, target_end, minor, end: target_end + 11 })
}

/// In debug builds every hit is checked against the full parse, so the
/// whole test suite checks the memo.
#[cfg(debug_assertions)]
fn check_against_full_parse(buf: &[u8], limits: &Limits, hit: &Result<Head<'_, '_>, Reject>) {
    let mut headers = [MaybeUninit::uninit(); super::MAX_HEADERS_CAP];
    let full = parse_head(buf, &mut headers, limits);
    let same = match (hit, &full) {
        (Ok(hit), Ok(Some(full))) => format!("{hit:?}") == format!("{full:?}"),
        (Err(hit), Err(full)) => hit == full,
        _ => false,
    };
    assert!(same, "memo hit {hit:?} differs from full parse {full:?}");
}

/// `memo`'s answer for `buf` and the full parse's, as text (a head borrows
/// its header array, so it cannot outlive the call). For the tests and the
/// fuzz target.
pub(crate) fn both(memo: &mut HeadMemo, buf: &[u8], limits: &Limits) -> (String, String) {
    let mut headers = [MaybeUninit::uninit(); super::MAX_HEADERS_CAP];
    let remembered = format!("{:?}", memo.parse(buf, &mut headers, limits));
    let mut headers = [MaybeUninit::uninit(); super::MAX_HEADERS_CAP];
    let full = format!("{:?}", parse_head(buf, &mut headers, limits));
    (remembered, full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_HEADERS_CAP;

    fn hits(memo: &HeadMemo, buf: &[u8], limits: &Limits) -> bool {
        memo.recall(&buf[..buf.len().min(limits.max_head_bytes)], limits).is_some()
    }

    const BLOCK: &[u8] =
        b"Host: example.com\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n";

    fn with_line(line: &[u8], rest: &[u8]) -> Vec<u8> {
        [line, rest].concat()
    }

    #[test]
    fn a_repeated_block_is_recalled_under_any_request_line() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        let first = with_line(b"POST /a HTTP/1.1\r\n", BLOCK);
        assert!(!hits(&memo, &first, &limits), "nothing remembered yet");
        let (remembered, full) = both(&mut memo, &first, &limits);
        assert_eq!(remembered, full);
        for line in [
            &b"PUT /b?q=1 HTTP/1.1\r\n"[..],
            b"GET http://example.com/c HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\r\n",
        ] {
            let next = with_line(line, BLOCK);
            assert!(hits(&memo, &next, &limits), "{}", String::from_utf8_lossy(line));
            let (remembered, full) = both(&mut memo, &next, &limits);
            assert_eq!(remembered, full);
            assert!(remembered.starts_with("Ok(Some("), "{remembered}");
        }
    }

    #[test]
    fn a_recalled_block_still_gets_the_request_line_checks() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        // No Host: fine for 1.0, a 400 for 1.1, with the same fields.
        both(&mut memo, &with_line(b"GET / HTTP/1.0\r\n", b"X-A: 1\r\n\r\n"), &limits);
        let http11 = with_line(b"GET / HTTP/1.1\r\n", b"X-A: 1\r\n\r\n");
        assert!(hits(&memo, &http11, &limits));
        let (remembered, full) = both(&mut memo, &http11, &limits);
        assert_eq!(remembered, full);
        assert!(remembered.contains("400"), "{remembered}");

        both(&mut memo, &with_line(b"GET / HTTP/1.1\r\n", BLOCK), &limits);
        for refused in [
            &b"GET /caf\xc3\xa9 HTTP/1.1\r\n"[..], // a non-ASCII target
            b"GET * HTTP/1.1\r\n",                 // asterisk-form for GET
            b"GET / HTTP/1.1\n",                   // a bare LF ends the line
            b"GET / HTTP/2.0\r\n",                 // a version vigil does not speak
            b"\r\nGET / HTTP/1.1\r\n",             // an empty line first
        ] {
            let buf = with_line(refused, BLOCK);
            let (remembered, full) = both(&mut memo, &buf, &limits);
            assert_eq!(remembered, full, "{}", String::from_utf8_lossy(refused));
        }
        let (remembered, _) = both(&mut memo, &with_line(b"GET / HTTP/1.1\n", BLOCK), &limits);
        assert!(remembered.contains("400"), "{remembered}");
    }

    #[test]
    fn a_block_that_differs_or_is_cut_short_is_parsed_in_full() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        both(&mut memo, &with_line(b"GET / HTTP/1.1\r\n", BLOCK), &limits);
        let changed = with_line(b"GET / HTTP/1.1\r\n", &BLOCK.to_ascii_lowercase());
        assert!(!hits(&memo, &changed, &limits));
        let partial = with_line(b"GET / HTTP/1.1\r\n", &BLOCK[..BLOCK.len() - 1]);
        assert!(!hits(&memo, &partial, &limits));
        let (remembered, full) = both(&mut memo, &partial, &limits);
        assert_eq!((remembered.as_str(), full.as_str()), ("Ok(None)", "Ok(None)"));
        let (remembered, full) = both(&mut memo, &changed, &limits);
        assert_eq!(remembered, full);
        assert!(remembered.starts_with("Ok(Some("), "{remembered}");
    }

    /// Parses `buf` through the memo until it is recalled; how many parses
    /// that took (`None`: not within `limit`).
    fn parses_until_recalled(memo: &mut HeadMemo, buf: &[u8], limit: usize) -> Option<usize> {
        let limits = Limits::default();
        (1..=limit).find(|_| {
            let recalled = hits(memo, buf, &limits);
            both(memo, buf, &limits);
            recalled
        })
    }

    #[test]
    fn fields_that_change_on_every_request_stop_being_copied_until_a_block_repeats() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        let varied = |seq: usize| {
            with_line(b"GET / HTTP/1.1\r\n", format!("Host: a\r\nX-Seq: {seq}\r\n\r\n").as_bytes())
        };
        let mut copies = 0;
        for seq in 0..1000 {
            let buf = varied(seq);
            assert!(!hits(&memo, &buf, &limits));
            let before = (memo.len, memo.block);
            let (remembered, full) = both(&mut memo, &buf, &limits);
            assert_eq!(remembered, full);
            copies += usize::from(memo.len != 0 && (memo.len, memo.block) != before);
        }
        // 1, 2, 4 ... 64 parses apart, then every 66th: about 20 in 1000.
        assert!((10..=30).contains(&copies), "{copies} copies in 1000 parses");
        assert!(memo.backoff == MAX_BACKOFF);

        // A block that repeats is remembered once the back-off runs out,
        // and recalled from then on; a recall ends the back-off.
        let repeated = with_line(b"GET / HTTP/1.1\r\n", BLOCK);
        let took = parses_until_recalled(&mut memo, &repeated, 2 * MAX_BACKOFF as usize + 2);
        assert!(took.is_some(), "not recalled after the back-off");
        assert_eq!(parses_until_recalled(&mut memo, &repeated, 1), Some(1));
        both(&mut memo, &varied(0), &limits);
        assert_eq!(memo.backoff, 0, "the next block is remembered at once");
        assert!(hits(&memo, &varied(0), &limits));
    }

    #[test]
    fn blocks_over_the_memo_or_the_limits_are_not_recalled() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        let cookie = format!("Host: a\r\nCookie: {}\r\n\r\n", "c".repeat(BLOCK_CAP));
        let big = with_line(b"GET / HTTP/1.1\r\n", cookie.as_bytes());
        both(&mut memo, &big, &limits);
        assert!(!hits(&memo, &big, &limits), "over BLOCK_CAP");

        let many: String = (0..=FIELDS_CAP).map(|i| format!("X-{i}: {i}\r\n")).collect();
        let many = with_line(b"GET / HTTP/1.1\r\n", format!("Host: a\r\n{many}\r\n").as_bytes());
        both(&mut memo, &many, &limits);
        assert!(!hits(&memo, &many, &limits), "over FIELDS_CAP");

        let obs_text = with_line(b"GET / HTTP/1.1\r\n", b"Host: a\r\nX-A: caf\xc3\xa9\r\n\r\n");
        let (remembered, full) = both(&mut memo, &obs_text, &limits);
        assert_eq!(remembered, full);
        assert!(!hits(&memo, &obs_text, &limits), "not ASCII");

        // Remembered under roomy limits, then a tighter head limit: the
        // head would end past it, so the full parse answers (431).
        let small = with_line(b"GET / HTTP/1.1\r\n", BLOCK);
        both(&mut memo, &small, &limits);
        let tight = Limits { max_head_bytes: small.len() - 1, ..Limits::default() };
        assert!(!hits(&memo, &small, &tight));
        let (remembered, full) = both(&mut memo, &small, &tight);
        assert_eq!(remembered, full);
        let fewer = Limits { max_headers: 2, ..Limits::default() };
        both(&mut memo, &small, &limits);
        assert!(!hits(&memo, &small, &fewer), "3 fields over max_headers 2");
    }

    #[test]
    fn recalled_fields_point_into_the_input() {
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        both(&mut memo, &with_line(b"GET / HTTP/1.1\r\n", BLOCK), &limits);
        let buf = with_line(b"GET /longer/path HTTP/1.1\r\n", BLOCK);
        let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
        let head = memo.parse(&buf, &mut headers, &limits).unwrap().unwrap();
        let fields: Vec<_> = head.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            fields,
            [
                ("Host", &b"example.com"[..]),
                ("Content-Length", b"3"),
                ("Connection", b"keep-alive")
            ]
        );
        let input = buf.as_ptr_range();
        assert!(head.headers.iter().all(|h| input.contains(&h.name.as_ptr())));
        assert_eq!(head.framing, crate::http::request::Framing::Length(3));
        assert_eq!(head.len, buf.len());
    }
}
