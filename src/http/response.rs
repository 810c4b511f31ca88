//! Responses: what a service fills in, and its encoding on the wire.

use std::borrow::Cow;

use super::date::DateCache;

/// The response a service fills in. One is reused per loop, reset between
/// requests, so a hello world allocates nothing.
#[derive(Debug)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
    pub(crate) body: Body,
    /// The service asked for the connection to close after this response.
    pub(crate) close: bool,
}

#[derive(Debug)]
pub(crate) enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

impl Response {
    /// `200`, no headers, empty body.
    pub fn new() -> Response {
        Response { status: 200, headers: Vec::new(), body: Body::Static(b""), close: false }
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
        self.body = Body::Static(body);
        self
    }

    /// Sets the body.
    pub fn body(&mut self, body: impl Into<Vec<u8>>) -> &mut Self {
        self.body = Body::Owned(body.into());
        self
    }

    /// The body as a growable buffer, for writing into it.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        if let Body::Static(bytes) = self.body {
            self.body = Body::Owned(bytes.to_vec());
        }
        match &mut self.body {
            Body::Owned(vec) => vec,
            Body::Static(_) => unreachable!("replaced just above"),
        }
    }

    /// Asks for the connection to be closed after this response.
    pub fn close(&mut self) -> &mut Self {
        self.close = true;
        self
    }

    pub fn status_code(&self) -> u16 {
        self.status
    }

    pub fn body_bytes(&self) -> &[u8] {
        match &self.body {
            Body::Static(bytes) => bytes,
            Body::Owned(vec) => vec,
        }
    }

    /// Back to `Response::new()`, keeping allocated capacity.
    pub(crate) fn reset(&mut self) {
        self.status = 200;
        self.headers.clear();
        self.close = false;
        match &mut self.body {
            Body::Owned(vec) if vec.capacity() <= 64 * 1024 => vec.clear(),
            body => *body = Body::Static(b""),
        }
    }
}

/// How to frame one response on the wire.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Encoding {
    /// A HEAD request: headers as for GET, no body bytes.
    pub(crate) head_request: bool,
    /// Keep the connection open afterwards; `false` adds `Connection: close`.
    pub(crate) keep_alive: bool,
}

/// Appends `res` to `out` as an HTTP/1.1 response with `Server`, `Date`,
/// `Content-Length` (none for 1xx/204/304), the service's headers and
/// (unless HEAD/204/304) the body. Returns whether the connection stays open
/// (`false` when `enc.keep_alive` is false or the service asked to close).
/// An invalid response (bad status, CR/LF/NUL in a header) is replaced by
/// a 500 and logged.
pub(crate) fn encode(res: &Response, enc: Encoding, date: &DateCache, out: &mut Vec<u8>) -> bool {
    let _ = (res, enc, date, out);
    todo!()
}

/// Appends an error response for a refused request: `status`, a short
/// text/plain body naming `why`, and `Connection: close`.
pub(crate) fn encode_reject(status: u16, why: &str, date: &DateCache, out: &mut Vec<u8>) {
    let _ = (status, why, date, out);
    todo!()
}

/// The interim response to `Expect: 100-continue`.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase for `status` ("" for unknown codes).
pub(crate) fn reason(status: u16) -> &'static str {
    let _ = status;
    todo!()
}
