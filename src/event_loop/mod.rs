//! One event loop: a thread pinned to a core, with its own `mio::Poll` and
//! connection slab, accepting from the listening socket every loop shares.
//!
//! `accept` holds the accept and balancing policy; connections themselves
//! are `conn`'s.

mod accept;

use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::conn::{self, Conn, LoopContext, Next};
use crate::http::date::DateCache;
use crate::http::head_memo::HeadMemo;
use crate::offload::Mail;
use crate::shared::{
    lock, Conveyed, Fate, LoopShared, LoopState, PeerTicket, ServerShared, SharedSocket,
};
use crate::sys;
use crate::{memory, Response, ServiceFactory};
use accept::Acceptor;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// How long an idle keep-alive connection of a draining loop stays open
/// for a request its client may already have sent.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// When the sweep after one at `now` is due: a period later, or when a
/// draining loop's idle grace ends if that is sooner (a regular sweep just
/// before the grace ends must not leave idle connections open for another
/// whole period).
fn next_sweep_after(now: Instant, period: Duration, drain_idle_grace: Option<Instant>) -> Instant {
    match drain_idle_grace {
        Some(grace) if grace > now => (now + period).min(grace),
        _ => now + period,
    }
}

/// Size of the loop's read buffer, shared by all its connections.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Starts loop `shared` on a new thread. `ready` is sent once the loop
/// listens, or dropped if it fails to start.
/// The connections already in its registry's inbox (taken over from a
/// loop given up on or handed off) are served from the start. A loop that
/// cannot start leaves them there, for the supervisor to give its
/// successor.
pub(crate) fn spawn<F: ServiceFactory>(
    shared: Arc<LoopShared>,
    server: Arc<ServerShared>,
    factory: Arc<F>,
    ready: crossbeam_channel::Sender<()>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(format!("vigil-loop-{}", shared.slot)).spawn(move || {
        // Marks the loop exited however the thread ends, unwinding included.
        let _exited = ExitGuard(shared.clone());
        shared.tid.store(sys::thread_id(), Relaxed);
        // Kept for the thread's life: its slot is freed when it ends.
        let stack_registration = sys::stack::register_current_thread();
        if let Some(registration) = &stack_registration {
            let _ = shared.stack_slot.set(registration.slot());
        }
        if let Some(core) = shared.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                log::warn!("loop {} could not be pinned to core {core}", shared.name());
            }
        }
        *lock(&shared.arena) = memory::bind_thread_arena();
        let service = factory.new_service(shared.slot);
        match EventLoop::new(shared.clone(), server, factory, service) {
            Ok(event_loop) => {
                if let Err(err) = event_loop.run(ready) {
                    log::error!("loop {} failed: {err}", shared.name());
                }
            }
            Err(err) => log::error!("loop {} could not start: {err}", shared.name()),
        }
    })
}

struct ExitGuard(Arc<LoopShared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // The thread's allocations are freed by now, but for what it
        // handed to other threads; its thread cache goes when it ends.
        if let Some(arena) = lock(&self.0.arena).take() {
            memory::release_arena(arena);
        }
        self.0.set_state(LoopState::Exited);
    }
}

struct EventLoop<F: ServiceFactory> {
    poll: Poll,
    conns: Slab<Conn>,
    cx: LoopContext<F>,
    scratch: Vec<u8>,
    /// Results of offloaded work, announced by the waker.
    mail: crossbeam_channel::Receiver<Mail>,
    server: Arc<ServerShared>,
    acceptor: Acceptor,
    /// Connections accepted in the current batch, not yet set up.
    accepted: Vec<TcpStream>,
    /// Keys of connections set up in the current batch, not yet read.
    fresh: Vec<usize>,
    /// Connections whose read budget ran out with input possibly left.
    deferred: Vec<usize>,
    next_sweep: Instant,
    sweep_every: Duration,
    drain_deadline: Option<Instant>,
    /// When a draining loop closes the connections idle at its start.
    drain_idle_grace: Option<Instant>,
    /// Acted on a handoff: left the listener, forgot what moved.
    left_slot: bool,
}

