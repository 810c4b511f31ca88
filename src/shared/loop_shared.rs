//! What one loop shares with the supervisor and the server handle.
//!
//! # Atomic ordering
//! Everything here is a statistic or a flag that carries no data with it,
//! so `Relaxed` is enough: the heartbeat is compared only with earlier
//! values of itself; counters are read for display; the `fate` word and the
//! `draining` flag are polled by the loop, which is woken through its
//! `mio::Waker` (a syscall, which orders everything before it) whenever it
//! must notice one promptly. Who owns each connection is settled by the
//! claim protocol of [`FdRegistry`], not by these flags: a loop that reads a
//! stale fate still cannot touch a connection that moved.
//!
//! A handoff, in order: the supervisor stores `HANDED_OFF` in `fate`,
//! lowers the thread's priority, moves the idle connections out of the
//! registry (see its `# Atomic ordering`) and spawns the fresh loop with
//! them. The old thread loads `fate` after every service call and before
//! each poll; once it sees `HANDED_OFF` it leaves the listener, forgets the
//! connections that moved, and passes each of its own to the slot's current
//! loop through that loop's inbox as soon as it is idle.

use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use super::counters::SlotCounters;
use super::lock;
use super::registry::FdRegistry;

/// A loop's heartbeat: `progress << 1 | busy`.
///
/// The loop sets busy and bumps progress when `poll` returns, bumps
/// progress after every request, and clears busy before polling again. It
/// never reads a clock for this and is never woken for it: the supervisor
/// does the timing (see `supervisor::verdict`).
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    word: CachePadded<AtomicU64>,
}

impl Heartbeat {
    pub(crate) const BUSY: u64 = 1;

    /// Stores the loop's progress (a counter it keeps locally) and busy bit.
    #[inline]
    pub(crate) fn beat(&self, progress: u64, busy: bool) {
        self.word.store(progress << 1 | u64::from(busy), Relaxed);
    }

    pub(crate) fn read(&self) -> u64 {
        self.word.load(Relaxed)
    }
}

/// The method and path of the request a loop is serving, in relaxed words,
/// so that recording costs a few stores and no lock. The supervisor reads
/// it only when the loop is stuck (so it is not being written); a torn read
/// while the loop runs is harmless, it is only logged.
///
/// Words are packed by shifts, not copied through a buffer: recording
/// `GET /` this way costs about 40 instructions, against 99 for a zeroed
/// 64-byte buffer, three copies and eight stores (make bench-instructions).
#[derive(Debug, Default)]
pub(crate) struct RequestRecord {
    /// Up to 8 bytes of the method (longer ones are cut; none is standard).
    method: AtomicU64,
    /// Bytes of the path recorded (at most `PATH_WORDS * 8`).
    path_len: AtomicU64,
    path: [AtomicU64; PATH_WORDS],
}

const PATH_WORDS: usize = 7;

/// Up to 8 bytes as a little-endian word, zero-padded.
fn pack(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).enumerate().fold(0, |word, (i, &b)| word | u64::from(b) << (8 * i))
}

impl RequestRecord {
    pub(crate) fn record(&self, method: &str, path: &str) {
        self.method.store(pack(method.as_bytes()), Relaxed);
        let path = &path.as_bytes()[..path.len().min(PATH_WORDS * 8)];
        let mut chunks = path.chunks_exact(8);
        for (word, chunk) in self.path.iter().zip(&mut chunks) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Relaxed);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            self.path[path.len() / 8].store(pack(rest), Relaxed);
        }
        self.path_len.store(path.len() as u64, Relaxed);
    }

    /// `"GET /path"` as last recorded, or `None` before the first request.
    pub(crate) fn read(&self) -> Option<String> {
        let method = self.method.load(Relaxed).to_le_bytes();
        let method = &method[..method.iter().position(|&b| b == 0).unwrap_or(8)];
        if method.is_empty() {
            return None;
        }
        let len = (self.path_len.load(Relaxed) as usize).min(PATH_WORDS * 8);
        let path: Vec<u8> =
            self.path.iter().flat_map(|word| word.load(Relaxed).to_le_bytes()).take(len).collect();
        Some(format!("{} {}", String::from_utf8_lossy(method), String::from_utf8_lossy(&path)))
    }
}

/// What a loop is doing, for the snapshot and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopState {
    /// Spawned, not yet listening.
    Starting,
    /// Accepting and serving.
    Serving,
    /// Finishing its connections before it exits (recycle or shutdown).
    Draining,
    /// Stalled and replaced; its thread has not come back yet.
    Abandoned,
    /// Busy past the handoff threshold: a fresh loop took its core, its
    /// listener and its idle connections; it finishes the rest and exits.
    HandedOff,
    /// Its thread has ended.
    Exited,
}

impl LoopState {
    fn from_u8(value: u8) -> LoopState {
        match value {
            0 => LoopState::Starting,
            1 => LoopState::Serving,
            2 => LoopState::Draining,
            3 => LoopState::Abandoned,
            4 => LoopState::HandedOff,
            _ => LoopState::Exited,
        }
    }
}

/// What the supervisor decided for a loop. Only ever moves forward:
/// `Serving` -> `HandedOff` -> `Abandoned`, or `Serving` -> `Abandoned`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Fate {
    Serving = 0,
    /// Finish the current work, pass connections on, exit.
    HandedOff = 1,
    /// Every connection is gone; exit as soon as the handler returns.
    Abandoned = 2,
}

