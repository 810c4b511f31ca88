//! Responses: what a service fills in, and its encoding on the wire.

use std::borrow::Cow;

use super::date::DateCache;
use super::file::FileBody;
use super::is_tchar;
use super::request::Request;
use super::stream::{BodyWriter, StreamBody};

/// Work that fills in a response on a pool thread.
pub(crate) type Work = Box<dyn FnOnce(&mut Response) + Send + 'static>;

/// Called once the exchange of a response is over (see
/// [`Response::on_finish`]).
pub(crate) type FinishHook = Box<dyn FnOnce(&Finished<'_>) + Send + 'static>;

/// Header fields as a service sets them.
pub(crate) type Fields = Vec<(Cow<'static, str>, Cow<'static, str>)>;

/// The first field named `name` (case-insensitive) of `headers`.
fn field<'a>(headers: &'a [(Cow<'static, str>, Cow<'static, str>)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
}

/// The end of one exchange, as [`Response::on_finish`] hooks see it: the
/// response that was really sent (after offloaded work, or the 500 that
/// replaced a panic) and whether all of it reached the socket.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The status sent; 0 when no response was made (the connection
    /// closed while offloaded work was still running).
    pub status: u16,
    /// The service's header fields of the response sent (not the ones the
    /// server adds: `Date`, `Content-Length`, `Connection`).
    pub headers: &'a [(Cow<'static, str>, Cow<'static, str>)],
    /// Body bytes of the response (none for HEAD, 204 and 304): all of
    /// them reached the socket only if `completed`.
    pub body_bytes: u64,
    /// The whole response on the wire, head included.
    pub wire_bytes: u64,
    /// The last byte was handed to the kernel; false when the connection
    /// closed first (client gone, server stopping, shut down with its loop).
    pub completed: bool,
    /// From when the loop read the request to the last byte written (or to
    /// the close).
    pub duration: std::time::Duration,
}

impl Finished<'_> {
    /// The first header field named `name` (case-insensitive) of the
    /// response sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(self.headers, name)
    }
}

/// The response a service fills in. One is reused per loop, reset between
/// requests, so a hello world allocates nothing.
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub(crate) body: Body,
    /// The service asked for the connection to close after this response.
    pub(crate) close: bool,
    /// Work to finish this response on the offload pool.
    pub(crate) offload: Option<Work>,
    /// How long offloaded work may take before a 503 is sent instead.
    pub(crate) offload_timeout: Option<std::time::Duration>,
    /// Called when the exchange is over.
    pub(crate) on_finish: Vec<FinishHook>,
    /// Writes a streamed body, on the offload pool ([`Response::stream_with`]).
    pub(crate) producer: Option<Producer>,
}

/// A streamed body's producer, to run on the offload pool.
pub(crate) type Producer = Box<dyn FnOnce() + Send + 'static>;

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("close", &self.close)
            .field("offload", &self.offload.is_some())
            .field("offload_timeout", &self.offload_timeout)
            .field("on_finish", &self.on_finish.len())
            .finish()
    }
}

#[derive(Debug)]
pub(crate) enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
    /// Sent as a producer writes it (see `http::stream`).
    Stream(Box<StreamBody>),
    /// Part of a file, sent with `sendfile(2)` (see `http::file`).
    File(Box<FileBody>),
}

/// A body that is not in memory, sent after its head.
#[derive(Debug)]
pub(crate) enum Source {
    Stream(Box<StreamBody>),
    File(Box<FileBody>),
}

/// A body taken from its response to be sent after the head, and how it
/// is delimited.
pub(crate) type Streamed = (Source, BodyFraming);

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1, length not known).
    Chunked,
    /// By closing the connection (HTTP/1.0, length not known).
    UntilClose,
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

