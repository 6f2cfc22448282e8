//! Where a TraceJob or ProbePolicy runs, and the per-node ProbeSessions that carry it there.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};
use sonde_crds::{
    NODE_LABEL, NodeWide, OWNER_UID_LABEL, ProbeSession, ProbeSessionSpec, Target, TargetPod,
    node_label_value,
};

use crate::conditions::Reason;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::rollup::Unplaced;

/// Why a target may not be placed from namespace `ns`: a whole node (no `podSelector`: every process on it,
/// other namespaces' pods and the host included) where the admin did not allow it. The chart's admission policy
/// checks the requesting user too; this holds even where that policy is not installed.
pub fn node_wide_refusal(allowed: &NodeWide, t: &Target, ns: &str) -> Option<Unplaced> {
    if t.pod_selector.is_some() || allowed.allows(ns) {
        return None;
    }
    Some(Unplaced {
        reason: Reason::NodeWideNotAllowed,
        message: format!(
            "spec.target has no podSelector, so it would trace every process on the node(s) (other \
             namespaces' pods and the host included), and namespace {ns} is not allowed to: add a podSelector \
             to trace this namespace's pods, or ask a cluster admin to allow node-wide targets for {ns} \
             (Helm value tenancy.nodeWideNamespaces, and the sonde-node-wide-tracer role for you)"
        ),
        refused: true,
    })
}

pub async fn owned_sessions(api: &Api<ProbeSession>, uid: &str) -> Result<Vec<ProbeSession>> {
    let lp = ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}"));
    Ok(api.list(&lp).await?.items)
}

