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

/// Sets (or adds) the condition of `type_`, keeping its transition time when the status is unchanged.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Whether the condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
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
        set(&mut c, "Attached", false, "Pending", "", Some(1), &at(10));
        set(
            &mut c,
            "Attached",
            false,
            "Pending",
            "still",
            Some(1),
            &at(20),
        );
        assert_eq!(c[0].last_transition_time, at(10));
        assert_eq!(c[0].message, "still");
        set(
            &mut c,
            "Attached",
            true,
            "Attached",
            "tp_btf",
            Some(2),
            &at(30),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, at(30));
        assert_eq!(c[0].observed_generation, Some(2));
        assert!(is_true(&c, "Attached") && !is_true(&c, "Failed"));
    }
}
