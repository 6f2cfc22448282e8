//! From per-node ProbeSession statuses to one TraceJob status. Pure: the reconciler reads, this decides.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sonde_crds::conditions::{self, Conditions};
use sonde_crds::{
    Counts, NodeCounts, NodeResult, Phase, ProbePolicyStatus, ProbeSession, ProbeSessionStatus,
    Summary, SummaryRow, TraceJobStatus, Upload, UploadState,
};

use crate::conditions::{Reason, types};

/// A session whose agent has not reported for this long after the deadline is counted as failed.
pub const REPORT_GRACE: SignedDuration = SignedDuration::from_secs(30);

/// How long after the deadline an agent that is still alive (its heartbeat fresh) may take to publish a
/// session's results (detach, last chunks, result files against a slow or unreachable store) before the
/// session counts as failed all the same.
pub const PUBLISH_LIMIT: SignedDuration = SignedDuration::from_secs(600);

/// Whether a session that has not finished is overdue at `now`: past the deadline by [`REPORT_GRACE`] with its
/// agent gone (its node's Lease, which lasts until `alive_until`, expired, and no status written within the
/// grace either), or by [`PUBLISH_LIMIT`] whatever its agent says.
pub fn overdue(
    status: &ProbeSessionStatus,
    alive_until: Option<Timestamp>,
    deadline: Timestamp,
    now: Timestamp,
) -> bool {
    let alive = alive_until.is_some_and(|until| until >= now)
        || status
            .heartbeat
            .as_ref()
            .is_some_and(|beat| later(beat.0, REPORT_GRACE) >= now);
    now > later(deadline, PUBLISH_LIMIT) || (now > later(deadline, REPORT_GRACE) && !alive)
}

/// `t + d`, or the last (first) representable instant when that is past the end (start) of time. Every sum of a
/// time someone else wrote (a heartbeat, a deadline, a completion time, a lease's renewal) goes through here:
/// jiff's `+` panics on overflow, and a status dated 9999-12-31 would end the operator.
pub fn later(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Why a trace has no session: nothing matches yet (that may change while it waits), or its target is refused
/// (that changes only with its spec or the admin's settings, so a job fails at once).
#[derive(Clone, Debug, PartialEq)]
pub struct Unplaced {
    pub reason: Reason,
    pub message: String,
    pub refused: bool,
}

impl Unplaced {
    pub fn no_match(message: String) -> Unplaced {
        Unplaced {
            reason: Reason::NoMatchingPods,
            message,
            refused: false,
        }
    }
}

pub struct Input<'a> {
    pub old: Option<&'a TraceJobStatus>,
    pub sessions: &'a [ProbeSession],
    pub generation: Option<i64>,
    pub start: Timestamp,
    pub deadline: Timestamp,
    pub now: Timestamp,
    /// Why nothing was scheduled (None when sessions exist or were just made).
    pub no_targets: Option<Unplaced>,
    /// Until when each node's agent said it is alive (its Lease), by node.
    pub alive_until: BTreeMap<String, Timestamp>,
    /// Notes about the target that the cluster cannot honour (pids, cgroupPaths).
    pub notes: Vec<String>,
    pub top: usize,
}

