//! Where is a thread stuck? Its stack, captured while the process lives on.
//!
//! A capture is two halves. The copy ([`crate::sys::stack`]) happens on the
//! asking thread, in a few microseconds and within a bound
//! ([`CAPTURE_TIMEOUT`]): a real-time signal makes the stuck thread copy its
//! registers and live stack into a buffer it registered in advance. The
//! unwinding and symbolization ([`symbols`]) happen on the forensics thread,
//! never in the handler nor on the supervisor: the first takes up to a
//! second, and both allocate and take locks the stuck thread may hold.
//!
//! When the thread does not answer in time (it blocks the signal, or is
//! not scheduled), what `/proc/self/task/<tid>/` tells is reported instead.

mod symbols;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::shared::{lock, LoopShared};
use crate::sys::stack::{self as capture, CaptureError, RawStack};

/// How long a capture waits for the thread to copy its stack.
pub(crate) const CAPTURE_TIMEOUT: Duration = Duration::from_millis(50);

/// Stall reports kept for `/stalls`.
pub(crate) const STALLS_KEPT: usize = 16;

/// Top user frames shown in a log line.
const FRAMES_IN_LOG: usize = 4;

/// One frame of a captured stack.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Frame {
    /// The instruction (first frame) or return address, in hex.
    pub address: String,
    /// The demangled function, when the image has symbols for it.
    pub function: Option<String>,
    /// `file:line`, or the image's file name without line tables.
    pub location: Option<String>,
    /// Code of the service (not std, libc, the allocator or vigil's own
    /// loop): what a report shows first.
    pub user: bool,
}

impl Frame {
    fn new(
        address: u64,
        function: Option<String>,
        location: Option<String>,
        runtime_image: bool,
    ) -> Frame {
        let user = !runtime_image && function.as_deref().is_some_and(|f| !is_runtime_function(f));
        Frame { address: format!("{address:#x}"), function, location, user }
    }

    fn unknown(address: u64) -> Frame {
        Frame { address: format!("{address:#x}"), function: None, location: None, user: false }
    }
}

/// Functions of the language runtime, the allocator and vigil's own loop,
/// skipped when a report presents the frames of user code.
fn is_runtime_function(function: &str) -> bool {
    const RUNTIME: [&str; 19] = [
        "std::",
        "core::",
        "alloc::",
        "__rust",
        "rust_",
        "panic_unwind::",
        "_rjem_",
        "tikv_jemalloc",
        "je_",
        "mio::",
        "crossbeam",
        "libc::",
        "vigil::event_loop::",
        "vigil::conn::",
        "vigil::supervisor::",
        "vigil::service::",
        "vigil::panics::",
        "vigil::sys::",
        "vigil::http::",
    ];
    // `<T as Trait>::method` is T's code.
    let path = function.trim_start_matches('<');
    RUNTIME.iter().any(|prefix| path.starts_with(prefix))
}

/// What `/proc/self/task/<tid>/` says of a thread.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProcState {
    /// The state letter of `stat` (R running, S sleeping, D disk wait...).
    pub state: Option<String>,
    /// `syscall`: the system call number and arguments it is blocked in,
    /// `running`, or `-1 ...` when not in one.
    pub syscall: Option<String>,
    /// `wchan`: the kernel function it waits in (`0` when running).
    pub wchan: Option<String>,
}

impl ProcState {
    fn read(tid: i32) -> ProcState {
        let read = |name: &str| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/{name}"))
                .ok()
                .map(|text| text.trim().to_string())
        };
        // The state follows the parenthesised command name, which may
        // itself hold spaces or parentheses.
        let state = read("stat")
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()?.to_string()));
        ProcState { state, syscall: read("syscall"), wchan: read("wchan") }
    }
}

