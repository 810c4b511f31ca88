//! The `Server` builder, the running server's shared state, and the handle
//! (`ServerHandle`, `Control`) an application keeps.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::memory::{ArenaStats, ProcessMemory};
use crate::shared::{lock, LoopShared, LoopState, SlotCounters};
use crate::supervisor::{self, Command};
use crate::{sys, Limits, ServiceFactory};

/// Accept backlog of the shared socket. Large, because a stalled loop's
/// clients reconnect all at once (the kernel caps it at somaxconn).
const BACKLOG: i32 = 4096;

/// State the loops, the supervisor and the handles share.
#[derive(Debug)]
pub(crate) struct ServerShared {
    pub(crate) config: Config,
    pub(crate) listener: TcpListener,
    pub(crate) local_addr: SocketAddr,
    pub(crate) started: Instant,
    /// Open connections over all loops, for `max_connections`.
    pub(crate) open_connections: AtomicUsize,
    /// Connections accepted by any loop, ever (see `EventLoop::accept_and_share`).
    pub(crate) accepted_total: AtomicU64,
    /// A graceful shutdown is in progress.
    pub(crate) draining: AtomicBool,
    /// Stop at once: loops close everything and exit.
    pub(crate) stop_now: AtomicBool,
    pub(crate) slots: Vec<Arc<SlotCounters>>,
    /// The current loop of each slot.
    pub(crate) loops: Mutex<Vec<Arc<LoopShared>>>,
    /// Abandoned loops whose threads have not returned.
    pub(crate) abandoned: Mutex<Vec<Arc<LoopShared>>>,
    pub(crate) reclaimed: AtomicU64,
    pub(crate) intensity_exceeded: AtomicU64,
    pub(crate) memory: Mutex<MemoryReport>,
    pub(crate) admin_addr: std::sync::OnceLock<SocketAddr>,
    pub(crate) offload: Arc<crate::offload::Pool>,
}

/// The supervisor's last memory reading.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryReport {
    pub(crate) process: Option<ProcessMemory>,
    /// Keyed by (slot, generation).
    pub(crate) arenas: Vec<((usize, u32), ArenaStats)>,
}

impl ServerShared {
    fn current_loops(&self) -> Vec<Arc<LoopShared>> {
        lock(&self.loops).clone()
    }

    /// Asks the loop after `slot` to accept what is left in the backlog.
    pub(crate) fn nudge_next_loop(&self, slot: usize) {
        let next = {
            let loops = lock(&self.loops);
            if loops.len() < 2 {
                return;
            }
            loops[(slot + 1) % loops.len()].clone()
        };
        next.accept_hint.store(true, Relaxed);
        next.wake();
    }
}

/// Builds and starts a server.
///
/// # Examples
///
/// ```no_run
/// use vigil::{Request, Response, Server};
///
/// let handle = Server::new(|_slot: usize| {
///     |_req: &Request<'_>, res: &mut Response| {
///         res.header("Content-Type", "text/plain").body_static(b"Hello World\n");
///     }
/// })
/// .listen("127.0.0.1:8080".parse().unwrap())
/// .start()
/// .expect("bind");
/// println!("listening on {}", handle.local_addr());
/// handle.wait();
/// ```
#[derive(Debug)]
pub struct Server<F> {
    config: Config,
    factory: F,
}

impl<F: ServiceFactory> Server<F> {
    /// A server with the default configuration, making each loop's
    /// service with `factory`.
    pub fn new(factory: F) -> Self {
        Server { config: Config::default(), factory }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    pub fn loops(mut self, loops: usize) -> Self {
        self.config.loops = loops;
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.stall_timeout = timeout;
        self
    }

    /// Binds the socket, starts the loops and the supervisor.
    pub fn start(self) -> Result<ServerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        let listener = TcpListener::bind(self.config.listen).map_err(StartError::Bind)?;
        sys::set_backlog(&listener, BACKLOG).map_err(StartError::Bind)?;
        listener.set_nonblocking(true).map_err(StartError::Bind)?;
        let local_addr = listener.local_addr().map_err(StartError::Bind)?;
        let offload =
            crate::offload::Pool::start(self.config.offload_threads, self.config.offload_queue)
                .map_err(StartError::Spawn)?;
        let slots = (0..self.config.loops).map(|_| Arc::new(SlotCounters::default())).collect();
        let shared = Arc::new(ServerShared {
            config: self.config,
            listener,
            local_addr,
            started: Instant::now(),
            open_connections: AtomicUsize::new(0),
            accepted_total: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            stop_now: AtomicBool::new(false),
            slots,
            loops: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            reclaimed: AtomicU64::new(0),
            intensity_exceeded: AtomicU64::new(0),
            memory: Mutex::new(MemoryReport::default()),
            admin_addr: std::sync::OnceLock::new(),
            offload: Arc::new(offload),
        });
        let (commands, supervisor) =
            supervisor::start(shared.clone(), Arc::new(self.factory)).map_err(StartError::Spawn)?;
        let handle = ServerHandle {
            control: Control { shared: shared.clone(), commands },
            supervisor: Some(supervisor),
        };
        if let Some(addr) = shared.config.admin {
            let token = shared.config.admin_token.clone();
            let bound =
                crate::admin::start(addr, token, handle.control()).map_err(StartError::Admin)?;
            let _ = shared.admin_addr.set(bound);
            log::info!("admin plane listening addr={bound}");
        }
        Ok(handle)
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Bind(io::Error),
    Spawn(io::Error),
    Admin(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(err) => write!(f, "invalid configuration: {err}"),
            StartError::Bind(err) => write!(f, "cannot listen: {err}"),
            StartError::Spawn(err) => write!(f, "cannot start threads: {err}"),
            StartError::Admin(err) => write!(f, "cannot start the admin plane: {err}"),
        }
    }
}

