//! TraceJobs end to end: the real API server, the operator and the node agent as processes, this host as the
//! node, pods whose containers are real processes in kubelet-named cgroups, and real kernel hooks.
//!
//! Every test here runs its own operator and agent for this one node, so they run one at a time (SERIAL).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sonde_crds::conditions::{is_true, types};
use sonde_crds::{Phase, ProbeSession, TraceJob, TraceJobStatus};
use sonde_tests::{
    CgroupDriver, Component, ControlPlane, Identity, LOAD_BOUND, Load, RealPod, SCHED_PIPE,
    TestNamespace, WAKEUPS_PROGS, bounded_argv, bpf_programs, chart_identities, fast_ping_argv,
    free_port, http_get, http_get_as, isc_socket_argv, register_this_node, wait_for,
    wait_for_every,
};
use tokio::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Who the operator and agent act as.
enum As {
    /// The test cluster's admin.
    Admin,
    /// The Helm chart's service accounts, with exactly the chart's RBAC.
    Chart,
}

struct Scene {
    // Drop order: processes first, then pods, then the namespace.
    agent: Option<Component>,
    operator: Option<Component>,
    pods: Vec<RealPod>,
    host: Vec<Load>,
    client: Client,
    plane: &'static ControlPlane,
    ns: TestNamespace,
    dir: tempfile::TempDir,
    operator_kc: std::path::PathBuf,
    agent_kc: std::path::PathBuf,
    lease_ns: String,
    _serial: MutexGuard<'static, ()>,
}

impl Scene {
    async fn new(prefix: &str) -> Scene {
        Self::acting_as(prefix, As::Admin).await
    }

    async fn acting_as(prefix: &str, who: As) -> Scene {
        let serial = SERIAL.lock().await;
        let plane = ControlPlane::get().await;
        let client = plane.client(Identity::Admin).await;
        register_this_node(&client).await.expect("node registered");
        let ns = TestNamespace::create(plane, prefix).await;
        let dir = tempfile::tempdir().unwrap();
        // Nothing of an earlier test may still be attached, or the detach checks below mean nothing.
        assert!(
            wait_for(Duration::from_secs(5), || async {
                bpf_programs(WAKEUPS_PROGS).is_empty()
            })
            .await,
            "wakeups programs attached before the test started: {:?}",
            bpf_programs(WAKEUPS_PROGS)
        );
        let (operator_kc, agent_kc, lease_ns) = match who {
            As::Admin => (
                plane.kubeconfig(Identity::Admin),
                plane.kubeconfig(Identity::Admin),
                ns.name.clone(),
            ),
            As::Chart => {
                let (o, a) = chart_identities(plane, "sonde-system");
                (o, a, "sonde-system".to_string())
            }
        };
        let mut s = Scene {
            agent: None,
            operator: None,
            pods: vec![],
            host: vec![],
            client,
            plane,
            ns,
            dir,
            operator_kc,
            agent_kc,
            lease_ns,
            _serial: serial,
        };
        s.start_operator();
        s.start_agent();
        s
    }

    fn start_operator(&mut self) {
        self.operator = Some(Component::operator(
            &self.operator_kc,
            &self.lease_ns,
            self.dir.path(),
        ));
    }

    /// Replaces the agent (SIGKILL, as a crash would) with one whose storage location `archive` is the bucket
    /// `sonde-e2e` of `s3` under `runs/`, with `extra` environment.
    fn agent_with_archive(&mut self, s3: &sonde_tests::S3Server, extra: &[(&str, &str)]) {
        let mut env = s3.env();
        env.push((
            "SONDE_STORAGE_LOCATIONS".into(),
            "archive=s3://sonde-e2e/runs".into(),
        ));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.restart_agent_with(&env);
    }

    fn restart_agent_with(&mut self, env: &[(String, String)]) {
        self.agent.as_mut().unwrap().kill();
        self.spawn_agent(env);
    }

    fn start_agent(&mut self) {
        self.spawn_agent(&[]);
    }

    /// The agent renews its node's Lease where the operator looks for it (the operator's lease namespace, as in
    /// the chart where both are the release's namespace).
    fn spawn_agent(&mut self, env: &[(String, String)]) {
        let mut env = env.to_vec();
        env.push(("POD_NAMESPACE".into(), self.lease_ns.clone()));
        self.agent = Some(Component::agent_with_env(
            &self.agent_kc,
            self.dir.path(),
            &env,
        ));
    }

    /// The agent's Lease of this node, as the API server has it.
    async fn agent_lease(&self) -> Option<Lease> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.lease_ns);
        let name = sonde_crds::agent_lease_name(&sonde_tests::this_node_name());
        leases.get_opt(&name).await.unwrap()
    }

    fn jobs(&self) -> Api<TraceJob> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn sessions(&self) -> Api<ProbeSession> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn ping_pod(&mut self, name: &str) -> u32 {
        self.pod(name, "ping", CgroupDriver::Systemd, &fast_ping_argv())
            .await
    }

    /// A pod labelled `app: <app>` running `argv`, ended with the scene; its pid.
    async fn pod(
        &mut self,
        name: &str,
        app: &str,
        driver: CgroupDriver,
        argv: &[impl AsRef<str>],
    ) -> u32 {
        let pod = RealPod::start(
            &self.client,
            &self.ns.name,
            name,
            &[("app", app)],
            driver,
            argv,
        )
        .await
        .unwrap_or_else(|e| panic!("pod {name}: {e:#}"));
        let pid = pod.pid();
        self.pods.push(pod);
        pid
    }

    /// Field case A's noisy neighbour, outside any pod: a raw ICMP socket every ping packet wakes.
    fn isc_socket(&mut self) -> u32 {
        let load = Load::self_bounded(&isc_socket_argv());
        load.wait_for_comm("isc-socket");
        let pid = load.pid();
        self.host.push(load);
        pid
    }

    async fn create_job(&self, yaml: &str) -> TraceJob {
        let job: TraceJob = serde_yaml::from_str(yaml).unwrap();
        self.jobs()
            .create(&PostParams::default(), &job)
            .await
            .expect("job created")
    }

    async fn wait_job(
        &self,
        name: &str,
        limit: Duration,
        done: impl Fn(&TraceJob) -> bool,
    ) -> TraceJob {
        let jobs = self.jobs();
        let ok = wait_for(limit, || async {
            jobs.get(name).await.map(|j| done(&j)).unwrap_or(false)
        })
        .await;
        let job = jobs.get(name).await.expect("job exists");
        assert!(
            ok,
            "job {name} did not reach the expected state in {limit:?}: {:#?}",
            job.status
        );
        job
    }

    async fn wait_attached(&self, name: &str) -> TraceJob {
        self.wait_job(name, Duration::from_secs(30), |j| {
            j.status.as_ref().is_some_and(|st| st.nodes.attached == 1)
        })
        .await
    }

    async fn session_named(&self, prefix: &str) -> ProbeSession {
        let all = self.session_list().await;
        let named = |p: &&ProbeSession| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(prefix))
        };
        all.iter()
            .find(named)
            .cloned()
            .unwrap_or_else(|| panic!("no session {prefix}*"))
    }

    async fn session_list(&self) -> Vec<ProbeSession> {
        self.sessions()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    /// Deletes a running job whose programs are attached; returns how long until nothing is attached (at most
    /// `limit`, or the test fails).
    async fn delete_job_and_time_detach(&self, name: &str, limit: Duration) -> Duration {
        assert!(
            !bpf_programs(WAKEUPS_PROGS).is_empty(),
            "{name}: attached per status but no program loaded"
        );
        self.jobs()
            .delete(name, &DeleteParams::background())
            .await
            .unwrap();
        let t0 = Instant::now();
        let gone = wait_for_every(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async { bpf_programs(WAKEUPS_PROGS).is_empty() },
        )
        .await;
        let took = t0.elapsed();
        assert!(gone, "programs still attached 5 s after {name} was deleted");
        assert!(took <= limit, "detach took {took:?}");
        took
    }

    fn plane_kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.plane.kubectl(Identity::Admin, args)
    }

    async fn events_for(&self, name: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns.name);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // While the operator still runs, so its finalizers let go: otherwise a policy's sessions outlive the
        // test in a Terminating namespace and the next test's agent runs them.
        let _ = self.plane.kubectl(
            Identity::Admin,
            &[
                "delete",
                "tracejobs,probepolicies",
                "--all",
                "-n",
                &self.ns.name,
                "--timeout=30s",
            ],
        );
        self.host.clear();
    }
}

fn wakeups_job(name: &str, duration: &str) -> String {
    format!(
        r#"
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {{name: {name}}}
spec:
  probe: wakeups
  target: {{podSelector: {{matchLabels: {{app: ping}}}}}}
  duration: {duration}
  thresholds: [{{metric: wakeupsPerSecond, value: 20}}]
"#
    )
}

/// Whether a job's results stand so (`status.upload.state`).
fn upload_is(state: sonde_crds::UploadState) -> impl Fn(&TraceJob) -> bool {
    move |j| {
        j.status
            .as_ref()
            .and_then(|st| st.upload.as_ref())
            .is_some_and(|u| u.state == state)
    }
}

fn finished(j: &TraceJob) -> bool {
    j.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Field case A on the cluster path: the job targets pods `app=ping`; the answer names the noisy neighbour.
/// The operator and agent run as the Helm chart's service accounts: its RBAC is enough for the whole path.
#[tokio::test(flavor = "multi_thread")]
async fn wakeups_job_on_a_ping_pod_names_the_wakee() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::acting_as("wakeups", As::Chart).await;
    let listener = s.isc_socket();
    let ping = s.ping_pod("ping").await;
    s.create_job(&wakeups_job("ping-wakeups", "4s")).await;
    let job = s
        .wait_job("ping-wakeups", Duration::from_secs(40), finished)
        .await;
    let st = job.status.clone().unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert_eq!((st.nodes.targeted, st.nodes.done), (1, 1));
    let key = format!("ping/{ping} -> isc-socket/{listener}");
    let rows = &st.summary.as_ref().expect("a summary").rows;
    let row = rows
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("{key} not in {rows:#?}"));
    assert!(row.per_second.unwrap_or(0.0) > 20.0, "{row:?}");
    assert!(
        st.counts.breaches > 0 && is_true(&st.conditions, types::THRESHOLD_BREACHED),
        "{st:#?}"
    );
    assert!(is_true(&st.conditions, types::COMPLETE) && is_true(&st.conditions, types::ATTACHED));
    let strategy = st.node_results[0]
        .attach_strategy
        .as_deref()
        .unwrap_or_default();
    assert!(
        ["fentry", "kprobe", "tp_btf", "tracepoint"].contains(&strategy),
        "{strategy}"
    );
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == job.metadata.generation)
    );
    // Results are in the object store, named in status.
    let summary_url = st
        .results
        .iter()
        .find(|u| u.ends_with("/summary.json"))
        .expect("summary.json uploaded");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary_url.trim_start_matches("file://")).unwrap())
            .unwrap();
    assert_eq!(summary["probe"], "wakeups");
    // Events tell the story in `kubectl describe`.
    let reasons: Vec<String> = s
        .events_for("ping-wakeups")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    for want in ["Scheduled", "Attached", "ThresholdBreached", "Completed"] {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} Event in {reasons:?}"
        );
    }
    assert!(
        bpf_programs(WAKEUPS_PROGS).is_empty(),
        "programs left after the job ended"
    );
    // The agent's own endpoints, as the DaemonSet's probes and Prometheus see them.
    let port = s.agent.as_ref().unwrap().metrics_port.unwrap();
    assert_eq!(http_get(port, "/readyz").await.map(|(c, _)| c), Some(200));
    let metrics = || async {
        http_get(port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    // The agent reaps finished sessions twice a second.
    let counted = wait_for(Duration::from_secs(3), || async {
        let m = metrics().await;
        m.contains("sonde_agent_sessions_started_total 1")
            && m.contains("sonde_agent_sessions_finished_total 1")
            && m.contains("sonde_agent_sessions_running 0")
    })
    .await;
    assert!(counted, "{}", metrics().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_matching_nothing_says_so() {
    sonde_tests::requires!(Root, ControlPlane);
    let s = Scene::new("nomatch").await;
    s.create_job(&wakeups_job("lonely", "3s")).await;
    let job = s
        .wait_job("lonely", Duration::from_secs(20), |j| {
            j.status
                .as_ref()
                .is_some_and(|st| st.conditions.iter().any(|c| c.reason == "NoMatchingPods"))
        })
        .await;
    let sched = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == types::SCHEDULED)
        .unwrap();
    assert_eq!(sched.status, "False");
    assert!(sched.message.contains("app=ping"), "{}", sched.message);
    let job = s
        .wait_job("lonely", Duration::from_secs(20), finished)
        .await;
    assert_eq!(job.status.as_ref().unwrap().phase, Phase::Failed);
    assert!(s.session_list().await.is_empty());
    let reasons: Vec<String> = s
        .events_for("lonely")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(reasons.iter().any(|r| r == "NoMatchingPods"), "{reasons:?}");
}

/// Numbers a namespace editor or an agent's status controls cannot end the operator: a job with the largest TTL
/// the schema allows that fails at once (an unknown storage location), one past it refused by the API server,
/// and a session whose heartbeat is dated at the end of time while its job's deadline passes. The operator
/// keeps running (once it panicked on `completionTime + ttl` and on `heartbeat + grace`, and its standby after
/// it), and a normal job created afterwards completes.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_numbers_leave_the_operator_running() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("hostile").await;
    s.ping_pod("ping").await;
    let ttl_job = |name: &str, ttl: i64| {
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: {name}}}\nspec:\n  probe: wakeups\n  \
             target: {{podSelector: {{matchLabels: {{app: ping}}}}}}\n  duration: 3s\n  \
             storage: {{location: nowhere}}\n  ttlSecondsAfterFinished: {ttl}\n"
        )
    };
    let too_long: TraceJob =
        serde_yaml::from_str(&ttl_job("too-long", sonde_crds::TTL_MAX_SECONDS + 1)).unwrap();
    let refused = s.jobs().create(&PostParams::default(), &too_long).await;
    assert!(
        format!("{refused:?}").contains("ttlSecondsAfterFinished"),
        "a TTL past the schema's maximum: {refused:?}"
    );
    s.create_job(&ttl_job("longest-ttl", sonde_crds::TTL_MAX_SECONDS))
        .await;
    let job = s
        .wait_job("longest-ttl", Duration::from_secs(20), finished)
        .await;
    assert_eq!(job.status.unwrap().phase, Phase::Failed);

    // A session whose status says its agent beats until the end of time. The agent is stopped so that nothing
    // rewrites the heartbeat; the job's deadline and grace pass while the operator reads it.
    s.create_job(&wakeups_job("far-beat", "3s")).await;
    s.wait_attached("far-beat").await;
    s.agent.as_mut().unwrap().kill();
    let session = s.session_named("far-beat").await;
    let forged =
        serde_json::json!({"status": {"heartbeat": "9999-12-30T21:59:59Z", "phase": "Running"}});
    s.sessions()
        .patch_status(
            &session.metadata.name.clone().unwrap(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&forged),
        )
        .await
        .unwrap();
    // Past the deadline (3 s) and REPORT_GRACE (30 s): the operator has summed the heartbeat and the grace.
    tokio::time::sleep(Duration::from_secs(36)).await;
    let operator = s.operator.as_mut().unwrap();
    assert!(
        operator.child.try_wait().unwrap().is_none(),
        "the operator exited: {}",
        operator.log_text()
    );
    let far = s.jobs().get("far-beat").await.unwrap();
    assert!(
        far.status
            .as_ref()
            .is_some_and(|st| !st.phase.is_finished()),
        "a session with a fresh heartbeat is given PUBLISH_LIMIT: {:?}",
        far.status
    );
    s.start_agent();
    s.create_job(&wakeups_job("after", "3s")).await;
    let job = s.wait_job("after", Duration::from_secs(40), finished).await;
    assert_eq!(
        job.status.as_ref().unwrap().phase,
        Phase::Succeeded,
        "{:?}",
        job.status
    );
    let operator = s.operator.as_mut().unwrap();
    assert!(
        operator.child.try_wait().unwrap().is_none() && !operator.log_text().contains("panicked"),
        "{}",
        operator.log_text()
    );
}

