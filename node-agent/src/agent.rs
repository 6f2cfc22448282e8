//! The agent's control loop: its node's ProbeSessions (label `sonde.dev/node=<node>`) and Pods
//! (`spec.nodeName=<node>`) are the only things it watches. Each live session is a task; pod changes
//! recompute every session's targets and the task updates its kernel filter.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
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
    /// The agent's own namespace, where its node's Lease lives (`crate::liveness`).
    pub namespace: String,
    /// Who holds the Lease: the agent's pod.
    pub identity: String,
    /// The cgroup v2 mount where the kubelet's `kubepods` hierarchy lives.
    pub cgroup_root: PathBuf,
    /// Local results before upload (kept when an upload fails).
    pub spool: PathBuf,
    /// The admin's storage locations: the default and the named ones sessions may pick.
    pub storage: crate::results::locations::Locations,
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
    /// The node's share of status writes that can wait, shared by its sessions.
    status_share: crate::session::status_share::StatusShare,
    /// Closed by the uploader while results waiting for the store fill the spool, or a namespace's share of it:
    /// those sessions keep no new events.
    spool_gates: SpoolGates,
    /// Spool directories the running sessions write in.
    held: crate::results::spool::Live,
    /// What runs a session's task once this loop starts it.
    run_session: RunSession,
}

/// Runs one session's task, given its job and its signals (targets, deleted, drained): [`session::run`], which
/// attaches to the kernel; a stand-in in the tests of the watch loop, which run without one.
pub(crate) type RunSession = Arc<
    dyn Fn(
            SessionJob,
            watch::Receiver<Targets>,
            watch::Receiver<bool>,
            watch::Receiver<Option<String>>,
        ) -> BoxFuture<'static, ()>
        + Send
        + Sync,
