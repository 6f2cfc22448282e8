//! The agent's control loop: its node's ProbeSessions (label `sonde.dev/node=<node>`) and Pods
//! (`spec.nodeName=<node>`) are the only things it watches. Each live session is a task; pod changes
//! recompute every session's targets and the task updates its kernel filter.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{Config, Event};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use sonde_crds::{NODE_LABEL, Phase, ProbeSession, ProbeSessionSpec, node_label_value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::sync::Arc;

use sonde_telemetry::Health;

use crate::cgroups::PodCgroups;
use crate::error::Result;
use crate::limits::{Limits, Slots, SpoolGates};
use crate::metrics::AgentMetrics;
use crate::session::{self, SessionJob, Targets};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    /// The cgroup v2 mount where the kubelet's `kubepods` hierarchy lives.
    pub cgroup_root: PathBuf,
    /// Local results before upload (kept when an upload fails).
    pub spool: PathBuf,
    /// The admin's storage locations: the default and the named ones sessions may pick.
    pub storage: crate::storage::Locations,
    /// Name counterparts outside the traced pods (host tasks) only as `[outside]`.
    pub redact_outside: bool,
    /// What sessions may cost this node, whatever their specs ask.
    pub limits: Limits,
    /// Namespaces whose sessions may trace the whole node.
    pub node_wide: sonde_crds::NodeWide,
}

pub struct Agent {
    client: Client,
    cfg: AgentConfig,
    metrics: AgentMetrics,
    health: Arc<Health>,
    cgroups: PodCgroups,
    live: HashMap<String, Live>,
    /// Sessions this process ran to the end; never started again even if their final status write was lost.
    done: HashSet<String>,
    /// Sessions whose probe changed, to start again once the previous probe's task has published and let go of
    /// its slot (starting at once would take a second slot, refused on a node at capacity).
    reloads: HashMap<String, ProbeSession>,
    /// Why one-shot sessions must stop now: set while this node is cordoned (a drain is under way).
    drained: watch::Sender<Option<String>>,
    /// One per running session, `limits.max_sessions` in all and `max_sessions_per_namespace` per namespace.
    slots: Slots,
    /// Closed by the uploader while results waiting for the store fill the spool, or a namespace's share of it:
    /// those sessions keep no new events.
    spool_gates: SpoolGates,
    /// Spool directories the running sessions write in.
    held: crate::outbox::Live,
}

