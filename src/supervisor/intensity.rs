//! Restart intensity, as in OTP: more than `limit` replacements within
//! `window` means something is wrong beyond one bad request.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RestartIntensity {
    limit: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        RestartIntensity { limit, window, recent: VecDeque::new() }
    }

    /// Records a replacement at `now`; true when it takes the count within
    /// the window past the limit.
    pub(crate) fn record(&mut self, now: Instant) -> bool {
        while self.recent.front().is_some_and(|&t| now.saturating_duration_since(t) > self.window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() > self.limit as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceeds_only_within_the_window() {
        let t0 = Instant::now();
        let mut intensity = RestartIntensity::new(2, Duration::from_secs(10));
        assert!(!intensity.record(t0));
        assert!(!intensity.record(t0 + Duration::from_secs(1)));
        assert!(intensity.record(t0 + Duration::from_secs(2)), "third within 10 s");
        assert!(!intensity.record(t0 + Duration::from_secs(30)), "old ones expired");
    }
}