pub fn rollup(i: &Input) -> TraceJobStatus {
    let mut st = i.old.cloned().unwrap_or_default();
    let now_t = Time(i.now);
    st.observed_generation = i.generation;
    st.start_time.get_or_insert(Time(i.start));

    let mut nodes = NodeCounts {
        targeted: i.sessions.len() as u32,
        ..Default::default()
    };
    let mut counts = Counts::default();
    let mut node_results = Vec::new();
    let mut results = Vec::new();
    let mut strategies = BTreeMap::<String, u32>::new();
    let mut failures = Vec::new();
    for s in i.sessions {
        let ss = s.status.clone().unwrap_or_default();
        let mut phase = ss.phase;
        let mut message = ss.message.clone();
        let alive_until = i.alive_until.get(&s.spec.node_name).copied();
        if !phase.is_finished() && overdue(&ss, alive_until, i.deadline, i.now) {
            phase = Phase::Failed;
            message = Some(format!(
                "the agent on {} did not report a result after the deadline (its lease expired and no status \
                 for {}s, or still publishing {}s after it)",
                s.spec.node_name,
                REPORT_GRACE.as_secs(),
                PUBLISH_LIMIT.as_secs()
            ));
        }
        if ss.attached_at.is_some() {
            nodes.attached += 1;
        }
        match phase {
            Phase::Succeeded => nodes.done += 1,
            Phase::Failed => {
                nodes.failed += 1;
                failures.push(format!(
                    "{}: {}",
                    s.spec.node_name,
                    message.clone().unwrap_or_default()
                ));
            }
            _ => {}
        }
        if let Some(strategy) = &ss.attach_strategy {
            *strategies.entry(strategy.clone()).or_default() += 1;
        }
        counts += &ss.counts;
        results.extend(ss.results.iter().cloned());
        node_results.push(NodeResult {
            node: s.spec.node_name.clone(),
            phase,
            attach_strategy: ss.attach_strategy.clone(),
            counts: ss.counts.clone(),
            message,
        });
    }
    node_results.sort_by(|a, b| a.node.cmp(&b.node));
    let finished_nodes = nodes.done + nodes.failed;
    let all_finished = !i.sessions.is_empty() && finished_nodes == nodes.targeted;

    let refused = i.no_targets.as_ref().is_some_and(|u| u.refused);
    let phase = if i.sessions.is_empty() {
        if i.now >= i.deadline || refused {
            Phase::Failed
        } else {
            Phase::Pending
        }
    } else if all_finished {
        if nodes.failed > 0 {
            Phase::Failed
        } else {
            Phase::Succeeded
        }
    } else if nodes.attached > 0 {
        Phase::Running
    } else {
        Phase::Pending
    };

    let g = i.generation;
    let mut c = Conditions::new(&mut st.conditions, g, now_t.clone());
    match (&i.no_targets, i.sessions.is_empty()) {
        (Some(why), true) => {
            c.set(
                types::SCHEDULED,
                false,
                why.reason.as_str(),
                why.message.clone(),
            );
        }
        _ => {
            let mut msg = format!("{} node(s) targeted", nodes.targeted);
            for n in &i.notes {
                msg.push_str("; ");
                msg.push_str(n);
            }
            c.set(
                types::SCHEDULED,
                true,
                Reason::SessionsCreated.as_str(),
                msg,
            );
        }
    }
    if nodes.attached > 0 {
        let how: Vec<String> = strategies
            .iter()
            .map(|(s, n)| format!("{s} on {n} node(s)"))
            .collect();
        c.set(
            types::ATTACHED,
            true,
            Reason::Attached.as_str(),
            format!("attached via {}", how.join(", ")),
        );
    } else if !c.is_true(types::ATTACHED) {
        not_attached_yet(&mut c);
    }
    if counts.breaches > 0 {
        let msg = format!("{} threshold breaches", counts.breaches);
        set_breached(&mut c, msg);
    }
    set_dropped(&mut c, &counts);
    match phase {
        Phase::Succeeded => {
            // Sessions their agent stopped early because the node was cordoned: the job is complete, and says
            // which nodes ended early and why.
            let drained: Vec<&str> = i
                .sessions
                .iter()
                .filter_map(|s| s.status.as_ref())
                .flat_map(|st| &st.conditions)
                .filter(|c| c.type_ == types::COMPLETE && Reason::NodeDrained.is(&c.reason))
                .map(|c| c.message.as_str())
                .collect();
            let (reason, msg) = if drained.is_empty() {
                (Reason::Completed, format!("{} node(s) done", nodes.done))
            } else {
                let msg = format!("{} node(s) done; {}", nodes.done, drained.join("; "));
                (Reason::NodeDrained, msg)
            };
            c.set(types::COMPLETE, true, reason.as_str(), msg);
        }
        Phase::Failed => {
            let (reason, msg) = if i.sessions.is_empty() {
                let u = i.no_targets.clone();
                let u =
                    u.unwrap_or_else(|| Unplaced::no_match("nothing matched the target".into()));
                (u.reason, u.message)
            } else {
                (Reason::NodesFailed, failures.join("; "))
            };
            c.set(types::COMPLETE, false, reason.as_str(), msg.clone());
            c.set(types::FAILED, true, reason.as_str(), msg);
        }
        _ => {}
    }
    if phase.is_finished() {
        st.completion_time.get_or_insert(now_t.clone());
    }
    st.phase = phase;
    st.progress = Some(format!("{}/{}", finished_nodes, nodes.targeted));
    st.nodes = nodes;
    st.counts = counts;
    st.results = results;
    st.node_results = node_results;
    st.summary = merge_summaries(i.sessions, i.top);
    upload_rollup(&mut st, i.sessions, g, &now_t);
    st
}

