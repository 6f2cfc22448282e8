//! What the TraceJob and ProbePolicy controllers share: both own one ProbeSession per node, so the controller
//! wiring, the finalizer and backoff around a reconcile, the error policy, applying the sessions and patching
//! status are written once here, for any [`Owner`].
//!
//! Each reconciler (`tracejob::apply`, `policy::apply`) is the same three steps, a function of that name each:
//! 1. `place`: the sessions per node the owner asks for now, applied (or deleted), giving [`Placed`];
//! 2. `roll_up`: the sessions' statuses into the owner's status (pure, [`crate::rollup`]);
//! 3. `announce`: the owner's Events for what changed, then its status by server-side apply ([`announce`]),
//!    its conditions set with the reasons of [`crate::conditions`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sonde_crds::{
    ProbePolicy, ProbePolicyStatus, ProbeSession, TargetPod, TraceJob, TraceJobStatus,
};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::placement::{self, Probe};
use crate::pods::PodEvents;
use crate::rollup::Unplaced;

/// Field manager of everything the operator writes.
pub const MANAGER: &str = "sonde-operator";

/// A kind that owns ProbeSessions: a TraceJob or a ProbePolicy.
pub trait Owner:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    type Status: Serialize + PartialEq;
    /// Metrics label (`tracejob`, `probepolicy`).
    const LABEL: &'static str;
    /// The finalizer that deletes the sessions before the owner goes.
    const FINALIZER: &'static str;
    /// Its kind in the results layout (`sonde_vocab::results`).
    const RESULTS_KIND: sonde_crds::results::OwnerKind;

    /// The probe part of the owner's spec, which every session of it carries.
    fn probe(&self) -> Probe<'_>;
    /// Its status as the API server last had it.
    fn status(&self) -> Option<&Self::Status>;
    /// Whether a pod event in its namespace may change what it traces (a finished job's may not).
    fn follows_pods(&self) -> bool;
}

/// The probe part of a TraceJob's or ProbePolicy's spec: the two specs name these fields alike.
macro_rules! probe_of {
    ($spec:expr) => {
        Probe {
            probe: $spec.probe,
            params: &$spec.params,
            target: &$spec.target,
            thresholds: &$spec.thresholds,
            output: &$spec.output,
            storage: &$spec.storage,
            budget: &$spec.budget,
        }
    };
}

impl Owner for TraceJob {
    type Status = TraceJobStatus;
    const LABEL: &'static str = "tracejob";
    const FINALIZER: &'static str = "sonde.dev/sessions";
    const RESULTS_KIND: sonde_crds::results::OwnerKind = sonde_crds::results::OwnerKind::TraceJob;

    fn probe(&self) -> Probe<'_> {
        probe_of!(self.spec)
    }

    fn status(&self) -> Option<&TraceJobStatus> {
        self.status.as_ref()
    }

    fn follows_pods(&self) -> bool {
        !self.status.as_ref().is_some_and(|s| s.phase.is_finished())
    }
}

impl Owner for ProbePolicy {
    type Status = ProbePolicyStatus;
    const LABEL: &'static str = "probepolicy";
    const FINALIZER: &'static str = "sonde.dev/policy-sessions";
    const RESULTS_KIND: sonde_crds::results::OwnerKind =
        sonde_crds::results::OwnerKind::ProbePolicy;

    fn probe(&self) -> Probe<'_> {
        probe_of!(self.spec)
    }

    fn status(&self) -> Option<&ProbePolicyStatus> {
        self.status.as_ref()
    }

    fn follows_pods(&self) -> bool {
        true
    }
}

/// Runs the controller of `K` until shutdown: it reconciles on changes to the owner, to its sessions, and to
/// pods of its namespace (`pods`, its stream from the operator's one pod watch), so a pod that starts or stops
/// matching changes what is traced.
pub async fn run<K, R, F>(ctx: Arc<Context>, pods: PodEvents, reconcile: R)
where
    K: Owner,
    R: FnMut(Arc<K>, Arc<Context>) -> F + Send + 'static,
    F: Future<Output = Result<Action>> + Send + 'static,
{
    // Placement reads pods from the store: wait for its first full list.
    if ctx.pods.wait_until_ready().await.is_err() {
        tracing::error!("the pod watch ended before its first list");
        return;
    }
    let client = ctx.client.clone();
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let owners = controller.store();
    controller
        .owns(Api::<ProbeSession>::all(client), watcher::Config::default())
        .watches_stream(pods, move |pod: Pod| {
            let ns = pod.namespace();
            owners
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.follows_pods())
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy::<K>, ctx)
        .for_each(crate::context::log_reconcile)
        .await;
}

