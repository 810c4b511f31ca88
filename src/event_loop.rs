//! One event loop: a thread pinned to a core, with its own `mio::Poll` and
//! connection slab, accepting from the listening socket every loop shares.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::conn::{self, Conn, Dispatch, Next};
use crate::http::date::DateCache;
use crate::offload::Completion;
use crate::server::ServerShared;
use crate::shared::{lock, CleanFlag, LoopShared, LoopState};
use crate::sys::{self, sort_io_error, IoVerdict};
use crate::{memory, Response, ServiceFactory};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Accepts after which a loop moves itself to the back of the listener's
/// wait queue (as nginx does every 16). With `EPOLLEXCLUSIVE` the kernel
/// wakes the first waiting epoll instance in the order they were added, so
/// without this the first loop takes nearly every connection whenever it
/// is waiting. It is also the most a loop accepts per wake-up: the listener
/// is level-triggered, so what is left wakes a loop again, the other one
/// first, and a burst of connections is shared.
const ACCEPTS_PER_REARM: u32 = 16;

/// A loop holding more than its share of connections stops accepting for
/// this long. Re-arming alone leaves spreads like 20/45 over two loops when
/// 64 clients connect at once; a pause of a few wake-ups evens them out.
const BALANCE_PAUSE: Duration = Duration::from_millis(20);

/// How long a loop keeps accepting without pausing after a pause in which
/// no other loop accepted anything.
const BALANCE_SUSPEND: Duration = Duration::from_secs(1);

/// Below this many connections a loop takes what comes: an uneven spread of
/// a few connections costs nothing.
const BALANCE_MIN_CONNECTIONS: usize = 8;

/// How long accepting pauses when the process is out of file descriptors,
/// instead of spinning on a listener that stays readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How long an idle keep-alive connection of a draining loop stays open
/// for a request its client may already have sent.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// Size of the loop's read buffer, shared by all its connections.
const SCRATCH_BYTES: usize = 64 * 1024;

