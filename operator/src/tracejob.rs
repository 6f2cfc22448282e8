//! The TraceJob reconciler: resolve the target to nodes, apply one ProbeSession per node (server-side apply, so
//! a restarted operator converges on the same objects instead of making duplicates), roll statuses up, emit
//! Events on transitions, delete the job after its TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use sonde_crds::{
    NODE_LABEL, OWNER_UID_LABEL, Phase, ProbeSession, ProbeSessionSpec, TargetPod, TraceJob,
    TraceJobStatus, node_label_value,
};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::rollup::{self, REPORT_GRACE};

pub const MANAGER: &str = "sonde-operator";
const FINALIZER: &str = "sonde.dev/sessions";

pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let jobs: Api<TraceJob> = Api::all(client.clone());
    let sessions: Api<ProbeSession> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let controller = Controller::new(jobs, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(sessions, watcher::Config::default())
        // A pod that starts matching while a job runs gets traced: every unfinished job of its namespace looks.
        .watches(pods, watcher::Config::default(), move |pod: Pod| {
            let ns = pod.namespace();
            store
                .state()
                .into_iter()
                .filter(|j| {
                    j.namespace() == ns && !j.status.as_ref().is_some_and(|s| s.phase.is_finished())
                })
                .map(|j| ObjectRef::from_obj(&*j))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
}

pub async fn reconcile(job: Arc<TraceJob>, ctx: Arc<Context>) -> Result<Action> {
    let ns = job
        .namespace()
        .ok_or_else(|| Error::NoNamespace(job.name_any()))?;
    let api: Api<TraceJob> = Api::namespaced(ctx.client.clone(), &ns);
    let _timer = ctx.metrics.reconcile_started("tracejob");
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(job, &ctx, &ns).await,
            Finalizer::Cleanup(job) => cleanup(job, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

fn error_policy(job: Arc<TraceJob>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed("tracejob", err.label());
    Action::requeue(Duration::from_secs(5))
}

/// Deleting a job detaches at once: its sessions are deleted here rather than whenever the garbage collector
/// gets to them.
async fn cleanup(job: Arc<TraceJob>, ctx: &Context, ns: &str) -> Result<Action> {
    let api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);
    let uid = job.uid().unwrap_or_default();
    let lp = ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}"));
    api.delete_collection(&DeleteParams::background(), &lp)
        .await?;
    Ok(Action::await_change())
}

async fn apply(job: Arc<TraceJob>, ctx: &Context, ns: &str) -> Result<Action> {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let jobs: Api<TraceJob> = Api::namespaced(ctx.client.clone(), ns);
    let sessions_api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);
    let old = job.status.clone();
    let now = Timestamp::now();

    if let Some(st) = old.as_ref().filter(|s| s.phase.is_finished()) {
        return after_finish(&job, st, &jobs, now).await;
    }

    let duration = sonde_crds::parse_duration(&job.spec.duration).map_err(Error::Duration)?;
    let mut sessions = owned_sessions(&sessions_api, &uid).await?;
    // The deadline is fixed once: by the sessions already out there, else by the recorded start, else now.
    let start = old
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    let deadline = sessions
        .iter()
        .filter_map(|s| s.spec.deadline.as_ref().map(|d| d.0))
        .min()
        .unwrap_or_else(|| {
            start + SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO)
        });

    let mut no_targets = None;
    let mut notes = Vec::new();
    if job.spec.target.pids.is_some() || job.spec.target.cgroup_paths.is_some() {
        notes.push(
            "pids and cgroupPaths apply to `sonde run` on one machine and are ignored in a cluster"
                .into(),
        );
    }
    if now < deadline {
        let placement = place(&job, ctx, ns).await?;
        if placement.is_empty() {
            no_targets = Some(describe_no_targets(&job));
        }
        for (node, pods) in placement {
            let session = session_for(&job, ns, &node, pods, deadline);
            let pp = PatchParams::apply(MANAGER).force();
            sessions_api
                .patch(&session.name_any(), &pp, &Patch::Apply(&session))
                .await?;
        }
        sessions = owned_sessions(&sessions_api, &uid).await?;
    }
    let top = sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref());
    let status = rollup::rollup(&rollup::Input {
        old: old.as_ref(),
        sessions: &sessions,
        generation: job.metadata.generation,
        start,
        deadline,
        now,
        no_targets,
        notes,
        top,
    });
    publish_transitions(ctx, &job, old.as_ref(), &status).await;
    if old.as_ref() != Some(&status) {
        let body = serde_json::json!({"apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob", "status": status});
        jobs.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    }
    if status.phase.is_finished() {
        return after_finish(&job, &status, &jobs, now).await;
    }
    // Session changes wake the controller; the timer covers the deadline and agents that go quiet.
    let wake = if now < deadline {
        deadline.duration_since(now)
    } else {
        REPORT_GRACE
    };
    Ok(Action::requeue(
        to_std(wake)
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(500)),
    ))
}

