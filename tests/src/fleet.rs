//! The fleet harness: a control plane of its own with NODES simulated nodes and a pod on each (kwok,
//! `tests/kwok/up.sh`), the operator, and one simulated agent per node in one process (`sonde-agent
//! simulate-fleet`: the agent's own session watch, Lease, reporter and deadline, with the kernel replaced by a
//! counter). It applies TraceJobs and ProbePolicies selecting the pod on every node and measures what a cluster
//! admin judges an operator by: how long until the jobs run and roll up, the operator's CPU and memory, and the
//! API server's own count of requests (`apiserver_request_total`) in steady state. `tests/tests/fleet.rs` asserts
//! the 100-node targets in CI; `bench/fleet.sh NODES` prints the table for 10, 100 and 1000 nodes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sonde_crds::{Phase, ProbePolicy, ProbeSession, TraceJob};

use crate::{Component, ControlPlane, Identity, free_port, repo_root};

/// The workload and how long to watch it.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub nodes: usize,
    pub jobs: usize,
    pub policies: usize,
    /// Each TraceJob's duration.
    pub job_duration: Duration,
    /// How long steady state is measured once every session is attached.
    pub steady: Duration,
    /// Events per second each simulated session counts.
    pub rate: u64,
}

impl FleetConfig {
    /// The workload (50 TraceJobs and 20 ProbePolicies, each on every node), with a job long enough to
    /// measure a minute of steady state at 1000 nodes and half that below.
    pub fn for_nodes(nodes: usize) -> FleetConfig {
        let big = nodes >= 500;
        FleetConfig {
            nodes,
            jobs: 50,
            policies: 20,
            job_duration: Duration::from_secs(if big { 240 } else { 120 }),
            steady: Duration::from_secs(if big { 60 } else { 30 }),
            rate: 100,
        }
    }
}

/// Requests per second in steady state, by verb and resource (`resource/subresource`).
pub type Rates = BTreeMap<(String, String), f64>;

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct FleetReport {
    pub nodes: usize,
    pub sessions: usize,
    /// Seconds from the first apply until every TraceJob is Running (None: not within the job's duration).
    pub jobs_running_s: Option<f64>,
    /// Seconds from the first apply until every session of every TraceJob is attached.
    pub all_attached_s: Option<f64>,
    /// Seconds from the last deadline until every TraceJob has its final phase.
    pub rolled_up_s: Option<f64>,
    pub operator_cpu_s: f64,
    pub operator_peak_rss_mib: f64,
    /// Reconciles that took over 1.024 s (the histogram's bucket at 1 s), and all of them.
    pub slow_reconciles: u64,
    pub reconciles: u64,
    /// Write requests per second in steady state (POST, PUT, PATCH, APPLY, DELETE), by verb and resource.
    pub writes: Rates,
    /// Watch events sent per second in steady state, by resource.
    pub watch_events: BTreeMap<String, f64>,
    pub etcd_mib: f64,
    /// Seconds from deleting every TraceJob and ProbePolicy until no session is left.
    pub delete_all_s: Option<f64>,
    /// Sessions the operator had created when steady state was measured.
    pub sessions_created: usize,
}

impl FleetReport {
    pub fn writes_per_second(&self) -> f64 {
        self.writes.values().sum()
    }

    /// One markdown row (see [`FleetReport::HEADER`]).
    pub fn row(&self) -> String {
        let top: Vec<String> = {
            let mut w: Vec<_> = self.writes.iter().collect();
            w.sort_by(|a, b| b.1.total_cmp(a.1));
            w.iter()
                .take(3)
                .map(|((verb, res), r)| format!("{verb} {res} {r:.1}"))
                .collect()
        };
        format!(
            "| {} | {}/{} | {} | {} | {} | {:.1} | {:.0} | {}/{} | {:.1} ({}) | {:.1} | {:.0} | {} |",
            self.nodes,
            self.sessions_created,
            self.sessions,
            secs(self.jobs_running_s),
            secs(self.all_attached_s),
            secs(self.rolled_up_s),
            self.operator_cpu_s,
            self.operator_peak_rss_mib,
            self.slow_reconciles,
            self.reconciles,
            self.writes_per_second(),
            top.join(", "),
            self.watch_events.values().sum::<f64>(),
            self.etcd_mib,
            secs(self.delete_all_s),
        )
    }

    pub const HEADER: &str = "| nodes | sessions made/asked | jobs Running (s) | all attached (s) | rolled up after deadline (s) | operator CPU (s) | operator peak RSS (MiB) | reconciles > 1 s | writes/s in steady state (top 3) | watch events/s | etcd (MiB) | delete-all (s) |\n|---|---|---|---|---|---|---|---|---|---|---|---|";
}

