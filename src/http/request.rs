//! Request heads: parse with httparse, then validate framing, Host and the
//! rest of RFC 9112 section 2-7 that httparse leaves to its caller.

use std::mem::MaybeUninit;

use super::{Limits, Reject};

/// HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `HTTP/1.0`: the connection closes after the response unless the
    /// client asked for keep-alive.
    Http10,
    /// `HTTP/1.1`: keep-alive unless either side says `Connection: close`.
    Http11,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed and validated request head, borrowing the input buffer.
#[derive(Debug)]
pub(crate) struct Head<'b, 'h> {
    pub(crate) method: &'b str,
    /// Path (origin-form, or the path of an absolute-form target; `*` for
    /// asterisk-form), without the query.
    pub(crate) path: &'b str,
    pub(crate) query: Option<&'b str>,
    pub(crate) version: Version,
    pub(crate) headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, including the blank line that ends it.
    pub(crate) len: usize,
    pub(crate) framing: Framing,
    /// Whether the connection may stay open after the response (version
    /// default, then `Connection: close` / `keep-alive`).
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` was sent (any other expectation is a 417).
    pub(crate) expect_continue: bool,
}

impl<'b> Head<'b, '_> {
    /// The request the service sees, with `body` (or a streamed body's
    /// `upload`). Inlined into the hot path's dispatch.
    #[inline(always)]
    pub(crate) fn request<'a>(
        &'a self,
        body: &'a [u8],
        socket: &'a crate::shared::SharedSocket,
        received: std::time::Instant,
        upload: Option<&'a super::upload::ReaderSlot>,
    ) -> Request<'a>
    where
        'b: 'a,
    {
        Request {
            method: self.method,
            path: self.path,
            query: self.query,
            version: self.version,
            headers: self.headers,
            body,
            params: None,
            route: None,
            socket: Some(socket),
            received: Some(received),
            upload,
        }
    }
}

/// Parses one request head from the start of `buf`.
///
/// `Ok(None)` means the head is incomplete ("need more bytes"); the caller
/// must call again with more input. Errors carry the status to answer with.
/// `headers.len()` must be at least `limits.max_headers`.
pub(crate) fn parse_head<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    limits: &Limits,
) -> Result<Option<Head<'b, 'h>>, Reject> {
    parse_scanned(buf, headers, limits, |_, _| {})
}

/// [`parse_head`], showing an accepted head and what its fields said to
/// `accepted` before returning it, for
/// [`HeadMemo`](super::head_memo::HeadMemo) to keep. (Returning the fields
/// for the memo to look at after the call cost each miss 21 instructions
/// more: a frame and a copy of the head.)
pub(super) fn parse_scanned<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    limits: &Limits,
    accepted: impl FnOnce(&Head<'b, 'h>, &Fields),
) -> Result<Option<Head<'b, 'h>>, Reject> {
    debug_assert!(headers.len() >= limits.max_headers, "header array below limits.max_headers");
    let max_headers = limits.max_headers.min(headers.len());
    // Parsing only the first max_head_bytes bounds the work per call, and a
    // head still partial within them is over the limit by definition.
    let window = &buf[..buf.len().min(limits.max_head_bytes)];

    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(window, &mut headers[..max_headers]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_HEADERS),
        Err(httparse::Error::Version) => return version_error(buf, window, limits),
        Err(_) => return Err(Reject::new(400, "malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        // httparse fills all three before it reports Complete.
        return Err(Reject::new(400, "malformed request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;

    // httparse accepts a bare LF as a line ending; RFC 9112 2.2 lets a
    // recipient do so, but two parsers disagreeing on line ends is how
    // requests get smuggled, so we refuse.
    let crlf_only = lines_end_in_crlf(buf, method, headers, len);
    debug_assert_eq!(crlf_only, !has_bare_lf(&buf[..len]), "{:?}", &buf[..len]);
    if !crlf_only {
        return Err(Reject::new(400, "bare LF in request head"));
    }

    let fields = Fields::scan(headers)?;
    let head = validated_head(method, target, minor, headers, len, &fields)?;
    accepted(&head, &fields);
    Ok(Some(head))
}

/// The checks that join the request line to what the fields said: Host,
/// framing and connection persistence. `headers` and `len` are passed
/// through to the head.
///
/// Inlined, the head is built in its caller's result: called, it was
/// built and then copied, 18 instructions of a pipelined request's head.
#[inline(always)]
pub(super) fn validated_head<'b, 'h>(
    method: &'b str,
    target: &'b str,
    minor: u8,
    headers: &'h [httparse::Header<'b>],
    len: usize,
    fields: &Fields,
) -> Result<Head<'b, 'h>, Reject> {
    let version = if minor == 0 { Version::Http10 } else { Version::Http11 };
    let (path, query) = split_target(method, target)?;

    if fields.hosts > 1 {
        return Err(Reject::new(400, "more than one Host"));
    }
    if fields.hosts == 0 && version == Version::Http11 {
        return Err(Reject::new(400, "missing Host"));
    }

    let framing = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), _) if version == Version::Http10 => {
            // RFC 9112 6.1: 1.0 has no chunked coding; the framing is suspect.
            return Err(Reject::new(400, "Transfer-Encoding in HTTP/1.0"));
        }
        (Some(_), Some(_)) => {
            return Err(Reject::new(400, "both Content-Length and Transfer-Encoding"));
        }
        (Some(te), None) => te.framing()?,
        (None, None | Some(0)) => Framing::Empty,
        // Whether it is too large is the route's to say (`BodyPolicy`).
        (None, Some(n)) => Framing::Length(n),
    };

    let keep_alive = !fields.close && (version == Version::Http11 || fields.keep_alive);
    // RFC 9110 10.1.1: a 100-continue from an HTTP/1.0 client is ignored.
    let expect_continue = fields.expect_continue && version == Version::Http11;

    Ok(Head { method, path, query, version, headers, len, framing, keep_alive, expect_continue })
}

const TOO_MANY_HEADERS: Reject = Reject::new(431, "too many header fields");

/// The head is partial within `buf`: wait for more bytes, unless it has
/// already outgrown the limit.
fn incomplete<T>(buf: &[u8], limits: &Limits) -> Result<Option<T>, Reject> {
    if buf.len() <= limits.max_head_bytes {
        return Ok(None);
    }
    let window = &buf[..limits.max_head_bytes];
    let line = &window[leading_empty_lines(window)..];
    if line.contains(&b'\n') {
        Err(Reject::new(431, "request head too large"))
    } else {
        Err(Reject::new(414, "request line too long"))
    }
}

/// httparse skips empty lines before the request line (RFC 9112 2.2).
fn leading_empty_lines(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len())
}

/// httparse reports `Version` as soon as a byte differs from `HTTP/1.0` or
/// `HTTP/1.1`. Tell a well-formed other version (505) from garbage (400),
/// and wait when the version is cut short but could still be well-formed.
fn version_error<T>(buf: &[u8], window: &[u8], limits: &Limits) -> Result<Option<T>, Reject> {
    let rest = &window[leading_empty_lines(window)..];
    let line_end = rest.iter().position(|&b| b == b'\n');
    let line = &rest[..line_end.unwrap_or(rest.len())];
    // Method and target hold no SP (httparse checked), so the third piece
    // is the version, up to the CR.
    let version = line.splitn(3, |&b| b == b' ').nth(2).unwrap_or(b"");
    const PATTERN: &[u8] = b"HTTP/0.0\r";
    let matches = version.len() <= PATTERN.len()
        && version.iter().zip(PATTERN).all(|(&b, &p)| match p {
            b'0' => b.is_ascii_digit(),
            _ => b == p,
        });
    match line_end {
        Some(_) if matches && version.len() == PATTERN.len() => {
            Err(Reject::new(505, "HTTP version not supported"))
        }
        None if matches => incomplete(buf, limits),
        _ => Err(Reject::new(400, "malformed HTTP version")),
    }
}

/// Whether every line of the head ends in CRLF, looking only where lines
/// end: the cost is per field rather than per byte of the head.
///
/// It relies on what httparse has checked: a CR is always followed by LF,
/// so every LF ends a line, and every line after the request line starts
/// with a field name (no obs-fold, no space before the first field). The
/// LFs are then exactly: those of the empty lines httparse skips before the
/// request line, the one before each field name, the one ending the last
/// field (or the request line) and the last byte of the head.
fn lines_end_in_crlf(
    buf: &[u8],
    method: &str,
    headers: &[httparse::Header<'_>],
    len: usize,
) -> bool {
    let offset = |s: &str| s.as_ptr() as usize - buf.as_ptr() as usize;
    buf[..offset(method)].chunks(2).all(|empty_line| empty_line == b"\r\n")
        && headers.iter().all(|h| buf[offset(h.name) - 2] == b'\r')
        && buf[len - 4..len] == *b"\r\n\r\n"
}

/// The plain definition, which [`lines_end_in_crlf`] is checked against in
/// debug builds.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Splits the request target into path and query (RFC 9112 3.2). Inlined
/// into the memo's hit path and the full parse: called, it cost 19
/// instructions more a recalled head and 27 a fully parsed one.
#[inline(always)]
fn split_target<'b>(method: &str, target: &'b str) -> Result<(&'b str, Option<&'b str>), Reject> {
    // httparse lets UTF-8 through; a target is ASCII. A fragment should
    // never be sent (RFC 9110 7.1) but some clients do; it means nothing to
    // the server and is dropped, as most servers do.
    // The same pass finds the query of an origin-form target (the first
    // '?' before any fragment): a second loop for it cost 15 of the 53
    // instructions this took for "/".
    let mut fragment = None;
    let mut query = None;
    for (i, b) in target.bytes().enumerate() {
        match b {
            0x80.. => return Err(Reject::new(400, "invalid request target")),
            b'#' if fragment.is_none() => fragment = Some(i),
            b'?' if query.is_none() && fragment.is_none() => query = Some(i),
            _ => {}
        }
    }
    let target = fragment.map_or(target, |i| &target[..i]);
    if method == "CONNECT" {
        // authority-form, and only for CONNECT (RFC 9112 3.2.3).
        return match authority(target.as_bytes()) {
            Some(Authority { host_empty: false, port: Some(port) }) if !port.is_empty() => {
                Ok((target, None))
            }
            _ => Err(Reject::new(400, "CONNECT needs host:port")),
        };
    }
    if target.starts_with('/') {
        return Ok(match query {
            Some(i) => (&target[..i], Some(&target[i + 1..])),
            None => (target, None),
        });
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target, None))
        } else {
            Err(Reject::new(400, "asterisk-form is for OPTIONS only"))
        };
    }
    // absolute-form (RFC 9112 3.2.2); the scheme is case-insensitive.
    let after_scheme = [7, 8].into_iter().find_map(|n| {
        let scheme = target.get(..n)?;
        let known =
            scheme.eq_ignore_ascii_case("http://") || scheme.eq_ignore_ascii_case("https://");
        known.then(|| &target[n..])
    });
    let Some(rest) = after_scheme else {
        return Err(Reject::new(400, "invalid request target"));
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match authority(&rest.as_bytes()[..auth_end]) {
        Some(Authority { host_empty: false, .. }) => {}
        _ => return Err(Reject::new(400, "invalid authority in request target")),
    }
    let rest = &rest[auth_end..];
    if rest.starts_with('/') {
        Ok(split_query(rest))
    } else {
        // An empty path means "/" (RFC 9110 4.2.3); rest is "" or "?...".
        Ok(("/", rest.strip_prefix('?')))
    }
}

fn split_query(target: &str) -> (&str, Option<&str>) {
    // A byte loop: on short targets str::split_once's searcher costs more
    // than the search.
    match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

struct Authority<'a> {
    host_empty: bool,
    port: Option<&'a [u8]>,
}

/// Checks `uri-host [":" port]` (RFC 3986 3.2.2); userinfo is refused
/// (RFC 9110 4.2.4) and IPvFuture literals are not accepted.
fn authority(s: &[u8]) -> Option<Authority<'_>> {
    if let Some(literal) = s.strip_prefix(b"[") {
        let close = literal.iter().position(|&b| b == b']')?;
        let ip = &literal[..close];
        if ip.is_empty() || !ip.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return None;
        }
        let port = match &literal[close + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return None,
        };
        return valid_port(port).then_some(Authority { host_empty: false, port });
    }
    // Every request's Host comes through here: one table lookup per byte.
    let (host, port) = match s.iter().position(|&b| !is_reg_name_char(b)) {
        None => (s, None),
        Some(i) if s[i] == b':' => (&s[..i], Some(&s[i + 1..])),
        Some(_) => return None,
    };
    valid_port(port).then_some(Authority { host_empty: host.is_empty(), port })
}

/// The last Host value found valid on this thread.
struct HostMemo {
    len: usize,
    bytes: [u8; 64],
}

thread_local! {
    // Per thread, so per loop: a loop's clients send the same few Host
    // values over and over, and comparing with the last good one costs
    // less than checking it again (about 200 instructions for
    // `127.0.0.1:8080`, a tenth of a request's user time).
    static VALID_HOST: std::cell::RefCell<HostMemo> =
        const { std::cell::RefCell::new(HostMemo { len: 0, bytes: [0; 64] }) };
}

/// `authority(trim_ows(value)).is_some()`, remembered for the last valid
/// value.
fn host_is_valid(value: &[u8]) -> bool {
    VALID_HOST.with_borrow_mut(|memo| {
        // The value as sent, whitespace and all: the same bytes trim to the
        // same host (the trim, about 20 instructions, is for misses only).
        if value.len() == memo.len && value == &memo.bytes[..memo.len] {
            return true;
        }
        let valid = authority(trim_ows(value)).is_some();
        if valid && value.len() <= memo.bytes.len() {
            memo.bytes[..value.len()].copy_from_slice(value);
            memo.len = value.len();
        }
        valid
    })
}

/// `*DIGIT` (RFC 3986 3.2.3), at most five of them.
fn valid_port(port: Option<&[u8]>) -> bool {
    port.map_or(true, |port| port.len() <= 5 && port.iter().all(u8::is_ascii_digit))
}

/// unreserved / pct-encoded / sub-delims (RFC 3986 3.2.2). Whether `%` is
/// followed by two hex digits is left alone: nothing here decodes it.
fn is_reg_name_char(b: u8) -> bool {
    REG_NAME[usize::from(b)]
}

/// A table, as every request's Host goes through it.
static REG_NAME: [bool; 256] = super::alphanumeric_or(b"-._~%!$&'()*+,;=");

/// Transfer codings seen across all `Transfer-Encoding` fields, in order
/// (several fields are one list, RFC 9110 5.3).
#[derive(Clone, Copy, Default)]
struct TeState {
    /// Number of `chunked` list elements.
    chunked: u32,
    /// The last element so far is `chunked`.
    chunked_last: bool,
    /// A well-formed coding other than `chunked` (vigil decodes none).
    unknown: bool,
    /// An empty element, or one that is not `token *(; parameter)`.
    malformed: bool,
}

impl TeState {
    fn add(&mut self, item: &[u8]) {
        let chunked = item.eq_ignore_ascii_case(b"chunked");
        self.chunked_last = chunked;
        if chunked {
            self.chunked += 1;
        } else if is_coding(item) {
            self.unknown = true;
        } else {
            self.malformed = true;
        }
    }

    /// The body's framing, or why the codings are refused.
    ///
    /// The body can be delimited only when `chunked` is the final coding,
    /// once (RFC 9112 6.3): anything else is a 400. With that framing
    /// sound, a coding before `chunked` is one vigil does not decode: 501
    /// (RFC 9112 6.1). Either way the connection closes and nothing of the
    /// body is read.
    fn framing(&self) -> Result<Framing, Reject> {
        if self.chunked > 1 {
            return Err(Reject::new(400, "chunked applied more than once"));
        }
        if !self.chunked_last {
            return Err(Reject::new(400, "chunked is not the final transfer coding"));
        }
        if self.malformed {
            return Err(Reject::new(400, "malformed Transfer-Encoding"));
        }
        if self.unknown {
            return Err(Reject::new(501, "transfer coding not implemented"));
        }
        Ok(Framing::Chunked)
    }
}

/// `token *( OWS ";" OWS transfer-parameter )` (RFC 9112 7), loosely: the
/// coding name must be a token; the parameters are never looked at, as
/// nothing but `chunked` (which takes none) is decoded.
fn is_coding(item: &[u8]) -> bool {
    let name = trim_ows(item.split(|&b| b == b';').next().unwrap_or(b""));
    !name.is_empty() && name.iter().all(|&b| super::is_tchar(b))
}

/// What the header fields say about framing and the connection.
#[derive(Clone, Copy, Default)]
pub(super) struct Fields {
    hosts: u32,
    content_types: u32,
    content_length: Option<u64>,
    transfer_encoding: Option<TeState>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    // Inlined into both instances of `parse_scanned` (the memo's and
    // `parse_head`'s): called, it cost a full parse 53 instructions more,
    // 26 of them copying the result out.
    #[inline(always)]
    pub(super) fn scan(headers: &[httparse::Header<'_>]) -> Result<Fields, Reject> {
        let mut f = Fields::default();
        for h in headers {
            // Matching on length first skips the string compare for most fields.
            let name = h.name;
            match name.len() {
                4 if name_is(name, b"host") => {
                    f.hosts += 1;
                    if !host_is_valid(h.value) {
                        return Err(Reject::new(400, "invalid Host"));
                    }
                }
                6 if name_is(name, b"expect") => {
                    for item in list(h.value).filter(|item| !item.is_empty()) {
                        if !item.eq_ignore_ascii_case(b"100-continue") {
                            return Err(Reject::new(417, "unsupported expectation"));
                        }
                        f.expect_continue = true;
                    }
                }
                12 if name_is(name, b"content-type") => {
                    // A singleton field: two say the body is two things.
                    f.content_types += 1;
                    if f.content_types > 1 {
                        return Err(Reject::new(400, "more than one Content-Type"));
                    }
                }
                10 if name_is(name, b"connection") => {
                    for item in list(h.value) {
                        f.close |= item.eq_ignore_ascii_case(b"close");
                        f.keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
                14 if name_is(name, b"content-length") => {
                    // Exactly one field of plain digits. RFC 9110 8.6 lets a
                    // recipient accept repeats of one value, but an
                    // intermediary that reads them differently is how
                    // requests are smuggled, so they are refused.
                    let n = content_length(h.value)
                        .ok_or(Reject::new(400, "invalid Content-Length"))?;
                    if f.content_length.replace(n).is_some() {
                        return Err(Reject::new(400, "more than one Content-Length"));
                    }
                }
                14 | 17
                    if name_is_underscored(name, b"content-length")
                        || name_is_underscored(name, b"transfer-encoding") =>
                {
                    // Some proxies map `_` to `-`: to them this is framing.
                    return Err(Reject::new(400, "ambiguous framing field name"));
                }
                17 if name_is(name, b"transfer-encoding") => {
                    let te = f.transfer_encoding.get_or_insert_with(TeState::default);
                    for item in list(h.value) {
                        te.add(item);
                    }
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

/// Whether field name `name` is `lower` (lowercase letters and `-`) in any
/// case. Setting bit 0x20 lowercases a letter and leaves `-` alone; for the
/// other token bytes it never yields a lowercase letter or `-`, so this is
/// exact on names httparse accepted, and cheaper than eq_ignore_ascii_case,
/// which maps both sides.
fn name_is<const N: usize>(name: &str, lower: &[u8; N]) -> bool {
    // A fixed length: the compare is unrolled, with no loop and no early
    // exit (15 instructions fewer per request with a Host field).
    let Ok(name) = <&[u8; N]>::try_from(name.as_bytes()) else { return false };
    name.iter().zip(lower).fold(true, |equal, (a, b)| equal & (a | 0x20 == *b))
}

/// `1*DIGIT` (OWS trimmed); `None` for anything else, a list included,
/// or a value over `u64`.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Whether `name` is `lower` with at least one `-` written as `_`.
fn name_is_underscored(name: &str, lower: &[u8]) -> bool {
    name.len() == lower.len()
        && name.contains('_')
        && name.bytes().zip(lower).all(|(a, &b)| a | 0x20 == b || (a == b'_' && b == b'-'))
}

/// The elements of a comma-separated list, OWS trimmed (empty ones kept).
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A request as the service sees it. Borrows the connection's buffers, so
/// copy out whatever must outlive [`Service::call`](crate::Service::call).
#[derive(Debug)]
pub struct Request<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) version: Version,
    pub(crate) headers: &'a [httparse::Header<'a>],
    pub(crate) body: &'a [u8],
    /// Path parameters of the matched route, raw (read on demand: most
    /// handlers read one or two).
    pub(crate) params: Option<&'a matchit::Params<'a, 'a>>,
    /// The matched route's pattern (`/users/{id}`), once routed.
    pub(crate) route: Option<&'a str>,
    /// The connection's socket, for the peer's address.
    pub(crate) socket: Option<&'a crate::shared::SharedSocket>,
    /// When the loop read it (the time of the loop's wake-up).
    pub(crate) received: Option<std::time::Instant>,
    /// The body's reader, on a [`BodyPolicy::Stream`](crate::BodyPolicy::Stream) route.
    pub(crate) upload: Option<&'a super::upload::ReaderSlot>,
}

impl<'a> Request<'a> {
    /// The method token, as sent (`GET`, `POST`, ...).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path, without the query (`/a/b`); `*` for `OPTIONS *`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The value of query parameter `name` (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The HTTP version of the request line.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// All header fields in the order they were sent.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The body, de-chunked. Empty on a route that streams its body
    /// ([`BodyPolicy::Stream`](crate::BodyPolicy::Stream)): read it with
    /// [`body_reader`](Self::body_reader).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The reader of a streamed body, the first time it is asked for;
    /// `None` when the body is not streamed (it is in [`body`](Self::body)),
    /// or was taken already. The request's head is all that has been
    /// read: the handler runs before the body arrives, and what it does not
    /// read is not received (the connection closes after the response; a
    /// handler that returns without taking the reader gets `Connection:
    /// close` on its response).
    pub fn body_reader(&self) -> Option<crate::BodyReader> {
        self.upload?.take()
    }

