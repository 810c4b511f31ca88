//! Requests and latency per route pattern and status class, for
//! `/metrics`. The label set is bounded: patterns known at build time,
//! plus one `route=""` for requests no route matched.
//!
//! Each loop's instance of an app has counters of its own, recorded
//! without read-modify-write instructions (only that loop's thread writes
//! them: inline, or from an `on_finish` hook, which a loop runs on its own
//! thread). When the last user of an instance's counters is gone they are
//! folded into the retired totals, so a series never goes backwards when a
//! loop is replaced, and an abandoned loop's counts stay in the sums.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shared::{lock, Histogram, HistogramSnapshot};

/// The status classes counted: `1xx` to `5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A latency histogram (its count is the requests) per route and status
/// class.
#[derive(Debug)]
struct RouteCounters {
    /// Index `route * 5 + class`; the last route is "no route matched".
    latency: Box<[Histogram]>,
}

impl RouteCounters {
    fn new(routes: usize) -> RouteCounters {
        RouteCounters {
            latency: (0..(routes + 1) * STATUS_CLASSES.len())
                .map(|_| Histogram::default())
                .collect(),
        }
    }
}

/// One loop's counters, recorded on that loop's thread only.
#[derive(Debug)]
pub(crate) struct Recorder {
    counters: Arc<RouteCounters>,
    metrics: Arc<RouteMetrics>,
}

impl Recorder {
    /// Counts a finished exchange of route `index` (`None`: no route).
    /// Status 0 (no response was made) is not counted.
    pub(crate) fn record(&self, index: Option<usize>, status: u16, duration: Duration) {
        if status == 0 {
            return;
        }
        let latency = &self.counters.latency;
        let routes = latency.len() / STATUS_CLASSES.len() - 1;
        let route = index.unwrap_or(routes).min(routes);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        latency[route * STATUS_CLASSES.len() + class].record_single_writer(duration);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Under the lock that rendering takes: a page sees these counts
        // either live or retired, never neither.
        let mut all = lock(&self.metrics.counters);
        for (retired, live) in all.retired.latency.iter().zip(self.counters.latency.iter()) {
            retired.absorb(live);
        }
        all.live.retain(|counters| !Arc::ptr_eq(counters, &self.counters));
    }
}

/// Every loop's counters, and the patterns that label them.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    patterns: Vec<String>,
    counters: Mutex<AllCounters>,
}

#[derive(Debug)]
struct AllCounters {
    live: Vec<Arc<RouteCounters>>,
    /// What the loops that are gone counted.
    retired: RouteCounters,
}

impl RouteMetrics {
    pub(crate) fn new(patterns: Vec<String>) -> Arc<RouteMetrics> {
        let retired = RouteCounters::new(patterns.len());
        Arc::new(RouteMetrics {
            patterns,
            counters: Mutex::new(AllCounters { live: Vec::new(), retired }),
        })
    }

    /// Counters for a new loop's instance.
    pub(crate) fn recorder(self: &Arc<Self>) -> Recorder {
        let counters = Arc::new(RouteCounters::new(self.patterns.len()));
        lock(&self.counters).live.push(counters.clone());
        Recorder { counters, metrics: self.clone() }
    }

    /// Appends `vigil_route_requests_total` and
    /// `vigil_route_duration_seconds`, one series per route and class seen.
    pub(crate) fn render(&self, out: &mut String) {
        let all = lock(&self.counters);
        let series = (self.patterns.len() + 1) * STATUS_CLASSES.len();
        let summed: Vec<HistogramSnapshot> = (0..series)
            .map(|index| {
                let mut total = all.retired.latency[index].read();
                for live in &all.live {
                    add(&mut total, &live.latency[index].read());
                }
                total
            })
            .collect();
        drop(all);
        let labels = |index: usize| {
            let route = self.patterns.get(index / STATUS_CLASSES.len()).map_or("", String::as_str);
            format!(
                "route=\"{}\",class=\"{}\"",
                escape_label(route),
                STATUS_CLASSES[index % STATUS_CLASSES.len()]
            )
        };
        let seen = || summed.iter().enumerate().filter(|(_, h)| h.count > 0);
        out.push_str("# HELP vigil_route_requests_total Requests answered, by route pattern and status class (route=\"\": no route matched).\n# TYPE vigil_route_requests_total counter\n");
        for (index, histogram) in seen() {
            let _ = writeln!(
                out,
                "vigil_route_requests_total{{{}}} {}",
                labels(index),
                histogram.count
            );
        }
        out.push_str("# HELP vigil_route_duration_seconds From the loop reading the request to the handler's return (offloaded work: to its response's last byte written), by route pattern and status class.\n# TYPE vigil_route_duration_seconds histogram\n");
        for (index, histogram) in seen() {
            let labels = labels(index);
            for (bound, count) in &histogram.buckets {
                let le = if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() };
                let _ = writeln!(
                    out,
                    "vigil_route_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "vigil_route_duration_seconds_sum{{{labels}}} {}",
                histogram.sum_seconds
            );
            let _ =
                writeln!(out, "vigil_route_duration_seconds_count{{{labels}}} {}", histogram.count);
        }
    }
}

fn add(total: &mut HistogramSnapshot, more: &HistogramSnapshot) {
    if total.buckets.is_empty() {
        total.buckets = more.buckets.iter().map(|&(bound, _)| (bound, 0)).collect();
    }
    for (sum, (_, count)) in total.buckets.iter_mut().zip(&more.buckets) {
        sum.1 += count;
    }
    total.sum_seconds += more.sum_seconds;
    total.count += more.count;
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
pub(crate) fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_are_counted_by_route_and_class_over_every_loop() {
        let metrics = RouteMetrics::new(vec!["/users/{id}".into(), "/".into()]);
        let (a, b) = (metrics.recorder(), metrics.recorder());
        a.record(Some(0), 200, Duration::from_millis(1));
        b.record(Some(0), 204, Duration::from_millis(3));
        b.record(Some(0), 503, Duration::from_millis(3));
        a.record(None, 404, Duration::from_millis(1));
        drop(a); // a loop replaced: what it counted stays
        let mut page = String::new();
        metrics.render(&mut page);
        assert!(
            page.contains("vigil_route_requests_total{route=\"/users/{id}\",class=\"2xx\"} 2\n"),
            "{page}"
        );
        assert!(
            page.contains("vigil_route_requests_total{route=\"/users/{id}\",class=\"5xx\"} 1\n")
        );
        assert!(page.contains("vigil_route_requests_total{route=\"\",class=\"4xx\"} 1\n"));
        assert!(!page.contains("route=\"/\""), "no series for a route never seen");
        assert!(page.contains(
            "vigil_route_duration_seconds_bucket{route=\"/users/{id}\",class=\"2xx\",le=\"0.002\"} 1\n"
        ));
        assert_eq!(lock(&metrics.counters).live.len(), 1, "a's counters were folded in");
    }
}