/// A thread's stack at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct StackTrace {
    /// The kernel thread id.
    pub thread_id: i32,
    /// Seconds since the Unix epoch.
    pub captured_at: f64,
    /// Innermost first. Empty when the thread did not answer.
    pub frames: Vec<Frame>,
    /// The unwinder reached the root of the stack (false when it had to
    /// stop early, or the stack was larger than the copy).
    pub complete: bool,
    /// From the signal to the copy, in microseconds.
    pub round_trip_us: Option<u64>,
    /// Why there are no frames, when there are none.
    pub error: Option<String>,
    /// What `/proc` tells, when the signal was not answered in time.
    pub proc: Option<ProcState>,
}

impl StackTrace {
    /// The top user frames, innermost first, as `a <- b <- c`; all frames
    /// when none is user code; the `/proc` state when there are none.
    pub fn summary(&self, frames: usize) -> String {
        let named = |frame: &&Frame| frame.function.is_some();
        let user: Vec<&Frame> = self.frames.iter().filter(|f| f.user).take(frames).collect();
        let shown: Vec<&Frame> = if user.is_empty() {
            self.frames.iter().filter(named).take(frames).collect()
        } else {
            user
        };
        if shown.is_empty() {
            let proc = self.proc.clone().unwrap_or_default();
            return format!(
                "unknown ({}; state={} syscall={} wchan={})",
                self.error.as_deref().unwrap_or("no frames"),
                proc.state.as_deref().unwrap_or("?"),
                proc.syscall.as_deref().unwrap_or("?"),
                proc.wchan.as_deref().unwrap_or("?"),
            );
        }
        shown.iter().filter_map(|f| f.function.as_deref()).collect::<Vec<_>>().join(" <- ")
    }
}

/// One loop given up on: when, which, serving what, and where it was stuck.
#[derive(Clone, Debug, Serialize)]
pub struct StallReport {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// `slot.generation` of the loop.
    pub loop_name: String,
    /// Method and path of the request it was serving, if one.
    pub request: Option<String>,
    /// How long it had been busy without progress.
    pub stuck_for_seconds: f64,
    /// Its stack when it was given up on.
    pub stack: StackTrace,
}

/// Why a stack could not be taken on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackError {
    /// No such loop (or it has exited).
    UnknownLoop,
    /// The forensics thread did not answer (the server is stopping).
    Unavailable,
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackError::UnknownLoop => f.write_str("no such loop"),
            StackError::Unavailable => f.write_str("stack capture unavailable"),
        }
    }
}

impl std::error::Error for StackError {}

/// What the forensics thread does with a copied stack once it is unwound.
enum Then {
    Reply(crossbeam_channel::Sender<StackTrace>),
    /// Store it as the loop's stack and report the stall: log `line` with
    /// the top frames, keep the report.
    Stall {
        shared: Arc<LoopShared>,
        line: String,
        report: Box<StallReport>,
        kept: Arc<Mutex<VecDeque<StallReport>>>,
    },
    /// Copy it there and keep the copy on the loop, unsymbolized (a
    /// handoff: the supervisor does not wait, and nothing is loaded until
    /// someone asks to see it).
    CaptureAndKeep(Arc<LoopShared>),
    /// Symbolize the copy kept on the loop, store the stack there, and say
    /// when done.
    SymbolizeKept(Arc<LoopShared>, crossbeam_channel::Sender<()>),
}

struct Job {
    tid: i32,
    copied: Option<Result<RawStack, CaptureError>>,
    captured_at: SystemTime,
    then: Then,
}

/// A server's side of the forensics thread: the stall reports it keeps.
///
/// The thread itself is one per process, started by the first job: the
/// images and their debug info are the process's, loaded once for every
/// server in it.
#[derive(Debug, Default)]
pub(crate) struct Forensics {
    stalls: Arc<Mutex<VecDeque<StallReport>>>,
}

/// The forensics thread's queue, once started (`None` if it could not be).
static WORKER: OnceLock<Option<crossbeam_channel::Sender<Job>>> = OnceLock::new();

