//! Small decisions of the supervisor, as plain functions: how long to wait
//! before respawning a loop that keeps dying, and when a threshold was
//! crossed.

use std::time::Duration;

/// A loop that lived less than this counts as having died at start.
const DIED_AT_START: Duration = Duration::from_secs(1);

/// Respawn delays for a slot whose loops keep dying at start.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// After a loop died having `lived` that long, with `deaths_in_a_row`
/// deaths at start before it: the new count and how long to wait before
/// respawning. The first death is respawned at once; a loop that dies
/// right after it starts again would otherwise be respawned in a tight
/// loop, so each further death at start doubles the wait, up to 2 s.
pub(super) fn respawn_delay(deaths_in_a_row: u32, lived: Duration) -> (u32, Duration) {
    let deaths = if lived < DIED_AT_START { deaths_in_a_row + 1 } else { 1 };
    let delay = if deaths <= 1 {
        Duration::ZERO
    } else {
        (BACKOFF_MIN * 2u32.saturating_pow(deaths - 2)).min(BACKOFF_MAX)
    };
    (deaths, delay)
}

/// How a reading relates to a threshold, given whether the last one was
/// over it: only `Up` is worth a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Crossing {
    /// Went over it.
    Up,
    /// Still over it: already said.
    StillOver,
    /// Went back under it (the next rise warns again).
    Down,
    /// Under it, as before.
    StillUnder,
}

impl Crossing {
    pub(super) fn of(was_over: bool, is_over: bool) -> Crossing {
        match (was_over, is_over) {
            (false, true) => Crossing::Up,
            (true, true) => Crossing::StillOver,
            (true, false) => Crossing::Down,
            (false, false) => Crossing::StillUnder,
        }
    }

    pub(super) fn is_over(self) -> bool {
        matches!(self, Crossing::Up | Crossing::StillOver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(5);
    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_death_respawns_at_once() {
        assert_eq!(respawn_delay(0, SHORT), (1, Duration::ZERO));
        assert_eq!(respawn_delay(7, LONG), (1, Duration::ZERO), "a long life resets the count");
    }

    #[test]
    fn deaths_at_start_back_off_exponentially_up_to_the_cap() {
        assert_eq!(respawn_delay(1, SHORT), (2, Duration::from_millis(10)));
        assert_eq!(respawn_delay(2, SHORT), (3, Duration::from_millis(20)));
        assert_eq!(respawn_delay(3, SHORT), (4, Duration::from_millis(40)));
        assert_eq!(respawn_delay(20, SHORT), (21, BACKOFF_MAX));
        assert_eq!(respawn_delay(u32::MAX - 1, SHORT).1, BACKOFF_MAX, "no overflow");
    }

    #[test]
    fn only_going_over_is_news() {
        let readings = [false, true, true, false, true];
        let mut over = false;
        let mut warnings = 0;
        for reading in readings {
            let crossing = Crossing::of(over, reading);
            warnings += usize::from(crossing == Crossing::Up);
            over = crossing.is_over();
        }
        assert_eq!(warnings, 2, "one per crossing, not one per reading over");
    }
}
