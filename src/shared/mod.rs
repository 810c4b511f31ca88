//! State shared between threads: what the whole server shares
//! ([`ServerShared`]), what each loop shares ([`LoopShared`]), the per-slot
//! counters and the connection registry the supervisor takes loops over by.
//!
//! Every other module rests on this one; it depends on none of them but
//! `sys`, `memory`, `offload` and `config`.

mod counters;
mod histogram;
mod loop_shared;
mod peers;
mod registry;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

pub(crate) use counters::SlotCounters;
pub use counters::SlotCounts;
pub(crate) use histogram::Histogram;
pub use histogram::HistogramSnapshot;
pub use loop_shared::LoopState;
pub(crate) use loop_shared::{Fate, Heartbeat, LoopShared};
pub(crate) use peers::{PeerCounts, PeerTicket};
pub(crate) use registry::{Conveyed, SharedSocket};

use crate::config::Config;
use crate::memory::{ArenaStats, ProcessMemory};
use crate::offload::Pool;

/// State the loops, the supervisor and the handles share.
///
/// # Atomic ordering
/// The flags and counters here carry no data with them: `Relaxed`. A loop
/// that must notice a flag promptly is woken through its `mio::Waker`
/// after the store, and the wake-up (a syscall) orders the store before it.
#[derive(Debug)]
pub(crate) struct ServerShared {
    pub(crate) config: Config,
    pub(crate) listener: TcpListener,
    /// Another process may hold the same listening socket: it was
    /// inherited (systemd, or the process this one replaced), or handed to
    /// a new process. It is then never shut down, since that would act on
    /// the socket for its other holder too (resetting the clients queued
    /// for it); leaving it is closing this process's fd.
    pub(crate) listener_shared: AtomicBool,
    /// The pid of the process this one handed its sockets to (0: none):
    /// this one drains, and is still ready as far as health checks go.
    pub(crate) successor: AtomicU32,
    /// A duplicate of the admin plane's listening socket, to hand over.
    pub(crate) admin_socket: OnceLock<TcpListener>,
    /// The listening socket came from another process (systemd, or the
    /// process this one replaced): `listener_shared` never goes back to
    /// false.
    pub(crate) listener_inherited: bool,
    /// Upgrades: none yet, one under way, or no more (the server ends).
    pub(crate) upgrade: Mutex<UpgradeState>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) started: Instant,
    /// Open connections per client address, when capped.
    pub(crate) peers: Option<Arc<PeerCounts>>,
    /// Open connections over all loops, for `max_connections`.
    pub(crate) open_connections: AtomicUsize,
    /// Connections accepted by any loop, ever (see the accept policy).
    pub(crate) accepted_total: AtomicU64,
    /// A graceful shutdown is in progress.
    pub(crate) draining: AtomicBool,
    /// Stop at once: loops close everything and exit.
    pub(crate) stop_now: AtomicBool,
    /// A shutdown was asked for and waits out `shutdown_delay`: not ready,
    /// still serving.
    pub(crate) shutdown_pending: AtomicBool,
    pub(crate) slots: Vec<Arc<SlotCounters>>,
    /// The current loop of each slot.
    pub(crate) loops: Mutex<Vec<Arc<LoopShared>>>,
    /// Abandoned loops whose threads have not returned.
    pub(crate) abandoned: Mutex<Vec<Arc<LoopShared>>>,
    pub(crate) reclaimed: AtomicU64,
    /// Handed-off threads still finishing their work.
    pub(crate) handed_off: Mutex<Vec<Arc<LoopShared>>>,
    /// How long the requests that caused a handoff took.
    pub(crate) handoff_durations: Histogram,
    pub(crate) intensity_exceeded: AtomicU64,
    pub(crate) memory: Mutex<MemoryReport>,
    pub(crate) admin_addr: OnceLock<SocketAddr>,
    /// Wakes the admin plane's poll loop (to see a handover at once).
    pub(crate) admin_waker: OnceLock<Arc<mio::Waker>>,
    pub(crate) offload: Arc<Pool>,
    /// Captures, unwinds and keeps the stacks of stalled loops.
    pub(crate) forensics: crate::forensics::Forensics,
    /// The service factory's own metrics, for `/metrics`.
    pub(crate) service_metrics: ServiceMetrics,
}

/// Renders the service factory's metrics (its
/// [`ServiceFactory::render_metrics`](crate::ServiceFactory::render_metrics)).
pub(crate) struct ServiceMetrics(pub(crate) Box<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceMetrics")
    }
}

impl ServerShared {
    /// The current loop of each slot.
    pub(crate) fn current_loops(&self) -> Vec<Arc<LoopShared>> {
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

impl ServerShared {
    /// Gives an idle connection to the current loop of `slot` (a handed-off
    /// thread passing on what it kept). Gives it back when no loop of the
    /// slot takes connections now: the caller keeps serving it.
    pub(crate) fn deliver(&self, slot: usize, mut stream: Conveyed) -> Result<(), Conveyed> {
        // The supervisor publishes a replacement right after it hands a
        // loop off; between the two the old loop refuses deliveries.
        for _ in 0..DELIVERY_ATTEMPTS {
            // The list skips slots without a loop (one waiting to respawn).
            let target = lock(&self.loops).iter().find(|l| l.slot == slot).cloned();
            let Some(target) = target else { return Err(stream) };
            match target.registry().deliver(stream) {
                Ok(()) => {
                    target.inbox_hint.store(true, Relaxed);
                    target.wake();
                    return Ok(());
                }
                Err(refused) => stream = refused,
            }
            std::thread::yield_now();
        }
        Err(stream)
    }
}

/// Where upgrades stand.
#[derive(Debug, Default)]
pub(crate) enum UpgradeState {
    /// None under way (one may have ended).
    #[default]
    Idle,
    /// One under way: its thread, and the sender that cancels it (the
    /// process shuts down: a new process not yet serving is stopped).
    Pending { thread: std::thread::JoinHandle<()>, cancel: crossbeam_channel::Sender<()> },
    /// The server ends: no upgrade may start.
    Closed,
}

impl ServerShared {
    /// A shutdown was asked for or is under way.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.draining.load(Relaxed)
            || self.stop_now.load(Relaxed)
            || self.shutdown_pending.load(Relaxed)
    }
}

/// How often `deliver` looks for a loop that takes connections before it
/// gives up for now (each attempt yields the CPU once).
const DELIVERY_ATTEMPTS: usize = 100;

/// The supervisor's last memory reading.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryReport {
    pub(crate) process: Option<ProcessMemory>,
    /// Keyed by (slot, generation).
    pub(crate) arenas: Vec<((usize, u32), ArenaStats)>,
}

/// What a [`Control`](crate::Control) asks of the supervisor.
#[derive(Debug)]
pub(crate) enum Command {
    /// Replace the loop of this slot gracefully.
    Recycle(usize),
    /// Drain every loop and end.
    Shutdown,
    /// A new process serves the socket now: drain at once (no
    /// `shutdown_delay`: nobody needs to stop sending clients here).
    HandOver,
    /// End at once.
    Stop,
}

/// Locks `mutex`, poisoned or not. A panic while it was held (a loop that
/// died) leaves plain data behind, never half-written invariants, so there
/// is nothing to refuse.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The message of a panic payload, for the log.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}
