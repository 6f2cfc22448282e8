//! What a trace found and counted: the summary that fits in status, and event counts.

use serde::{Deserialize, Serialize};

/// One row of a summary: a key (such as `ping/1234 <- isc-socket/77`) and its count.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    pub key: String,
    pub count: u64,
    /// Count per second over the trace's duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    /// The largest value seen for this key, in the probe's unit (such as latency in ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A headline figure such as `p99 xmit->netif_receive ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// A small answer that fits in status: top rows and headline figures. Full results are in `results`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// What a row's key means, e.g. `wakee <- waker`.
    #[serde(default)]
    pub key_meaning: String,
    #[serde(default)]
    pub rows: Vec<SummaryRow>,
    #[serde(default)]
    pub figures: Vec<Figure>,
}

/// Event counts of a trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Events that reached the agent.
    pub captured: u64,
    /// Events that never reached the results: the ring buffer was full when the kernel submitted them (counted
    /// in the kernel), or they were still unread when the final drain's time bound ran out. Aggregates kept in
    /// kernel maps (pair counts, histograms) count them all the same.
    pub dropped: u64,
    /// Of `dropped`, those still unread in the ring buffer at stop.
    #[serde(default)]
    pub dropped_unread_at_stop: u64,
    /// `dropped` as a percentage of the events the kernel produced (`captured + dropped`); absent with no drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_percent: Option<f64>,
    /// Threshold breaches.
    pub breaches: u64,
    /// Events that reached the agent but were not kept in the results, by reason: `SpoolFull` (the node's spool
    /// of results waiting for the store reached its cap), `MaxEventBytes` (the node's limit per trace),
    /// `MaxEvents` (`output.maxEvents`), `WriteFailed` (writing the events file failed, from then on).
    /// Aggregates still count them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub not_kept: std::collections::BTreeMap<String, u64>,
}

impl std::ops::AddAssign<&Counts> for Counts {
    fn add_assign(&mut self, other: &Counts) {
        // Saturating: the operator sums counts agents wrote in status, which a hostile status could set to
        // anything; an overflow must not panic the process that serves every tenant.
        self.captured = self.captured.saturating_add(other.captured);
        self.dropped = self.dropped.saturating_add(other.dropped);
        self.dropped_unread_at_stop = self
            .dropped_unread_at_stop
            .saturating_add(other.dropped_unread_at_stop);
        self.breaches = self.breaches.saturating_add(other.breaches);
        for (reason, n) in &other.not_kept {
            let sum = self.not_kept.entry(reason.clone()).or_default();
            *sum = sum.saturating_add(*n);
        }
        self.dropped_percent = self.drop_rate();
    }
}

impl Counts {
    /// Counts of one trace; `dropped_ring_full` is the kernel's count, `dropped_unread_at_stop` the final drain's.
    pub fn new(
        captured: u64,
        dropped_ring_full: u64,
        dropped_unread_at_stop: u64,
        breaches: u64,
    ) -> Counts {
        let mut c = Counts {
            captured,
            dropped: dropped_ring_full.saturating_add(dropped_unread_at_stop),
            dropped_unread_at_stop,
            dropped_percent: None,
            breaches,
            not_kept: Default::default(),
        };
        c.dropped_percent = c.drop_rate();
        c
    }

    /// `part` as a percentage of `whole` (0 for an empty whole), rounded to 0.01.
    pub fn percent_of(part: u64, whole: u64) -> f64 {
        if whole == 0 {
            return 0.0;
        }
        (part as f64 / whole as f64 * 10_000.0).round() / 100.0
    }

    fn drop_rate(&self) -> Option<f64> {
        (self.dropped > 0)
            .then(|| Self::percent_of(self.dropped, self.captured.saturating_add(self.dropped)))
    }

    /// What was counted since `earlier` (counts of the same trace, taken before): a window's own counts.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut c = Counts {
            captured: self.captured.saturating_sub(earlier.captured),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            dropped_unread_at_stop: self
                .dropped_unread_at_stop
                .saturating_sub(earlier.dropped_unread_at_stop),
            dropped_percent: None,
            breaches: self.breaches.saturating_sub(earlier.breaches),
            not_kept: self
                .not_kept
                .iter()
                .map(|(k, n)| {
                    (
                        k.clone(),
                        n.saturating_sub(earlier.not_kept.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        c.dropped_percent = c.drop_rate();
        c
    }

    /// One sentence for a condition or a message, when events were dropped.
    pub fn drop_message(&self) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "{} of {} events ({:.2}%) dropped: {} with the ring buffer full, {} unread at stop; user space \
                 could not keep up, so event lists miss them, while aggregates kept in the kernel (pair counts, \
                 histograms) still count them",
                self.dropped,
                self.captured.saturating_add(self.dropped),
                self.dropped_percent.unwrap_or_default(),
                self.dropped.saturating_sub(self.dropped_unread_at_stop),
                self.dropped_unread_at_stop
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_came_since_its_start() {
        let mut before = Counts::new(100, 5, 0, 2);
        before.not_kept.insert("MaxEvents".into(), 10);
        let mut now = Counts::new(250, 5, 3, 7);
        now.not_kept.insert("MaxEvents".into(), 10);
        now.not_kept.insert("SpoolFull".into(), 4);
        let w = now.since(&before);
        assert_eq!(
            (w.captured, w.dropped, w.dropped_unread_at_stop, w.breaches),
            (150, 3, 3, 5)
        );
        assert_eq!(w.not_kept, [("SpoolFull".to_string(), 4)].into());
        assert_eq!(w.dropped_percent, Some(Counts::percent_of(3, 153)));
        assert_eq!(now.since(&now), Counts::default());
    }
}
