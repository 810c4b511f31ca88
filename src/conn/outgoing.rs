//! A response body on its way out after its head: a stream taken from its
//! producer's queue as the client's socket takes it, and framed; or part
//! of a file, sent with `sendfile(2)` a slice at a time.

use std::time::Instant;

use super::finish::Finishing;
use crate::http::response::{BodyFraming, Source};
use crate::http::stream::End;
use crate::sys::{self, RawSocket};

/// One body, the front of its connection's response queue.
#[derive(Debug)]
pub(crate) struct Outgoing {
    source: Source,
    /// Mail about this stream carries it (connection keys are reused).
    pub(crate) id: u64,
    framing: BodyFraming,
    pub(crate) keep_alive: bool,
    pub(crate) finish: Option<Box<Finishing>>,
    body_bytes: u64,
    wire_bytes: u64,
    /// Past it the stream is cut: the producer's or the client's time ran
    /// out (see `Conn::flush_streaming`).
    pub(crate) deadline: Instant,
}

/// What [`Outgoing::pump`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// Nothing to send yet: the producer's next write brings mail.
    Idle,
    /// The socket is full (a file): its writable event comes back.
    Blocked,
    /// This many bytes of body were framed into the output.
    Bytes(usize),
    /// The body is whole and framed (its end included).
    Done,
    /// The producer ended early or wrote past its length: the connection
    /// must close, without the body's end.
    Cut,
}

impl Outgoing {
    pub(crate) fn new(
        source: Source,
        id: u64,
        framing: BodyFraming,
        keep_alive: bool,
        finish: Option<Box<Finishing>>,
        deadline: Instant,
    ) -> Outgoing {
        // A body delimited by the close ends the connection.
        let keep_alive = keep_alive && framing != BodyFraming::UntilClose;
        Outgoing { source, id, framing, keep_alive, finish, body_bytes: 0, wire_bytes: 0, deadline }
    }

    pub(crate) fn is_file(&self) -> bool {
        matches!(self.source, Source::File(_))
    }

    /// Sends up to about `room` bytes: a stream's framed into `out`, a
    /// file's straight to `socket` (with `out` empty: everything before it
    /// is written).
    pub(crate) fn pump(&mut self, room: usize, out: &mut Vec<u8>, socket: RawSocket) -> Pumped {
        let stream = match &mut self.source {
            Source::Stream(stream) => stream,
            Source::File(file) => {
                debug_assert!(out.is_empty(), "a file goes out after everything before it");
                if file.len == 0 {
                    return Pumped::Done;
                }
                let count = usize::try_from(file.len).unwrap_or(usize::MAX).min(room);
                return match sys::sendfile(socket.0, &file.file, &mut file.offset, count) {
                    // The file is shorter than it was: the client must
                    // not take what it got for the whole.
                    Ok(0) => Pumped::Cut,
                    Ok(sent) => {
                        file.len -= sent as u64;
                        self.body_bytes += sent as u64;
                        self.wire_bytes += sent as u64;
                        if file.len == 0 {
                            Pumped::Done
                        } else {
                            Pumped::Bytes(sent)
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Pumped::Blocked,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => Pumped::Bytes(0),
                    Err(err) => {
                        log::debug!("sendfile failed: {err}; closing");
                        Pumped::Cut
                    }
                };
            }
        };
        let start = out.len();
        let mut overrun = false;
        let framing = &mut self.framing;
        let taken = stream.take(room, |chunk| match framing {
            BodyFraming::Chunked => {
                chunk_size_line(out, chunk.len());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Length(left) => {
                let fits = chunk.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                out.extend_from_slice(&chunk[..fits]);
                *left -= fits as u64;
                overrun |= fits < chunk.len();
            }
            BodyFraming::UntilClose => out.extend_from_slice(chunk),
        });
        self.body_bytes += taken.bytes as u64;
        let result = if overrun {
            log::warn!("a streamed response's producer wrote past its length; closing after it");
            self.keep_alive = false;
            Pumped::Done
        } else {
            match (taken.end, self.framing) {
                (None, _) if taken.bytes == 0 => Pumped::Idle,
                (None, _) => Pumped::Bytes(taken.bytes),
                (Some(End::Finished), BodyFraming::Chunked) => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    Pumped::Done
                }
                (Some(End::Finished), BodyFraming::Length(0) | BodyFraming::UntilClose) => {
                    Pumped::Done
                }
                // Short of its length: the client must see it cut.
                (Some(End::Finished), BodyFraming::Length(_)) | (Some(End::Aborted), _) => {
                    Pumped::Cut
                }
            }
        };
        self.wire_bytes += (out.len() - start) as u64;
        result
    }

    /// The hooks, told what the body added.
    pub(crate) fn take_finish(&mut self) -> Option<Box<Finishing>> {
        let mut finish = self.finish.take()?;
        finish.add_body(self.body_bytes, self.wire_bytes);
        Some(finish)
    }
}

/// `{len:x}\r\n`.
fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        out.push(HEX[(len >> (shift * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const NO_SOCKET: RawSocket = RawSocket(-1);

    fn outgoing(framing: BodyFraming) -> (Outgoing, crate::http::stream::BodyWriter) {
        let (stream, writer) = crate::http::stream::StreamBody::new(None);
        let source = Source::Stream(Box::new(stream));
        (Outgoing::new(source, 1, framing, true, None, Instant::now()), writer)
    }

    #[test]
    fn chunks_are_framed_and_the_end_is_the_zero_chunk() {
        let (mut body, mut writer) = outgoing(BodyFraming::Chunked);
        let mut out = Vec::new();
        assert_eq!(body.pump(1 << 20, &mut out, NO_SOCKET), Pumped::Idle);
        writer.write_all(&[b'a'; 26]).unwrap();
        assert_eq!(body.pump(1 << 20, &mut out, NO_SOCKET), Pumped::Bytes(26));
        writer.finish().unwrap();
        assert_eq!(body.pump(1 << 20, &mut out, NO_SOCKET), Pumped::Done);
        let mut expected = b"1a\r\n".to_vec();
        expected.extend_from_slice(&[b'a'; 26]);
        expected.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expected);
        assert!(body.keep_alive);
    }

    #[test]
    fn a_sized_body_finished_short_is_cut_and_one_past_its_length_closes() {
        let (mut body, mut writer) = outgoing(BodyFraming::Length(10));
        writer.write_all(b"12345").unwrap();
        writer.finish().unwrap();
        let mut out = Vec::new();
        assert_eq!(body.pump(1 << 20, &mut out, NO_SOCKET), Pumped::Cut);

        let (mut body, mut writer) = outgoing(BodyFraming::Length(3));
        writer.write_all(b"12345").unwrap();
        let mut out = Vec::new();
        assert_eq!(body.pump(1 << 20, &mut out, NO_SOCKET), Pumped::Done);
        assert_eq!(out, b"123");
        assert!(!body.keep_alive);
    }

    #[test]
    fn an_abandoned_writer_cuts_the_body() {
        let (mut body, writer) = outgoing(BodyFraming::Chunked);
        drop(writer);
        assert_eq!(body.pump(1 << 20, &mut Vec::new(), NO_SOCKET), Pumped::Cut);
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex_without_leading_zeros() {
        for (len, line) in [(1, "1\r\n"), (15, "f\r\n"), (16, "10\r\n"), (65536, "10000\r\n")] {
            let mut out = Vec::new();
            chunk_size_line(&mut out, len);
            assert_eq!(out, line.as_bytes());
        }
    }
}
