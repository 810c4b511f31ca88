//! Copies a running thread's registers and live stack from inside the
//! thread, by a real-time signal, so that another thread can unwind it.
//!
//! The handler does only async-signal-safe work: `gettid`, atomic loads and
//! stores, a `memcpy` into a buffer allocated in advance, and a futex wake.
//! It allocates nothing and takes no lock, so it cannot deadlock on a lock
//! the interrupted code holds (the allocator's, stdio's, the logger's).
//!
//! Each thread that may be captured registers first: it records its stack
//! bounds in a [`StackSlot`] and unblocks the signal. Slots are never freed
//! (a late signal may still write into one), only reused by later threads.

use std::io;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The most of a thread's stack a capture copies, from the interrupted
/// stack pointer up. A handler's own frames are seldom more than a few
/// KiB; a debug build's deep recursion may be cut here (the unwinder then
/// stops early and says so).
pub(crate) const STACK_COPY_BYTES: usize = 256 * 1024;

/// Threads that can be registered at once (loops, handed-off and abandoned
/// threads, and any thread a test registers).
const MAX_SLOTS: usize = 512;

// The slot's state, also its futex word.
const IDLE: u32 = 0;
const REQUESTED: u32 = 1;
const WRITING: u32 = 2;
const DONE: u32 = 3;

/// The registers and stack copied at one moment of one thread.
#[derive(Debug, Clone)]
pub(crate) struct RawStack {
    pub(crate) ip: u64,
    pub(crate) sp: u64,
    /// Frame pointer (rbp on x86_64, x29 on aarch64).
    pub(crate) fp: u64,
    /// The copied bytes, starting at `sp`.
    pub(crate) bytes: Vec<u8>,
    /// True when the live stack was larger than the copy.
    pub(crate) cut: bool,
    /// From the request to the handler's wake-up.
    pub(crate) round_trip: Duration,
}

/// Why no stack was copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaptureError {
    /// The thread did not answer in time: it blocks the signal, or is not
    /// scheduled.
    TimedOut,
    /// Another capture of the same thread is under way.
    Busy,
    /// The thread is gone, or the signal could not be sent.
    Signal(String),
    /// Capturing is off (no signal configured, or this architecture).
    Unsupported,
}

/// One registered thread's capture state and buffer.
pub(crate) struct StackSlot {
    /// The registered thread; 0 when the slot is free.
    tid: AtomicI32,
    stack_low: AtomicUsize,
    stack_high: AtomicUsize,
    state: AtomicU32,
    ip: AtomicU64,
    sp: AtomicU64,
    fp: AtomicU64,
    copied: AtomicUsize,
    cut: AtomicU32,
    /// STACK_COPY_BYTES, leaked with the slot. Zeroed pages from the
    /// allocator are not touched (so not resident) until a first capture.
    buffer: *mut u8,
}

// SAFETY: the buffer (a leaked allocation only the slot points to) is
// written only by the signal handler on the slot's thread while the state
// is WRITING, and read only by the capturing thread once the state is DONE
// (release/acquire on `state`); one capture at a time owns the state
// machine (the IDLE -> REQUESTED compare-exchange).
unsafe impl Sync for StackSlot {}

impl std::fmt::Debug for StackSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackSlot").field("tid", &self.tid.load(Ordering::Relaxed)).finish()
    }
}

static SLOTS: [AtomicPtr<StackSlot>; MAX_SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_SLOTS];

/// The signal the handler is installed for, once.
static SIGNAL: OnceLock<Result<libc::c_int, String>> = OnceLock::new();

/// Serialises slot allocation (registration is rare; the handler never
/// takes it).
static ALLOCATING: Mutex<()> = Mutex::new(());

/// Installs the capture handler for `signal` (once per process; later
/// calls return the first outcome). Refused if something else already
/// handles that signal.
pub(crate) fn install(signal: libc::c_int) -> Result<libc::c_int, String> {
    SIGNAL
        .get_or_init(|| {
            if !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&signal) {
                return Err(format!(
                    "signal {signal} is not a real-time signal ({}..={})",
                    libc::SIGRTMIN(),
                    libc::SIGRTMAX()
                ));
            }
            // SAFETY: a zeroed sigaction is a valid "no handler" value;
            // sigaction only reads `new` and writes `old`, both live locals.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                    return Err(io::Error::last_os_error().to_string());
                }
                if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                    return Err(format!("signal {signal} already has a handler"));
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    on_capture_signal;
                new.sa_sigaction = handler as *const () as usize;
                // SA_RESTART: a handler's blocking read or write goes on
                // rather than fail with EINTR because it was looked at.
                new.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(signal, &new, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error().to_string());
                }
            }
            Ok(signal)
        })
        .clone()
}