impl Response {
    /// `200`, no headers, empty body.
    pub fn new() -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Body::Static(b""),
            close: false,
            offload: None,
            offload_timeout: None,
            on_finish: Vec::new(),
            producer: None,
        }
    }

    /// Sets the status code (100-999 are accepted; 1xx other than 101 and
    /// codes outside 200-999 are answered as 500 since the loop cannot frame them).
    pub fn status(&mut self, code: u16) -> &mut Self {
        self.status = code;
        self
    }

    /// Adds a header field. `Content-Length`, `Transfer-Encoding` and `Date`
    /// are the server's and are ignored here; `Connection: close` closes
    /// the connection after this response. A name or value with CR, LF or
    /// NUL makes the response a 500.
    pub fn header(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<Cow<'static, str>>,
    ) -> &mut Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body to bytes that live for the whole program (no copy).
    pub fn body_static(&mut self, body: &'static [u8]) -> &mut Self {
        // In place when the body is static already (as after a reset): an
        // assignment would call the drop glue of every kind of body, 15
        // instructions a request.
        match &mut self.body {
            Body::Static(bytes) => *bytes = body,
            other => *other = Body::Static(body),
        }
        self
    }

    /// Sets the body.
    pub fn body(&mut self, body: impl Into<Vec<u8>>) -> &mut Self {
        self.body = Body::Owned(body.into());
        self
    }

    /// The body as a growable buffer, for writing into it.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        if !matches!(self.body, Body::Owned(_)) {
            // A stream's or a file's body is not here: it starts empty.
            self.body = Body::Owned(self.body_bytes().to_vec());
        }
        match &mut self.body {
            Body::Owned(vec) => vec,
            _ => unreachable!("replaced just above"),
        }
    }

    /// Streams the body, of a length not known in advance: what is written
    /// to the returned writer is sent as it comes (`Transfer-Encoding:
    /// chunked`, or on HTTP/1.0 until the connection closes). Move the
    /// writer to another thread, or use [`stream_with`](Self::stream_with).
    /// Setting another body drops the stream (its writes then fail).
    ///
    /// The client's pace is the producer's: past
    /// [`STREAM_QUEUE_BYTES`](crate::STREAM_QUEUE_BYTES)
    /// not yet sent, writes block. HEAD, 204 and 304 send no body: the
    /// writer's first write fails with `BrokenPipe`. Later responses on the
    /// same connection wait behind the stream. A stream silent for the
    /// server's `stream_idle_timeout`, or whose client takes nothing for
    /// its `send_timeout`, is cut.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use vigil::{Request, Response};
    ///
    /// fn export(_req: &Request<'_>, res: &mut Response) {
    ///     res.header("Content-Type", "text/csv");
    ///     let mut writer = res.stream();
    ///     std::thread::spawn(move || -> std::io::Result<()> {
    ///         for row in 0..1000 {
    ///             writeln!(writer, "{row},{}", row * row)?;
    ///         }
    ///         writer.finish()
    ///     });
    /// }
    /// ```
    pub fn stream(&mut self) -> BodyWriter {
        self.stream_body(None)
    }

    /// [`stream`](Self::stream), for a body of exactly `length` bytes (sent
    /// with `Content-Length`). A producer that finishes short is cut off
    /// (the client sees the connection close early); bytes past `length`
    /// are not sent, and the connection closes after the response.
    pub fn stream_sized(&mut self, length: u64) -> BodyWriter {
        self.stream_body(Some(length))
    }

    /// Streams the body from `produce`, run on the offload pool once the
    /// handler returns (a full pool queue is answered `503`). Returning
    /// `Ok` ends the body; an error or a panic cuts it short.
    pub fn stream_with(
        &mut self,
        produce: impl FnOnce(&mut BodyWriter) -> std::io::Result<()> + Send + 'static,
    ) -> &mut Self {
        let mut writer = self.stream();
        self.producer = Some(Box::new(move || {
            if produce(&mut writer).is_ok() {
                let _ = writer.finish();
            }
            // Otherwise dropped unfinished: cut short.
        }));
        self
    }

    /// Sends `file` as the body, as `req` asks: the whole file (200), the
    /// one byte range of a `Range` field (206; 416 outside the file; more
    /// than one range gets the whole file), or nothing if the client's
    /// copy is current (304 on `If-None-Match` or `If-Modified-Since`).
    /// Sets `Content-Length`, `ETag`, `Last-Modified` and `Accept-Ranges`;
    /// `Content-Type` is the caller's.
    ///
    /// The loop sends the file with `sendfile(2)`, in slices, so one
    /// download does not starve the loop's other connections; the file is
    /// not read into memory. `Err` when the file's metadata cannot be read
    /// or it is not a regular file (nothing was changed then).
    pub fn send_file(
        &mut self,
        req: &Request<'_>,
        file: std::fs::File,
    ) -> std::io::Result<&mut Self> {
        super::file::respond(req, self, file)?;
        Ok(self)
    }

    fn stream_body(&mut self, length: Option<u64>) -> BodyWriter {
        let (body, writer) = StreamBody::new(length);
        self.body = Body::Stream(Box::new(body));
        self.producer = None;
        writer
    }

    /// Finishes this response on the offload pool instead of the loop:
    /// `work` gets a response to fill in, on a pool thread, and what it
    /// fills in is sent (in request order on its connection). The header
    /// fields already set on `self` (by middleware, say) are carried over;
    /// the status and body are `work`'s. When the pool's queue is full the
    /// request is answered `503` with `Retry-After` at once; a panic in
    /// `work` gives a `500`.
    ///
    /// Use it for blocking calls and long computations, which would
    /// otherwise hold up every connection of the loop (and, past the stall
    /// timeout, get the loop replaced).
    ///
    /// # Examples
    ///
    /// ```
    /// use vigil::{Request, Response};
    ///
    /// fn handler(req: &Request<'_>, res: &mut Response) {
    ///     let n: u64 = req.query_param("n").and_then(|v| v.parse().ok()).unwrap_or(30);
    ///     res.offload(move |res| {
    ///         let fib = (0..n).fold((0u64, 1u64), |(a, b), _| (b, a.wrapping_add(b))).0;
    ///         res.body(format!("{fib}\n"));
    ///     });
    /// }
    /// ```
    pub fn offload(&mut self, work: impl FnOnce(&mut Response) + Send + 'static) -> &mut Self {
        self.offload = Some(Box::new(work));
        self
    }

    /// Offloaded work of this response that has not finished `timeout`
    /// after it was handed over is answered `503` instead (its result,
    /// when it comes, is dropped). Checked by the loop's timer sweep, so
    /// the answer comes within a second of the timeout.
    pub fn offload_timeout(&mut self, timeout: std::time::Duration) -> &mut Self {
        self.offload_timeout = Some(timeout);
        self
    }

    /// Calls `hook` once this exchange is over: after the last byte of the
    /// response actually sent (offloaded work's, or the error that replaced
    /// it) was written, or when the connection closed before that. It runs
    /// on the loop's thread, so it must be quick (an access log hands its
    /// line to a writer thread).
    pub fn on_finish(&mut self, hook: impl FnOnce(&Finished<'_>) + Send + 'static) -> &mut Self {
        self.on_finish.push(Box::new(hook));
        self
    }

    /// Sets the body to `value` as JSON with `Content-Type:
    /// application/json`; a value that cannot be serialized (a map with
    /// non-string keys, say) gives a 500.
    pub fn json(&mut self, value: &impl serde::Serialize) -> &mut Self {
        match serde_json::to_vec(value) {
            Ok(body) => {
                self.header("Content-Type", "application/json");
                self.body(body)
            }
            Err(err) => {
                log::error!("response body cannot be serialized as JSON: {err}");
                self.status(500).body_static(b"500 Internal Server Error\n")
            }
        }
    }

    /// The header fields set so far, in order.
    pub fn headers(&self) -> &[(Cow<'static, str>, Cow<'static, str>)] {
        &self.headers
    }

    /// The first header field named `name` (case-insensitive) set so far.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Asks for the connection to be closed after this response.
    pub fn close(&mut self) -> &mut Self {
        self.close = true;
        self
    }

    /// The status set so far (`200` unless [`status`](Response::status)
    /// changed it).
    pub fn status_code(&self) -> u16 {
        self.status
    }

    /// The body set so far, static or owned.
    /// A streamed body has none here.
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Static(bytes) => bytes,
            Body::Owned(vec) => vec,
            Body::Stream(_) | Body::File(_) => b"",
        }
    }

    /// Back to `Response::new()`, keeping allocated capacity. Inlined into
    /// the service call: 15 instructions fewer per request.
    #[inline(always)]
    pub(crate) fn reset(&mut self) {
        self.status = 200;
        self.offload = None;
        self.offload_timeout = None;
        self.headers.clear();
        self.close = false;
        self.producer = None;
        match &mut self.body {
            Body::Static(bytes) => *bytes = b"",
            Body::Owned(vec) if vec.capacity() <= 64 * 1024 => vec.clear(),
            body => *body = Body::Static(b""),
        }
    }
}