/// Where a target runs: node → target pods. An empty pod list with a node means the whole node.
pub async fn place(
    t: &Target,
    ctx: &Context,
    ns: &str,
) -> Result<BTreeMap<String, Vec<TargetPod>>> {
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
            let selector: Selector = sel.clone().try_into().map_err(Error::Selector)?;
            for pod in ctx.pods.state() {
                if pod.namespace().as_deref() != Some(ns) {
                    continue;
                }
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

/// Why a trace may not be placed at all: a node-wide target its namespace may not have, or storage that is not
/// one of the admin's locations. `locations` is None when the operator was not told the locations (the agents
/// still refuse unknown ones, later).
pub fn refusal(
    ctx: &Context,
    t: &Target,
    storage: &Option<sonde_crds::Storage>,
    ns: &str,
) -> Option<Unplaced> {
    if let Some(why) = node_wide_refusal(&ctx.node_wide, t, ns) {
        return Some(why);
    }
    let refuse = |message: String| {
        Some(Unplaced {
            reason: Reason::StorageNotAllowed,
            message,
            refused: true,
        })
    };
    let storage = storage.as_ref()?;
    if let Some(url) = &storage.url {
        return refuse(format!(
            "spec.storage.url ({url}) is no longer accepted: name a storage location the cluster admin defined \
             (spec.storage.location)"
        ));
    }
    match (&storage.location, &ctx.storage_locations) {
        (Some(name), Some(known)) if !known.contains(name) => refuse(format!(
            "storage location {name:?} is not defined (defined: {}; Helm value storage.locations)",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        )),
        _ => None,
    }
}

/// Nodes cordoned (`spec.unschedulable`, the first step of `kubectl drain`): a one-shot trace places no new
/// session there, and the agent there stops the ones it runs.
pub async fn cordoned_nodes(ctx: &Context) -> Result<BTreeSet<String>> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let lp = ListParams::default().fields("spec.unschedulable=true");
    Ok(nodes
        .list(&lp)
        .await?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect())
}

pub fn describe_no_targets(t: &Target, ns: &str) -> String {
    match &t.pod_selector {
        Some(sel) => {
            let s: Result<Selector, _> = sel.clone().try_into();
            let s = s.map(|s| s.to_string()).unwrap_or_default();
            format!(
                "no pod matching {{{s}}} is scheduled in namespace {}{}",
                ns,
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

/// The probe-related part of a session spec, shared by TraceJobs and ProbePolicies.
pub struct Probe<'a> {
    pub probe: sonde_crds::ProbeName,
    pub params: &'a Option<sonde_crds::ProbeParams>,
    pub target: &'a Target,
    pub thresholds: &'a [sonde_crds::Threshold],
    pub output: &'a sonde_crds::Output,
    pub storage: &'a Option<sonde_crds::Storage>,
    pub budget: &'a sonde_crds::Budget,
}

/// One node's ProbeSession of `owner` (a TraceJob or ProbePolicy): named `<owner>-<node>`, labelled with its
/// node and owner uid, controlled by the owner. `kind` is the owner's kind in the results layout.
pub fn session_for<K: Resource<DynamicType = ()>>(
    owner: &K,
    kind: sonde_crds::results::OwnerKind,
    p: &Probe,
    node: &str,
    pods: Vec<TargetPod>,
    deadline: Option<Timestamp>,
    window: Option<String>,
) -> ProbeSession {
    let name = owner.name_any();
    let ns = owner.namespace().unwrap_or_default();
    let uid = owner.uid().unwrap_or_default();
    let spec = ProbeSessionSpec {
        node_name: node.to_string(),
        probe: p.probe,
        params: p.params.clone(),
        deadline: deadline.map(Time),
        window,
        pods,
        all_pods: p.target.pod_selector.is_none(),
        comms: p.target.comms.clone().unwrap_or_default(),
        thresholds: p.thresholds.to_vec(),
        output: p.output.clone(),
        storage: p.storage.clone(),
        budget: p.budget.clone(),
        result_prefix: sonde_crds::results::ResultsPath::new(kind, &ns, &name, &uid, node)
            .to_string(),
    };
    let mut s = ProbeSession::new(&session_name(&name, node), spec);
    s.metadata.namespace = Some(ns);
    s.metadata.labels = Some(BTreeMap::from([
        (NODE_LABEL.to_string(), node_label_value(node)),
        (OWNER_UID_LABEL.to_string(), uid),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "sonde-operator".to_string(),
        ),
    ]));
    s.metadata.owner_references = owner.controller_owner_ref(&()).map(|o| vec![o]);
    s
}

/// Applies `session` for the owner with `uid`, unless a session of that name belongs to another owner (a TraceJob
/// and a ProbePolicy of one name in one namespace would both name theirs `<name>-<node>`): then nothing is
/// written and the refusal names that owner. Only a session the owner does not have yet (`owned`) is looked up.
pub async fn apply_session(
    api: &Api<ProbeSession>,
    session: &ProbeSession,
    uid: &str,
    owned: &[ProbeSession],
) -> Result<Option<Unplaced>> {
    let name = session.name_any();
    let have = owned.iter().find(|s| s.name_any() == name);
    // Already as asked: no write (a policy reconciles on every session status change; re-applying each of its
    // sessions every time cost the API server a write per node per reconcile).
    if have.is_some_and(|have| {
        have.spec == session.spec
            && session
                .labels()
                .iter()
                .all(|(k, v)| have.labels().get(k) == Some(v))
            && have.owner_references() == session.owner_references()
    }) {
        return Ok(None);
    }
    if have.is_none()
        && let Some(other) = api.get_opt(&name).await?
        && other.labels().get(OWNER_UID_LABEL).map(String::as_str) != Some(uid)
    {
        let owner = other
            .owner_references()
            .first()
            .map(|o| format!("{} {}", o.kind, o.name))
            .unwrap_or_else(|| "another object".into());
        return Ok(Some(Unplaced {
            reason: Reason::SessionNameTaken,
            message: format!(
                "ProbeSession {name} already belongs to {owner} in this namespace (sessions are named \
                 <name>-<node>): rename one of the two"
            ),
            refused: true,
        }));
    }
    let pp = PatchParams::apply(crate::owner::MANAGER).force();
    api.patch(&name, &pp, &Patch::Apply(session)).await?;
    Ok(None)
}

/// Deletes every session of the owner with this uid.
pub async fn delete_sessions(api: &Api<ProbeSession>, uid: &str) -> Result<()> {
    let lp = ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}"));
    api.delete_collection(&DeleteParams::background(), &lp)
        .await?;
    Ok(())
}