/// One loop (one slot, one generation), as seen from outside it.
#[derive(Debug)]
pub(crate) struct LoopShared {
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) core: Option<usize>,
    pub(crate) started: Instant,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) counters: Arc<SlotCounters>,
    pub(crate) open_connections: AtomicUsize,
    pub(crate) registry: Mutex<FdRegistry>,
    pub(crate) current_request: RequestRecord,
    /// Kernel thread id, once the thread runs (0 before).
    pub(crate) tid: AtomicI32,
    /// What the supervisor decided for the loop (see [`Fate`]).
    fate: AtomicU8,
    /// Set when the supervisor handed the loop off: when its slow request
    /// started, as far as the supervisor can tell.
    pub(crate) slow_request_started: Mutex<Option<Instant>>,
    /// Another loop delivered connections to the inbox (see `FdRegistry`).
    pub(crate) inbox_hint: AtomicBool,
    /// Set to stop accepting, finish connections, and exit.
    pub(crate) draining: AtomicBool,
    /// Set by another loop that left connections in the backlog.
    pub(crate) accept_hint: AtomicBool,
    /// In a shutdown: the loop has accepted its last connections and left
    /// the listener, which the supervisor may now close.
    pub(crate) accepted_final: AtomicBool,
    state: AtomicUsize,
    /// jemalloc arena of the loop, if jemalloc is the allocator.
    pub(crate) arena: Mutex<Option<u32>>,
    /// Wakes the loop from `poll`; set by the loop once its `Poll` exists.
    pub(crate) waker: Mutex<Option<Arc<mio::Waker>>>,
    /// Where the thread's stack is copied to on a capture; set by the
    /// thread when it starts, if capturing is on.
    pub(crate) stack_slot: std::sync::OnceLock<&'static crate::sys::stack::StackSlot>,
    /// The stack captured when the loop was handed off or given up on.
    pub(crate) stack: Mutex<Option<crate::forensics::StackTrace>>,
    /// The copy taken at a handoff, until someone asks to see it.
    pub(crate) kept_stack: Mutex<Option<crate::forensics::KeptStack>>,
}

impl LoopShared {
    pub(crate) fn new(
        slot: usize,
        generation: u32,
        core: Option<usize>,
        counters: Arc<SlotCounters>,
    ) -> LoopShared {
        LoopShared {
            slot,
            generation,
            core,
            started: Instant::now(),
            heartbeat: Heartbeat::default(),
            counters,
            open_connections: AtomicUsize::new(0),
            registry: Mutex::new(FdRegistry::default()),
            current_request: RequestRecord::default(),
            tid: AtomicI32::new(0),
            fate: AtomicU8::new(Fate::Serving as u8),
            slow_request_started: Mutex::new(None),
            inbox_hint: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            accept_hint: AtomicBool::new(false),
            accepted_final: AtomicBool::new(false),
            state: AtomicUsize::new(0),
            arena: Mutex::new(None),
            waker: Mutex::new(None),
            stack_slot: std::sync::OnceLock::new(),
            stack: Mutex::new(None),
            kept_stack: Mutex::new(None),
        }
    }

    /// What the supervisor decided for the loop: one relaxed load, made
    /// after every service call.
    #[inline]
    pub(crate) fn fate(&self) -> Fate {
        match self.fate.load(Relaxed) {
            0 => Fate::Serving,
            1 => Fate::HandedOff,
            _ => Fate::Abandoned,
        }
    }

    /// Decides the loop's fate (supervisor side); the loop is then woken.
    pub(crate) fn set_fate(&self, fate: Fate) {
        self.fate.fetch_max(fate as u8, Relaxed);
    }

    /// `loop <slot>.<generation>`, as every log line names a loop.
    pub(crate) fn name(&self) -> String {
        format!("{}.{}", self.slot, self.generation)
    }

    pub(crate) fn state(&self) -> LoopState {
        LoopState::from_u8(self.state.load(Relaxed) as u8)
    }

    pub(crate) fn set_state(&self, state: LoopState) {
        self.state.store(state as usize, Relaxed);
    }

    /// The registry lock (see `lock` for poisoning).
    pub(crate) fn registry(&self) -> MutexGuard<'_, FdRegistry> {
        lock(&self.registry)
    }

    /// Wakes the loop so it notices a flag set from outside.
    pub(crate) fn wake(&self) {
        let waker = lock(&self.waker).clone();
        if let Some(waker) = waker {
            if let Err(err) = waker.wake() {
                log::debug!("loop {} wake failed: {err}", self.name());
            }
        }
    }

    /// Asks the loop to stop accepting, finish its connections and exit.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Relaxed);
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_record_keeps_method_and_truncated_path() {
        let record = RequestRecord::default();
        assert_eq!(record.read(), None);
        record.record("GET", "/spin");
        assert_eq!(record.read().as_deref(), Some("GET /spin"));
        let long = format!("/{}", "x".repeat(100));
        record.record("POST", &long);
        assert_eq!(record.read().unwrap(), format!("POST {}", &long[..56]));
        record.record("GET", "/a");
        assert_eq!(record.read().as_deref(), Some("GET /a"), "shorter record clears the rest");
        record.record("PROPFIND", "/exactly-16-byte");
        assert_eq!(record.read().as_deref(), Some("PROPFIND /exactly-16-byte"));
        record.record("M-SEARCHING", "*");
        assert_eq!(record.read().as_deref(), Some("M-SEARCH *"), "methods are cut at 8 bytes");
    }

    #[test]
    fn heartbeat_word_layout() {
        let heartbeat = Heartbeat::default();
        heartbeat.beat(5, true);
        assert_eq!(heartbeat.read(), 5 << 1 | Heartbeat::BUSY);
        heartbeat.beat(5, false);
        assert_eq!(heartbeat.read(), 5 << 1);
    }
}