/// A tenant's binary cannot take the node's agent down: a busy program whose compressed debug sections claim to
/// inflate to 4 EiB (once the agent's symbolizer allocated that and aborted, ending every session on the node)
/// runs in a pod under cpu-profile with user stacks, while a wakeups job of the same agent runs beside it. Both
/// jobs succeed, the agent is still serving, the profile names the program's function, writes no kernel
/// address, and says which frames it could only place (`binary+0xoffset [build id]`).
#[tokio::test(flavor = "multi_thread")]
async fn a_crafted_binary_under_cpu_profile_leaves_the_agent_serving() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("crafted").await;
    s.ping_pod("ping").await;
    let crafted = sonde_tests::crafted_debug_binary(s.dir.path());
    let argv = bounded_argv(LOAD_BOUND, &[crafted.to_str().unwrap()]);
    s.pod("crafted", "crafted", CgroupDriver::Systemd, &argv)
        .await;
    s.create_job(&wakeups_job("beside", "8s")).await;
    s.create_job(
        "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: crafted-profile}\nspec:\n  \
         probe: cpu-profile\n  target: {podSelector: {matchLabels: {app: crafted}}}\n  duration: 4s\n  \
         params: {cpuProfile: {frequencyHz: 499, userStacks: true}}\n",
    )
    .await;
    let profile = s
        .wait_job("crafted-profile", Duration::from_secs(60), finished)
        .await;
    let beside = s
        .wait_job("beside", Duration::from_secs(60), finished)
        .await;
    let agent = s.agent.as_mut().unwrap();
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited: {}",
        agent.log_text()
    );
    let st = profile.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert_eq!(
        beside.status.as_ref().unwrap().phase,
        Phase::Succeeded,
        "{:?}",
        beside.status
    );
    let folded_url = st
        .results
        .iter()
        .find(|u| u.ends_with("/folded.txt"))
        .expect("folded.txt uploaded");
    let folded = std::fs::read_to_string(folded_url.trim_start_matches("file://")).unwrap();
    assert!(
        folded.contains("spin-crafted;") && folded.contains(";spin_here"),
        "{folded}"
    );
    let raw_kernel = folded
        .split([';', '\n'])
        .find(|f| f.starts_with("0x") || f.contains("0xffff"));
    assert!(
        raw_kernel.is_none(),
        "a raw address in the profile: {raw_kernel:?}\n{folded}"
    );
    let figures = &st.summary.as_ref().expect("a summary").figures;
    let unnamed = figures
        .iter()
        .find(|f| f.name.starts_with("user frames not named"));
    // The libc frame below main has no symbol in Debian's stripped libc: it is kept as where it is.
    assert!(
        unnamed.is_some_and(|f| f.value >= 1.0) && folded.contains("libc.so.6+0x"),
        "{figures:?}\n{folded}"
    );
    let port = s.agent.as_ref().unwrap().metrics_port.unwrap();
    assert_eq!(http_get(port, "/readyz").await.map(|(c, _)| c), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_detaches_within_a_second() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("delete").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("long", "10m")).await;
    s.wait_attached("long").await;
    let took = s
        .delete_job_and_time_detach("long", Duration::from_millis(1200))
        .await;
    eprintln!("delete -> detached in {took:?}");
}

/// The agent ends a session by its own clock: with the operator stopped, the deadline still holds.
#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_holds_while_the_operator_is_down() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("deadline").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("short", "6s")).await;
    s.wait_attached("short").await;
    s.operator.as_mut().unwrap().kill();
    let session = s.session_list().await.remove(0);
    let deadline = session
        .spec
        .deadline
        .clone()
        .expect("sessions of a job carry a deadline")
        .0;
    let detached = wait_for(Duration::from_secs(20), || async {
        bpf_programs(WAKEUPS_PROGS).is_empty()
    })
    .await;
    let late = k8s_openapi::jiff::Timestamp::now().duration_since(deadline);
    assert!(detached, "still attached long after the deadline");
    // Bounded on both sides: never before the deadline (0.1 s for clock reads), at most 2 s after it.
    assert!(
        (-0.1..=2.0).contains(&late.as_secs_f64()),
        "detached {late:?} after the deadline"
    );
    eprintln!(
        "detached {:.3}s after the deadline with the operator down",
        late.as_secs_f64()
    );
    let sessions = s.sessions();
    let name = session.metadata.name.clone().unwrap();
    let done = wait_for(Duration::from_secs(10), || async {
        sessions
            .get(&name)
            .await
            .map(|p| p.status.is_some_and(|st| st.phase == Phase::Succeeded))
            .unwrap_or(false)
    })
    .await;
    assert!(
        done,
        "the agent did not report the session Succeeded without the operator"
    );
    // The operator catches up when it returns.
    s.start_operator();
    let job = s.wait_job("short", Duration::from_secs(30), finished).await;
    assert_eq!(job.status.unwrap().phase, Phase::Succeeded);
}

/// Status writes survive the API server stopped for 20 s mid-job and started again. The job's deadline falls in
/// the outage: the agent detaches at it by its own clock, keeps its final status until the server is back (the
/// final write is retried for 30 s) and writes it then; the job completes with everything captured, on disk as
/// counted. The agent is the same process throughout. The operator, whose lease (15 s) cannot be renewed, exits
/// so that a fresh process competes for it, as documented: here it is started again, as the kubelet would.
#[tokio::test(flavor = "multi_thread")]
async fn status_writes_survive_the_api_server_stopped_for_20s_mid_job() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("outage").await;
    s.ping_pod("ping").await;
    let job = s.create_job(&wakeups_job("outage", "10s")).await;
    let uid8 = job.metadata.uid.clone().unwrap()[..8].to_string();
    s.wait_attached("outage").await;
    let session = s.session_list().await.remove(0);
    let deadline = session.spec.deadline.clone().unwrap().0;
    /// The API server back up, whatever the test's end: the other tests share it. No assert here (a panic while a
    /// failed test unwinds would abort the whole test binary): a start that fails is said and left to the next
    /// test's failure.
    struct Restart(&'static ControlPlane, bool);
    impl Drop for Restart {
        fn drop(&mut self) {
            if !self.1 {
                // After the stop, which may still be under way: the script refuses to start a server still running.
                let _ = std::process::Command::new(
                    sonde_tests::repo_root().join("tests/controlplane/apiserver.sh"),
                )
                .arg(&self.0.dir)
                .arg("stop")
                .status();
                match std::panic::catch_unwind(|| self.0.start_apiserver()) {
                    Ok(()) => {}
                    Err(_) => eprintln!("the API server did not start again after the outage test"),
                }
            }
        }
    }
    let mut outage = Restart(s.plane, false);
    // The outage starts with the SIGTERM (the server stops listening at once; stopping waits for it to exit, up
    // to 10 s), off this thread so the detach is watched meanwhile.
    let stopped = Instant::now();
    let plane = s.plane;
    let stopping = tokio::task::spawn_blocking(move || plane.stop_apiserver());
    let detached = wait_for(Duration::from_secs(18), || async {
        bpf_programs(WAKEUPS_PROGS).is_empty()
    })
    .await;
    let late = k8s_openapi::jiff::Timestamp::now().duration_since(deadline);
    let log = s.agent.as_ref().unwrap().log_text();
    assert!(detached, "still attached 18 s into the outage:\n{log}");
    assert!(
        (-0.1..=2.0).contains(&late.as_secs_f64()),
        "detached {late:?} after the deadline:\n{log}"
    );
    let detached_after = stopped.elapsed();
    eprintln!(
        "detached {:.3}s after the deadline, {detached_after:?} into the outage",
        late.as_secs_f64()
    );
    stopping.await.unwrap();
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(stopped.elapsed())).await;
    let agent = s.agent.as_mut().unwrap();
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited in the outage:\n{}",
        agent.log_text()
    );
    outage.1 = true;
    s.plane.start_apiserver();
    let back = Instant::now();
    eprintln!("the API server was away {:?}", stopped.elapsed());
    // The operator's lease lapsed: it exited saying so (or would at its next renewal).
    let operator = s.operator.as_mut().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        match operator.child.try_wait().unwrap() {
            Some(_) => break true,
            None if Instant::now() > until => break false,
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let text = operator.log_text();
    assert!(
        exited && text.contains("lost the leader lease"),
        "the operator kept running without its lease (exited: {exited}):\n{text}"
    );
    s.start_operator();
    // The final status, written by the agent once the server is back (while its retries last).
    let sessions = s.sessions();
    let name = session.metadata.name.clone().unwrap();
    let written = wait_for(Duration::from_secs(15), || async {
        sessions
            .get(&name)
            .await
            .is_ok_and(|p| p.status.is_some_and(|st| st.phase == Phase::Succeeded))
    })
    .await;
    assert!(
        written,
        "the session's final status was not written within 15 s of the API server's return"
    );
    eprintln!("final status written {:?} after the return", back.elapsed());
    let job = s
        .wait_job(
            "outage",
            Duration::from_secs(60),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert!(st.counts.captured > 0, "{:?}", st.counts);
    let session = sessions.get(&name).await.unwrap().status.unwrap();
    assert_eq!(session.counts.captured, st.counts.captured);
    let folder = s.dir.path().join(format!(
        "results/tracejobs/{}/outage-{uid8}/{}",
        s.ns.name,
        sonde_tests::this_node_name()
    ));
    let (manifest, events) = sonde_probes::chunks::read_events(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    assert!(manifest.complete, "{manifest:?}");
    assert_eq!(
        events.len() as u64,
        st.counts.captured,
        "events on disk vs captured"
    );
}

/// A restarted operator converges on the sessions that exist instead of making new ones.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_restart_mid_job_keeps_one_session_per_node() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("restart").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("steady", "8s")).await;
    s.wait_attached("steady").await;
    let before = s.session_list().await;
    s.operator.as_mut().unwrap().kill();
    s.start_operator();
    let job = s
        .wait_job("steady", Duration::from_secs(40), finished)
        .await;
    let after = s.session_list().await;
    assert_eq!(before.len(), 1);
    assert_eq!(
        after.len(),
        1,
        "{:?}",
        after
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        before[0].metadata.uid, after[0].metadata.uid,
        "the session was replaced"
    );
    assert_eq!(job.status.unwrap().phase, Phase::Succeeded);
}

/// Kernel objects belong to the agent process: SIGKILL leaves nothing attached, and the next agent says what
/// happened instead of pretending the trace was whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_leaves_nothing_attached_and_its_successor_is_truthful() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("agentkill").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("orphan", "12s")).await;
    s.wait_attached("orphan").await;
    assert!(!bpf_programs(WAKEUPS_PROGS).is_empty());
    // Long enough for a chunk of events to be complete on disk (chunks close at 2 s, at a heartbeat).
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.agent.as_mut().unwrap().kill();
    assert!(
        wait_for(Duration::from_secs(2), || async {
            bpf_programs(WAKEUPS_PROGS).is_empty()
        })
        .await,
        "programs survived kill -9 of the agent: {:?}",
        bpf_programs(WAKEUPS_PROGS)
    );
    s.start_agent();
    let job = s
        .wait_job("orphan", Duration::from_secs(40), finished)
        .await;
    let node = &job.status.as_ref().unwrap().node_results[0];
    let msg = node.message.clone().unwrap_or_default();
    assert!(msg.contains("agent restarted"), "{node:?}");
    assert!(bpf_programs(WAKEUPS_PROGS).is_empty());
    // What the killed agent had written is not lost: its successor resumed the trace's chunk series, whose one
    // manifest lists the chunks of both processes.
    let st = job.status.as_ref().unwrap();
    let manifests: Vec<_> = walk_files(&s.dir.path().join("results"))
        .into_iter()
        .filter(|p| p.ends_with("events/manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let folder = manifests[0].parent().unwrap().parent().unwrap();
    let (manifest, events) = sonde_probes::chunks::read_events(folder).expect("the stored events");
    assert!(manifest.complete && manifest.resumed == 1, "{manifest:?}");
    assert!(
        events.len() as u64 > st.counts.captured,
        "{} events stored, {} captured after the restart: none kept from before it",
        events.len(),
        st.counts.captured
    );
    assert!(
        events.iter().all(|e| e["waker_comm"].is_string()),
        "{events:?}"
    );
}

/// A session whose deadline passed while its agent was down is reported Failed by the agent that comes back,
/// with the reason (DeadlinePassed) and that it had restarted, not left to the operator's silence timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_reports_a_session_that_expired_meanwhile_as_failed() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("expired").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("expired", "4s")).await;
    s.wait_attached("expired").await;
    s.agent.as_mut().unwrap().kill();
    // Past the deadline, well within REPORT_GRACE (30 s), after which the operator would fail it on silence.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarted = Instant::now();
    s.start_agent();
    let sessions = s.sessions();
    let name = s.session_named("expired").await.metadata.name.unwrap();
    let failed = wait_for(Duration::from_secs(15), || async {
        sessions
            .get(&name)
            .await
            .ok()
            .and_then(|x| x.status)
            .is_some_and(|st| st.phase == Phase::Failed)
    })
    .await;
    let st = sessions
        .get(&name)
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        failed,
        "the restarted agent did not fail the expired session: {st:?}"
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "failed on the operator's timeout, not by the agent"
    );
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::FAILED && c.status == "True")
        .unwrap_or_else(|| panic!("no Failed condition: {st:?}"));
    assert_eq!(c.reason, "DeadlinePassed", "{c:?}");
    assert!(
        c.message.contains("agent restarted") && c.message.contains("deadline passed"),
        "{}",
        c.message
    );
    let job = s
        .wait_job("expired", Duration::from_secs(20), finished)
        .await;
    assert_eq!(job.status.unwrap().phase, Phase::Failed);
}