fn worker() -> Option<&'static crossbeam_channel::Sender<Job>> {
    WORKER
        .get_or_init(|| {
            let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
            let started =
                std::thread::Builder::new().name("vigil-forensics".into()).spawn(move || {
                    // Loaded on the first stack to unwind: mapping the images
                    // and reading their debug info takes time and tens of MiB.
                    let mut images = None;
                    for job in queue {
                        let started = std::time::Instant::now();
                        run(&mut images, job);
                        log::debug!(
                            "forensics: stack unwound and symbolized in {:?}",
                            started.elapsed()
                        );
                    }
                });
            match started {
                Ok(_) => Some(jobs),
                Err(err) => {
                    log::warn!("no forensics thread, stacks will not be symbolized: {err}");
                    None
                }
            }
        })
        .as_ref()
}

impl Forensics {
    fn send(&self, job: Job) -> Result<(), Box<Job>> {
        match worker() {
            Some(jobs) => jobs.send(job).map_err(|e| Box::new(e.into_inner())),
            None => Err(Box::new(job)),
        }
    }

    /// Copies the stack of `shared`'s thread now (at most
    /// [`CAPTURE_TIMEOUT`]), then has it unwound, logged with `line` and
    /// kept as a stall report. Called before the thread is moved to
    /// `SCHED_IDLE`, after which it may not run for a long time.
    pub(crate) fn report_stall(
        &self,
        shared: &Arc<LoopShared>,
        line: String,
        request: Option<String>,
        stuck_for: Duration,
    ) {
        let (tid, copied) = copy_now(shared);
        let captured_at = SystemTime::now();
        let report = Box::new(StallReport {
            at: unix_seconds(captured_at),
            loop_name: shared.name(),
            request,
            stuck_for_seconds: stuck_for.as_secs_f64(),
            stack: empty_trace(tid, captured_at),
        });
        let then = Then::Stall { shared: shared.clone(), line, report, kept: self.stalls.clone() };
        if let Err(job) = self.send(Job { tid, copied: Some(copied), captured_at, then }) {
            // No thread to symbolize: say what is known, now.
            if let Then::Stall { line, .. } = job.then {
                log::warn!("{line} stack=unsymbolized");
            }
        }
    }

    /// Has the stack of `shared`'s thread captured and stored, without
    /// waiting (a handed-off thread, reniced, still answers quickly).
    pub(crate) fn capture_later(&self, shared: &Arc<LoopShared>) {
        let job = Job {
            tid: shared.tid.load(std::sync::atomic::Ordering::Relaxed),
            copied: None,
            captured_at: SystemTime::now(),
            then: Then::CaptureAndKeep(shared.clone()),
        };
        let _ = self.send(job);
    }

    /// Symbolizes the stack copied from `shared` at its handoff, if one is
    /// waiting, and stores it as the loop's stack.
    pub(crate) fn symbolize_kept(&self, shared: &Arc<LoopShared>) {
        if lock(&shared.kept_stack).is_none() {
            return;
        }
        let (done, finished) = crossbeam_channel::bounded(1);
        let job = Job {
            tid: 0,
            copied: None,
            captured_at: SystemTime::now(),
            then: Then::SymbolizeKept(shared.clone(), done),
        };
        if self.send(job).is_ok() {
            let _ = finished.recv_timeout(Duration::from_secs(30));
        }
    }

    /// The stack of `shared`'s thread now, unwound and symbolized.
    pub(crate) fn stack_of(&self, shared: &Arc<LoopShared>) -> Result<StackTrace, StackError> {
        let (tid, copied) = copy_now(shared);
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job = Job {
            tid,
            copied: Some(copied),
            captured_at: SystemTime::now(),
            then: Then::Reply(reply),
        };
        self.send(job).map_err(|_| StackError::Unavailable)?;
        // The first symbolization loads every image's debug info.
        answer.recv_timeout(Duration::from_secs(30)).map_err(|_| StackError::Unavailable)
    }

