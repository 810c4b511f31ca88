//! One connection: read -> parse -> dispatch to the service -> write.
//!
//! Reads go into the loop's scratch buffer and are parsed in place; only
//! the bytes of an incomplete request are copied into the connection, and
//! responses are encoded into the loop's output buffer and copied into the
//! connection only when the socket would block. So an idle keep-alive
//! connection holds no buffer at all.
//!
//! `context` is the loop's side of the exchange (service, output buffer,
//! clock), `queue` keeps responses in order behind offloaded work, and
//! `io` does the socket calls.

mod context;
mod finish;
pub(crate) mod io;
mod outgoing;
mod queue;

use std::mem::MaybeUninit;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::body::ChunkedDecoder;
use crate::http::request::{Framing, Head};
use crate::http::response::{self, Body, BodyFraming, Encoding, Producer, Source, Work, CONTINUE};
use crate::http::upload::{Fed, ReaderSlot, Upload};
use crate::http::{Reject, MAX_HEADERS_CAP};
use crate::offload::{Completion, Job};
use crate::shared::{panic_message, SharedSocket};
use crate::sys::IoVerdict;
use crate::{BodyPolicy, Response, ServiceFactory};
pub(crate) use context::LoopContext;
use finish::{Finishing, Watch};
pub(crate) use io::refuse_over_limit;
use io::ReadResult;
use outgoing::{Outgoing, Pumped};
use queue::{Released, ResponseQueue};

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

/// Body bytes one connection may stream per event before the loop serves
/// its other connections.
const STREAM_BUDGET: usize = 1024 * 1024;

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
    /// A new connection that has sent nothing: close silently.
    Fresh,
    /// Between requests: close silently.
    Idle,
    /// Part of a request has arrived: answer 408 and close.
    Request,
    /// Waiting for offloaded work, which has no time limit of its own.
    Offload,
    /// Closing gracefully, waiting for the client's FIN: close.
    Linger,
    /// A streamed body is being received and nothing else is waiting: cut
    /// at it, unless the upload moved meanwhile.
    Upload,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// Close once the output is written.
    AfterWrite,
    /// Output written and our side shut down; discard input until EOF.
    Lingering,
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
    /// Bytes of an incomplete request, kept between reads.
    input: Vec<u8>,
    /// Response bytes the socket did not take yet.
    output: Vec<u8>,
    written: usize,
    chunked: Option<ChunkedBody>,
    sent_continue: bool,
    /// How the body of the request being received is taken, once asked.
    policy: Option<BodyPolicy>,
    /// The streamed body being received, on a `BodyPolicy::Stream` route.
    upload: Option<Box<Upload>>,
    closing: Closing,
    /// Reading stopped because the client is not reading its responses.
    read_paused: bool,
    /// An event reported the peer's FIN: read until EOF, not just EAGAIN.
    peer_closed: bool,
    pub(crate) deadline: Instant,
    timer: Timer,
    /// When the request being received started (a new connection's: its
    /// accept), for the body's minimum receive rate.
    request_clock: Instant,
    /// This connection's slab key, which offloaded work reports back to.
    key: usize,
    /// Responses in request order while offloaded work is outstanding.
    queue: ResponseQueue,
    /// Bytes queued and sent, and the responses whose `on_finish` hooks
    /// wait for their last byte; made for the first such response (most
    /// connections never have one: 8 bytes instead of 40 each).
    watch: Option<Box<Watch>>,
    /// Shared with the loop's fd registry (see `shared::FdRegistry`).
    /// Declared last, so dropped last: a producer or an upload's reader
    /// learns that its client is gone before the client sees the close,
    /// never after it.
    pub(crate) socket: Arc<SharedSocket>,
}

impl Conn {
    pub(crate) fn new(
        socket: Arc<SharedSocket>,
        key: usize,
        now: Instant,
        header_timeout: Duration,
    ) -> Conn {
        Conn {
            socket,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            chunked: None,
            sent_continue: false,
            policy: None,
            upload: None,
            closing: Closing::Open,
            read_paused: false,
            peer_closed: false,
            // A new connection gets the header timeout to send its request,
            // counted from now, not from its first byte.
            deadline: now + header_timeout,
            timer: Timer::Fresh,
            request_clock: now,
            key,
            queue: ResponseQueue::default(),
            watch: None,
        }
    }

    /// No state outside the kernel: could move to another loop losing
    /// nothing (see `shared::SharedSocket`).
    pub(crate) fn is_clean(&self) -> bool {
        self.closing == Closing::Open
            && self.input.is_empty()
            && self.output.is_empty()
            && self.queue.is_empty()
            && self.chunked.is_none()
            && self.upload.is_none()
    }

    /// Brings an idle connection's deadline forward to `at` (draining).
    pub(crate) fn close_when_idle_by(&mut self, at: Instant) {
        if matches!(self.timer, Timer::Idle | Timer::Fresh) {
            self.deadline = self.deadline.min(at);
        }
    }