/// A pod that starts matching while the job runs is traced from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_added_mid_run_is_traced() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("latecomer").await;
    let listener = s.isc_socket();
    let first = s.ping_pod("ping-1").await;
    s.create_job(&wakeups_job("growing", "8s")).await;
    s.wait_attached("growing").await;
    let second = s.ping_pod("ping-2").await;
    let sessions = s.sessions();
    let listed = wait_for(Duration::from_secs(10), || async {
        sessions
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().any(|p| p.spec.pods.len() == 2))
            .unwrap_or(false)
    })
    .await;
    assert!(listed, "the session never listed the second pod");
    let job = s
        .wait_job("growing", Duration::from_secs(40), finished)
        .await;
    let rows = job.status.unwrap().summary.unwrap().rows;
    for pid in [first, second] {
        let key = format!("ping/{pid} -> isc-socket/{listener}");
        assert!(rows.iter().any(|r| r.key == key), "{key} not in {rows:#?}");
    }
}

/// A session whose programs cost more kernel CPU than its budget is stopped, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_over_its_budget_is_stopped() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("budget").await;
    // Tens of thousands of wakeups a second between the pod's two tasks: far over a 0.01 % budget.
    s.pod(
        "pipe",
        "ping",
        CgroupDriver::Systemd,
        &bounded_argv(LOAD_BOUND, SCHED_PIPE),
    )
    .await;
    let yaml = wakeups_job("greedy", "60s") + "  budget: {maxKernelCpuPercent: 0.01}\n";
    s.create_job(&yaml).await;
    let job = s
        .wait_job("greedy", Duration::from_secs(40), finished)
        .await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Failed);
    let msg = st.node_results[0].message.clone().unwrap_or_default();
    assert!(msg.contains("budget"), "{msg}");
    let session = s.session_list().await.remove(0);
    assert!(is_true(
        &session.status.unwrap().conditions,
        types::OVER_BUDGET
    ));
}

/// Overload: two unbounded sched-pipe loads in the pod wake each other far faster than the agent can write
/// events. The agent still renews its node's Lease (its heartbeat) every 10 s by its own clock, reports the drops
/// at once and the counts at least every 30 s, and detaches as soon as the job is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn an_overloaded_agent_keeps_its_heartbeat_and_detaches_on_delete() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("flood").await;
    let one = bounded_argv(LOAD_BOUND, SCHED_PIPE).join(" ");
    let script = format!("{one} & {one} & wait");
    s.pod(
        "pipes",
        "ping",
        CgroupDriver::Systemd,
        &["sh", "-c", &script],
    )
    .await;
    // The budget would end the session (the probe costs far more than 5 % of a CPU here): this test is about
    // the heartbeat, a_session_over_its_budget_is_stopped about the budget. The node's ceiling on budgets is
    // raised the way an admin would (agent.limits.maxKernelCpuPercent).
    s.restart_agent_with(&[(
        "SONDE_MAX_KERNEL_CPU_PERCENT".to_string(),
        "100".to_string(),
    )]);
    let yaml = wakeups_job("flood", "10m")
        + "  output: {events: true}\n  budget: {maxKernelCpuPercent: 100}\n";
    s.create_job(&yaml).await;
    s.wait_attached("flood").await;
    let name = s.session_named("flood").await.metadata.name.unwrap();
    let watched = watch_writes(&s, &name, Duration::from_secs(36)).await;
    let (first, st) = (&watched.statuses[0], watched.statuses.last().unwrap());
    eprintln!(
        "lease renewals {:?} s apart; {} status writes in 36 s; counts {:?}",
        watched.renewal_gaps(),
        watched.writes,
        st.counts
    );
    watched.lease_renewed_every_10s();
    // The drops at once (EventsDropped turns true), then the counts at most every 30 s: a few writes, not 18.
    assert!(
        (1..=5).contains(&watched.writes),
        "{} status writes in 36 s",
        watched.writes
    );
    assert!(
        st.counts.dropped > first.counts.dropped,
        "the counts were not written again within 36 s: {:?} then {:?}",
        first.counts,
        st.counts
    );
    assert!(st.counts.dropped_percent.is_some_and(|p| p > 0.0));
    assert!(is_true(&st.conditions, types::EVENTS_DROPPED), "{st:#?}");
    // Delete to stop, by the agent's own clock: the summary it still publishes says when its trace stopped
    // (CLOCK_MONOTONIC, `stoppedAtMonotonicNs`), which must be within 0.5 s of the delete (measured 32 ms; the
    // bound is Ctrl-C's in ARCHITECTURE.md, Overload) although the API server,
    // the operator and the agent share two cores with two unbounded floods. The detach after the stop is the
    // kernel's pace (RCU grace periods; `detachSeconds`, reported apart) and bounded here only against a hang.
    let deleted_at = sonde_tests::monotonic_ns();
    let took = s
        .delete_job_and_time_detach("flood", Duration::from_secs(5))
        .await;
    let results = s
        .dir
        .path()
        .join("results")
        .join("tracejobs")
        .join(&s.ns.name);
    let mut summary = None;
    let published = wait_for(Duration::from_secs(20), || {
        summary = walk_files(&results)
            .into_iter()
            .find(|p| p.ends_with("summary.json"))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        std::future::ready(summary.is_some())
    })
    .await;
    assert!(
        published,
        "no summary.json of the deleted job under {results:?}"
    );
    let summary = summary.unwrap();
    let stopped_at = summary["stoppedAtMonotonicNs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stoppedAtMonotonicNs: {summary}"));
    let stop = Duration::from_nanos(stopped_at.saturating_sub(deleted_at));
    let detach = summary["detachSeconds"].as_f64().expect("detachSeconds");
    eprintln!(
        "overloaded: delete -> stopped {stop:?} (agent's clock), detach {detach:.3} s, programs gone {took:?} \
         after the delete"
    );
    assert!(
        stopped_at > deleted_at && stop <= Duration::from_millis(500),
        "the overloaded agent stopped {stop:?} after the delete (bound 0.5 s)"
    );
}

/// What a session and its node's Lease went through while watched.
struct Watched {
    /// The Lease's renewals, by the agent's clock, in order.
    renewals: Vec<k8s_openapi::jiff::Timestamp>,
    /// Writes of the session (resourceVersion changes) while watched.
    writes: usize,
    /// The session's status at each look.
    statuses: Vec<sonde_crds::ProbeSessionStatus>,
}

impl Watched {
    fn renewal_gaps(&self) -> Vec<f64> {
        self.renewals
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64())
            .collect()
    }

    /// ARCHITECTURE.md: the agent renews its node's Lease every 10 s. Measured by the agent's own clock (the
    /// renewal times it wrote), so a busy API server or test process does not count against it.
    fn lease_renewed_every_10s(&self) {
        let gaps = self.renewal_gaps();
        assert!(
            self.renewals.len() >= 3,
            "{} lease renewals seen: {:?}",
            self.renewals.len(),
            self.renewals
        );
        assert!(
            gaps.iter().all(|g| (9.0..=11.0).contains(g)),
            "lease renewals {gaps:?} s apart by the agent's clock; every 10 s"
        );
    }
}

/// Looks at session `name` and this node's agent Lease every 500 ms for `span`.
async fn watch_writes(s: &Scene, name: &str, span: Duration) -> Watched {
    let sessions = s.sessions();
    let mut versions = std::collections::BTreeSet::new();
    let mut w = Watched {
        renewals: vec![],
        writes: 0,
        statuses: vec![],
    };
    let until = Instant::now() + span;
    while Instant::now() < until {
        let renewed = s
            .agent_lease()
            .await
            .and_then(|l| l.spec?.renew_time)
            .map(|t| t.0);
        if let Some(t) = renewed
            && w.renewals.last() != Some(&t)
        {
            w.renewals.push(t);
        }
        let session = sessions.get(name).await.unwrap();
        versions.insert(session.metadata.resource_version.clone());
        w.statuses.push(session.status.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.writes = versions.len() - 1;
    w
}

/// An idle session writes nothing: a job whose pod sleeps has nothing to report, so its agent's only write is its
/// node's Lease every 10 s (as a kubelet's node lease), where it once wrote the session's status every 2 s.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_writes_nothing_but_its_nodes_lease() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("idle").await;
    s.pod("sleeper", "ping", CgroupDriver::Systemd, &["sleep", "600"])
        .await;
    s.create_job(&wakeups_job("idle", "10m")).await;
    s.wait_attached("idle").await;
    let name = s.session_named("idle").await.metadata.name.unwrap();
    let watched = watch_writes(&s, &name, Duration::from_secs(25)).await;
    eprintln!(
        "idle: {} status writes in 25 s; lease renewals {:?} s apart",
        watched.writes,
        watched.renewal_gaps()
    );
    assert_eq!(watched.writes, 0, "an idle session's status was written");
    watched.lease_renewed_every_10s();
    let st = watched.statuses.last().unwrap();
    assert_eq!(st.phase, Phase::Running, "{st:#?}");
    assert_eq!(
        st.counts.captured, 0,
        "the sleeper was woken: {:?}",
        st.counts
    );
}

/// Field case B on the cluster path: the receiving pod lives in a network namespace behind a veth with a tight
/// tbf; the job reports slow segments whose delay sits between xmit and receive.
#[tokio::test(flavor = "multi_thread")]
async fn packet_latency_job_reports_slow_segments_of_the_pod() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("packets").await;
    let mut pair = sonde_tests::NetPair::new("e2e", 79, sonde_tests::TIGHT_TBF);
    s.pod("sink", "sink", CgroupDriver::Cgroupfs, &pair.sink_argv())
        .await;
    let yaml = r#"
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: slow-segments}
spec:
  probe: packet-latency
  target: {podSelector: {matchLabels: {app: sink}}}
  duration: 5s
  params: {packetLatency: {ports: [5201]}}
  thresholds: [{metric: segmentLatencyMs, comparison: GreaterOrEqual, value: 5}]
  output: {events: false}
"#;
    s.create_job(yaml).await;
    s.wait_attached("slow-segments").await;
    pair.start_sender(3.0);
    let job = s
        .wait_job("slow-segments", Duration::from_secs(40), finished)
        .await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert!(st.counts.breaches >= 10, "{st:#?}");
    let summary = st.summary.unwrap();
    assert!(
        summary
            .rows
            .iter()
            .any(|r| r.key.contains("__netif_receive_skb") && r.max.unwrap_or(0.0) >= 5.0),
        "{summary:#?}"
    );
    let events_url = st
        .results
        .iter()
        .find(|u| u.ends_with("/events/manifest.json"))
        .expect("breaching events kept");
    sonde_tests::assert_tcp_stage_is_quick(&sonde_tests::slow_segments(events_url, 5.0));
}

