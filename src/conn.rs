//! One connection: read -> parse -> dispatch to the service -> write.
//!
//! Reads go into the loop's scratch buffer and are parsed in place; only
//! the bytes of an incomplete request are copied into the connection, and
//! responses are encoded into the loop's output buffer and copied into the
//! connection only when the socket would block. So an idle keep-alive
//! connection holds no buffer at all.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use mio::net::TcpStream;

use crate::http::body::ChunkedDecoder;
use crate::http::date::DateCache;
use crate::http::request::{parse_head, Framing, Head};
use crate::http::response::{self, Encoding, CONTINUE};
use crate::http::{Limits, Reject, MAX_HEADERS_CAP};
use crate::offload::{Completion, Job, Pool};
use crate::shared::{CleanFlag, LoopShared};
use crate::sys::{sort_io_error, IoVerdict};
use crate::{Request, Response, Service, ServiceFactory};

/// Reads per readiness event before the connection yields to the others
/// of its loop: one client flooding pipelined requests cannot starve them.
const READ_BUDGET: usize = 16;

/// Stop reading from a client that does not read its responses once this
/// much output is waiting for it.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// Growth step of a connection's own buffer while it holds a partial request.
const SLOW_READ_CHUNK: usize = 16 * 1024;

/// Responses a connection may have waiting behind an offloaded one before
/// it stops reading more requests.
const MAX_PENDING_RESPONSES: usize = 64;

/// The raw bytes of a chunked body may exceed the decoded limit by the
/// chunk framing; past this much overhead the client is wasting our time.
const CHUNK_OVERHEAD_ALLOWANCE: usize = 64 * 1024;

/// What the loop must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait for the next readiness event.
    Wait,
    /// Input may remain unread (the read budget ran out): come back soon.
    Deferred,
    /// Close the connection now.
    Close,
}

/// Why a connection's deadline is set, which decides what happens at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// Between requests: close silently.
    Idle,
    /// Part of a request has arrived: answer 408 and close.
    Request,
    /// Waiting for offloaded work, which has no time limit of its own.
    Offload,
    /// Closing gracefully, waiting for the client's FIN: close.
    Linger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// Close once the output is written.
    AfterWrite,
    /// Output written and our side shut down; discard input until EOF.
    Lingering,
}

/// Per-loop state a connection works with: the service, buffers, clocks.
pub(crate) struct Dispatch<F: ServiceFactory> {
    pub(crate) factory: Arc<F>,
    pub(crate) service: F::Service,
    pub(crate) response: Response,
    pub(crate) date: DateCache,
    pub(crate) limits: Limits,
    pub(crate) header_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
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
    /// Responses encoded during the current event, written in one go.
    pub(crate) out: Vec<u8>,
    pub(crate) offload: Arc<Pool>,
    /// Where the pool sends this loop's completions, and how it wakes us.
    pub(crate) completions: Sender<Completion>,
    pub(crate) waker: Arc<mio::Waker>,
    pub(crate) next_job_id: u64,
}

/// A request body's decoding state between reads.
#[derive(Debug)]
struct ChunkedBody {
    decoder: ChunkedDecoder,
    decoded: Vec<u8>,
    /// Raw body bytes already fed to the decoder.
    fed: usize,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Bytes of an incomplete request, kept between reads.
    input: Vec<u8>,
    /// Response bytes the socket did not take yet.
    output: Vec<u8>,
    written: usize,
    chunked: Option<ChunkedBody>,
    sent_continue: bool,
    closing: Closing,
    /// Reading stopped because the client is not reading its responses.
    read_paused: bool,
    /// An event reported the peer's FIN: read until EOF, not just EAGAIN.
    peer_closed: bool,
    pub(crate) deadline: Instant,
    timer: Timer,
    /// This connection's slab key, which offloaded work reports back to.
    key: usize,
    /// Published for the supervisor: see `shared::CleanFlag`.
    pub(crate) clean: Arc<CleanFlag>,
    /// Responses in request order while offloaded work is outstanding;
    /// empty otherwise (responses then go straight to the output).
    pending: VecDeque<Pending>,
}

