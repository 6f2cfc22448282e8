//! TraceJobs end to end: the real API server, the operator and the node agent as processes, this host as the
//! node, pods whose containers are real processes in kubelet-named cgroups, and real kernel hooks.
//!
//! Every test here runs its own operator and agent for this one node, so they run one at a time (SERIAL).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sonde_crds::conditions::{is_true, types};
use sonde_crds::{Phase, ProbeSession, TraceJob};
use sonde_tests::{
    CgroupDriver, Component, ControlPlane, Identity, RealPod, TestNamespace, bpf_programs,
    register_this_node, wait_for,
};
use tokio::sync::{Mutex, MutexGuard};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Program names of the wakeups probe (every strategy), to see whether anything is still attached.
const WAKEUPS_PROGS: &[&str] = &[
    "fentry_try_to_wake_up",
    "kprobe_try_to_wake_up",
    "tp_btf_sched_waking",
    "tp_sched_waking",
];

struct Scene {
    // Drop order: processes first, then pods, then the namespace.
    agent: Option<Component>,
    operator: Option<Component>,
    pods: Vec<RealPod>,
    host: Vec<Child>,
    client: Client,
    plane: &'static ControlPlane,
    ns: TestNamespace,
    dir: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Scene {
    async fn new(prefix: &str) -> Scene {
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
        let mut s = Scene {
            agent: None,
            operator: None,
            pods: vec![],
            host: vec![],
            client,
            plane,
            ns,
            dir,
            _serial: serial,
        };
        s.start_operator();
        s.start_agent();
        s
    }

    fn start_operator(&mut self) {
        self.operator = Some(Component::operator(
            self.plane,
            &self.ns.name,
            self.dir.path(),
        ));
    }

    fn start_agent(&mut self) {
        self.agent = Some(Component::agent(self.plane, self.dir.path()));
    }

    fn jobs(&self) -> Api<TraceJob> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    fn sessions(&self) -> Api<ProbeSession> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn ping_pod(&mut self, name: &str) -> u32 {
        let pod = RealPod::start(
            &self.client,
            &self.ns.name,
            name,
            &[("app", "ping")],
            CgroupDriver::Systemd,
            &["ping", "-q", "-i", "0.002", "127.0.0.1"],
        )
        .await
        .expect("ping pod");
        let pid = pod.pid();
        self.pods.push(pod);
        pid
    }

    /// Field case A's noisy neighbour, outside any pod: a raw ICMP socket every ping packet wakes.
    fn isc_socket(&mut self) -> u32 {
        let child = Command::new("python3")
            .args([
                "-c",
                "import ctypes,socket\nctypes.CDLL(None).prctl(15, b'isc-socket', 0, 0, 0)\ns=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\nwhile True: s.recv(2048)",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let pid = child.id();
        self.host.push(child);
        std::thread::sleep(Duration::from_millis(300));
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
        for c in &mut self.host {
            let _ = c.kill();
            let _ = c.wait();
        }
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

fn finished(j: &TraceJob) -> bool {
    j.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Field case A on the cluster path: the job targets pods `app=ping`; the answer names the noisy neighbour.
#[tokio::test(flavor = "multi_thread")]
async fn wakeups_job_on_a_ping_pod_names_the_wakee() {
    let mut s = Scene::new("wakeups").await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_matching_nothing_says_so() {
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
    assert!(
        s.sessions()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let reasons: Vec<String> = s
        .events_for("lonely")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(reasons.iter().any(|r| r == "NoMatchingPods"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_job_detaches_within_a_second() {
    let mut s = Scene::new("delete").await;
    s.ping_pod("ping").await;
    s.create_job(&wakeups_job("long", "10m")).await;
    s.wait_job("long", Duration::from_secs(30), |j| {
        j.status.as_ref().is_some_and(|st| st.nodes.attached == 1)
    })
    .await;
    assert!(
        !bpf_programs(WAKEUPS_PROGS).is_empty(),
        "attached per status but no program loaded"
    );
    s.jobs()
        .delete("long", &DeleteParams::background())
        .await
        .unwrap();
    let t0 = Instant::now();
    let gone = wait_for(Duration::from_secs(5), || async {
        bpf_programs(WAKEUPS_PROGS).is_empty()
    })
    .await;
    let took = t0.elapsed();
    assert!(gone, "programs still attached 5s after the job was deleted");
    assert!(took <= Duration::from_millis(1200), "detach took {took:?}");
    eprintln!("delete -> detached in {took:?}");
}