/// How to frame one response on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Encoding {
    /// A HEAD request: headers as for GET, no body bytes.
    pub(crate) head_request: bool,
    /// Keep the connection open afterwards; `false` adds `Connection: close`.
    pub(crate) keep_alive: bool,
    /// An HTTP/1.0 request: a connection kept open must say so
    /// (`Connection: keep-alive`), or the client waits for the close.
    pub(crate) http10: bool,
}

/// Appends `res` to `out` as an HTTP/1.1 response with `Server`, `Date`,
/// `Content-Length` (none for 1xx/204/304), the service's headers and
/// (unless HEAD/204/304) the body. Returns whether the connection stays open
/// (`false` when `enc.keep_alive` is false or the service asked to close).
/// An invalid response (bad status, CR/LF/NUL in a header) is replaced by
/// a 500 and logged.
///
/// A service's `Connection` field is sent as-is while the connection stays
/// open (so an HTTP/1.0 keep-alive answer can carry `Connection:
/// keep-alive`) and replaced by the single `Connection: close` otherwise.
/// A 101 closes the connection: nothing here switches protocols.
pub(crate) fn encode(res: &Response, enc: Encoding, date: &DateCache, out: &mut Vec<u8>) -> bool {
    let hit = LAST_HEAD.with_borrow(|last| {
        let hit = last.matches(res, enc, date);
        if hit {
            out.reserve(last.head.len() + res.body_bytes().len());
            out.extend_from_slice(&last.head);
        }
        hit.then_some(last.keep_alive)
    });
    if let Some(keep_alive) = hit {
        out.extend_from_slice(body_on_the_wire(res, enc));
        return keep_alive;
    }
    let head_start = out.len();
    let framing = BodyFraming::Length(res.body_bytes().len() as u64);
    match encode_head(res, enc, framing, date, out) {
        Ok(keep_alive) => {
            let head = &out[head_start..];
            LAST_HEAD.with_borrow_mut(|last| last.remember(res, enc, date, head, keep_alive));
            out.extend_from_slice(body_on_the_wire(res, enc));
            keep_alive
        }
        // Replaced by a 500 without a body.
        Err(keep_alive) => keep_alive,
    }
}

/// [`encode`] for a response whose body may be streamed: the head only,
/// framed for the stream, and the stream itself when a body follows it
/// (not for HEAD, 204, 304, or a response replaced by a 500: the stream
/// is dropped with the response, and its writer's writes fail).
pub(crate) fn encode_streamed(
    res: &mut Response,
    enc: Encoding,
    date: &DateCache,
    out: &mut Vec<u8>,
) -> (bool, Option<Streamed>) {
    let framing = match &res.body {
        Body::Stream(stream) => match stream.length {
            Some(len) => BodyFraming::Length(len),
            None if enc.http10 => BodyFraming::UntilClose,
            None => BodyFraming::Chunked,
        },
        Body::File(file) => BodyFraming::Length(file.len),
        Body::Static(_) | Body::Owned(_) => return (encode(res, enc, date, out), None),
    };
    match encode_head(res, enc, framing, date, out) {
        Ok(keep_alive) if is_framed(res.status) && !enc.head_request => {
            let source = match std::mem::replace(&mut res.body, Body::Static(b"")) {
                Body::Stream(stream) => Source::Stream(stream),
                Body::File(file) => Source::File(file),
                Body::Static(_) | Body::Owned(_) => unreachable!("matched above"),
            };
            (keep_alive, Some((source, framing)))
        }
        Ok(keep_alive) | Err(keep_alive) => (keep_alive, None),
    }
}