/// Runs the workload on a fresh fleet of `cfg.nodes` and tears it all down (logs stay in `target/fleet-<nodes>`).
pub async fn run(cfg: &FleetConfig) -> FleetReport {
    let dir = repo_root().join(format!("target/fleet-{}", cfg.nodes));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fleet = Fleet::up(cfg, &dir).await;
    fleet.measure(cfg).await
    // Dropped here, or on a panic: nothing of the fleet outlives the run.
}

/// The running pieces, torn down when dropped in field order (processes first, the control plane last), also
/// when a run fails.
struct Fleet {
    /// Kept only to be stopped with the fleet.
    _agents: Component,
    operator: Component,
    operator_metrics: u16,
    client: Client,
    plane: OwnPlane,
}

/// The fleet's own control plane and kwok, stopped when dropped (also when a run fails half-way).
struct OwnPlane(ControlPlane);

impl Drop for OwnPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("tests/kwok/down.sh"))
            .arg(&self.0.dir)
            .status();
        self.0.stop();
    }
}

impl std::ops::Deref for OwnPlane {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.0
    }
}

const NS: &str = "fleet";
const AGENTS_NS: &str = "sonde-system";

impl Fleet {
    async fn up(cfg: &FleetConfig, dir: &Path) -> Fleet {
        let plane = OwnPlane(
            ControlPlane::start_in(&dir.join("cp"))
                .await
                .unwrap_or_else(|e| panic!("the fleet's control plane: {e:#}")),
        );
        let out = Command::new(repo_root().join("tests/kwok/up.sh"))
            .arg(&plane.dir)
            .arg(cfg.nodes.to_string())
            .output()
            .expect("tests/kwok/up.sh runs");
        assert!(
            out.status.success(),
            "tests/kwok/up.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        let client = plane.client(Identity::Admin).await;
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": AGENTS_NS}})).unwrap();
        let _ = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await;
        let kc = plane.kubeconfig(Identity::Admin);
        let quiet = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            [("RUST_LOG", "warn")]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let operator_metrics = free_port();
        let operator = Component::process(
            &kc,
            "sonde-operator",
            &[
                format!("--metrics-addr=127.0.0.1:{operator_metrics}"),
                format!("--lease-namespace={AGENTS_NS}"),
                "--identity=fleet-operator".into(),
            ],
            dir.join("operator.log"),
            &quiet(&[]),
        );
        let agents = Component::process(
            &kc,
            "sonde-agent",
            &[
                format!("--metrics-addr=127.0.0.1:{}", free_port()),
                "simulate-fleet".into(),
                format!("--rate={}", cfg.rate),
            ],
            dir.join("agents.log"),
            // 70 sessions a node, all of one namespace: room for them all (the default is 12, 6 a namespace).
            &quiet(&[
                ("POD_NAMESPACE", AGENTS_NS),
                ("SONDE_MAX_SESSIONS", "100"),
                ("SONDE_MAX_SESSIONS_PER_NAMESPACE", "100"),
            ]),
        );
        let fleet = Fleet {
            _agents: agents,
            operator,
            operator_metrics,
            client,
            plane,
        };
        // Every agent is up once its node's Lease is.
        let leases: Api<Lease> = Api::namespaced(fleet.client.clone(), AGENTS_NS);
        let lp = ListParams::default().labels(&format!("{}=true", sonde_crds::AGENT_LEASE_LABEL));
        let up = crate::wait_for(Duration::from_secs(120), || async {
            leases
                .list_metadata(&lp)
                .await
                .is_ok_and(|l| l.items.len() >= cfg.nodes)
        })
        .await;
        assert!(
            up,
            "not every simulated agent renewed its Lease within 120 s"
        );
        fleet
    }

    async fn measure(&self, cfg: &FleetConfig) -> FleetReport {
        let mut r = FleetReport {
            nodes: cfg.nodes,
            sessions: cfg.nodes * (cfg.jobs + cfg.policies),
            ..Default::default()
        };
        let jobs: Api<TraceJob> = Api::namespaced(self.client.clone(), NS);
        let policies: Api<ProbePolicy> = Api::namespaced(self.client.clone(), NS);
        let applied = Instant::now();
        for i in 0..cfg.jobs {
            jobs.create(&PostParams::default(), &job(i, cfg.job_duration))
                .await
                .unwrap();
        }
        for i in 0..cfg.policies {
            policies
                .create(&PostParams::default(), &policy(i))
                .await
                .unwrap();
        }
        let all = |f: fn(&TraceJob, usize) -> bool| {
            let jobs = jobs.clone();
            let nodes = cfg.nodes;
            async move {
                jobs.list(&ListParams::default())
                    .await
                    .is_ok_and(|l| l.items.len() == cfg.jobs && l.items.iter().all(|j| f(j, nodes)))
            }
        };
        let limit = cfg.job_duration / 2;
        let running = |j: &TraceJob, _| phase(j) == Phase::Running;
        r.jobs_running_s =
            crate::wait_for_every(limit, Duration::from_millis(250), || all(running))
                .await
                .then(|| applied.elapsed().as_secs_f64());
        let attached = |j: &TraceJob, n| {
            j.status
                .as_ref()
                .is_some_and(|s| s.nodes.attached as usize == n)
        };
        r.all_attached_s =
            crate::wait_for_every(limit, Duration::from_millis(500), || all(attached))
                .await
                .then(|| applied.elapsed().as_secs_f64());
        // The policies' sessions too: steady state starts once every session has attached (written at once).
        let sessions: Api<ProbeSession> = Api::namespaced(self.client.clone(), NS);
        let every_session_runs = crate::wait_for_every(limit, Duration::from_secs(2), || async {
            sessions.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.len() == r.sessions
                    && l.items
                        .iter()
                        .all(|s| s.status.as_ref().is_some_and(|st| st.attached_at.is_some()))
            })
        })
        .await;
        r.sessions_created = sessions
            .list_metadata(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        if !every_session_runs {
            eprintln!(
                "not every session attached within {limit:?}: steady state includes attaching"
            );
        }
        eprintln!(
            "jobs Running after {}, all attached after {} s; {} sessions",
            secs(r.jobs_running_s),
            secs(r.all_attached_s),
            r.sessions_created
        );

        // Steady state: every session attached and counting, the attach writes done.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (m1, cpu1) = (self.apiserver_metrics().await, self.operator_cpu());
        tokio::time::sleep(cfg.steady).await;
        let (m2, cpu2) = (self.apiserver_metrics().await, self.operator_cpu());
        let secs = cfg.steady.as_secs_f64();
        r.writes = rates(&m1, &m2, secs, |verb| {
            matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE")
        });
        r.watch_events = watch_rates(&m1, &m2, secs);
        eprintln!(
            "steady state: {:.1} writes/s, operator {:.2} CPU s/s",
            r.writes_per_second(),
            (cpu2 - cpu1) / secs
        );

        // Every job to its deadline and rolled up.
        let finished = |j: &TraceJob, _| phase(j).is_finished();
        let until = cfg.job_duration + Duration::from_secs(120);
        let rolled_up =
            crate::wait_for_every(until, Duration::from_millis(500), || all(finished)).await;
        let done = jiff_now();
        let last_deadline = jobs
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter_map(|j| j.status.as_ref()?.start_time.as_ref().map(|t| t.0))
            .max()
            .map(|start| {
                start + k8s_openapi::jiff::SignedDuration::try_from(cfg.job_duration).unwrap()
            })
            .expect("jobs with a start time");
        r.rolled_up_s =
            rolled_up.then(|| done.duration_since(last_deadline).as_secs_f64().max(0.0));
        r.etcd_mib = metric_sum(
            &self.apiserver_metrics().await,
            "apiserver_storage_size_bytes",
        ) / (1 << 20) as f64;

        // Delete everything; nothing may be left.
        let deleting = Instant::now();
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        jobs.delete_collection(&dp, &lp).await.unwrap();
        policies.delete_collection(&dp, &lp).await.unwrap();
        let gone = crate::wait_for_every(
            Duration::from_secs(300),
            Duration::from_millis(500),
            || async {
                let s = sessions.list_metadata(&lp).await.map(|l| l.items.len());
                let j = jobs.list_metadata(&lp).await.map(|l| l.items.len());
                let p = policies.list_metadata(&lp).await.map(|l| l.items.len());
                matches!((s, j, p), (Ok(0), Ok(0), Ok(0)))
            },
        )
        .await;
        r.delete_all_s = gone.then(|| deleting.elapsed().as_secs_f64());

        r.operator_cpu_s = self.operator_cpu();
        r.operator_peak_rss_mib = peak_rss_mib(self.operator.child.id());
        let (slow, all) = self.reconciles().await;
        (r.slow_reconciles, r.reconciles) = (slow, all);
        r
    }

