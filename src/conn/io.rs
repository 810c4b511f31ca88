//! Socket reads and writes for a connection, with every error sorted once
//! (see [`sort_io_error`]).

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::http::date::DateCache;
use crate::http::response;
use crate::sys::{sort_io_error, IoVerdict};

/// What a read found.
pub(super) enum ReadResult {
    /// The socket is empty for now.
    Drained,
    /// The buffer filled up: there may be more.
    More,
    /// The client closed its side.
    Eof,
}

/// One read; `Ok(None)` when the socket has nothing for now.
pub(crate) fn read(mut stream: impl Read, buf: &mut [u8]) -> Result<Option<usize>, IoVerdict> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(err) => match sort_io_error(&err) {
                IoVerdict::Retry => continue,
                IoVerdict::Wait => return Ok(None),
                verdict => return Err(verdict),
            },
        }
    }
}

/// Writes as much of `buf` as the socket takes; `Ok(n)` with `n < len`
/// means it would block.
pub(crate) fn write_nonblocking(mut stream: impl Write, buf: &[u8]) -> Result<usize, IoVerdict> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(IoVerdict::PeerGone),
            Ok(n) => written += n,
            Err(err) => match sort_io_error(&err) {
                IoVerdict::Retry => {}
                IoVerdict::Wait => break,
                verdict => return Err(verdict),
            },
        }
    }
    Ok(written)
}

/// Answers a connection accepted over the connection limit, best effort.
///
/// The client has often sent its request by the time it is accepted: that
/// is read and dropped before the close, since closing with unread input
/// resets the connection and can destroy the 503 before the client reads it.
pub(crate) fn refuse_over_limit(stream: &TcpStream, why: &str, date: &DateCache) {
    let mut out = Vec::with_capacity(256);
    response::encode_reject(503, why, date, &mut out);
    let _ = write_nonblocking(stream, &out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut discard = [0u8; 4096];
    for _ in 0..4 {
        match read(stream, &mut discard) {
            Ok(Some(n)) if n > 0 => {}
            _ => break,
        }
    }
}