    /// Path parameter `name` of the matched route, as sent
    /// (percent-encoded); `None` outside a router or for another route.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params?.get(name)
    }

    /// Path parameter `name`, percent-decoded (`%2F` is `/`; bytes that do
    /// not make UTF-8 become U+FFFD). Malformed escapes are kept as sent.
    pub fn param_decoded(&self, name: &str) -> Option<std::borrow::Cow<'a, str>> {
        self.param(name).map(percent_decode)
    }

    /// Every path parameter of the matched route as `(name, raw value)`,
    /// in pattern order.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.params.into_iter().flat_map(|params| params.iter())
    }

    /// The pattern of the route that matched (`/users/{id}`), for logs and
    /// metrics: a bounded set, unlike raw paths.
    pub fn route(&self) -> Option<&'a str> {
        self.route
    }

    /// The client's address (looked up once per connection). `None` if
    /// the client was already gone.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.socket?.peer_addr()
    }

    /// When the loop read the request: the start of its wake-up, so the
    /// same for every request of one batch, and free to read.
    pub fn received(&self) -> Option<std::time::Instant> {
        self.received
    }

    /// The same request with the router's findings.
    pub(crate) fn routed<'b>(
        &self,
        route: &'b str,
        params: &'b matchit::Params<'b, 'b>,
    ) -> Request<'b>
    where
        'a: 'b,
    {
        Request {
            method: self.method,
            path: self.path,
            query: self.query,
            version: self.version,
            headers: self.headers,
            body: self.body,
            params: Some(params),
            route: Some(route),
            socket: self.socket,
            received: self.received,
            upload: self.upload,
        }
    }
}

