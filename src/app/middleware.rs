//! Middleware that ships with vigil: request ids, CORS, and a time limit
//! for offloaded work. The access log is in [`super::access_log`].

use std::borrow::Cow;
use std::time::Duration;

use super::{Middleware, Next};
use crate::{Request, Response};

/// Gives every response an `X-Request-Id`: the client's, when it sent a
/// valid one (1 to 128 of `A-Z a-z 0-9 - _ . :`), otherwise a new one
/// (16 hex digits: a random 32-bit prefix per loop and a 32-bit counter,
/// so unique in practice, not by construction).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestId;

/// The header field [`RequestId`] reads and sets.
pub const REQUEST_ID: &str = "X-Request-Id";

/// One loop's id source.
#[derive(Debug)]
pub struct RequestIdState {
    prefix: u64,
    counter: u64,
}

impl Middleware for RequestId {
    type State = RequestIdState;

    fn state(&self, slot: usize) -> RequestIdState {
        // Different for each loop and each process start: the clock's
        // nanoseconds, the pid and the slot, mixed.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = now ^ (u64::from(std::process::id()) << 32) ^ (slot as u64).rotate_left(48);
        RequestIdState { prefix: mix(seed) & 0xffff_ffff_0000_0000, counter: 0 }
    }

    fn call(
        &self,
        state: &mut RequestIdState,
        req: &Request<'_>,
        res: &mut Response,
        next: Next<'_>,
    ) {
        let id = match req.header(REQUEST_ID).and_then(valid_request_id) {
            Some(theirs) => Cow::Owned(theirs.to_string()),
            None => {
                state.counter = state.counter.wrapping_add(1);
                Cow::Owned(hex16(state.prefix | (state.counter & 0xffff_ffff)))
            }
        };
        res.header(REQUEST_ID, id);
        next.run(req, res);
    }
}

