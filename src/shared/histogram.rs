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
    /// Counts a sample; any thread may.
    pub(crate) fn record(&self, value: Duration) {
        let (bucket, micros) = Self::place(value);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Counts a sample without read-modify-write instructions (a tenth of
    /// the cost on a loop's hot path): only for a histogram that one thread
    /// alone records into. A second writer would lose samples, never more.
    pub(crate) fn record_single_writer(&self, value: Duration) {
        let (bucket, micros) = Self::place(value);
        let count = &self.buckets[bucket];
        count.store(count.load(Relaxed) + 1, Relaxed);
        self.sum_micros.store(self.sum_micros.load(Relaxed).saturating_add(micros), Relaxed);
    }

    /// Adds every sample of `other` to this one.
    pub(crate) fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Relaxed), Relaxed);
        }
        self.sum_micros.fetch_add(other.sum_micros.load(Relaxed), Relaxed);
    }

    /// The bucket a sample falls in, and its microseconds.
    fn place(value: Duration) -> (usize, u64) {
        let seconds = value.as_secs_f64();
        let bucket = BOUNDS.iter().position(|&bound| seconds <= bound).unwrap_or(BOUNDS.len());
        (bucket, u64::try_from(value.as_micros()).unwrap_or(u64::MAX))
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
