//! Chunked body decoding (RFC 9112 section 7.1), incremental: bytes arrive in
//! any split, state is kept between calls.

use super::{is_tchar, Reject};

/// Longest chunk-size line (size, extensions, CRLF) we read. The grammar has
/// no bound and extensions are ignored, so without one a client could
/// stream them forever; 4 KiB is far above any real use.
const MAX_SIZE_LINE: usize = 4096;

/// Decodes a chunked body; keeps its place between calls.
#[derive(Debug, Default)]
pub(crate) struct ChunkedDecoder {
    state: State,
    /// Chunk size being read, then data left in the current chunk.
    size: u64,
    /// Bytes of the current chunk-size line so far.
    line_len: usize,
    /// Decoded bytes so far, over all calls.
    total: u64,
    /// Bytes of trailer fields so far (the final CRLF not counted).
    trailer_len: usize,
    /// The current trailer field's name, lowercased, while it fits.
    trailer_name: [u8; FORBIDDEN_TRAILER_MAX],
    trailer_name_len: usize,
}

/// Fields that must not be sent as trailers because they frame or route
/// the message (RFC 9110 6.5.1); accepting them invites request smuggling
/// through an intermediary that merges trailers into the header section.
const FORBIDDEN_TRAILERS: [&[u8]; 6] =
    [b"content-length", b"transfer-encoding", b"host", b"trailer", b"connection", b"te"];

/// Length of the longest name in [`FORBIDDEN_TRAILERS`].
const FORBIDDEN_TRAILER_MAX: usize = 17;

/// Where the decoder is in the grammar:
///
/// ```text
/// chunked-body = *chunk last-chunk trailer-section CRLF
/// chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
/// chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Before the first hex digit of a chunk-size.
    #[default]
    SizeStart,
    /// Within the hex digits.
    Size,
    /// BWS after the size or an extension; only `;` may follow.
    ExtBws,
    /// After `;`, BWS then an extension name.
    ExtNameStart,
    ExtName,
    /// BWS after a name: `=` or `;` may follow.
    ExtNameBws,
    /// After `=`, BWS then a token or quoted-string.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedEscape,
    /// The closing quote was read: `;`, BWS or CR may follow.
    ExtValueEnd,
    /// CR of the size line was read.
    SizeLf,
    /// `size` bytes of chunk data to go.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer field line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final CRLF was read.
    EndLf,
    Done,
}

impl State {
    /// Before the CR of a chunk-size line.
    fn in_size_line(self) -> bool {
        use State::*;
        matches!(
            self,
            SizeStart
                | Size
                | ExtBws
                | ExtNameStart
                | ExtName
                | ExtNameBws
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedEscape
                | ExtValueEnd
        )
    }
}

/// Progress of [`ChunkedDecoder::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Input bytes consumed by this call (never to be passed again).
    pub(crate) consumed: usize,
    /// The last chunk, trailers and the final CRLF have been read.
    pub(crate) done: bool,
}

const BAD_SIZE: Reject = Reject::new(400, "invalid chunk size");
const BAD_EXT: Reject = Reject::new(400, "invalid chunk extension");
const BAD_FRAMING: Reject = Reject::new(400, "invalid chunked framing");
const BAD_TRAILER: Reject = Reject::new(400, "invalid trailer field");
const TOO_LARGE: Reject = Reject::new(413, "chunked body over the body limit");

