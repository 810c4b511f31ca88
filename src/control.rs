//! [`Control`], the remote control of a running server, and the
//! [`Snapshot`] it reads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::thread::Thread;

use crossbeam_channel::Sender;
use serde::Serialize;

use crate::forensics::{StackError, StackTrace, StallReport};
use crate::memory::{ArenaStats, ProcessMemory};
use crate::shared::{
    lock, Command, HistogramSnapshot, LoopShared, LoopState, ServerShared, SlotCounts,
};

/// A cloneable remote control of a running server, for the admin plane,
/// signal handlers and the application.
#[derive(Clone, Debug)]
pub struct Control {
    shared: Arc<ServerShared>,
    commands: Sender<Command>,
    /// The supervisor sleeps between checks: unparked for each command.
    supervisor: Thread,
}

impl Control {
    pub(crate) fn new(
        shared: Arc<ServerShared>,
        commands: Sender<Command>,
        supervisor: Thread,
    ) -> Control {
        Control { shared, commands, supervisor }
    }

    fn send(&self, command: Command) {
        // Gone only once the server has ended: nothing left to ask.
        let _ = self.commands.send(command);
        self.supervisor.unpark();
    }

    /// The address the data plane listens on.
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
        self.send(Command::Shutdown);
    }

    /// Ends the server at once: open connections are closed.
    pub fn stop(&self) {
        self.shared.stop_now.store(true, Relaxed);
        self.send(Command::Stop);
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
        self.send(Command::Recycle(slot));
        Ok(())
    }

    /// Recycles every loop, one after another (a rolling restart).
    pub fn recycle_all(&self) {
        for slot in 0..self.shared.config.loops {
            self.send(Command::Recycle(slot));
        }
    }

    /// Ready for traffic: not shutting down, or draining after handing the
    /// socket to a new process (which serves it: a health checker must not
    /// take the host out of service meanwhile).
    pub fn is_ready(&self) -> bool {
        !self.shared.is_shutting_down() || self.handed_over_to().is_some()
    }

    /// The pid of the process this one handed its sockets to, once it
    /// serves them (this one then drains).
    pub fn handed_over_to(&self) -> Option<u32> {
        Some(self.shared.successor.load(Relaxed)).filter(|&pid| pid != 0)
    }

    /// Process `pid` serves the sockets now: drain at once, staying ready.
    pub(crate) fn hand_over(&self, pid: u32) {
        self.shared.successor.store(pid, Relaxed);
        self.send(Command::HandOver);
        // Its admin plane leaves the shared admin socket to the new one.
        if let Some(waker) = self.shared.admin_waker.get() {
            let _ = waker.wake();
        }
    }

    pub(crate) fn server(&self) -> &Arc<ServerShared> {
        &self.shared
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
        let describe = |l: &Arc<LoopShared>| LoopSnapshot {
            slot: l.slot,
            generation: l.generation,
            state: l.state(),
            core: l.core,
            thread_id: l.tid.load(Relaxed),
            open_connections: l.open_connections.load(Relaxed),
            counters: l.counters.read(),
            memory: memory
                .arenas
                .iter()
                .find(|(key, _)| *key == (l.slot, l.generation))
                .map(|(_, stats)| *stats),
            uptime_seconds: l.started.elapsed().as_secs_f64(),
            stack: lock(&l.stack).clone(),
        };
        let loops: Vec<LoopSnapshot> = shared.current_loops().iter().map(describe).collect();
        let abandoned: Vec<LoopSnapshot> = lock(&shared.abandoned).iter().map(describe).collect();
        let handed_off: Vec<LoopSnapshot> = lock(&shared.handed_off).iter().map(describe).collect();
        let mut totals = SlotCounts::default();
        for slot in &shared.slots {
            totals.add(&slot.read());
        }
        let pool = &shared.offload.counters;
        Snapshot {
            uptime_seconds: shared.started.elapsed().as_secs_f64(),
            ready: self.is_ready(),
            totals,
            abandoned_alive: abandoned.len(),
            handed_off_alive: handed_off.len(),
            handoff_durations: shared.handoff_durations.read(),
            max_abandoned: shared.config.max_abandoned,
            reclaimed: shared.reclaimed.load(Relaxed),
            restart_intensity_exceeded: shared.intensity_exceeded.load(Relaxed),
            open_connections: shared.open_connections.load(Relaxed),
            offload: OffloadSnapshot {
                queued: pool.queued.load(Relaxed),
                running: pool.running.load(Relaxed),
                completed: pool.completed.load(Relaxed),
                rejected: pool.rejected.load(Relaxed),
                panicked: pool.panicked.load(Relaxed),
            },
            memory: memory.process,
            loops,
            handed_off,
            abandoned,
            stalls: shared.forensics.stalls(),
        }
    }

    /// The stack of loop `slot` now (its current loop), or of the loop
    /// `slot.generation` when `generation` is given: current, handed off
    /// or abandoned. The thread is interrupted for a few microseconds; the
    /// first call in a process loads the debug info, which takes up to a
    /// second.
    pub fn stack(&self, slot: usize, generation: Option<u32>) -> Result<StackTrace, StackError> {
        let shared = &self.shared;
        let found = {
            let loops = shared.current_loops();
            let handed_off = lock(&shared.handed_off);
            let abandoned = lock(&shared.abandoned);
            loops
                .iter()
                .chain(handed_off.iter())
                .chain(abandoned.iter())
                .find(|l| l.slot == slot && generation.map_or(true, |g| l.generation == g))
                .cloned()
        };
        let found = found.ok_or(StackError::UnknownLoop)?;
        shared.forensics.stack_of(&found)
    }

    /// Symbolizes the stacks taken from handed-off threads when they were
    /// handed off, so that the next [`snapshot`](Control::snapshot) shows
    /// them (`/loops` does this first). Kept raw until asked for: the first
    /// symbolization in a process maps the binary and reads its debug info
    /// (up to a second, and tens of MiB that stay resident).
    pub fn symbolize_stacks(&self) {
        let handed_off: Vec<Arc<LoopShared>> = lock(&self.shared.handed_off).clone();
        for shared in &handed_off {
            self.shared.forensics.symbolize_kept(shared);
        }
    }

    /// The last stall reports (a loop given up on, with its stack), oldest
    /// first.
    pub fn stalls(&self) -> Vec<StallReport> {
        self.shared.forensics.stalls()
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

/// Counters and states of a server at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Seconds since the server started.
    pub uptime_seconds: f64,
    /// Not shutting down (what `/readyz` answers).
    pub ready: bool,
    /// The counters of every slot added up, all generations.
    #[serde(flatten)]
    pub totals: SlotCounts,
    /// Abandoned threads still alive.
    pub abandoned_alive: usize,
    /// Handed-off threads still finishing their work.
    pub handed_off_alive: usize,
    /// How long the requests that caused a handoff took, from when the
    /// supervisor first saw their loop busy to when the handler returned.
    pub handoff_durations: HistogramSnapshot,
    /// Abandoned threads allowed before the server drains and exits.
    pub max_abandoned: usize,
    /// Abandoned threads whose handler returned and that exited.
    pub reclaimed: u64,
    /// Times the restart intensity limit was exceeded.
    pub restart_intensity_exceeded: u64,
    /// Open connections over all loops.
    pub open_connections: usize,
    /// The offload pool.
    pub offload: OffloadSnapshot,
    /// Process memory; `allocated`/`active`/`resident` are zero without jemalloc.
    pub memory: Option<ProcessMemory>,
    /// The current loop of each slot.
    pub loops: Vec<LoopSnapshot>,
    /// Handed-off threads still finishing their work.
    pub handed_off: Vec<LoopSnapshot>,
    /// Abandoned loops whose threads are still alive.
    pub abandoned: Vec<LoopSnapshot>,
    /// The last loops given up on, with their stacks, oldest first.
    pub stalls: Vec<StallReport>,
}

/// The offload pool in a [`Snapshot`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OffloadSnapshot {
    /// Jobs waiting for a pool thread now.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs finished, panicked ones included.
    pub completed: u64,
    /// Jobs refused (answered 503) because the queue was full.
    pub rejected: u64,
    /// Jobs that panicked (answered 500).
    pub panicked: u64,
}

/// One loop in a [`Snapshot`].
#[derive(Clone, Debug, Serialize)]
pub struct LoopSnapshot {
    /// The slot (and core, when pinned) the loop serves.
    pub slot: usize,
    /// Replacements of the slot before this loop.
    pub generation: u32,
    /// What the loop is doing.
    pub state: LoopState,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// Its kernel thread id (0 before it runs).
    pub thread_id: i32,
    /// Connections it holds now.
    pub open_connections: usize,
    /// The slot's counters: they keep counting across replacements.
    #[serde(flatten)]
    pub counters: SlotCounts,
    /// The loop's jemalloc arena, when jemalloc is the allocator.
    pub memory: Option<ArenaStats>,
    /// Seconds since this loop started.
    pub uptime_seconds: f64,
    /// Its stack when it was handed off or given up on.
    pub stack: Option<StackTrace>,
}
