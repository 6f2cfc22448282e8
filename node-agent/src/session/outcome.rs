//! How a session ended, and what its status says about it: a pure decision from the stop, the problems met on
//! the way out and the time left before the deadline.

use std::time::Duration;

use sonde_crds::Phase;
use sonde_crds::conditions::NODE_DRAINED;

/// Why the trace loop ended.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Stop {
    Deadline,
    Threshold,
    OverBudget(String),
    Deleted,
    /// The node was cordoned (`kubectl cordon`/`drain`): a one-shot trace stops and reports before the node is
    /// taken down, rather than being cut off with it.
    Drained(String),
}

impl Stop {
    /// `stopped_by` in `summary.json`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Stop::Deadline => "deadline",
            Stop::Threshold => "threshold",
            Stop::OverBudget(_) => "budget",
            Stop::Deleted => "deleted",
            Stop::Drained(_) => "drained",
        }
    }
}

/// The session's final phase, and the reason and message of its `Complete` (and `Failed`) condition.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Outcome {
    pub phase: Phase,
    pub reason: &'static str,
    pub message: String,
}

/// A budget overrun fails the session whatever else happened; results that could not be
/// written or kept fail it next (the trace ran, but what it found is not all there); otherwise it succeeded,
/// and the reason says what ended it. `left` is the time there was still to go before the deadline.
pub(super) fn outcome(stop: &Stop, problems: &[String], left: Duration) -> Outcome {
    let (phase, reason, message) = match stop {
        Stop::OverBudget(m) => (Phase::Failed, "OverBudget", m.clone()),
        _ if !problems.is_empty() => (Phase::Failed, "ResultsLost", problems.join("; ")),
        Stop::Threshold => (
            Phase::Succeeded,
            "ThresholdStop",
            "stopped by a threshold with action Stop".into(),
        ),
        Stop::Drained(why) => (
            Phase::Succeeded,
            NODE_DRAINED,
            format!(
                "{why}: stopped {}s before the deadline; the results cover the trace until then",
                left.as_secs()
            ),
        ),
        Stop::Deadline | Stop::Deleted => (
            Phase::Succeeded,
            "DeadlineReached",
            "traced until the deadline".into(),
        ),
    };
    Outcome {
        phase,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stop_gives_its_phase_and_reason() {
        let none: &[String] = &[];
        let cases = [
            (Stop::Deadline, Phase::Succeeded, "DeadlineReached"),
            (Stop::Threshold, Phase::Succeeded, "ThresholdStop"),
            (
                Stop::OverBudget("12% > 10%".into()),
                Phase::Failed,
                "OverBudget",
            ),
            (
                Stop::Drained("node cordoned".into()),
                Phase::Succeeded,
                NODE_DRAINED,
            ),
        ];
        for (stop, phase, reason) in cases {
            let o = outcome(&stop, none, Duration::from_secs(42));
            assert_eq!((o.phase, o.reason), (phase, reason), "{stop:?}");
        }
        let drained = outcome(
            &Stop::Drained("node cordoned".into()),
            none,
            Duration::from_secs(42),
        );
        assert!(
            drained
                .message
                .starts_with("node cordoned: stopped 42s before"),
            "{}",
            drained.message
        );
        assert_eq!(
            outcome(&Stop::OverBudget("12% > 10%".into()), none, Duration::ZERO).message,
            "12% > 10%"
        );
    }

    #[test]
    fn lost_results_fail_a_trace_that_ended_well_but_not_one_that_failed() {
        let problems = vec![
            "uploading summary.json: refused".to_string(),
            "writing events: disk full".into(),
        ];
        let o = outcome(&Stop::Deadline, &problems, Duration::ZERO);
        assert_eq!((o.phase, o.reason), (Phase::Failed, "ResultsLost"));
        assert_eq!(
            o.message,
            "uploading summary.json: refused; writing events: disk full"
        );
        let o = outcome(&Stop::Threshold, &problems, Duration::ZERO);
        assert_eq!(o.reason, "ResultsLost");
        // The first cause stays the reason.
        let o = outcome(&Stop::OverBudget("over".into()), &problems, Duration::ZERO);
        assert_eq!(o.reason, "OverBudget");
    }

    #[test]
    fn labels_are_the_summary_vocabulary() {
        let labels: Vec<_> = [
            Stop::Deadline,
            Stop::Threshold,
            Stop::OverBudget(String::new()),
            Stop::Deleted,
            Stop::Drained(String::new()),
        ]
        .iter()
        .map(Stop::label)
        .collect();
        assert_eq!(
            labels,
            ["deadline", "threshold", "budget", "deleted", "drained"]
        );
    }
}
