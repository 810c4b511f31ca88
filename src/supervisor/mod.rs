//! The supervisor thread: samples every loop's heartbeat, replaces loops
//! that stall or die, recycles loops that grow past the memory limit, and
//! runs shutdowns. It is the only owner of loop threads.

mod intensity;
mod rules;
pub(crate) mod verdict;

use std::io;
use std::net::Shutdown;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::event_loop;
use crate::handover;
use crate::memory;
use crate::shared::{
    lock, panic_message, Command, Conveyed, Fate, LoopShared, LoopState, MemoryReport, ServerShared,
};
use crate::sys;
use crate::ServiceFactory;
use intensity::RestartIntensity;
use rules::{respawn_delay, Crossing};
use verdict::{judge, Observation, Thresholds, Verdict};

/// How long the supervisor waits for a new loop to be listening before it
/// goes on (it only waits so that the loop is in `epoll_wait` before the
/// clients of a stalled loop reconnect).
const SPAWN_READY_TIMEOUT: Duration = Duration::from_millis(500);

/// The same wait for the first loops: the server says it serves (to the
/// process it replaces, or to systemd) once every loop listens, and nothing
/// else needs the supervisor yet. Only a service factory that blocks makes
/// it wait this long.
const STARTUP_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait, in a shutdown, for loops to accept their backlog before
/// the listener is closed (a loop stuck in a handler never will).
const LISTENER_GRACE: Duration = Duration::from_millis(100);

/// The supervisor's period while a shutdown is in progress.
const SHUTDOWN_TICK: Duration = Duration::from_millis(5);

/// The supervisor's time slice: the kernel's smallest. Each round of checks
/// takes a few microseconds.
const SUPERVISOR_SLICE: Duration = Duration::from_micros(100);

/// Past this multiple of `--mem-limit` a loop is not drained (which goes on
/// reading its clients' next requests) but handed off at once.
const MEM_LIMIT_HARD_MULTIPLE: u64 = 2;

/// A recycle requested within this long of the slot's last recycle is
/// merged into it: at most one requested recycle per slot per second.
const RECYCLE_MERGE_WINDOW: Duration = Duration::from_secs(1);

/// How long a slot whose replacement could not be spawned waits to retry.
const SPAWN_RETRY: Duration = Duration::from_secs(2);

/// How a server ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request (gracefully or not).
    Stopped,
    /// Too many abandoned threads were alive (`max_abandoned`): only a new
    /// process can free them. The binary exits with status 3.
    AbandonedBudgetExceeded,
}

/// Starts every loop and the supervisor thread.
pub(crate) fn start<F: ServiceFactory>(
    server: Arc<ServerShared>,
    factory: Arc<F>,
) -> io::Result<(Sender<Command>, JoinHandle<Outcome>)> {
    let (commands, inbox) = crossbeam_channel::unbounded();
    let cores = core_ids(&server);
    let mut supervisor = Supervisor {
        server: server.clone(),
        factory,
        slots: Vec::new(),
        retiring: Vec::new(),
        abandoned: Vec::new(),
        intensity: RestartIntensity::new(server.config.restart_limit, server.config.restart_window),
        cores,
        next_memory_check: Instant::now(),
        shutdown_started: None,
        drain_at: None,
        listener_closed: false,
        shutdown_deadline: None,
        outcome: Outcome::Stopped,
    };
    for slot in 0..server.config.loops {
        let started = supervisor.spawn_loop(slot, 0, Vec::new(), STARTUP_READY_TIMEOUT);
        let running = match started {
            Ok(running) if running.shared.state() == LoopState::Serving => running,
            // A server that starts says it serves (to systemd, to the
            // process it replaces): every loop must.
            failed => {
                server.stop_now.store(true, Relaxed);
                for running in supervisor.current().chain(failed.as_ref().ok()) {
                    running.shared.wake();
                }
                let why = match failed {
                    Err((err, _)) => err.to_string(),
                    Ok(_) => format!("not listening within {STARTUP_READY_TIMEOUT:?}"),
                };
                return Err(io::Error::other(format!("loop {slot} did not start: {why}")));
            }
        };
        supervisor.slots.push(Slot {
            running: Some(running),
            observation: None,
            handed_off: Vec::new(),
            adopt: Vec::new(),
            recycled_at: None,
            generation: 0,
            deaths_in_a_row: 0,
            respawn_at: None,
            mem_warned: false,
        });
    }
    supervisor.publish_loops();
    log::info!(
        "vigil listening addr={} loops={} cores={:?} stall_timeout={:?} check_interval={:?}",
        server.local_addr,
        server.config.loops,
        supervisor.cores,
        server.config.stall_timeout,
        server.config.effective_check_interval()
    );
    let handle = thread::Builder::new().name("vigil-supervisor".into()).spawn(move || {
        // It must wake on time even when every core is busy with loops
        // (a handoff is due a few milliseconds into a busy request).
        if let Err(err) = sys::request_short_slices(SUPERVISOR_SLICE) {
            log::debug!("supervisor could not ask for short time slices: {err}");
        }
        supervisor.run(inbox)
    })?;
    Ok((commands, handle))
}