async fn after_finish(
    job: &TraceJob,
    st: &TraceJobStatus,
    jobs: &Api<TraceJob>,
    now: Timestamp,
) -> Result<Action> {
    let (Some(ttl), Some(done)) = (
        job.spec.ttl_seconds_after_finished,
        st.completion_time.as_ref(),
    ) else {
        return Ok(Action::await_change());
    };
    let expires = done.0 + SignedDuration::from_secs(ttl);
    if now >= expires {
        tracing::info!(job = %job.name_any(), "ttlSecondsAfterFinished reached; deleting");
        jobs.delete(&job.name_any(), &DeleteParams::background())
            .await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(to_std(expires.duration_since(now))))
}

async fn owned_sessions(api: &Api<ProbeSession>, uid: &str) -> Result<Vec<ProbeSession>> {
    let lp = ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}"));
    Ok(api.list(&lp).await?.items)
}

/// Where the job runs: node → target pods. An empty pod list with a node means the whole node.
async fn place(
    job: &TraceJob,
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, Vec<TargetPod>>> {
    let t = &job.spec.target;
    let mut allowed: Option<BTreeSet<String>> =
        t.node_names.as_ref().map(|n| n.iter().cloned().collect());
    if let Some(sel) = &t.node_selector {
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        let selector: Selector = sel.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let names: BTreeSet<String> = nodes
            .list(&ListParams::default().labels_from(&selector))
            .await?
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        allowed = Some(match allowed {
            Some(a) => a.intersection(&names).cloned().collect(),
            None => names,
        });
    }
    let mut out: BTreeMap<String, Vec<TargetPod>> = BTreeMap::new();
    match &t.pod_selector {
        Some(sel) => {
            let selector: Selector = sel
                .clone()
                .try_into()
                .map_err(|e: kube::core::ParseExpressionError| Error::Selector(e.to_string()))?;
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            for pod in pods
                .list(&ListParams::default().labels_from(&selector))
                .await?
                .items
            {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if pod.metadata.deletion_timestamp.is_some()
                    || matches!(phase, Some("Succeeded" | "Failed"))
                {
                    continue;
                }
                if !selector.matches(pod.labels())
                    || allowed.as_ref().is_some_and(|a| !a.contains(&node))
                {
                    continue;
                }
                out.entry(node).or_default().push(TargetPod {
                    uid: pod.uid().unwrap_or_default(),
                    namespace: ns.to_string(),
                    name: pod.name_any(),
                });
            }
            for pods in out.values_mut() {
                pods.sort();
            }
        }
        None => {
            let nodes = match allowed {
                Some(a) => a,
                None => Api::<Node>::all(ctx.client.clone())
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .map(|n| n.name_any())
                    .collect(),
            };
            for n in nodes {
                out.insert(n, Vec::new());
            }
        }
    }
    Ok(out)
}

fn describe_no_targets(job: &TraceJob) -> String {
    let t = &job.spec.target;
    match &t.pod_selector {
        Some(sel) => {
            let s: Result<Selector, _> = sel.clone().try_into();
            let s = s.map(|s| s.to_string()).unwrap_or_default();
            format!(
                "no pod matching {{{s}}} is scheduled in namespace {}{}",
                job.namespace().unwrap_or_default(),
                if t.node_names.is_some() || t.node_selector.is_some() {
                    " on the selected nodes"
                } else {
                    ""
                }
            )
        }
        None => "no node matches spec.target.nodeNames/nodeSelector".into(),
    }
}

/// The session name: `<job>-<node>`, shortened with a hash when that is not a valid object name.
pub fn session_name(job: &str, node: &str) -> String {
    let full = format!("{job}-{node}");
    if full.len() <= 253 {
        return full;
    }
    format!(
        "{}-{}",
        &full[..200].trim_end_matches(['-', '.']),
        node_label_value(&full)
            .rsplit('-')
            .next()
            .unwrap_or_default()
    )
}

fn session_for(
    job: &TraceJob,
    ns: &str,
    node: &str,
    pods: Vec<TargetPod>,
    deadline: Timestamp,
) -> ProbeSession {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let all_pods = job.spec.target.pod_selector.is_none();
    let spec = ProbeSessionSpec {
        node_name: node.to_string(),
        probe: job.spec.probe,
        params: job.spec.params.clone(),
        deadline: Some(Time(deadline)),
        window: None,
        pods,
        all_pods,
        comms: job.spec.target.comms.clone().unwrap_or_default(),
        thresholds: job.spec.thresholds.clone(),
        output: job.spec.output.clone(),
        storage: job.spec.storage.clone(),
        budget: job.spec.budget.clone(),
        result_prefix: format!(
            "tracejobs/{ns}/{name}-{}/{node}",
            uid.get(..8).unwrap_or(&uid)
        ),
    };
    let mut s = ProbeSession::new(&session_name(&name, node), spec);
    s.metadata.namespace = Some(ns.to_string());
    s.metadata.labels = Some(BTreeMap::from([
        (NODE_LABEL.to_string(), node_label_value(node)),
        (OWNER_UID_LABEL.to_string(), uid),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "sonde-operator".to_string(),
        ),
    ]));
    s.metadata.owner_references = job.controller_owner_ref(&()).map(|o| vec![o]);
    s
}

