//! The ProbePolicy reconciler: a standing probe on the pods that match, one windowed ProbeSession per node.
//! Editing the policy re-applies its sessions; the agents reload only sessions whose probe changed, so other
//! policies keep running. `suspend` detaches everywhere. Breaches raise Events, a condition and a metric.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use sonde_crds::{ProbePolicy, ProbeSession};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::placement;
use crate::rollup::{self, Unplaced};
use crate::tracejob::MANAGER;

const FINALIZER: &str = "sonde.dev/policy-sessions";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let policies: Api<ProbePolicy> = Api::all(client.clone());
    let controller = Controller::new(policies, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(
            Api::<ProbeSession>::all(client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default(),
            move |pod: Pod| {
                let ns = pod.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == ns)
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(crate::context::log_reconcile)
        .await;
}

#[tracing::instrument(skip_all, fields(namespace = policy.namespace().unwrap_or_default(), name = %policy.name_any()))]
pub async fn reconcile(policy: Arc<ProbePolicy>, ctx: Arc<Context>) -> Result<Action> {
    let key = policy.uid().unwrap_or_default();
    let ns = policy
        .namespace()
        .ok_or_else(|| Error::NoNamespace(policy.name_any()))?;
    let api: Api<ProbePolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let _timer = ctx.metrics.reconcile_started("probepolicy");
    let result = finalizer(&api, FINALIZER, policy, |event| async {
        let sessions: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), &ns);
        match event {
            Finalizer::Apply(p) => apply(p, &ctx, &ns).await,
            Finalizer::Cleanup(p) => {
                placement::delete_sessions(&sessions, &p.uid().unwrap_or_default()).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(Error::from);
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

fn error_policy(policy: Arc<ProbePolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed("probepolicy", err.label());
    Action::requeue(ctx.backoff.failed(&policy.uid().unwrap_or_default()))
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
        let probe = placement::Probe {
            probe: spec.probe,
            params: &spec.params,
            target: &spec.target,
            thresholds: &spec.thresholds,
            output: &spec.output,
            storage: &spec.storage,
            budget: &spec.budget,
        };
        let placed = placement::place(&spec.target, ctx, ns).await?;
        if placed.is_empty() {
            no_targets = Some(Unplaced::no_match(placement::describe_no_targets(
                &spec.target,
                ns,
            )));
        }
        let owned = placement::owned_sessions(&sessions_api, &uid).await?;
        for (node, pods) in &placed {
            let s = placement::session_for(
                &*policy,
                "probepolicies",
                &probe,
                node,
                pods.clone(),
                None,
                Some(spec.window.clone()),
            );
            if let Some(why) = placement::apply_session(&sessions_api, &s, &uid, &owned).await? {
                no_targets = Some(why);
                break;
            }
        }
        // A node whose matching pods are all gone stops tracing: a standing probe follows its pods.
        for s in placement::owned_sessions(&sessions_api, &uid).await? {
            if !placed.contains_key(&s.spec.node_name) {
                sessions_api
                    .delete(&s.name_any(), &DeleteParams::background())
                    .await?;
            }
        }
    }
    let sessions = placement::owned_sessions(&sessions_api, &uid).await?;
    let old = policy.status.clone();
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
        let body = serde_json::json!({"apiVersion": "sonde.dev/v1alpha1", "kind": "ProbePolicy", "status": status});
        let jobs: Api<ProbePolicy> = Api::namespaced(ctx.client.clone(), ns);
        jobs.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    }
    // Session status changes wake the controller; the timer is a safety net.
    Ok(Action::requeue(Duration::from_secs(60)))
}
