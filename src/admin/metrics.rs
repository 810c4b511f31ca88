//! The Prometheus page (text exposition format 0.0.4).
//!
//! Per-slot counters come from [`SlotCounts::metrics`], where each is
//! named once; the gauges are listed here.

use std::fmt::Write;

use crate::control::{LoopSnapshot, Snapshot};
use crate::shared::LoopState;

/// One metric family: its header once, then every sample.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

#[derive(Default)]
struct Page {
    families: Vec<Family>,
}

impl Page {
    /// Adds a sample with `labels` (already formatted, may be empty) to
    /// family `name`, which is created at its first sample: samples of a
    /// family must be contiguous on the page.
    fn sample(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        labels: String,
        value: f64,
    ) {
        let index = match self.families.iter().position(|f| f.name == name) {
            Some(index) => index,
            None => {
                self.families.push(Family { name, kind, help, samples: Vec::new() });
                self.families.len() - 1
            }
        };
        self.families[index].samples.push((labels, value));
    }

    fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        for family in &self.families {
            let Family { name, kind, help, .. } = family;
            let _ = writeln!(out, "# HELP vigil_{name} {help}\n# TYPE vigil_{name} {kind}");
            // A histogram's samples are its buckets.
            let suffix = if *kind == "histogram" { "_bucket" } else { "" };
            for (labels, value) in &family.samples {
                let braces =
                    if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
                let _ = writeln!(out, "vigil_{name}{suffix}{braces} {value}");
            }
        }
        out
    }

    /// The page, with the `_sum` and `_count` of histogram `name` (the last
    /// family) after its buckets.
    fn render_histogram_totals(&self, name: &str, sum: f64, count: u64) -> String {
        let mut out = self.render();
        let _ = writeln!(out, "vigil_{name}_sum {sum}\nvigil_{name}_count {count}");
        out
    }
}

type LoopGauge = (&'static str, &'static str, fn(&LoopSnapshot) -> f64);

/// Gauges of each slot's current loop.
const LOOP_GAUGES: [LoopGauge; 5] = [
    ("open_connections", "Connections open now, per loop.", |l| l.open_connections as f64),
    ("loop_generation", "Generation of the current loop of each slot.", |l| {
        f64::from(l.generation)
    }),
    ("arena_allocated_bytes", "Bytes allocated in the loop's jemalloc arena.", |l| {
        l.memory.as_ref().map_or(f64::NAN, |m| m.allocated as f64)
    }),
    ("arena_active_bytes", "Bytes in active pages of the loop's arena.", |l| {
        l.memory.as_ref().map_or(f64::NAN, |m| m.active as f64)
    }),
    ("arena_resident_bytes", "Resident bytes of the loop's arena.", |l| {
        l.memory.as_ref().map_or(f64::NAN, |m| m.resident as f64)
    }),
];

const STATES: [(LoopState, &str); 6] = [
    (LoopState::Starting, "starting"),
    (LoopState::Serving, "serving"),
    (LoopState::Draining, "draining"),
    (LoopState::Abandoned, "abandoned"),
    (LoopState::HandedOff, "handed_off"),
    (LoopState::Exited, "exited"),
];

type ProcessMetric = (&'static str, &'static str, &'static str, fn(&Snapshot) -> f64);

/// Metrics of the whole process.
const PROCESS: [ProcessMetric; 16] = [
    ("handed_off_threads", "gauge", "Handed-off threads still finishing their work.", |s| {
        s.handed_off_alive as f64
    }),
    ("abandoned_threads", "gauge", "Abandoned loop threads still alive.", |s| {
        s.abandoned_alive as f64
    }),
    (
        "abandoned_threads_max",
        "gauge",
        "Abandoned threads allowed before the process exits.",
        |s| s.max_abandoned as f64,
    ),
    (
        "abandoned_threads_reclaimed_total",
        "counter",
        "Abandoned threads whose handler returned and that exited.",
        |s| s.reclaimed as f64,
    ),
    (
        "restart_intensity_exceeded_total",
        "counter",
        "Times replacements exceeded the restart intensity limit.",
        |s| s.restart_intensity_exceeded as f64,
    ),
    ("memory_allocated_bytes", "gauge", "Bytes allocated, whole process (jemalloc).", |s| {
        s.memory.unwrap_or_default().allocated as f64
    }),
    ("memory_active_bytes", "gauge", "Bytes in active pages, whole process (jemalloc).", |s| {
        s.memory.unwrap_or_default().active as f64
    }),
    ("memory_resident_bytes", "gauge", "Resident bytes mapped by jemalloc.", |s| {
        s.memory.unwrap_or_default().resident as f64
    }),
    ("process_resident_bytes", "gauge", "Resident set size of the process.", |s| {
        s.memory.unwrap_or_default().rss as f64
    }),
    ("offload_queued", "gauge", "Offloaded jobs waiting for a pool thread.", |s| {
        s.offload.queued as f64
    }),
    ("offload_running", "gauge", "Offloaded jobs running.", |s| s.offload.running as f64),
    ("offload_completed_total", "counter", "Offloaded jobs finished.", |s| {
        s.offload.completed as f64
    }),
    ("offload_rejected_total", "counter", "Offloaded jobs refused with 503 (queue full).", |s| {
        s.offload.rejected as f64
    }),
    ("offload_panics_total", "counter", "Offloaded jobs that panicked (answered 500).", |s| {
        s.offload.panicked as f64
    }),
    ("ready", "gauge", "1 while the server accepts traffic.", |s| f64::from(u8::from(s.ready))),
    ("uptime_seconds", "gauge", "Seconds since the server started.", |s| s.uptime_seconds),
];

/// Renders `snapshot` as a Prometheus page.
pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut page = Page::default();
    for l in &snapshot.loops {
        let slot = format!("loop=\"{}\"", l.slot);
        for counter in l.counters.metrics() {
            let labels = match counter.label {
                Some((key, value)) => format!("{slot},{key}=\"{value}\""),
                None => slot.clone(),
            };
            page.sample(counter.name, "counter", counter.help, labels, counter.value as f64);
        }
        for (name, help, value) in LOOP_GAUGES {
            page.sample(name, "gauge", help, slot.clone(), value(l));
        }
        for (state, name) in STATES {
            let help = "1 for the state each slot's current loop is in.";
            let labels = format!("{slot},state=\"{name}\"");
            page.sample("loop_state", "gauge", help, labels, f64::from(u8::from(l.state == state)));
        }
    }
    for (name, kind, help, value) in PROCESS {
        page.sample(name, kind, help, String::new(), value(snapshot));
    }
    let durations = &snapshot.handoff_durations;
    let (name, help) =
        ("handoff_request_duration_seconds", "How long the requests that caused a handoff took.");
    for (bound, count) in &durations.buckets {
        let le = if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() };
        page.sample(name, "histogram", help, format!("le=\"{le}\""), *count as f64);
    }
    page.render_histogram_totals(name, durations.sum_seconds, durations.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_contiguous_with_one_header_each() {
        let mut page = Page::default();
        page.sample("a_total", "counter", "A.", "loop=\"0\"".into(), 1.0);
        page.sample("b", "gauge", "B.", String::new(), 2.0);
        page.sample("a_total", "counter", "A.", "loop=\"1\"".into(), 3.0);
        assert_eq!(
            page.render(),
            "# HELP vigil_a_total A.\n# TYPE vigil_a_total counter\n\
             vigil_a_total{loop=\"0\"} 1\nvigil_a_total{loop=\"1\"} 3\n\
             # HELP vigil_b B.\n# TYPE vigil_b gauge\nvigil_b 2\n"
        );
    }
}