/// Where a job's results stand over its nodes (`status.upload` and `ResultsComplete`), once a node reported
/// its own. Also run for a finished job while its results are pending: agents upload them late.
pub fn upload_rollup(
    st: &mut TraceJobStatus,
    sessions: &[ProbeSession],
    g: Option<i64>,
    now: &Time,
) {
    let reported = per_node(sessions, |st| st.upload.as_ref());
    let Some(merged) = Upload::merge(reported.iter().map(|(_, u)| *u)) else {
        return;
    };
    let on = |state: UploadState| {
        let nodes: Vec<&str> = reported
            .iter()
            .filter(|(_, u)| u.state == state)
            .map(|(n, _)| *n)
            .collect();
        nodes.join(", ")
    };
    let was_pending = st
        .conditions
        .iter()
        .any(|c| c.type_ == types::RESULTS_COMPLETE && Reason::UploadPending.is(&c.reason));
    let waiting = match merged.state {
        UploadState::Pending => on(UploadState::Pending),
        UploadState::Incomplete => on(UploadState::Incomplete),
        UploadState::Complete => String::new(),
    };
    let (ok, reason, msg) = merged.condition(
        !st.phase.is_finished(),
        was_pending,
        &format!("on {waiting}"),
    );
    Conditions::new(&mut st.conditions, g, now.clone()).set(
        types::RESULTS_COMPLETE,
        ok,
        reason,
        msg,
    );
    st.upload = Some(merged);
}

/// What each node's session reported of one part of its status, by node name.
fn per_node<'a, T>(
    sessions: &'a [ProbeSession],
    part: impl Fn(&'a ProbeSessionStatus) -> Option<&'a T>,
) -> Vec<(&'a str, &'a T)> {
    sessions
        .iter()
        .filter_map(|s| Some((s.spec.node_name.as_str(), part(s.status.as_ref()?)?)))
        .collect()
}

/// Rows with the same key are summed over nodes (counts and rates; the max of maxima), then the top N kept.
/// Figures are per node, so they keep the node name when several nodes report.
pub fn merge_summaries(sessions: &[ProbeSession], top: usize) -> Option<Summary> {
    let summaries = per_node(sessions, |st| st.summary.as_ref());
    let (_, first) = summaries.first()?;
    let mut rows: BTreeMap<&str, SummaryRow> = BTreeMap::new();
    let mut figures = Vec::new();
    for (node, s) in &summaries {
        for r in &s.rows {
            let e = rows.entry(r.key.as_str()).or_insert_with(|| SummaryRow {
                key: r.key.clone(),
                ..Default::default()
            });
            e.count = e.count.saturating_add(r.count);
            e.per_second = add_opt(e.per_second, r.per_second, |a, b| a + b);
            e.max = add_opt(e.max, r.max, f64::max);
        }
        for f in &s.figures {
            let mut f = f.clone();
            if summaries.len() > 1 {
                f.name = format!("{node}: {}", f.name);
            }
            figures.push(f);
        }
    }
    let mut rows: Vec<SummaryRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    rows.truncate(top);
    Some(Summary {
        key_meaning: first.key_meaning.clone(),
        rows,
        figures,
    })
}