    /// The API server's /metrics, as (name{labels} -> value).
    async fn apiserver_metrics(&self) -> BTreeMap<String, f64> {
        let (ok, text, err) = self
            .plane
            .kubectl(Identity::Admin, &["get", "--raw", "/metrics"]);
        assert!(ok, "the API server's /metrics: {err}");
        parse_metrics(&text)
    }

    /// Operator CPU seconds so far (user + system).
    fn operator_cpu(&self) -> f64 {
        cpu_seconds(self.operator.child.id())
    }

    /// (reconciles over 1.024 s, all reconciles), from the operator's duration histogram.
    async fn reconciles(&self) -> (u64, u64) {
        let url = format!("http://127.0.0.1:{}/metrics", self.operator_metrics);
        let text = reqwest::get(&url)
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .text()
            .await
            .unwrap();
        let m = parse_metrics(&text);
        let bucket = |le: &str| -> u64 {
            m.iter()
                .filter(|(k, _)| {
                    k.starts_with("sonde_operator_reconcile_duration_seconds_bucket")
                        && k.contains(&format!("le=\"{le}\""))
                })
                .map(|(_, v)| *v as u64)
                .sum()
        };
        let all = bucket("+Inf");
        (all - bucket("1.024"), all)
    }
}

/// A time, or `-` for one that did not happen within its bound.
fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.1}"))
}

