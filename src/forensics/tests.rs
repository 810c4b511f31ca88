//! Captures of real threads: spinning, blocked on a mutex, in a syscall,
//! and masking the signal.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::*;
use crate::sys::stack;

/// One images cache for every test (loading them is the slow part).
fn images() -> std::sync::MutexGuard<'static, Option<symbols::Images>> {
    static IMAGES: OnceLock<Mutex<Option<symbols::Images>>> = OnceLock::new();
    stack::install(crate::config::default_stack_signal()).expect("capture signal installed");
    lock(IMAGES.get_or_init(|| Mutex::new(Some(symbols::Images::load()))))
}

/// A thread registered for captures, running `body` until `stop` is set.
struct Subject {
    slot: &'static stack::StackSlot,
    tid: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn subject(body: impl FnOnce() + Send + 'static) -> Subject {
    drop(images());
    let (registered, slot) = crossbeam_channel::bounded(1);
    let thread = std::thread::spawn(move || {
        let registration = stack::register_current_thread().expect("registered");
        registered.send((registration.slot(), crate::sys::thread_id())).unwrap();
        body();
        drop(registration);
    });
    let (slot, tid) = slot.recv().unwrap();
    Subject { slot, tid, thread: Some(thread) }
}

impl Subject {
    fn trace(&self) -> StackTrace {
        let copied = stack::capture(self.slot, CAPTURE_TIMEOUT);
        trace(&mut images(), self.tid, SystemTime::now(), copied)
    }

    /// Captures until a frame's function contains every one of `names`
    /// (the thread may not be there yet at the first capture).
    fn eventually_names(&self, names: &[&str]) -> StackTrace {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let trace = self.trace();
            let functions: Vec<&str> =
                trace.frames.iter().filter_map(|f| f.function.as_deref()).collect();
            if names.iter().all(|name| functions.iter().any(|f| f.contains(name))) {
                return trace;
            }
            assert!(Instant::now() < deadline, "{names:?} not in {functions:#?} ({trace:?})");
            std::thread::yield_now();
        }
    }

    fn join(mut self) {
        self.thread.take().unwrap().join().unwrap();
    }
}

#[inline(never)]
fn spin_until_told(inside: &AtomicBool, stop: &AtomicBool) {
    inside.store(true, Ordering::Release);
    while !stop.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
}

#[inline(never)]
fn wait_for_the_lock(mutex: &Mutex<()>) {
    drop(std::hint::black_box(mutex.lock()));
}

#[inline(never)]
fn read_from_a_quiet_socket(mut socket: std::os::unix::net::UnixStream) {
    let mut byte = [0u8; 1];
    let _ = std::hint::black_box(socket.read(&mut byte));
}

#[test]
fn a_spinning_thread_is_caught_in_its_named_function() {
    let inside = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (i, s) = (inside.clone(), stop.clone());
    let subject = subject(move || spin_until_told(&i, &s));
    while !inside.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let trace = subject.trace();
    assert!(trace.error.is_none(), "{trace:?}");
    let first_user = trace.frames.iter().find(|f| f.user).and_then(|f| f.function.as_deref());
    assert!(
        first_user.is_some_and(|f| f.ends_with("spin_until_told")),
        "innermost user frame is the spinning function: {trace:#?}"
    );
    assert!(trace.summary(4).starts_with("vigil::forensics::tests::spin_until_told"));
    assert!(trace.round_trip_us.is_some());
    stop.store(true, Ordering::Release);
    subject.join();
}

#[test]
fn a_thread_blocked_on_a_mutex_shows_the_caller_and_the_lock() {
    let mutex = Arc::new(Mutex::new(()));
    let held = mutex.lock().unwrap();
    let waiting = mutex.clone();
    let subject = subject(move || wait_for_the_lock(&waiting));
    let trace = subject.eventually_names(&["wait_for_the_lock", "lock_contended"]);
    assert!(trace.error.is_none());
    drop(held);
    subject.join();
}

#[test]
fn a_thread_in_a_syscall_shows_the_caller_and_the_call() {
    let (quiet, peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let subject = subject(move || read_from_a_quiet_socket(quiet));
    // libc's read, by whichever of its names the symbol table gives.
    let trace = subject.eventually_names(&["read_from_a_quiet_socket", "read"]);
    let libc_frame = trace.frames.iter().find(|f| !f.user && f.function.is_some());
    assert!(libc_frame.is_some(), "{trace:#?}");
    drop(peer); // the read returns 0
    subject.join();
}

#[test]
fn a_thread_that_blocks_the_signal_times_out_within_the_bound_and_proc_is_reported() {
    let blocked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (blocked.clone(), stop.clone());
    let subject = subject(move || {
        stack::block_signal_for_current_thread();
        b.store(true, Ordering::Release);
        while !s.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
    });
    while !blocked.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let started = Instant::now();
    let copied = stack::capture(subject.slot, CAPTURE_TIMEOUT);
    let waited = started.elapsed();
    assert_eq!(copied.as_ref().err(), Some(&stack::CaptureError::TimedOut));
    // The bound plus scheduling slack, far below anything a supervisor
    // tick would notice.
    assert!(waited >= CAPTURE_TIMEOUT && waited < CAPTURE_TIMEOUT * 20, "{waited:?}");
    let trace = trace(&mut images(), subject.tid, SystemTime::now(), copied);
    assert!(trace.frames.is_empty());
    let proc = trace.proc.clone().expect("the /proc fallback");
    assert_eq!(proc.state.as_deref(), Some("R"), "it spins: {proc:?}");
    assert!(trace.summary(4).contains("did not answer"), "{}", trace.summary(4));
    // A later capture of a thread that answers is not disturbed by the
    // request given up on.
    stop.store(true, Ordering::Release);
    subject.join();
    let inside = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (i, s) = (inside.clone(), stop.clone());
    let next = self::subject(move || spin_until_told(&i, &s));
    while !inside.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    assert!(next
        .trace()
        .frames
        .iter()
        .any(|f| f.function.as_deref().is_some_and(|f| f.ends_with("spin_until_told"))));
    stop.store(true, Ordering::Release);
    next.join();
}

#[test]
fn runtime_frames_are_told_from_user_code() {
    for runtime in [
        "std::sys::pal::unix::thread::Thread::new::thread_start",
        "<core::panic::unwind_safe::AssertUnwindSafe<F> as core::ops::function::FnOnce<()>>::call_once",
        "vigil::event_loop::EventLoop<F>::run",
        "_rjem_je_malloc_default",
    ] {
        assert!(is_runtime_function(runtime), "{runtime}");
    }
    for user in ["vigil::demo::spin_forever", "<myapp::Api as vigil::service::Service>::call"] {
        assert!(!is_runtime_function(user), "{user}");
    }
}

#[test]
fn proc_stat_state_is_read_past_a_command_name_with_parentheses() {
    let state = ProcState::read(crate::sys::thread_id());
    assert_eq!(state.state.as_deref(), Some("R"), "the reading thread runs: {state:?}");
}