/// Decodes `%XX` escapes; anything else, malformed escapes included, is
/// kept. Borrowed when there is nothing to decode.
pub(crate) fn percent_decode(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('%') {
        return std::borrow::Cow::Borrowed(text);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(high), Some(low)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            {
                decoded.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::MAX_HEADERS_CAP;

    #[test]
    fn percent_decoding_decodes_escapes_and_keeps_malformed_ones() {
        assert!(matches!(percent_decode("plain"), std::borrow::Cow::Borrowed("plain")));
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }

    /// An owned copy of a [`Head`], so tests can compare it after the
    /// header array is gone.
    #[derive(Clone, Debug, PartialEq)]
    struct Parsed {
        method: String,
        path: String,
        query: Option<String>,
        version: Version,
        headers: usize,
        len: usize,
        framing: Framing,
        keep_alive: bool,
        expect_continue: bool,
    }

    fn parse_with(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, Reject> {
        let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
        let head = parse_head(buf, &mut headers, limits)?;
        Ok(head.map(|h| Parsed {
            method: h.method.to_owned(),
            path: h.path.to_owned(),
            query: h.query.map(str::to_owned),
            version: h.version,
            headers: h.headers.len(),
            len: h.len,
            framing: h.framing,
            keep_alive: h.keep_alive,
            expect_continue: h.expect_continue,
        }))
    }

    fn parse(buf: &[u8]) -> Result<Option<Parsed>, Reject> {
        parse_with(buf, &Limits::default())
    }

    fn small_limits() -> Limits {
        Limits { max_head_bytes: 64, max_headers: 4, max_body_bytes: 100 }
    }

    /// `name: input => status;` asserts that the head is refused with status.
    macro_rules! rejects {
        ($($name:ident: $input:expr => $status:expr;)+) => {$(
            #[test]
            fn $name() {
                let input: &[u8] = $input;
                match parse(input) {
                    Err(reject) => assert_eq!(reject.status, $status, "{reject:?}"),
                    Ok(head) => panic!("accepted {:?}: {head:?}", String::from_utf8_lossy(input)),
                }
            }
        )+};
    }

    rejects! {
        reject_bare_lf_request_line: b"GET / HTTP/1.1\nHost: a\r\n\r\n" => 400;
        reject_bare_lf_header: b"GET / HTTP/1.1\r\nHost: a\n\r\n" => 400;
        reject_bare_lf_end: b"GET / HTTP/1.1\r\nHost: a\r\n\n" => 400;
        reject_bare_lf_leading: b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_bare_cr: b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n" => 400;
        reject_obs_fold: b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n" => 400;
        reject_space_before_colon: b"GET / HTTP/1.1\r\nHost : a\r\n\r\n" => 400;
        reject_space_before_first_header: b"GET / HTTP/1.1\r\n Host: a\r\n\r\n" => 400;
        reject_nul_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n" => 400;
        reject_ctl_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n" => 400;
        reject_del_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n" => 400;
        reject_no_colon: b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n" => 400;
        reject_empty_name: b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n" => 400;
        reject_bad_method: b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_double_space: b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_lowercase_version: b"GET / http/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_garbage_version: b"GET / HTTP/1.x\r\nHost: a\r\n\r\n" => 400;
        reject_long_version: b"GET / HTTP/1.10\r\nHost: a\r\n\r\n" => 400;
        reject_version_bare_lf: b"GET / HTTP/2.0\nHost: a\r\n\r\n" => 400;
        reject_http2: b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" => 505;
        reject_http12: b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" => 505;
        reject_http09ish: b"GET / HTTP/0.9\r\n\r\n" => 505;
        reject_h2_preface: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" => 505;
        reject_missing_host: b"GET / HTTP/1.1\r\nX: a\r\n\r\n" => 400;
        reject_two_hosts: b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n" => 400;
        reject_two_hosts_10: b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n" => 400;
        reject_host_with_slash: b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n" => 400;
        reject_host_with_userinfo: b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n" => 400;
        reject_host_with_space: b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" => 400;
        reject_host_bad_port: b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n" => 400;
        reject_host_bad_ipv6: b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n" => 400;
        reject_cl_te: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
        reject_cl_conflict: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n" => 400;
        reject_cl_list_conflict: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n" => 400;
        reject_cl_empty_element: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3,\r\n\r\n" => 400;
        reject_cl_empty: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n" => 400;
        reject_cl_sign: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n" => 400;
        reject_cl_negative: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n" => 400;
        reject_cl_hex: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n" => 400;
        reject_cl_inner_space: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n" => 400;
        reject_cl_overflow: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n" => 400;
        // A coding vigil does not decode, before a final chunked: 501.
        reject_te_gzip_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 501;
        reject_te_split_fields: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" => 501;
        reject_te_two_unknown_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x-custom, Deflate, chunked\r\n\r\n" => 501;
        reject_te_params_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip;level=9, chunked\r\n\r\n" => 501;
        reject_te_identity_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity, chunked\r\n\r\n" => 501;
        // The body cannot be delimited: 400 (RFC 9112 6.3).
        reject_te_chunked_gzip: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" => 400;
        reject_te_gzip_alone: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n" => 400;
        reject_te_xchunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n" => 400;
        reject_te_chunked_x: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunkedx\r\n\r\n" => 400;
        reject_te_chunked_twice: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" => 400;
        reject_te_chunked_gzip_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip, chunked\r\n\r\n" => 400;
        reject_te_two_fields: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
        reject_te_split_chunked_first: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n" => 400;
        reject_te_empty_before_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked\r\n\r\n" => 400;
        reject_te_bad_token_before_chunked: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: g(z), chunked\r\n\r\n" => 400;
        reject_te_gzip_chunked_with_cl: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 400;
        reject_te_gzip_chunked_http10: b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" => 400;
        reject_te_empty: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n" => 400;
        reject_te_trailing_comma: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n" => 400;
        reject_te_identity: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n" => 400;
        reject_te_params: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n" => 400;
        reject_te_http10: b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => 400;
        reject_expect_other: b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n" => 417;
        reject_expect_list: b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n" => 417;
        reject_expect_other_10: b"POST / HTTP/1.0\r\nExpect: foo\r\n\r\n" => 417;
        reject_cl_identical_list: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello" => 400;
        reject_cl_repeated: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello" => 400;
        reject_two_content_types: b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\nContent-Type: c/d\r\n\r\n" => 400;
        reject_underscored_te: b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n" => 400;
        reject_underscored_cl: b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n" => 400;
        reject_non_ascii_target: "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes() => 400;
        reject_relative_target: b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_asterisk_get: b"GET * HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_authority_get: b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_connect_origin: b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_connect_no_port: b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_absolute_ftp: b"GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_absolute_no_host: b"GET http:///b HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
        reject_absolute_userinfo: b"GET http://u@a/b HTTP/1.1\r\nHost: a\r\n\r\n" => 400;
    }

    #[test]
    fn rejects_over_limits() {
        let limits = small_limits();
        let table: &[(&[u8], u16)] = &[
            // Request line alone over 64 bytes, no LF yet.
            (&[b"GET /".as_slice(), &[b'a'; 80]].concat(), 414),
            // Request line complete but longer than the limit.
            (&[b"GET /".as_slice(), &[b'a'; 80], b" HTTP/1.1\r\nHost: a\r\n\r\n"].concat(), 414),
            // Request line fits; the fields push the head over.
            (&[b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'a'; 60]].concat(), 431),
            // Complete head over the limit.
            (
                &[b"GET / HTTP/1.1\r\nHost: a\r\nX: ".as_slice(), &[b'a'; 60], b"\r\n\r\n"]
                    .concat(),
                431,
            ),
            (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", 431),
            // Too many fields is seen before the head is complete.
            (b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", 431),
            (b"GET / HTTP/3\r\nHost: a\r\n\r\n", 400),
        ];
        for (input, status) in table {
            let got = parse_with(input, &limits);
            assert_eq!(
                got.map_err(|r| r.status),
                Err(*status),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // At exactly the limit a complete head is fine.
        let mut exact = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        exact.resize(60, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), 64);
        assert_eq!(parse_with(&exact, &limits).unwrap().unwrap().len, 64);
    }

    #[test]
    fn incomplete_heads_wait() {
        let full: &[u8] = b"POST /p?q HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        for end in 0..full.len() {
            assert_eq!(parse(&full[..end]), Ok(None), "cut at {end}");
        }
        assert!(parse(full).unwrap().is_some());
        // A version that may still turn out well-formed waits too; the
        // verdict comes with the rest of the line.
        for cut in
            [b"GET / HTTP/2".as_slice(), b"GET / HTTP/2.", b"GET / HTTP/2.0", b"GET / HTTP/2.0\r"]
        {
            assert_eq!(parse(cut), Ok(None), "{:?}", String::from_utf8_lossy(cut));
        }
        assert_eq!(parse(b"GET / HTTP/2.0\r\n").unwrap_err().status, 505);
        assert_eq!(parse(b"GET / HTTP/x").unwrap_err().status, 400);
        assert_eq!(parse(b"GET / HTTP/2.00").unwrap_err().status, 400);
    }

    #[allow(clippy::too_many_arguments)] // one per column of the table below
    fn head(
        method: &str,
        path: &str,
        query: Option<&str>,
        version: Version,
        headers: usize,
        framing: Framing,
        keep_alive: bool,
        expect_continue: bool,
    ) -> Parsed {
        Parsed {
            method: method.into(),
            path: path.into(),
            query: query.map(Into::into),
            version,
            headers,
            len: 0,
            framing,
            keep_alive,
            expect_continue,
        }
    }

    #[test]
    fn accepts() {
        use Framing::*;
        use Version::*;
        // The head's length is checked against the input: what follows
        // the head in an input is always "next" or a 5-byte body.
        let table: &[(&[u8], Parsed)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/", None, Http11, 1, Empty, true, false),
            ),
            (
                b"GET /a/b?x=1&y HTTP/1.1\r\nHost: example.com:8080\r\n\r\nnext",
                head("GET", "/a/b", Some("x=1&y"), Http11, 1, Empty, true, false),
            ),
            (
                b"GET /? HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/", Some(""), Http11, 1, Empty, true, false),
            ),
            (b"GET / HTTP/1.0\r\n\r\n", head("GET", "/", None, Http10, 0, Empty, false, false)),
            (
                b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                head("GET", "/", None, Http10, 1, Empty, true, false),
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
                head("GET", "/", None, Http10, 1, Empty, false, false),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, CLOSE\r\n\r\n",
                head("GET", "/", None, Http11, 2, Empty, false, false),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
                head("GET", "/", None, Http11, 2, Empty, true, false),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                head("POST", "/", None, Http11, 2, Length(5), true, false),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                head("POST", "/", None, Http11, 2, Empty, true, false),
            ),
            (
                b"GET /a?b#frag HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/a", Some("b"), Http11, 1, Empty, true, false),
            ),
            // A '?' inside the fragment is not a query.
            (
                b"GET /a#f?x HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/a", None, Http11, 1, Empty, true, false),
            ),
            (
                b"GET http://a/p?q=1#f?x HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/p", Some("q=1"), Http11, 1, Empty, true, false),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n",
                head("POST", "/", None, Http11, 2, Length(1 << 20), true, false),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n",
                head("POST", "/", None, Http11, 2, Chunked, true, false),
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
                head("POST", "/", None, Http11, 3, Length(1), true, true),
            ),
            (
                b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                head("POST", "/", None, Http10, 2, Length(1), false, false),
            ),
            (
                b"GET http://Example.com/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
                head("GET", "/p", Some("q"), Http11, 1, Empty, true, false),
            ),
            (
                b"GET HTTPS://a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/", None, Http11, 1, Empty, true, false),
            ),
            (
                b"GET http://[::1]:80?x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
                head("GET", "/", Some("x"), Http11, 1, Empty, true, false),
            ),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                head("OPTIONS", "*", None, Http11, 1, Empty, true, false),
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
                head("CONNECT", "a.example:443", None, Http11, 1, Empty, true, false),
            ),
            // An empty Host is what a client sends for a URI without authority.
            (
                b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
                head("GET", "/", None, Http11, 1, Empty, true, false),
            ),
            // Empty lines before the request line are skipped (RFC 9112 2.2).
            (
                b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                head("GET", "/", None, Http11, 1, Empty, true, false),
            ),
            (
                b"PATCH /x HTTP/1.1\r\nHost: a\r\nX-Tab:\ta\tb\t\r\nX-Utf8: \xc3\xa9\r\n\r\n",
                head("PATCH", "/x", None, Http11, 3, Empty, true, false),
            ),
        ];
        for (input, want) in table {
            let after =
                [&b"next"[..], b"hello"].iter().find(|t| input.ends_with(t)).map_or(0, |t| t.len());
            let want = &Parsed { len: input.len() - after, ..want.clone() };
            let got = parse(input);
            assert_eq!(
                got.as_ref().map(Option::as_ref),
                Ok(Some(want)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn header_values_are_trimmed() {
        let mut headers = [MaybeUninit::uninit(); 8];
        let limits = Limits { max_headers: 8, ..Limits::default() };
        let buf = b"GET / HTTP/1.1\r\nHost:  a \r\nX-A:\t b c \t\r\n\r\n";
        let head = parse_head(buf, &mut headers, &limits).unwrap().unwrap();
        let values: Vec<_> = head.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(values, [("Host", &b"a"[..]), ("X-A", b"b c")]);
    }

    #[test]
    fn uses_only_max_headers() {
        let limits = Limits { max_headers: 2, ..Limits::default() };
        let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\nB: 2\r\n\r\n";
        assert_eq!(parse_head(ok, &mut headers, &limits).unwrap().unwrap().headers.len(), 2);
        let over = b"GET / HTTP/1.1\r\nHost: a\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse_head(over, &mut headers, &limits).unwrap_err().status, 431);
    }

    /// Mutated valid heads: never a panic, and an accepted head lies within
    /// the input and ends with CRLF CRLF. A cheap stand-in for a fuzzer.
    #[test]
    fn mutations_never_panic() {
        let seeds: &[&[u8]] = &[
            b"GET /a?b HTTP/1.1\r\nHost: a:1\r\nConnection: close\r\n\r\n",
            b"POST http://a/ HTTP/1.0\r\nContent-Length: 3, 3\r\nExpect: 100-continue\r\n\r\nabc",
            b"PUT / HTTP/1.1\r\nHost: [::1]\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        let alphabet = b"\r\n :,;/?#@[]*0129aAzZ\t\0\x7f\xff-.HTTP/";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let limits = small_limits();
        for _ in 0..20_000 {
            let mut input = seeds[next() as usize % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % (input.len() + 1);
                let byte = alphabet[next() as usize % alphabet.len()];
                match next() % 3 {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => drop(input.remove(at)),
                    _ => input.insert(at, byte),
                }
            }
            for limits in [&limits, &Limits::default()] {
                if let Ok(Some(head)) = parse_with(&input, limits) {
                    assert!(head.len <= input.len().min(limits.max_head_bytes));
                    assert!(input[..head.len].ends_with(b"\r\n\r\n"), "{input:?}");
                }
            }
        }
    }

    #[test]
    fn host_memo_agrees_with_authority() {
        let long = [b'a'; 65];
        for value in [
            &b"a.example:80"[..],
            b"a b",
            b"a.example:80",
            b"",
            b"u@h",
            b"[::1]:8080",
            b"a.example:80",
            b" a.example:80 ",
            b"a.example:80",
            b"a\t",
            b" a b",
            &long,
            &long,
            &long[..64],
            &long[..64],
        ] {
            let expected = authority(trim_ows(value)).is_some();
            assert_eq!(host_is_valid(value), expected, "{value:?}");
        }
    }

    #[test]
    fn query_params_and_headers() {
        let headers = [
            httparse::Header { name: "Host", value: b"a" },
            httparse::Header { name: "X-A", value: b"1" },
            httparse::Header { name: "x-a", value: b"2" },
        ];
        let req = Request {
            method: "GET",
            path: "/p",
            query: Some("a=1&b=&c&a=2&sp=%20"),
            version: Version::Http11,
            headers: &headers,
            body: b"",
            params: None,
            route: None,
            socket: None,
            received: None,
            upload: None,
        };
        for (name, want) in
            [("a", Some("1")), ("b", Some("")), ("c", Some("")), ("sp", Some("%20")), ("d", None)]
        {
            assert_eq!(req.query_param(name), want, "{name}");
        }
        assert_eq!(req.header("X-A"), Some(&b"1"[..]), "the first, in any case");
        assert_eq!(req.header("x-b"), None);
        let all: Vec<_> = req.headers().map(|(n, v)| (n, v[0])).collect();
        assert_eq!(all, [("Host", b'a'), ("X-A", b'1'), ("x-a", b'2')]);
        assert_eq!(Request { query: None, ..req }.query_param("a"), None);
    }

    #[test]
    fn name_is_exact_on_tokens() {
        for b in (0..=255u8).filter(|&b| crate::http::is_tchar(b)) {
            for &c in b"abcdefghijklmnopqrstuvwxyz-" {
                let name = [b];
                let name = std::str::from_utf8(&name).unwrap();
                assert_eq!(name_is(name, &[c]), b.to_ascii_lowercase() == c, "{b:#x} vs {c}");
            }
        }
    }
}