struct Live {
    /// The session's own namespace: the only one its target pods may be in.
    namespace: String,
    spec: ProbeSessionSpec,
    targets: watch::Sender<Targets>,
    deleted: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Agent {
    pub fn new(
        client: Client,
        cfg: AgentConfig,
        metrics: AgentMetrics,
        health: Arc<Health>,
    ) -> Agent {
        Agent {
            metrics,
            health,
            cgroups: PodCgroups::new(&cfg.cgroup_root),
            slots: Slots::new(&cfg.limits),
            spool_gates: SpoolGates::default(),
            held: Arc::default(),
            client,
            cfg,
            live: HashMap::new(),
            done: HashSet::new(),
            reloads: HashMap::new(),
            drained: watch::channel(None).0,
        }
    }

    pub async fn run(mut self) -> Result<()> {
        check_bpf_stats();
        // Before any session runs: the policy windows a previous process left in the spool are sealed and
        // handed to the uploader, which retries every set until the store takes it. Its traces wait for their
        // sessions to resume them (the uploader seals those no session takes back).
        crate::outbox::seal_cut_off(&self.cfg.spool);
        let uploader = crate::outbox::Uploader::new(
            self.cfg.spool.clone(),
            self.client.clone(),
            self.metrics.clone(),
            self.spool_gates.clone(),
            self.cfg.limits,
            self.cfg.storage.default_url().to_string(),
            self.held.clone(),
        );
        tokio::spawn(uploader.run());
        let node = self.cfg.node.clone();
        let pods: Api<Pod> = Api::all(self.client.clone());
        let (pod_store, writer) = reflector::store::<Pod>();
        let mut pod_events = reflector(
            writer,
            watcher(
                pods,
                Config::default().fields(&format!("spec.nodeName={node}")),
            ),
        )
        .default_backoff()
        .boxed();
        let sessions: Api<ProbeSession> = Api::all(self.client.clone());
        let mut session_events = watcher(
            sessions,
            Config::default().labels(&format!("{NODE_LABEL}={}", node_label_value(&node))),
        )
        .default_backoff()
        .boxed();
        // Its own Node only: a cordon (the first step of `kubectl drain`) ends one-shot sessions here.
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut node_events = watcher(
            nodes,
            Config::default().fields(&format!("metadata.name={node}")),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        let mut listed: Option<HashSet<String>> = None;
        let mut reap = tokio::time::interval(Duration::from_millis(500));
        tracing::info!(%node, cgroup_root = %self.cfg.cgroup_root.display(), "agent started");
        loop {
            tokio::select! {
                ev = session_events.next() => match ev {
                    Some(Ok(Event::Init)) => listed = Some(HashSet::new()),
                    Some(Ok(Event::InitApply(s))) => {
                        if let Some(l) = listed.as_mut() { l.insert(s.uid().unwrap_or_default()); }
                        self.upsert(s, &pod_store);
                    }
                    Some(Ok(Event::InitDone)) => {
                        // Sessions deleted while the watch was down get no Delete event.
                        let seen = listed.take().unwrap_or_default();
                        let gone: Vec<String> = self.live.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                        for uid in gone { self.cancel(&uid); }
                        self.health.set_ready(true);
                    }
                    Some(Ok(Event::Apply(s))) => self.upsert(s, &pod_store),
                    Some(Ok(Event::Delete(s))) => self.cancel(&s.uid().unwrap_or_default()),
                    Some(Err(e)) => tracing::warn!(error = %e, "session watch"),
                    None => return Ok(()),
                },
                ev = node_events.next() => match ev {
                    Some(Ok(n)) => self.node_changed(&n),
                    Some(Err(e)) => tracing::warn!(error = %e, "node watch"),
                    None => return Ok(()),
                },
                ev = pod_events.next() => match ev {
                    Some(Ok(_)) => self.retarget(&pod_store),
                    Some(Err(e)) => tracing::warn!(error = %e, "pod watch"),
                    None => return Ok(()),
                },
                _ = reap.tick() => {
                    let finished: Vec<String> =
                        self.live.iter().filter(|(_, l)| l.task.is_finished()).map(|(k, _)| k.clone()).collect();
                    for uid in finished {
                        self.live.remove(&uid);
                        self.metrics.finished.inc();
                        match self.reloads.remove(&uid) {
                            Some(s) => self.start(s, &pod_store, None),
                            None => {
                                self.done.insert(uid);
                            }
                        }
                    }
                    self.metrics.running.set(self.live.len() as i64);
                    // Containers can start after their pod event; cgroup directories are not watched.
                    self.retarget(&pod_store);
                }
            }
        }
    }

    fn upsert(&mut self, s: ProbeSession, pods: &Store<Pod>) {
        let uid = s.uid().unwrap_or_default();
        if s.spec.node_name != self.cfg.node || self.done.contains(&uid) {
            return;
        }
        if let Some(pending) = self.reloads.get_mut(&uid) {
            *pending = s; // the newest spec is the one to start
            return;
        }
        if let Some(live) = self.live.get_mut(&uid) {
            if live.spec == s.spec {
                return;
            }
            if same_probe(&live.spec, &s.spec) {
                live.spec = s.spec.clone();
                let t = targets(&self.cgroups, &live.namespace, &live.spec, pods);
                live.targets
                    .send_if_modified(|old| replace_if_changed(old, t));
                return;
            }
            // The probe itself changed (a policy edited in Git): reload this session, and only this one.
            tracing::info!(session = %s.name_any(), "spec changed; reloading the probe");
            let _ = live.deleted.send(true);
            self.reloads.insert(uid, s);
            return;
        }
        let phase = s.status.as_ref().map(|st| st.phase).unwrap_or_default();
        if phase.is_finished() {
            return;
        }
        // Running with no task here: a previous agent process had it and died with its kernel objects.
        let resumed_note = (phase == Phase::Running).then(|| {
            format!(
                "the agent restarted at {} and attached again",
                k8s_openapi::jiff::Timestamp::now()
            )
        });
        self.start(s, pods, resumed_note);
    }

    fn start(&mut self, s: ProbeSession, pods: &Store<Pod>, resumed_note: Option<String>) {
        let uid = s.uid().unwrap_or_default();
        let namespace = s.namespace().unwrap_or_default();
        let t = targets(&self.cgroups, &namespace, &s.spec, pods);
        let (targets_tx, targets_rx) = watch::channel(t);
        let (deleted_tx, deleted_rx) = watch::channel(false);
        let storage = self.cfg.storage.destination(&s.spec, &namespace);
        let node_wide_allowed = self.cfg.node_wide.allows(&namespace);
        let job = SessionJob {
            api: Api::namespaced(self.client.clone(), &namespace),
            name: s.name_any(),
            uid: uid.clone(),
            namespace: namespace.clone(),
            generation: s.metadata.generation,
            spec: s.spec.clone(),
            spool: self.cfg.spool.clone(),
            storage,
            redact_outside: self.cfg.redact_outside,
            limits: self.cfg.limits,
            node_wide_allowed,
            spool_gate: self.spool_gates.of(&namespace),
            held: self.held.clone(),
            metrics: self.metrics.clone(),
            slot: self.slots.take(&namespace),
            resumed_note,
        };
        tracing::info!(session = %job.name, namespace = %job.namespace, probe = %s.spec.probe, "starting session");
        if bpf_stats_enabled() == Some(false) {
            tracing::warn!(
                session = %job.name,
                namespace = %job.namespace,
                max_kernel_cpu_percent = s.spec.budget.max_kernel_cpu_percent,
                "kernel.bpf_stats_enabled=0: this session's overhead budget is NOT enforced"
            );
        }
        let task = tokio::spawn(session::run(
            job,
            targets_rx,
            deleted_rx,
            self.drained.subscribe(),
        ));
        self.metrics.started.inc();
        self.live.insert(
            uid,
            Live {
                namespace,
                spec: s.spec,
                targets: targets_tx,
                deleted: deleted_tx,
                task,
            },
        );
    }

    fn node_changed(&mut self, node: &Node) {
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let node = node.name_any();
        self.drained
            .send_if_modified(|why| match (cordoned, why.is_some()) {
                (true, false) => {
                    tracing::info!(%node, "node cordoned: one-shot sessions stop and report");
                    *why = Some(format!(
                        "node {node} was cordoned at {}",
                        k8s_openapi::jiff::Timestamp::now()
                    ));
                    true
                }
                (false, true) => {
                    tracing::info!(%node, "node uncordoned");
                    *why = None;
                    true
                }
                _ => false,
            });
    }

    fn cancel(&mut self, uid: &str) {
        self.reloads.remove(uid);
        if let Some(live) = self.live.get(uid) {
            let _ = live.deleted.send(true);
        }
    }

    fn retarget(&mut self, pods: &Store<Pod>) {
        for live in self.live.values() {
            let t = targets(&self.cgroups, &live.namespace, &live.spec, pods);
            live.targets
                .send_if_modified(|old| replace_if_changed(old, t));
        }
    }
}

/// The host sysctl that makes the kernel count each BPF program's run time (`bpf_prog_info.run_time_ns`), which the
/// overhead budget is computed from. A host-wide switch, not namespaced; writing it needs CAP_SYS_ADMIN.
pub const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether the kernel counts BPF run time (None: the sysctl cannot be read, e.g. a kernel older than 5.1).
pub fn bpf_stats_enabled() -> Option<bool> {
    std::fs::read_to_string(BPF_STATS_SYSCTL)
        .ok()
        .map(|v| v.trim() != "0")
}

/// Says at start whether overhead budgets can be enforced. /proc/sys is read-only in a container: the chart sets
/// the sysctl from a short-lived init container (agent.bpfStats=initContainer, `sonde-agent enable-bpf-stats`);
/// an agent run as root outside a container sets it itself.
fn check_bpf_stats() {
    if bpf_stats_enabled() == Some(true) {
        tracing::info!("kernel.bpf_stats_enabled=1: overhead budgets are enforced");
        return;
    }
    match std::fs::write(BPF_STATS_SYSCTL, "1") {
        Ok(()) => tracing::info!("set kernel.bpf_stats_enabled=1: overhead budgets are enforced"),
        Err(e) => tracing::warn!(
            error = %e,
            "kernel.bpf_stats_enabled is off and cannot be set from here: probes' kernel CPU time is not counted \
             and overhead budgets (spec.budget.maxKernelCpuPercent) are NOT enforced; set agent.bpfStats=initContainer \
             in the chart or `sysctl -w kernel.bpf_stats_enabled=1` on the node"
        ),
    }
}

/// Whether two specs load the same probe the same way, differing at most in which pods they target.
fn same_probe(a: &ProbeSessionSpec, b: &ProbeSessionSpec) -> bool {
    let strip = |s: &ProbeSessionSpec| ProbeSessionSpec {
        pods: vec![],
        ..s.clone()
    };
    strip(a) == strip(b)
}

fn replace_if_changed(old: &mut Targets, new: Targets) -> bool {
    if *old == new {
        return false;
    }
    *old = new;
    true
}

/// The session's target pods as cgroup ids and network namespaces, from the pods this node runs. Only pods of
/// the session's own namespace (`ns`) are traced, whatever its spec names: a session is a namespace's, and a spec
/// naming another namespace's pod is not one the operator writes.
pub fn targets(
    cgroups: &PodCgroups,
    ns: &str,
    spec: &ProbeSessionSpec,
    pods: &Store<Pod>,
) -> Targets {
    if spec.all_pods {
        return Targets::default();
    }
    let mut t = Targets {
        cgroups: Some(Vec::new()),
        ..Default::default()
    };
    let mut a_pod: Option<PathBuf> = None;
    for target in &spec.pods {
        if target.namespace != ns {
            t.foreign
                .push(format!("{}/{}", target.namespace, target.name));
            continue;
        }
        let pod = pods
            .get(&ObjectRef::new(&target.name).within(&target.namespace))
            .filter(|p| p.metadata.uid.as_deref() == Some(target.uid.as_str()));
        let resolved = pod.map(|p| cgroups.resolve(&p)).unwrap_or_default();
        let Some(dir) = resolved.dir else {
            t.unresolved
                .push(format!("{}/{}", target.namespace, target.name));
            continue;
        };
        t.cgroups.get_or_insert_default().extend(resolved.ids);
        a_pod.get_or_insert_with(|| dir.clone());
        if let Some(ns) = netns_of(&dir)
            && !t.netns.contains(&ns)
        {
            t.netns.push(ns);
        }
    }
    if let Some(ids) = t.cgroups.as_mut() {
        ids.sort_unstable();
        ids.dedup();
    }
    t.pods_root = cgroups.pods_root(a_pod.as_deref());
    t
}

/// The network namespace of any process in the pod's cgroup subtree (all containers of a pod share one).
fn netns_of(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    if let Some(pid) = procs.lines().next() {
        return std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .ok()
            .map(|m| m.ino() as u32);
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .find_map(|e| netns_of(&e.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session traces its own namespace's pods only, whatever its spec names: another namespace's pod on this
    /// node, resolvable here, is listed as not traced and its cgroups are not in the filter.
    #[test]
    fn a_session_never_traces_another_namespaces_pod() {
        let root = tempfile::tempdir().unwrap();
        let (mine, theirs) = ("11111111-aaaa", "22222222-bbbb");
        for uid in [mine, theirs] {
            std::fs::create_dir_all(root.path().join(format!("kubepods/besteffort/pod{uid}")))
                .unwrap();
        }
        let (store, mut writer) = reflector::store::<Pod>();
        writer.apply_watcher_event(&Event::Init);
        for (ns, name, uid) in [("team-a", "a", mine), ("team-b", "b", theirs)] {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "uid": uid},
                "status": {"qosClass": "BestEffort"},
            }))
            .unwrap();
            writer.apply_watcher_event(&Event::InitApply(pod));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let spec: ProbeSessionSpec = serde_json::from_value(serde_json::json!({
            "nodeName": "n", "probe": "wakeups", "resultPrefix": "x",
            "pods": [{"uid": mine, "namespace": "team-a", "name": "a"},
                     {"uid": theirs, "namespace": "team-b", "name": "b"}],
        }))
        .unwrap();
        let cgroups = PodCgroups::new(root.path());
        let t = targets(&cgroups, "team-a", &spec, &store);
        let ino = |uid: &str| {
            std::fs::metadata(root.path().join(format!("kubepods/besteffort/pod{uid}")))
                .unwrap()
                .ino()
        };
        assert_eq!(t.cgroups, Some(vec![ino(mine)]), "{t:?}");
        assert_eq!(t.foreign, ["team-b/b"]);
        let msg = session::unresolved_message(&t).unwrap();
        assert!(
            msg.contains("outside the session's namespace: team-b/b"),
            "{msg}"
        );
    }
}