impl std::error::Error for StartError {}

/// How a server ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request (gracefully or not).
    Stopped,
    /// Too many abandoned threads were alive (`max_abandoned`): only a new
    /// process can free them. The binary exits with status 3.
    AbandonedBudgetExceeded,
}

/// A cloneable remote control of a running server, for the admin plane,
/// signal handlers and the application.
#[derive(Clone, Debug)]
pub struct Control {
    shared: Arc<ServerShared>,
    commands: Sender<Command>,
}

impl Control {
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The admin plane's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared.admin_addr.get().copied()
    }

    /// Stops accepting, lets in-flight requests finish (their responses say
    /// `Connection: close`), closes idle connections, and ends the server
    /// within the shutdown timeout.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }

    /// Ends the server at once: open connections are closed.
    pub fn stop(&self) {
        self.shared.stop_now.store(true, Relaxed);
        let _ = self.commands.send(Command::Stop);
        for event_loop in self.shared.current_loops() {
            event_loop.wake();
        }
    }

    /// Gracefully replaces the loop of `slot`: a fresh loop takes new
    /// connections at once, the old one finishes what it has and exits.
    pub fn recycle(&self, slot: usize) -> Result<(), UnknownSlot> {
        if slot >= self.shared.config.loops {
            return Err(UnknownSlot(slot));
        }
        let _ = self.commands.send(Command::Recycle(slot));
        Ok(())
    }

    /// Recycles every loop, one after another (a rolling restart).
    pub fn recycle_all(&self) {
        for slot in 0..self.shared.config.loops {
            let _ = self.commands.send(Command::Recycle(slot));
        }
    }

    /// Ready for traffic: not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shared.draining.load(Relaxed) && !self.shared.stop_now.load(Relaxed)
    }

    /// Healthy: at least one loop serves and the abandoned-thread budget is
    /// not used up.
    pub fn is_healthy(&self) -> bool {
        let snapshot = self.snapshot();
        snapshot.loops.iter().any(|l| l.state == LoopState::Serving)
            && snapshot.abandoned_alive < self.shared.config.max_abandoned
    }

    /// Counters and states of every loop, read now.
    pub fn snapshot(&self) -> Snapshot {
        let shared = &self.shared;
        let memory = lock(&shared.memory).clone();
        let describe = |l: &Arc<LoopShared>| {
            let counters = &l.counters;
            LoopSnapshot {
                slot: l.slot,
                generation: l.generation,
                state: l.state(),
                core: l.core,
                thread_id: l.tid.load(Relaxed),
                requests: counters.requests.load(Relaxed),
                accepted: counters.accepted.load(Relaxed),
                open_connections: l.open_connections.load(Relaxed),
                handler_panics: counters.handler_panics.load(Relaxed),
                rejected: counters.rejected.load(Relaxed),
                replaced_stalled: counters.replaced_stalled.load(Relaxed),
                replaced_died: counters.replaced_died.load(Relaxed),
                recycled: counters.recycled.load(Relaxed),
                offloaded: counters.offloaded.load(Relaxed),
                memory: memory
                    .arenas
                    .iter()
                    .find(|(key, _)| *key == (l.slot, l.generation))
                    .map(|(_, stats)| *stats),
                uptime_seconds: l.started.elapsed().as_secs_f64(),
            }
        };
        let loops: Vec<LoopSnapshot> = shared.current_loops().iter().map(describe).collect();
        let abandoned: Vec<LoopSnapshot> = lock(&shared.abandoned).iter().map(describe).collect();
        Snapshot {
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            ready: self.is_ready(),
            requests: shared.slots.iter().map(|s| s.requests.load(Relaxed)).sum(),
            replaced_stalled: shared.slots.iter().map(|s| s.replaced_stalled.load(Relaxed)).sum(),
            replaced_died: shared.slots.iter().map(|s| s.replaced_died.load(Relaxed)).sum(),
            recycled: shared.slots.iter().map(|s| s.recycled.load(Relaxed)).sum(),
            abandoned_alive: abandoned.len(),
            max_abandoned: shared.config.max_abandoned,
            reclaimed: shared.reclaimed.load(Relaxed),
            restart_intensity_exceeded: shared.intensity_exceeded.load(Relaxed),
            open_connections: shared.open_connections.load(Relaxed),
            offload: OffloadSnapshot {
                queued: shared.offload.counters.queued.load(Relaxed),
                running: shared.offload.counters.running.load(Relaxed),
                completed: shared.offload.counters.completed.load(Relaxed),
                rejected: shared.offload.counters.rejected.load(Relaxed),
                panicked: shared.offload.counters.panicked.load(Relaxed),
            },
            memory: memory.process,
            loops,
            abandoned,
        }
    }
}