/// The reconcile of any owner: the finalizer (`apply` while it exists, `cleanup` when it is being deleted),
/// a timer for the metrics, and the backoff reset on success.
pub async fn reconcile<K, A, AF>(obj: Arc<K>, ctx: Arc<Context>, apply: A) -> Result<Action>
where
    K: Owner,
    A: FnOnce(Arc<K>, Arc<Context>, String) -> AF,
    AF: Future<Output = Result<Action>>,
{
    let key = obj.uid().unwrap_or_default();
    let ns = obj
        .namespace()
        .ok_or_else(|| Error::NoNamespace(obj.name_any()))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let _timer = ctx.metrics.reconcile_started(K::LABEL);
    let name = obj.name_any();
    let finalized = finalizer(&api, K::FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(o) => apply(o, ctx.clone(), ns.clone()).await,
            // Deleting the owner detaches at once: its sessions go now, not whenever the garbage collector
            // gets to them.
            Finalizer::Cleanup(o) => {
                let sessions: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), &ns);
                placement::delete_sessions(&sessions, &o.uid().unwrap_or_default()).await?;
                Ok(Action::await_change())
            }
        }
    });
    // A bug a spec or status can reach must cost that object its reconcile, not every tenant the operator: a
    // panic here would unwind through the controller stream and end the process (and the standby would pick up
    // the same object and die too). It is counted and retried with backoff like any other failure.
    let result = match AssertUnwindSafe(finalized).catch_unwind().await {
        Ok(r) => r.map_err(Error::from),
        Err(panic) => Err(Error::Panicked {
            object: format!("{ns}/{name}"),
            message: panic_message(&*panic),
        }),
    };
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    result
}

/// The text a panic carried (`panic!` with a literal or a format).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn error_policy<K: Owner>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(kind = K::LABEL, name = %obj.name_any(), error = %err, "reconcile failed");
    ctx.metrics.reconcile_failed(K::LABEL, err.label());
    Action::requeue(ctx.backoff.failed(&obj.uid().unwrap_or_default()))
}

/// What the place step leaves for the roll-up: the owner's sessions as they are now, and why it has none where it
/// has none.
pub struct Placed {
    pub sessions: Vec<ProbeSession>,
    /// Why nothing is placed (None when sessions exist or were just made).
    pub no_targets: Option<Unplaced>,
}

/// Applies one session per placed node (server-side apply: a restarted operator converges on the same objects).
/// Stops at the first refusal (a session name another owner holds) and returns it.
pub async fn apply_sessions<K: Owner>(
    api: &Api<ProbeSession>,
    owner: &K,
    placed: BTreeMap<String, Vec<TargetPod>>,
    deadline: Option<Timestamp>,
    window: Option<&str>,
    owned: &[ProbeSession],
) -> Result<Option<Unplaced>> {
    let uid = owner.uid().unwrap_or_default();
    let probe = owner.probe();
    for (node, pods) in placed {
        let session = placement::session_for(
            owner,
            K::RESULTS_KIND,
            &probe,
            &node,
            pods,
            deadline,
            window.map(str::to_string),
        );
        if let Some(why) = placement::apply_session(api, &session, &uid, owned).await? {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// An Event about an owner: its type, reason ([`crate::conditions::EventReason`], or the condition's own reason
/// of a Warning) and note.
pub type Announcement<'a> = (EventType, &'a str, String);

/// The announce step: publishes `events` about the owner, then writes `status` unless it is the one the owner
/// already has.
pub async fn announce<K: Owner>(
    ctx: &Context,
    api: &Api<K>,
    owner: &K,
    events: Vec<Announcement<'_>>,
    status: &K::Status,
) -> Result<()> {
    let reference = owner.object_ref(&());
    for (type_, reason, note) in events {
        ctx.publish(&reference, type_, reason, note).await;
    }
    let old = owner.status();
    if old == Some(status) {
        return Ok(());
    }
    // Counts move with every session's report: a change of counts alone is written at most every
    // OWNER_COUNTS_EVERY per owner (the next reconcile after it writes it; a running owner requeues within 30 s),
    // anything else at once.
    let uid = owner.uid().unwrap_or_default();
    if old.is_some_and(|old| without_counts(old) == without_counts(status))
        && ctx
            .status_written(&uid)
            .is_some_and(|at| at.elapsed() < OWNER_COUNTS_EVERY)
    {
        return Ok(());
    }
    patch_status(api, &owner.name_any(), status).await?;
    ctx.wrote_status(&uid);
    Ok(())
}

/// How often an owner's status is written when only its counts changed.
pub const OWNER_COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A status as JSON without any `counts` (the owner's, and each node's).
fn without_counts(status: &impl serde::Serialize) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("counts");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(status).unwrap_or_default();
    strip(&mut v);
    v
}

/// Writes the owner's status by server-side apply, as the operator's field manager.
pub async fn patch_status<K: Owner>(api: &Api<K>, name: &str, status: &K::Status) -> Result<()> {
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod counts_tests {
    use super::without_counts;

    #[test]
    fn a_change_of_counts_alone_is_told_apart_from_any_other() {
        let st = |captured: u64, phase: &str| {
            serde_json::json!({"phase": phase, "counts": {"captured": captured},
                               "nodeResults": [{"node": "a", "counts": {"captured": captured}}]})
        };
        assert_eq!(
            without_counts(&st(1, "Running")),
            without_counts(&st(9, "Running"))
        );
        assert_ne!(
            without_counts(&st(1, "Running")),
            without_counts(&st(1, "Succeeded"))
        );
    }
}
