//! Request heads: parse with httparse, then validate framing, Host and the
//! rest of RFC 9112 section 2-7 that httparse leaves to its caller.

use std::mem::MaybeUninit;

use super::{Limits, Reject};

/// HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
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
    let _ = (buf, headers, limits);
    todo!()
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

    /// The body, de-chunked.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}