/// The calling thread, registered for captures until the guard drops.
#[derive(Debug)]
pub(crate) struct Registration {
    slot: &'static StackSlot,
}

impl Registration {
    pub(crate) fn slot(&self) -> &'static StackSlot {
        self.slot
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.tid.store(0, Ordering::Release);
    }
}

/// Registers the calling thread: records its stack bounds, gives it a
/// slot and unblocks the capture signal for it. `None` if capturing is not
/// installed, or every slot is taken.
pub(crate) fn register_current_thread() -> Option<Registration> {
    let signal = *SIGNAL.get()?.as_ref().ok()?;
    let (low, high) = current_stack_bounds()?;
    let tid = super::thread_id();
    let slot = claim_slot(tid)?;
    slot.stack_low.store(low, Ordering::Relaxed);
    slot.stack_high.store(high, Ordering::Relaxed);
    slot.state.store(IDLE, Ordering::Relaxed);
    // Published last: the handler finds the slot by its tid.
    slot.tid.store(tid, Ordering::Release);
    // SAFETY: set is a live local; pthread_sigmask changes only this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Some(Registration { slot })
}

/// A free slot (reused) or a new one, leaked: a late signal may write
/// into a slot after its thread left, so none is ever freed.
fn claim_slot(tid: i32) -> Option<&'static StackSlot> {
    let _allocating = ALLOCATING.lock().unwrap_or_else(|e| e.into_inner());
    for entry in &SLOTS {
        let ptr = entry.load(Ordering::Acquire);
        if ptr.is_null() {
            let slot: &'static StackSlot = Box::leak(Box::new(StackSlot {
                // Reserved (negative: the handler matches no thread by it)
                // until the caller publishes its tid.
                tid: AtomicI32::new(-tid),
                stack_low: AtomicUsize::new(0),
                stack_high: AtomicUsize::new(0),
                state: AtomicU32::new(IDLE),
                ip: AtomicU64::new(0),
                sp: AtomicU64::new(0),
                fp: AtomicU64::new(0),
                copied: AtomicUsize::new(0),
                cut: AtomicU32::new(0),
                buffer: Box::leak(vec![0u8; STACK_COPY_BYTES].into_boxed_slice()).as_mut_ptr(),
            }));
            entry.store(slot as *const StackSlot as *mut StackSlot, Ordering::Release);
            return Some(slot);
        }
        // SAFETY: non-null entries point to leaked, never-freed slots.
        let slot = unsafe { &*ptr };
        // A free slot whose last capture is not being written.
        if slot.tid.load(Ordering::Acquire) == 0
            && slot.state.load(Ordering::Acquire) != WRITING
            && slot.tid.compare_exchange(0, -tid, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            return Some(slot);
        }
    }
    None
}

/// `[low, high)` of the calling thread's stack.
fn current_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: attr is initialised by pthread_getattr_np before use and
    // destroyed after; addr and size are live locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (got == 0).then(|| (addr as usize, addr as usize + size))
    }
}

/// Copies the registers and stack of the thread registered in `slot`,
/// waiting at most `timeout` for it to answer.
pub(crate) fn capture(slot: &StackSlot, timeout: Duration) -> Result<RawStack, CaptureError> {
    let signal = match SIGNAL.get() {
        Some(Ok(signal)) => *signal,
        _ => return Err(CaptureError::Unsupported),
    };
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err(CaptureError::Unsupported);
    }
    let tid = slot.tid.load(Ordering::Acquire);
    if tid <= 0 {
        return Err(CaptureError::Signal("the thread has exited".into()));
    }
    // DONE is a capture given up on that its handler finished late.
    let owned = [IDLE, DONE].into_iter().any(|from| {
        slot.state.compare_exchange(from, REQUESTED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    });
    if !owned {
        return Err(CaptureError::Busy);
    }
    let started = Instant::now();
    // SAFETY: tgkill with plain integers; it fails (ESRCH) if the thread
    // is gone rather than signal another.
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
    if sent != 0 {
        let err = io::Error::last_os_error();
        slot.state.store(IDLE, Ordering::Release);
        return Err(CaptureError::Signal(err.to_string()));
    }
    let deadline = started + timeout;
    loop {
        let state = slot.state.load(Ordering::Acquire);
        if state == DONE {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            // Take the request back unless the handler is already copying:
            // a copy is a memcpy, so it ends soon; wait for it.
            if slot
                .state
                .compare_exchange(REQUESTED, IDLE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Err(CaptureError::TimedOut);
            }
            if now >= deadline + timeout {
                return Err(CaptureError::TimedOut);
            }
        }
        futex_wait(&slot.state, state, deadline.max(now + Duration::from_millis(1)) - now);
    }
    let round_trip = started.elapsed();
    let copied = slot.copied.load(Ordering::Relaxed).min(STACK_COPY_BYTES);
    // SAFETY: the state is DONE: the handler finished writing `copied`
    // bytes (release) and no new request can start until this one sets
    // IDLE below; the buffer holds STACK_COPY_BYTES.
    let bytes = unsafe { std::slice::from_raw_parts(slot.buffer, copied) }.to_vec();
    let stack = RawStack {
        ip: slot.ip.load(Ordering::Relaxed),
        sp: slot.sp.load(Ordering::Relaxed),
        fp: slot.fp.load(Ordering::Relaxed),
        bytes,
        cut: slot.cut.load(Ordering::Relaxed) != 0,
        round_trip,
    };
    slot.state.store(IDLE, Ordering::Release);
    Ok(stack)
}