#[derive(Debug)]
enum Pending {
    /// Offloaded job `id`, not back yet, and how its response is framed.
    Waiting { id: u64, encoding: Encoding },
    /// An encoded response waiting for the ones before it.
    Ready { bytes: Vec<u8>, keep_alive: bool },
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        key: usize,
        clean: Arc<CleanFlag>,
        now: Instant,
        header_timeout: Duration,
    ) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            chunked: None,
            sent_continue: false,
            closing: Closing::Open,
            read_paused: false,
            peer_closed: false,
            // A new connection gets the header timeout to send its request.
            deadline: now + header_timeout,
            timer: Timer::Idle,
            key,
            clean,
            pending: VecDeque::new(),
        }
    }

    /// No state outside the kernel: could move to another loop losing
    /// nothing (see `shared::CleanFlag`).
    pub(crate) fn is_clean(&self) -> bool {
        self.closing == Closing::Open
            && self.input.is_empty()
            && self.output.is_empty()
            && self.pending.is_empty()
            && self.chunked.is_none()
    }

    /// Brings an idle connection's deadline forward to `at` (draining).
    pub(crate) fn close_when_idle_by(&mut self, at: Instant) {
        if self.timer == Timer::Idle {
            self.deadline = self.deadline.min(at);
        }
    }

    /// Reads and answers everything available, then writes.
    pub(crate) fn on_readable<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        d: &mut Dispatch<F>,
    ) -> Next {
        let mut next = Next::Wait;
        for reads in 0.. {
            if self.closing == Closing::AfterWrite
                || self.output.len() > OUTPUT_HIGH_WATER
                || self.pending.len() >= MAX_PENDING_RESPONSES
            {
                self.read_paused = true;
                break;
            }
            if reads == READ_BUDGET {
                next = Next::Deferred;
                break;
            }
            let result = if self.input.is_empty() {
                self.read_into_scratch(scratch, d)
            } else {
                self.read_into_own_buffer(d)
            };
            match result {
                Ok(ReadResult::Drained) => break,
                Ok(ReadResult::More) => {}
                Ok(ReadResult::Eof) => {
                    if self.closing == Closing::Lingering {
                        return Next::Close;
                    }
                    // The client sent all it will: answer what was complete,
                    // and say so if a request was cut short.
                    if !self.input.is_empty() && self.closing == Closing::Open {
                        self.input.clear();
                        self.reject(Reject::new(400, "incomplete request"), d);
                    }
                    self.closing = Closing::AfterWrite;
                    break;
                }
                Err(verdict) => {
                    if verdict == IoVerdict::Fatal {
                        log::debug!("loop {} read failed, closing", d.shared.name());
                    }
                    return Next::Close;
                }
            }
            if d.abandoned {
                return Next::Close;
            }
        }
        match self.flush(d) {
            Next::Wait => next,
            other => other,
        }
    }

    /// The socket can take more output.
    pub(crate) fn on_writable<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        d: &mut Dispatch<F>,
    ) -> Next {
        if self.output.is_empty() {
            return Next::Wait;
        }
        match self.flush(d) {
            Next::Wait if self.read_paused && self.output.is_empty() => {
                self.read_paused = false;
                self.on_readable(scratch, d)
            }
            other => other,
        }
    }

    /// The deadline passed; returns what to do with the connection.
    pub(crate) fn on_deadline<F: ServiceFactory>(&mut self, d: &mut Dispatch<F>) -> Next {
        match self.timer {
            Timer::Idle | Timer::Linger => Next::Close,
            Timer::Offload => Next::Wait,
            Timer::Request => {
                d.shared.counters.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.input.clear();
                response::encode_reject(408, "request not received in time", &d.date, &mut d.out);
                self.closing = Closing::AfterWrite;
                self.flush(d)
            }
        }
    }

    fn read_into_scratch<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        d: &mut Dispatch<F>,
    ) -> Result<ReadResult, IoVerdict> {
        let n = match read(&mut self.stream, scratch)? {
            None => return Ok(ReadResult::Drained),
            Some(0) => return Ok(ReadResult::Eof),
            Some(n) => n,
        };
        if self.closing == Closing::Lingering {
            return Ok(ReadResult::More);
        }
        let consumed = self.process(&scratch[..n], d);
        if consumed < n && self.closing == Closing::Open {
            self.input.extend_from_slice(&scratch[consumed..n]);
        }
        Ok(self.after_read(n, scratch.len()))
    }

    fn read_into_own_buffer<F: ServiceFactory>(
        &mut self,
        d: &mut Dispatch<F>,
    ) -> Result<ReadResult, IoVerdict> {
        let old_len = self.input.len();
        self.input.resize(old_len + SLOW_READ_CHUNK, 0);
        let result = read(&mut self.stream, &mut self.input[old_len..]);
        let n = match result {
            Ok(Some(n)) => n,
            _ => 0,
        };
        self.input.truncate(old_len + n);
        match result? {
            None => return Ok(ReadResult::Drained),
            Some(0) => return Ok(ReadResult::Eof),
            _ if self.closing == Closing::Lingering => {
                self.input.clear();
                return Ok(ReadResult::More);
            }
            _ => {}
        }
        let input = std::mem::take(&mut self.input);
        let consumed = self.process(&input, d);
        self.input = input;
        if self.closing == Closing::Open {
            self.input.drain(..consumed);
        } else {
            self.input = Vec::new();
        }
        if self.input.capacity() > 4 * SLOW_READ_CHUNK && self.input.len() < SLOW_READ_CHUNK {
            self.input.shrink_to(SLOW_READ_CHUNK);
        }
        Ok(self.after_read(n, SLOW_READ_CHUNK))
    }

    /// Whether a read of `n` bytes into `room` emptied the socket.
    ///
    /// A short read did: with edge-triggered readiness a later arrival
    /// raises a new event, so the usual extra read that only returns EAGAIN
    /// can be saved (about 0.4 us per request). Not so once the peer has
    /// closed its side: its FIN may have come with the data, and raises no
    /// event of its own after this read.
    fn after_read(&self, n: usize, room: usize) -> ReadResult {
        if n < room && !self.peer_closed {
            ReadResult::Drained
        } else {
            ReadResult::More
        }
    }

    /// An event said the peer closed its side (EPOLLRDHUP/EPOLLHUP).
    pub(crate) fn note_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Handles every complete request at the start of `buf`; returns how
    /// many bytes were consumed. What is left is an incomplete request.
    fn process<F: ServiceFactory>(&mut self, buf: &[u8], d: &mut Dispatch<F>) -> usize {
        let mut pos = 0;
        while pos < buf.len() && self.closing == Closing::Open && !d.abandoned {
            let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
            let head =
                match parse_head(&buf[pos..], &mut headers[..d.limits.max_headers], &d.limits) {
                    Ok(Some(head)) => head,
                    Ok(None) => {
                        self.wait_for_rest_of_request(d);
                        break;
                    }
                    Err(reject) => {
                        self.reject(reject, d);
                        return buf.len();
                    }
                };
            let body_start = pos + head.len;
            let available = &buf[body_start..];
            let consumed = match head.framing {
                Framing::Empty => {
                    self.dispatch(&head, &[], d);
                    0
                }
                Framing::Length(len) => {
                    if (available.len() as u64) < len {
                        self.wait_for_body(&head, d);
                        break;
                    }
                    // `len <= available.len()`, so it fits in usize.
                    let len = len as usize;
                    self.dispatch(&head, &available[..len], d);
                    len
                }
                Framing::Chunked => match self.decode_chunked(available, d) {
                    Ok(Some(body)) => {
                        self.dispatch(&head, &body.decoded, d);
                        body.fed
                    }
                    Ok(None) => {
                        self.wait_for_body(&head, d);
                        break;
                    }
                    Err(reject) => {
                        self.reject(reject, d);
                        return buf.len();
                    }
                },
            };
            pos = body_start + consumed;
            self.sent_continue = false;
            self.after_request(d);
        }
        if self.closing != Closing::Open {
            // Nothing after a closing response is processed (RFC 9112 9.6).
            return buf.len();
        }
        pos
    }

    fn after_request<F: ServiceFactory>(&mut self, d: &Dispatch<F>) {
        if self.pending.is_empty() {
            self.timer = Timer::Idle;
            self.deadline = d.now + d.keep_alive_timeout;
        } else {
            self.timer = Timer::Offload;
        }
    }

    fn wait_for_rest_of_request<F: ServiceFactory>(&mut self, d: &Dispatch<F>) {
        if self.timer != Timer::Request {
            self.timer = Timer::Request;
            self.deadline = d.now + d.header_timeout;
        }
    }

    fn wait_for_body<F: ServiceFactory>(&mut self, head: &Head<'_, '_>, d: &mut Dispatch<F>) {
        if head.expect_continue && !self.sent_continue {
            let start = d.out.len();
            d.out.extend_from_slice(CONTINUE);
            self.queue_if_behind_offload(start, true, d);
            self.sent_continue = true;
        }
        // A body may take longer than a head; the timeout is between reads.
        self.timer = Timer::Request;
        self.deadline = d.now + d.header_timeout;
    }

    /// Feeds the decoder what it has not seen; `Some` once the body is whole.
    fn decode_chunked<F: ServiceFactory>(
        &mut self,
        raw: &[u8],
        d: &Dispatch<F>,
    ) -> Result<Option<ChunkedBody>, Reject> {
        let body = self.chunked.get_or_insert_with(|| ChunkedBody {
            decoder: ChunkedDecoder::new(),
            decoded: Vec::new(),
            fed: 0,
        });
        let progress = body.decoder.decode(
            &raw[body.fed..],
            &mut body.decoded,
            d.limits.max_body_bytes,
            d.limits.max_head_bytes,
        )?;
        body.fed += progress.consumed;
        if progress.done {
            return Ok(self.chunked.take());
        }
        if body.fed > d.limits.max_body_bytes.saturating_add(CHUNK_OVERHEAD_ALLOWANCE) {
            return Err(Reject::new(413, "chunk framing too large"));
        }
        Ok(None)
    }

    /// Answers a refused request and closes after it.
    fn reject<F: ServiceFactory>(&mut self, reject: Reject, d: &mut Dispatch<F>) {
        log::debug!(
            "loop {} refused request status={} reason={:?}",
            d.shared.name(),
            reject.status,
            reject.why
        );
        d.shared.counters.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = d.out.len();
        response::encode_reject(reject.status, reject.why, &d.date, &mut d.out);
        self.queue_if_behind_offload(start, false, d);
        self.chunked = None;
        self.closing = Closing::AfterWrite;
        // The client may still be sending (a refused body, say): closing
        // with unread input would reset the connection and could destroy
        // the answer before the client reads it, so linger instead.
        self.timer = Timer::Linger;
        self.deadline = d.now + LINGER_TIMEOUT;
    }

    fn dispatch<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        body: &[u8],
        d: &mut Dispatch<F>,
    ) {
        let req = Request {
            method: head.method,
            path: head.path,
            query: head.query,
            version: head.version,
            headers: head.headers,
            body,
        };
        d.shared.current_request.record(head.method, head.path);
        d.response.reset();
        let service = &mut d.service;
        let response = &mut d.response;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| service.call(&req, response)));
        d.progress += 1;
        d.shared.heartbeat.beat(d.progress, true);
        d.unpublished_requests += 1;
        if d.shared.abandoned.load(std::sync::atomic::Ordering::Relaxed) {
            // The supervisor closed our sockets and replaced us while the
            // handler ran; this response has nowhere to go.
            d.abandoned = true;
            return;
        }
        let encoding = Encoding {
            head_request: head.method == "HEAD",
            keep_alive: encoding_keeps_alive(head, d),
            http10: head.version == crate::Version::Http10,
        };
        if outcome.is_ok() {
            if let Some(work) = d.response.offload.take() {
                self.offload(work, encoding, d);
                return;
            }
        }
        let start = d.out.len();
        let keep_alive = match outcome {
            Ok(()) => response::encode(&d.response, encoding, &d.date, &mut d.out),
            Err(payload) => {
                handler_panicked(&req, payload.as_ref(), d);
                response::encode(&response::internal_error(), encoding, &d.date, &mut d.out)
            }
        };
        self.queue_if_behind_offload(start, keep_alive, d);
        if !keep_alive {
            self.closing = Closing::AfterWrite;
        }
    }

    /// Responses encoded into `d.out` from `start` on wait behind any
    /// offloaded work still outstanding, so that they go out in order.
    fn queue_if_behind_offload<F: ServiceFactory>(
        &mut self,
        start: usize,
        keep_alive: bool,
        d: &mut Dispatch<F>,
    ) {
        if !self.pending.is_empty() {
            let bytes = d.out.split_off(start);
            self.pending.push_back(Pending::Ready { bytes, keep_alive });
        }
    }

    /// Hands `work` to the pool; a full queue is answered 503 at once.
    fn offload<F: ServiceFactory>(
        &mut self,
        work: crate::offload::Work,
        encoding: Encoding,
        d: &mut Dispatch<F>,
    ) {
        let id = d.next_job_id;
        d.next_job_id += 1;
        d.shared.counters.offloaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let job = Job {
            work,
            reply_to: d.completions.clone(),
            waker: d.waker.clone(),
            conn: self.key,
            id,
        };
        match d.offload.submit(job) {
            Ok(()) => self.pending.push_back(Pending::Waiting { id, encoding }),
            Err(_job) => {
                let mut busy = Response::new();
                busy.status(503).header("Retry-After", "1").header("Content-Type", "text/plain");
                busy.body_static(b"503 Service Unavailable: offload queue full\n");
                let start = d.out.len();
                let keep_alive = response::encode(&busy, encoding, &d.date, &mut d.out);
                self.queue_if_behind_offload(start, keep_alive, d);
                if !keep_alive {
                    self.closing = Closing::AfterWrite;
                }
            }
        }
    }

    /// Offloaded work came back: fill in its place and send every
    /// response that is no longer waiting for an earlier one.
    pub(crate) fn complete<F: ServiceFactory>(
        &mut self,
        completion: Completion,
        scratch: &mut [u8],
        d: &mut Dispatch<F>,
    ) -> Next {
        let Some(slot) = self
            .pending
            .iter_mut()
            .find(|p| matches!(p, Pending::Waiting { id, .. } if *id == completion.id))
        else {
            return Next::Wait; // not ours: an older connection with this key
        };
        let Pending::Waiting { mut encoding, .. } = *slot else { unreachable!() };
        encoding.keep_alive &= !d.draining;
        let mut bytes = Vec::new();
        let response = completion.result.unwrap_or_else(|panic| {
            log::error!(
                "loop {} offloaded work panicked panic={panic:?}; answered 500",
                d.shared.name()
            );
            response::internal_error()
        });
        let keep_alive = response::encode(&response, encoding, &d.date, &mut bytes);
        *slot = Pending::Ready { bytes, keep_alive };
        while let Some(Pending::Ready { .. }) = self.pending.front() {
            let Some(Pending::Ready { bytes, keep_alive }) = self.pending.pop_front() else {
                unreachable!()
            };
            d.out.extend_from_slice(&bytes);
            if !keep_alive {
                self.closing = Closing::AfterWrite;
                self.pending.clear();
            }
        }
        if self.pending.is_empty() && self.timer == Timer::Offload {
            self.timer = Timer::Idle;
            self.deadline = d.now + d.keep_alive_timeout;
        }
        match self.flush(d) {
            Next::Wait
                if self.read_paused && self.output.is_empty() && self.closing == Closing::Open =>
            {
                self.read_paused = false;
                self.on_readable(scratch, d)
            }
            other => other,
        }
    }

    /// Writes the loop's pending output (and any older output first).
    fn flush<F: ServiceFactory>(&mut self, d: &mut Dispatch<F>) -> Next {
        if self.output.is_empty() {
            if d.out.is_empty() {
                return self.after_flush(d);
            }
            let written = match write_all_nonblocking(&mut self.stream, &d.out) {
                Ok(n) => n,
                Err(_) => {
                    d.out.clear();
                    return Next::Close;
                }
            };
            if written < d.out.len() {
                self.output.extend_from_slice(&d.out[written..]);
            }
            d.out.clear();
        } else {
            self.output.extend_from_slice(&d.out);
            d.out.clear();
            match write_all_nonblocking(&mut self.stream, &self.output[self.written..]) {
                Ok(n) => self.written += n,
                Err(_) => return Next::Close,
            }
            if self.written == self.output.len() {
                self.output = Vec::new();
                self.written = 0;
            }
        }
        if !self.output.is_empty() {
            return Next::Wait; // the writable event comes back here
        }
        self.after_flush(d)
    }

    fn after_flush<F: ServiceFactory>(&mut self, d: &Dispatch<F>) -> Next {
        if self.closing != Closing::AfterWrite || !self.pending.is_empty() {
            return Next::Wait;
        }
        if self.timer != Timer::Linger && self.input.is_empty() {
            return Next::Close;
        }
        // Half-close and wait for the client's FIN (or the linger timeout).
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.input = Vec::new();
        self.closing = Closing::Lingering;
        self.timer = Timer::Linger;
        self.deadline = self.deadline.min(d.now + LINGER_TIMEOUT);
        Next::Wait
    }
}

