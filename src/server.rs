//! The `Server` builder and the [`ServerHandle`] a running server is kept by.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError};
use crate::control::{Control, Snapshot, UnknownSlot};
use crate::shared::{
    Histogram, MemoryReport, PeerCounts, ServerShared, SlotCounters, UpgradeState,
};
use crate::supervisor::{self, Outcome};
use crate::{admin, handover, offload, sys, Limits, ServiceFactory};

/// Accept backlog of the shared socket. Large, because a stalled loop's
/// clients reconnect all at once (the kernel caps it at somaxconn).
const BACKLOG: i32 = 4096;

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
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
}

impl<F: ServiceFactory> Server<F> {
    /// A server with the default configuration, making each loop's
    /// service with `factory`.
    pub fn new(factory: F) -> Self {
        Server { config: Config::default(), factory, listener: None, admin_listener: None }
    }

    /// Serves on `listener`, a socket already bound and listening (from
    /// systemd's socket activation or the process this one replaces: see
    /// [`Inherited`](crate::Inherited)), instead of binding
    /// [`Config::listen`]. Another process may hold the same socket, so
    /// vigil never shuts it down: a shutdown only closes this process's fd.
    /// It is made non-blocking, which its other holders share (the flag
    /// belongs to the open socket, not to one fd).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Serves the admin plane on `listener` (as [`listener`](Self::listener)
    /// does for the data plane), whether or not [`Config::admin`] is set.
    pub fn admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The address to listen on (port 0 picks a free one; see
    /// [`ServerHandle::local_addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// The number of event loops (default: one per core).
    pub fn loops(mut self, loops: usize) -> Self {
        self.config.loops = loops;
        self
    }

    /// Limits on what a client may send.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// How long a busy loop may go without progress before it is replaced.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.stall_timeout = timeout;
        self
    }

    /// Binds the socket, starts the loops and the supervisor.
    pub fn start(mut self) -> Result<ServerHandle, StartError> {
        self.config.validate().map_err(StartError::Config)?;
        fit_connections_to_file_limit(&mut self.config);
        let inherited = self.listener.is_some();
        let listener = match self.listener.take() {
            // Its backlog is its owner's choice.
            Some(listener) => listener,
            None => {
                let listener = TcpListener::bind(self.config.listen).map_err(StartError::Bind)?;
                sys::set_backlog(&listener, BACKLOG).map_err(StartError::Bind)?;
                listener
            }
        };
        listener.set_nonblocking(true).map_err(StartError::Bind)?;
        let local_addr = listener.local_addr().map_err(StartError::Bind)?;
        let offload = offload::Pool::start(self.config.offload_threads, self.config.offload_queue)
            .map_err(StartError::Spawn)?;
        if let Some(signal) = self.config.stack_signal {
            if let Err(why) = sys::stack::install(signal) {
                log::warn!(
                    "stack capture off: {why}; stall reports will tell only what /proc does"
                );
            }
        }
        let slots = (0..self.config.loops).map(|_| Arc::new(SlotCounters::default())).collect();
        let factory = Arc::new(self.factory);
        let metrics_of = factory.clone();
        let per_ip = self.config.max_connections_per_ip;
        let peers = (per_ip > 0).then(|| PeerCounts::new(per_ip));
        let shared = Arc::new(ServerShared {
            config: self.config,
            listener,
            listener_shared: AtomicBool::new(inherited),
            successor: AtomicU32::new(0),
            admin_socket: OnceLock::new(),
            listener_inherited: inherited,
            upgrade: Mutex::new(UpgradeState::Idle),
            local_addr,
            started: Instant::now(),
            open_connections: AtomicUsize::new(0),
            peers,
            accepted_total: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            stop_now: AtomicBool::new(false),
            shutdown_pending: AtomicBool::new(false),
            slots,
            loops: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            reclaimed: AtomicU64::new(0),
            handed_off: Mutex::new(Vec::new()),
            handoff_durations: Histogram::default(),
            intensity_exceeded: AtomicU64::new(0),
            memory: Mutex::new(MemoryReport::default()),
            admin_addr: OnceLock::new(),
            admin_waker: OnceLock::new(),
            offload: Arc::new(offload),
            forensics: crate::forensics::Forensics::default(),
            service_metrics: crate::shared::ServiceMetrics(Box::new(move |out: &mut String| {
                metrics_of.render_metrics(out)
            })),
        });
        let (commands, supervisor) =
            supervisor::start(shared.clone(), factory).map_err(StartError::Spawn)?;
        let mut handle = ServerHandle {
            control: Control::new(shared.clone(), commands, supervisor.thread().clone()),
            supervisor: Some(supervisor),
            admin: None,
        };
        let admin_listener = match (self.admin_listener, shared.config.admin) {
            (Some(listener), _) => Some(listener),
            (None, Some(addr)) => Some(admin::bind(addr).map_err(StartError::Admin)?),
            (None, None) => None,
        };
        if let Some(listener) = admin_listener {
            // Kept to hand over on an upgrade (the plane's own is moved
            // into its poll loop).
            let duplicate = listener.try_clone().map_err(StartError::Admin)?;
            let _ = shared.admin_socket.set(duplicate);
            let token = shared.config.admin_token.clone();
            let plane =
                admin::start(listener, token, handle.control()).map_err(StartError::Admin)?;
            let _ = shared.admin_addr.set(plane.addr);
            let _ = shared.admin_waker.set(plane.waker());
            log::info!("admin plane listening addr={}", plane.addr);
            handle.admin = Some(plane);
        }
        Ok(handle)
    }
}