    /// The last stall reports, oldest first.
    pub(crate) fn stalls(&self) -> Vec<StallReport> {
        lock(&self.stalls).iter().cloned().collect()
    }
}

/// Copies the registered thread's stack (at most [`CAPTURE_TIMEOUT`]).
fn copy_now(shared: &LoopShared) -> (i32, Result<RawStack, CaptureError>) {
    let tid = shared.tid.load(std::sync::atomic::Ordering::Relaxed);
    let copied = match shared.stack_slot.get() {
        Some(slot) if capture::slot_thread(slot) == tid => capture::capture(slot, CAPTURE_TIMEOUT),
        Some(_) => Err(CaptureError::Signal("the thread has exited".into())),
        None => Err(CaptureError::Unsupported),
    };
    (tid, copied)
}

/// A stack copied and kept for later: the thread, when, and the copy.
pub(crate) type KeptStack = (i32, SystemTime, Result<RawStack, CaptureError>);

fn run(images: &mut Option<symbols::Images>, job: Job) {
    let (tid, captured_at, copied) = match job.then {
        Then::CaptureAndKeep(shared) => {
            let (tid, copied) = copy_now(&shared);
            *lock(&shared.kept_stack) = Some((tid, job.captured_at, copied));
            return;
        }
        Then::SymbolizeKept(shared, done) => {
            if let Some((tid, at, copied)) = lock(&shared.kept_stack).take() {
                *lock(&shared.stack) = Some(trace(images, tid, at, copied));
            }
            let _ = done.send(());
            return;
        }
        _ => (job.tid, job.captured_at, job.copied.unwrap_or(Err(CaptureError::Unsupported))),
    };
    let trace = trace(images, tid, captured_at, copied);
    match job.then {
        Then::Reply(reply) => {
            let _ = reply.send(trace);
        }
        Then::CaptureAndKeep(_) | Then::SymbolizeKept(..) => unreachable!("handled above"),
        Then::Stall { shared, line, mut report, kept } => {
            log::warn!("{line} stack=[{}]", trace.summary(FRAMES_IN_LOG));
            *lock(&shared.stack) = Some(trace.clone());
            report.stack = trace;
            let mut stalls = lock(&kept);
            if stalls.len() == STALLS_KEPT {
                stalls.pop_front();
            }
            stalls.push_back(*report);
        }
    }
}

fn trace(
    images: &mut Option<symbols::Images>,
    tid: i32,
    captured_at: SystemTime,
    copied: Result<RawStack, CaptureError>,
) -> StackTrace {
    let mut trace = empty_trace(tid, captured_at);
    match copied {
        Ok(raw) => {
            let images = images.get_or_insert_with(|| {
                let started = std::time::Instant::now();
                let images = symbols::Images::load();
                log::debug!("forensics: images mapped in {:?}", started.elapsed());
                images
            });
            let (frames, complete) = images.unwind(&raw);
            trace.frames = frames;
            trace.complete = complete && !raw.cut;
            trace.round_trip_us = u64::try_from(raw.round_trip.as_micros()).ok();
        }
        Err(err) => {
            trace.error = Some(match err {
                CaptureError::TimedOut => format!(
                    "the thread did not answer the signal within {CAPTURE_TIMEOUT:?} (it blocks it, or is not scheduled)"
                ),
                CaptureError::Busy => "another capture of this thread is under way".into(),
                CaptureError::Signal(why) => format!("no signal sent: {why}"),
                CaptureError::Unsupported => "stack capture is off".into(),
            });
            if tid > 0 {
                trace.proc = Some(ProcState::read(tid));
            }
        }
    }
    trace
}

fn empty_trace(tid: i32, captured_at: SystemTime) -> StackTrace {
    StackTrace {
        thread_id: tid,
        captured_at: unix_seconds(captured_at),
        frames: Vec::new(),
        complete: false,
        round_trip_us: None,
        error: None,
        proc: None,
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests;