/// `value` as 16 lowercase hex digits, eight bytes at a time (`format!`
/// made the middleware cost 10 ns more a request, a digit at a time 5 ns).
fn hex16(value: u64) -> String {
    // Each nibble into a byte of its own, the lowest nibble lowest.
    let mut x = u128::from(value);
    x = (x & 0xffff_ffff) | (x & 0xffff_ffff_0000_0000) << 32;
    x = (x & 0x0000_ffff_0000_0000_0000_ffff) | (x & 0xffff_0000_0000_0000_ffff_0000) << 16;
    x = (x & 0x00ff_0000_00ff_0000_00ff_0000_00ff)
        | (x & 0xff00_0000_ff00_0000_ff00_0000_ff00) << 8;
    x = (x & 0x000f_000f_000f_000f_000f_000f_000f_000f)
        | (x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4;
    // To ASCII: '0' + n, and 39 more ('a' - '9' - 1) where n > 9.
    const ONES: u128 = u128::MAX / 0xff;
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    let digits = (x + 0x30 * ONES + letters * 39).to_be_bytes();
    // ASCII by construction: the fallback is never taken.
    String::from(std::str::from_utf8(&digits).unwrap_or_default())
}

/// A request id a client may choose: short, and nothing a log or a header
/// could be confused by.
fn valid_request_id(value: &[u8]) -> Option<&str> {
    let ok = (1..=128).contains(&value.len())
        && value.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

/// splitmix64's finalizer: spreads the seed's bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Cross-origin resource sharing: answers preflight requests itself (204,
/// before any route's 405), and marks the responses to allowed origins.
#[derive(Clone, Debug)]
pub struct Cors {
    origins: Origins,
    methods: String,
    headers: String,
    max_age: Option<Duration>,
    credentials: bool,
}

#[derive(Clone, Debug)]
enum Origins {
    Any,
    List(Vec<String>),
}

impl Cors {
    /// Any origin (`Access-Control-Allow-Origin: *`, no credentials).
    pub fn any_origin() -> Cors {
        Cors::with(Origins::Any)
    }

    /// Only these origins (`https://example.com`), echoed back with `Vary:
    /// Origin`.
    pub fn origins(origins: impl IntoIterator<Item = impl Into<String>>) -> Cors {
        Cors::with(Origins::List(origins.into_iter().map(Into::into).collect()))
    }

    fn with(origins: Origins) -> Cors {
        Cors {
            origins,
            methods: "GET, HEAD, POST, PUT, PATCH, DELETE".into(),
            headers: "Content-Type, Authorization".into(),
            max_age: Some(Duration::from_secs(600)),
            credentials: false,
        }
    }

    /// The methods a preflight allows (`Access-Control-Allow-Methods`).
    pub fn allow_methods(mut self, methods: &[&str]) -> Cors {
        self.methods = methods.join(", ");
        self
    }

    /// The request headers a preflight allows.
    pub fn allow_headers(mut self, headers: &[&str]) -> Cors {
        self.headers = headers.join(", ");
        self
    }

    /// How long a browser may cache a preflight answer (`None`: not said).
    pub fn max_age(mut self, max_age: Option<Duration>) -> Cors {
        self.max_age = max_age;
        self
    }

    /// Allow credentials (cookies): only with a list of origins, since the
    /// Fetch standard forbids `*` with them.
    pub fn allow_credentials(mut self) -> Cors {
        self.credentials = matches!(self.origins, Origins::List(_));
        self
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allowed(&self, origin: &str) -> Option<Cow<'static, str>> {
        match &self.origins {
            Origins::Any => Some(Cow::Borrowed("*")),
            Origins::List(list) => {
                list.iter().any(|o| o == origin).then(|| Cow::Owned(origin.to_string()))
            }
        }
    }
}

impl Middleware for Cors {
    type State = ();

    fn state(&self, _slot: usize) {}

    fn call(&self, _state: &mut (), req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        // The answer depends on Origin whenever it is echoed: said on every
        // response (with none too), or a shared cache could give a
        // response without CORS fields to a cross-origin page.
        if matches!(self.origins, Origins::List(_)) {
            res.header("Vary", "Origin");
        }
        let origin = req.header("Origin").and_then(|o| std::str::from_utf8(o).ok());
        let Some(origin) = origin else {
            return next.run(req, res); // not a cross-origin request
        };
        let allowed = self.allowed(origin);
        let preflight =
            req.method() == "OPTIONS" && req.header("Access-Control-Request-Method").is_some();
        if preflight {
            // Answered here: a route without OPTIONS must not turn a
            // preflight into a 405. A refused origin gets no CORS fields,
            // which is how a browser is told no.
            res.status(204);
            if let Some(allowed) = allowed {
                res.header("Access-Control-Allow-Origin", allowed)
                    .header("Access-Control-Allow-Methods", self.methods.clone())
                    .header("Access-Control-Allow-Headers", self.headers.clone());
                if let Some(max_age) = self.max_age {
                    res.header("Access-Control-Max-Age", max_age.as_secs().to_string());
                }
                if self.credentials {
                    res.header("Access-Control-Allow-Credentials", "true");
                }
            }
            return;
        }
        if let Some(allowed) = allowed {
            res.header("Access-Control-Allow-Origin", allowed);
            if self.credentials {
                res.header("Access-Control-Allow-Credentials", "true");
            }
        }
        next.run(req, res);
    }
}

/// Offloaded work that has not finished in this long is answered 503 (its
/// result is dropped when it comes). See [`Response::offload_timeout`].
#[derive(Clone, Copy, Debug)]
pub struct OffloadTimeout(pub Duration);

impl Middleware for OffloadTimeout {
    type State = ();

    fn state(&self, _slot: usize) {}

    fn call(&self, _state: &mut (), req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        res.offload_timeout(self.0);
        next.run(req, res);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_16_hex_digits() {
        assert_eq!(hex16(0x0123_4567_89ab_cdef), "0123456789abcdef");
        assert_eq!(hex16(10), "000000000000000a");
        assert_eq!(hex16(u64::MAX), "ffffffffffffffff");
        assert_eq!(hex16(0xfedc_ba98_7654_3210), "fedcba9876543210");
    }

    #[test]
    fn request_ids_from_clients_are_kept_only_when_harmless() {
        assert_eq!(valid_request_id(b"abc-123_x.y:z"), Some("abc-123_x.y:z"));
        for bad in [&b""[..], b"a b", b"a\"b", b"a\r\nX: y", &[b'a'; 129]] {
            assert_eq!(valid_request_id(bad), None, "{bad:?}");
        }
    }
}