/// Sleeps until `deadline` or until a command comes (its sender unparks
/// this thread).
///
/// Parking rather than `recv_timeout`: the supervisor wakes up to a
/// thousand times a second, and a channel's receive spins and yields
/// before it blocks. Measured idle, at a 1.25 ms period: 2.7% of a core
/// with `recv_timeout`, against the figure in BENCHMARKS.md with this.
fn wait_until(deadline: Instant, inbox: &Receiver<Command>) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !inbox.is_empty() {
            return;
        }
        thread::park_timeout(left);
    }
}

/// The core of each slot, or `None` everywhere when pinning is off.
fn core_ids(server: &ServerShared) -> Vec<Option<usize>> {
    let ids = if server.config.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    (0..server.config.loops)
        .map(|slot| (!ids.is_empty()).then(|| ids[slot % ids.len()].id))
        .collect()
}

#[derive(Debug)]
struct Running {
    shared: Arc<LoopShared>,
    thread: JoinHandle<()>,
}

/// A loop that is no longer its slot's current one (handed off, or
/// retiring) and what the supervisor last saw of it.
#[derive(Debug)]
struct Watched {
    running: Running,
    observation: Option<Observation>,
}

impl Watched {
    /// Samples the heartbeat; how long the loop has been stuck, once that
    /// is past the stall timeout in `thresholds`.
    fn stalled(&mut self, now: Instant, thresholds: Thresholds) -> Option<Duration> {
        let word = self.running.shared.heartbeat.read();
        let (observation, verdict) = judge(self.observation, word, now, thresholds);
        self.observation = Some(observation);
        match verdict {
            Verdict::Stalled { stuck_for } => Some(stuck_for),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Slot {
    running: Option<Running>,
    observation: Option<Observation>,
    /// Handed-off threads of the slot still finishing their work.
    handed_off: Vec<Watched>,
    /// Connections for the slot's next loop: delivered to one that died,
    /// or taken over when no thread could be started.
    adopt: Vec<Conveyed>,
    /// When the slot was last recycled (requests close to it are merged).
    recycled_at: Option<Instant>,
    generation: u32,
    deaths_in_a_row: u32,
    respawn_at: Option<Instant>,
    mem_warned: bool,
}

struct Supervisor<F> {
    server: Arc<ServerShared>,
    factory: Arc<F>,
    slots: Vec<Slot>,
    /// Loops recycled gracefully and still finishing their connections.
    retiring: Vec<Watched>,
    /// Stalled loops given up on, whose threads may still return.
    abandoned: Vec<Running>,
    intensity: RestartIntensity,
    cores: Vec<Option<usize>>,
    next_memory_check: Instant,
    shutdown_started: Option<Instant>,
    /// When a delayed shutdown starts draining (see `shutdown_requested`).
    drain_at: Option<Instant>,
    listener_closed: bool,
    shutdown_deadline: Option<Instant>,
    outcome: Outcome,
}

impl<F: ServiceFactory> Supervisor<F> {
    fn run(mut self, inbox: Receiver<Command>) -> Outcome {
        let interval = self.server.config.effective_check_interval();
        let mut next_tick = Instant::now();
        loop {
            // A shutdown is followed closely: the listener closes as soon as
            // the loops have taken their last connections.
            let tick = if self.shutdown_deadline.is_some() {
                interval.min(SHUTDOWN_TICK)
            } else {
                interval
            };
            // Only a tick that came moves the next one: a command wakes the
            // supervisor early, and a stream of them must not push its
            // checks away (2,000 admin requests delayed a shutdown by 9 s).
            let now = Instant::now();
            if now >= next_tick {
                next_tick = (next_tick + tick).max(now);
            }
            wait_until(next_tick, &inbox);
            // Those queued now, not those that keep coming: a stream of
            // commands must not keep the checks below from running.
            let queued = inbox.len();
            for command in inbox.try_iter().take(queued) {
                match command {
                    Command::Recycle(slot) => self.recycle(slot, "requested"),
                    Command::Shutdown => self.shutdown_requested(),
                    Command::HandOver => self.begin_shutdown(),
                    Command::Stop => self.server.stop_now.store(true, Relaxed),
                }
            }
            let now = Instant::now();
            if self.server.stop_now.load(Relaxed) {
                self.stop_all();
                return self.outcome;
            }
            if self.shutdown_deadline.is_some() {
                if self.shutdown_finished(now) {
                    return self.outcome;
                }
                continue;
            }
            if self.drain_at.is_some_and(|at| now >= at) {
                self.begin_shutdown();
                continue;
            }
            self.check_loops(now);
            self.reap(now);
            if now >= self.next_memory_check {
                self.check_memory();
                self.next_memory_check = now + self.server.config.mem_interval;
            }
        }
    }

    /// Spawns generation `generation` of `slot`, serving `adopt` from the
    /// start, and waits until it listens (or fails), up to `ready_timeout`.
    /// If no thread can be started, `adopt` comes back with the error.
    fn spawn_loop(
        &self,
        slot: usize,
        generation: u32,
        adopt: Vec<Conveyed>,
        ready_timeout: Duration,
    ) -> Result<Running, (io::Error, Vec<Conveyed>)> {
        let shared = Arc::new(LoopShared::new(
            slot,
            generation,
            self.cores[slot],
            self.server.slots[slot].clone(),
        ));
        // Through the inbox, not moved into the thread: a thread that
        // cannot be created, or a loop that cannot start (out of fds, a
        // panicking factory), leaves them where the supervisor finds them.
        {
            let mut registry = shared.registry();
            for conveyed in adopt {
                registry.deliver(conveyed).expect("a new loop's registry takes deliveries");
            }
        }
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let thread = match event_loop::spawn(
            shared.clone(),
            self.server.clone(),
            self.factory.clone(),
            ready_tx,
        ) {
            Ok(thread) => thread,
            Err(err) => return Err((err, shared.registry().close_inbox())),
        };
        // An error means the loop failed to start; the next check sees it
        // dead and gives what it did not take to its successor.
        let _ = ready_rx.recv_timeout(ready_timeout);
        Ok(Running { shared, thread })
    }

    /// The current loop of each slot.
    fn current(&self) -> impl Iterator<Item = &Running> {
        self.slots.iter().filter_map(|slot| slot.running.as_ref())
    }

    /// Every loop that serves or finishes serving: current, handed off
    /// and retiring.
    fn live(&self) -> impl Iterator<Item = &Running> {
        self.current().chain(self.handed_off()).chain(self.retiring.iter().map(|w| &w.running))
    }

    /// Handed-off threads still finishing their work.
    fn handed_off(&self) -> impl Iterator<Item = &Running> {
        self.slots.iter().flat_map(|slot| slot.handed_off.iter().map(|w| &w.running))
    }

    /// Makes the snapshot's lists of loops match the supervisor's.
    fn publish_loops(&self) {
        let shared = |r: &Running| r.shared.clone();
        *lock(&self.server.loops) = self.current().map(shared).collect();
        *lock(&self.server.handed_off) = self.handed_off().map(shared).collect();
        *lock(&self.server.abandoned) = self.abandoned.iter().map(shared).collect();
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            handoff_after: self.server.config.handoff_after,
            stall_timeout: self.server.config.stall_timeout,
        }
    }

    /// Gives up on recycled loops stuck in a handler past the stall timeout.
    fn check_retiring(&mut self, now: Instant) {
        let thresholds = Thresholds { handoff_after: Duration::ZERO, ..self.thresholds() };
        let mut index = 0;
        while index < self.retiring.len() {
            let watched = &mut self.retiring[index];
            if watched.running.thread.is_finished() {
                index += 1; // drained: `reap` takes it
                continue;
            }
            if let Some(stuck_for) = watched.stalled(now, thresholds) {
                let stuck = self.retiring.remove(index).running;
                let slot = stuck.shared.slot;
                self.give_up(slot, stuck, stuck_for, now);
                continue;
            }
            index += 1;
        }
    }

    fn check_loops(&mut self, now: Instant) {
        self.check_retiring(now);
        let thresholds = self.thresholds();
        for slot in 0..self.slots.len() {
            self.check_handed_off(slot, now);
            let Some(running) = &self.slots[slot].running else {
                if self.slots[slot].respawn_at.is_some_and(|at| now >= at) {
                    self.respawn(slot);
                }
                continue;
            };
            if running.thread.is_finished() {
                self.loop_died(slot, now);
                continue;
            }
            let word = running.shared.heartbeat.read();
            let (observation, verdict) = judge(self.slots[slot].observation, word, now, thresholds);
            self.slots[slot].observation = Some(observation);
            match verdict {
                Verdict::Stalled { stuck_for } => self.abandon(slot, stuck_for, now),
                Verdict::HandoffDue { busy_for } if self.may_hand_off(slot) => {
                    self.hand_off(slot, Some(busy_for), now)
                }
                _ => {}
            }
        }
    }

    /// Whether the current loop of `slot` may be handed off now: not in a
    /// shutdown, and the slot's handed-off threads are under the cap (past
    /// it the slot waits for its loop, as without handoff).
    fn may_hand_off(&self, slot: usize) -> bool {
        self.shutdown_deadline.is_none()
            && self.slots[slot].handed_off.len() < self.server.config.max_handed_off
    }

    /// Hands the loop of `slot`, busy on one request for `busy_for`, off:
    /// a fresh loop on the same core takes the listener and every idle
    /// connection at once, while the old thread finishes its request at a
    /// lower priority, passes what it kept to the new loop as each becomes
    /// idle, and exits. Nothing is closed.
    /// `busy_for` is how long the loop has been busy on its request, or
    /// `None` for a loop handed off for its memory (not counted as a
    /// handoff, nor timed).
    fn hand_off(&mut self, slot: usize, busy_for: Option<Duration>, now: Instant) {
        let Some(old) = self.slots[slot].running.take() else {
            return;
        };
        // The connections move first, then the replacement is published,
        // and only then is the old loop told: so when it passes on what it
        // kept, the slot's current loop is already the new one. Until it
        // is told it may go on serving what it holds; the claim protocol
        // keeps it off what moved.
        old.shared.set_state(LoopState::HandedOff);
        let moved = old.shared.registry().hand_off();
        self.server.open_connections.fetch_sub(moved.from_loop, Relaxed);
        old.shared.open_connections.fetch_sub(moved.from_loop, Relaxed);
        let migrated = moved.streams.len();
        let observation = self.slots[slot].observation;
        let replacement = self.next_generation(slot, moved.streams);
        self.slots[slot].handed_off.push(Watched { running: old, observation });
        self.publish_loops();
        let old = &self.slots[slot].handed_off.last().expect("just pushed").running;
        *lock(&old.shared.slow_request_started) = busy_for.and_then(|busy| now.checked_sub(busy));
        old.shared.set_fate(Fate::HandedOff);
        let tid = old.shared.tid.load(Relaxed);
        if tid > 0 {
            if let Err(err) = sys::set_nice(tid, self.server.config.handoff_nice) {
                log::debug!("loop {} could not be reniced: {err}", old.shared.name());
            }
        }
        if busy_for.is_some() {
            old.shared.counters.handoffs.fetch_add(1, Relaxed);
            // For /loops: where the slow request is. Taken off this thread,
            // which does not wait for it.
            self.server.forensics.capture_later(&old.shared);
        }
        // It was busy; should it be between two steps, it checks its fate
        // before it polls again.
        old.shared.wake();
        log::debug!(
            "loop {} handed off busy_for={busy_for:?} migrated_connections={migrated} request={:?} replaced_by={}",
            old.shared.name(),
            old.shared.current_request.read().unwrap_or_default(),
            replacement.map_or_else(|| "none".to_string(), |g| format!("{slot}.{g}")),
        );
    }

    /// Forgets the handed-off threads of `slot` that finished, and gives up
    /// on those that outlived the stall timeout.
    fn check_handed_off(&mut self, slot: usize, now: Instant) {
        let thresholds = Thresholds { handoff_after: Duration::ZERO, ..self.thresholds() };
        let mut index = 0;
        while index < self.slots[slot].handed_off.len() {
            let watched = &mut self.slots[slot].handed_off[index];
            if watched.running.thread.is_finished() {
                let done = self.slots[slot].handed_off.remove(index).running;
                // A thread that ends normally has passed on or closed every
                // connection; one that died (a panic outside a handler)
                // closed them as it unwound, uncounted.
                let open = done.shared.open_connections.swap(0, Relaxed);
                self.server.open_connections.fetch_sub(open, Relaxed);
                if let Err(payload) = done.thread.join() {
                    log::error!(
                        "loop {} died after its handoff cause={:?} closed_connections={open}",
                        done.shared.name(),
                        panic_message(payload.as_ref())
                    );
                    done.shared.counters.replaced_died.fetch_add(1, Relaxed);
                }
                self.publish_loops();
                continue;
            }
            if let Some(stuck_for) = watched.stalled(now, thresholds) {
                let stuck = self.slots[slot].handed_off.remove(index);
                self.give_up(slot, stuck.running, stuck_for, now);
                continue;
            }
            index += 1;
        }
    }

    /// Replaces a stalled loop.
    ///
    /// Its idle keep-alive connections are not closed but handed to the
    /// replacement (as duplicated fds): requests their clients send next,
    /// or already sent and the kernel holds, are served as if nothing
    /// happened. Only connections with state inside the stuck loop (the
    /// request being served, partial input, unsent output) are shut down.
    fn abandon(&mut self, slot: usize, stuck_for: Duration, now: Instant) {
        let Some(old) = self.slots[slot].running.take() else {
            return;
        };
        self.give_up(slot, old, stuck_for, now);
    }

    /// Gives up on `old`, a loop (current or handed off) stuck for
    /// `stuck_for`: its idle connections go to the slot's current loop (a
    /// fresh one, if `old` was current), the others are shut down, and the
    /// thread is moved to `SCHED_IDLE` and counted against `max_abandoned`.
    ///
    /// A replacement is started (and listening) *before* the connections
    /// are shut down: their clients reconnect within microseconds, and if
    /// it were not yet in `epoll_wait` they would all land on the other
    /// loops and stay there.
    fn give_up(&mut self, slot: usize, old: Running, stuck_for: Duration, now: Instant) {
        old.shared.set_fate(Fate::Abandoned);
        old.shared.set_state(LoopState::Abandoned);
        let taken = {
            let mut registry = old.shared.registry();
            let taken = registry.take_over();
            let open = old.shared.open_connections.load(Relaxed);
            self.server.open_connections.fetch_sub(open, Relaxed);
            taken
        };
        let migrated = taken.clean.len();
        let replaced_by = if self.slots[slot].running.is_none() {
            self.next_generation(slot, taken.clean)
        } else {
            for conveyed in taken.clean {
                if let Err(refused) = self.server.deliver(slot, conveyed) {
                    let _ = refused.stream.shutdown(Shutdown::Both);
                }
            }
            Some(self.slots[slot].generation)
        };
        old.shared.counters.replaced_stalled.fetch_add(1, Relaxed);
        let shared = old.shared.clone();
        self.abandoned.push(old);
        // The snapshot shows the replacement before any client sees a close.
        self.publish_loops();
        let closed = taken.stuck.iter().filter(|s| s.shutdown(Shutdown::Both).is_ok()).count();
        drop(taken.stuck);
        let request = shared.current_request.read();
        let line = format!(
            "loop {} stalled reason=stalled stuck_for={:?} closed_connections={} migrated_connections={} request={:?} replaced_by={}; thread abandoned",
            shared.name(),
            stuck_for,
            closed,
            migrated,
            request.clone().unwrap_or_default(),
            replaced_by.map_or_else(|| "none".to_string(), |g| format!("{slot}.{g}")),
        );
        // Its stack first (a bounded wait): at SCHED_IDLE it may not run
        // its signal handler for a long time. The forensics thread logs
        // the line once the stack is symbolized.
        self.server.forensics.report_stall(&shared, line, request, stuck_for);
        let tid = shared.tid.load(Relaxed);
        if tid > 0 {
            if let Err(err) = sys::set_idle_priority(tid) {
                log::warn!("loop {} could not be moved to SCHED_IDLE: {err}", shared.name());
            }
        }
        self.record_restart(now);
        if self.abandoned.len() > self.server.config.max_abandoned {
            log::error!(
                "abandoned threads alive={} over max_abandoned={}: draining and exiting; only a new process can free them",
                self.abandoned.len(),
                self.server.config.max_abandoned
            );
            self.outcome = Outcome::AbandonedBudgetExceeded;
            self.begin_shutdown();
        }
    }

    /// Spawns the next generation into `slot`, serving `adopt` from the
    /// start. If no thread can be started it schedules a retry, and the
    /// connections wait for it: their clients see a delay, not a close.
    fn next_generation(&mut self, slot: usize, adopt: Vec<Conveyed>) -> Option<u32> {
        let generation = self.slots[slot].generation + 1;
        self.slots[slot].generation = generation;
        self.slots[slot].observation = None;
        match self.spawn_loop(slot, generation, adopt, SPAWN_READY_TIMEOUT) {
            Ok(running) => {
                self.slots[slot].running = Some(running);
                Some(generation)
            }
            Err((err, adopt)) => {
                log::error!(
                    "loop {slot}.{generation} could not be spawned: {err}; retrying in {SPAWN_RETRY:?} with its {} connections waiting",
                    adopt.len()
                );
                self.slots[slot].adopt.extend(adopt);
                self.slots[slot].respawn_at = Some(Instant::now() + SPAWN_RETRY);
                None
            }
        }
    }

    fn loop_died(&mut self, slot: usize, now: Instant) {
        let Some(dead) = self.slots[slot].running.take() else {
            return;
        };
        let name = dead.shared.name();
        let lived = dead.shared.started.elapsed();
        let cause = match dead.thread.join() {
            Ok(()) => "loop returned".to_string(),
            Err(payload) => panic_message(payload.as_ref()).to_string(),
        };
        dead.shared.counters.replaced_died.fetch_add(1, Relaxed);
        // Its connections closed as the thread unwound, uncounted; those
        // other loops delivered to it and it never took go to its successor.
        let open = dead.shared.open_connections.swap(0, Relaxed);
        self.server.open_connections.fetch_sub(open, Relaxed);
        let delivered = dead.shared.registry().close_inbox();
        let state = &mut self.slots[slot];
        state.adopt.extend(delivered);
        let (deaths_in_a_row, delay) = respawn_delay(state.deaths_in_a_row, lived);
        state.deaths_in_a_row = deaths_in_a_row;
        log::error!(
            "loop {name} died reason=died cause={cause:?} lived={lived:?}; respawning in {delay:?}"
        );
        self.record_restart(now);
        self.slots[slot].respawn_at = Some(now + delay);
        if delay.is_zero() {
            self.respawn(slot);
        }
        self.publish_loops();
    }

    fn respawn(&mut self, slot: usize) {
        self.slots[slot].respawn_at = None;
        let adopt = std::mem::take(&mut self.slots[slot].adopt);
        if let Some(generation) = self.next_generation(slot, adopt) {
            log::info!("loop {slot}.{generation} started");
        }
        self.publish_loops();
    }

    /// Graceful replacement: the new loop takes new connections at once,
    /// the old one stops accepting, finishes its requests and exits.
    fn recycle(&mut self, slot: usize, reason: &str) {
        if self.shutdown_deadline.is_some() || slot >= self.slots.len() {
            return;
        }
        let Some(old) = self.slots[slot].running.take() else {
            return;
        };
        let recently =
            self.slots[slot].recycled_at.is_some_and(|at| at.elapsed() < RECYCLE_MERGE_WINDOW);
        if reason == "requested" && recently {
            // The loop was just made by a recycle and has nothing to shed:
            // a flood of recycle requests must not become a flood of threads.
            log::debug!(
                "loop {} was made by a recycle just now: request merged",
                old.shared.name()
            );
            self.slots[slot].running = Some(old);
            return;
        }
        self.slots[slot].recycled_at = Some(Instant::now());
        let replacement = self.next_generation(slot, Vec::new());
        old.shared.start_draining();
        old.shared.counters.recycled.fetch_add(1, Relaxed);
        log::info!(
            "loop {} recycled reason={reason} replaced_by={}",
            old.shared.name(),
            replacement.map_or_else(|| "none".to_string(), |g| format!("{slot}.{g}")),
        );
        // Watched like any loop: one stuck in a handler never drains, and
        // would hold its connections until the process ends.
        let observation = self.slots[slot].observation;
        self.retiring.push(Watched { running: old, observation });
        self.slots[slot].mem_warned = false;
        self.publish_loops();
    }

    fn record_restart(&mut self, now: Instant) {
        if self.intensity.record(now) {
            self.server.intensity_exceeded.fetch_add(1, Relaxed);
            log::error!(
                "restart intensity exceeded: more than {} replacements within {:?}",
                self.server.config.restart_limit,
                self.server.config.restart_window
            );
        }
    }

    /// Joins retired loops and abandoned threads that came back.
    fn reap(&mut self, now: Instant) {
        self.retiring.retain(|w| !w.running.thread.is_finished());
        let before = self.abandoned.len();
        self.abandoned.retain(|r| {
            if !r.thread.is_finished() {
                return true;
            }
            log::info!(
                "loop {} reclaimed: abandoned thread exited after {:?}",
                r.shared.name(),
                now.saturating_duration_since(r.shared.started)
            );
            false
        });
        let reclaimed = before - self.abandoned.len();
        if reclaimed > 0 {
            self.server.reclaimed.fetch_add(reclaimed as u64, Relaxed);
            self.publish_loops();
        }
    }

    fn check_memory(&mut self) {
        if !memory::advance_epoch() {
            let mut report = lock(&self.server.memory);
            *report = MemoryReport { process: Some(memory::process_memory()), arenas: Vec::new() };
            return;
        }
        let mut arenas = Vec::new();
        for running in self.live().chain(&self.abandoned) {
            let arena = *lock(&running.shared.arena);
            if let Some(stats) = arena.and_then(memory::arena_stats) {
                arenas.push(((running.shared.slot, running.shared.generation), stats));
            }
        }
        let config = &self.server.config;
        let mut over_limit = Vec::new();
        for (slot, state) in self.slots.iter_mut().enumerate() {
            let Some(running) = &state.running else {
                continue;
            };
            let key = (slot, running.shared.generation);
            let Some((_, stats)) = arenas.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            if let Some(warn) = config.mem_warn {
                // Once per crossing: a loop that stays over it is not news.
                let crossing = Crossing::of(state.mem_warned, stats.allocated > warn);
                if crossing == Crossing::Up {
                    log::warn!(
                        "loop {} using too much memory allocated={} mem_warn={warn}",
                        running.shared.name(),
                        stats.allocated
                    );
                }
                state.mem_warned = crossing.is_over();
            }
            if let Some(limit) = config.mem_limit.filter(|&limit| stats.allocated > limit) {
                over_limit.push((slot, stats.allocated, limit));
            }
        }
        *lock(&self.server.memory) =
            MemoryReport { process: Some(memory::process_memory()), arenas };
        let now = Instant::now();
        for (slot, allocated, limit) in over_limit {
            let far_over = allocated > limit.saturating_mul(MEM_LIMIT_HARD_MULTIPLE);
            if far_over && self.slots[slot].handed_off.len() < self.server.config.max_handed_off {
                // A drain would still read the requests its keep-alive
                // clients send next, and each may add as much again. Handed
                // off, the loop reads no new request: it finishes what it
                // holds while its connections move to a fresh loop.
                log::warn!(
                    "loop {slot}.{} far over mem_limit allocated={allocated} limit={limit}; handing off",
                    self.slots[slot].generation
                );
                self.slots[slot].recycled_at = Some(now);
                if let Some(running) = &self.slots[slot].running {
                    running.shared.counters.recycled.fetch_add(1, Relaxed);
                }
                self.hand_off(slot, None, now);
                continue;
            }
            log::warn!(
                "loop {slot}.{} over mem_limit allocated={allocated}; recycling",
                self.slots[slot].generation
            );
            self.recycle(slot, "mem_limit");
        }
    }

    /// A shutdown was asked for: drain now, or after `shutdown_delay`,
    /// meanwhile not ready (a load balancer stops sending new clients) but
    /// serving as usual.
    fn shutdown_requested(&mut self) {
        let delay = self.server.config.shutdown_delay;
        if delay.is_zero() {
            return self.begin_shutdown();
        }
        if self.drain_at.is_none() && self.shutdown_deadline.is_none() {
            log::info!("shutdown: not ready, draining in {delay:?}");
            self.server.shutdown_pending.store(true, Relaxed);
            self.drain_at = Some(Instant::now() + delay);
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let timeout = self.server.config.shutdown_timeout;
        log::info!("shutdown: draining loops timeout={timeout:?}");
        if self.server.successor.load(Relaxed) == 0 {
            // After a handover the new process is the service's main
            // process: it is not stopping.
            handover::notify_service_manager("STOPPING=1");
        }
        self.server.draining.store(true, Relaxed);
        self.shutdown_started = Some(Instant::now());
        self.shutdown_deadline = Some(Instant::now() + timeout);
        for running in self.live() {
            running.shared.start_draining();
        }
    }

    /// Closes the listener once every loop has accepted what was in its
    /// backlog (or after [`LISTENER_GRACE`], for loops stuck in a handler):
    /// from then on new clients are refused at once (a load balancer
    /// retries them elsewhere) instead of waiting in a backlog nobody
    /// accepts from.
    fn close_listener_when_accepted(&mut self, now: Instant) {
        let Some(started) = self.shutdown_started else { return };
        if self.listener_closed {
            return;
        }
        let all_accepted =
            self.current().all(|r| r.shared.accepted_final.load(Relaxed) || r.thread.is_finished());
        if all_accepted || now >= started + LISTENER_GRACE {
            self.refuse_new_connections();
            self.listener_closed = true;
        }
    }

    /// True once every loop has drained, or the deadline cut the rest.
    fn shutdown_finished(&mut self, now: Instant) -> bool {
        self.close_listener_when_accepted(now);
        let all_done = self.live().all(|r| r.thread.is_finished());
        if all_done {
            self.finish("drained");
            return true;
        }
        if self.shutdown_deadline.is_some_and(|deadline| now >= deadline) {
            let open = self.server.open_connections.load(Relaxed);
            log::warn!("shutdown timeout reached; cutting open_connections={open}");
            self.stop_all();
            return true;
        }
        false
    }

    fn stop_all(&mut self) {
        self.server.stop_now.store(true, Relaxed);
        for running in self.live() {
            running.shared.wake();
        }
        // Loops close their connections at their next wake-up; a loop stuck
        // in a handler cannot, and is left behind.
        let deadline = Instant::now() + Duration::from_millis(500);
        for running in self.live() {
            while !running.thread.is_finished() && Instant::now() < deadline {
                thread::park_timeout(Duration::from_millis(5));
            }
        }
        self.finish("stopped");
    }

    /// Refuses new clients at once instead of leaving them in a backlog
    /// nobody accepts from, when this process alone holds the socket.
    /// Otherwise the loops have left it, and its other holder accepts them.
    fn refuse_new_connections(&self) {
        if self.server.listener_shared.load(Relaxed) {
            return;
        }
        if let Err(err) = sys::shutdown_read(&self.server.listener) {
            log::debug!("listener shutdown: {err}");
        }
    }

    fn finish(&self, how: &str) {
        self.refuse_new_connections();
        let requests: u64 = self.server.slots.iter().map(|s| s.requests.load(Relaxed)).sum();
        let replaced: u64 = self
            .server
            .slots
            .iter()
            .map(|s| s.replaced_stalled.load(Relaxed) + s.replaced_died.load(Relaxed))
            .sum();
        log::info!(
            "vigil {how} requests={requests} loops_replaced={replaced} abandoned_alive={} uptime={:?}",
            self.abandoned.len(),
            self.server.started.elapsed()
        );
    }
}