fn add_opt(a: Option<f64>, b: Option<f64>, f: impl Fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

pub struct PolicyInput<'a> {
    pub old: Option<&'a ProbePolicyStatus>,
    pub sessions: &'a [ProbeSession],
    pub generation: Option<i64>,
    /// `spec.suspend`: detached everywhere.
    pub suspended: bool,
    /// Why nothing is placed (None when sessions exist or were just made).
    pub no_targets: Option<Unplaced>,
    pub now: Timestamp,
    pub top: usize,
}

/// A standing policy's status from its sessions: nodes attached/targeted, totals over the live sessions, the
/// last complete window merged over nodes, and whether the last window breached anywhere.
pub fn policy_rollup(i: &PolicyInput) -> ProbePolicyStatus {
    let mut st = i.old.cloned().unwrap_or_default();
    let now_t = Time(i.now);
    let g = i.generation;
    st.observed_generation = i.generation;
    let mut nodes = NodeCounts {
        targeted: i.sessions.len() as u32,
        ..Default::default()
    };
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    let mut breached = Vec::new();
    for s in i.sessions {
        let ss = s.status.clone().unwrap_or_default();
        if ss.phase == Phase::Running && ss.attached_at.is_some() {
            nodes.attached += 1;
        }
        if ss.phase == Phase::Failed {
            nodes.failed += 1;
            failures.push(format!(
                "{}: {}",
                s.spec.node_name,
                ss.message.clone().unwrap_or_default()
            ));
        }
        if conditions::is_true(&ss.conditions, types::THRESHOLD_BREACHED) {
            breached.push(s.spec.node_name.clone());
        }
        counts += &ss.counts;
        if let Some(t) = ss.last_breach_time
            && st.last_breach_time.as_ref().is_none_or(|old| old.0 < t.0)
        {
            st.last_breach_time = Some(t);
        }
    }
    let mut c = Conditions::new(&mut st.conditions, g, now_t.clone());
    if i.suspended {
        c.set(
            types::ATTACHED,
            false,
            Reason::Suspended.as_str(),
            "spec.suspend is true: detached everywhere",
        );
    } else if let Some(why) = i.no_targets.as_ref().filter(|_| i.sessions.is_empty()) {
        c.set(
            types::ATTACHED,
            false,
            why.reason.as_str(),
            why.message.clone(),
        );
    } else if nodes.attached > 0 {
        let msg = format!("attached on {}/{} node(s)", nodes.attached, nodes.targeted);
        c.set(types::ATTACHED, true, Reason::Attached.as_str(), msg);
    } else {
        not_attached_yet(&mut c);
    }
    if failures.is_empty() {
        c.set(types::DEGRADED, false, Reason::AllNodesHealthy.as_str(), "");
    } else {
        let msg = failures.join("; ");
        c.set(types::DEGRADED, true, Reason::NodesFailed.as_str(), msg);
    }
    if breached.is_empty() {
        c.set(
            types::THRESHOLD_BREACHED,
            false,
            Reason::Quiet.as_str(),
            "no breach in the last window",
        );
    } else {
        let msg = format!("last window breached on {}", breached.join(", "));
        set_breached(&mut c, msg);
    }
    set_dropped(&mut c, &counts);
    st.progress = Some(format!("{}/{}", nodes.attached, nodes.targeted));
    st.nodes = nodes;
    st.counts = counts;
    if let Some(summary) = merge_summaries(i.sessions, i.top) {
        st.last_window = Some(summary);
    }
    st
}

/// `EventsDropped` once any node dropped events (user space behind the kernel), with the rate and reasons.
fn set_dropped(c: &mut Conditions, counts: &Counts) {
    if let Some(msg) = counts.drop_message() {
        c.set(
            types::EVENTS_DROPPED,
            true,
            Reason::UserSpaceBehind.as_str(),
            msg,
        );
    }
}

