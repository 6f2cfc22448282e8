//! The ProbePolicy reconciler, in the steps of [`crate::owner`]: a standing probe on the pods that match, one
//! windowed ProbeSession per node. Editing the policy re-applies its sessions; the agents reload only sessions
//! whose probe changed, so other policies keep running. `suspend` detaches everywhere. Breaches raise Events, a
//! condition and a metric.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use sonde_crds::conditions;
use sonde_crds::{Phase, ProbePolicy, ProbePolicyStatus, ProbeSession, ProbeSessionSpec};

use crate::conditions::{EventReason, types};
use crate::context::Context;
use crate::error::Result;
use crate::owner::{self, Announcement, Owner, Placed};
use crate::placement;
use crate::rollup::{self, Unplaced};

pub async fn run(ctx: Arc<Context>, pods: crate::pods::PodEvents) {
    owner::run::<ProbePolicy, _, _>(ctx, pods, reconcile).await;
}

#[tracing::instrument(skip_all, fields(namespace = policy.namespace().unwrap_or_default(), name = %policy.name_any()))]
pub async fn reconcile(policy: Arc<ProbePolicy>, ctx: Arc<Context>) -> Result<Action> {
    owner::reconcile(policy, ctx, |p, ctx, ns| async move {
        apply(p, &ctx, &ns).await
    })
    .await
}

async fn apply(policy: Arc<ProbePolicy>, ctx: &Context, ns: &str) -> Result<Action> {
    let policies: Api<ProbePolicy> = Api::namespaced(ctx.client.clone(), ns);
    let sessions_api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);

    let placed = place(ctx, &policy, ns, &sessions_api).await?;
    let status = roll_up(&policy, &placed, Timestamp::now());
    announce(ctx, &policy, &policies, &placed, &status).await?;

    // Session status changes wake the controller; the timer is a safety net.
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Place: one windowed session per node with matching pods, each re-applied as the policy now asks; none
/// anywhere when it is suspended or its target is refused. A failed session is placed anew ([`retry_failed`]),
/// and a node whose matching pods are all gone loses its session.
async fn place(
    ctx: &Context,
    policy: &ProbePolicy,
    ns: &str,
    api: &Api<ProbeSession>,
) -> Result<Placed> {
    let uid = policy.uid().unwrap_or_default();
    let spec = &policy.spec;
    let mut no_targets = None;
    let refused = placement::refusal(ctx, &spec.target, &spec.storage, ns);
    if spec.suspend || refused.is_some() {
        placement::delete_sessions(api, &uid).await?;
        no_targets = refused;
    } else {
        let placed = placement::place(&spec.target, ctx, ns).await?;
        if placed.is_empty() {
            no_targets = Some(Unplaced::no_match(placement::describe_no_targets(
                &spec.target,
                ns,
            )));
        }
        let owned = placement::owned_sessions(api, &uid).await?;
        let nodes: std::collections::BTreeSet<String> = placed.keys().cloned().collect();
        let window = Some(spec.window.as_str());
        // An agent never restarts a session it ended: a failed one is deleted here, and placed anew with a
        // uid of its own by the reconcile its deletion triggers.
        let mut placed = placed;
        let now = Timestamp::now();
        for s in &owned {
            let asked = || {
                placement::session_for(
                    policy,
                    ProbePolicy::RESULTS_KIND,
                    &policy.probe(),
                    &s.spec.node_name,
                    s.spec.pods.clone(),
                    None,
                    window.map(str::to_string),
                )
                .spec
            };
            if retry_failed(s, asked, now) {
                tracing::info!(session = %s.name_any(), "placing a failed session anew");
                api.delete(&s.name_any(), &DeleteParams::background())
                    .await?;
                placed.remove(&s.spec.node_name);
            }
        }
        if let Some(why) = owner::apply_sessions(api, policy, placed, None, window, &owned).await? {
            no_targets = Some(why);
        }
        // A node whose matching pods are all gone stops tracing: a standing probe follows its pods.
        for s in placement::owned_sessions(api, &uid).await? {
            if !nodes.contains(&s.spec.node_name) {
                api.delete(&s.name_any(), &DeleteParams::background())
                    .await?;
            }
        }
    }
    Ok(Placed {
        sessions: placement::owned_sessions(api, &uid).await?,
        no_targets,
    })
}

/// Roll up: the sessions' statuses into the policy's.
fn roll_up(policy: &ProbePolicy, placed: &Placed, now: Timestamp) -> ProbePolicyStatus {
    rollup::policy_rollup(&rollup::PolicyInput {
        old: policy.status.as_ref(),
        sessions: &placed.sessions,
        generation: policy.metadata.generation,
        suspended: policy.spec.suspend,
        no_targets: placed.no_targets.clone(),
        now,
        top: sonde_crds::ProbeParams::top_rows(policy.spec.params.as_ref()),
    })
}