    /// Reads and answers everything available, then writes.
    pub(crate) fn on_readable<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        let mut next = Next::Wait;
        if self.read_paused && !self.input.is_empty() && self.closing == Closing::Open {
            // Requests left unanswered when the output filled up come first.
            self.read_paused = false;
            self.process_input(cx);
        }
        for reads in 0.. {
            if self.closing == Closing::AfterWrite
                || self.output_backlog(cx) > OUTPUT_HIGH_WATER
                || self.queue.len() >= MAX_PENDING_RESPONSES
                || self.upload.as_ref().is_some_and(|upload| upload.blocked)
            {
                self.read_paused = true;
                break;
            }
            if reads == READ_BUDGET {
                next = Next::Deferred;
                break;
            }
            match self.read_into_scratch(scratch, cx) {
                Ok(ReadResult::Drained) => break,
                Ok(ReadResult::More) => {}
                Ok(ReadResult::Eof) => {
                    if self.closing == Closing::Lingering {
                        return Next::Close;
                    }
                    if let Some(upload) = self.upload.take() {
                        // Its response, if still to come, is the handler's
                        // to give: it hears of the end from its reader.
                        upload.fail(
                            std::io::ErrorKind::UnexpectedEof,
                            "the client closed before the body ended",
                        );
                        self.closing = Closing::AfterWrite;
                        break;
                    }
                    // The client sent all it will: answer what was complete,
                    // and say so if a request was cut short.
                    if !self.input.is_empty() && self.closing == Closing::Open {
                        self.input.clear();
                        self.reject(Reject::new(400, "incomplete request"), cx);
                    }
                    self.closing = Closing::AfterWrite;
                    break;
                }
                Err(verdict) => {
                    if verdict == IoVerdict::Fatal {
                        log::debug!("loop {} read failed, closing", cx.shared.name());
                    }
                    return Next::Close;
                }
            }
            if cx.abandoned {
                return Next::Close;
            }
        }
        match self.flush(cx) {
            Next::Wait => next,
            other => other,
        }
    }

    /// The socket can take more output.
    pub(crate) fn on_writable<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        // A file being sent waits for the socket with no output of its own.
        if self.output.is_empty() && self.queue.streaming().is_none() {
            return Next::Wait;
        }
        match self.flush(cx) {
            Next::Wait if self.read_paused && self.output.is_empty() => {
                self.read_paused = false;
                self.on_readable(scratch, cx)
            }
            other => other,
        }
    }

    /// The deadline passed; returns what to do with the connection.
    pub(crate) fn on_deadline<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        match self.timer {
            Timer::Fresh | Timer::Idle | Timer::Linger => Next::Close,
            // Output it does not read is waiting: a 408 would only pile up
            // behind it. The client is not listening; close.
            Timer::Request if !self.output.is_empty() => Next::Close,
            Timer::Offload
                if self.queue.streaming().is_some_and(|body| body.deadline <= cx.now) =>
            {
                log::debug!(
                    "loop {} streamed response cut: no progress within its timeout",
                    cx.shared.name()
                );
                Next::Close
            }
            Timer::Offload => {
                let (draining, date, now) = (cx.draining, &cx.date, cx.now);
                let expired = self.queue.expire(now, |mut encoding, carried, finish| {
                    encoding.keep_alive &= !draining;
                    let mut response = offload_timed_out();
                    response.headers.splice(0..0, carried);
                    let (bytes, keep_alive, _) =
                        encode_watched(&mut response, encoding, date, finish, now);
                    (bytes, keep_alive)
                });
                if !expired {
                    self.deadline = self.queue.next_deadline().unwrap_or(self.deadline);
                    return Next::Wait;
                }
                self.release_queue(cx);
                self.flush_and_resume(scratch, cx)
            }
            Timer::Upload => {
                log::debug!(
                    "loop {} streamed request body cut: no progress within its timeout",
                    cx.shared.name()
                );
                if let Some(upload) = self.upload.take() {
                    upload.fail(
                        std::io::ErrorKind::TimedOut,
                        "no body bytes arrived within the stream idle timeout",
                    );
                }
                Next::Close
            }
            Timer::Request => {
                cx.count_rejected();
                self.input.clear();
                response::encode_reject(408, "request not received in time", &cx.date, &mut cx.out);
                self.closing = Closing::AfterWrite;
                self.flush(cx)
            }
        }
    }

    /// Reads into the loop's scratch buffer and answers what is complete.
    /// Only the bytes of an incomplete request are kept, in a buffer of the
    /// connection that grows with them: a client that sent 3 bytes holds 3
    /// bytes, not a read buffer.
    fn read_into_scratch<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Result<ReadResult, IoVerdict> {
        let n = match io::read(self.socket.raw(), scratch)? {
            None => return Ok(ReadResult::Drained),
            Some(0) => return Ok(ReadResult::Eof),
            Some(n) => n,
        };
        if self.closing == Closing::Lingering {
            return Ok(ReadResult::More);
        }
        if self.input.is_empty() {
            let consumed = self.process(&scratch[..n], cx);
            if consumed < n && self.closing == Closing::Open {
                self.input.extend_from_slice(&scratch[consumed..n]);
            }
        } else {
            self.input.extend_from_slice(&scratch[..n]);
            self.process_input(cx);
        }
        Ok(self.after_read(n, scratch.len()))
    }

    /// Answers what is complete in the connection's own buffer.
    fn process_input<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) {
        let input = std::mem::take(&mut self.input);
        let consumed = self.process(&input, cx);
        self.input = input;
        if self.closing == Closing::Open {
            self.input.drain(..consumed);
        } else {
            self.input = Vec::new();
        }
        if self.input.capacity() > 4 * SLOW_READ_CHUNK && self.input.len() < SLOW_READ_CHUNK {
            self.input.shrink_to(SLOW_READ_CHUNK);
        }
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

    /// Response bytes waiting for this connection: its own and this
    /// event's batch in the loop's buffer.
    fn output_backlog<F: ServiceFactory>(&self, cx: &LoopContext<F>) -> usize {
        self.output.len() + cx.out.len()
    }

    /// An event said the peer closed its side (EPOLLRDHUP/EPOLLHUP).
    pub(crate) fn note_peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Handles every complete request at the start of `buf`; returns how
    /// many bytes were consumed. What is left is an incomplete request.
    fn process<F: ServiceFactory>(&mut self, buf: &[u8], cx: &mut LoopContext<F>) -> usize {
        let mut pos = 0;
        // Stops at the output high water too: a client that pipelines and
        // does not read gets no more responses made until it reads, and
        // what it sent waits in the connection's buffer meanwhile.
        while pos < buf.len()
            && self.closing == Closing::Open
            && !cx.abandoned
            && self.output_backlog(cx) <= OUTPUT_HIGH_WATER
        {
            if self.upload.is_some() {
                let (consumed, whole) = self.feed_upload(&buf[pos..], cx);
                pos += consumed;
                if !whole {
                    break;
                }
                continue;
            }
            let mut headers = [MaybeUninit::uninit(); MAX_HEADERS_CAP];
            let head = match cx.head_memo.parse(
                &buf[pos..],
                &mut headers[..cx.limits.max_headers],
                &cx.limits,
            ) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.wait_for_rest_of_request(cx);
                    break;
                }
                Err(reject) => {
                    self.reject(reject, cx);
                    return buf.len();
                }
            };
            let body_start = pos + head.len;
            let available = &buf[body_start..];
            let limit = match head.framing {
                Framing::Empty => 0,
                _ => match self.body_policy(&head, cx) {
                    Some(BodyPolicy::Buffer(limit)) => limit,
                    Some(BodyPolicy::Stream(limit)) => {
                        self.start_upload(&head, limit, cx);
                        pos = body_start;
                        continue;
                    }
                    Some(BodyPolicy::Refuse) | None => return buf.len(), // refused
                },
            };
            let consumed = match head.framing {
                Framing::Empty => {
                    self.dispatch(&head, &[], cx);
                    0
                }
                Framing::Length(len) => {
                    if (available.len() as u64) < len {
                        self.wait_for_body(&head, head.len + available.len(), cx);
                        break;
                    }
                    // `len <= available.len()`, so it fits in usize.
                    let len = len as usize;
                    self.dispatch(&head, &available[..len], cx);
                    len
                }
                Framing::Chunked => match self.decode_chunked(available, limit, cx) {
                    Ok(Some(body)) => {
                        self.dispatch(&head, &body.decoded, cx);
                        body.fed
                    }
                    Ok(None) => {
                        self.wait_for_body(&head, head.len + available.len(), cx);
                        break;
                    }
                    Err(reject) => {
                        self.reject(reject, cx);
                        return buf.len();
                    }
                },
            };
            pos = body_start + consumed;
            self.sent_continue = false;
            self.policy = None;
            self.after_request(cx);
        }
        if self.closing != Closing::Open {
            // Nothing after a closing response is processed (RFC 9112 9.6).
            if pos < buf.len() && self.timer != Timer::Linger {
                // The client sent more (pipelined) and may still be
                // sending: closing with unread input would reset the
                // connection and could destroy the response. Linger.
                self.timer = Timer::Linger;
                self.deadline = cx.now + LINGER_TIMEOUT;
            }
            return buf.len();
        }
        pos
    }

    fn after_request<F: ServiceFactory>(&mut self, cx: &LoopContext<F>) {
        if self.upload.is_some() && self.queue.is_empty() {
            self.timer = Timer::Upload;
            self.deadline = cx.now + cx.stream_idle_timeout;
        } else if self.queue.is_empty() {
            self.timer = Timer::Idle;
            self.deadline = cx.now + cx.keep_alive_timeout;
        } else {
            self.timer = Timer::Offload;
            self.deadline = self.queue.next_deadline().unwrap_or(self.deadline);
        }
    }

    /// Part of a head is here. On a new connection the clock started at
    /// accept (so a head takes at most the header timeout, not twice it);
    /// between requests it starts at the first byte.
    ///
    /// While offloaded work is outstanding its timer stays: the client
    /// waits for answers, and a 408 would go out ahead of them. The header
    /// timeout starts when the last answer is out (`release_queue`).
    fn wait_for_rest_of_request<F: ServiceFactory>(&mut self, cx: &LoopContext<F>) {
        if !self.queue.is_empty() {
            return;
        }
        match self.timer {
            Timer::Request => {}
            Timer::Fresh => self.timer = Timer::Request,
            _ => {
                self.timer = Timer::Request;
                self.request_clock = cx.now;
                self.deadline = cx.now + cx.header_timeout;
            }
        }
    }

    /// `100 Continue`, if the client asked for it and has not had it.
    fn send_continue_once<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        cx: &mut LoopContext<F>,
    ) {
        if head.expect_continue && !self.sent_continue {
            let start = cx.out.len();
            cx.out.extend_from_slice(CONTINUE);
            self.queue_if_behind_offload(start, true, None, cx);
            self.sent_continue = true;
        }
    }

    /// Part of a body is here (`received` bytes of the request so far).
    ///
    /// With a minimum receive rate, the request has the header timeout from
    /// its start plus a second per `min_receive_rate` bytes received, as
    /// Apache's mod_reqtimeout does: a client sending a byte a second
    /// cannot hold a connection for ever. Without one (0), the timeout is
    /// between reads.
    fn wait_for_body<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        received: usize,
        cx: &mut LoopContext<F>,
    ) {
        self.send_continue_once(head, cx);
        if !self.queue.is_empty() {
            return; // as in wait_for_rest_of_request
        }
        match self.timer {
            Timer::Request | Timer::Fresh => {}
            _ => self.request_clock = cx.now,
        }
        self.timer = Timer::Request;
        self.deadline = match cx.min_receive_rate {
            0 => cx.now + cx.header_timeout,
            rate => {
                let earned = Duration::from_secs_f64(received as f64 / rate as f64);
                self.request_clock + cx.header_timeout + earned
            }
        };
    }

    /// How the body of the request in `head` is taken: the service's
    /// policy, asked once per request, or the server's limit. `None` when
    /// the request was refused instead (413 before the body is read, so
    /// before `100 Continue`; 500 when the service panicked).
    fn body_policy<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        cx: &mut LoopContext<F>,
    ) -> Option<BodyPolicy> {
        let policy = match self.policy {
            Some(policy) => policy,
            None => {
                let req = head.request(&[], &self.socket, cx.now, None);
                match cx.ask_body_policy(&req) {
                    Ok(policy) => policy.unwrap_or(BodyPolicy::Buffer(cx.limits.max_body_bytes)),
                    Err(payload) => {
                        cx.handler_panicked(head.method, head.path, &payload);
                        self.reject(Reject::new(500, "the body policy panicked"), cx);
                        return None;
                    }
                }
            }
        };
        let limit = match policy {
            BodyPolicy::Buffer(limit) => limit as u64,
            BodyPolicy::Stream(limit) => limit,
            BodyPolicy::Refuse => 0,
        };
        let refused = match head.framing {
            _ if policy == BodyPolicy::Refuse => Some("this resource takes no request body"),
            Framing::Length(len) if len > limit => Some("Content-Length over the body limit"),
            _ => None,
        };
        if let Some(why) = refused {
            self.reject(Reject::new(413, why), cx);
            return None;
        }
        self.policy = Some(policy);
        Some(policy)
    }

    /// The head of a request whose body streams is in: the handler runs
    /// now, with the body's reader to take. A reader it leaves, or drops
    /// before the end, means the rest of the body is not wanted: the
    /// connection closes after the response.
    ///
    /// `100 Continue` goes out before the handler runs, when the client
    /// asked for it: a handler that refuses the body without reading it
    /// lets the client send some of it for nothing (a route that must
    /// refuse before the body starts does so in `Service::body_policy`).
    fn start_upload<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        limit: u64,
        cx: &mut LoopContext<F>,
    ) {
        self.send_continue_once(head, cx);
        let id = cx.take_job_id();
        let notify = cx.notify(self.key, id);
        let length = match head.framing {
            Framing::Length(len) => Some(len),
            _ => None,
        };
        let (mut upload, reader) = Upload::new(length, limit, notify, cx.stream_idle_timeout);
        let slot = ReaderSlot::new(reader);
        self.dispatch_with(head, &[], Some((&slot, &upload)), cx);
        let left = slot.take();
        if cx.abandoned {
            return; // the response has nowhere to go
        }
        self.sent_continue = false;
        self.policy = None;
        if left.is_some() || upload.reader_gone() {
            drop(left);
            return self.refuse_rest_of_body(cx);
        }
        // A closing response waits for the body: the reader has it to read.
        upload.close_after = self.closing == Closing::AfterWrite;
        self.closing = Closing::Open;
        self.upload = Some(Box::new(upload));
        self.after_request(cx);
    }

    /// Feeds the streamed body what of `input` it takes; returns how many
    /// bytes it took, and whether the body is over (the rest is the next
    /// request's).
    fn feed_upload<F: ServiceFactory>(
        &mut self,
        input: &[u8],
        cx: &mut LoopContext<F>,
    ) -> (usize, bool) {
        let Some(upload) = &mut self.upload else { return (0, true) };
        let (consumed, fed) = upload.feed(input, cx.limits.max_head_bytes);
        if consumed > 0 && self.timer == Timer::Upload {
            self.deadline = cx.now + cx.stream_idle_timeout;
        }
        match fed {
            Fed::Whole => {
                let close = upload.close_after;
                self.upload = None;
                if close {
                    self.closing = Closing::AfterWrite;
                }
                self.after_request(cx);
                (consumed, !close)
            }
            Fed::More | Fed::Full => (consumed, false),
            Fed::ReaderGone => {
                self.refuse_rest_of_body(cx);
                (consumed, false)
            }
            Fed::Failed(reject) => {
                log::debug!(
                    "loop {} streamed request body refused status={} reason={:?}",
                    cx.shared.name(),
                    reject.status,
                    reject.why
                );
                cx.count_rejected();
                self.refuse_rest_of_body(cx);
                (consumed, false)
            }
        }
    }

    /// The rest of a streamed body will not be read (its reader is gone,
    /// or it broke its framing): the response, if any, is the handler's;
    /// the connection closes after it, lingering so that the client's
    /// unread bytes do not reset it.
    fn refuse_rest_of_body<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) {
        self.upload = None;
        self.policy = None;
        self.closing = Closing::AfterWrite;
        if self.queue.is_empty() {
            self.timer = Timer::Linger;
            self.deadline = cx.now + LINGER_TIMEOUT;
        }
    }

    /// An upload's reader made room, or went away.
    pub(crate) fn on_upload_mail<F: ServiceFactory>(
        &mut self,
        id: u64,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        let Some(upload) = &mut self.upload else { return Next::Wait };
        if upload.id() != id {
            return Next::Wait; // an older upload's, or an older connection's
        }
        if upload.reader_gone() {
            self.refuse_rest_of_body(cx);
            self.input = Vec::new();
            return self.flush(cx);
        }
        if self.timer == Timer::Upload {
            self.deadline = cx.now + cx.stream_idle_timeout;
        }
        if !std::mem::take(&mut upload.blocked) {
            return Next::Wait;
        }
        // What was read past the full queue goes first, then the socket,
        // which raises no new event for bytes already waiting in it.
        self.read_paused = true;
        self.on_readable(scratch, cx)
    }

    /// Feeds the decoder what it has not seen; `Some` once the body is whole.
    fn decode_chunked<F: ServiceFactory>(
        &mut self,
        raw: &[u8],
        limit: usize,
        cx: &LoopContext<F>,
    ) -> Result<Option<ChunkedBody>, Reject> {
        let body = self.chunked.get_or_insert_with(|| ChunkedBody {
            decoder: ChunkedDecoder::new(),
            decoded: Vec::new(),
            fed: 0,
        });
        let progress = body.decoder.decode(
            &raw[body.fed..],
            &mut body.decoded,
            limit,
            cx.limits.max_head_bytes,
        )?;
        body.fed += progress.consumed;
        if progress.done {
            return Ok(self.chunked.take());
        }
        if body.fed > limit.saturating_add(CHUNK_OVERHEAD_ALLOWANCE) {
            return Err(Reject::new(413, "chunk framing too large"));
        }
        Ok(None)
    }

    /// Answers a refused request and closes after it.
    fn reject<F: ServiceFactory>(&mut self, reject: Reject, cx: &mut LoopContext<F>) {
        log::debug!(
            "loop {} refused request status={} reason={:?}",
            cx.shared.name(),
            reject.status,
            reject.why
        );
        cx.count_rejected();
        let start = cx.out.len();
        response::encode_reject(reject.status, reject.why, &cx.date, &mut cx.out);
        self.queue_if_behind_offload(start, false, None, cx);
        self.chunked = None;
        self.closing = Closing::AfterWrite;
        // The client may still be sending (a refused body, say): closing
        // with unread input would reset the connection and could destroy
        // the answer before the client reads it, so linger instead.
        self.timer = Timer::Linger;
        self.deadline = cx.now + LINGER_TIMEOUT;
    }

    fn dispatch<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        body: &[u8],
        cx: &mut LoopContext<F>,
    ) {
        self.dispatch_with(head, body, None, cx)
    }

    /// `dispatch`, with the reader of a streamed body for the handler to take.
    #[inline(always)]
    fn dispatch_with<F: ServiceFactory>(
        &mut self,
        head: &Head<'_, '_>,
        body: &[u8],
        upload: Option<(&ReaderSlot, &Upload)>,
        cx: &mut LoopContext<F>,
    ) {
        if head.method == "CONNECT" && !cx.allow_connect {
            self.reject(Reject::new(501, "CONNECT is not supported"), cx);
            return;
        }
        let req = head.request(body, &self.socket, cx.now, upload.map(|(slot, _)| slot));
        let outcome = cx.call_service(&req);
        if cx.abandoned {
            // The supervisor closed our sockets and replaced us while the
            // handler ran; this response has nowhere to go.
            cx.response.on_finish.clear();
            return;
        }
        let encoding = Encoding {
            head_request: head.method == "HEAD",
            keep_alive: cx.keeps_alive(head) && !upload.is_some_and(body_left_unread),
            http10: head.version == crate::Version::Http10,
        };
        let response = &cx.response;
        if outcome.is_err()
            || response.offload.is_some()
            || !response.on_finish.is_empty()
            || matches!(response.body, Body::Stream(_) | Body::File(_))
        {
            return self.dispatch_rare(outcome, (head.method, head.path), encoding, cx);
        }
        let start = cx.out.len();
        let keep_alive = response::encode(&cx.response, encoding, &cx.date, &mut cx.out);
        self.queue_if_behind_offload(start, keep_alive, None, cx);
        if !keep_alive {
            self.closing = Closing::AfterWrite;
        }
    }

    /// What `dispatch` does for a response that panicked, is offloaded,
    /// has `on_finish` hooks or a streamed body. Kept out of `dispatch`, so that the service
    /// call is still inlined there: 48 instructions a pipelined request.
    #[cold]
    #[inline(never)]
    fn dispatch_rare<F: ServiceFactory>(
        &mut self,
        outcome: Result<(), context::Panic>,
        (method, path): (&str, &str),
        encoding: Encoding,
        cx: &mut LoopContext<F>,
    ) {
        // Taken even after a panic: the hooks hear of the 500.
        let finishing = if cx.response.on_finish.is_empty() {
            None
        } else {
            Some(Finishing::new(std::mem::take(&mut cx.response.on_finish), cx.now))
        };
        if outcome.is_ok() {
            if let Some(work) = cx.response.offload.take() {
                self.offload(work, encoding, finishing, cx);
                return;
            }
        }
        let start = cx.out.len();
        let mut error = None;
        let (keep_alive, stream) = match outcome {
            Ok(()) => response::encode_streamed(&mut cx.response, encoding, &cx.date, &mut cx.out),
            Err(payload) => {
                cx.handler_panicked(method, path, &payload);
                let failure = error.insert(response::internal_error());
                (response::encode(failure, encoding, &cx.date, &mut cx.out), None)
            }
        };
        if stream.is_none() && matches!(cx.response.body, Body::Stream(_) | Body::File(_)) {
            // No body is sent (HEAD, 204, 304, a 500): a stream's writer
            // hears so now, a file is closed now.
            cx.response.body = Body::Static(b"");
            cx.response.producer = None;
        }
        let sent = error.as_ref().unwrap_or(&cx.response);
        let finishing = finishing.map(|mut finishing| {
            finishing.describe(sent, encoding, cx.out.len() - start);
            finishing
        });
        if let Some((source, framing)) = stream {
            let producer = cx.response.producer.take();
            let head = (start, encoding, keep_alive);
            return self.start_body(source, framing, producer, head, finishing, cx);
        }
        self.queue_if_behind_offload(start, keep_alive, finishing, cx);
        if !keep_alive {
            self.closing = Closing::AfterWrite;
        }
    }

    /// The head of a response with a streamed body or a file is in
    /// `cx.out` from `start`: a stream's producer starts (when the pool's
    /// queue is full the head is replaced by a 503), and the body follows
    /// the head, behind what is outstanding.
    fn start_body<F: ServiceFactory>(
        &mut self,
        source: Source,
        framing: BodyFraming,
        producer: Option<Producer>,
        (start, encoding, keep_alive): (usize, Encoding, bool),
        finishing: Option<Box<Finishing>>,
        cx: &mut LoopContext<F>,
    ) {
        if let Some(producer) = producer {
            if cx.offload.run(producer).is_err() {
                drop(source); // its writer, in the producer, is gone already
                cx.out.truncate(start);
                let headers = std::mem::take(&mut cx.response.headers);
                return self.answer_pool_full(headers, encoding, finishing, cx);
            }
        }
        let id = cx.take_job_id();
        if let Source::Stream(stream) = &source {
            stream.attach(cx.notify(self.key, id));
        }
        let deadline = cx.now + cx.stream_idle_timeout;
        let body = Box::new(Outgoing::new(source, id, framing, keep_alive, finishing, deadline));
        if self.queue.is_empty() {
            self.queue.push_streaming(body);
        } else {
            let head = cx.out.split_off(start);
            self.queue.push_ready_streamed(head, body);
        }
    }

    /// Responses encoded into `cx.out` from `start` on wait behind any
    /// offloaded work still outstanding, so that they go out in order.
    /// Its hooks, if any, watch for its last byte from here or from the
    /// queue. Inlined into `dispatch` (where the common case is two
    /// checks): 21 instructions fewer per pipelined request.
    #[inline(always)]
    fn queue_if_behind_offload<F: ServiceFactory>(
        &mut self,
        start: usize,
        keep_alive: bool,
        finishing: Option<Box<Finishing>>,
        cx: &mut LoopContext<F>,
    ) {
        if !self.queue.is_empty() {
            let bytes = cx.out.split_off(start);
            self.queue.push_ready(bytes, keep_alive, finishing);
        } else if let Some(finishing) = finishing {
            self.watch().ends_at(cx.out.len(), finishing);
        }
    }

    /// The connection's watch, made now if it has none: counting starts
    /// with the output not yet sent, which goes out before anything new.
    fn watch(&mut self) -> &mut Watch {
        let unsent = (self.output.len() - self.written) as u64;
        self.watch.get_or_insert_with(|| Box::new(Watch::starting_with(unsent)))
    }

    /// Moves the responses no longer behind offloaded work to the output.
    fn release_queue<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) {
        let unsent = (self.output.len() - self.written) as u64;
        let watch = &mut self.watch;
        let stream_deadline = cx.now + cx.stream_idle_timeout;
        let released = self.queue.release(&mut cx.out, stream_deadline, |end, finishing| {
            watch
                .get_or_insert_with(|| Box::new(Watch::starting_with(unsent)))
                .ends_at(end, finishing);
        });
        if released == Released::Close {
            self.close_after_response();
        }
        if self.queue.is_empty() && self.timer == Timer::Offload {
            if self.upload.is_some() {
                self.timer = Timer::Upload;
                self.deadline = cx.now + cx.stream_idle_timeout;
            } else if self.input.is_empty() {
                self.timer = Timer::Idle;
                self.deadline = cx.now + cx.keep_alive_timeout;
            } else {
                // Part of the next request came while it waited.
                self.timer = Timer::Request;
                self.request_clock = cx.now;
                self.deadline = cx.now + cx.header_timeout;
            }
        } else if self.timer == Timer::Offload {
            self.deadline = self.queue.next_deadline().unwrap_or(self.deadline);
        }
    }

    /// Hands `work` to the pool, with the header fields set so far; a full
    /// queue is answered 503 at once.
    fn offload<F: ServiceFactory>(
        &mut self,
        work: Work,
        encoding: Encoding,
        finishing: Option<Box<Finishing>>,
        cx: &mut LoopContext<F>,
    ) {
        let id = cx.take_job_id();
        cx.shared.counters.offloaded.fetch_add(1, Relaxed);
        let deadline = cx.response.offload_timeout.map(|timeout| cx.now + timeout);
        let headers = std::mem::take(&mut cx.response.headers);
        // A copy for the 503 of a timeout, which has no other way to them.
        let carried = if deadline.is_some() { headers.clone() } else { Vec::new() };
        let job = Job {
            work,
            headers,
            reply_to: cx.mail.clone(),
            waker: cx.waker.clone(),
            conn: self.key,
            id,
        };
        match cx.offload.submit(job) {
            Ok(()) => self.queue.wait_for(id, encoding, deadline, carried, finishing),
            Err(job) => self.answer_pool_full(job.headers, encoding, finishing, cx),
        }
    }

    /// The offload pool's queue is full: 503, with the fields set so far.
    fn answer_pool_full<F: ServiceFactory>(
        &mut self,
        headers: response::Fields,
        encoding: Encoding,
        finishing: Option<Box<Finishing>>,
        cx: &mut LoopContext<F>,
    ) {
        let busy = pool_full(headers);
        let start = cx.out.len();
        let keep_alive = response::encode(&busy, encoding, &cx.date, &mut cx.out);
        let finishing = finishing.map(|mut finishing| {
            finishing.describe(&busy, encoding, cx.out.len() - start);
            finishing
        });
        self.queue_if_behind_offload(start, keep_alive, finishing, cx);
        if !keep_alive {
            self.closing = Closing::AfterWrite;
        }
    }

    /// Offloaded work came back: fill in its place and send every
    /// response that is no longer waiting for an earlier one.
    pub(crate) fn complete<F: ServiceFactory>(
        &mut self,
        completion: Completion,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        // The id its body streams under, should the response have one.
        let id = cx.take_job_id();
        let notify = cx.notify(self.key, id);
        let (draining, date, shared, now) = (cx.draining, &cx.date, &cx.shared, cx.now);
        let (pool, deadline) = (&cx.offload, now + cx.stream_idle_timeout);
        let filled = self.queue.fill(completion.id, |mut encoding, finish| {
            encoding.keep_alive &= !draining;
            let mut response = completion.result.unwrap_or_else(|(panic, carried)| {
                let (name, panic) = (shared.name(), panic_message(panic.as_ref()));
                log::error!("loop {name} offloaded work panicked panic={panic:?}; answered 500");
                let mut error = response::internal_error();
                error.headers.splice(0..0, carried);
                error
            });
            if let Some(producer) = response.producer.take() {
                if matches!(response.body, Body::Stream(_)) && pool.run(producer).is_err() {
                    response = pool_full(std::mem::take(&mut response.headers));
                }
            }
            let (bytes, keep_alive, stream) =
                encode_watched(&mut response, encoding, date, finish, now);
            let body = stream.map(|(source, framing)| {
                if let Source::Stream(stream) = &source {
                    stream.attach(notify);
                }
                // Its hooks move to it when it is released.
                Box::new(Outgoing::new(source, id, framing, keep_alive, None, deadline))
            });
            (bytes, keep_alive, body)
        });
        if !filled {
            // Not ours (an older connection with this key), or it ran out
            // of time and was answered 503 already.
            return Next::Wait;
        }
        self.release_queue(cx);
        self.flush_and_resume(scratch, cx)
    }

    /// Writes what was released and, if reading stopped while responses
    /// were pending, goes back to the input left in the socket (edge
    /// triggered: no new event would come for it).
    fn flush_and_resume<F: ServiceFactory>(
        &mut self,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        match self.flush(cx) {
            Next::Wait
                if self.read_paused && self.output.is_empty() && self.closing == Closing::Open =>
            {
                self.read_paused = false;
                self.on_readable(scratch, cx)
            }
            other => other,
        }
    }

    /// Writes the loop's pending output (and any older output first).
    fn flush<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) -> Next {
        if self.queue.streaming().is_some() {
            return self.flush_streaming(cx);
        }
        if self.write_output(cx).is_err() {
            return Next::Close;
        }
        if !self.output.is_empty() {
            return Next::Wait; // the writable event comes back here
        }
        self.after_flush(cx)
    }

    /// Writes what waits, keeping what the socket does not take; `Err`
    /// when the connection failed. Inlined into `flush`, which it was part
    /// of: a call of its own cost 20 instructions a request.
    #[inline(always)]
    fn write_output<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) -> Result<(), ()> {
        if self.output.is_empty() {
            if cx.out.is_empty() {
                return Ok(());
            }
            if let Some(watch) = &mut self.watch {
                watch.queued += cx.out.len() as u64;
            }
            let written = match io::write_nonblocking(self.socket.raw(), &cx.out) {
                Ok(n) => n,
                Err(_) => {
                    cx.out.clear();
                    return Err(());
                }
            };
            if let Some(watch) = &mut self.watch {
                watch.sent(written);
            }
            if written < cx.out.len() {
                self.output.extend_from_slice(&cx.out[written..]);
            }
            cx.out.clear();
        } else {
            if let Some(watch) = &mut self.watch {
                watch.queued += cx.out.len() as u64;
            }
            self.output.extend_from_slice(&cx.out);
            cx.out.clear();
            match io::write_nonblocking(self.socket.raw(), &self.output[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if let Some(watch) = &mut self.watch {
                        watch.sent(n);
                    }
                }
                Err(_) => return Err(()),
            }
            if self.written == self.output.len() {
                self.output = Vec::new();
                self.written = 0;
            }
        }
        Ok(())
    }

    /// Output bytes not written yet.
    fn unsent<F: ServiceFactory>(&self, cx: &LoopContext<F>) -> usize {
        self.output.len() - self.written + cx.out.len()
    }

    /// `flush` while a body streams: writes, and takes more of the body
    /// whenever the socket took everything, up to the stream budget per
    /// event (then the loop's other connections go first). Every bit of
    /// progress, the producer's or the client's, moves the stream's
    /// deadline: the send timeout while output waits for the client, the
    /// idle timeout while the loop waits for the producer.
    #[cold]
    #[inline(never)]
    fn flush_streaming<F: ServiceFactory>(&mut self, cx: &mut LoopContext<F>) -> Next {
        let mut budget = STREAM_BUDGET;
        loop {
            let before = self.unsent(cx);
            if self.write_output(cx).is_err() {
                return Next::Close;
            }
            let progressed = self.unsent(cx) < before;
            let waiting_for_client = !self.output.is_empty();
            let timeout = if waiting_for_client { cx.send_timeout } else { cx.stream_idle_timeout };
            let Some(body) = self.queue.streaming() else {
                // The stream ended and what followed it was written above.
                if waiting_for_client {
                    return Next::Wait;
                }
                return self.after_flush(cx);
            };
            if progressed {
                body.deadline = cx.now + timeout;
            }
            let next = if waiting_for_client {
                Some(Next::Wait)
            } else if budget == 0 {
                Some(Next::Deferred)
            } else {
                match body.pump(budget.min(OUTPUT_HIGH_WATER), &mut cx.out, self.socket.raw()) {
                    Pumped::Idle | Pumped::Blocked => Some(Next::Wait),
                    Pumped::Bytes(n) => {
                        budget = budget.saturating_sub(n);
                        // A file always has bytes: only the client is timed.
                        let timeout =
                            if body.is_file() { cx.send_timeout } else { cx.stream_idle_timeout };
                        body.deadline = cx.now + timeout;
                        None
                    }
                    Pumped::Done => {
                        self.end_stream(true, cx);
                        None
                    }
                    Pumped::Cut => {
                        self.end_stream(false, cx);
                        None
                    }
                }
            };
            if self.timer == Timer::Offload {
                self.deadline = self.queue.next_deadline().unwrap_or(self.deadline);
            }
            if let Some(next) = next {
                return next;
            }
        }
    }

    /// The streamed body at the front of the queue is over: whole (its end
    /// is in `cx.out`), or cut short, which closes the connection once what
    /// was sent of it is out.
    fn end_stream<F: ServiceFactory>(&mut self, whole: bool, cx: &mut LoopContext<F>) {
        let Some(mut body) = self.queue.end_streaming() else { return };
        let finish = body.take_finish();
        if whole {
            if let Some(finish) = finish {
                let watch = self.watch();
                watch.ends_at(cx.out.len(), finish);
                // A file's last byte went out with sendfile, not through
                // the output: it may be finished already.
                watch.sent(0);
            }
        } else if let Some(finish) = finish {
            finish.fire(false);
        }
        if whole && body.keep_alive {
            self.release_queue(cx);
        } else {
            // Nothing is sent after a closing or cut response.
            self.queue.cut_short();
            self.close_after_response();
        }
    }

    /// A response said close: close after it, or once the body being
    /// streamed to the handler is in (its reader has it to read).
    fn close_after_response(&mut self) {
        match &mut self.upload {
            Some(upload) => upload.close_after = true,
            None => self.closing = Closing::AfterWrite,
        }
    }

    /// A stream has bytes, or has ended.
    pub(crate) fn on_body_ready<F: ServiceFactory>(
        &mut self,
        id: u64,
        scratch: &mut [u8],
        cx: &mut LoopContext<F>,
    ) -> Next {
        if !matches!(self.queue.streaming(), Some(body) if body.id == id) {
            // Not streaming yet (queued behind others: its turn pumps it),
            // or an older connection's.
            return Next::Wait;
        }
        self.flush_and_resume(scratch, cx)
    }

    fn after_flush<F: ServiceFactory>(&mut self, cx: &LoopContext<F>) -> Next {
        if self.closing != Closing::AfterWrite || !self.queue.is_empty() {
            return Next::Wait;
        }
        if self.timer != Timer::Linger && self.input.is_empty() {
            return Next::Close;
        }
        // Half-close and wait for the client's FIN (or the linger timeout).
        let _ = self.socket.stream.shutdown(std::net::Shutdown::Write);
        self.input = Vec::new();
        self.closing = Closing::Lingering;
        self.timer = Timer::Linger;
        self.deadline = self.deadline.min(cx.now + LINGER_TIMEOUT);
        Next::Wait
    }
}