fn set_breached(c: &mut Conditions, msg: String) {
    c.set(
        types::THRESHOLD_BREACHED,
        true,
        Reason::Breached.as_str(),
        msg,
    );
}

fn not_attached_yet(c: &mut Conditions) {
    c.set(
        types::ATTACHED,
        false,
        Reason::Waiting.as_str(),
        "no node has attached yet",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition<'a>(
        c: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        c.iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {c:?}"))
    }

    fn session(node: &str, status: Option<ProbeSessionStatus>) -> ProbeSession {
        let mut s: ProbeSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "metadata": {"name": node},
            "spec": {"nodeName": node, "probe": "wakeups", "resultPrefix": "p"},
        }))
        .unwrap();
        s.status = status;
        s
    }

    fn done(rows: &[(&str, u64)], breaches: u64) -> ProbeSessionStatus {
        ProbeSessionStatus {
            phase: Phase::Succeeded,
            attach_strategy: Some("tp_btf".into()),
            attached_at: Some(Time(Timestamp::from_second(100).unwrap())),
            counts: Counts::new(10, 1, 0, breaches),
            summary: Some(Summary {
                key_meaning: "waker -> wakee".into(),
                rows: rows
                    .iter()
                    .map(|(k, n)| SummaryRow {
                        key: k.to_string(),
                        count: *n,
                        ..Default::default()
                    })
                    .collect(),
                figures: vec![],
            }),
            results: vec![format!("file:///r/{}", rows.len())],
            ..Default::default()
        }
    }

    fn input<'a>(sessions: &'a [ProbeSession], now: i64) -> Input<'a> {
        Input {
            old: None,
            sessions,
            generation: Some(1),
            start: Timestamp::from_second(100).unwrap(),
            deadline: Timestamp::from_second(160).unwrap(),
            now: Timestamp::from_second(now).unwrap(),
            no_targets: None,
            alive_until: BTreeMap::new(),
            notes: vec![],
            top: 2,
        }
    }

    #[test]
    fn a_node_drained_before_the_deadline_completes_the_job_with_the_reason() {
        let mut drained = done(&[("x", 1)], 0);
        let why = "node b was cordoned at T: stopped 40s before the deadline";
        let at = Time(Timestamp::from_second(120).unwrap());
        Conditions::new(&mut drained.conditions, Some(1), at).set(
            types::COMPLETE,
            true,
            conditions::NODE_DRAINED,
            why,
        );
        let sessions = [
            session("a", Some(done(&[("x", 5)], 0))),
            session("b", Some(drained)),
        ];
        let st = rollup(&input(&sessions, 121));
        assert_eq!(st.phase, Phase::Succeeded, "before the deadline");
        let complete = st.conditions.iter().find(|c| c.type_ == types::COMPLETE);
        let complete = complete.expect("Complete set");
        assert_eq!(complete.reason, conditions::NODE_DRAINED);
        assert!(complete.message.contains(why), "{}", complete.message);
    }

    #[test]
    fn finished_nodes_merge_into_one_answer() {
        let sessions = [
            session("a", Some(done(&[("x", 5), ("y", 1)], 2))),
            session("b", Some(done(&[("x", 7), ("z", 3)], 0))),
        ];
        let st = rollup(&input(&sessions, 161));
        assert_eq!(st.phase, Phase::Succeeded);
        assert_eq!(st.progress.as_deref(), Some("2/2"));
        assert_eq!(st.counts, Counts::new(20, 2, 0, 2));
        assert_eq!(st.counts.dropped_percent, Some(9.09));
        let dropped = st
            .conditions
            .iter()
            .find(|c| c.type_ == types::EVENTS_DROPPED);
        let msg = &dropped.expect("EventsDropped set").message;
        assert!(msg.contains("2 of 22 events (9.09%)"), "{msg}");
        let rows = &st.summary.as_ref().unwrap().rows;
        assert_eq!((rows[0].key.as_str(), rows[0].count), ("x", 12));
        assert_eq!((rows[1].key.as_str(), rows[1].count), ("z", 3));
        assert_eq!(rows.len(), 2);
        assert!(conditions::is_true(&st.conditions, types::COMPLETE));
        assert!(conditions::is_true(
            &st.conditions,
            types::THRESHOLD_BREACHED
        ));
        assert!(st.completion_time.is_some());
        assert_eq!(st.results.len(), 2);
    }

    #[test]
    fn running_pending_and_silent_agents() {
        let running = ProbeSessionStatus {
            phase: Phase::Running,
            attached_at: Some(Time(Timestamp::from_second(101).unwrap())),
            attach_strategy: Some("tracepoint".into()),
            ..Default::default()
        };
        let sessions = [session("a", Some(running)), session("b", None)];
        let st = rollup(&input(&sessions, 120));
        assert_eq!(st.phase, Phase::Running);
        assert_eq!(st.nodes.attached, 1);
        // Long after the deadline nobody reported: failed, naming the node.
        let st = rollup(&input(&sessions, 200));
        assert_eq!(st.phase, Phase::Failed);
        let failed = st
            .conditions
            .iter()
            .find(|c| c.type_ == types::FAILED)
            .unwrap();
        assert!(
            failed
                .message
                .contains("b: the agent on b did not report a result after the deadline"),
            "{}",
            failed.message
        );
    }

    #[test]
    fn an_agent_still_publishing_after_the_deadline_is_waited_for_while_it_beats() {
        let publishing = |beat: i64| ProbeSessionStatus {
            phase: Phase::Running,
            attached_at: Some(Time(Timestamp::from_second(101).unwrap())),
            heartbeat: Some(Time(Timestamp::from_second(beat).unwrap())),
            ..Default::default()
        };
        // Deadline 160: at 250 an agent that beat at 240 is publishing against a slow store, not gone.
        let sessions = [session("a", Some(publishing(240)))];
        assert_eq!(rollup(&input(&sessions, 250)).phase, Phase::Running);
        // Its heartbeat stops: failed once it is REPORT_GRACE old.
        assert_eq!(rollup(&input(&sessions, 271)).phase, Phase::Failed);
        // Beating but still not done PUBLISH_LIMIT after the deadline: failed all the same.
        let late = 160 + PUBLISH_LIMIT.as_secs() + 1;
        let sessions = [session("a", Some(publishing(late - 1)))];
        assert_eq!(rollup(&input(&sessions, late)).phase, Phase::Failed);
    }

    #[test]
    fn nothing_matching_is_pending_then_failed_with_the_reason() {
        let mut i = input(&[], 120);
        i.no_targets = Some(Unplaced::no_match("no running pod matches app=ping".into()));
        let st = rollup(&i);
        assert_eq!(st.phase, Phase::Pending);
        let sched = condition(&st.conditions, types::SCHEDULED);
        assert_eq!(
            (sched.status.as_str(), sched.reason.as_str()),
            ("False", "NoMatchingPods")
        );
        i.now = Timestamp::from_second(161).unwrap();
        let st = rollup(&i);
        assert_eq!(st.phase, Phase::Failed);
        assert!(conditions::is_true(&st.conditions, types::FAILED));
    }

    #[test]
    fn a_refused_target_fails_at_once_with_its_reason() {
        let mut i = input(&[], 120);
        i.no_targets = Some(Unplaced {
            reason: Reason::NodeWideNotAllowed,
            message: "namespace a may not trace whole nodes".into(),
            refused: true,
        });
        let st = rollup(&i);
        assert_eq!(st.phase, Phase::Failed, "long before the deadline");
        let failed = st.conditions.iter().find(|c| c.type_ == types::FAILED);
        let failed = failed.expect("Failed set");
        assert_eq!(failed.reason, "NodeWideNotAllowed");
        assert!(failed.message.contains("may not trace whole nodes"));
    }

    #[test]
    fn a_policy_reports_attached_nodes_breaches_and_suspension() {
        let mut breached = done(&[("x", 9)], 3);
        breached.phase = Phase::Running;
        breached.last_breach_time = Some(Time(Timestamp::from_second(150).unwrap()));
        let at = Time(Timestamp::from_second(150).unwrap());
        Conditions::new(&mut breached.conditions, None, at).set(
            types::THRESHOLD_BREACHED,
            true,
            "Breached",
            "",
        );
        let sessions = [session("a", Some(breached))];
        let now = Timestamp::from_second(200).unwrap();
        let mut i = PolicyInput {
            old: None,
            sessions: &sessions,
            generation: Some(2),
            suspended: false,
            no_targets: None,
            now,
            top: 5,
        };
        let st = policy_rollup(&i);
        assert_eq!(st.progress.as_deref(), Some("1/1"));
        assert!(conditions::is_true(&st.conditions, types::ATTACHED));
        assert!(conditions::is_true(
            &st.conditions,
            types::THRESHOLD_BREACHED
        ));
        assert!(!conditions::is_true(&st.conditions, types::DEGRADED));
        assert_eq!(st.counts.breaches, 3);
        assert_eq!(st.last_window.as_ref().unwrap().rows[0].key, "x");
        assert_eq!(
            st.last_breach_time,
            Some(Time(Timestamp::from_second(150).unwrap()))
        );
        (i.old, i.sessions, i.generation, i.suspended) = (Some(&st), &[], Some(3), true);
        let st = policy_rollup(&i);
        let attached = st
            .conditions
            .iter()
            .find(|c| c.type_ == types::ATTACHED)
            .unwrap();
        assert_eq!(
            (attached.status.as_str(), attached.reason.as_str()),
            ("False", "Suspended")
        );
        // The last window and breach time stay for the record.
        assert!(st.last_window.is_some() && st.last_breach_time.is_some());
    }

    #[test]
    fn a_node_with_results_still_spooled_makes_the_job_pending_until_it_uploads_late() {
        let up = |state: UploadState, pending: u32, at: i64| Upload {
            state,
            pending,
            oldest_pending: (pending > 0).then(|| Time(Timestamp::from_second(at).unwrap())),
            message: (pending > 0).then(|| "connection refused".to_string()),
        };
        let with = |u: Upload| {
            let mut st = done(&[], 0);
            st.upload = Some(u);
            st
        };
        let pending = [
            session("a", Some(with(up(UploadState::Pending, 2, 150)))),
            session("b", Some(with(up(UploadState::Complete, 0, 0)))),
            session("c", Some(with(up(UploadState::Pending, 1, 120)))),
        ];
        let st = rollup(&input(&pending, 200));
        let u = st.upload.clone().unwrap();
        assert_eq!((u.state, u.pending), (UploadState::Pending, 3));
        assert_eq!(u.oldest_pending.unwrap().0.as_second(), 120);
        let c = condition(&st.conditions, types::RESULTS_COMPLETE);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "UploadPending")
        );
        assert!(
            c.message.contains("on a, c") && c.message.contains("connection refused"),
            "{}",
            c.message
        );

        let mut late = st.clone();
        let uploaded = [
            session("a", Some(with(up(UploadState::Complete, 0, 0)))),
            session("b", Some(with(up(UploadState::Complete, 0, 0)))),
            session("c", Some(with(up(UploadState::Complete, 0, 0)))),
        ];
        upload_rollup(
            &mut late,
            &uploaded,
            None,
            &Time(Timestamp::from_second(300).unwrap()),
        );
        let c = condition(&late.conditions, types::RESULTS_COMPLETE);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "UploadedLate")
        );
        assert_eq!(late.upload.unwrap().state, UploadState::Complete);
        // Nodes that reported nothing about uploads (still running) leave the job's state unset.
        let mut quiet = TraceJobStatus::default();
        upload_rollup(
            &mut quiet,
            &[session("a", Some(done(&[], 0)))],
            None,
            &Time(Timestamp::from_second(1).unwrap()),
        );
        assert!(quiet.upload.is_none());
    }
}