/// apply -> Attached over 20 jobs, one after another: ARCHITECTURE.md states a p95 of at most 1 s (measured
/// p50 0.32 s, p95 0.44 s with the operator, agent and API server on this host's two cores).
#[tokio::test(flavor = "multi_thread")]
async fn apply_to_attached_latency_over_20_jobs() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("latency").await;
    s.ping_pod("ping").await;
    let sessions = s.sessions();
    let mut took = Vec::new();
    for i in 0..20 {
        let name = format!("quick-{i}");
        let t0 = Instant::now();
        s.create_job(&wakeups_job(&name, "1s")).await;
        let attached = wait_for_every(
            Duration::from_secs(20),
            Duration::from_millis(10),
            || async {
                sessions
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items.iter().any(|p| {
                            p.metadata
                                .name
                                .as_deref()
                                .is_some_and(|n| n.starts_with(&name))
                                && p.status.as_ref().is_some_and(|st| st.attached_at.is_some())
                        })
                    })
                    .unwrap_or(false)
            },
        )
        .await;
        assert!(attached, "{name} never attached");
        took.push(t0.elapsed());
        s.wait_job(&name, Duration::from_secs(30), finished).await;
        s.jobs()
            .delete(&name, &DeleteParams::background())
            .await
            .unwrap();
    }
    took.sort();
    let p = |q: f64| took[((took.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "apply -> attached over {} jobs: p50 {:?}, p95 {:?}, max {:?}",
        took.len(),
        p(0.5),
        p(0.95),
        took[took.len() - 1]
    );
    assert!(
        p(0.95) <= Duration::from_secs(1),
        "apply -> attached p95 {:?}, over the documented 1 s",
        p(0.95)
    );
}

/// Two replicas: one leads, the other takes over when the leader dies, and reconciles from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_operator_takes_over_the_lease() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("leader").await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(s.client.clone(), &s.lease_ns);
    // An API error fails the test: read as "" it once passed the check that the stopped leader let go.
    let holder = || async {
        leases
            .get_opt("sonde-operator")
            .await
            .expect("reading the lease")
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default()
    };
    assert!(
        wait_for(Duration::from_secs(10), || async {
            holder().await == "e2e-operator"
        })
        .await,
        "first replica never led"
    );
    // Only now the standby: started together, either could win the lease.
    let port = free_port();
    let standby = Component::operator_named(
        &s.operator_kc,
        &s.lease_ns,
        s.dir.path(),
        "e2e-standby",
        port,
    );
    let up = wait_for(Duration::from_secs(10), || async {
        http_get(port, "/healthz")
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert!(up, "the standby never served /healthz");
    assert_eq!(
        holder().await,
        "e2e-operator",
        "the standby took a lease that was held"
    );
    let status = |path: &'static str| async move { http_get(port, path).await.map(|(c, _)| c) };
    assert_eq!(
        status("/readyz").await,
        Some(503),
        "the standby claims to be ready"
    );
    s.operator.as_mut().unwrap().kill();
    let t0 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || async {
            holder().await == "e2e-standby"
        })
        .await,
        "the standby never took over"
    );
    eprintln!(
        "standby took the lease {:?} after the leader died (lease 4 s)",
        t0.elapsed()
    );
    assert_eq!(status("/readyz").await, Some(200));
    s.operator = Some(standby);
    s.ping_pod("ping").await;
    s.create_job(&(wakeups_job("after-failover", "2s") + "  ttlSecondsAfterFinished: 1\n"))
        .await;
    s.wait_job("after-failover", Duration::from_secs(30), finished)
        .await;
    // The TTL deletes the finished job.
    let jobs = s.jobs();
    let gone = wait_for(Duration::from_secs(15), || async {
        jobs.get_opt("after-failover")
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;
    assert!(gone, "ttlSecondsAfterFinished did not delete the job");
    let metrics = http_get(port, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        metrics.contains("sonde_operator_reconciles_total{kind=\"tracejob\"}"),
        "{metrics}"
    );
    // A rollout's SIGTERM: the leader stops at once and hands the lease over rather than letting it expire; a
    // standby waiting for it leads within one poll, lease/3 (ARCHITECTURE.md), plus the API round trips of its
    // try (allowance 250 ms).
    let third_port = free_port();
    let _third = Component::operator_named(
        &s.operator_kc,
        &s.lease_ns,
        s.dir.path(),
        "e2e-third",
        third_port,
    );
    let third_up = wait_for(Duration::from_secs(10), || async {
        http_get(third_port, "/healthz")
            .await
            .is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert!(third_up, "the third replica never served /healthz");
    assert_eq!(holder().await, "e2e-standby");
    let exited = s
        .operator
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(5));
    let released = Instant::now();
    assert!(exited.is_some_and(|st| st.success()), "SIGTERM: {exited:?}");
    let after = holder().await;
    assert_ne!(after, "e2e-standby", "the stopped leader kept the lease");
    let taken = wait_for(Duration::from_secs(10), || async {
        holder().await == "e2e-third"
    })
    .await;
    let took = released.elapsed();
    eprintln!("the waiting standby led {took:?} after the leader exited on SIGTERM (lease 4 s)");
    assert!(taken, "the waiting standby never took the released lease");
    assert!(
        took <= Duration::from_millis(4000 / 3 + 250),
        "the waiting standby led {took:?} after the release, more than lease/3"
    );
}

fn wakeups_policy(name: &str, per_second: u32, suspend: bool) -> String {
    format!(
        r#"
apiVersion: sonde.dev/v1alpha1
kind: ProbePolicy
metadata: {{name: {name}}}
spec:
  probe: wakeups
  target: {{podSelector: {{matchLabels: {{app: ping}}}}}}
  window: 10s
  thresholds: [{{metric: wakeupsPerSecond, value: {per_second}}}]
  output: {{events: false}}
  suspend: {suspend}
"#
    )
}

/// Fair shares of a node: one namespace's twelve ProbePolicies take at most half of the agent's twelve session
/// slots (the chart's defaults, maxSessionsPerNamespace 6): the rest are refused with NamespaceAtShare, naming
/// the limit, and another namespace's job on the same node attaches and succeeds. Before the per-namespace
/// share, team-a held all twelve slots and team-b's job failed with NodeAtCapacity.
#[tokio::test(flavor = "multi_thread")]
async fn one_namespaces_policies_leave_room_on_the_node_for_another_namespaces_job() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("share-a").await;
    s.ping_pod("ping").await;
    let other = TestNamespace::create(s.plane, "share-b").await;
    let pod = RealPod::start(
        &s.client,
        &other.name,
        "ping",
        &[("app", "ping")],
        CgroupDriver::Systemd,
        &fast_ping_argv(),
    )
    .await
    .expect("team-b's pod");
    s.pods.push(pod);
    let policies: Vec<String> = (0..12)
        .map(|i| wakeups_policy(&format!("standing-{i}"), 1_000_000, false))
        .collect();
    let file = s.dir.path().join("policies.yaml");
    std::fs::write(&file, policies.join("---\n")).unwrap();
    let (ok, _, err) = s.plane_kubectl(&["apply", "-n", &s.ns.name, "-f", file.to_str().unwrap()]);
    assert!(ok, "kubectl apply: {err}");
    // Six run; six are refused by the agent, each naming the namespace's share.
    let settled = || async {
        let sessions = s.session_list().await;
        let running = sessions
            .iter()
            .filter(|x| {
                x.status
                    .as_ref()
                    .is_some_and(|st| st.phase == Phase::Running)
            })
            .count();
        let refused: Vec<String> = sessions
            .iter()
            .filter_map(|x| x.status.as_ref())
            .filter(|st| st.phase == Phase::Failed)
            .filter_map(|st| st.conditions.iter().find(|c| c.type_ == types::FAILED))
            .map(|c| format!("{}: {}", c.reason, c.message))
            .collect();
        (running, refused)
    };
    let shared = wait_for(Duration::from_secs(60), || async {
        let (running, refused) = settled().await;
        running == 6 && refused.len() == 6
    })
    .await;
    let (running, refused) = settled().await;
    assert!(shared, "{running} running, refused: {refused:#?}");
    for r in &refused {
        assert!(
            r.starts_with("NamespaceAtShare: ")
                && r.contains(&format!("namespace {} already runs 6 sessions", s.ns.name))
                && r.contains("agent.limits.maxSessionsPerNamespace"),
            "{r}"
        );
    }
    // team-b's job on the same node: attached and done, its answer intact.
    let jobs: Api<TraceJob> = Api::namespaced(s.client.clone(), &other.name);
    let job: TraceJob = serde_yaml::from_str(&wakeups_job("neighbour", "3s")).unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let done = wait_for(Duration::from_secs(40), || async {
        jobs.get("neighbour").await.is_ok_and(|j| finished(&j))
    })
    .await;
    let st = jobs
        .get("neighbour")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(done, "team-b's job did not finish: {st:#?}");
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert_eq!(st.nodes.attached, 1, "{st:#?}");
    assert!(st.counts.captured > 0, "{st:#?}");
}

/// A standing probe: windows roll with their summary, breaches raise the condition and an Event; editing the
/// policy (as GitOps would re-apply it) reloads its sessions only, not another policy's; suspend detaches.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_policy_rolls_windows_raises_breaches_and_converges_on_edits() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("policy").await;
    let listener = s.isc_socket();
    let ping = s.ping_pod("ping").await;
    let apply = |yaml: String| {
        let file = s.dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).unwrap();
        let (ok, _, err) =
            s.plane_kubectl(&["apply", "-n", &s.ns.name, "-f", file.to_str().unwrap()]);
        assert!(ok, "kubectl apply: {err}");
    };
    apply(wakeups_policy("noisy", 20, false));
    // A second, unrelated policy on the same pods must not be disturbed by edits of the first.
    let other = r#"
apiVersion: sonde.dev/v1alpha1
kind: ProbePolicy
metadata: {name: runq}
spec:
  probe: runq-latency
  target: {podSelector: {matchLabels: {app: ping}}}
  window: 10s
  thresholds: [{metric: runqLatencyUs, value: 1000000}]
"#;
    apply(other.to_string());

    let policies: Api<sonde_crds::ProbePolicy> = Api::namespaced(s.client.clone(), &s.ns.name);
    let status = |name: &'static str| {
        let policies = policies.clone();
        async move { policies.get(name).await.ok().and_then(|p| p.status) }
    };
    let key = format!("ping/{ping} -> isc-socket/{listener}");
    let breached = wait_for(Duration::from_secs(45), || async {
        status("noisy").await.is_some_and(|st| {
            is_true(&st.conditions, types::THRESHOLD_BREACHED)
                && st
                    .last_window
                    .as_ref()
                    .is_some_and(|w| w.rows.iter().any(|r| r.key == key))
        })
    })
    .await;
    let st = status("noisy").await.unwrap_or_default();
    assert!(breached, "no breaching window with {key}: {st:#?}");
    assert!(st.last_breach_time.is_some() && st.counts.breaches > 0);
    assert_eq!(st.progress.as_deref(), Some("1/1"));
    let reasons: Vec<String> = s
        .events_for("noisy")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "ThresholdBreached"),
        "{reasons:?}"
    );

    // Edit: a threshold nothing reaches. Only this policy's session reloads, and its windows go quiet.
    let runq_before = s.session_named("runq-").await;
    apply(wakeups_policy("noisy", 1_000_000, false));
    let quiet = wait_for(Duration::from_secs(45), || async {
        status("noisy").await.is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == types::THRESHOLD_BREACHED && c.status == "False")
        })
    })
    .await;
    assert!(
        quiet,
        "the edited policy still breaches: {:#?}",
        status("noisy").await
    );
    let runq_after = s.session_named("runq-").await;
    assert_eq!(runq_before.metadata.uid, runq_after.metadata.uid);
    assert_eq!(
        runq_before.status.and_then(|st| st.attached_at),
        runq_after.status.and_then(|st| st.attached_at),
        "the unrelated policy was re-attached"
    );

    // Suspend: its sessions go and its programs detach; the other policy stays.
    apply(wakeups_policy("noisy", 1_000_000, true));
    let detached = wait_for(Duration::from_secs(15), || async {
        bpf_programs(WAKEUPS_PROGS).is_empty()
    })
    .await;
    assert!(detached, "wakeups programs still attached after suspend");
    let st = status("noisy").await.unwrap();
    let attached = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::ATTACHED)
        .unwrap();
    assert_eq!(attached.reason, "Suspended", "{attached:?}");
    assert_eq!(
        s.session_list().await.len(),
        1,
        "only the runq policy's session remains"
    );
}

/// Results go to a real S3 server when the job names the admin's storage location that is one (the agent's
/// `--storage-locations`): the status links s3:// URLs and the objects are there.
#[tokio::test(flavor = "multi_thread")]
async fn results_go_to_s3_when_the_job_says_so() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("s3").await;
    let s3 = sonde_tests::S3Server::start();
    s3.create_bucket("sonde-e2e");
    s.agent_with_archive(&s3, &[]);
    s.ping_pod("ping").await;
    let yaml = wakeups_job("to-s3", "3s") + "  storage: {location: archive}\n";
    s.create_job(&yaml).await;
    let job = s.wait_job("to-s3", Duration::from_secs(40), finished).await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    assert_results_in_the_archive(&st);
    let keys = s3.keys("sonde-e2e");
    let summary_key = keys
        .iter()
        .find(|k| k.ends_with("/summary.json"))
        .unwrap_or_else(|| panic!("no summary.json in {keys:?}"));
    assert!(
        st.results
            .iter()
            .any(|u| u == &format!("s3://sonde-e2e/{summary_key}")),
        "{summary_key} vs {:?}",
        st.results
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&s3.get("sonde-e2e", summary_key)).unwrap();
    assert_eq!(summary["probe"], "wakeups");
    assert_eq!(
        summary["counts"]["captured"].as_u64(),
        Some(st.counts.captured)
    );
}

/// A TraceJob and a ProbePolicy of one name in one namespace would name their sessions alike: the second one
/// is refused with reason SessionNameTaken, naming the first, whose session stays its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_never_takes_over_a_jobs_session_of_the_same_name() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("samename").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("twin", "60s")).await;
    s.wait_attached("twin").await;
    let job_uid = s.jobs().get("twin").await.unwrap().metadata.uid.unwrap();
    let policy: sonde_crds::ProbePolicy =
        serde_yaml::from_str(&wakeups_policy("twin", 20, false)).unwrap();
    let policies: Api<sonde_crds::ProbePolicy> = Api::namespaced(s.client.clone(), &s.ns.name);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let refused = wait_for(Duration::from_secs(30), || async {
        let p = policies.get("twin").await.unwrap();
        p.status.is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == types::ATTACHED && c.reason == "SessionNameTaken")
        })
    })
    .await;
    let st = policies.get("twin").await.unwrap().status;
    assert!(refused, "the policy was not refused: {st:?}");
    let c = st
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == types::ATTACHED)
        .unwrap();
    assert!(c.message.contains("TraceJob twin"), "{}", c.message);
    let sessions = s.session_list().await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let owner = sessions[0].metadata.labels.as_ref().unwrap()[sonde_crds::OWNER_UID_LABEL].clone();
    assert_eq!(owner, job_uid, "the job's session changed hands");
    assert!(sessions[0].spec.window.is_none() && sessions[0].spec.deadline.is_some());
}