/// Announce: a Warning when a refusal starts or changes its reason, a Warning (and the breach metric) on new
/// breaches, then the status.
async fn announce(
    ctx: &Context,
    policy: &ProbePolicy,
    policies: &Api<ProbePolicy>,
    placed: &Placed,
    status: &ProbePolicyStatus,
) -> Result<()> {
    let old = policy.status.as_ref();
    let mut events: Vec<Announcement> = Vec::new();
    // A refusal (a node-wide target or storage the namespace may not have, a session name another owner holds)
    // that status now reports is a Warning once, when it starts or its reason changes, as for a TraceJob.
    let refusal = placed.no_targets.as_ref().filter(|u| u.refused);
    let not_attached = |s: &ProbePolicyStatus| {
        conditions::false_condition(&s.conditions, types::ATTACHED).cloned()
    };
    if let (Some(refusal), Some(now)) = (refusal, not_attached(status))
        && refusal.reason.is(&now.reason)
        && old.and_then(not_attached).map(|c| c.reason) != Some(now.reason)
    {
        events.push((EventType::Warning, refusal.reason.as_str(), now.message));
    }
    let before = old.map(|s| s.counts.breaches).unwrap_or(0);
    if status.counts.breaches > before {
        let new = status.counts.breaches - before;
        let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
        ctx.metrics.policy_breaches(&ns, &name, new);
        let top_row = status
            .last_window
            .as_ref()
            .and_then(|w| w.rows.first())
            .map(|r| format!("; top: {} ({})", r.key, r.count))
            .unwrap_or_default();
        let note = format!("{new} new threshold breaches{top_row}");
        events.push((
            EventType::Warning,
            EventReason::ThresholdBreached.as_str(),
            note,
        ));
    }
    owner::announce(ctx, policies, policy, events, status).await
}

/// How long a policy's session stays failed before it is placed anew as it was: a node at capacity frees up, a
/// burst over the overhead budget passes, an API server comes back.
pub const RETRY_FAILED: SignedDuration = SignedDuration::from_secs(300);

/// Whether a policy's failed session is to be placed anew now: the policy now asks for another spec than the one
/// it failed with (it was fixed: `asked`, for the session's own pods, made only for a failed session), or it
/// failed [`RETRY_FAILED`] ago.
fn retry_failed(
    session: &ProbeSession,
    asked: impl FnOnce() -> ProbeSessionSpec,
    now: Timestamp,
) -> bool {
    let Some(st) = session
        .status
        .as_ref()
        .filter(|st| st.phase == Phase::Failed)
    else {
        return false;
    };
    if asked() != session.spec {
        return true;
    }
    let failed_at = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::FAILED && c.status == "True")
        .map(|c| c.last_transition_time.0)
        .or(st.heartbeat.as_ref().map(|t| t.0));
    failed_at.is_none_or(|at| crate::rollup::later(at, RETRY_FAILED) <= now)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use sonde_crds::ProbeSessionStatus;
    use sonde_crds::conditions::Conditions;

    fn failed_at(second: i64) -> ProbeSession {
        let mut s: ProbeSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "metadata": {"name": "p-a"},
            "spec": {"nodeName": "a", "probe": "wakeups", "resultPrefix": "p"},
        }))
        .unwrap();
        let mut st = ProbeSessionStatus {
            phase: Phase::Failed,
            ..Default::default()
        };
        let at = Time(Timestamp::from_second(second).unwrap());
        Conditions::new(&mut st.conditions, Some(1), at).set(
            types::FAILED,
            true,
            "NodeAtCapacity",
            "12 sessions run on this node",
        );
        s.status = Some(st);
        s
    }

    #[test]
    fn a_failed_session_is_placed_anew_when_the_policy_changes_or_after_a_while() {
        let s = failed_at(1_000);
        let same = s.spec.clone();
        let at = |second: i64| Timestamp::from_second(second).unwrap();
        assert!(!retry_failed(&s, || same.clone(), at(1_010)));
        assert!(retry_failed(
            &s,
            || same.clone(),
            at(1_000 + RETRY_FAILED.as_secs())
        ));
        let mut fixed = same.clone();
        fixed.budget.max_kernel_cpu_percent += 2.5;
        assert!(retry_failed(&s, || fixed.clone(), at(1_010)));
        // Running or finished well: never.
        let mut ok = s.clone();
        ok.status.as_mut().unwrap().phase = Phase::Running;
        assert!(!retry_failed(&ok, || fixed.clone(), at(1_000_000)));
    }
}