/// Whether the streamed body of a request will go unread: its handler
/// left the reader, or dropped it. The connection then closes after the
/// response, which says so (RFC 9112 9.6). Out of line: requests without
/// a streamed body pay one compare for it.
#[cold]
#[inline(never)]
fn body_left_unread((slot, upload): (&ReaderSlot, &Upload)) -> bool {
    slot.holds_reader() || upload.reader_gone()
}

/// Encodes an offloaded job's response into its own buffer, describing it
/// to the job's hooks.
///
/// Hooks the work itself registered join those of the request.
fn encode_watched(
    response: &mut Response,
    encoding: Encoding,
    date: &crate::http::date::DateCache,
    finish: &mut Option<Box<Finishing>>,
    now: Instant,
) -> (Vec<u8>, bool, Option<response::Streamed>) {
    let mut bytes = Vec::new();
    let (keep_alive, stream) = response::encode_streamed(response, encoding, date, &mut bytes);
    if !response.on_finish.is_empty() {
        let hooks = std::mem::take(&mut response.on_finish);
        match finish {
            Some(finish) => finish.add_hooks(hooks),
            None => *finish = Some(Finishing::new(hooks, now)),
        }
    }
    if let Some(finish) = finish {
        finish.describe(response, encoding, bytes.len());
    }
    (bytes, keep_alive, stream)
}

/// The answer when the offload pool's queue is full, with the fields set
/// so far.
fn pool_full(headers: response::Fields) -> Response {
    let mut busy = Response::new();
    busy.headers = headers;
    busy.status(503).header("Retry-After", "1").header("Content-Type", "text/plain");
    busy.body_static(b"503 Service Unavailable: offload queue full\n");
    busy
}

/// The answer to offloaded work that ran out of time.
fn offload_timed_out() -> Response {
    let mut res = Response::new();
    res.status(503).header("Retry-After", "1").header("Content-Type", "text/plain");
    res.body_static(b"503 Service Unavailable: the work took too long\n");
    res
}

/// For `__bench`: hooks as the loop would watch them.
pub(crate) fn bench_finishing(hooks: Vec<crate::http::response::FinishHook>) -> Box<Finishing> {
    Finishing::new(hooks, Instant::now())
}

/// How long a closing connection may keep sending before it is cut.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
