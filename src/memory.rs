//! Per-loop memory: each loop thread allocates from its own jemalloc arena,
//! so the supervisor can tell which loop holds how much (threads share one
//! heap, unlike worker processes, which the kernel measures one by one).
//!
//! Everything here degrades to "unavailable" when jemalloc is not the
//! global allocator: the library must work under any allocator.

use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tikv_jemalloc_ctl::{epoch, raw, stats};

/// Whether jemalloc serves this process's allocations, checked once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // jemalloc is linked either way (through tikv-jemalloc-ctl); it is
        // the allocator only if an allocation moves its thread counter.
        let Ok(before) = tikv_jemalloc_ctl::thread::allocatedp::read() else {
            return false;
        };
        let before = before.get();
        let probe = std::hint::black_box(vec![1u8; 64 * 1024]);
        let after =
            tikv_jemalloc_ctl::thread::allocatedp::read().map(|p| p.get()).unwrap_or(before);
        drop(probe);
        after >= before + 64 * 1024
    })
}

/// Arenas of loops that exited, purged, for the next loops to reuse.
///
/// jemalloc never frees an arena, and has at most 4096: a server whose
/// loops come and go (handoffs, recycles) would run out of them, and every
/// arena keeps some memory of its own. An arena is reused only once it
/// holds less than [`CLEAN_BYTES`]: an exiting thread's frees are not all
/// in the statistics when it ends (they were seen to lag by the whole of a
/// 48 MiB allocation), and a new loop must not start out over its limit
/// with someone else's memory. One still dirty waits in the pool.
static FREE_ARENAS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// What a reused arena may still hold: buffers of the loop that left it.
const CLEAN_BYTES: u64 = 1 << 20;

/// Gives the calling thread an arena of its own (an exited loop's that is
/// clean by now, or a new one); `None` without jemalloc.
pub(crate) fn bind_thread_arena() -> Option<u32> {
    if !available() {
        return None;
    }
    let arena = match take_clean_arena() {
        Some(arena) => arena,
        // SAFETY: `arenas.create` is a read of type `unsigned` (u32).
        None => match unsafe { raw::read::<u32>(b"arenas.create\0") } {
            Ok(arena) => arena,
            Err(err) => {
                log::warn!("jemalloc arenas.create failed: {err}");
                return None;
            }
        },
    };
    // SAFETY: `thread.arena` is a write of type `unsigned` (u32).
    match unsafe { raw::write::<u32>(b"thread.arena\0", arena) } {
        Ok(()) => Some(arena),
        Err(err) => {
            log::warn!("jemalloc thread.arena={arena} failed: {err}");
            None
        }
    }
}

/// An arena from the pool that holds less than [`CLEAN_BYTES`] now.
fn take_clean_arena() -> Option<u32> {
    let mut pool = FREE_ARENAS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if pool.is_empty() || epoch::advance().is_err() {
        return None;
    }
    let clean = pool
        .iter()
        .position(|&arena| arena_stats(arena).is_some_and(|stats| stats.allocated < CLEAN_BYTES))?;
    Some(pool.swap_remove(clean))
}

/// Returns the free pages of an exiting loop's arena to the system, and
/// the arena to the pool the next loops take theirs from.
pub(crate) fn release_arena(arena: u32) {
    let name = format!("arena.{arena}.purge\0");
    // SAFETY: `arena.<i>.purge` takes no value (a void write).
    if let Err(err) = unsafe { raw::write::<()>(name.as_bytes(), ()) } {
        log::debug!("jemalloc purge of arena {arena} failed: {err}");
    }
    FREE_ARENAS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(arena);
}

/// Figures of one arena, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArenaStats {
    /// Bytes in live allocations (small + large).
    pub allocated: u64,
    /// Bytes in active pages (allocated plus fragmentation).
    pub active: u64,
    /// Bytes of the arena resident in memory.
    pub resident: u64,
}

/// Process-wide figures, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    /// Bytes in live allocations, all arenas (zero without jemalloc).
    pub allocated: u64,
    /// Bytes in active pages, all arenas (zero without jemalloc).
    pub active: u64,
    /// Bytes jemalloc holds resident in memory (zero without jemalloc).
    pub resident: u64,
    /// Resident set size from the kernel.
    pub rss: u64,
}

/// Refreshes jemalloc's statistics; call once before a round of reads.
pub(crate) fn advance_epoch() -> bool {
    available() && epoch::advance().is_ok()
}

/// Reads one arena (after `advance_epoch`).
pub(crate) fn arena_stats(arena: u32) -> Option<ArenaStats> {
    let read = |field: &str| -> Option<u64> {
        let name = format!("stats.arenas.{arena}.{field}\0");
        // SAFETY: all the fields read here are `size_t` statistics.
        unsafe { raw::read::<usize>(name.as_bytes()) }.ok().map(|v| v as u64)
    };
    let page = page_size()?;
    Some(ArenaStats {
        allocated: read("small.allocated")? + read("large.allocated")?,
        active: read("pactive")? * page,
        resident: read("resident")?,
    })
}

/// Reads the process-wide figures (after `advance_epoch`). Without
/// jemalloc only `rss` is filled in.
pub(crate) fn process_memory() -> ProcessMemory {
    let rss = crate::sys::resident_bytes().unwrap_or(0);
    if !available() {
        return ProcessMemory { rss, ..ProcessMemory::default() };
    }
    ProcessMemory {
        allocated: stats::allocated::read().unwrap_or(0) as u64,
        active: stats::active::read().unwrap_or(0) as u64,
        resident: stats::resident::read().unwrap_or(0) as u64,
        rss,
    }
}

fn page_size() -> Option<u64> {
    static PAGE: OnceLock<Option<u64>> = OnceLock::new();
    // SAFETY: `arenas.page` is a `size_t` read.
    *PAGE.get_or_init(|| unsafe { raw::read::<usize>(b"arenas.page\0") }.ok().map(|p| p as u64))
}
