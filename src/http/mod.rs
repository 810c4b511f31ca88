//! HTTP/1.1 message handling: request heads (httparse plus the RFC 9112
//! checks httparse leaves to its caller), body framing, response encoding
//! and the cached `Date` header.
//!
//! Nothing here does I/O; `conn.rs` feeds bytes in and writes bytes out.

pub(crate) mod body;
pub(crate) mod date;
pub(crate) mod file;
pub(crate) mod head_memo;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod stream;
pub(crate) mod upload;

pub use request::{Request, Version};
pub use response::{Finished, Response};

/// Limits on what a client may send, all enforced before the service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus header fields, in bytes (over it: 431, or 414 when
    /// the request line alone is over it).
    pub max_head_bytes: usize,
    /// Number of header fields (over it: 431). At most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
    /// Decoded body bytes (over it: 413, sent before the body is read).
    pub max_body_bytes: usize,
}

/// Upper bound for [`Limits::max_headers`]: the header array lives on the
/// loop's stack (256 x 32 bytes, uninitialised until httparse fills it).
pub const MAX_HEADERS_CAP: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: 8 * 1024, max_headers: 100, max_body_bytes: 1024 * 1024 }
    }
}

/// Why a request was refused: the status to answer with before closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    /// Short reason for the log and the plain-text body.
    pub(crate) why: &'static str,
}

impl Reject {
    pub(crate) const fn new(status: u16, why: &'static str) -> Reject {
        Reject { status, why }
    }
}

/// tchar (RFC 9110 5.6.2): the bytes of a token (method, field name, ...).
///
/// A table: one load per byte, where the comparisons cost 11 instructions
/// a byte in the head memo's request-line scan (`make bench-instructions`).
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

static TCHAR: [bool; 256] = alphanumeric_or(b"!#$%&'*+-.^_`|~");

/// A byte-class table: ASCII letters and digits, and the bytes of `extra`.
const fn alphanumeric_or(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}