>;

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
            status_share: Default::default(),
            spool_gates: SpoolGates::default(),
            held: Arc::default(),
            client,
            cfg,
            live: HashMap::new(),
            done: HashSet::new(),
            reloads: HashMap::new(),
            drained: watch::channel(None).0,
            run_session: Arc::new(|job, targets, deleted, drained| {
                Box::pin(session::run(job, targets, deleted, drained))
            }),
        }
    }

    /// An agent whose sessions run without a kernel, each counting `rate` events per second
    /// ([`crate::session::simulated`]): one of the fleet harness's many agents in one process.
    pub fn simulated(
        client: Client,
        cfg: AgentConfig,
        metrics: AgentMetrics,
        health: Arc<Health>,
        rate: u64,
    ) -> Agent {
        let mut agent = Agent::new(client, cfg, metrics, health);
        agent.run_session = crate::session::simulated::runner(rate);
        agent
    }

    /// [`Agent::run`] for a simulated agent: its Lease and its session watch, as a real agent's; no kernel
    /// settings, spool or uploader.
    pub async fn run_simulated(self) -> Result<()> {
        self.hold_lease();
        self.watch().await
    }

    fn hold_lease(&self) {
        tokio::spawn(crate::liveness::hold(
            kube::Api::namespaced(self.client.clone(), &self.cfg.namespace),
            self.cfg.node.clone(),
            self.cfg.identity.clone(),
            self.metrics.clone(),
        ));
    }

    pub async fn run(self) -> Result<()> {
        check_bpf_stats();
        // Before any session runs: the policy windows a previous process left in the spool are sealed and
        // handed to the uploader, which retries every set until the store takes it. Its traces wait for their
        // sessions to resume them (the uploader seals those no session takes back).
        crate::results::recovery::seal_cut_off(&self.cfg.spool);
        let uploader = crate::results::uploader::Uploader::new(
            self.cfg.spool.clone(),
            self.client.clone(),
            self.metrics.clone(),
            self.spool_gates.clone(),
            self.cfg.limits,
            self.cfg.storage.default_url().to_string(),
            self.held.clone(),
        );
        tokio::spawn(uploader.run());
        self.hold_lease();
        self.watch().await
    }

    /// The control loop: this node's sessions, pods and Node object, watched; sessions started, updated, reloaded
    /// and cancelled as their objects appear, change and go, and reaped as their tasks end.
    async fn watch(mut self) -> Result<()> {
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
            status_share: self.status_share.clone(),
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
        let task = tokio::spawn((self.run_session)(
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

/// The watch loop against a fake API server ([`crate::fake_api`]): sessions appear, change and go as the agent's
/// own watchers see them, and a stand-in session task (no kernel) reports what it was asked to do: start, take
/// new targets, stop. Seconds, no cluster.
#[cfg(test)]
mod watch_tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::*;
    use crate::fake_api::FakeApi;

    const NODE: &str = "node-a";

    /// What a stand-in session task was asked to do.
    #[derive(Debug)]
    enum Seen {
        Started {
            name: String,
            spec: Box<ProbeSessionSpec>,
            /// Picked up from a previous agent process (its phase was Running).
            resumed: bool,
        },
        /// Its target pods changed; those not running here (none are: the fake lists no Pods).
        Retargeted {
            name: String,
            unresolved: Vec<String>,
        },
        Stopped {
            name: String,
        },
    }

    /// A session of this node in namespace `team-a` tracing its pods `pods`, `phase` in status if any.
    fn session(name: &str, pods: &[&str], phase: Option<&str>) -> Value {
        let pods: Vec<Value> = pods
            .iter()
            .map(|p| json!({"uid": format!("uid-{p}"), "namespace": "team-a", "name": p}))
            .collect();
        json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"), "generation": 1,
                         "labels": {(NODE_LABEL): NODE}},
            "spec": {"nodeName": NODE, "probe": "exec", "pods": pods,
                     "resultPrefix": format!("tracejobs/team-a/{name}-12345678/{NODE}")},
            "status": phase.map(|p| json!({"phase": p})),
        })
    }

    /// The agent's watch loop on `api`, its sessions run by stand-ins reporting to the receiver.
    struct Running {
        seen: mpsc::UnboundedReceiver<Seen>,
        metrics: AgentMetrics,
        agent: JoinHandle<Result<()>>,
        _dirs: [tempfile::TempDir; 2],
    }

    impl Running {
        fn start(api: &FakeApi) -> Running {
            let (spool, cgroups) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let cfg = AgentConfig {
                node: NODE.into(),
                namespace: "sonde-system".into(),
                identity: "sonde-agent-test".into(),
                cgroup_root: cgroups.path().to_path_buf(),
                spool: spool.path().to_path_buf(),
                storage: crate::results::locations::Locations::parse("file:///nowhere".into(), "")
                    .unwrap(),
                redact_outside: false,
                limits: Limits::default(),
                node_wide: sonde_crds::NodeWide::parse(""),
            };
            let metrics = AgentMetrics::default();
            let health = Health::new(Default::default());
            let mut agent = Agent::new(api.client(), cfg, metrics.clone(), health);
            let (tx, seen) = mpsc::unbounded_channel();
            agent.run_session = Arc::new(move |job, targets, deleted, _drained| {
                Box::pin(stand_in(job, targets, deleted, tx.clone()))
            });
            Running {
                seen,
                metrics,
                agent: tokio::spawn(agent.watch()),
                _dirs: [spool, cgroups],
            }
        }

        /// The next thing a session task was asked to do.
        async fn next(&mut self) -> Seen {
            let next = tokio::time::timeout(Duration::from_secs(10), self.seen.recv());
            next.await
                .expect("no session task heard from in 10 s")
                .unwrap()
        }

        /// Nothing more asked of any session task for a while (three turns of the agent's reaping).
        async fn quiet(&mut self) {
            let next = tokio::time::timeout(Duration::from_millis(1600), self.seen.recv());
            if let Ok(seen) = next.await {
                panic!("unexpected: {seen:?}");
            }
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.agent.abort();
        }
    }

    /// A session's task without a kernel: says it started, reports new targets, and ends (holding its slot until
    /// then, as a real one does) once its session is deleted or reloaded.
    async fn stand_in(
        job: SessionJob,
        mut targets: watch::Receiver<Targets>,
        mut deleted: watch::Receiver<bool>,
        seen: mpsc::UnboundedSender<Seen>,
    ) {
        let name = job.name.clone();
        let _ = seen.send(Seen::Started {
            name: name.clone(),
            spec: Box::new(job.spec.clone()),
            resumed: job.resumed_note.is_some(),
        });
        loop {
            tokio::select! {
                r = deleted.changed() => if r.is_err() || *deleted.borrow() { break },
                r = targets.changed() => {
                    if r.is_err() { break }
                    let unresolved = targets.borrow_and_update().unresolved.clone();
                    let _ = seen.send(Seen::Retargeted { name: name.clone(), unresolved });
                }
            }
        }
        let _ = seen.send(Seen::Stopped { name });
        drop(job);
    }

    /// A session listed at start is started, one created later too, and a deleted one is stopped; the agent
    /// asks only for its node's sessions and pods, and leaves alone a session that names another node.
    #[tokio::test(flavor = "multi_thread")]
    async fn sessions_start_as_they_appear_and_stop_when_deleted() {
        let api = FakeApi::start(NODE).await;
        api.apply(session("a", &["web-1"], None));
        let mut other_node = session("elsewhere", &[], None);
        other_node["metadata"]["labels"][NODE_LABEL] = json!("node-b");
        api.apply(other_node);
        let mut mislabelled = session("mislabelled", &[], None);
        mislabelled["spec"]["nodeName"] = json!("node-b");
        api.apply(mislabelled);
        let mut agent = Running::start(&api);
        assert!(
            matches!(agent.next().await, Seen::Started { name, spec, resumed: false }
                if name == "a" && spec.pods[0].name == "web-1")
        );
        api.apply(session("b", &[], None));
        assert!(matches!(agent.next().await, Seen::Started { name, .. } if name == "b"));
        api.delete("team-a", "a");
        assert!(matches!(agent.next().await, Seen::Stopped { name } if name == "a"));
        agent.quiet().await;
        assert_eq!(agent.metrics.started.get(), 2);
        assert_eq!(agent.metrics.finished.get(), 1);
        let requests = api.requests();
        let asked = |prefix: &str, selector: &str| {
            requests
                .iter()
                .any(|r| r.starts_with(prefix) && r.contains(selector))
        };
        assert!(
            asked(
                "GET /apis/sonde.dev/v1alpha1/probesessions?",
                "labelSelector=sonde.dev%2Fnode%3Dnode-a"
            ),
            "{requests:#?}"
        );
        assert!(
            asked("GET /api/v1/pods?", "fieldSelector=spec.nodeName%3Dnode-a"),
            "{requests:#?}"
        );
    }

    /// A change of target pods only retargets the running session; a change of what it loads stops it and,
    /// once its task has ended, starts it again with the new spec; another session goes on untouched.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_changed_spec_retargets_or_reloads_only_that_session() {
        let api = FakeApi::start(NODE).await;
        api.apply(session("a", &["web-1"], None));
        api.apply(session("b", &["db-1"], None));
        let mut agent = Running::start(&api);
        for _ in 0..2 {
            assert!(matches!(agent.next().await, Seen::Started { .. }));
        }
        api.apply(session("a", &["web-1", "web-2"], None));
        assert!(
            matches!(agent.next().await, Seen::Retargeted { name, unresolved }
                if name == "a" && unresolved == ["team-a/web-1", "team-a/web-2"])
        );
        let mut edited = session("a", &["web-1", "web-2"], None);
        edited["spec"]["comms"] = json!(["nginx"]);
        api.apply(edited);
        assert!(matches!(agent.next().await, Seen::Stopped { name } if name == "a"));
        assert!(
            matches!(agent.next().await, Seen::Started { name, spec, .. }
                if name == "a" && spec.comms == ["nginx"] && spec.pods.len() == 2)
        );
        agent.quiet().await;
        assert_eq!(agent.metrics.started.get(), 3);
    }

    /// A session marked Running that no task here runs was a previous agent process's: it is started again and
    /// told so. A finished one is not started.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_running_session_is_resumed_and_a_finished_one_left_alone() {
        let api = FakeApi::start(NODE).await;
        api.apply(session("a", &[], Some("Running")));
        api.apply(session("done", &[], Some("Succeeded")));
        let mut agent = Running::start(&api);
        assert!(
            matches!(agent.next().await, Seen::Started { name, resumed: true, .. } if name == "a")
        );
        agent.quiet().await;
    }

    /// A session deleted while the watch was down has no Delete event: the agent stops it when the watch lists
    /// again (after a 410) and does not find it. The one still there goes on.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_gone_while_the_watch_was_down_is_stopped_on_the_relist() {
        let api = FakeApi::start(NODE).await;
        api.apply(session("a", &[], None));
        api.apply(session("b", &[], None));
        let mut agent = Running::start(&api);
        for _ in 0..2 {
            assert!(matches!(agent.next().await, Seen::Started { .. }));
        }
        api.forget("team-a", "a");
        api.expire();
        assert!(matches!(agent.next().await, Seen::Stopped { name } if name == "a"));
        agent.quiet().await;
        let lists = api
            .requests()
            .iter()
            .filter(|r| r.starts_with(SESSIONS_LIST) && !r.contains("watch=true"))
            .count();
        assert_eq!(lists, 2, "the sessions were not listed again");
    }

    const SESSIONS_LIST: &str = "GET /apis/sonde.dev/v1alpha1/probesessions?";
}