/// Whether a response of `status` has a body and a `Content-Length`.
/// RFC 9110 8.6: not 1xx and 204; a 304 has no body, and we do not know
/// the length of the representation it stands for.
fn is_framed(status: u16) -> bool {
    status >= 200 && status != 204 && status != 304
}

/// The body bytes sent for a valid response: none for HEAD, 1xx, 204 and
/// 304.
pub(crate) fn body_on_the_wire(res: &Response, enc: Encoding) -> &[u8] {
    if is_framed(res.status) && !enc.head_request {
        res.body_bytes()
    } else {
        b""
    }
}

/// The head last encoded on this thread (so per loop) and what it was
/// made of, when every field is a `&'static str` (a string that lives for
/// the whole program never changes, so its address stands for its bytes):
/// a response made of the same parts has the same head. HEAD or not is
/// left out: its head is GET's (with GET's `Content-Length`).
///
/// The parts are kept as words and compared in place, field by field: no
/// key is built per response.
struct LastHead {
    /// Words in use; 0 while nothing is remembered.
    len: usize,
    words: [u64; 3 + 3 * CACHED_FIELDS],
    head: Vec<u8>,
    keep_alive: bool,
}

/// Most fields a remembered head may have.
const CACHED_FIELDS: usize = 4;

impl LastHead {
    /// Status, flags and field count in one word.
    fn first_word(res: &Response, enc: Encoding) -> u64 {
        u64::from(res.status)
            | u64::from(enc.keep_alive) << 16
            | u64::from(res.close) << 17
            | u64::from(enc.http10) << 18
            | (res.headers.len() as u64) << 20
    }

    /// A `&'static` field's words: its name's and value's addresses, and
    /// both lengths.
    // `&Cow`, not `&str`: whether the string is borrowed for 'static is the
    // point.
    #[allow(clippy::ptr_arg)]
    fn field_words(name: &Cow<'static, str>, value: &Cow<'static, str>) -> Option<[u64; 3]> {
        let (Cow::Borrowed(name), Cow::Borrowed(value)) = (name, value) else { return None };
        // Both lengths in one word, so neither may reach 4 GiB.
        let (Ok(name_len), Ok(value_len)) = (u32::try_from(name.len()), u32::try_from(value.len()))
        else {
            return None;
        };
        let lengths = u64::from(name_len) << 32 | u64::from(value_len);
        Some([name.as_ptr() as u64, value.as_ptr() as u64, lengths])
    }

    fn matches(&self, res: &Response, enc: Encoding, date: &DateCache) -> bool {
        // An equal first word means an equal field count, so `len` fits.
        self.len != 0
            && self.words[0] == Self::first_word(res, enc)
            && self.words[1] == res.body_bytes().len() as u64
            && self.words[2] == date.secs()
            && res.headers.iter().zip(self.words[3..self.len].chunks_exact(3)).all(
                |((name, value), words)| Self::field_words(name, value).is_some_and(|f| f == words),
            )
    }

    /// Remembers `head` as the head of `res`, when `res` can be keyed.
    fn remember(
        &mut self,
        res: &Response,
        enc: Encoding,
        date: &DateCache,
        head: &[u8],
        keep_alive: bool,
    ) {
        self.len = 0;
        if res.headers.len() > CACHED_FIELDS {
            return;
        }
        for (words, (name, value)) in self.words[3..].chunks_exact_mut(3).zip(&res.headers) {
            let Some(field) = Self::field_words(name, value) else { return };
            words.copy_from_slice(&field);
        }
        self.words[0] = Self::first_word(res, enc);
        self.words[1] = res.body_bytes().len() as u64;
        self.words[2] = date.secs();
        self.head.clear();
        self.head.extend_from_slice(head);
        self.keep_alive = keep_alive;
        self.len = 3 + 3 * res.headers.len();
    }
}

thread_local! {
    // A service answers most requests with the same status, the same
    // static fields and a body of the same length: the head is then the
    // same bytes, copied instead of built (validating and writing each
    // field, the Content-Length digits). Measured (make bench-instructions):
    // 1,653 -> 1,426 instructions per pipelined request, 2,535 -> 2,308 per
    // keep-alive one.
    static LAST_HEAD: std::cell::RefCell<LastHead> = const {
        std::cell::RefCell::new(LastHead {
            len: 0,
            words: [0; 3 + 3 * CACHED_FIELDS],
            head: Vec::new(),
            keep_alive: false,
        })
    };
}

