//! Is a loop stalled? A pure function of what the supervisor saw before,
//! the heartbeat word it reads now, and the time: no threads, no clocks.

use std::time::{Duration, Instant};

use crate::shared::Heartbeat;

/// The last heartbeat word seen for a loop and when it was first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) word: u64,
    pub(crate) since: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Waiting in `poll`: idle for as long as it likes.
    Idle,
    /// Busy and moving, or busy for less than either threshold.
    Working,
    /// Busy with the same word for at least the handoff threshold: the
    /// rest of its connections should not wait for it.
    HandoffDue { busy_for: Duration },
    /// Busy with the same word for at least the stall timeout.
    Stalled { stuck_for: Duration },
}

/// How long a loop may be busy without progress before each step; zero
/// turns a step off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub(crate) handoff_after: Duration,
    pub(crate) stall_timeout: Duration,
}

/// Judges a loop from its heartbeat `word` read at `now`.
///
/// A changed word means progress: the observation restarts. An unchanged
/// word with the busy bit set for the stall timeout or longer is a stall;
/// for the handoff threshold or longer, a handoff is due. Because the
/// observation starts when the supervisor first *sees* a word, each is
/// reported at most its threshold + 2 check intervals after the loop
/// stopped moving.
pub(crate) fn judge(
    previous: Option<Observation>,
    word: u64,
    now: Instant,
    thresholds: Thresholds,
) -> (Observation, Verdict) {
    let observation = match previous {
        Some(seen) if seen.word == word => seen,
        _ => Observation { word, since: now },
    };
    if word & Heartbeat::BUSY == 0 {
        return (observation, Verdict::Idle);
    }
    let busy_for = now.saturating_duration_since(observation.since);
    let reached = |threshold: Duration| !threshold.is_zero() && busy_for >= threshold;
    let verdict = if reached(thresholds.stall_timeout) {
        Verdict::Stalled { stuck_for: busy_for }
    } else if reached(thresholds.handoff_after) {
        Verdict::HandoffDue { busy_for }
    } else {
        Verdict::Working
    };
    (observation, verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Thresholds =
        Thresholds { handoff_after: Duration::ZERO, stall_timeout: Duration::from_secs(2) };
    const BOTH: Thresholds = Thresholds {
        handoff_after: Duration::from_millis(5),
        stall_timeout: Duration::from_secs(2),
    };
    const BUSY: u64 = Heartbeat::BUSY;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn first_sight_is_never_a_stall() {
        let t0 = Instant::now();
        let (seen, verdict) = judge(None, 7 << 1 | BUSY, t0, TIMEOUT);
        assert_eq!(verdict, Verdict::Working);
        assert_eq!(seen, Observation { word: 7 << 1 | BUSY, since: t0 });
    }

    #[test]
    fn busy_without_progress_for_the_timeout_is_stalled() {
        let t0 = Instant::now();
        let word = 3 << 1 | BUSY;
        let (seen, _) = judge(None, word, t0, TIMEOUT);
        let (seen, verdict) = judge(Some(seen), word, at(t0, 1999), TIMEOUT);
        assert_eq!(verdict, Verdict::Working);
        let (_, verdict) = judge(Some(seen), word, at(t0, 2000), TIMEOUT);
        assert_eq!(verdict, Verdict::Stalled { stuck_for: TIMEOUT.stall_timeout });
    }

    #[test]
    fn progress_restarts_the_clock() {
        let t0 = Instant::now();
        let (seen, _) = judge(None, 3 << 1 | BUSY, t0, TIMEOUT);
        let (seen, verdict) = judge(Some(seen), 4 << 1 | BUSY, at(t0, 1900), TIMEOUT);
        assert_eq!(verdict, Verdict::Working);
        assert_eq!(seen.since, at(t0, 1900));
        let (_, verdict) = judge(Some(seen), 4 << 1 | BUSY, at(t0, 3000), TIMEOUT);
        assert_eq!(verdict, Verdict::Working, "only 1.1 s since the last progress");
    }

    #[test]
    fn an_idle_loop_is_never_stalled() {
        let t0 = Instant::now();
        let (seen, _) = judge(None, 9 << 1, t0, TIMEOUT);
        let (_, verdict) = judge(Some(seen), 9 << 1, at(t0, 3_600_000), TIMEOUT);
        assert_eq!(verdict, Verdict::Idle);
    }

    #[test]
    fn a_busy_bit_flip_alone_is_progress() {
        let t0 = Instant::now();
        let (seen, _) = judge(None, 5 << 1, t0, TIMEOUT);
        let (seen, verdict) = judge(Some(seen), 5 << 1 | BUSY, at(t0, 5000), TIMEOUT);
        assert_eq!(verdict, Verdict::Working);
        assert_eq!(seen.since, at(t0, 5000));
    }

    #[test]
    fn zero_timeout_turns_detection_off() {
        let t0 = Instant::now();
        let off = Thresholds { handoff_after: Duration::ZERO, stall_timeout: Duration::ZERO };
        let (seen, _) = judge(None, 1 << 1 | BUSY, t0, off);
        let (_, verdict) = judge(Some(seen), 1 << 1 | BUSY, at(t0, 60_000), off);
        assert_eq!(verdict, Verdict::Working);
    }

    #[test]
    fn a_handoff_comes_before_a_stall() {
        let t0 = Instant::now();
        let word = 8 << 1 | BUSY;
        let (seen, _) = judge(None, word, t0, BOTH);
        let (seen, verdict) = judge(Some(seen), word, at(t0, 4), BOTH);
        assert_eq!(verdict, Verdict::Working);
        let (seen, verdict) = judge(Some(seen), word, at(t0, 5), BOTH);
        assert_eq!(verdict, Verdict::HandoffDue { busy_for: Duration::from_millis(5) });
        let (_, verdict) = judge(Some(seen), word, at(t0, 2000), BOTH);
        assert_eq!(verdict, Verdict::Stalled { stuck_for: Duration::from_secs(2) });
    }

    #[test]
    fn an_idle_loop_is_never_handed_off() {
        let t0 = Instant::now();
        let (seen, _) = judge(None, 8 << 1, t0, BOTH);
        let (_, verdict) = judge(Some(seen), 8 << 1, at(t0, 50), BOTH);
        assert_eq!(verdict, Verdict::Idle);
    }
}
