//! Requests and latency per route pattern and status class, for
//! `/metrics`. The label set is bounded: patterns known at build time,
//! plus one `route=""` for requests no route matched.
//!
//! Counters are per slot (a loop and the loops that replace it share its
//! counters, so they never go backwards), summed when rendered: loops on
//! different cores do not write the same cache lines.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::shared::{lock, Histogram, HistogramSnapshot};

/// The status classes counted: `1xx` to `5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One slot's counters: a latency histogram (its count is the requests)
/// per route and status class.
#[derive(Debug)]
pub(crate) struct RouteCounters {
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

    /// Counts a finished exchange of route `index` (`None`: no route).
    /// Status 0 (no response was made) is not counted.
    pub(crate) fn record(&self, index: Option<usize>, status: u16, duration: Duration) {
        if status == 0 {
            return;
        }
        let routes = self.latency.len() / STATUS_CLASSES.len() - 1;
        let route = index.unwrap_or(routes).min(routes);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.latency[route * STATUS_CLASSES.len() + class].record(duration);
    }
}

/// Every slot's counters, and the patterns that label them.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    patterns: Vec<String>,
    slots: Mutex<Vec<Arc<RouteCounters>>>,
}

impl RouteMetrics {
    pub(crate) fn new(patterns: Vec<String>) -> RouteMetrics {
        RouteMetrics { patterns, slots: Mutex::new(Vec::new()) }
    }

    /// The counters of `slot`, made on first use.
    pub(crate) fn for_slot(&self, slot: usize) -> Arc<RouteCounters> {
        let mut slots = lock(&self.slots);
        while slots.len() <= slot {
            slots.push(Arc::new(RouteCounters::new(self.patterns.len())));
        }
        slots[slot].clone()
    }

    /// Appends `vigil_route_requests_total` and
    /// `vigil_route_duration_seconds`, one series per route and class seen.
    pub(crate) fn render(&self, out: &mut String) {
        let slots = lock(&self.slots).clone();
        let series = (self.patterns.len() + 1) * STATUS_CLASSES.len();
        let summed: Vec<HistogramSnapshot> = (0..series)
            .map(|index| {
                let mut total = HistogramSnapshot::default();
                for slot in &slots {
                    add(&mut total, &slot.latency[index].read());
                }
                total
            })
            .collect();
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
    fn exchanges_are_counted_by_route_and_class_over_every_slot() {
        let metrics = RouteMetrics::new(vec!["/users/{id}".into(), "/".into()]);
        let (a, b) = (metrics.for_slot(0), metrics.for_slot(1));
        a.record(Some(0), 200, Duration::from_millis(1));
        b.record(Some(0), 204, Duration::from_millis(3));
        b.record(Some(0), 503, Duration::from_millis(3));
        a.record(None, 404, Duration::from_millis(1));
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
        assert!(Arc::ptr_eq(&a, &metrics.for_slot(0)), "a slot's replacement loops share it");
    }
}