/// Durable results: the object store is down for the whole job and the agent is killed (SIGKILL) before it
/// comes back. The job still succeeds, says its results are pending upload on the node; the restarted agent finds
/// them in its spool and uploads them once the store is back, and the job then says they arrived late. Every
/// event the agent captured is in the store, and the summary's counts are the status's.
#[tokio::test(flavor = "multi_thread")]
async fn results_wait_out_an_object_store_outage_and_an_agent_restart() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("outage").await;
    let mut s3 = sonde_tests::S3Server::start();
    s.agent_with_archive(&s3, &[]);
    s.ping_pod("ping").await;
    s3.stop();
    let yaml = wakeups_job("outage", "3s") + "  storage: {location: archive}\n";
    s.create_job(&yaml).await;
    let job = s
        .wait_job("outage", Duration::from_secs(40), finished)
        .await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    let upload = st.upload.clone().expect("no upload state");
    assert_eq!(upload.state, sonde_crds::UploadState::Pending, "{st:#?}");
    assert!(
        upload.pending >= 1 && upload.oldest_pending.is_some(),
        "{upload:?}"
    );
    let pending = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::RESULTS_COMPLETE)
        .unwrap();
    assert_eq!(pending.reason, "UploadPending", "{pending:?}");
    assert!(st.results.is_empty(), "{:?}", st.results);
    // Restarted with a spool cap that the waiting results exceed: a second job keeps no events, and says so.
    s.agent_with_archive(&s3, &[("SONDE_MAX_SPOOL_MIB", "0")]);
    s.create_job(&(wakeups_job("outage-2", "3s") + "  storage: {location: archive}\n"))
        .await;
    let second = s
        .wait_job("outage-2", Duration::from_secs(40), finished)
        .await;
    let second = second.status.unwrap();
    let note = second.node_results[0].message.clone().unwrap_or_default();
    assert!(
        note.contains("counted but not kept") && note.contains("agent.limits.maxSpoolMiB"),
        "the full spool was not reported: {second:#?}"
    );
    // Counted by reason, in the status and the node's metric; all of them, as nothing was kept.
    let refused = second.counts.not_kept.get("SpoolFull").copied();
    assert!(
        refused.is_some_and(|n| n > 0) && refused == Some(second.counts.captured),
        "{:?}",
        second.counts
    );
    let port = s.agent.as_ref().unwrap().metrics_port.unwrap();
    let metrics = http_get(port, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let line = format!(
        "sonde_agent_events_not_kept_total{{reason=\"SpoolFull\"}} {}",
        refused.unwrap_or_default()
    );
    assert!(metrics.contains(&line), "no `{line}` in {metrics}");

    s.agent_with_archive(&s3, &[]);
    s3.restart();
    s3.create_bucket("sonde-e2e");
    let job = s
        .wait_job(
            "outage",
            Duration::from_secs(120),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
    let st = job.status.unwrap();
    let late = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::RESULTS_COMPLETE)
        .unwrap();
    assert_eq!(
        (late.status.as_str(), late.reason.as_str()),
        ("True", "UploadedLate"),
        "{late:?}"
    );
    assert_results_in_the_archive(&st);
    s.wait_job(
        "outage-2",
        Duration::from_secs(60),
        upload_is(sonde_crds::UploadState::Complete),
    )
    .await;
    let keys = s3.keys("sonde-e2e");
    let key = |name: &str| {
        keys.iter()
            .filter(|k| !k.contains("/outage-2-"))
            .find(|k| k.ends_with(name))
            .unwrap_or_else(|| panic!("no {name} in {keys:?}"))
            .clone()
    };
    // The job's folder as the store has it: every chunk the manifest lists, each checked (SHA-256, lines).
    let summary_key = key("/summary.json");
    let prefix = summary_key.trim_end_matches("summary.json");
    let (manifest, events, _) = stored_folder(&s3, &keys, prefix);
    assert!(manifest.complete, "{manifest:?}");
    let lines = events.len() as u64;
    assert_eq!(
        lines, st.counts.captured,
        "events in the store vs captured: {:?}",
        st.counts
    );
    assert!(lines > 0, "no event captured");
    let summary: serde_json::Value =
        serde_json::from_slice(&s3.get("sonde-e2e", &key("/summary.json"))).unwrap();
    assert_eq!(
        summary["counts"]["captured"].as_u64(),
        Some(st.counts.captured)
    );
    let spooled: Vec<_> = walk_files(&s.dir.path().join("spool"));
    assert!(spooled.is_empty(), "left in the spool: {spooled:?}");
}

/// Durable results while a job runs: a reader that polls the store sees the job's event chunks within seconds
/// of capture; the store goes away twice mid-job (the job says its results are pending meanwhile) and the agent
/// is killed (SIGKILL) in the middle of a chunk's upload, after the store took the chunk and before the agent
/// heard so. At the end one manifest lists every chunk once, the store holds no chunk it does not list, every
/// chunk checks out, and the events of both agent processes are there.
#[tokio::test(flavor = "multi_thread")]
async fn results_stream_through_two_store_outages_and_an_agent_killed_mid_upload() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("stream").await;
    let mut s3 = sonde_tests::S3Server::start();
    s3.create_bucket("sonde-e2e");
    s.agent_with_archive(&s3, &[]);
    s.ping_pod("ping").await;
    let reader = s3.live_reader("sonde-e2e", &format!("runs/tracejobs/{}/", s.ns.name));
    let seen = |s3: &sonde_tests::S3Server| -> usize {
        s3.keys("sonde-e2e")
            .iter()
            .filter(|k| k.ends_with(".ndjson.gz"))
            .count()
    };
    s.create_job(&(wakeups_job("stream", "45s") + "  storage: {location: archive}\n"))
        .await;
    s.wait_attached("stream").await;
    assert!(
        wait_for(Duration::from_secs(15), || async { seen(&s3) >= 2 }).await,
        "no chunk reached the store while the job runs"
    );
    // Disturbed spans (CLOCK_MONOTONIC): from an outage or the agent's kill until the store has a new chunk.
    // The documented capture-to-visible figures are for chunks whose capture-to-read span misses them all.
    let mut disturbed: Vec<(u64, u64)> = vec![];
    // Outage 1: the job says its results wait on the node, then streams on once the store is back.
    let down = sonde_tests::monotonic_ns();
    s3.stop();
    let job = s
        .wait_job(
            "stream",
            Duration::from_secs(20),
            upload_is(sonde_crds::UploadState::Pending),
        )
        .await;
    let cond = job
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == types::RESULTS_COMPLETE)
        .cloned();
    assert_eq!(cond.map(|c| c.reason), Some("UploadPending".into()));
    s3.restart();
    let before = seen(&s3);
    let job = s
        .wait_job(
            "stream",
            Duration::from_secs(20),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
    let st = job.status.as_ref().unwrap();
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == types::RESULTS_COMPLETE);
    assert!(
        !st.phase.is_finished() && cond.is_some_and(|c| c.reason == "Streaming"),
        "{st:#?}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || async { seen(&s3) > before }).await,
        "streaming did not resume after the outage"
    );
    disturbed.push((down, sonde_tests::monotonic_ns()));
    // Outage 2.
    let down = sonde_tests::monotonic_ns();
    s3.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    s3.restart();
    // Killed mid-upload: the store has taken a chunk, the agent has not heard so.
    s3.hold_answers();
    assert!(
        wait_for(Duration::from_secs(15), || async { s3.answers_held() > 0 }).await,
        "no upload under way to interrupt"
    );
    s.agent_with_archive(&s3, &[]);
    s3.release_answers();
    let before = seen(&s3);
    assert!(
        wait_for(Duration::from_secs(15), || async { seen(&s3) > before }).await,
        "the restarted agent sent no chunk"
    );
    disturbed.push((down, sonde_tests::monotonic_ns()));
    let job = s
        .wait_job("stream", Duration::from_secs(60), finished)
        .await;
    assert_eq!(
        job.status.as_ref().unwrap().phase,
        Phase::Succeeded,
        "{job:#?}"
    );
    let job = s
        .wait_job(
            "stream",
            Duration::from_secs(60),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
    let st = job.status.unwrap();
    let chunks_seen = reader.finish();

    let keys = s3.keys("sonde-e2e");
    let summary_key = keys
        .iter()
        .find(|k| k.ends_with("/summary.json"))
        .unwrap_or_else(|| panic!("no summary.json in {keys:?}"));
    let prefix = summary_key.trim_end_matches("summary.json");
    let (manifest, events, stored_chunks) = stored_folder(&s3, &keys, prefix);
    assert!(manifest.complete && manifest.resumed == 1, "{manifest:?}");
    let listed: Vec<String> = manifest.chunks.iter().map(|c| c.file.clone()).collect();
    assert_eq!(stored_chunks, listed, "chunks in the store vs the manifest");
    assert!(
        manifest
            .chunks
            .iter()
            .enumerate()
            .all(|(i, c)| c.seq == i as u64),
        "{manifest:?}"
    );
    assert_eq!(events.len() as u64, manifest.lines);
    assert!(
        events.len() as u64 > st.counts.captured,
        "{} events stored, {} captured after the restart: none kept from before it",
        events.len(),
        st.counts.captured
    );
    // The live reader: how long from an event's capture to its chunk being readable in the store, for the
    // chunks no outage or restart held back (ARCHITECTURE.md, "Capture to visible").
    let undisturbed: Vec<&sonde_tests::SeenChunk> = chunks_seen
        .iter()
        .filter(|c| {
            let from = c.first_ts_ns.unwrap_or_default();
            disturbed.iter().all(|(a, b)| c.seen_ns < *a || from > *b)
        })
        .collect();
    let mut latencies: Vec<Duration> = undisturbed.iter().filter_map(|c| c.latency()).collect();
    let mut oldest: Vec<Duration> = undisturbed
        .iter()
        .filter_map(|c| c.oldest_latency())
        .collect();
    latencies.sort();
    oldest.sort();
    // The 90th percentile by nearest rank: with 14 or so chunks a 95th is the maximum, bounded apart.
    let p90 = |v: &[Duration]| v[((v.len() as f64 * 0.9).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "live reader: {} chunks ({} in the manifest, {} held back by an outage or the restart); capture to \
         visible in the store, a chunk's newest event: {latencies:?}; its oldest: {oldest:?}",
        latencies.len(),
        manifest.chunks.len(),
        chunks_seen.len() - undisturbed.len(),
    );
    assert!(
        latencies.len() >= 5,
        "too few undisturbed chunks to measure: {latencies:?}"
    );
    // Documented (ARCHITECTURE.md, "Capture to visible"): a chunk's newest event readable within 1 s for 90 % of
    // the chunks and 2 s for all, its oldest within 4 s (the 2 s chunk age limit plus 2 s). Measured 0.1 to
    // 0.7 s and 1.4 to 2.8 s, once 1.40 s and 3.50 s for one chunk of 14 in CI.
    let (newest_p90, newest_max) = (p90(&latencies), latencies[latencies.len() - 1]);
    let oldest_max = oldest[oldest.len() - 1];
    assert!(
        newest_p90 <= Duration::from_secs(1)
            && newest_max <= Duration::from_secs(2)
            && oldest_max <= Duration::from_secs(4),
        "capture to visible: newest p90 {newest_p90:?}, max {newest_max:?} (bounds 1 s, 2 s); oldest max \
         {oldest_max:?} (bound 4 s)"
    );
}

/// A job's folder as the store has it (`prefix` ends with `/`), read back and checked (every chunk the
/// manifest lists, SHA-256 and lines): the manifest, the events and the chunk names found in the store, sorted.
fn stored_folder(
    s3: &sonde_tests::S3Server,
    keys: &[String],
    prefix: &str,
) -> (
    sonde_probes::chunks::Manifest,
    Vec<serde_json::Value>,
    Vec<String>,
) {
    let copy = tempfile::tempdir().unwrap();
    let mut chunks = Vec::new();
    for k in keys.iter().filter(|k| k.starts_with(prefix)) {
        let name = &k[prefix.len()..];
        if let Some(chunk) = name
            .strip_prefix("events/")
            .filter(|n| n.ends_with(".ndjson.gz"))
        {
            chunks.push(chunk.to_string());
        }
        let path = copy.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, s3.get("sonde-e2e", k)).unwrap();
    }
    chunks.sort();
    let (manifest, events) = sonde_probes::chunks::read_events(copy.path())
        .unwrap_or_else(|e| panic!("the stored events of {prefix}: {e}"));
    (manifest, events, chunks)
}

/// The spool cap reached mid-job (the store is down, and the agent's cap is 0 MiB: the first chunk waiting
/// fills it): from then on the job's events are counted, by reason, and not kept; those kept before are intact
/// and reach the store once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_stops_keeping_events_and_keeps_what_came_before() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("capped").await;
    let mut s3 = sonde_tests::S3Server::start();
    s3.create_bucket("sonde-e2e");
    s.agent_with_archive(&s3, &[("SONDE_MAX_SPOOL_MIB", "0")]);
    s.ping_pod("ping").await;
    s3.stop();
    s.create_job(&(wakeups_job("capped", "8s") + "  storage: {location: archive}\n"))
        .await;
    let job = s
        .wait_job("capped", Duration::from_secs(40), finished)
        .await;
    let st = job.status.unwrap();
    let refused = st
        .counts
        .not_kept
        .get("SpoolFull")
        .copied()
        .unwrap_or_default();
    let kept = st.counts.captured - refused;
    assert!(refused > 0 && kept > 0, "{:?}", st.counts);
    s.agent_with_archive(&s3, &[]);
    s3.restart();
    s.wait_job(
        "capped",
        Duration::from_secs(60),
        upload_is(sonde_crds::UploadState::Complete),
    )
    .await;
    let keys = s3.keys("sonde-e2e");
    let manifest_key = keys
        .iter()
        .find(|k| k.ends_with("/events/manifest.json"))
        .unwrap_or_else(|| panic!("no manifest in {keys:?}"));
    let prefix = manifest_key.trim_end_matches("events/manifest.json");
    let (manifest, events, chunks) = stored_folder(&s3, &keys, prefix);
    assert!(manifest.complete, "{manifest:?}");
    assert_eq!(chunks.len(), manifest.chunks.len());
    assert_eq!(
        events.len() as u64,
        kept,
        "events in the store vs kept ({:?})",
        st.counts
    );
}

/// A service account of `ns` that may read TraceJob and ProbePolicy results there (a Role on them and their
/// `results` subresource), and a token of it for the results server's audience.
fn results_reader(plane: &ControlPlane, ns: &str) -> String {
    results_reader_as(plane, ns, "reader")
}

/// A token of service account `account`, bound to the namespace's results reader role by RoleBinding
/// `results-<account>`.
fn results_reader_as(plane: &ControlPlane, ns: &str, account: &str) -> String {
    let yaml = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {account}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: results-reader, namespace: {ns}}}
rules:
- apiGroups: [sonde.dev]
  resources: [tracejobs, tracejobs/results, probepolicies, probepolicies/results]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: results-{account}, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: results-reader}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]
