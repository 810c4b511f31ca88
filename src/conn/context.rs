//! The part of a loop every one of its connections works with: the
//! service, the output buffer, the clock and the heartbeat.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::http::date::DateCache;
use crate::http::head_memo::HeadMemo;
use crate::http::request::Head;
use crate::http::Limits;
use crate::offload::{Mail, Pool};
use crate::shared::{lock, panic_message, Fate, LoopShared, ServerShared};
use crate::{Request, Response, Service, ServiceFactory};

/// Per-loop state a connection works with. Owned by the loop, lent to one
/// connection at a time.
pub(crate) struct LoopContext<F: ServiceFactory> {
    pub(crate) factory: Arc<F>,
    pub(crate) service: F::Service,
    /// Reused for every request: reset, not reallocated.
    pub(crate) response: Response,
    pub(crate) date: DateCache,
    /// The last request head's header block, so a client that repeats it
    /// (most do) costs a compare instead of a header parse.
    pub(crate) head_memo: HeadMemo,
    pub(crate) limits: Limits,
    /// Pass `CONNECT` to the service (otherwise 501).
    pub(crate) allow_connect: bool,
    pub(crate) header_timeout: Duration,
    /// Bytes per second a request body must arrive at, at least (0: off).
    pub(crate) min_receive_rate: u64,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) stream_idle_timeout: Duration,
    pub(crate) send_timeout: Duration,
    /// The loop's clock, read once per wake-up.
    pub(crate) now: Instant,
    /// Heartbeat progress (see `shared::Heartbeat`).
    pub(crate) progress: u64,
    /// Requests completed and not yet added to the shared counter.
    pub(crate) unpublished_requests: u64,
    pub(crate) shared: Arc<LoopShared>,
    /// Responses get `Connection: close` while the loop drains.
    pub(crate) draining: bool,
    /// The supervisor gave up on this loop while a handler ran.
    pub(crate) abandoned: bool,
    /// The supervisor handed this loop off: a fresh loop serves the slot,
    /// this one finishes what it holds.
    pub(crate) handed_off: bool,
    /// Responses encoded during the current event, written in one go.
    pub(crate) out: Vec<u8>,
    pub(crate) offload: Arc<Pool>,
    /// Where the pool and streams tell this loop of results and bytes, and
    /// how they wake it.
    pub(crate) mail: Sender<Mail>,
    pub(crate) waker: Arc<mio::Waker>,
    pub(crate) next_job_id: u64,
    /// Which handler panics get a log line.
    pub(crate) panic_log: crate::panics::PanicLog,
    /// What the whole server shares (the handoff histogram, for one).
    pub(crate) server: Arc<ServerShared>,
}

/// A handler's panic, caught.
pub(crate) type Panic = Box<dyn std::any::Any + Send>;

impl<F: ServiceFactory> LoopContext<F> {
    /// Calls the service for `req` into `self.response` (reset first),
    /// catching a panic, and counts the request as progress.
    ///
    /// Afterwards `self.abandoned` tells whether the supervisor gave the
    /// loop up meanwhile: then the response has nowhere to go.
    pub(crate) fn call_service(&mut self, req: &Request<'_>) -> Result<(), Panic> {
        self.shared.current_request.record(req.method, req.path);
        self.response.reset();
        let service = &mut self.service;
        let response = &mut self.response;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| service.call(req, response)));
        self.progress += 1;
        self.shared.heartbeat.beat(self.progress, true);
        self.unpublished_requests += 1;
        match self.shared.fate() {
            Fate::Serving => {}
            Fate::HandedOff => self.note_handed_off(),
            Fate::Abandoned => self.abandoned = true,
        }
        if self.handed_off {
            self.shared.counters.requests_after_handoff.fetch_add(1, Relaxed);
        }
        outcome
    }

    /// A new id for offloaded work or a body, unique within this loop.
    pub(crate) fn take_job_id(&mut self) -> u64 {
        let id = self.next_job_id;
        self.next_job_id += 1;
        id
    }

    /// How a body's other side (a producer, a reader) wakes this loop for
    /// connection `conn`'s body `id`.
    pub(crate) fn notify(&self, conn: usize, id: u64) -> crate::http::stream::Notify {
        crate::http::stream::Notify { mail: self.mail.clone(), waker: self.waker.clone(), conn, id }
    }

    /// The service's policy for the body of `req`, whose head is in.
    pub(crate) fn ask_body_policy(
        &mut self,
        req: &Request<'_>,
    ) -> Result<Option<crate::BodyPolicy>, Panic> {
        let service = &mut self.service;
        panic::catch_unwind(AssertUnwindSafe(|| service.body_policy(req)))
    }

    /// The loop learns it was handed off (after a service call, or before
    /// it polls again). The first time, the request that caused it has
    /// just finished: its duration goes to the histogram.
    pub(crate) fn note_handed_off(&mut self) {
        if self.handed_off {
            return;
        }
        self.handed_off = true;
        let started = *lock(&self.shared.slow_request_started);
        if let Some(started) = started {
            self.server.handoff_durations.record(started.elapsed());
        }
    }

    /// Logs a handler's panic and rebuilds the service: the instance may
    /// be half-updated, and a fresh one is the safe state. If the factory
    /// itself panics, the loop dies and the supervisor respawns it.
    pub(crate) fn handler_panicked(&mut self, method: &str, path: &str, payload: &Panic) {
        let location = crate::panics::take_location();
        if let Some(suppressed) = self.panic_log.admit(Instant::now()) {
            log::error!(
                "loop {} handler panicked method={} path={} panic={:?} at={} suppressed={suppressed}; answered 500, service rebuilt",
                self.shared.name(),
                method,
                path,
                panic_message(payload.as_ref()),
                location.as_deref().unwrap_or("?"),
            );
        }
        self.shared.counters.handler_panics.fetch_add(1, Relaxed);
        self.service = self.factory.new_service(self.shared.slot);
    }

    /// Whether the response to `head` may leave the connection open, as
    /// far as the request and the loop's state go (the service may still
    /// close it).
    pub(crate) fn keeps_alive(&self, head: &Head<'_, '_>) -> bool {
        // The flag, not only `self.draining`: a drain that began while the
        // handler ran must already close this connection.
        head.keep_alive && !self.draining && !self.shared.draining.load(Relaxed)
    }

    /// Counts a request refused before the service ran. A refusal is
    /// progress too: a flood of bad requests is not a stuck handler.
    pub(crate) fn count_rejected(&mut self) {
        self.shared.counters.rejected.fetch_add(1, Relaxed);
        self.progress += 1;
        self.shared.heartbeat.beat(self.progress, true);
    }
}