fn phase(j: &TraceJob) -> Phase {
    j.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn job(i: usize, duration: Duration) -> TraceJob {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": format!("fleet-job-{i}")},
        "spec": {
            "probe": "wakeups",
            "target": {"podSelector": {"matchLabels": {"app": "fleet"}}},
            "duration": format!("{}s", duration.as_secs()),
        },
    }))
    .unwrap()
}

fn policy(i: usize) -> ProbePolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbePolicy",
        "metadata": {"name": format!("fleet-policy-{i}")},
        "spec": {
            "probe": "runq-latency",
            "target": {"podSelector": {"matchLabels": {"app": "fleet"}}},
            "window": "5m",
            "thresholds": [{"metric": "runqLatencyUs", "value": 50000}],
        },
    }))
    .unwrap()
}

/// Prometheus text as `name{labels}` -> value (comments and malformed lines skipped).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A label's value in `name{a="x",b="y"}`.
fn label<'a>(key: &'a str, name: &str) -> &'a str {
    let pat = format!("{name}=\"");
    key.split_once(&pat)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v)
        .unwrap_or("")
}

fn metric_sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) || k.as_str() == name)
        .map(|(_, v)| v)
        .sum()
}

/// `apiserver_request_total` per second between two scrapes, by verb and resource, for the verbs `keep` takes.
fn rates(
    m1: &BTreeMap<String, f64>,
    m2: &BTreeMap<String, f64>,
    secs: f64,
    keep: impl Fn(&str) -> bool,
) -> Rates {
    let mut out = Rates::new();
    for (k, v2) in m2
        .iter()
        .filter(|(k, _)| k.starts_with("apiserver_request_total{"))
    {
        let verb = label(k, "verb");
        if !keep(verb) {
            continue;
        }
        let delta = v2 - m1.get(k).copied().unwrap_or(0.0);
        if delta <= 0.0 {
            continue;
        }
        let resource = match label(k, "subresource") {
            "" => label(k, "resource").to_string(),
            sub => format!("{}/{sub}", label(k, "resource")),
        };
        *out.entry((verb.to_string(), resource)).or_default() += delta / secs;
    }
    out
}

/// `apiserver_watch_events_total` per second between two scrapes, by resource.
fn watch_rates(
    m1: &BTreeMap<String, f64>,
    m2: &BTreeMap<String, f64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v2) in m2
        .iter()
        .filter(|(k, _)| k.starts_with("apiserver_watch_events_total{"))
    {
        let delta = v2 - m1.get(k).copied().unwrap_or(0.0);
        if delta > 0.0 {
            *out.entry(label(k, "resource").to_string()).or_default() += delta / secs;
        }
    }
    out
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's tick rate.
    let ticks = 100.0;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / ticks
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_rates_by_verb_and_resource() {
        let a = parse_metrics(
            "# HELP x\napiserver_request_total{code=\"201\",resource=\"leases\",subresource=\"\",verb=\"APPLY\"} 10\n",
        );
        let b = parse_metrics(
            "apiserver_request_total{code=\"201\",resource=\"leases\",subresource=\"\",verb=\"APPLY\"} 30\n\
             apiserver_request_total{code=\"200\",resource=\"probesessions\",subresource=\"status\",verb=\"PATCH\"} 4\n\
             apiserver_request_total{code=\"200\",resource=\"pods\",subresource=\"\",verb=\"LIST\"} 9\n",
        );
        let r = rates(&a, &b, 10.0, |v| v != "LIST");
        assert_eq!(r[&("APPLY".into(), "leases".into())], 2.0);
        assert_eq!(r[&("PATCH".into(), "probesessions/status".into())], 0.4);
        assert_eq!(r.len(), 2);
    }
}
