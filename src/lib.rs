//! vigil: a supervised HTTP/1.1 server.
//!
//! One event loop per core, all accepting from one shared socket; a
//! supervisor thread watches every loop's heartbeat and memory and replaces
//! loops that stall, die or bloat, so one runaway handler never takes the
//! server down.
//!
//! # Examples
//!
//! ```no_run
//! use vigil::{Request, Response, Server};
//!
//! let handle = Server::new(|_slot: usize| {
//!     |req: &Request<'_>, res: &mut Response| {
//!         res.header("Content-Type", "text/plain");
//!         res.body(format!("you asked for {}\n", req.path()));
//!     }
//! })
//! .start()
//! .expect("listen on 127.0.0.1:8080");
//! handle.wait();
//! ```
//!
//! # Layout
//!
//! The modules depend on each other in one direction only:
//! `server -> {supervisor, admin, control} -> event_loop -> conn -> http`,
//! all resting on `shared` (state threads share) and `sys` (every libc
//! call). Unsafe code lives in `sys` and `memory` alone.
#![deny(unreachable_pub)]
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

// EPOLLEXCLUSIVE, SCHED_IDLE, accept4 and /proc: the supervision this crate
// does needs Linux.
#[cfg(not(target_os = "linux"))]
compile_error!("vigil runs on Linux only");

mod admin;
pub mod app;
mod config;
mod conn;
mod control;
mod event_loop;
pub mod files;
pub mod forensics;
pub mod handover;
mod http;
#[allow(unsafe_code)]
mod memory;
mod offload;
mod panics;
mod server;
mod service;
mod shared;
pub mod signals;
mod supervisor;
#[allow(unsafe_code)]
mod sys;

pub use config::{
    default_loops, default_stack_signal, parse_duration, parse_size, parse_stack_signal, Config,
    ConfigError,
};
pub use control::{Control, LoopSnapshot, OffloadSnapshot, Snapshot, UnknownSlot};
pub use handover::{InheritError, Inherited};
pub use http::stream::{BodyWriter, STREAM_QUEUE_BYTES};
pub use http::upload::{BodyPolicy, BodyReader, UPLOAD_QUEUE_BYTES};
pub use http::{Finished, Limits, Request, Response, Version, MAX_HEADERS_CAP};
pub use memory::{ArenaStats, ProcessMemory};
pub use panics::quiet_handler_panics;
pub use server::{Server, ServerHandle, StartError};
pub use service::{Service, ServiceFactory};
pub use shared::{HistogramSnapshot, LoopState, SlotCounts};
pub use supervisor::Outcome;

/// Thin wrappers that let `benches/http.rs` reach crate-internal items.
/// Not API: may change or vanish in any release.
#[doc(hidden)]
pub mod __bench {
    use std::mem::MaybeUninit;

    use crate::http::body::ChunkedDecoder;
    use crate::http::date::DateCache;
    use crate::http::{request, response, Limits, MAX_HEADERS_CAP};
    use crate::Response;

    /// Parses one request head with default limits: its length, or 0 when
    /// incomplete or refused.
    pub fn parse_head(buf: &[u8]) -> usize {
        let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
        match request::parse_head(buf, &mut headers, &Limits::default()) {
            Ok(Some(head)) => head.len,
            _ => 0,
        }
    }

    /// Parses `prime` and then `buf` through one head memo, as a loop
    /// parses two heads in a row: whether the memo's answer for `buf` is
    /// the full parse's.
    pub fn head_memo_agrees(prime: &[u8], buf: &[u8]) -> bool {
        use crate::http::head_memo::{both, HeadMemo};
        let limits = Limits::default();
        let mut memo = HeadMemo::default();
        both(&mut memo, prime, &limits);
        let (remembered, full) = both(&mut memo, buf, &limits);
        remembered == full
    }

    /// Decodes a whole chunked body into `body` (cleared first): the bytes
    /// consumed, or 0 when incomplete or refused.
    pub fn decode_chunked(input: &[u8], body: &mut Vec<u8>) -> usize {
        body.clear();
        match ChunkedDecoder::new().decode(input, body, usize::MAX, 4096) {
            Ok(progress) if progress.done => progress.consumed,
            _ => 0,
        }
    }

    /// A response and date cache to encode repeatedly.
    #[derive(Debug)]
    pub struct Encoder {
        res: Response,
        date: DateCache,
    }

    /// Calls `service` for `method path` with `headers`, as a loop would,
    /// then ends the exchange as if the response were written whole (its
    /// `on_finish` hooks run). `res` is reset first.
    pub fn call_and_finish<S: crate::Service>(
        service: &mut S,
        method: &str,
        path: &str,
        headers: &[httparse::Header<'_>],
        res: &mut Response,
    ) {
        let req = crate::Request {
            method,
            path,
            query: None,
            version: crate::Version::Http11,
            headers,
            body: b"",
            params: None,
            route: None,
            socket: None,
            received: Some(std::time::Instant::now()),
            upload: None,
        };
        res.reset();
        service.call(&req, res);
        if !res.on_finish.is_empty() {
            let hooks = std::mem::take(&mut res.on_finish);
            let enc = response::Encoding { head_request: false, keep_alive: true, http10: false };
            let mut finishing = crate::conn::bench_finishing(hooks);
            finishing.describe(res, enc, 100);
            (*finishing).fire(true);
        }
    }

    impl Encoder {
        /// `200`, `Content-Type: text/plain`, body `Hello, World!`.
        pub fn hello_world() -> Encoder {
            let mut res = Response::new();
            res.header("Content-Type", "text/plain").body_static(b"Hello, World!");
            Encoder { res, date: DateCache::new() }
        }

        /// Appends the response to `out`; whether the connection stays open.
        pub fn encode(&self, out: &mut Vec<u8>) -> bool {
            let enc = response::Encoding { head_request: false, keep_alive: true, http10: false };
            response::encode(&self.res, enc, &self.date, out)
        }
    }
}
