//! The ProbePolicy reconciler: a standing probe on the pods that match, one windowed ProbeSession per node.
//! Editing the policy re-applies its sessions; the agents reload only sessions whose probe changed, so other
//! policies keep running. `suspend` detaches everywhere. Breaches raise Events, a condition and a metric.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sonde_crds::conditions::types;
use sonde_crds::{ProbePolicy, ProbePolicyStatus, ProbeSession};

use crate::context::Context;
use crate::error::Result;
use crate::owner;
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
    let name = policy.name_any();
    let uid = policy.uid().unwrap_or_default();
    let sessions_api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);
    let spec = &policy.spec;
    let mut no_targets = None;
    let refused = placement::refusal(ctx, &spec.target, &spec.storage, ns);
    if spec.suspend || refused.is_some() {
        placement::delete_sessions(&sessions_api, &uid).await?;
        no_targets = refused;
    } else {
        let placed = placement::place(&spec.target, ctx, ns).await?;
        if placed.is_empty() {
            no_targets = Some(Unplaced::no_match(placement::describe_no_targets(
                &spec.target,
                ns,
            )));
        }
        let owned = placement::owned_sessions(&sessions_api, &uid).await?;
        let nodes: std::collections::BTreeSet<String> = placed.keys().cloned().collect();
        let window = Some(spec.window.as_str());
        if let Some(why) =
            owner::apply_sessions(&sessions_api, &*policy, placed, None, window, &owned).await?
        {
            no_targets = Some(why);
        }
        // A node whose matching pods are all gone stops tracing: a standing probe follows its pods.
        for s in placement::owned_sessions(&sessions_api, &uid).await? {
            if !nodes.contains(&s.spec.node_name) {
                sessions_api
                    .delete(&s.name_any(), &DeleteParams::background())
                    .await?;
            }
        }
    }
    let sessions = placement::owned_sessions(&sessions_api, &uid).await?;
    let old = policy.status.clone();
    let refusal = no_targets.as_ref().filter(|u| u.refused).map(|u| u.reason);
    let top = sonde_crds::ProbeParams::top_rows(spec.params.as_ref());
    let status = rollup::policy_rollup(
        old.as_ref(),
        &sessions,
        policy.metadata.generation,
        spec.suspend,
        no_targets,
        Timestamp::now(),
        top,
    );
    // A refusal (a node-wide target or storage the namespace may not have, a session name another owner holds)
    // that status now reports is a Warning once, when it starts or its reason changes, as for a TraceJob.
    let not_attached = |s: Option<&ProbePolicyStatus>| {
        s.and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == types::ATTACHED && c.status == "False")
                .map(|c| (c.reason.clone(), c.message.clone()))
        })
    };
    if let (Some(reason), Some((now_reason, message))) = (refusal, not_attached(Some(&status)))
        && now_reason == reason
        && not_attached(old.as_ref()).map(|(r, _)| r) != Some(now_reason)
    {
        ctx.publish(&policy.object_ref(&()), EventType::Warning, reason, message)
            .await;
    }
    let before = old.as_ref().map(|s| s.counts.breaches).unwrap_or(0);
    if status.counts.breaches > before {
        let new = status.counts.breaches - before;
        ctx.metrics.policy_breaches(ns, &name, new);
        let top_row = status
            .last_window
            .as_ref()
            .and_then(|w| w.rows.first())
            .map(|r| format!("; top: {} ({})", r.key, r.count))
            .unwrap_or_default();
        let note = format!("{new} new threshold breaches{top_row}");
        ctx.publish(
            &policy.object_ref(&()),
            EventType::Warning,
            "ThresholdBreached",
            note,
        )
        .await;
    }
    if old.as_ref() != Some(&status) {
        let policies: Api<ProbePolicy> = Api::namespaced(ctx.client.clone(), ns);
        owner::patch_status(&policies, &name, &status).await?;
    }
    // Session status changes wake the controller; the timer is a safety net.
    Ok(Action::requeue(Duration::from_secs(60)))
}