"#
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let (ok, _, err) = plane.kubectl(
        Identity::Admin,
        &["apply", "-f", file.path().to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let (ok, token, err) = plane.kubectl(
        Identity::Admin,
        &[
            "create",
            "token",
            account,
            "-n",
            ns,
            "--audience",
            "sonde-results",
        ],
    );
    assert!(ok, "{err}");
    token.trim().to_string()
}

/// What a Server-Sent Events tail received: each event as it arrived (CLOCK_MONOTONIC) and the last named event
/// (`end`, `refused`) with its data.
struct Followed {
    events: Vec<(u64, serde_json::Value)>,
    last: Option<(String, String)>,
}

/// Follows `path` as Server-Sent Events with `token` (curl, at most 90 s) until the server ends the stream.
fn follow_sse(port: u16, path: &str, token: &str) -> tokio::task::JoinHandle<Followed> {
    let mut tail = tokio::process::Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "90",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let out = tail.stdout.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let _tail = tail;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let (mut events, mut last, mut name) = (Vec::new(), None, None);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(data) = line.strip_prefix("data: ") {
                match name.take() {
                    Some(n) => last = Some((n, data.to_string())),
                    None => {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                            events.push((sonde_tests::monotonic_ns(), v));
                        }
                    }
                }
            }
        }
        Followed { events, last }
    })
}

/// The slow reader's pace, in bytes a second.
const SLOW_RATE: u32 = 16 << 10;

/// Follows `path` as Server-Sent Events with `token` as a slow reader would (tests/readers/slow_sse.py: a 4 KiB
/// receive buffer, at most `rate` bytes a second) until the server ends the stream; each event with the
/// monotonic time it was read.
fn follow_sse_slowly(
    port: u16,
    path: &str,
    token: &str,
    rate: u32,
) -> tokio::task::JoinHandle<Followed> {
    let mut reader = tokio::process::Command::new("python3")
        .arg(sonde_tests::repo_root().join("tests/readers/slow_sse.py"))
        .args([&port.to_string(), path, token, &rate.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let out = reader.stdout.take().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let _reader = reader;
        let mut lines = tokio::io::BufReader::new(out).lines();
        let (mut events, mut last) = (Vec::new(), None);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(data) = line.strip_prefix("E ") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                    events.push((sonde_tests::monotonic_ns(), v));
                }
            } else if let Some(named) = line.strip_prefix("N ") {
                let (name, data) = named.split_once(' ').unwrap_or((named, ""));
                last = Some((name.to_string(), data.to_string()));
            }
        }
        Followed { events, last }
    })
}

/// Prints how long events took from capture to `what` (min, median, max) and fails unless the first took at most
/// 5 s.
fn capture_to(mut latency: Vec<Duration>, what: &str) {
    latency.sort();
    eprintln!(
        "capture to {what}: {} events; min {:?}, median {:?}, max {:?}",
        latency.len(),
        latency.first(),
        latency.get(latency.len() / 2),
        latency.last()
    );
    assert!(
        latency
            .first()
            .is_some_and(|l| *l <= Duration::from_secs(5)),
        "no event {what} within 5 s of capture: {latency:?}"
    );
}

/// The results server on a real API server, S3 server and kernel: a namespaced reader follows a running job's
/// events live (each exactly once, within seconds of capture), then reads its status, summary and every event
/// through pages, and a policy's windows; a reader of another namespace, no token and a forged token are
/// refused on every route; schemathesis finds no server error and no answer off the OpenAPI document.
#[tokio::test(flavor = "multi_thread")]
async fn results_over_rest_to_the_namespace_that_may_read_them_only() {
    sonde_tests::requires!(Root, ControlPlane);
    let rest = Rest::serving().await;
    rest.a_policy_and_a_job_run().await;
    // The live tail, from the start, as Server-Sent Events, read as they arrive; a second reader's tail too,
    // whose RoleBinding is deleted while the job runs: their tail ends, refused, within the server's review
    // allowance (2 s here) and a tail period.
    let reading = follow_sse(
        rest.port,
        &format!("{}/rest/events/tail", rest.base),
        &rest.mine,
    );
    rest.revoked_readers_tails_end_refused().await;
    let tailed = rest.the_job_succeeds_and_its_tail_ends(reading).await;
    let (node, stored) = rest
        .paging_and_the_tail_give_every_stored_event_once(&tailed)
        .await;
    rest.the_cli_reads_what_the_store_has(&stored);
    rest.a_filter_and_a_summary_answer(&node).await;
    rest.every_route_refuses_strangers(&node).await;
    let window = rest.the_policys_windows_are_served(&node).await;
    rest.schemathesis_finds_no_answer_off_the_document(&node, &window)
        .await;
    rest.the_review_cache_holds().await;
    rest.another_namespace_lists_only_its_own().await;
    rest.a_deleted_jobs_tail_ends_gone().await;
}

/// The scene of [`results_over_rest_to_the_namespace_that_may_read_them_only`]: the agent keeping the job's
/// results in an S3 server's bucket (location `archive`), a ping pod, the results server reading both
/// locations, and a results reader's token of the scene's namespace and of another.
struct Rest {
    // Drop order: the results server first, then the other namespace, the S3 server, and the scene last.
    server: Component,
    other: TestNamespace,
    s3: sonde_tests::S3Server,
    s: Scene,
    /// The results server's API port.
    port: u16,
    /// A reader's token of the scene's namespace, and of the other.
    mine: String,
    theirs: String,
    /// The path of the scene's namespace's TraceJobs on the results server.
    base: String,
}

impl Rest {
    async fn serving() -> Rest {
        let mut s = Scene::new("rest").await;
        let s3 = sonde_tests::S3Server::start();
        s3.create_bucket("sonde-e2e");
        s.agent_with_archive(&s3, &[]);
        s.ping_pod("ping").await;
        let other = TestNamespace::create(s.plane, "rest-other").await;
        let mine = results_reader(s.plane, &s.ns.name);
        let theirs = results_reader(s.plane, &other.name);
        let mut env = s3.env();
        env.push((
            "SONDE_STORAGE_LOCATIONS".into(),
            "archive=s3://sonde-e2e/runs".into(),
        ));
        env.push(("SONDE_AUTHORIZED_TTL_SECONDS".into(), "2".into()));
        let server = Component::results(&s.plane.kubeconfig(Identity::Admin), s.dir.path(), &env);
        let port = server.api_port.unwrap();
        assert!(
            wait_for(Duration::from_secs(20), || async {
                http_get_as(port, "/openapi.json", None).await.0 == 200
            })
            .await,
            "the results server did not serve"
        );
        let base = format!("/api/v1/namespaces/{}/tracejobs", s.ns.name);
        Rest {
            server,
            other,
            s3,
            s,
            port,
            mine,
            theirs,
            base,
        }
    }