/// Appends the head of `res` (status line, fields, blank line) to `out`;
/// whether the connection stays open. `Err` when the response was invalid
/// and a whole 500 was written instead (not to be cached, no body follows).
fn encode_head(
    res: &Response,
    enc: Encoding,
    framing: BodyFraming,
    date: &DateCache,
    out: &mut Vec<u8>,
) -> Result<bool, bool> {
    let status = res.status;
    if status != 101 && !(200..=999).contains(&status) {
        log::error!("service set status {status}, which cannot be framed; sending 500");
        return Err(encode_error(res, enc, date, out));
    }

    // One pass over the service's fields validates them and sizes the output.
    let mut close = !enc.keep_alive || res.close || status == 101;
    let mut fields_len = 0;
    for (name, value) in &res.headers {
        match field_kind(name, value) {
            FieldKind::Invalid => {
                log::error!("service set an invalid header field {name:?}: {value:?}; sending 500");
                return Err(encode_error(res, enc, date, out));
            }
            FieldKind::Connection => close |= has_close_token(value),
            FieldKind::Plain | FieldKind::ServerOwned => {}
        }
        fields_len += name.len() + value.len() + 4;
    }

    let framed = is_framed(status);
    // A body delimited by the close is one only where a body is sent.
    close |= framing == BodyFraming::UntilClose && framed && !enc.head_request;
    // Status line and our fields take at most ~150 bytes; reserving once
    // (the body included: the caller appends it) saves the regrowth copies
    // of several small extends.
    out.reserve(160 + fields_len + body_on_the_wire(res, enc).len());

    match framing {
        // A 200 of known length: the common case, one copy.
        BodyFraming::Length(len) if status == 200 => {
            out.extend_from_slice(date.preamble_200());
            decimal_line(out, len);
        }
        _ => {
            status_line(out, status);
            out.extend_from_slice(b"Server: vigil\r\nDate: ");
            out.extend_from_slice(date.bytes());
            match framing {
                BodyFraming::Length(len) if framed => {
                    out.extend_from_slice(b"\r\nContent-Length: ");
                    decimal_line(out, len);
                }
                BodyFraming::Chunked if framed => {
                    out.extend_from_slice(b"\r\nTransfer-Encoding: chunked\r\n");
                }
                _ => out.extend_from_slice(b"\r\n"),
            }
        }
    }
    // Ours replaces any `Connection` field the service set.
    let own_connection = close || enc.http10;
    for (name, value) in &res.headers {
        match field_kind(name, value) {
            FieldKind::ServerOwned => continue,
            FieldKind::Connection if own_connection => continue,
            _ => {}
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    } else if enc.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    } else {
        out.extend_from_slice(b"\r\n");
    }
    Ok(!close)
}

/// The 500 sent for a handler or offloaded work that panicked.
pub(crate) fn internal_error() -> Response {
    let mut failure = Response::new();
    failure.status(500).header("Content-Type", "text/plain");
    failure.body_static(b"500 Internal Server Error\n");
    failure
}

/// What a service-set header field is to the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKind {
    /// Written as it is.
    Plain,
    /// `Connection`: may ask to close; dropped when we send our own.
    Connection,
    /// `Content-Length`, `Transfer-Encoding`, `Date`: ours, dropped.
    ServerOwned,
    /// Not a token name, or CR/LF/NUL in the value: the response is a 500.
    Invalid,
}

fn classify(name: &str, value: &str) -> FieldKind {
    if !is_token(name) || value.bytes().any(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        FieldKind::Invalid
    } else if is_server_owned(name) {
        FieldKind::ServerOwned
    } else if name.eq_ignore_ascii_case("connection") {
        FieldKind::Connection
    } else {
        FieldKind::Plain
    }
}

/// A field of `&'static str` name and value, by address, with its kind.
type StaticField = (usize, usize, usize, usize, FieldKind);

/// Fields seen most recently on this thread (so per loop).
const STATIC_FIELDS: usize = 8;

thread_local! {
    // Services set the same static fields on every response (`Content-Type:
    // text/plain`); classifying one means reading every byte of it twice,
    // while a string that lives for the whole program never changes, so
    // its address is enough to know it was checked (about 150 instructions
    // a response).
    static KNOWN_FIELDS: std::cell::RefCell<([Option<StaticField>; STATIC_FIELDS], usize)> =
        const { std::cell::RefCell::new(([None; STATIC_FIELDS], 0)) };
}

/// `classify`, remembered for static fields.
// `&Cow`, not `&str`: whether the string is borrowed for 'static is the
// point.
#[allow(clippy::ptr_arg)]
fn field_kind(name: &Cow<'static, str>, value: &Cow<'static, str>) -> FieldKind {
    let (Cow::Borrowed(name), Cow::Borrowed(value)) = (name, value) else {
        return classify(name, value);
    };
    let key = (name.as_ptr() as usize, name.len(), value.as_ptr() as usize, value.len());
    KNOWN_FIELDS.with_borrow_mut(|(known, next)| {
        let hit = known.iter().flatten().find(|f| (f.0, f.1, f.2, f.3) == key);
        if let Some(field) = hit {
            return field.4;
        }
        let kind = classify(name, value);
        known[*next] = Some((key.0, key.1, key.2, key.3, kind));
        *next = (*next + 1) % STATIC_FIELDS;
        kind
    })
}

/// The 500 that replaces a response the service got wrong. The request
/// itself was fine, so the connection stays open if it could have.
fn encode_error(res: &Response, enc: Encoding, date: &DateCache, out: &mut Vec<u8>) -> bool {
    let close = !enc.keep_alive || res.close;
    out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\nServer: vigil\r\nDate: ");
    out.extend_from_slice(date.bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    !close
}

/// Appends an error response for a refused request: `status`, a short
/// text/plain body naming `why`, and `Connection: close`.
pub(crate) fn encode_reject(status: u16, why: &str, date: &DateCache, out: &mut Vec<u8>) {
    let reason = reason(status);
    let mut code = [0; 5];
    let code = digits(&mut code, u64::from(status));
    // Body: "<status> <reason>: <why>\n"
    let body_len = code.len() + 1 + reason.len() + 2 + why.len() + 1;
    out.reserve(200 + body_len);
    status_line(out, status);
    out.extend_from_slice(b"Server: vigil\r\nDate: ");
    out.extend_from_slice(date.bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    decimal(out, body_len as u64);
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(code);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(why.as_bytes());
    out.push(b'\n');
}

/// The interim response to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase for `status` ("" for unknown codes).
pub(crate) fn reason(status: u16) -> &'static str {
    // RFC 9110 section 15, plus 429 and 431 from RFC 6585.
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// `HTTP/1.1 <status> <reason>\r\n`; the reason may be empty, the SP before
/// it may not (RFC 9112 4).
fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal without going through `fmt` (no allocation, no
/// dynamic dispatch on the hot path).
fn decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0; 20];
    out.extend_from_slice(digits(&mut buf, n));
}

/// `n` in decimal and CRLF, in one copy.
fn decimal_line(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0; 22];
    buf[20..].copy_from_slice(b"\r\n");
    let len = digits(&mut buf[..20], n).len();
    out.extend_from_slice(&buf[20 - len..]);
}

