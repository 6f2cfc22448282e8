//! Kubernetes-style conditions: one entry per type, `lastTransitionTime` moves only when the status changes.
//! Shared by the operator (TraceJob) and the node agent (ProbeSession).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types Sonde sets.
pub mod types {
    pub const SCHEDULED: &str = "Scheduled";
    pub const ATTACHED: &str = "Attached";
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    pub const THRESHOLD_BREACHED: &str = "ThresholdBreached";
    pub const OVER_BUDGET: &str = "OverBudget";
    /// Events were dropped because user space could not keep up (reason `UserSpaceBehind`).
    pub const EVENTS_DROPPED: &str = "EventsDropped";
    /// Every result file is in the object store (reasons `Uploaded`, `UploadedLate`; False: `UploadPending`,
    /// `ResultsIncomplete`).
    pub const RESULTS_COMPLETE: &str = "ResultsComplete";
}

/// `Complete` reason of a session whose node was cordoned (`kubectl cordon`/`drain`) before its deadline: the
/// agent stopped it early and reported what it had; the job's roll-up carries it.
pub const NODE_DRAINED: &str = "NodeDrained";

/// Sets conditions on one object's status, as observed at one generation and time: one entry per type, its
/// `lastTransitionTime` moved only when its status changes.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    generation: Option<i64>,
    now: Time,
}

impl<'a> Conditions<'a> {
    pub fn new(list: &'a mut Vec<Condition>, generation: Option<i64>, now: Time) -> Self {
        Conditions {
            list,
            generation,
            now,
        }
    }

    /// Sets (or adds) the condition of `type_`.
    pub fn set(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> &mut Self {
        let status = if status { "True" } else { "False" }.to_string();
        let message = message.into();
        match self.list.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = self.now.clone();
                }
                c.status = status;
                c.reason = reason.into();
                c.message = message;
                c.observed_generation = self.generation;
            }
            None => self.list.push(Condition {
                type_: type_.into(),
                status,
                reason: reason.into(),
                message,
                observed_generation: self.generation,
                last_transition_time: self.now.clone(),
            }),
        }
        self
    }

    /// Whether the condition of `type_` is True.
    pub fn is_true(&self, type_: &str) -> bool {
        is_true(self.list, type_)
    }
}

/// Whether the condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The condition of `type_` when it is False: why something is not so (its reason and message), for an Event
/// when that reason first appears.
pub fn false_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "False")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        Conditions::new(&mut c, Some(1), at(10)).set("Attached", false, "Pending", "");
        Conditions::new(&mut c, Some(1), at(20)).set("Attached", false, "Pending", "still");
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].message, "still");
        Conditions::new(&mut c, Some(2), at(30)).set("Attached", true, "Attached", "tp_btf");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, at(30));
        assert_eq!(c[0].observed_generation, Some(2));
        assert!(is_true(&c, "Attached") && !is_true(&c, "Failed"));
        assert!(false_condition(&c, "Attached").is_none());
        Conditions::new(&mut c, Some(2), at(40)).set("Attached", false, "NoMatchingPods", "none");
        assert_eq!(
            false_condition(&c, "Attached").map(|c| c.reason.as_str()),
            Some("NoMatchingPods")
        );
        assert!(false_condition(&c, "Failed").is_none());
    }
}