/// `recycle` was asked for a slot the server does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownSlot(pub usize);

impl std::fmt::Display for UnknownSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no loop in slot {}", self.0)
    }
}

impl std::error::Error for UnknownSlot {}

/// The running server. Dropping it stops the server at once; call
/// [`shutdown`](Control::shutdown) and [`wait`](ServerHandle::wait) for a
/// graceful end.
#[derive(Debug)]
pub struct ServerHandle {
    control: Control,
    supervisor: Option<JoinHandle<Outcome>>,
}

impl std::ops::Deref for ServerHandle {
    type Target = Control;

    fn deref(&self) -> &Control {
        &self.control
    }
}

impl ServerHandle {
    /// A cloneable control for other threads.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Blocks until the server has ended (after `shutdown`, `stop`, or an
    /// exhausted abandoned budget).
    pub fn wait(mut self) -> Outcome {
        self.join()
    }

    fn join(&mut self) -> Outcome {
        match self.supervisor.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                log::error!("supervisor panicked");
                Outcome::Stopped
            }),
            None => Outcome::Stopped,
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.supervisor.is_some() {
            self.control.stop();
            self.join();
        }
    }
}

/// Counters and states of a server at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub uptime_seconds: f64,
    pub ready: bool,
    /// Requests answered, all loops of all generations.
    pub requests: u64,
    pub replaced_stalled: u64,
    pub replaced_died: u64,
    pub recycled: u64,
    pub abandoned_alive: usize,
    pub max_abandoned: usize,
    /// Abandoned threads whose handler returned and that exited.
    pub reclaimed: u64,
    /// Times the restart intensity limit was exceeded.
    pub restart_intensity_exceeded: u64,
    pub open_connections: usize,
    pub offload: OffloadSnapshot,
    /// Process memory; `allocated`/`active`/`resident` are zero without jemalloc.
    pub memory: Option<ProcessMemory>,
    /// The current loop of each slot.
    pub loops: Vec<LoopSnapshot>,
    /// Abandoned loops whose threads are still alive.
    pub abandoned: Vec<LoopSnapshot>,
}

/// The offload pool in a [`Snapshot`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OffloadSnapshot {
    /// Jobs waiting for a pool thread now.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    pub completed: u64,
    /// Jobs refused (answered 503) because the queue was full.
    pub rejected: u64,
    /// Jobs that panicked (answered 500).
    pub panicked: u64,
}

/// One loop in a [`Snapshot`]. Counters are per slot: they keep counting
/// across replacements.
#[derive(Clone, Debug, Serialize)]
pub struct LoopSnapshot {
    pub slot: usize,
    pub generation: u32,
    pub state: LoopState,
    pub core: Option<usize>,
    pub thread_id: i32,
    pub requests: u64,
    pub accepted: u64,
    pub open_connections: usize,
    pub handler_panics: u64,
    pub rejected: u64,
    pub replaced_stalled: u64,
    pub replaced_died: u64,
    pub recycled: u64,
    /// Requests handed to the offload pool (including refused ones).
    pub offloaded: u64,
    /// The loop's jemalloc arena, when jemalloc is the allocator.
    pub memory: Option<ArenaStats>,
    pub uptime_seconds: f64,
}