impl ChunkedDecoder {
    pub(crate) fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Decodes as much of `input` as it can, appending chunk data to `body`.
    /// Chunk extensions are checked for grammar and ignored; trailers are
    /// read and dropped. Errors: malformed size/framing/bare LF -> 400,
    /// decoded body over `max_body` -> 413, trailer section over
    /// `max_trailer_bytes` -> 431.
    ///
    /// Once done, it consumes nothing more: bytes after the body belong to
    /// the next request. After an error the decoder must be dropped.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
        max_trailer_bytes: usize,
    ) -> Result<Progress, Reject> {
        let mut pos = 0;
        while pos < input.len() {
            if self.state == State::Data {
                // Bulk copy; the size was checked against max_body when read.
                let n = usize::try_from(self.size)
                    .map_or(input.len() - pos, |size| size.min(input.len() - pos));
                body.extend_from_slice(&input[pos..pos + n]);
                pos += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if self.state == State::Done {
                break;
            }
            self.step(input[pos], max_body, max_trailer_bytes)?;
            pos += 1;
        }
        Ok(Progress { consumed: pos, done: self.state == State::Done })
    }

    /// Advances over one byte of framing (anything but chunk data).
    fn step(&mut self, b: u8, max_body: usize, max_trailer_bytes: usize) -> Result<(), Reject> {
        use State::*;

        if self.state.in_size_line() {
            self.line_len += 1;
            if self.line_len > MAX_SIZE_LINE {
                return Err(Reject::new(400, "chunk-size line too long"));
            }
        }
        if matches!(self.state, TrailerName | TrailerValue | TrailerLf)
            || (self.state == TrailerStart && b != b'\r')
        {
            self.trailer_len += 1;
            if self.trailer_len > max_trailer_bytes {
                return Err(Reject::new(431, "trailer section too large"));
            }
        }

        self.state = match (self.state, b) {
            (SizeStart | Size, _) if b.is_ascii_hexdigit() => {
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size =
                    self.size.checked_mul(16).and_then(|s| s.checked_add(digit)).ok_or(BAD_SIZE)?;
                // The size only grows with more digits, so refuse as soon as
                // it exceeds what the body may still hold.
                if self.size > (max_body as u64).saturating_sub(self.total) {
                    return Err(TOO_LARGE);
                }
                Size
            }
            (SizeStart, _) => return Err(BAD_SIZE),
            (Size, b'\r') => SizeLf,
            (Size | ExtBws, b' ' | b'\t') => ExtBws,
            (Size | ExtBws | ExtName | ExtNameBws | ExtToken | ExtValueEnd, b';') => ExtNameStart,
            (Size, _) => return Err(BAD_SIZE),
            (ExtBws, _) => return Err(BAD_EXT),

            (ExtNameStart, b' ' | b'\t') => ExtNameStart,
            (ExtNameStart | ExtName, _) if is_tchar(b) => ExtName,
            (ExtName | ExtToken | ExtValueEnd, b'\r') => SizeLf,
            (ExtName | ExtNameBws, b' ' | b'\t') => ExtNameBws,
            (ExtName | ExtNameBws, b'=') => ExtValueStart,
            (ExtValueStart, b' ' | b'\t') => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart | ExtToken, _) if is_tchar(b) => ExtToken,
            (ExtToken | ExtValueEnd, b' ' | b'\t') => ExtBws,
            (ExtQuoted, b'"') => ExtValueEnd,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, _) if is_qdtext(b) => ExtQuoted,
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            (ExtQuotedEscape, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => ExtQuoted,
            (ExtNameStart | ExtName | ExtNameBws | ExtValueStart | ExtToken | ExtQuoted, _)
            | (ExtQuotedEscape | ExtValueEnd, _) => return Err(BAD_EXT),

            (SizeLf, b'\n') => {
                self.line_len = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    self.total += self.size;
                    Data
                }
            }
            (SizeLf, _) => return Err(BAD_FRAMING),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (DataCr | DataLf, _) => return Err(BAD_FRAMING),

            (TrailerStart, b'\r') => EndLf,
            (TrailerStart | TrailerName, _) if is_tchar(b) => {
                if self.state == TrailerStart {
                    self.trailer_name_len = 0;
                }
                if let Some(slot) = self.trailer_name.get_mut(self.trailer_name_len) {
                    *slot = b.to_ascii_lowercase();
                }
                self.trailer_name_len += 1;
                TrailerName
            }
            (TrailerName, b':') => {
                let name = self.trailer_name.get(..self.trailer_name_len);
                if name.is_some_and(|name| FORBIDDEN_TRAILERS.contains(&name)) {
                    return Err(Reject::new(400, "forbidden trailer field"));
                }
                TrailerValue
            }
            (TrailerValue, b'\r') => TrailerLf,
            // field-vchar / SP / HTAB / obs-text
            (TrailerValue, _) if b == b'\t' || (b >= b' ' && b != 0x7f) => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerStart | TrailerName | TrailerValue | TrailerLf, _) => return Err(BAD_TRAILER),
            (EndLf, b'\n') => Done,
            (EndLf, _) => return Err(BAD_FRAMING),

            (Data | Done, _) => unreachable!("decode handles data and the end itself"),
        };
        Ok(())
    }
}

/// qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BODY: usize = 1024;
    const MAX_TRAILER: usize = 64;

    /// Decodes `pieces` in order, feeding each call only the bytes not yet
    /// consumed plus the next piece, as a connection would. Returns the
    /// body and the total bytes consumed once done; `Ok(None)` if not done.
    fn decode_pieces(pieces: &[&[u8]]) -> Result<Option<(Vec<u8>, usize)>, Reject> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending = Vec::new();
        let mut consumed = 0;
        for piece in pieces {
            pending.extend_from_slice(piece);
            let progress = decoder.decode(&pending, &mut body, MAX_BODY, MAX_TRAILER)?;
            pending.drain(..progress.consumed);
            consumed += progress.consumed;
            if progress.done {
                return Ok(Some((body, consumed)));
            }
        }
        Ok(None)
    }

    /// The same result for the whole input, for every split into two
    /// pieces, and for one byte at a time.
    fn decode_every_split(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, Reject> {
        let whole = decode_pieces(&[input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(decode_pieces(&[a, b]), whole, "split at {at}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_pieces(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn decodes() {
        // Each input is consumed up to the pipelined request some carry.
        let table: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", b"hello world"),
            (b"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n", b"01234567890123456789"),
            (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
            (b"5;a\r\nhello\r\n0;b=c\r\n\r\n", b"hello"),
            (b"5 ; a = b ; c=\"q \\\" d\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;a=\"\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nY:\r\n\r\n", b"hello"),
            (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),
        ];
        for &(input, want) in table {
            let consumed = input.len() - if input.ends_with(b"HTTP/1.1\r\n") { 16 } else { 0 };
            let got = decode_every_split(input);
            assert_eq!(
                got,
                Ok(Some((want.to_vec(), consumed))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn waits_for_more() {
        for input in
            [&b""[..], b"5", b"5\r\nhel", b"5\r\nhello\r\n", b"0\r\n", b"0\r\nX: y\r\n", b"0\r\n\r"]
        {
            assert_eq!(decode_every_split(input), Ok(None), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn done_consumes_nothing_more() {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        let input = b"1\r\na\r\n0\r\n\r\nrest";
        let progress = decoder.decode(input, &mut body, MAX_BODY, MAX_TRAILER).unwrap();
        assert_eq!(progress, Progress { consumed: 11, done: true });
        let again = decoder.decode(b"rest", &mut body, MAX_BODY, MAX_TRAILER).unwrap();
        assert_eq!(again, Progress { consumed: 0, done: true });
        assert_eq!(body, b"a");
    }

    #[test]
    fn rejects() {
        let over = format!("{:x}\r\n", MAX_BODY + 1);
        let table: &[(&[u8], u16)] = &[
            (b"\r\n", 400),
            (b"g\r\n", 400),
            (b"-1\r\n", 400),
            (b"0x5\r\n", 400),
            (b" 5\r\n", 400),
            (b"5 \r\nhello\r\n", 400),
            (b"5\nhello\r\n", 400),
            (b"5\r\rhello\r\n", 400),
            (b"5\r\nhello\n0\r\n\r\n", 400),
            (b"5\r\nhelloX\r\n", 400),
            (b"5\r\nhello\rX", 400),
            (b"5;\r\n", 400),
            (b"5;=a\r\n", 400),
            (b"5;a=\r\n", 400),
            (b"5;a b\r\n", 400),
            (b"5;a=b c\r\n", 400),
            (b"5;a=\"b\r\n", 400),
            (b"5;a=\"b\x01\"\r\n", 400),
            (b"5;a=\"b\"c\r\n", 400),
            (b"5;a=@\r\n", 400),
            (b"0\r\n\n", 400),
            (b"0\r\n\r\r", 400),
            (b"0\r\nX : y\r\n\r\n", 400),
            (b"0\r\n y\r\n\r\n", 400),
            (b"0\r\nX\r\n\r\n", 400),
            (b"0\r\nX: y\n\r\n", 400),
            (b"0\r\nX: \x00\r\n\r\n", 400),
            (b"0\r\nX: y\r\r\n", 400),
            // With a 1 KiB limit a long size is over it long before u64 is.
            (b"FFFFFFFFFFFFFFFFF\r\n", 413),
            (over.as_bytes(), 413),
        ];
        for &(input, status) in table {
            let got = decode_every_split(input);
            assert_eq!(
                got.map_err(|r| r.status),
                Err(status),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn body_limit_counts_all_chunks() {
        let mut input = Vec::new();
        for _ in 0..4 {
            input.extend_from_slice(b"100\r\n");
            input.extend_from_slice(&[b'x'; 256]);
            input.extend_from_slice(b"\r\n");
        }
        let mut exact = input.clone();
        exact.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_pieces(&[&exact]).unwrap().unwrap().0.len(), MAX_BODY);
        input.extend_from_slice(b"1\r\n");
        assert_eq!(decode_pieces(&[&input]).unwrap_err().status, 413);
    }

    #[test]
    fn size_overflow_is_400() {
        let mut decoder = ChunkedDecoder::new();
        let result = decoder.decode(b"10000000000000000\r\n", &mut Vec::new(), usize::MAX, 0);
        assert_eq!(result.unwrap_err().status, 400);
        let mut decoder = ChunkedDecoder::new();
        let result = decoder.decode(b"FFFFFFFFFFFFFFFF", &mut Vec::new(), usize::MAX, 0);
        assert_eq!(result, Ok(Progress { consumed: 16, done: false }));
    }

    #[test]
    fn long_size_line_is_400() {
        let mut input = vec![b'0'; MAX_SIZE_LINE / 2]; // leading zeros are fine...
        input.extend_from_slice(b"5;a\r\n");
        assert_eq!(decode_pieces(&[&input]), Ok(None));
        let mut long = b"5;a=".to_vec();
        long.resize(MAX_SIZE_LINE + 1, b'b'); // ...but not without end
        assert_eq!(decode_pieces(&[&long]).unwrap_err().status, 400);
    }

    #[test]
    fn forbidden_trailers_are_refused() {
        for name in ["Content-Length", "transfer-encoding", "HOST", "Trailer"] {
            let input = format!("1\r\na\r\n0\r\n{name}: 1\r\n\r\n");
            let mut body = Vec::new();
            let result = ChunkedDecoder::new().decode(input.as_bytes(), &mut body, 100, 100);
            assert_eq!(
                result.map(|p| p.done),
                Err(Reject::new(400, "forbidden trailer field")),
                "{name}"
            );
        }
        let input = b"1\r\na\r\n0\r\nContent-Lengthy: 1\r\nX-Host: 2\r\n\r\n";
        let mut body = Vec::new();
        let progress = ChunkedDecoder::new().decode(input, &mut body, 100, 100).unwrap();
        assert!(progress.done, "names that only look alike are fine");
    }

    #[test]
    fn trailer_limit() {
        // "X: " + 58 x 'y' + CRLF = 63 bytes, within 64.
        let mut ok = b"0\r\nX: ".to_vec();
        ok.resize(ok.len() + 58, b'y');
        ok.extend_from_slice(b"\r\n\r\n");
        assert!(decode_every_split(&ok).unwrap().is_some());
        let mut over = b"0\r\nX: ".to_vec();
        over.resize(over.len() + 60, b'y');
        over.extend_from_slice(b"\r\n\r\n");
        assert_eq!(decode_every_split(&over).unwrap_err().status, 431);
    }

    /// Random framing bytes: never a panic, never more consumed than given,
    /// never more body than allowed. A cheap stand-in for a fuzzer.
    #[test]
    fn random_input_never_panics() {
        let alphabet = b"0123456789abcdefABCDEFxX\r\n;= \t\"\\:";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = next() as usize % 40;
            let input: Vec<u8> =
                (0..len).map(|_| alphabet[next() as usize % alphabet.len()]).collect();
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            if let Ok(progress) = decoder.decode(&input, &mut body, 64, 16) {
                assert!(progress.consumed <= input.len());
                assert!(body.len() <= 64);
            }
        }
    }
}