fn digits(buf: &mut [u8], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Fields the encoder writes itself; a service's copy would contradict the
/// framing (or duplicate Date), so it is dropped.
fn is_server_owned(name: &str) -> bool {
    match name.len() {
        4 => name.eq_ignore_ascii_case("date"),
        14 => name.eq_ignore_ascii_case("content-length"),
        17 => name.eq_ignore_ascii_case("transfer-encoding"),
        _ => false,
    }
}

fn has_close_token(value: &str) -> bool {
    value.split(',').any(|token| token.trim_matches([' ', '\t']).eq_ignore_ascii_case("close"))
}

/// token = 1*tchar (RFC 9110 5.6.2).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn date() -> DateCache {
        let mut date = DateCache::new();
        date.refresh(UNIX_EPOCH + Duration::from_secs(784_111_777));
        date
    }

    const KEEP: Encoding = Encoding { head_request: false, keep_alive: true, http10: false };
    const CLOSE: Encoding = Encoding { head_request: false, keep_alive: false, http10: false };
    const HEAD: Encoding = Encoding { head_request: true, keep_alive: true, http10: false };

    fn encoded(res: &Response, enc: Encoding) -> (String, bool) {
        let mut out = b"previous".to_vec();
        let open = encode(res, enc, &date(), &mut out);
        assert_eq!(&out[..8], b"previous", "encode appends");
        (String::from_utf8(out[8..].to_vec()).unwrap(), open)
    }

    /// Each response encoded after the one before it (the cache warm)
    /// gives the same bytes and the same answer as encoded alone.
    #[test]
    fn a_cached_head_is_the_head_it_stands_for() {
        let later = {
            let mut date = DateCache::new();
            date.refresh(UNIX_EPOCH + Duration::from_secs(784_111_778));
            date
        };
        let mut owned = hello();
        owned.header(String::from("X-Id"), String::from("7"));
        let mut other_length = hello();
        other_length.body(b"Hello, World!!".to_vec());
        let mut not_found = hello();
        not_found.status(404);
        let mut closing = hello();
        closing.close();
        let mut invalid = hello();
        invalid.header("X-Bad", "a\r\nb");
        let mut switching = Response::new();
        switching.status(101).header("Upgrade", "x");
        let mut no_content = hello();
        no_content.status(204);
        let mut not_modified = hello();
        not_modified.status(304);
        let mut says_close = hello();
        says_close.header("Connection", "close");
        let mut says_keep_alive = hello();
        says_keep_alive.header("Connection", "keep-alive");
        let mut many = hello();
        for name in ["A", "B", "C", "D"] {
            many.header(name, "1");
        }
        let http10 = Encoding { http10: true, ..KEEP };
        let (hello, first) = (hello(), date());
        let steps: Vec<(&Response, Encoding, &DateCache)> = vec![
            (&hello, KEEP, &first),
            (&hello, KEEP, &first),
            (&hello, HEAD, &first),
            (&hello, KEEP, &later),
            (&other_length, KEEP, &later),
            (&hello, CLOSE, &later),
            (&hello, http10, &later),
            (&not_found, KEEP, &later),
            (&closing, KEEP, &later),
            (&owned, KEEP, &later),
            (&invalid, KEEP, &later),
            (&invalid, KEEP, &later),
            (&switching, KEEP, &later),
            (&no_content, KEEP, &later),
            (&no_content, HEAD, &later),
            (&not_modified, KEEP, &later),
            (&says_close, KEEP, &later),
            (&says_close, KEEP, &later),
            (&says_keep_alive, http10, &later),
            (&says_keep_alive, http10, &later),
            (&says_keep_alive, KEEP, &later),
            (&many, KEEP, &later),
            (&many, KEEP, &later),
            (&hello, KEEP, &later),
        ];
        let mut warm = Vec::new();
        for (i, &(res, enc, date)) in steps.iter().enumerate() {
            let mut out = Vec::new();
            let open = encode(res, enc, date, &mut out);
            warm.push((i, out, open));
        }
        for (i, warm_out, warm_open) in warm {
            let (res, enc, date) = steps[i];
            LAST_HEAD.with_borrow_mut(|last| last.len = 0);
            let mut cold = Vec::new();
            let cold_open = encode(res, enc, date, &mut cold);
            assert_eq!(
                String::from_utf8_lossy(&warm_out),
                String::from_utf8_lossy(&cold),
                "step {i}"
            );
            assert_eq!(warm_open, cold_open, "step {i}");
        }
    }

    /// The same, over 2,000 responses drawn at random (a fixed seed) from
    /// statuses, fields (static, owned, `Connection`, server-owned,
    /// invalid), bodies, encodings and two dates.
    #[test]
    fn a_cached_head_is_the_head_it_stands_for_over_random_responses() {
        const STATUSES: [u16; 9] = [200, 200, 201, 204, 304, 404, 101, 500, 99];
        const FIELDS: [(&str, &str); 8] = [
            ("Content-Type", "text/plain"),
            ("Content-Type", "application/json"),
            ("Connection", "close"),
            ("Connection", "keep-alive"),
            ("Content-Length", "5"),
            ("X-Bad", "a\r\nb"),
            ("Cache-Control", "no-store"),
            ("Vary", "Accept"),
        ];
        const BODIES: [&[u8]; 4] = [b"", b"Hello", b"Hello World\n", b"Hello World!\n"];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let dates = [date(), {
            let mut later = DateCache::new();
            later.refresh(UNIX_EPOCH + Duration::from_secs(784_111_778));
            later
        }];
        let mut hits = 0;
        for step in 0..2_000 {
            let mut res = Response::new();
            res.status(STATUSES[next(STATUSES.len())]);
            for _ in 0..next(6) {
                let (name, value) = FIELDS[next(FIELDS.len())];
                if next(8) == 0 {
                    res.header(name.to_owned(), value.to_owned());
                } else {
                    res.header(name, value);
                }
            }
            res.body_static(BODIES[next(BODIES.len())]);
            if next(10) == 0 {
                res.close();
            }
            // The same response a few times, under encodings and dates that
            // change or not: hits and misses both.
            for repeat in 0..1 + next(4) {
                let enc = Encoding {
                    head_request: next(4) == 0,
                    keep_alive: next(5) != 0,
                    http10: next(6) == 0,
                };
                let date = &dates[next(2)];
                let hit = LAST_HEAD.with_borrow(|last| last.matches(&res, enc, date));
                hits += usize::from(hit);
                let mut warm = Vec::new();
                let warm_open = encode(&res, enc, date, &mut warm);
                let remembered = LAST_HEAD.with_borrow(|last| (last.len, last.words));
                LAST_HEAD.with_borrow_mut(|last| last.len = 0);
                let mut cold = Vec::new();
                let cold_open = encode(&res, enc, date, &mut cold);
                assert_eq!(warm, cold, "step {step}.{repeat} (hit: {hit}): {res:?} {enc:?}");
                assert_eq!(warm_open, cold_open, "step {step}.{repeat}");
                // As it was after the warm encode, for the next one.
                LAST_HEAD.with_borrow_mut(|last| (last.len, last.words) = remembered);
            }
        }
        assert!(hits > 200, "only {hits} hits: the cache is hardly exercised");
    }

    fn hello() -> Response {
        let mut res = Response::new();
        res.header("Content-Type", "text/plain").body_static(b"Hello, World!");
        res
    }

    /// Expected wire text: `{D}` stands for the date.
    fn wire(text: &str) -> String {
        text.replace("{D}", DATE)
    }

    #[test]
    fn hello_world() {
        let want = "HTTP/1.1 200 OK\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 13\r\n\
                    Content-Type: text/plain\r\n\r\nHello, World!";
        assert_eq!(encoded(&hello(), KEEP), (wire(want), true));
    }

    #[test]
    fn close_variants_say_close_once() {
        let want = "HTTP/1.1 200 OK\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 13\r\n\
                    Content-Type: text/plain\r\nConnection: close\r\n\r\nHello, World!";
        assert_eq!(encoded(&hello(), CLOSE), (wire(want), false));

        let mut res = hello();
        res.close();
        assert_eq!(encoded(&res, KEEP), (wire(want), false));

        for value in ["close", "Close", "keep-alive, CLOSE"] {
            let mut res = hello();
            res.header("connection", value);
            assert_eq!(encoded(&res, KEEP), (wire(want), false), "{value}");
            assert_eq!(encoded(&res, CLOSE), (wire(want), false), "{value}");
        }

        // Without close, the service's Connection field goes out unchanged...
        let mut res = hello();
        res.header("Connection", "keep-alive");
        let (text, open) = encoded(&res, KEEP);
        assert!(open);
        assert!(text.contains("\r\nConnection: keep-alive\r\n\r\n"), "{text}");
        // ...but gives way when the connection closes anyway.
        assert_eq!(encoded(&res, CLOSE), (wire(want), false));
    }

    #[test]
    fn server_owned_fields_are_dropped() {
        let mut res = Response::new();
        res.header("content-length", "99")
            .header("Transfer-Encoding", "chunked")
            .header("DATE", "yesterday")
            .header("X-A", "1")
            .body("abc");
        let want = "HTTP/1.1 200 OK\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc";
        assert_eq!(encoded(&res, KEEP), (wire(want), true));
    }

    #[test]
    fn head_has_length_but_no_body() {
        let want = "HTTP/1.1 200 OK\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 13\r\n\
                    Content-Type: text/plain\r\n\r\n";
        assert_eq!(encoded(&hello(), HEAD), (wire(want), true));
    }

    #[test]
    fn no_length_no_body() {
        for (status, line) in [(204, "204 No Content"), (304, "304 Not Modified")] {
            let mut res = hello();
            res.status(status);
            let want = format!(
                "HTTP/1.1 {line}\r\nServer: vigil\r\nDate: {{D}}\r\nContent-Type: text/plain\r\n\r\n"
            );
            assert_eq!(encoded(&res, KEEP), (wire(&want), true));
            assert_eq!(encoded(&res, HEAD), (wire(&want), true));
        }
        let mut res = Response::new();
        res.status(101).header("Upgrade", "x").body("ignored");
        let want =
            "HTTP/1.1 101 Switching Protocols\r\nServer: vigil\r\nDate: {D}\r\nUpgrade: x\r\n\
                    Connection: close\r\n\r\n";
        assert_eq!(encoded(&res, KEEP), (wire(want), false));
    }

    #[test]
    fn other_statuses() {
        let mut res = Response::new();
        res.status(404).body_mut().extend_from_slice(b"nope");
        let want =
            "HTTP/1.1 404 Not Found\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 4\r\n\r\nnope";
        assert_eq!(encoded(&res, KEEP), (wire(want), true));
        res.status(299).body_static(b"");
        let want = "HTTP/1.1 299 \r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(encoded(&res, KEEP), (wire(want), true));
    }

    const ERROR_500: &str = "HTTP/1.1 500 Internal Server Error\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 0\r\n\r\n";
    const ERROR_500_CLOSE: &str =
        "HTTP/1.1 500 Internal Server Error\r\nServer: vigil\r\nDate: {D}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

    #[test]
    fn invalid_responses_become_500() {
        for status in [0, 99, 100, 102, 199, 1000, u16::MAX] {
            let mut res = hello();
            res.status(status);
            assert_eq!(encoded(&res, KEEP), (wire(ERROR_500), true), "status {status}");
            assert_eq!(encoded(&res, CLOSE), (wire(ERROR_500_CLOSE), false), "status {status}");
        }
        let bad: &[(&str, &str)] = &[
            ("X-A", "a\r\nSet-Cookie: x"),
            ("X-A", "a\nb"),
            ("X-A", "a\rb"),
            ("X-A", "a\0b"),
            ("X A", "b"),
            ("X-A:", "b"),
            ("", "b"),
            ("X-A\r\n", "b"),
            ("Ü", "b"),
        ];
        for &(name, value) in bad {
            let mut res = hello();
            res.header(name, value);
            assert_eq!(encoded(&res, KEEP), (wire(ERROR_500), true), "{name:?}: {value:?}");
            res.close();
            assert_eq!(encoded(&res, KEEP), (wire(ERROR_500_CLOSE), false), "{name:?}: {value:?}");
        }
        // Tabs and non-ASCII text are fine in values.
        let mut res = Response::new();
        res.header("X-A", "a\tb ü");
        assert!(encoded(&res, KEEP).0.contains("\r\nX-A: a\tb ü\r\n"));
    }

    #[test]
    fn reject() {
        let mut out = Vec::new();
        encode_reject(431, "too many header fields", &date(), &mut out);
        let body = "431 Request Header Fields Too Large: too many header fields\n";
        let want = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nServer: vigil\r\nDate: {DATE}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn reasons() {
        let table = [
            (100, "Continue"),
            (200, "OK"),
            (308, "Permanent Redirect"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (422, "Unprocessable Content"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (501, "Not Implemented"),
            (505, "HTTP Version Not Supported"),
            (306, ""),
            (418, ""),
            (999, ""),
        ];
        for (status, want) in table {
            assert_eq!(reason(status), want, "{status}");
        }
    }

    #[test]
    fn continue_is_interim() {
        assert_eq!(CONTINUE, format!("HTTP/1.1 100 {}\r\n\r\n", reason(100)).as_bytes());
    }

    #[test]
    fn reset_keeps_small_buffers() {
        let mut res = hello();
        res.status(404).header("X", "y").close().body_mut().extend_from_slice(b"more");
        let capacity = res.body_mut().capacity();
        res.reset();
        assert_eq!(
            (res.status, res.headers.len(), res.close, res.body_bytes()),
            (200, 0, false, &b""[..])
        );
        assert_eq!(res.body_mut().capacity(), capacity);
        res.body(vec![0; 64 * 1024 + 1]);
        res.reset();
        assert!(matches!(res.body, Body::Static(b"")), "a large buffer is let go");
    }

    #[test]
    fn http10_keep_alive_is_announced_once() {
        let enc = Encoding { head_request: false, keep_alive: true, http10: true };
        let mut res = Response::new();
        res.header("Connection", "keep-alive").body_static(b"x");
        let (text, open) = encoded(&res, enc);
        assert!(open);
        assert_eq!(text.matches("Connection: keep-alive\r\n").count(), 1, "{text}");
        let (text, open) = encoded(&res, Encoding { keep_alive: false, ..enc });
        assert!(!open);
        assert!(text.contains("Connection: close\r\n") && !text.contains("keep-alive"), "{text}");
    }

    #[test]
    fn static_fields_are_classified_like_any_other() {
        for _ in 0..3 {
            for (name, value) in [
                ("Content-Type", "text/plain"),
                ("content-length", "5"),
                ("Connection", "close"),
                ("X-Bad", "a\r\nb"),
                ("Bad Name", "v"),
            ] {
                let (borrowed_name, borrowed_value) = (Cow::Borrowed(name), Cow::Borrowed(value));
                let owned =
                    field_kind(&Cow::Owned(name.to_string()), &Cow::Owned(value.to_string()));
                assert_eq!(field_kind(&borrowed_name, &borrowed_value), owned, "{name}: {value}");
                assert_eq!(owned, classify(name, value));
            }
        }
    }

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