    /// The job `rest` (results in the archive) attached, and a standing probe beside it, whose windows go to the
    /// default location, which the server reads too.
    async fn a_policy_and_a_job_run(&self) {
        let s = &self.s;
        let policy = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            policy.path(),
            wakeups_policy("rest-watch", 20, false).replace("  output: {events: false}\n", ""),
        )
        .unwrap();
        let (ok, _, err) = s.plane.kubectl(
            Identity::Admin,
            &[
                "apply",
                "-n",
                &s.ns.name,
                "-f",
                policy.path().to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        s.create_job(&(wakeups_job("rest", "12s") + "  storage: {location: archive}\n"))
            .await;
        s.wait_attached("rest").await;
    }

    /// Two more readers' tails of the running job, a prompt one and a slow one, end refused soon after their
    /// RoleBindings are deleted.
    async fn revoked_readers_tails_end_refused(&self) {
        let s = &self.s;
        let port = self.port;
        let base = &self.base;
        let revoked = results_reader_as(s.plane, &s.ns.name, "revoked");
        let revoked_tail = follow_sse(port, &format!("{base}/rest/events/tail"), &revoked);
        // And a slow reader's (hole 6: a tail that never caught up was never asked again), revoked at the same time.
        let slow = results_reader_as(s.plane, &s.ns.name, "slow");
        let slow_tail =
            follow_sse_slowly(port, &format!("{base}/rest/events/tail"), &slow, SLOW_RATE);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (ok, _, err) = s.plane.kubectl(
            Identity::Admin,
            &[
                "delete",
                "rolebinding",
                "results-revoked",
                "results-slow",
                "-n",
                &s.ns.name,
            ],
        );
        assert!(ok, "{err}");
        let revoked_at = Instant::now();
        let revoked_ns = sonde_tests::monotonic_ns();
        let cut = tokio::time::timeout(Duration::from_secs(8), revoked_tail)
            .await
            .expect("the revoked reader's tail went on past the review allowance")
            .unwrap();
        eprintln!(
            "a revoked reader's tail ended {:?} after the RoleBinding was deleted, {} events in",
            revoked_at.elapsed(),
            cut.events.len()
        );
        assert!(
            cut.last
                .as_ref()
                .is_some_and(|(name, why)| name == "refused" && why.contains("may not")),
            "the revoked tail did not end refused: {:?}",
            cut.last
        );
        assert_eq!(
            http_get_as(port, &format!("{base}/rest/events"), Some(&revoked))
                .await
                .0,
            403
        );
        let slow_cut = tokio::time::timeout(Duration::from_secs(30), slow_tail)
            .await
            .expect("the slow revoked reader's tail went on")
            .unwrap();
        let ended = revoked_at.elapsed();
        // How far behind the slow reader was: the newest capture it had read when it was revoked.
        let behind = |at: u64| {
            slow_cut
                .events
                .iter()
                .rev()
                .filter(|(read, _)| *read <= at)
                .find_map(|(read, v)| Some(read.saturating_sub(v["ts_ns"].as_u64()?)))
                .map(Duration::from_nanos)
        };
        eprintln!(
            "a slow revoked reader's tail ended {ended:?} after the RoleBinding was deleted, {} events in, {:?} behind at the deletion, {:?} at the end",
            slow_cut.events.len(),
            behind(revoked_ns),
            behind(u64::MAX)
        );
        assert!(
            slow_cut
                .last
                .as_ref()
                .is_some_and(|(name, why)| name == "refused" && why.contains("may not")),
            "the slow revoked tail did not end refused: {:?}",
            slow_cut.last
        );
        // It was a reader the server never caught up with (seconds behind, and falling further behind), and it still
        // ended within the allowance (2 s), a tail period (0.5 s) and what its connection holds at its pace (at most
        // 16 KiB unsent plus its 8 KiB window: 1.5 s at 16 KiB/s), with 2 s to spare. Before the server bounded what
        // the kernel holds unsent (TCP_NOTSENT_LOWAT), this reader went on for 28 s on what the server had sent
        // ahead into a send buffer grown to megabytes.
        assert!(
            behind(revoked_ns).is_some_and(|b| b >= Duration::from_secs(1)),
            "the slow reader was not behind when revoked: {:?}",
            behind(revoked_ns)
        );
        assert!(
            ended <= Duration::from_secs(6),
            "the slow revoked reader's tail ended {ended:?} after the RoleBinding was deleted"
        );
    }

    /// The job succeeds with its results uploaded, and `reading`, the first reader's tail, ends with `event: end`;
    /// what it received.
    async fn the_job_succeeds_and_its_tail_ends(
        &self,
        reading: tokio::task::JoinHandle<Followed>,
    ) -> Vec<(u64, serde_json::Value)> {
        let s = &self.s;
        let job = s.wait_job("rest", Duration::from_secs(60), finished).await;
        assert_eq!(job.status.as_ref().unwrap().phase, Phase::Succeeded);
        s.wait_job(
            "rest",
            Duration::from_secs(60),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
        let followed = tokio::time::timeout(Duration::from_secs(60), reading)
            .await
            .expect("the tail did not end after the job")
            .unwrap();
        assert_eq!(
            followed.last.as_ref().map(|(name, _)| name.as_str()),
            Some("end"),
            "the tail ended without `event: end`"
        );
        followed.events
    }

    /// Every event through pages of 7, each exactly once, as the store has them, and so `tailed` too, the first
    /// within 5 s of capture. Returns the node with results and the stored events.
    async fn paging_and_the_tail_give_every_stored_event_once(
        &self,
        tailed: &[(u64, serde_json::Value)],
    ) -> (String, Vec<String>) {
        let s3 = &self.s3;
        let port = self.port;
        let mine = &self.mine;
        let base = &self.base;
        let (code, kind, body) = http_get_as(port, &format!("{base}/rest"), Some(mine)).await;
        assert_eq!((code, kind.as_str()), (200, "application/json"), "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(view["status"]["phase"], "Succeeded", "{view}");
        let node = view["nodes"][0]
            .as_str()
            .expect("a node with results")
            .to_string();
        let mut paged = Vec::new();
        let mut cursor = String::new();
        loop {
            let (code, _, body) = http_get_as(
                port,
                &format!("{base}/rest/events?limit=7&cursor={cursor}"),
                Some(mine),
            )
            .await;
            assert_eq!(code, 200, "{body}");
            let page: serde_json::Value = serde_json::from_str(&body).unwrap();
            let events = page["events"].as_array().unwrap();
            assert!(events.len() <= 7);
            paged.extend(events.iter().cloned());
            cursor = page["next"].as_str().unwrap().to_string();
            if page["caughtUp"] == true && page["complete"] == true {
                break;
            }
        }
        let keys = s3.keys("sonde-e2e");
        let prefix = format!(
            "{}/",
            keys.iter()
                .find(|k| k.ends_with("/events/manifest.json"))
                .unwrap()
                .trim_end_matches("/events/manifest.json")
        );
        let (_, stored, _) = stored_folder(s3, &keys, &prefix);
        let stored: Vec<String> = stored.iter().map(|v| v.to_string()).collect();
        assert!(!stored.is_empty(), "no events stored");
        let paged_lines: Vec<String> = paged.iter().map(without_node).collect();
        assert_eq!(paged_lines, stored, "paged events vs the stored ones");
        assert!(paged.iter().all(|e| e["node"] == node.as_str()));
        let tailed_lines: Vec<String> = tailed.iter().map(|(_, v)| without_node(v)).collect();
        assert_eq!(tailed_lines, stored, "tailed events vs the stored ones");
        let latency: Vec<Duration> = tailed
            .iter()
            .filter_map(|(at, v)| {
                Some(Duration::from_nanos(
                    at.saturating_sub(v["ts_ns"].as_u64()?),
                ))
            })
            .collect();
        capture_to(latency, "received from the tail");
        (node, stored)
    }

    /// The CLI, as a user runs it: every event as NDJSON, a summary, and a refusal that says why.
    fn the_cli_reads_what_the_store_has(&self, stored: &[String]) {
        let s = &self.s;
        let port = self.port;
        let mine = &self.mine;
        let theirs = &self.theirs;
        let sonde = |args: &[&str], token: &str| {
            let out = std::process::Command::new(sonde_tests::binary("sonde"))
                .arg("results")
                .args(args)
                .args([
                    "--server",
                    &format!("http://127.0.0.1:{port}"),
                    "-n",
                    &s.ns.name,
                ])
                .env("SONDE_TOKEN", token)
                .output()
                .expect("sonde runs");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (ok, ndjson, err) = sonde(&["events", "rest"], mine);
        assert!(ok, "{err}");
        let cli_lines: Vec<String> = ndjson
            .lines()
            .map(|l| without_node(&serde_json::from_str(l).unwrap()))
            .collect();
        assert_eq!(
            cli_lines, stored,
            "sonde results events vs the stored events"
        );
        let (ok, tailed_cli, err) = sonde(&["tail", "rest"], mine);
        assert!(ok && tailed_cli.lines().count() == stored.len(), "{err}");
        let (ok, listing, err) = sonde(&["list"], mine);
        assert!(
            ok && listing.contains("rest") && listing.contains("Succeeded"),
            "{listing}{err}"
        );
        let (ok, _, err) = sonde(&["show", "rest"], theirs);
        assert!(
            !ok && err.contains("403") && err.contains("may not"),
            "{err}"
        );
    }

    /// A filter that matches nothing answers an empty page and one that is no expression a problem (400); the
    /// node's summary is served.
    async fn a_filter_and_a_summary_answer(&self, node: &str) {
        let port = self.port;
        let mine = &self.mine;
        let base = &self.base;
        let (code, _, body) = http_get_as(
            port,
            &format!("{base}/rest/events?filter=wakee_comm%3D%3Dno-such-task"),
            Some(mine),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"events\":[]"), "{body}");
        let (code, kind, _) = http_get_as(
            port,
            &format!("{base}/rest/events?filter=latency"),
            Some(mine),
        )
        .await;
        assert_eq!((code, kind.as_str()), (400, "application/problem+json"));
        let (code, _, summary) = http_get_as(
            port,
            &format!("{base}/rest/nodes/{node}/summary.json"),
            Some(mine),
        )
        .await;
        assert_eq!(code, 200, "{summary}");
        assert!(summary.contains("\"probe\""), "{summary}");
    }

    /// Every route refuses another namespace's reader (403, whether or not the job exists), no token and a
    /// forged one (401).
    async fn every_route_refuses_strangers(&self, node: &str) {
        let port = self.port;
        let theirs = &self.theirs;
        let base = &self.base;
        let routes = [
            base.clone(),
            format!("{base}/rest"),
            format!("{base}/rest/events"),
            format!("{base}/rest/events/tail"),
            format!("{base}/rest/nodes/{node}/summary.json"),
            format!("{base}/no-such-job"),
        ];
        for r in &routes {
            let (code, kind, body) = http_get_as(port, r, Some(theirs)).await;
            assert_eq!(
                (code, kind.as_str()),
                (403, "application/problem+json"),
                "{r}: {body}"
            );
            assert!(!body.contains("ts_ns"), "{r}: {body}");
            assert_eq!(http_get_as(port, r, None).await.0, 401, "{r}");
            assert_eq!(http_get_as(port, r, Some("forged")).await.0, 401, "{r}");
        }
    }

    /// The policy's windows, each with its events and files, and none to another namespace's reader. Returns the
    /// first window.
    async fn the_policys_windows_are_served(&self, node: &str) -> String {
        let s = &self.s;
        let port = self.port;
        let mine = &self.mine;
        let theirs = &self.theirs;
        let policies = format!("/api/v1/namespaces/{}/probepolicies", s.ns.name);
        let until = Instant::now() + Duration::from_secs(40);
        let window = loop {
            let (_, _, body) =
                http_get_as(port, &format!("{policies}/rest-watch"), Some(mine)).await;
            let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(w) = view["windows"][0]["window"].as_str() {
                break w.to_string();
            }
            assert!(
                Instant::now() < until,
                "no window of the policy listed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let windowed = format!("{policies}/rest-watch/windows/{window}");
        let (code, _, body) =
            http_get_as(port, &format!("{windowed}/events?limit=5000"), Some(mine)).await;
        assert_eq!(code, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            page["complete"] == true && page["caughtUp"] == true,
            "{page}"
        );
        let (code, _, summary) = http_get_as(
            port,
            &format!("{windowed}/nodes/{node}/summary.json"),
            Some(mine),
        )
        .await;
        assert_eq!(code, 200, "{summary}");
        assert!(summary.contains("\"window\""), "{summary}");
        let (code, _, body) = http_get_as(port, &policies, Some(mine)).await;
        assert_eq!(code, 200);
        assert!(body.contains("\"rest-watch\""), "{body}");
        for r in [
            policies.clone(),
            format!("{policies}/rest-watch"),
            format!("{windowed}/events"),
        ] {
            assert_eq!(http_get_as(port, &r, Some(theirs)).await.0, 403, "{r}");
        }
        window
    }

    /// schemathesis (PyPI) fuzzes every route from /openapi.json as this reader, on this job: no server error,
    /// and every answer as documented (status, content type, headers, body schema).
    async fn schemathesis_finds_no_answer_off_the_document(&self, node: &str, window: &str) {
        let s = &self.s;
        let port = self.port;
        let mine = &self.mine;
        let work = tempfile::tempdir().unwrap();
        let config = format!(
            "headers = {{ Authorization = \"Bearer {mine}\" }}\nrequest-timeout = 20.0\n\n[parameters]\n\
             \"path.namespace\" = \"{}\"\n\"path.name\" = \"rest\"\n\"path.node\" = \"{node}\"\n\"path.window\" = \"{window}\"\n",
            s.ns.name
        );
        std::fs::write(work.path().join("schemathesis.toml"), config).unwrap();
        let fuzz = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'st'; sys.exit(schemathesis())",
            ])
            .args(["--config-file", "schemathesis.toml", "run"])
            .arg(format!("http://127.0.0.1:{port}/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-examples",
                "25",
                "--workers",
                "2",
                "--generation-deterministic",
            ])
            .current_dir(work.path())
            .output()
            .await
            .expect("schemathesis (scripts/deps.sh installs it)");
        let report = String::from_utf8_lossy(&fuzz.stdout);
        assert!(
            fuzz.status.success(),
            "schemathesis found problems:\n{report}\n{}",
            String::from_utf8_lossy(&fuzz.stderr)
        );
        eprintln!(
            "schemathesis: {}",
            report.lines().rev().take(8).collect::<Vec<_>>().join(" | ")
        );
    }

    /// The review cache: API calls per request (the paging above made hundreds of requests with one token), under
    /// one in ten.
    async fn the_review_cache_holds(&self) {
        let server = &self.server;
        let metrics = http_get(server.metrics_port.unwrap(), "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        let sum = |prefix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (reviews, requests) = (
            sum("sonde_results_reviews_total"),
            sum("sonde_results_request_duration_seconds_count"),
        );
        eprintln!("review calls: {reviews} for {requests} requests");
        assert!(
            requests > 100.0 && reviews < requests / 10.0,
            "{reviews} reviews for {requests} requests: the cache does not hold"
        );
    }

    /// Their own namespace's list answers, and shows none of ours.
    async fn another_namespace_lists_only_its_own(&self) {
        let port = self.port;
        let theirs = &self.theirs;
        let other = &self.other;
        let (code, _, body) = http_get_as(
            port,
            &format!("/api/v1/namespaces/{}/tracejobs", other.name),
            Some(theirs),
        )
        .await;
        assert_eq!((code, body.as_str()), (200, "[]"));
    }

    /// A tail of a job deleted while it runs ends, saying so, rather than following a folder no job owns.
    async fn a_deleted_jobs_tail_ends_gone(&self) {
        let s = &self.s;
        let port = self.port;
        let mine = &self.mine;
        let base = &self.base;
        s.create_job(&(wakeups_job("doomed", "60s") + "  storage: {location: archive}\n"))
            .await;
        s.wait_attached("doomed").await;
        let doomed_tail = follow_sse(port, &format!("{base}/doomed/events/tail"), mine);
        tokio::time::sleep(Duration::from_secs(1)).await;
        s.jobs()
            .delete("doomed", &DeleteParams::default())
            .await
            .unwrap();
        let deleted_at = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(8), doomed_tail)
            .await
            .expect("the tail of a deleted job went on")
            .unwrap();
        eprintln!(
            "a deleted job's tail ended {:?} after the delete",
            deleted_at.elapsed()
        );
        assert!(
            ended.last.as_ref().is_some_and(|(name, _)| name == "gone"),
            "the tail of the deleted job did not end gone: {:?}",
            ended.last
        );
    }
}

/// An event as the store and the API have it but for the `node` field, which the API adds.
fn without_node(v: &serde_json::Value) -> String {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("node");
    v.to_string()
}

/// The job's result URLs, all in the `archive` location of [`Scene::agent_with_archive`].
fn assert_results_in_the_archive(st: &TraceJobStatus) {
    assert!(
        !st.results.is_empty()
            && st
                .results
                .iter()
                .all(|u| u.starts_with("s3://sonde-e2e/runs/tracejobs/")),
        "{:?}",
        st.results
    );
}

/// Every file below `dir` (none when it does not exist).
fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The web page in headless Chromium, as a namespace's reader uses it: a token pasted into the login form (kept
/// in an HttpOnly cookie the page's script cannot read), the namespace's job list, a running job's live tail
/// filling, then, once it finished, its summary rows and latency chart as the API has them, and a profile's
/// flame graph drawn as an image; a reader of another namespace sees a refusal, not the job. Screenshots of
/// each page stay in target/artifacts/web.
#[tokio::test(flavor = "multi_thread")]
async fn the_web_page_shows_a_running_job_and_its_results_to_its_reader_only() {
    sonde_tests::requires!(Root, ControlPlane);
    let web = Web::with_two_jobs_running().await;
    web.the_reader_logs_in_to_the_job_list().await;
    web.the_running_jobs_tail_fills_within_seconds().await;
    web.the_finished_job_shows_its_summary_and_chart().await;
    web.the_profile_is_drawn_as_a_flame_graph().await;
    web.another_namespaces_reader_is_refused().await;
    web.browser.quit().await;
}

/// The scene of [`the_web_page_shows_a_running_job_and_its_results_to_its_reader_only`]: the results server, a
/// run-queue latency job on a ping pod (running) and a CPU profile of a busy one, a results reader's token of
/// the scene's namespace and of another, and the browser.
struct Web {
    // Drop order: the browser first, then the results server, the other namespace, and the scene last. The
    // server and the namespace are only held: they live as long as the test.
    browser: sonde_tests::Browser,
    _server: Component,
    _other: TestNamespace,
    s: Scene,
    /// The results server's API port, and its page's address.
    port: u16,
    site: String,
    /// A reader's token of the scene's namespace (`ns`), and of the other.
    mine: String,
    theirs: String,
    ns: String,
    /// Where the screenshots of each page go.
    shots: std::path::PathBuf,
}

impl Web {
    async fn with_two_jobs_running() -> Web {
        let mut s = Scene::new("web").await;
        s.ping_pod("ping").await;
        let busy = bounded_argv(
            LOAD_BOUND,
            &["nice", "-n", "19", "sh", "-c", "while :; do :; done"],
        );
        s.pod("busy", "busy", CgroupDriver::Systemd, &busy).await;
        let other = TestNamespace::create(s.plane, "web-other").await;
        let mine = results_reader(s.plane, &s.ns.name);
        let theirs = results_reader(s.plane, &other.name);
        let server = Component::results(&s.plane.kubeconfig(Identity::Admin), s.dir.path(), &[]);
        let port = server.api_port.unwrap();
        assert!(
            wait_for(Duration::from_secs(20), || async {
                http_get_as(port, "/", None).await.0 == 200
            })
            .await,
            "the results server did not serve its page"
        );
        s.create_job(
            r#"
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: web-runq}
spec:
  probe: runq-latency
  target: {podSelector: {matchLabels: {app: ping}}}
  duration: 20s
  thresholds: [{metric: runqLatencyUs, value: 0, comparison: GreaterOrEqual}]
  output: {sampleEvery: 10}
"#,
        )
        .await;
        s.create_job(
            r#"
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: web-profile}
spec:
  probe: cpu-profile
  target: {podSelector: {matchLabels: {app: busy}}}
  duration: 4s
"#,
        )
        .await;
        s.wait_attached("web-runq").await;
        let shots = sonde_tests::artifacts_dir();
        let site = format!("http://127.0.0.1:{port}");
        let ns = s.ns.name.clone();
        let browser = sonde_tests::Browser::start().await;
        Web {
            browser,
            _server: server,
            _other: other,
            s,
            port,
            site,
            mine,
            theirs,
            ns,
            shots,
        }
    }

    /// Logs in on the page's form with `token`, into the scene's namespace.
    async fn log_in(&self, token: &str) {
        let browser = &self.browser;
        browser.goto(&format!("{}/#/login", self.site)).await;
        browser.type_into("#token", token).await;
        browser.type_into("#namespace", &self.ns).await;
        browser.click("#login button[type=submit]").await;
    }

    /// Log in as the reader, into this namespace: the job list, both jobs in it; the token is in a cookie the
    /// page's script cannot read.
    async fn the_reader_logs_in_to_the_job_list(&self) {
        let mine = &self.mine;
        let shots = &self.shots;
        let browser = &self.browser;
        self.log_in(mine).await;
        let listed = browser
            .wait_for(
                Duration::from_secs(20),
                "const rows = [...document.querySelectorAll('#jobs tbody tr')].map(r => r.innerText); \
                 return rows.length >= 2 ? rows : null",
            )
            .await;
        browser.screenshot(shots, "jobs").await;
        let Some(listed) = listed.map(|l| l.to_string()) else {
            panic!("no job list: {}", page_text(browser).await)
        };
        assert!(
            listed.contains("web-runq")
                && listed.contains("web-profile")
                && listed.contains("Running"),
            "{listed}"
        );
        let cookie = browser.eval("return document.cookie").await;
        assert!(
            !cookie.to_string().contains(&mine[..20]),
            "the page's script can read the token: {cookie}"
        );
    }