/// Whether the response to `head` may leave the connection open, as far
/// as the request and the loop's state go (the service may still close it).
fn encoding_keeps_alive<F: ServiceFactory>(head: &Head<'_, '_>, d: &Dispatch<F>) -> bool {
    // The flag, not only `d.draining`: a drain that began while the handler
    // ran must already close this connection.
    head.keep_alive && !d.draining && !d.shared.draining.load(std::sync::atomic::Ordering::Relaxed)
}

/// How long a closing connection may keep sending before it is cut.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

enum ReadResult {
    /// The socket is empty for now.
    Drained,
    /// The buffer filled up: there may be more.
    More,
    /// The client closed its side.
    Eof,
}

/// One read; `Ok(None)` when the socket has nothing for now.
fn read(stream: &mut TcpStream, buf: &mut [u8]) -> Result<Option<usize>, IoVerdict> {
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
fn write_all_nonblocking(stream: &mut TcpStream, buf: &[u8]) -> Result<usize, IoVerdict> {
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

fn handler_panicked<F: ServiceFactory>(
    req: &Request<'_>,
    payload: &(dyn std::any::Any + Send),
    d: &mut Dispatch<F>,
) {
    let message = crate::shared::panic_message(payload);
    log::error!(
        "loop {} handler panicked method={} path={} panic={:?}; answered 500, service rebuilt",
        d.shared.name(),
        req.method(),
        req.path(),
        message
    );
    d.shared.counters.handler_panics.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The instance may be half-updated; a fresh one is the safe state. If
    // the factory itself panics, the loop dies and the supervisor respawns it.
    d.service = d.factory.new_service(d.shared.slot);
}

/// Answers a connection accepted over the connection limit, best effort.
pub(crate) fn refuse_over_limit(stream: &mut std::net::TcpStream, date: &DateCache) {
    let mut out = Vec::with_capacity(256);
    response::encode_reject(503, "too many connections", date, &mut out);
    let _ = stream.write(&out);
}