/// Where a connection comes from, for `add_conn`.
#[derive(Debug)]
enum Origin {
    /// Accepted from the listener: counted against `max_connections` (and
    /// its address against `max_connections_per_ip`).
    Accepted,
    /// Served by another loop of the slot until now: already counted (the
    /// server's count went down when it left that loop), and bringing its
    /// address's ticket along.
    Adopted(Option<Arc<PeerTicket>>),
}

impl<F: ServiceFactory> EventLoop<F> {
    fn new(
        shared: Arc<LoopShared>,
        server: Arc<ServerShared>,
        factory: Arc<F>,
        service: F::Service,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        *lock(&shared.waker) = Some(waker.clone());
        let (mail_tx, mail) = crossbeam_channel::unbounded();
        let config = &server.config;
        // Timers are checked by a sweep over the connections; a quarter of
        // the shortest timeout keeps them within 25% of their value.
        let shortest = [config.keep_alive_timeout, config.stream_idle_timeout, config.send_timeout]
            .into_iter()
            .fold(config.header_timeout, Duration::min);
        let sweep_every = (shortest / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let now = Instant::now();
        Ok(EventLoop {
            poll,
            conns: Slab::with_capacity(1024),
            cx: LoopContext {
                factory,
                service,
                response: Response::new(),
                date: DateCache::new(),
                head_memo: HeadMemo::default(),
                limits: config.limits.clone(),
                allow_connect: config.allow_connect,
                header_timeout: config.header_timeout,
                min_receive_rate: config.min_receive_rate,
                keep_alive_timeout: config.keep_alive_timeout,
                stream_idle_timeout: config.stream_idle_timeout,
                send_timeout: config.send_timeout,
                now,
                progress: 0,
                unpublished_requests: 0,
                shared,
                draining: false,
                abandoned: false,
                handed_off: false,
                out: Vec::with_capacity(SCRATCH_BYTES),
                offload: server.offload.clone(),
                mail: mail_tx,
                waker,
                next_job_id: 0,
                server: server.clone(),
                panic_log: Default::default(),
            },
            mail,
            scratch: vec![0; SCRATCH_BYTES],
            server,
            acceptor: Acceptor::default(),
            accepted: Vec::with_capacity(accept::ACCEPTS_PER_REARM as usize),
            fresh: Vec::with_capacity(accept::ACCEPTS_PER_REARM as usize),
            deferred: Vec::new(),
            next_sweep: now + sweep_every,
            sweep_every,
            drain_deadline: None,
            drain_idle_grace: None,
            left_slot: false,
        })
    }

    fn run(mut self, ready: crossbeam_channel::Sender<()>) -> io::Result<()> {
        self.acceptor.listen(&self.poll, &self.server)?;
        self.cx.shared.set_state(LoopState::Serving);
        let _ = ready.send(());
        drop(ready);
        self.cx.now = Instant::now();
        self.adopt_inbox();
        let mut events = Events::with_capacity(1024);
        loop {
            self.wait(&mut events)?;
            self.handle(&events);
            if self.after_events() {
                return Ok(());
            }
        }
    }

    /// Polls, with the heartbeat's busy bit clear while it waits.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let timeout = self.poll_timeout();
        self.cx.shared.heartbeat.beat(self.cx.progress, false);
        if let Err(err) = self.poll.poll(events, timeout) {
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        self.cx.progress += 1;
        self.cx.shared.heartbeat.beat(self.cx.progress, true);
        self.cx.now = Instant::now();
        self.cx.date.refresh_at(self.cx.now);
        Ok(())
    }

    /// Serves every event of one wake-up, then the connections whose read
    /// budget ran out.
    fn handle(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_and_share(),
                // Offloaded work came back, a sibling left connections
                // to accept or handed some over, or a flag checked in
                // `after_events` was set.
                WAKER => {
                    self.take_mail();
                    if self.cx.shared.accept_hint.swap(false, Relaxed) {
                        self.accept_and_share();
                    }
                    if self.cx.shared.inbox_hint.swap(false, Relaxed) {
                        self.adopt_inbox();
                    }
                }
                Token(key) => {
                    let closed = event.is_read_closed() || event.is_error();
                    if closed {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.note_peer_closed();
                        }
                    }
                    self.on_conn_event(key, event.is_readable() || closed, event.is_writable());
                }
            }
            if self.cx.abandoned {
                return;
            }
            if self.cx.handed_off && !self.left_slot {
                self.leave_slot();
            }
        }
        for key in std::mem::take(&mut self.deferred) {
            self.on_conn_event(key, true, false);
            if self.cx.abandoned {
                return;
            }
        }
    }

    /// Acts on what the supervisor or the server asked for and runs
    /// timers; true when the loop is done (drained, stopped or given up on).
    fn after_events(&mut self) -> bool {
        self.publish_counters();
        match self.cx.shared.fate() {
            Fate::Abandoned => self.cx.abandoned = true,
            Fate::HandedOff => self.cx.note_handed_off(),
            Fate::Serving => {}
        }
        if self.cx.abandoned {
            self.exit_abandoned();
            return true;
        }
        if self.cx.handed_off && !self.left_slot {
            self.leave_slot();
        }
        if self.server.stop_now.load(Relaxed) {
            self.close_all();
            return true;
        }
        if !self.cx.draining
            && (self.cx.shared.draining.load(Relaxed) || self.server.draining.load(Relaxed))
        {
            self.begin_drain();
        }
        if self.cx.now >= self.next_sweep {
            self.sweep();
        }
        let (now, draining) = (self.cx.now, self.cx.draining || self.left_slot);
        self.acceptor.resume_if_due(&self.poll, &self.server, &self.cx.shared, now, draining);
        if self.cx.draining {
            return self.drained();
        }
        if self.left_slot {
            self.pass_idle_connections();
            if self.conns.is_empty() {
                log::debug!("loop {} handed off and done, exiting", self.cx.shared.name());
                return true;
            }
        }
        false
    }

    /// The supervisor handed this loop off: a fresh loop has the slot's
    /// listener and the connections that were idle. Leave the listener,
    /// forget what moved, and go on with the rest (see
    /// `pass_idle_connections`).
    fn leave_slot(&mut self) {
        self.left_slot = true;
        self.cx.shared.set_state(LoopState::HandedOff);
        self.acceptor.stop_listening(&self.poll, &self.server, &self.cx.shared);
        let moved: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.socket.is_moved())
            .map(|(key, _)| key)
            .collect();
        for &key in &moved {
            self.forget(key);
        }
        log::debug!(
            "loop {} handed off: moved={} kept={}",
            self.cx.shared.name(),
            moved.len(),
            self.conns.len()
        );
    }

    /// A handed-off loop passes each connection to the slot's current loop
    /// as soon as it holds no state (its response written, nothing
    /// buffered), keep-alive and all: the client sees nothing of it.
    fn pass_idle_connections(&mut self) {
        let idle: Vec<usize> =
            self.conns.iter().filter(|(_, conn)| conn.is_clean()).map(|(key, _)| key).collect();
        for key in idle {
            let Some(conn) = self.conns.get(key) else { continue };
            if !conn.socket.claim() {
                self.forget(key);
                continue;
            }
            let conn = self.conns.remove(key);
            self.leave_epoll(&conn);
            {
                let mut registry = self.cx.shared.registry();
                registry.remove(key);
                if registry.is_closed() {
                    // Given up on meanwhile: the supervisor counted this
                    // connection as stuck and shut it down.
                    continue;
                }
                self.server.open_connections.fetch_sub(1, Relaxed);
                self.cx.shared.open_connections.fetch_sub(1, Relaxed);
            }
            let conveyed = match Arc::try_unwrap(conn.socket) {
                Ok(socket) => Conveyed { stream: socket.stream, ticket: socket.ticket },
                Err(shared) => match shared.stream.try_clone() {
                    Ok(stream) => Conveyed { stream, ticket: shared.ticket.clone() },
                    Err(err) => {
                        log::warn!(
                            "loop {} cannot pass a connection on: {err}",
                            self.cx.shared.name()
                        );
                        continue;
                    }
                },
            };
            if let Err(kept) = self.server.deliver(self.cx.shared.slot, conveyed) {
                // No loop of the slot takes connections right now: keep
                // serving it, and try again after its next request.
                self.adopt([kept]);
            }
        }
    }

    /// Serves the connections other loops of the slot handed over.
    fn adopt_inbox(&mut self) {
        let delivered = self.cx.shared.registry().take_inbox();
        self.adopt(delivered);
    }

    /// While draining: done once no connection is left, or at the deadline.
    fn drained(&mut self) -> bool {
        if self.conns.is_empty() {
            log::info!("loop {} drained, exiting", self.cx.shared.name());
            return true;
        }
        if self.drain_deadline.is_some_and(|deadline| self.cx.now >= deadline) {
            log::warn!(
                "loop {} drain timed out, closing connections={}",
                self.cx.shared.name(),
                self.conns.len()
            );
            self.close_all();
            return true;
        }
        false
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.deferred.is_empty() {
            return Some(Duration::ZERO);
        }
        // An idle loop sleeps until something happens: nobody needs it to
        // wake up just to prove it is alive.
        let mut wake_at = None;
        if !self.conns.is_empty() {
            wake_at = Some(self.next_sweep);
        }
        for at in [self.acceptor.paused_until(), self.drain_deadline].into_iter().flatten() {
            wake_at = Some(wake_at.map_or(at, |w: Instant| w.min(at)));
        }
        wake_at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Accepts a batch, sets the connections up, then lets the accept
    /// policy share the rest with the other loops.
    fn accept_and_share(&mut self) {
        let backlog_left = self.accept_batch();
        let (now, mine, shared) = (self.cx.now, self.conns.len(), &self.cx.shared);
        self.acceptor.share(&self.poll, &self.server, shared, now, mine, backlog_left);
    }

    /// Accepts until the backlog is empty.
    fn accept_backlog(&mut self) {
        while self.acceptor.is_listening() {
            self.acceptor.new_batch();
            if !self.accept_batch() {
                break;
            }
        }
    }

    /// Accepts one batch and sets its connections up; true when the
    /// backlog may hold more.
    fn accept_batch(&mut self) -> bool {
        let mut accepted = std::mem::take(&mut self.accepted);
        let (now, shared) = (self.cx.now, &self.cx.shared);
        let more = self.acceptor.accept_batch(&self.poll, &self.server, shared, now, &mut accepted);
        self.add_conns(accepted.drain(..).map(|stream| (stream, Origin::Accepted)));
        self.accepted = accepted;
        more
    }

    /// Serves connections other loops of the slot handed over.
    fn adopt(&mut self, conveyed: impl IntoIterator<Item = Conveyed>) {
        self.add_conns(conveyed.into_iter().map(|c| (c.stream, Origin::Adopted(c.ticket))));
    }

    /// Sets up every connection of `batch`, then reads each.
    ///
    /// All are registered before any is served: a handler that stalls on
    /// the first must not leave the others out of the fd registry, where a
    /// handoff would not find them (they would wait for the stalled one).
    fn add_conns(&mut self, batch: impl IntoIterator<Item = (TcpStream, Origin)>) {
        let mut fresh = std::mem::take(&mut self.fresh);
        fresh
            .extend(batch.into_iter().filter_map(|(stream, origin)| self.add_conn(stream, origin)));
        for &key in &fresh {
            // Clients send their request right after connecting, so it is
            // usually here already: reading now saves a trip through
            // epoll_wait per connection (a third of the syscalls of a
            // `Connection: close` request). If nothing came yet, the
            // registration's event follows.
            self.on_conn_event(key, true, false);
            if self.cx.abandoned {
                break;
            }
        }
        fresh.clear();
        self.fresh = fresh;
    }

    /// Registers one connection (in the slab, the fd registry and epoll);
    /// its key, or `None` if it was refused or could not be set up.
    fn add_conn(&mut self, stream: TcpStream, origin: Origin) -> Option<usize> {
        let server = &self.server;
        let adopted = matches!(origin, Origin::Adopted(_));
        let open = server.open_connections.fetch_add(1, Relaxed);
        if !adopted && open >= server.config.max_connections {
            server.open_connections.fetch_sub(1, Relaxed);
            self.cx.count_rejected();
            conn::refuse_over_limit(&stream, "too many connections", &self.cx.date);
            return None;
        }
        let ticket = match (origin, &server.peers) {
            (Origin::Adopted(ticket), _) => ticket,
            (Origin::Accepted, None) => None,
            // A client gone before it is looked at needs no place.
            (Origin::Accepted, Some(peers)) => match stream.peer_addr() {
                Err(_) => None,
                Ok(peer) => match peers.admit(peer.ip()) {
                    Some(ticket) => Some(ticket),
                    None => {
                        server.open_connections.fetch_sub(1, Relaxed);
                        self.cx.count_rejected();
                        let why = "too many connections from this address";
                        conn::refuse_over_limit(&stream, why, &self.cx.date);
                        return None;
                    }
                },
            },
        };
        // Responses are written whole, once per batch: Nagle would only
        // delay them.
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("set TCP_NODELAY failed: {err}");
        }
        let socket = Arc::new(SharedSocket::new(stream, adopted, ticket));
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if !self.cx.shared.registry().insert(key, socket.clone()) {
            // Abandoned between poll and here; the stream closes on drop.
            server.open_connections.fetch_sub(1, Relaxed);
            return None;
        }
        // Both interests once, edge-triggered: no re-registration later.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket.stream);
        if let Err(err) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("loop {} register failed: {err}", self.cx.shared.name());
            self.cx.shared.registry().remove(key);
            server.open_connections.fetch_sub(1, Relaxed);
            return None;
        }
        entry.insert(Conn::new(socket, key, self.cx.now, self.cx.header_timeout));
        self.cx.shared.open_connections.fetch_add(1, Relaxed);
        if !adopted {
            self.cx.shared.counters.accepted.fetch_add(1, Relaxed);
            server.accepted_total.fetch_add(1, Relaxed);
        }
        Some(key)
    }

    fn take_mail(&mut self) {
        while let Ok(mail) = self.mail.try_recv() {
            // A connection closed meanwhile: its mail is dropped quietly.
            match mail {
                Mail::Done(completion) => {
                    let key = completion.conn;
                    self.serve(key, |conn, scratch, cx| conn.complete(completion, scratch, cx));
                }
                Mail::Body { conn: key, id } => {
                    self.serve(key, |conn, scratch, cx| conn.on_body_ready(id, scratch, cx))
                }
                Mail::Upload { conn: key, id } => {
                    self.serve(key, |conn, scratch, cx| conn.on_upload_mail(id, scratch, cx))
                }
            }
        }
    }

    fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        self.serve(key, |conn, scratch, cx| {
            let mut next = Next::Wait;
            if writable {
                next = conn.on_writable(scratch, cx);
            }
            if readable && next != Next::Close {
                next = conn.on_readable(scratch, cx);
            }
            next
        });
    }

    /// Runs `work` on connection `key` (if it is still open) and acts on
    /// what it returns.
    fn serve(
        &mut self,
        key: usize,
        work: impl FnOnce(&mut Conn, &mut [u8], &mut LoopContext<F>) -> Next,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this batch
        };
        // Not movable while it is being served (a handler may stall here).
        if !conn.socket.claim() {
            self.forget(key);
            return;
        }
        let next = work(conn, &mut self.scratch, &mut self.cx);
        if next != Next::Close {
            conn.socket.release(conn.is_clean());
        }
        match next {
            Next::Wait => {}
            Next::Deferred => self.deferred.push(key),
            Next::Close => self.close(key),
        }
    }

    /// Closes a connection: its socket closes once the registry lets go too
    /// (see `shared::FdRegistry`).
    fn close(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if !conn.socket.claim() {
            self.forget(key);
            return;
        }
        let conn = self.conns.remove(key);
        // Output encoded for this connection and not written has nowhere to go.
        self.cx.out.clear();
        self.leave_epoll(&conn);
        if conn.socket.adopted {
            let _ = conn.socket.stream.shutdown(std::net::Shutdown::Both);
        }
        conn.socket.give_back_ticket();
        let mut registry = self.cx.shared.registry();
        registry.remove(key);
        // Once the registry is closed (abandoned), the supervisor has taken
        // this loop's connections off the server's count.
        if !registry.is_closed() {
            self.server.open_connections.fetch_sub(1, Relaxed);
        }
        drop(registry);
        self.cx.shared.open_connections.fetch_sub(1, Relaxed);
    }

    /// Drops a connection the supervisor moved to another loop, without a
    /// syscall on it but leaving the epoll set. It was taken off the counts
    /// when it moved.
    fn forget(&mut self, key: usize) {
        if let Some(conn) = self.conns.try_remove(key) {
            self.leave_epoll(&conn);
            self.cx.shared.registry().remove(key);
        }
    }

    /// Removes a connection from this loop's epoll set. Closing the fd
    /// would do it too, but not while another loop holds a duplicate.
    fn leave_epoll(&self, conn: &Conn) {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&conn.socket.stream);
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
    }

    /// Applies connection deadlines: idle timeout, 408 for slow requests.
    fn sweep(&mut self) {
        let now = self.cx.now;
        self.next_sweep = next_sweep_after(now, self.sweep_every, self.drain_idle_grace);
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            self.serve(key, |conn, scratch, cx| conn.on_deadline(scratch, cx));
        }
    }

    /// Stops accepting and lets connections finish: idle ones close now,
    /// the others after their next response (which says `Connection: close`).
    fn begin_drain(&mut self) {
        self.cx.draining = true;
        self.cx.shared.set_state(LoopState::Draining);
        // Other loops deliver no more connections here; those already
        // delivered are served (their responses close them).
        let delivered = self.cx.shared.registry().close_inbox();
        self.adopt(delivered);
        if self.server.draining.load(Relaxed) {
            // The whole server stops: clients that connected before the
            // signal are in the backlog and must be served, not reset when
            // the supervisor closes the listener.
            self.accept_backlog();
        }
        self.acceptor.stop_listening(&self.poll, &self.server, &self.cx.shared);
        self.cx.shared.accepted_final.store(true, Relaxed);
        let timeout = if self.server.draining.load(Relaxed) {
            self.server.config.shutdown_timeout
        } else {
            self.server.config.drain_timeout
        };
        self.drain_deadline = Some(self.cx.now + timeout);
        // Idle keep-alive connections are not closed at once: a client may
        // be sending its next request right now, and closing under it
        // would lose that request. Each gets a short grace; a request that
        // comes in it is answered with `Connection: close`.
        let grace = self.cx.now + DRAIN_IDLE_GRACE;
        for (_, conn) in self.conns.iter_mut() {
            conn.close_when_idle_by(grace);
        }
        self.drain_idle_grace = Some(grace);
        self.next_sweep = self.next_sweep.min(grace);
        log::info!("loop {} draining open={}", self.cx.shared.name(), self.conns.len());
    }

    fn publish_counters(&mut self) {
        if self.cx.unpublished_requests > 0 {
            self.cx.shared.counters.requests.fetch_add(self.cx.unpublished_requests, Relaxed);
            self.cx.unpublished_requests = 0;
        }
    }

    /// The supervisor replaced this loop while a handler ran. Its sockets
    /// are already shut down; let go of them and end.
    fn exit_abandoned(&mut self) {
        self.publish_counters();
        self.conns.clear();
        self.cx.shared.open_connections.store(0, Relaxed);
        log::info!(
            "loop {} handler returned after the loop was abandoned; thread exits",
            self.cx.shared.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_before_the_drain_grace_ends_schedules_one_at_its_end() {
        let (now, period) = (Instant::now(), Duration::from_secs(1));
        let grace = now + Duration::from_millis(300);
        assert_eq!(next_sweep_after(now, period, Some(grace)), grace);
        // Past the grace, or without a drain: the regular period.
        assert_eq!(next_sweep_after(grace, period, Some(grace)), grace + period);
        assert_eq!(next_sweep_after(now, period, None), now + period);
        // A grace further than a period away waits for its own sweep.
        let far = now + Duration::from_secs(5);
        assert_eq!(next_sweep_after(now, period, Some(far)), now + period);
    }
}