/// Starts loop `shared` on a new thread. `ready` is sent once the loop
/// listens, or dropped if it fails to start.
/// `adopt` are connections taken over from a stalled loop, served from the
/// start.
pub(crate) fn spawn<F: ServiceFactory>(
    shared: Arc<LoopShared>,
    server: Arc<ServerShared>,
    factory: Arc<F>,
    adopt: Vec<OwnedFd>,
    ready: crossbeam_channel::Sender<()>,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(format!("vigil-loop-{}", shared.slot)).spawn(move || {
        // Marks the loop exited however the thread ends, unwinding included.
        let _exited = ExitGuard(shared.clone());
        shared.tid.store(sys::thread_id(), Relaxed);
        if let Some(core) = shared.core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                log::warn!("loop {} could not be pinned to core {core}", shared.name());
            }
        }
        *lock(&shared.arena) = memory::bind_thread_arena();
        let service = factory.new_service(shared.slot);
        match EventLoop::new(shared.clone(), server, factory, service) {
            Ok(event_loop) => {
                if let Err(err) = event_loop.run(adopt, ready) {
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
        if let Some(arena) = *lock(&self.0.arena) {
            memory::purge_arena(arena);
        }
        self.0.set_state(LoopState::Exited);
    }
}

struct EventLoop<F: ServiceFactory> {
    poll: Poll,
    conns: Slab<Conn>,
    d: Dispatch<F>,
    scratch: Vec<u8>,
    /// Results of offloaded work, announced by the waker.
    completions: crossbeam_channel::Receiver<Completion>,
    server: Arc<ServerShared>,
    /// The listener is in this loop's epoll set.
    listening: bool,
    /// Accepts since the listener was last (re-)added.
    accepts_since_rearm: u32,
    /// The server's accept count when this loop paused to balance.
    accepted_before_pause: Option<u64>,
    /// No balancing pauses until then (see `resume_accepting_if_due`).
    balance_suspended_until: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Connections whose read budget ran out with input possibly left.
    deferred: Vec<usize>,
    next_sweep: Instant,
    sweep_every: Duration,
    drain_deadline: Option<Instant>,
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
        let (completions_tx, completions) = crossbeam_channel::unbounded();
        let config = &server.config;
        // Timers are checked by a sweep over the connections; a quarter of
        // the shortest timeout keeps them within 25% of their value.
        let sweep_every = (config.header_timeout.min(config.keep_alive_timeout) / 4)
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        let now = Instant::now();
        Ok(EventLoop {
            poll,
            conns: Slab::with_capacity(1024),
            d: Dispatch {
                factory,
                service,
                response: Response::new(),
                date: DateCache::new(),
                limits: config.limits.clone(),
                header_timeout: config.header_timeout,
                keep_alive_timeout: config.keep_alive_timeout,
                now,
                progress: 0,
                unpublished_requests: 0,
                shared,
                draining: false,
                abandoned: false,
                out: Vec::with_capacity(SCRATCH_BYTES),
                offload: server.offload.clone(),
                completions: completions_tx,
                waker,
                next_job_id: 0,
            },
            completions,
            scratch: vec![0; SCRATCH_BYTES],
            server,
            listening: false,
            accepts_since_rearm: 0,
            accepted_before_pause: None,
            balance_suspended_until: None,
            accept_paused_until: None,
            deferred: Vec::new(),
            next_sweep: now + sweep_every,
            sweep_every,
            drain_deadline: None,
        })
    }

    fn run(mut self, adopt: Vec<OwnedFd>, ready: crossbeam_channel::Sender<()>) -> io::Result<()> {
        self.listen()?;
        self.d.shared.set_state(LoopState::Serving);
        let _ = ready.send(());
        drop(ready);
        self.d.now = Instant::now();
        for fd in adopt {
            self.add_conn(std::net::TcpStream::from(fd));
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            self.d.shared.heartbeat.beat(self.d.progress, false);
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            self.d.progress += 1;
            self.d.shared.heartbeat.beat(self.d.progress, true);
            self.d.now = Instant::now();
            self.d.date.refresh(SystemTime::now());

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_and_share(),
                    // Offloaded work came back, a sibling left connections
                    // to accept, or a flag below was set.
                    WAKER => {
                        self.take_completions();
                        if self.d.shared.accept_hint.swap(false, Relaxed) {
                            self.accept_and_share();
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
                if self.d.abandoned {
                    break;
                }
            }
            if !self.d.abandoned && !self.deferred.is_empty() {
                for key in std::mem::take(&mut self.deferred) {
                    self.on_conn_event(key, true, false);
                }
            }
            self.publish_counters();

            if self.d.abandoned || self.d.shared.abandoned.load(Relaxed) {
                self.exit_abandoned();
                return Ok(());
            }
            if self.server.stop_now.load(Relaxed) {
                self.close_all();
                return Ok(());
            }
            if !self.d.draining
                && (self.d.shared.draining.load(Relaxed) || self.server.draining.load(Relaxed))
            {
                self.begin_drain();
            }
            if self.d.now >= self.next_sweep {
                self.sweep();
            }
            self.resume_accepting_if_due();
            if self.d.draining {
                if self.conns.is_empty() {
                    log::info!("loop {} drained, exiting", self.d.shared.name());
                    return Ok(());
                }
                if self.drain_deadline.is_some_and(|deadline| self.d.now >= deadline) {
                    log::warn!(
                        "loop {} drain timed out, closing connections={}",
                        self.d.shared.name(),
                        self.conns.len()
                    );
                    self.close_all();
                    return Ok(());
                }
            }
        }
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
        for at in [self.accept_paused_until, self.drain_deadline].into_iter().flatten() {
            wake_at = Some(wake_at.map_or(at, |w: Instant| w.min(at)));
        }
        wake_at.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Adds the shared listener to this loop's epoll set.
    ///
    /// `EPOLLEXCLUSIVE`: without it every loop waiting in `epoll_wait` is
    /// woken for each new connection and all but one find nothing (the
    /// thundering herd). With it the kernel wakes one *waiting* loop; a
    /// loop that is busy, or stalled in a handler, is not waiting and so
    /// takes no new connections, which is what keeps a stall local.
    fn listen(&mut self) -> io::Result<()> {
        sys::epoll_add_exclusive(
            self.poll.as_raw_fd(),
            self.server.listener.as_raw_fd(),
            LISTENER.0 as u64,
        )?;
        self.listening = true;
        self.accepts_since_rearm = 0;
        Ok(())
    }

    fn stop_listening(&mut self) {
        if self.listening {
            if let Err(err) =
                sys::epoll_delete(self.poll.as_raw_fd(), self.server.listener.as_raw_fd())
            {
                log::warn!("loop {} could not leave the listener: {err}", self.d.shared.name());
            }
            self.listening = false;
        }
    }

    /// Accepts a batch; if the backlog may hold more, re-arms and wakes
    /// the next loop to take its share.
    ///
    /// A burst of connections raises the listener's readiness many times
    /// while the first loop woken has not yet left `epoll_wait`; the kernel
    /// counts each as waking that loop, so the others are never woken. The
    /// nudge (a `mio::Waker`, about once per 16 connections of a burst)
    /// makes the next loop accept too.
    fn accept_and_share(&mut self) {
        let backlog_left = self.accept_batch();
        let balancing_allowed =
            self.balance_suspended_until.map_or(true, |until| self.d.now >= until);
        if balancing_allowed && self.holds_more_than_its_share() {
            // Leave new connections to the others for a moment (the
            // listener is level-triggered: the next waiting loop gets them).
            self.stop_listening();
            self.accept_paused_until = Some(self.d.now + BALANCE_PAUSE);
            self.accepted_before_pause = Some(self.server.accepted_total.load(Relaxed));
            self.server.nudge_next_loop(self.d.shared.slot);
            return;
        }
        self.rearm_if_due();
        if backlog_left {
            self.server.nudge_next_loop(self.d.shared.slot);
        }
    }

    /// More than a quarter over an even share of the open connections
    /// (and enough of them for the difference to matter).
    fn holds_more_than_its_share(&self) -> bool {
        let loops = self.server.config.loops;
        let mine = self.conns.len();
        let total = self.server.open_connections.load(Relaxed);
        loops > 1 && mine >= BALANCE_MIN_CONNECTIONS && mine * 4 * loops > total * 5
    }

    /// Accepts up to the re-arm limit; true when it stopped at the limit.
    fn accept_batch(&mut self) -> bool {
        if !self.listening {
            return false;
        }
        while self.accepts_since_rearm < ACCEPTS_PER_REARM {
            match sys::accept(&self.server.listener) {
                Ok(stream) => {
                    self.add_conn(stream);
                    self.accepts_since_rearm += 1;
                }
                Err(err) => match sort_io_error(&err) {
                    IoVerdict::Wait => return false,
                    IoVerdict::Retry | IoVerdict::PeerGone => continue,
                    IoVerdict::OutOfFds => {
                        log::warn!(
                            "loop {} out of file descriptors, pausing accept for {:?}: {err}",
                            self.d.shared.name(),
                            ACCEPT_PAUSE
                        );
                        self.stop_listening();
                        self.accept_paused_until = Some(self.d.now + ACCEPT_PAUSE);
                        break;
                    }
                    IoVerdict::Fatal => {
                        log::error!("loop {} accept failed: {err}", self.d.shared.name());
                        break;
                    }
                },
            }
        }
        self.accepts_since_rearm >= ACCEPTS_PER_REARM
    }

    /// Accepts until the backlog is empty.
    fn accept_backlog(&mut self) {
        while self.listening {
            self.accepts_since_rearm = 0;
            if !self.accept_batch() {
                break;
            }
        }
    }

    /// Moves this loop to the back of the listener's wait queue.
    fn rearm_if_due(&mut self) {
        if self.listening && self.accepts_since_rearm >= ACCEPTS_PER_REARM {
            self.stop_listening();
            if let Err(err) = self.listen() {
                log::error!("loop {} could not re-arm the listener: {err}", self.d.shared.name());
            }
        }
    }

    fn resume_accepting_if_due(&mut self) {
        if self.accept_paused_until.is_some_and(|until| self.d.now >= until) {
            self.accept_paused_until = None;
            // Nobody accepted while this loop stood aside: the others are
            // stuck (or there was nothing to accept). Standing aside again
            // would only delay new clients until a stalled loop is replaced.
            if self.accepted_before_pause.take() == Some(self.server.accepted_total.load(Relaxed)) {
                self.balance_suspended_until = Some(self.d.now + BALANCE_SUSPEND);
            }
            if !self.d.draining {
                if let Err(err) = self.listen() {
                    log::error!("loop {} could not resume accepting: {err}", self.d.shared.name());
                }
            }
        }
    }

    fn add_conn(&mut self, mut stream: std::net::TcpStream) {
        let server = &self.server;
        if server.open_connections.fetch_add(1, Relaxed) >= server.config.max_connections {
            server.open_connections.fetch_sub(1, Relaxed);
            self.d.shared.counters.rejected.fetch_add(1, Relaxed);
            conn::refuse_over_limit(&mut stream, &self.d.date);
            return;
        }
        // Responses are written whole, once per batch: Nagle would only
        // delay them.
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("set TCP_NODELAY failed: {err}");
        }
        let mut stream = TcpStream::from_std(stream);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let clean = Arc::new(CleanFlag::default());
        {
            let mut registry = self.d.shared.registry();
            if registry.is_closed() {
                // Abandoned between poll and here; the stream closes on drop.
                server.open_connections.fetch_sub(1, Relaxed);
                return;
            }
            registry.insert(key, stream.as_raw_fd(), clean.clone());
        }
        // Both interests once, edge-triggered: no re-registration later.
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::error!("loop {} register failed: {err}", self.d.shared.name());
            let mut registry = self.d.shared.registry();
            registry.remove(key);
            drop(stream);
            server.open_connections.fetch_sub(1, Relaxed);
            return;
        }
        entry.insert(Conn::new(stream, key, clean, self.d.now, self.d.header_timeout));
        self.d.shared.open_connections.fetch_add(1, Relaxed);
        self.d.shared.counters.accepted.fetch_add(1, Relaxed);
        server.accepted_total.fetch_add(1, Relaxed);
        // Clients send their request right after connecting, so it is
        // usually here already: reading now saves a trip through epoll_wait
        // per connection (a third of the syscalls of a `Connection: close`
        // request). If nothing came yet, the registration's event follows.
        self.on_conn_event(key, true, false);
    }

    fn take_completions(&mut self) {
        while let Ok(completion) = self.completions.try_recv() {
            let key = completion.conn;
            // A connection closed meanwhile: its result is dropped quietly.
            self.serve(key, |conn, scratch, d| conn.complete(completion, scratch, d));
        }
    }

    fn on_conn_event(&mut self, key: usize, readable: bool, writable: bool) {
        self.serve(key, |conn, scratch, d| {
            let mut next = Next::Wait;
            if writable {
                next = conn.on_writable(scratch, d);
            }
            if readable && next != Next::Close {
                next = conn.on_readable(scratch, d);
            }
            next
        });
    }

    /// Runs `work` on connection `key` (if it is still open) and acts on
    /// what it returns.
    fn serve(
        &mut self,
        key: usize,
        work: impl FnOnce(&mut Conn, &mut [u8], &mut Dispatch<F>) -> Next,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return; // closed earlier in this batch
        };
        // Not movable while it is being served (a handler may stall here).
        conn.clean.set(false);
        let next = work(conn, &mut self.scratch, &mut self.d);
        if next != Next::Close {
            conn.clean.set(conn.is_clean());
        }
        match next {
            Next::Wait => {}
            Next::Deferred => self.deferred.push(key),
            Next::Close => self.close(key),
        }
    }

    /// Closes a connection; the fd is closed under the registry lock (see
    /// `shared::FdRegistry`).
    fn close(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        // Output encoded for this connection and not written has nowhere to go.
        self.d.out.clear();
        let mut registry = self.d.shared.registry();
        registry.remove(key);
        drop(conn);
        // Once the registry is closed (abandoned), the supervisor has taken
        // this loop's connections off the server's count.
        if !registry.is_closed() {
            self.server.open_connections.fetch_sub(1, Relaxed);
        }
        self.d.shared.open_connections.fetch_sub(1, Relaxed);
        drop(registry);
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.close(key);
        }
    }

    /// Applies connection deadlines: idle timeout, 408 for slow requests.
    fn sweep(&mut self) {
        self.next_sweep = self.d.now + self.sweep_every;
        let now = self.d.now;
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline <= now)
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.on_deadline(&mut self.d) == Next::Close {
                    self.close(key);
                }
            }
        }
    }

    /// Stops accepting and lets connections finish: idle ones close now,
    /// the others after their next response (which says `Connection: close`).
    fn begin_drain(&mut self) {
        self.d.draining = true;
        self.d.shared.set_state(LoopState::Draining);
        if self.server.draining.load(Relaxed) {
            // The whole server stops: clients that connected before the
            // signal are in the backlog and must be served, not reset when
            // the supervisor closes the listener.
            self.accept_backlog();
        }
        self.stop_listening();
        self.d.shared.accepted_final.store(true, Relaxed);
        let timeout = if self.server.draining.load(Relaxed) {
            self.server.config.shutdown_timeout
        } else {
            self.server.config.drain_timeout
        };
        self.drain_deadline = Some(self.d.now + timeout);
        // Idle keep-alive connections are not closed at once: a client may
        // be sending its next request right now, and closing under it
        // would lose that request. Each gets a short grace; a request that
        // comes in it is answered with `Connection: close`.
        let grace = self.d.now + DRAIN_IDLE_GRACE;
        for (_, conn) in self.conns.iter_mut() {
            conn.close_when_idle_by(grace);
        }
        self.next_sweep = self.next_sweep.min(grace);
        log::info!("loop {} draining open={}", self.d.shared.name(), self.conns.len());
    }

    fn publish_counters(&mut self) {
        if self.d.unpublished_requests > 0 {
            self.d.shared.counters.requests.fetch_add(self.d.unpublished_requests, Relaxed);
            self.d.unpublished_requests = 0;
        }
    }

    /// The supervisor replaced this loop while a handler ran. Its sockets
    /// are already shut down; close them (under the registry lock) and go.
    fn exit_abandoned(&mut self) {
        self.publish_counters();
        let registry = self.d.shared.registry();
        self.conns.clear();
        self.d.shared.open_connections.store(0, Relaxed);
        drop(registry);
        log::info!(
            "loop {} handler returned after the loop was abandoned; thread exits",
            self.d.shared.name()
        );
    }
}
