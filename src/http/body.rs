//! Chunked body decoding (RFC 9112 section 7.1), incremental: bytes arrive in
//! any split, state is kept between calls.

use super::Reject;

/// Decodes a chunked body; keeps its place between calls.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    // private state
}

/// Progress of [`ChunkedDecoder::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Input bytes consumed by this call (never to be passed again).
    pub(crate) consumed: usize,
    /// The last chunk, trailers and the final CRLF have been read.
    pub(crate) done: bool,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Decodes as much of `input` as it can, appending chunk data to `body`.
    /// Chunk extensions are checked for grammar and ignored; trailers are
    /// read and dropped. Errors: malformed size/framing/bare LF -> 400,
    /// decoded body over `max_body` -> 413, trailer section over
    /// `max_trailer_bytes` -> 431.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
        max_trailer_bytes: usize,
    ) -> Result<Progress, Reject> {
        let _ = (input, body, max_body, max_trailer_bytes);
        todo!()
    }
}
