//! Handler panics, logged without flooding: a handler that panics on every
//! request must not turn each into log lines (about 225 bytes each from
//! the standard hook, 2.5 KB with a backtrace, 7.7 MB/s at 34k panics/s).
//!
//! [`quiet_handler_panics`] replaces the standard hook's report for vigil's
//! loop threads (it keeps the location for vigil's own line); the loops log
//! at most [`LINES_PER_SECOND`] panic lines a second and count the rest.

use std::cell::RefCell;
use std::panic;
use std::time::{Duration, Instant};

/// Panic lines a loop writes per second at most.
pub(crate) const LINES_PER_SECOND: u32 = 10;

thread_local! {
    /// Where the last panic on this thread happened, kept by the hook.
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs a panic hook that, on vigil's loop threads, only records where
/// the panic happened (vigil logs it, rate-limited, with the request), and
/// on every other thread does what the previous hook did.
///
/// The `vigil` binary calls it first thing; a library user may, since the
/// panic hook is the process's to set.
pub fn quiet_handler_panics() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let on_loop = std::thread::current().name().is_some_and(|n| n.starts_with("vigil-loop"));
        if on_loop {
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            LAST_LOCATION.with(|last| *last.borrow_mut() = location);
        } else {
            previous(info);
        }
    }));
}

/// Takes the location the hook recorded for this thread's last panic.
pub(crate) fn take_location() -> Option<String> {
    LAST_LOCATION.with(|last| last.borrow_mut().take())
}

/// Which panic lines a loop writes: at most [`LINES_PER_SECOND`] in any
/// second, the others counted into the next line written.
#[derive(Debug, Default)]
pub(crate) struct PanicLog {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl PanicLog {
    /// A panic at `now`: `Some(n)` when a line is to be written, `n` being
    /// the panics left unwritten since the last line; `None` to stay quiet.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        let second = Duration::from_secs(1);
        if self.window_start.map_or(true, |start| now.duration_since(start) >= second) {
            self.window_start = Some(now);
            self.written = 0;
        }
        if self.written >= LINES_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_ten_lines_a_second_and_the_rest_counted() {
        let mut log = PanicLog::default();
        let t0 = Instant::now();
        let written = (0..100).filter(|_| log.admit(t0).is_some()).count();
        assert_eq!(written, 10);
        let later = t0 + Duration::from_millis(999);
        assert_eq!(log.admit(later), None, "still the same second");
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), Some(91), "the next line says how many");
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
