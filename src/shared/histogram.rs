//! A fixed-bucket histogram of durations, cheap to record from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the buckets, in seconds (Prometheus `le`): from the
/// handoff threshold's range (milliseconds) to the stall timeout's (seconds).
pub(crate) const BOUNDS: [f64; 12] =
    [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Counts per bucket (not cumulative), the sum and the count.
///
/// # Atomic ordering
/// `Relaxed`: a reader may see a sample's bucket before its sum; the page
/// it renders is off by one sample for one scrape, which is harmless.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// One more than `BOUNDS`: the last counts what is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A [`Histogram`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, samples at or below it)`, cumulative, as
    /// Prometheus has it; the last bound is infinity.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every sample, in seconds.
    pub sum_seconds: f64,
    /// Number of samples.
    pub count: u64,
}

impl Histogram {
    pub(crate) fn record(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn read(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            buckets.push((BOUNDS.get(index).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: cumulative,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_millis(2)); // on a bound: that bucket
        histogram.record(Duration::from_millis(20));
        histogram.record(Duration::from_secs(60));
        let read = histogram.read();
        assert_eq!(read.count, 3);
        assert_eq!(read.buckets[0], (0.002, 1));
        assert_eq!(read.buckets[2], (0.01, 1), "cumulative: nothing new up to 10 ms");
        assert_eq!(read.buckets[3], (0.025, 2));
        assert_eq!(read.buckets[BOUNDS.len() - 1], (10.0, 2));
        assert_eq!(read.buckets[BOUNDS.len()], (f64::INFINITY, 3));
        assert!((read.sum_seconds - 60.022).abs() < 1e-9);
    }
}