/// Files a server needs besides its connections: epoll instances, wakers and
/// listeners, the admin plane's connections, logs, the files a service opens.
fn reserved_files(config: &Config) -> u64 {
    let admin = if config.admin.is_some() { admin::MAX_CONNECTIONS as u64 + 8 } else { 0 };
    // Per loop: epoll, waker, and the same again for a handed-off thread.
    64 + admin + 4 * config.loops as u64 * (1 + config.max_handed_off as u64)
}

/// Raises the open-file limit as far as allowed and clamps
/// `max_connections` to what it leaves: past the limit, new clients would
/// get neither an answer nor a 503, only a backlog nobody can accept from.
///
/// What it leaves is halved: a handoff moves a loop's idle connections to
/// its replacement as duplicated descriptors, and the old thread holds its
/// own until its slow request ends, so for that while each of them has two.
/// Without that room the duplicates (and the replacement's epoll instance)
/// would fail for want of a descriptor just when they are needed.
fn fit_connections_to_file_limit(config: &mut Config) {
    let limit = match sys::raise_open_file_limit() {
        Ok(limit) => limit,
        Err(err) => {
            log::warn!("cannot read the open-file limit: {err}");
            return;
        }
    };
    let open = sys::open_file_count().unwrap_or_else(|err| {
        log::warn!("cannot count the open files: {err}");
        0
    });
    let usable = (limit.saturating_sub(open + reserved_files(config)) / 2).max(1);
    if config.max_connections as u64 > usable {
        log::warn!(
            "max_connections={} clamped_to={usable} open_file_limit={limit} open_at_start={open}: raise the limit (ulimit -n, LimitNOFILE=) to serve more",
            config.max_connections
        );
        config.max_connections = usize::try_from(usable).unwrap_or(usize::MAX);
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A configuration value cannot be used.
    Config(ConfigError),
    /// The listening socket could not be set up.
    Bind(io::Error),
    /// A thread could not be started, or a loop did not start serving.
    Spawn(io::Error),
    /// The admin plane could not listen.
    Admin(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(err) => write!(f, "invalid configuration: {err}"),
            StartError::Bind(err) => write!(f, "cannot listen: {err}"),
            StartError::Spawn(err) => write!(f, "cannot start: {err}"),
            StartError::Admin(err) => write!(f, "cannot start the admin plane: {err}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The running server. Dropping it stops the server at once; call
/// [`shutdown`](Control::shutdown) and [`wait`](ServerHandle::wait) for a
/// graceful end.
#[derive(Debug)]
pub struct ServerHandle {
    control: Control,
    supervisor: Option<JoinHandle<Outcome>>,
    /// Stops when the handle goes, after the server: it answers (`/readyz`
    /// 503) for as long as a shutdown lasts.
    admin: Option<admin::AdminPlane>,
}

impl ServerHandle {
    /// A cloneable control for other threads.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The address the data plane listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.control.local_addr()
    }

    /// The admin plane's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control.admin_addr()
    }

    /// Counters and states of every loop, read now (see [`Control::snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        self.control.snapshot()
    }

    /// Drains gracefully (see [`Control::shutdown`]); [`wait`](Self::wait) for the end.
    pub fn shutdown(&self) {
        self.control.shutdown()
    }

    /// Ends the server at once (see [`Control::stop`]).
    pub fn stop(&self) {
        self.control.stop()
    }

    /// Gracefully replaces the loop of `slot` (see [`Control::recycle`]).
    pub fn recycle(&self, slot: usize) -> Result<(), UnknownSlot> {
        self.control.recycle(slot)
    }

    /// Recycles every loop, one after another.
    pub fn recycle_all(&self) {
        self.control.recycle_all()
    }

    /// Ready for traffic: not shutting down.
    pub fn is_ready(&self) -> bool {
        self.control.is_ready()
    }

    /// Healthy: a loop serves and the abandoned budget is not used up.
    pub fn is_healthy(&self) -> bool {
        self.control.is_healthy()
    }

    /// Blocks until the server has ended (after `shutdown`, `stop`, or an
    /// exhausted abandoned budget).
    pub fn wait(mut self) -> Outcome {
        self.join()
    }

    fn join(&mut self) -> Outcome {
        let outcome = match self.supervisor.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                log::error!("supervisor panicked");
                Outcome::Stopped
            }),
            None => Outcome::Stopped,
        };
        // A new process that is not serving yet is stopped before this one
        // ends, not left running beside nobody.
        handover::upgrade::finish(&self.control);
        outcome
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