    /// The running job: its live tail fills while it runs. When each row appears is noted in the page (by the
    /// test, not the page) to measure capture to browser; rows of events captured before that are the backlog.
    async fn the_running_jobs_tail_fills_within_seconds(&self) {
        let shots = &self.shots;
        let browser = &self.browser;
        browser.click("#jobs a[href$='/jobs/web-runq']").await;
        let watching = browser
            .wait_for(
                Duration::from_secs(20),
                "const b = document.querySelector('#events tbody'); if (!b) return null; \
                 if (!window.seenRows) { window.seenRows = []; window.watchedFrom = Date.now(); \
                   new MutationObserver(ms => { const t = Date.now(); \
                     for (const m of ms) for (const n of m.addedNodes) { \
                       const f = n.textContent.match(/ts_ns=(\\d+)/); if (f) window.seenRows.push([t, f[1]]); } \
                   }).observe(b, {childList: true}); } \
                 return window.watchedFrom",
            )
            .await;
        // CLOCK_REALTIME (the browser's Date.now()) minus CLOCK_MONOTONIC (the events' ts_ns), in ns.
        let realtime = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        let offset = (realtime.tv_sec as u64 * 1_000_000_000 + realtime.tv_nsec as u64)
            - sonde_tests::monotonic_ns();
        let live = browser
            .wait_for(
                Duration::from_secs(20),
                "const p = document.getElementById('phase'); \
                 const n = document.querySelectorAll('#events tbody tr').length; \
                 return p && p.textContent === 'Running' && n > 0 ? n : null",
            )
            .await;
        browser.screenshot(shots, "job-running").await;
        assert!(
            live.is_some(),
            "no live events on the running job's page: {}",
            page_text(browser).await
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let from_ms = watching.and_then(|v| v.as_u64()).expect("rows watched");
        let seen = browser.eval("return window.seenRows").await;
        let latency: Vec<Duration> = seen
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let shown_ns = r[0].as_u64()? * 1_000_000;
                let captured_ns = r[1].as_str()?.parse::<u64>().ok()? + offset;
                (captured_ns >= from_ms * 1_000_000)
                    .then(|| Duration::from_nanos(shown_ns.saturating_sub(captured_ns)))
            })
            .collect();
        capture_to(latency, "shown in the browser");
    }

    /// Finished: the summary rows and the latency chart, as the API has them.
    async fn the_finished_job_shows_its_summary_and_chart(&self) {
        let s = &self.s;
        let port = self.port;
        let mine = &self.mine;
        let shots = &self.shots;
        let site = &self.site;
        let ns = &self.ns;
        let browser = &self.browser;
        let job = s
            .wait_job(
                "web-runq",
                Duration::from_secs(60),
                upload_is(sonde_crds::UploadState::Complete),
            )
            .await;
        let summary = job.status.unwrap().summary.expect("a summary");
        let (code, _, view) = http_get_as(
            port,
            &format!("/api/v1/namespaces/{ns}/tracejobs/web-runq"),
            Some(mine),
        )
        .await;
        assert_eq!(code, 200, "{view}");
        let view: serde_json::Value = serde_json::from_str(&view).unwrap();
        let node = view["nodes"][0].as_str().expect("a node with results");
        let (code, _, hists) = http_get_as(
            port,
            &format!("/api/v1/namespaces/{ns}/tracejobs/web-runq/nodes/{node}/histograms.json"),
            Some(mine),
        )
        .await;
        assert_eq!(code, 200, "{hists}");
        let hists: serde_json::Value = serde_json::from_str(&hists).unwrap();
        let buckets: usize = hists
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["buckets"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(buckets > 0, "no histogram buckets: {hists}");
        // A new query string: the page loads afresh, as a reader's reload.
        browser
            .goto(&format!("{site}/?reload#/ns/{ns}/jobs/web-runq"))
            .await;
        let drawn = browser
            .wait_for(
                Duration::from_secs(20),
                "const p = document.getElementById('phase'); \
                 const rows = [...document.querySelectorAll('#summary tbody tr')].map(r => r.innerText); \
                 const bars = document.querySelectorAll('svg.histogram rect.bar').length; \
                 return p && p.textContent === 'Succeeded' && rows.length && bars ? {rows, bars} : null",
            )
            .await;
        browser.screenshot(shots, "job-finished").await;
        let Some(drawn) = drawn else {
            panic!("no summary or chart: {}", page_text(browser).await)
        };
        assert_eq!(drawn["bars"], buckets, "one bar per stored bucket: {drawn}");
        let first = drawn["rows"][0].as_str().unwrap();
        assert!(
            first.contains(&summary.rows[0].key),
            "the first summary row {first:?} is not the status's {:?}",
            summary.rows[0]
        );
    }

    /// The profile's flame graph, drawn by the browser as an image.
    async fn the_profile_is_drawn_as_a_flame_graph(&self) {
        let s = &self.s;
        let shots = &self.shots;
        let site = &self.site;
        let ns = &self.ns;
        let browser = &self.browser;
        s.wait_job(
            "web-profile",
            Duration::from_secs(60),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
        browser
            .goto(&format!("{site}/#/ns/{ns}/jobs/web-profile"))
            .await;
        let flame = browser
            .wait_for(
                Duration::from_secs(20),
                "const i = document.querySelector('img.flamegraph'); \
                 return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null",
            )
            .await;
        browser.screenshot(shots, "flamegraph").await;
        assert!(
            flame.is_some(),
            "no flame graph drawn: {}",
            page_text(browser).await
        );
    }

    /// Another namespace's reader, logged in, is refused the job and its tail.
    async fn another_namespaces_reader_is_refused(&self) {
        let theirs = &self.theirs;
        let shots = &self.shots;
        let site = &self.site;
        let ns = &self.ns;
        let browser = &self.browser;
        self.log_in(theirs).await;
        let refused = browser
            .wait_for(
                Duration::from_secs(20),
                "const e = document.querySelector('#app .error'); return e ? e.textContent : null",
            )
            .await;
        browser
            .goto(&format!("{site}/#/ns/{ns}/jobs/web-runq"))
            .await;
        let job_refused = browser
            .wait_for(
                Duration::from_secs(20),
                "const e = document.querySelector('#app .error'); \
                 return e && e.textContent.includes('tracejobs/results') ? e.textContent : null",
            )
            .await;
        browser.screenshot(shots, "refused").await;
        for (r, what) in [
            (&refused, "list tracejobs"),
            (&job_refused, "tracejobs/results"),
        ] {
            let text = r.as_ref().map(|v| v.to_string()).unwrap_or_default();
            assert!(
                text.contains("403") && text.contains("may not") && text.contains(what),
                "{what}: {text:?}"
            );
        }
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('#summary, #events').length")
                .await,
            0
        );
    }
}

/// What the browser shows, for a failure message.
async fn page_text(browser: &sonde_tests::Browser) -> String {
    browser
        .eval("return document.body.innerText")
        .await
        .to_string()
}

/// A cluster without an object store: the agent puts its results through the results server with its pod-bound
/// token (audience `sonde-results`), the server keeps them on its own volume and serves them from there. Every
/// event the kernel counted is in the server's store, checked against the manifest, and pages back over REST;
/// nothing went to the agent's own directory. The upload route refuses a reader's token, the agent's token
/// without a node, another node's key and a key no session of the node writes (410 when its job does not exist);
/// a chunk put again is taken when it is the same and refused (409) when it is not.
#[tokio::test(flavor = "multi_thread")]
async fn results_reach_the_server_when_the_cluster_has_no_object_store() {
    sonde_tests::requires!(Root, ControlPlane);
    let mut s = Scene::new("intake").await;
    s.ping_pod("ping").await;
    let ns = s.ns.name.clone();
    // The agent's service account and its pod on this node: it never runs (no kubelet here), but a token bound
    // to it is the one the kubelet would project for the agent, naming the node.
    let (ok, _, err) = s.plane.kubectl(
        Identity::Admin,
        &["create", "serviceaccount", "agent", "-n", &ns],
    );
    assert!(ok, "{err}");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(s.client.clone(), &ns);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "agent"},
        "spec": {
            "nodeName": sonde_tests::this_node_name(), "serviceAccountName": "agent",
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "sonde.dev/e2e-fixture:never-runs"}],
        },
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let token = |bound: bool| {
        let uid = pod.metadata.uid.clone().unwrap();
        let mut args = vec![
            "create",
            "token",
            "agent",
            "-n",
            &ns,
            "--audience",
            "sonde-results",
        ];
        if bound {
            args.extend([
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "agent",
                "--bound-object-uid",
                &uid,
            ]);
        }
        let (ok, token, err) = s.plane.kubectl(Identity::Admin, &args);
        assert!(ok, "{err}");
        token.trim().to_string()
    };
    let (agent_token, unbound) = (token(true), token(false));
    let token_file = s.dir.path().join("results-token");
    std::fs::write(&token_file, &agent_token).unwrap();
    let volume = s.dir.path().join("server-volume");
    let server = Component::results(
        &s.plane.kubeconfig(Identity::Admin),
        s.dir.path(),
        &[
            (
                "SONDE_STORAGE_URL".into(),
                format!("file://{}", volume.display()),
            ),
            (
                "SONDE_AGENT_USER".into(),
                format!("system:serviceaccount:{ns}:agent"),
            ),
        ],
    );
    let (port, intake) = (server.api_port.unwrap(), server.intake_port.unwrap());
    assert!(
        wait_for(Duration::from_secs(20), || async {
            http_get_as(port, "/", None).await.0 == 200
        })
        .await,
        "the results server did not serve"
    );
    // Agents upload to the intake's port, a port of its own (which the chart's NetworkPolicy opens to the agent
    // pods only).
    s.restart_agent_with(&[
        (
            "SONDE_STORAGE_URL".into(),
            format!("results+http://127.0.0.1:{intake}"),
        ),
        (
            "SONDE_RESULTS_TOKEN_FILE".into(),
            token_file.display().to_string(),
        ),
    ]);
    let job = s.create_job(&wakeups_job("intake", "6s")).await;
    let uid8 = job.metadata.uid.clone().unwrap()[..8].to_string();
    let job = s
        .wait_job(
            "intake",
            Duration::from_secs(60),
            upload_is(sonde_crds::UploadState::Complete),
        )
        .await;
    let st = job.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{st:#?}");
    let node = sonde_tests::this_node_name();
    let folder = volume.join(format!("tracejobs/{ns}/intake-{uid8}/{node}"));
    let (manifest, events) = sonde_probes::chunks::read_events(&folder)
        .unwrap_or_else(|e| panic!("the server's volume: {e}; {:?}", walk_files(&volume)));
    assert!(manifest.complete, "{manifest:?}");
    assert!(!events.is_empty(), "no event captured");
    assert_eq!(
        events.len() as u64,
        st.counts.captured,
        "events on the server's volume vs captured: {:?}",
        st.counts
    );
    assert!(folder.join("summary.json").is_file());
    let own = walk_files(&s.dir.path().join("results").join("tracejobs").join(&ns));
    assert!(own.is_empty(), "written beside the server: {own:?}");
    // Read back over REST from the one place, by a reader of the namespace.
    let reader = results_reader(s.plane, &ns);
    let (code, _, body) = http_get_as(
        port,
        &format!("/api/v1/namespaces/{ns}/tracejobs/intake/events?limit=5000"),
        Some(&reader),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        page["events"].as_array().map(Vec::len),
        Some(events.len()),
        "{}",
        page["next"]
    );

    // The upload route's refusals, and create-only puts.
    let chunk = folder.join("events/000000.ndjson.gz");
    let put_on = |port: u16, token: &str, key: &str, body: &std::path::Path| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "PUT"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "If-None-Match: *", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg(format!("http://127.0.0.1:{port}/agent/v1/objects/{key}"))
            .output()
            .expect("curl");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or_default();
        (code.to_string(), body.to_string())
    };
    let put = |token: &str, key: &str, body: &std::path::Path| put_on(intake, token, key, body);
    let mine = format!("tracejobs/{ns}/intake-{uid8}/{node}/events/000000.ndjson.gz");
    // Not on the readers' port, even with the agent's token.
    let (code, body) = put_on(port, &agent_token, &mine, &chunk);
    assert!(
        code == "404" && body.contains("no such route"),
        "{code} {body}"
    );
    assert_eq!(
        put(&agent_token, &mine, &chunk).0,
        "200",
        "the same chunk again"
    );
    let other = folder.join("summary.json");
    let (code, body) = put(&agent_token, &mine, &other);
    assert_eq!(code, "409", "{body}");
    assert_eq!(
        std::fs::read(&chunk).unwrap(),
        std::fs::read(volume.join(&mine)).unwrap()
    );
    // A job that exists but has no session on this node (it selects no pod).
    let idle = s
        .create_job(&wakeups_job("idle", "60s").replace("app: ping", "app: nobody"))
        .await;
    let idle8 = &idle.metadata.uid.clone().unwrap()[..8];
    for (who, key, status, why) in [
        (&reader, mine.clone(), "403", "may not upload"),
        (&unbound, mine.clone(), "403", "names no node"),
        (
            &agent_token,
            format!("tracejobs/{ns}/intake-{uid8}/another-node/events/000000.ndjson.gz"),
            "403",
            "may not write node another-node",
        ),
        (
            &agent_token,
            format!("tracejobs/{ns}/idle-{idle8}/{node}/events/000000.ndjson.gz"),
            "403",
            "no ProbeSession",
        ),
        // Results of a job that does not exist (deleted): 410, and the agent drops them.
        (
            &agent_token,
            format!("tracejobs/{ns}/other-{uid8}/{node}/events/000000.ndjson.gz"),
            "410",
            "gone",
        ),
    ] {
        let (code, body) = put(who, &key, &chunk);
        assert!(code == status && body.contains(why), "{key}: {code} {body}");
    }
    // Once a node's folder holds files of the job (its session wrote them), later ones are taken while the job
    // exists, session or not: a session that ended before its files were delivered loses nothing.
    let idle_folder = volume.join(format!("tracejobs/{ns}/idle-{idle8}/{node}"));
    std::fs::create_dir_all(&idle_folder).unwrap();
    std::fs::write(idle_folder.join("summary.json"), "{}").unwrap();
    let late = format!("tracejobs/{ns}/idle-{idle8}/{node}/events/000000.ndjson.gz");
    let (code, body) = put(&agent_token, &late, &chunk);
    assert_eq!(code, "201", "{body}");
    assert_eq!(
        std::fs::read(&chunk).unwrap(),
        std::fs::read(volume.join(&late)).unwrap()
    );
}
