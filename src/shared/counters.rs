//! The counters of a slot, each named once.
//!
//! `slot_counters!` turns one list into the atomics the loops and the
//! supervisor bump ([`SlotCounters`]), the plain copy a snapshot carries
//! ([`SlotCounts`]) and the metric rows the admin plane renders, so adding
//! a counter is one line here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

macro_rules! slot_counters {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident => $metric:literal $(($label:literal = $value:literal, $family:ident))?;
    )+) => {
        /// Counters of one slot. They outlive the loops of the slot, so
        /// replacing a loop never makes a counter go down.
        ///
        /// # Atomic ordering
        /// `Relaxed` throughout: each is a statistic read only for display.
        #[derive(Debug, Default)]
        // One slot's counters per cache line pair: loops bump their own
        // slot's counters and must not share a line with another slot's.
        #[repr(align(128))]
        pub(crate) struct SlotCounters {
            $( $(#[doc = $doc])+ pub(crate) $field: AtomicU64, )+
        }

        /// The counters of one slot (or, summed, of all) at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct SlotCounts {
            $( $(#[doc = $doc])+ pub $field: u64, )+
        }

        impl SlotCounters {
            /// A copy of every counter.
            pub(crate) fn read(&self) -> SlotCounts {
                SlotCounts { $( $field: self.$field.load(Relaxed), )+ }
            }
        }

        impl SlotCounts {
            /// Every counter as a metric row, in declaration order.
            pub(crate) fn metrics(&self) -> Vec<CounterMetric> {
                vec![$( CounterMetric {
                    name: $metric,
                    help: None $( .or(Some($family)) )?.unwrap_or(concat!($($doc),+).trim_start()),
                    label: None $( .or(Some(($label, $value))) )?,
                    value: self.$field,
                }, )+]
            }

            /// Adds `other` to these counts.
            pub(crate) fn add(&mut self, other: &SlotCounts) {
                $( self.$field += other.$field; )+
            }
        }
    };
}

/// The help line of the metric the three kinds of replacement share.
const REPLACEMENTS: &str = "Loops replaced, per slot and reason.";

slot_counters! {
    /// Requests answered.
    requests => "requests_total";
    /// Connections accepted (or adopted from another loop of the slot).
    accepted => "accepted_connections_total";
    /// Handler panics, each answered 500.
    handler_panics => "handler_panics_total";
    /// Requests refused before the service ran (4xx/5xx from vigil itself).
    rejected => "rejected_requests_total";
    /// Requests handed to the offload pool, including refused ones.
    offloaded => "offloaded_requests_total";
    /// Loops handed off: busy on one request past the handoff threshold, so
    /// a fresh loop took their core while they finished it.
    handoffs => "handoffs_total";
    /// Requests completed by handed-off threads (the slow one included).
    requests_after_handoff => "requests_after_handoff_total";
    /// Loops replaced because they stalled.
    replaced_stalled => "replacements_total" ("reason" = "stalled", REPLACEMENTS);
    /// Loops replaced because their thread died.
    replaced_died => "replacements_total" ("reason" = "died", REPLACEMENTS);
    /// Loops recycled gracefully (on request, SIGHUP or the memory limit).
    recycled => "replacements_total" ("reason" = "recycled", REPLACEMENTS);
}

/// One counter as the admin plane renders it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CounterMetric {
    /// Metric name without the `vigil_` prefix; counters that share one
    /// are told apart by `label`.
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    /// An extra label that tells apart counters sharing one metric name.
    pub(crate) label: Option<(&'static str, &'static str)>,
    pub(crate) value: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_add_cover_every_counter() {
        let counters = SlotCounters::default();
        counters.requests.fetch_add(3, Relaxed);
        counters.recycled.fetch_add(1, Relaxed);
        let mut total = counters.read();
        total.add(&counters.read());
        assert_eq!(total.requests, 6);
        assert_eq!(total.recycled, 2);
        let rows = total.metrics();
        let recycled = rows.iter().find(|m| m.label == Some(("reason", "recycled"))).unwrap();
        assert_eq!((recycled.name, recycled.value), ("replacements_total", 2));
        let requests = rows.iter().find(|m| m.name == "requests_total").unwrap();
        assert_eq!(
            (requests.help, requests.label, requests.value),
            ("Requests answered.", None, 6)
        );
    }
}