/// The kernel thread id registered in `slot` (0 once it left).
pub(crate) fn slot_thread(slot: &StackSlot) -> i32 {
    slot.tid.load(Ordering::Acquire).max(0)
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let spec = libc::timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // SAFETY: word is a live AtomicU32 (the futex word); spec a live local.
    // A spurious or early return is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &spec as *const libc::timespec,
        );
    }
}

extern "C" fn on_capture_signal(
    _signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; the handler restores it so that the
    // interrupted code does not see the futex call's.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid ucontext_t for SA_SIGINFO handlers.
    unsafe { record(&*(context as *const libc::ucontext_t)) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The handler's work: only async-signal-safe operations.
///
/// # Safety
/// Called only from the signal handler, on the interrupted thread.
unsafe fn record(context: &libc::ucontext_t) {
    // SAFETY: gettid is a plain syscall.
    let tid = unsafe { libc::gettid() };
    let Some(slot) = SLOTS.iter().find_map(|entry| {
        let ptr = entry.load(Ordering::Acquire);
        // SAFETY: non-null entries point to leaked, never-freed slots.
        (!ptr.is_null()).then(|| unsafe { &*ptr }).filter(|s| s.tid.load(Ordering::Acquire) == tid)
    }) else {
        return;
    };
    if slot.state.compare_exchange(REQUESTED, WRITING, Ordering::AcqRel, Ordering::Relaxed).is_err()
    {
        return; // a request given up on, or none
    }
    let (ip, sp, fp) = registers(context);
    let low = slot.stack_low.load(Ordering::Relaxed) as u64;
    let high = slot.stack_high.load(Ordering::Relaxed) as u64;
    let (copied, cut) = if (low..high).contains(&sp) {
        let live = (high - sp) as usize;
        let copied = live.min(STACK_COPY_BYTES);
        // SAFETY: [sp, sp + copied) lies inside this thread's own mapped
        // stack (checked against its bounds), and the buffer holds
        // STACK_COPY_BYTES; nothing else touches the buffer while WRITING.
        unsafe {
            std::ptr::copy_nonoverlapping(sp as *const u8, slot.buffer, copied);
        }
        (copied, live > copied)
    } else {
        (0, true) // on an alternate signal stack, or bounds unknown
    };
    slot.ip.store(ip, Ordering::Relaxed);
    slot.sp.store(sp, Ordering::Relaxed);
    slot.fp.store(fp, Ordering::Relaxed);
    slot.copied.store(copied, Ordering::Relaxed);
    slot.cut.store(u32::from(cut), Ordering::Relaxed);
    slot.state.store(DONE, Ordering::Release);
    // SAFETY: a futex wake on a live word; async-signal-safe.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            slot.state.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

/// Instruction, stack and frame pointers of the interrupted code.
#[cfg(target_arch = "x86_64")]
fn registers(context: &libc::ucontext_t) -> (u64, u64, u64) {
    let regs = &context.uc_mcontext.gregs;
    let reg = |index: libc::c_int| regs[index as usize] as u64;
    (reg(libc::REG_RIP), reg(libc::REG_RSP), reg(libc::REG_RBP))
}

#[cfg(target_arch = "aarch64")]
fn registers(context: &libc::ucontext_t) -> (u64, u64, u64) {
    let m = &context.uc_mcontext;
    (m.pc, m.sp, m.regs[29])
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn registers(_context: &libc::ucontext_t) -> (u64, u64, u64) {
    (0, 0, 0)
}

/// Blocks the capture signal for the calling thread, as code that masks
/// signals would: its captures time out.
#[cfg(test)]
pub(crate) fn block_signal_for_current_thread() {
    let Some(Ok(signal)) = SIGNAL.get() else { return };
    // SAFETY: set is a live local; pthread_sigmask changes only this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, *signal);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
