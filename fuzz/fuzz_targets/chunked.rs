//! The chunked body decoder: `vigil::__bench::decode_chunked`, which
//! decodes a whole body with a fresh decoder and no body limit, on
//! arbitrary bytes. Feeding one decoder split input is not reachable
//! through that wrapper (the unit tests in src/http/body.rs check it); what
//! is checked here holds for any input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::__bench::decode_chunked;

/// `0\r\n\r\n`: the least framing a complete body carries.
const MIN_FRAMING: usize = 5;

fuzz_target!(|data: &[u8]| {
    let mut body = Vec::new();
    let n = decode_chunked(data, &mut body);
    assert!(n <= data.len(), "consumed {n} of {} bytes", data.len());
    if n == 0 {
        return;
    }
    assert!(n >= body.len() + MIN_FRAMING, "{} body bytes from {n} input bytes", body.len());
    let message = &data[..n];
    // The last chunk (or the last trailer field) then the final CRLF.
    assert!(message.ends_with(b"\r\n\r\n"), "body does not end in CRLF CRLF");

    // Bytes after the body (the next request) play no part: the message
    // alone decodes the same, and no strict prefix of it is complete.
    let mut again = Vec::new();
    assert_eq!(decode_chunked(message, &mut again), n, "message alone consumed differently");
    assert_eq!(again, body, "message alone decoded differently");
    assert_eq!(decode_chunked(&message[..n - 1], &mut again), 0, "complete one byte early");
    assert_eq!(decode_chunked(&message[..n / 2], &mut again), 0, "complete at half its length");
});