/// Kubernetes Events for what changed between two statuses.
async fn publish_transitions(
    ctx: &Context,
    job: &TraceJob,
    old: Option<&TraceJobStatus>,
    new: &TraceJobStatus,
) {
    let old_phase = old.map(|s| s.phase);
    let mut events = Vec::new();
    let was = |t: &str| old.is_some_and(|s| sonde_crds::conditions::is_true(&s.conditions, t));
    let now_true = |t: &str| sonde_crds::conditions::is_true(&new.conditions, t);
    let msg = |t: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    use sonde_crds::conditions::types::*;
    if now_true(SCHEDULED) && !was(SCHEDULED) {
        events.push((EventType::Normal, "Scheduled", msg(SCHEDULED)));
    }
    let no_targets = new
        .conditions
        .iter()
        .any(|c| c.type_ == SCHEDULED && c.reason == "NoMatchingPods");
    let had_no_targets = old.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == SCHEDULED && c.reason == "NoMatchingPods")
    });
    if no_targets && !had_no_targets {
        events.push((EventType::Warning, "NoMatchingPods", msg(SCHEDULED)));
    }
    if now_true(ATTACHED) && !was(ATTACHED) {
        events.push((EventType::Normal, "Attached", msg(ATTACHED)));
    }
    if new.counts.breaches > old.map(|s| s.counts.breaches).unwrap_or(0) && !was(THRESHOLD_BREACHED)
    {
        events.push((
            EventType::Warning,
            "ThresholdBreached",
            msg(THRESHOLD_BREACHED),
        ));
    }
    if old_phase != Some(new.phase) {
        match new.phase {
            Phase::Succeeded => events.push((EventType::Normal, "Completed", msg(COMPLETE))),
            Phase::Failed => events.push((EventType::Warning, "Failed", msg(FAILED))),
            _ => {}
        }
    }
    let reference = job.object_ref(&());
    for (type_, reason, note) in events {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "publishing an Event");
        }
    }
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}
