//! Sonde the way a cluster user runs it: `helm install` of the chart, with its own images, service accounts and
//! securityContext, on a real kubelet node (containerd, runc, CNI bridge, kube-proxy) of a control plane of its
//! own; workloads are real containers. Every test name starts with `real_node_`: scripts/test.sh runs them
//! after the other tests, on a node it tears down at the end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::{
    Identity, RealNode, WAKEUPS_PROGS, curl_status, repo_root, wait_for_every, wait_until,
};
use tokio::sync::{Mutex, OnceCell};

static SERIAL: Mutex<()> = Mutex::const_new(());
static CHART: OnceCell<Duration> = OnceCell::const_new();

/// How often a real-node test checks again: each check is a kubectl process (some are a dozen), on the cores
/// the node's pods and the agent under measurement share.
const POLL: Duration = Duration::from_millis(500);

/// `helm install sonde helm/sonde` as the README says (CRDs included, default values: the image the chart
/// names is the one scripts/images.sh built and the node imported, plus a pod annotation with that image's
/// digest so a reused node rolls out a rebuilt image), once per test process. Returns how long
/// install -> everything Ready took.
async fn chart(node: &RealNode) -> Duration {
    *CHART
        .get_or_init(|| async {
            let kubeconfig = node.plane.kubeconfig(Identity::Admin);
            results_volume(node);
            let t = Instant::now();
            let (ok, out, err) = sonde_tests::helm(&[
                "upgrade",
                "--install",
                "sonde",
                "helm/sonde",
                "-n",
                "sonde-system",
                "--create-namespace",
                "--wait",
                "--timeout",
                "5m",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--set-string",
                &format!(
                    "agent.podAnnotations.sonde\\.dev/image={}",
                    node.sonde_image_sum
                ),
                "--set-string",
                &format!(
                    "operator.podAnnotations.sonde\\.dev/image={}",
                    node.sonde_image_sum
                ),
            ]);
            assert!(
                ok,
                "helm install: {err}\n{out}\npods: {}",
                node.kubectl(&["describe", "pods", "-n", "sonde-system"]).1
            );
            // helm's --wait lets a DaemonSet be `maxUnavailable` short of Ready: wait for both rollouts.
            rolled_out(node).await;
            let took = t.elapsed();
            eprintln!("helm install -> all Ready in {took:?}");
            took
        })
        .await
}

/// The results server's volume: a directory of this host.
const RESULTS_VOLUME: &str = "/var/lib/sonde-results-realnode";

/// What an admin of a cluster without dynamic provisioning does for the results server's claim: a volume of no
/// StorageClass (the claim names none and this cluster has no default), here a directory of the node owned by the
/// server's user. A volume a reused node's earlier claim released is offered again.
fn results_volume(node: &RealNode) {
    let dir = RESULTS_VOLUME;
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(65532), Some(65532)).unwrap();
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: sonde-results-realnode}}\nspec:\n  \
         capacity: {{storage: 10Gi}}\n  accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  \
         hostPath: {{path: {dir}, type: Directory}}\n"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pv).unwrap();
    node.kubectl_ok(&["apply", "-f", file.path().to_str().unwrap()]);
    let phase = node.kubectl_ok(&[
        "get",
        "pv",
        "sonde-results-realnode",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    if phase == "Released" {
        node.kubectl_ok(&[
            "patch",
            "pv",
            "sonde-results-realnode",
            "--type=json",
            "-p=[{\"op\": \"remove\", \"path\": \"/spec/claimRef\"}]",
        ]);
    }
}

/// The chart's pods of one component (`operator`, `agent`), terminating ones included.
fn sonde_pods(node: &RealNode, component: &str) -> Vec<Value> {
    let selector = format!("app.kubernetes.io/component={component}");
    let pods = node.json(&["get", "pods", "-n", "sonde-system", "-l", &selector]);
    pods["items"].as_array().unwrap().clone()
}

/// Waits for the operator Deployment and the agent DaemonSet to be fully rolled out, and for the operator's
/// lease to be held by a current pod: a rollout is over for the kubelet while the old pods are still
/// terminating, and until then an old leader may still act with the old values.
async fn rolled_out(node: &RealNode) {
    for what in [
        "deployment/sonde-operator",
        "daemonset/sonde-agent",
        "deployment/sonde-results",
    ] {
        let args = [
            "rollout",
            "status",
            "-n",
            "sonde-system",
            what,
            "--timeout=180s",
        ];
        node.kubectl_ok(&args);
    }
    // The holder last seen, for the failure message.
    let mut holder = String::new();
    let current = wait_for_every(Duration::from_secs(60), POLL, async || {
        let lease = node.json(&["get", "lease", "-n", "sonde-system", "sonde-operator"]);
        holder = lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sonde_pods(node, "operator").iter().any(|p| {
            p["metadata"]["name"] == holder.as_str() && p["metadata"]["deletionTimestamp"].is_null()
        })
    })
    .await;
    assert!(
        current,
        "lease holder {holder:?} is not a current operator pod"
    );
}

/// The kernel's view of a pod's containers: host pid of each process whose unified cgroup is the pod's.
fn host_pids(uid: &str, comm: &str) -> Vec<u32> {
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if c.trim() == comm && cg.lines().any(|l| l.starts_with("0::") && l.contains(uid)) {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread")]
async fn real_node_runs_pods_in_kubelet_cgroups_without_egress() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    let out = std::process::Command::new(repo_root().join("tests/node/smoke.sh"))
        .arg(&node.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("smoke: ok"), "{text}");
}

/// The chart installs and rolls out as is: two operator replicas Ready with one Lease holder, the agent Ready
/// on the node.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_chart_installs_and_rolls_out() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = ["-n", "sonde-system"];
    let op = node.json(&[&ns[..], &["get", "deployment", "sonde-operator"]].concat());
    assert_eq!(op["status"]["readyReplicas"], 2, "{}", op["status"]);
    let pods = node.json(
        &[
            &ns[..],
            &["get", "pods", "-l", "app.kubernetes.io/component=operator"],
        ]
        .concat(),
    );
    let names: Vec<String> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut holder = String::new();
    wait_until(
        "a lease holder",
        Duration::from_secs(60),
        POLL,
        async || {
            let leases = node.json(&[&ns[..], &["get", "leases"]].concat());
            holder = leases["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["spec"]["holderIdentity"].as_str())
                .find(|h| names.iter().any(|n| n == h))
                .unwrap_or_default()
                .to_string();
            !holder.is_empty()
        },
    )
    .await;
    let ds = node.json(&[&ns[..], &["get", "daemonset", "sonde-agent"]].concat());
    let st = &ds["status"];
    assert_eq!(st["desiredNumberScheduled"], 1, "{st}");
    assert_eq!(st["numberReady"], 1, "{st}");
    let agent = node.json(
        &[
            &ns[..],
            &["get", "pods", "-l", "app.kubernetes.io/component=agent"],
        ]
        .concat(),
    );
    let pod = &agent["items"][0];
    assert_eq!(pod["spec"]["nodeName"], node.name());
    // The agent's privileges, as README and ARCHITECTURE.md state them: not privileged, every capability
    // dropped but five, the host's pid namespace, a read-only root and read-only host mounts but the spool.
    let container = &pod["spec"]["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!([
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "CHECKPOINT_RESTORE",
            "SYSLOG"
        ]),
        "{sc}"
    );
    assert_eq!(pod["spec"]["hostPID"], true);
    let writable: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(writable, ["/var/lib/sonde"], "mounts the agent may write");
    eprintln!("leader {holder}; agent securityContext {sc} hostPID true");

    // The results server, under the chart's securityContext and RBAC: a namespace's viewer (the built-in view
    // role, into which the chart aggregates `get tracejobs/results`) lists its jobs; an account with no role
    // there is refused, and no token is asked for one.
    let results = node.json(
        &[
            &ns[..],
            &["get", "pods", "-l", "app.kubernetes.io/component=results"],
        ]
        .concat(),
    );
    let ip = results["items"][0]["status"]["podIP"]
        .as_str()
        .expect("a results server pod with an IP")
        .to_string();
    fresh_namespace(node, "results-smoke");
    let token = |account: &str| {
        let _ = node.kubectl(&["create", "serviceaccount", account, "-n", "results-smoke"]);
        let (ok, out, err) = node.kubectl(&[
            "create",
            "token",
            account,
            "-n",
            "results-smoke",
            "--audience",
            "sonde-results",
        ]);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    node.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        "results-smoke",
        "--clusterrole=view",
        "--serviceaccount=results-smoke:viewer",
    ]);
    let (viewer, stranger) = (token("viewer"), token("stranger"));
    let url = format!("http://{ip}:8080/api/v1/namespaces/results-smoke/tracejobs");
    let get = |token: Option<&str>| {
        let bearer = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["--max-time", "10", url.as_str()];
        if let Some(h) = &bearer {
            args.extend(["-H", h.as_str()]);
        }
        curl_status(&args)
    };
    assert_eq!(get(Some(&viewer)), ("200".into(), "[]".into()));
    assert_eq!(get(Some(&stranger)).0, "403");
    assert_eq!(get(None).0, "401");
    // Its web page, from the image, with the policy that keeps it to its own script.
    let page = std::process::Command::new("curl")
        .args(["-si", "--max-time", "10", &format!("http://{ip}:8080/")])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&page.stdout).to_lowercase();
    assert!(
        page.starts_with("http/1.1 200")
            && page.contains("content-security-policy: default-src 'none'; script-src 'self'")
            && page.contains("<title>sonde results</title>"),
        "{page}"
    );
    let _ = node.kubectl(&["delete", "namespace", "results-smoke", "--wait=false"]);
}

/// Deletes a test's namespace when the test ends, passed or failed: the sessions of a failed test that fills the
/// agent's slots would otherwise hold them through the tests after it (once they failed "three probes attach").
struct DeleteOnDrop<'a>(&'a RealNode, &'a str);

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl(&["delete", "namespace", self.1, "--wait=false"]);
    }
}

fn fresh_namespace(node: &RealNode, ns: &str) {
    let _ = node.kubectl(&["delete", "namespace", ns, "--wait=true", "--timeout=60s"]);
    node.kubectl_ok(&["create", "namespace", ns]);
}

/// Waits until the TraceJob has finished (Succeeded or Failed) and returns its status.
async fn finished_job(node: &RealNode, ns: &str, name: &str, limit: Duration) -> Value {
    let mut job = Value::Null;
    wait_until(&format!("job {name} finishes"), limit, POLL, async || {
        job = node.json(&["get", "tracejob", "-n", ns, name]);
        matches!(
            job["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
    })
    .await;
    job["status"].clone()
}

/// A fresh namespace `ns` running [`ping_deployment`], its pod Ready.
fn ping_namespace(node: &RealNode, ns: &str) {
    fresh_namespace(node, ns);
    apply(node, ns, &ping_deployment(node));
    wait_pods_ready(node, ns);
}

fn wait_pods_ready(node: &RealNode, ns: &str) {
    let args = [
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "pod",
        "--all",
        "--timeout=120s",
    ];
    node.kubectl_ok(&args);
}

fn apply(node: &RealNode, ns: &str, yaml: &str) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    node.kubectl_ok(&["apply", "-n", ns, "-f", file.path().to_str().unwrap()]);
}

/// Field case A's workload: a Deployment `app=ping` whose pod pings 127.0.0.1 next to `isc-socket`.
fn ping_deployment(node: &RealNode) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: ping}}\nspec:\n  selector: {{matchLabels: \
         {{app: ping}}}}\n  template:\n    metadata: {{labels: {{app: ping}}}}\n{}",
        PING_POD.replace("PING_IMAGE", node.image("SONDE_PING_IMAGE"))
    )
}

/// The uid of the (running, not terminating) pod labelled `app=<app>`.
fn pod_uid(node: &RealNode, ns: &str, app: &str) -> String {
    let pods = node.json(&["get", "pods", "-n", ns, "-l", &format!("app={app}")]);
    let live: Vec<&Value> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "pods app={app}: {pods}");
    live[0]["metadata"]["uid"].as_str().unwrap().to_string()
}

fn one_pid(uid: &str, comm: &str) -> u32 {
    let p = host_pids(uid, comm);
    assert_eq!(p.len(), 1, "{comm} of pod {uid}: {p:?}");
    p[0]
}

const PING_POD: &str = r#"
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: ping
          image: PING_IMAGE
          imagePullPolicy: Never
          command: [ping, -q, -i, "0.002", 127.0.0.1]
        - name: neighbour
          image: PING_IMAGE
          imagePullPolicy: Never
          command: [/usr/local/bin/isc-socket]
"#;

/// Field case A on real containers, as the README says: a Deployment `app=ping` whose pod pings 127.0.0.1 next
/// to a raw-ICMP neighbour `isc-socket`, and `kubectl apply -f examples/wakeups.yaml`. The job ends Succeeded
/// naming the pair at its real rate, raises the breach, and keeps readable results. A second pod doing the same
/// work without the label appears nowhere in the results: the cgroup filter holds in the negative.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_field_case_a_names_the_neighbour_and_nothing_else() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "field-a";
    fresh_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let pod = PING_POD.replace("PING_IMAGE", node.image("SONDE_PING_IMAGE"));
    apply(
        node,
        ns,
        &format!(
            "{}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: other, labels: {{app: other}}}}\n{}",
            ping_deployment(node),
            pod.replace("\n    ", "\n")
        ),
    );
    wait_pods_ready(node, ns);
    let (mine, other) = (pod_uid(node, ns, "ping"), pod_uid(node, ns, "other"));
    let (ping, isc) = (one_pid(&mine, "ping"), one_pid(&mine, "isc-socket"));
    let (other_ping, other_isc) = (one_pid(&other, "ping"), one_pid(&other, "isc-socket"));

    let example = repo_root().join("examples/wakeups.yaml");
    let t = Instant::now();
    node.kubectl_ok(&["apply", "-n", ns, "-f", example.to_str().unwrap()]);
    let st = &finished_job(node, ns, "ping-wakeups", Duration::from_secs(150)).await;
    eprintln!("job finished {:?} after apply: {st}", t.elapsed());
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let rows = st["summary"]["rows"].as_array().unwrap();
    let key = format!("ping/{ping} -> isc-socket/{isc}");
    let row = rows.iter().find(|r| r["key"] == key.as_str());
    let row = row.unwrap_or_else(|| panic!("no {key} in {rows:#?}"));
    let rate = row["perSecond"].as_f64().unwrap();
    assert!((50.0..2500.0).contains(&rate), "implausible rate {rate}");
    for r in rows {
        let k = r["key"].as_str().unwrap();
        for p in [other_ping, other_isc] {
            assert!(
                !k.contains(&format!("/{p} ")) && !k.ends_with(&format!("/{p}")),
                "{k}: the other pod"
            );
        }
    }
    assert!(st["counts"]["breaches"].as_u64().unwrap() > 0, "{st}");
    let events = node.json(&["get", "events", "-n", ns]);
    let breach = events["items"].as_array().unwrap().iter().any(|e| {
        e["reason"] == "ThresholdBreached" && e["involvedObject"]["name"] == "ping-wakeups"
    });
    assert!(breach, "no ThresholdBreached event: {events}");
    // Results: the chart's default store is the results server's volume (a directory of this host here).
    let summary = st["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|u| u.ends_with("/summary.json"))
        .unwrap_or_else(|| panic!("no summary.json in {st}"));
    let text = std::fs::read_to_string(stored_path(summary)).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["probe"], "wakeups");
}

/// The workload pod of [`real_node_every_probe_sees_only_the_selected_pod`]: tests/images/workload.c under the
/// name `w-<app>` (every comm, the exec'd file /tmp/w-<app>), TCP on 127.0.0.1:<port> and <port>+1, and an OOM
/// kill every 2 s in a second container (comm `w-<app>-oom`).
fn workload_pod(node: &RealNode, app: &str, port: u16) -> String {
    let image = node.image("SONDE_BUSYBOX_IMAGE");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}, labels: {{app: {app}}}}}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n    - name: work\n      image: {image}\n      \
         imagePullPolicy: Never\n      command: [workload, w-{app}, \"{port}\"]\n    - name: oom\n      \
         image: {image}\n      imagePullPolicy: Never\n      command: [workload, oom, w-{app}-oom]\n      \
         resources: {{limits: {{memory: 32Mi}}}}\n"
    )
}

/// Where a result URL's file is on this host: `file://` paths as they are; `results+http(s)://<server>/<key>`
/// (the chart's default, through the results server) on the server's volume, [`RESULTS_VOLUME`].
fn stored_path(url: &str) -> String {
    if let Some(path) = url.strip_prefix("file://") {
        return path.to_string();
    }
    let key = url
        .strip_prefix("results+http://")
        .or_else(|| url.strip_prefix("results+https://"))
        .and_then(|r| r.split_once('/'))
        .map(|(_, key)| key)
        .unwrap_or_else(|| panic!("{url}: neither file:// nor the results server"));
    format!("{RESULTS_VOLUME}/{key}")
}

/// Everything a finished job left: its status and the text of every result file (where the chart stores them).
fn results_text(st: &Value) -> String {
    let mut text = st.to_string();
    for url in st["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
    {
        let path = stored_path(url);
        text += &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{url}: {e}"));
        if url.ends_with("/events/manifest.json") {
            for e in sonde_tests::events_of(&path) {
                text += &e.to_string();
                text.push('\n');
            }
        }
    }
    text
}

/// The pod filter in the negative for every probe that takes a pod selector (packet-latency: field case B,
/// wakeups: field case A too). Two pods run the same workload; one job per probe selects `app=mine`. Each
/// job's status and result files must show the selected pod's work and nothing of the other's, whichever
/// context the probe's hook runs in (the task's own, softirq for retransmits, the OOM killer's).
#[tokio::test(flavor = "multi_thread")]
async fn real_node_every_probe_sees_only_the_selected_pod() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "only-mine";
    fresh_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    // Ports below the ephemeral range (32768+), so no connection's source port can look like the other pod's.
    let pods = [
        workload_pod(node, "mine", 21100),
        workload_pod(node, "other", 22200),
    ];
    apply(node, ns, &pods.join("---\n"));
    wait_pods_ready(node, ns);
    // What the selected pod's work leaves in each probe's results. The latency probes send only events over a
    // threshold (their histograms are per syscall or per thread): thresholds every sleep crosses.
    let probes = [
        ("exec", "/tmp/w-mine", ""),
        (
            "syscall-latency",
            "w-mine",
            "{metric: syscallLatencyMs, value: 1}",
        ),
        (
            "runq-latency",
            "w-mine",
            "{metric: runqLatencyUs, value: 1}",
        ),
        ("cpu-profile", "w-mine", ""),
        ("tcp-connect", "127.0.0.1:21100", ""),
        ("tcp-retransmit", "127.0.0.1:21101", ""),
        ("oom-kill", "w-mine-oom", ""),
        ("wakeups", "w-mine", ""),
    ];
    // At most a namespace's share of the node's sessions at once (agent.limits.maxSessionsPerNamespace, 6).
    for batch in probes.chunks(6) {
        check_only_mine(node, ns, batch).await;
    }
}

/// Runs a TraceJob per probe of `probes` (name, what the selected pod's work leaves in its results, threshold)
/// at once and checks each names the selected pod and never the other.
async fn check_only_mine(node: &RealNode, ns: &str, probes: &[(&str, &str, &str)]) {
    let jobs: Vec<String> = probes
        .iter()
        .map(|(p, _, threshold)| {
            let thresholds = if threshold.is_empty() {
                String::new()
            } else {
                format!("  thresholds: [{threshold}]\n")
            };
            format!(
                "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: only-{p}}}\nspec:\n  \
                 probe: {p}\n  target: {{podSelector: {{matchLabels: {{app: mine}}}}}}\n  duration: 20s\n\
                 {thresholds}"
            )
        })
        .collect();
    apply(node, ns, &jobs.join("---\n"));
    for &(p, mine, _) in probes {
        let st = finished_job(node, ns, &format!("only-{p}"), Duration::from_secs(150)).await;
        assert_eq!(st["phase"], "Succeeded", "{p}: {st}");
        let text = results_text(&st);
        assert!(
            text.contains(mine),
            "{p}: no {mine} (the selected pod) in its results: {st}"
        );
        for theirs in ["w-other", "127.0.0.1:22200\"", "127.0.0.1:22201\""] {
            if let Some(i) = text.find(theirs) {
                let around: String = text[i..].chars().take(300).collect();
                panic!("{p}: {theirs} (the other pod) in its results: {around}...");
            }
        }
        eprintln!(
            "{p}: {} bytes of results, only the selected pod",
            text.len()
        );
    }
}

/// The host end of a pod's veth: the pod's eth0 names its peer's ifindex (`eth0@ifN`).
fn host_veth(pid: u32) -> String {
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-o",
            "link",
            "show",
            "eth0",
        ])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let peer = line
        .split("@if")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap_or_else(|| panic!("no peer index in {line:?}"));
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&links.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{peer}:")))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|n| n.split('@').next())
        .unwrap_or_else(|| panic!("no host link with index {peer}"))
        .to_string()
}

/// Field case B on real pods: `app=web` listens on 8080 behind a tight tbf on its veth's host end, a client pod
/// sends a bulk flow across the CNI bridge, and `kubectl apply -f examples/packet-latency.yaml` reports slow
/// segments whose delay sits between xmit and `__netif_receive_skb`. An unselected `web-other` with the same
/// tbf and flow appears nowhere in the results.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_field_case_b_puts_the_delay_in_front_of_the_receiver() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "field-b";
    fresh_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let busybox = node.image("SONDE_BUSYBOX_IMAGE");
    let pod = |name: &str, app: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      image: {busybox}\n      \
             imagePullPolicy: Never\n      command: [sh, -c, '{script}']\n"
        )
    };
    let listen = "while true; do nc -l -p 8080 >/dev/null; done";
    // `web` is selected; `web-other` (app=web-other) gets the same flow behind the same tbf and must not appear.
    let serve = |name: &str| {
        apply(node, ns, &pod(name, name, listen));
        let arg = format!("pod/{name}");
        let wait = [
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &arg,
            "--timeout=60s",
        ];
        node.kubectl_ok(&wait);
        let web = node.json(&["get", "pod", "-n", ns, name]);
        let ip = web["status"]["podIP"].as_str().unwrap().to_string();
        let uid = web["metadata"]["uid"].as_str().unwrap();
        let shell = host_pids(uid, "sh");
        assert!(!shell.is_empty(), "no shell of pod {name} on the host");
        let veth = host_veth(shell[0]);
        let mut tc = vec!["qdisc", "replace", "dev", veth.as_str(), "root", "tbf"];
        tc.extend_from_slice(sonde_tests::TIGHT_TBF);
        let st = std::process::Command::new("tc").args(&tc).status().unwrap();
        assert!(st.success(), "tc {tc:?}");
        ip
    };
    let (ip, other_ip) = (serve("web"), serve("web-other"));

    let example = repo_root().join("examples/packet-latency.yaml");
    node.kubectl_ok(&["apply", "-n", ns, "-f", example.to_str().unwrap()]);
    wait_until("the job attaches", Duration::from_secs(60), POLL, async || {
        node.json(&["get", "tracejob", "-n", ns, "slow-segments"])["status"]["nodes"]["attached"]
            == 1
    })
    .await;
    for (name, to) in [("client", &ip), ("client-other", &other_ip)] {
        let flow = format!("while true; do nc {to} 8080 </dev/zero; sleep 1; done");
        apply(node, ns, &pod(name, name, &flow));
    }
    let st = &finished_job(node, ns, "slow-segments", Duration::from_secs(150)).await;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    assert!(st["counts"]["breaches"].as_u64().unwrap() >= 10, "{st}");
    let rows = st["summary"]["rows"].as_array().unwrap();
    assert!(
        rows.iter().any(
            |r| r["key"].as_str().unwrap().contains("__netif_receive_skb")
                && r["max"].as_f64().unwrap_or(0.0) >= 5.0
        ),
        "{rows:#?}"
    );
    let theirs = format!("{other_ip}:");
    assert!(
        rows.iter()
            .all(|r| !r["key"].as_str().unwrap().contains(&theirs)),
        "the unselected web-other in {rows:#?}"
    );
    let events_url = st["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|u| u.ends_with("/events/manifest.json"))
        .expect("breaching events kept");
    // Through the CNI bridge the data segments reach __netif_receive_skb late; their TCP stage is not asserted
    // here (on this topology the slow segments show no tcp_rcv_established record: an open question).
    let events = sonde_tests::slow_segments(&stored_path(events_url), 5.0);
    assert!(
        events
            .iter()
            .any(|e| e["function"] == "__netif_receive_skb"),
        "no slow segment at __netif_receive_skb"
    );
    assert!(
        events.iter().all(|e| e["dst"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{ip}:"))),
        "a segment not to the web pod (web-other is {other_ip})"
    );
}

/// A ProbePolicy on the ping pods of the real node breaches in its windows; when the pod is deleted and the
/// Deployment replaces it, the session's filter follows the new pod (its new ping is the one counted).
#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_policy_breaches_and_follows_a_replaced_pod() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "policy";
    ping_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let policy = "apiVersion: sonde.dev/v1alpha1\nkind: ProbePolicy\nmetadata: {name: ping-watch}\nspec:\n  \
                  probe: wakeups\n  target: {podSelector: {matchLabels: {app: ping}}, comms: [ping]}\n  \
                  window: 10s\n  thresholds: [{metric: wakeupsPerSecond, value: 200}]\n";
    apply(node, ns, policy);
    let breached_by = |uid: &str| {
        let key = format!(
            "ping/{} -> isc-socket/{}",
            one_pid(uid, "ping"),
            one_pid(uid, "isc-socket")
        );
        move |p: &Value| {
            let st = &p["status"];
            let breached = st["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "ThresholdBreached" && c["status"] == "True")
            });
            let rows = st["lastWindow"]["rows"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            breached && rows.iter().any(|r| r["key"] == key.as_str())
        }
    };
    let first = pod_uid(node, ns, "ping");
    let check = breached_by(&first);
    wait_until(
        "a window breached by the first pod",
        Duration::from_secs(60),
        POLL,
        async || check(&node.json(&["get", "probepolicy", "-n", ns, "ping-watch"])),
    )
    .await;
    node.kubectl_ok(&["delete", "pod", "-n", ns, "-l", "app=ping", "--wait=false"]);
    let mut second = String::new();
    wait_until(
        "the replacement pod",
        Duration::from_secs(60),
        POLL,
        async || {
            let pods = node.json(&["get", "pods", "-n", ns, "-l", "app=ping"]);
            pods["items"].as_array().unwrap().iter().any(|p| {
                let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let uid = p["metadata"]["uid"].as_str().unwrap();
                if ready && uid != first && p["metadata"]["deletionTimestamp"].is_null() {
                    second = uid.to_string();
                }
                !second.is_empty()
            })
        },
    )
    .await;
    wait_until(
        "the session follows the new pod",
        Duration::from_secs(30),
        POLL,
        async || {
            let sessions = node.json(&["get", "probesessions", "-n", ns]);
            sessions["items"].as_array().unwrap().iter().any(|s| {
                let pods = s["spec"]["pods"].as_array().cloned().unwrap_or_default();
                pods.len() == 1 && pods[0]["uid"] == second.as_str()
            })
        },
    )
    .await;
    let check = breached_by(&second);
    wait_until(
        "a window breached by the new pod",
        Duration::from_secs(60),
        POLL,
        async || check(&node.json(&["get", "probepolicy", "-n", ns, "ping-watch"])),
    )
    .await;
}

/// Ids of the loaded programs named in `names` (bpftool, failing loudly when it fails).
fn program_ids(names: &[&str]) -> Vec<u64> {
    sonde_tests::bpf_programs(names)
}

/// Ids of the eBPF programs a process holds, through program or link fds (`prog_id:` in /proc/<pid>/fdinfo).
fn programs_held_by(pid: u32) -> Vec<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Deleting the agent pod mid-job: the DaemonSet starts another, nothing the old pod attached stays attached,
/// the successor attaches again and says that events before the restart were lost.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_deleted_agent_pod_leaves_nothing_behind_and_its_successor_is_truthful() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "faults";
    ping_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let job = "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: survive}\nspec:\n  probe: wakeups\n  \
               target: {podSelector: {matchLabels: {app: ping}}}\n  duration: 40s\n";
    apply(node, ns, job);
    wait_until(
        "the job attaches",
        Duration::from_secs(60),
        POLL,
        async || {
            node.json(&["get", "tracejob", "-n", ns, "survive"])["status"]["nodes"]["attached"] == 1
        },
    )
    .await;
    let old_agent = host_pids_by_comm("sonde-agent");
    assert_eq!(old_agent.len(), 1, "agent processes {old_agent:?}");
    let before = program_ids(WAKEUPS_PROGS);
    let held = programs_held_by(old_agent[0]);
    assert!(
        !before.is_empty() && before.iter().all(|id| held.contains(id)),
        "wakeups programs {before:?}, the agent holds {held:?}"
    );
    node.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        "sonde-system",
        "-l",
        "app.kubernetes.io/component=agent",
    ]);
    node.kubectl_ok(&[
        "rollout",
        "status",
        "-n",
        "sonde-system",
        "daemonset/sonde-agent",
        "--timeout=120s",
    ]);
    let mut now = vec![];
    wait_until(
        "the successor attaches",
        Duration::from_secs(60),
        POLL,
        async || {
            now = program_ids(WAKEUPS_PROGS);
            now.len() == before.len()
        },
    )
    .await;
    let agents = host_pids_by_comm("sonde-agent");
    assert_eq!(agents.len(), 1, "agent processes {agents:?}");
    assert_ne!(agents[0], old_agent[0]);
    let held = programs_held_by(agents[0]);
    for id in &now {
        assert!(!before.contains(id), "program {id} survived the old agent");
        assert!(
            held.contains(id),
            "program {id} is not the new agent's ({held:?})"
        );
    }
    let st = finished_job(node, ns, "survive", Duration::from_secs(90)).await;
    let msg = st["nodeResults"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("agent restarted"), "{st}");
}

fn host_pids_by_comm(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The `Complete` condition of a status (a TraceJob's or a ProbeSession's).
fn complete(st: &Value) -> &Value {
    let conditions = st["conditions"].as_array();
    let c = conditions.and_then(|c| c.iter().find(|c| c["type"] == "Complete"));
    c.unwrap_or_else(|| panic!("no Complete condition in {st}"))
}

/// Puts the node back in service when a drain test ends, passed or not: every other test needs it.
struct Uncordon<'a>(&'a RealNode);

impl Drop for Uncordon<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl(&["uncordon", self.0.name()]);
    }
}

/// `kubectl drain` of the node while a job runs. Drain leaves the agent (a DaemonSet pod) and evicts the rest,
/// the operator included on this one-node cluster: the agent sees the cordon and stops the session at once with
/// what it has (reason NodeDrained) instead of tracing until the node goes down; after `kubectl uncordon` the
/// operator comes back and completes the job with that reason, minutes before its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_drain_ends_a_running_job_with_the_reason() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "drain";
    ping_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let job = "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: until-drained}\nspec:\n  \
               probe: wakeups\n  target: {podSelector: {matchLabels: {app: ping}}}\n  duration: 10m\n";
    apply(node, ns, job);
    wait_until("the job attaches", Duration::from_secs(60), POLL, async || {
        node.json(&["get", "tracejob", "-n", ns, "until-drained"])["status"]["nodes"]["attached"]
            == 1
    })
    .await;
    // An earlier test's namespace may still be going: the eviction API refuses pods of a terminating namespace,
    // and drain would wait on them (the kubelet has been seen taking minutes to report such pods gone). Its pods
    // are not marked for deletion at once: the namespace itself must be gone too.
    wait_until(
        "no namespace or pod of an earlier test is still terminating",
        Duration::from_secs(240),
        POLL,
        async || {
            let gone = |kind: &str| {
                node.json(&["get", kind, "-A"])["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|o| o["metadata"]["deletionTimestamp"].is_null())
            };
            gone("namespaces") && gone("pods")
        },
    )
    .await;
    let t = Instant::now();
    let _uncordon = Uncordon(node);
    let drain = [
        "drain",
        node.name(),
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=150s",
    ];
    node.kubectl_ok(&drain);
    eprintln!("kubectl drain returned after {:?}", t.elapsed());
    // No operator runs while the only node is drained: the session is the agent's to end.
    let mut session = Value::Null;
    wait_until(
        "the agent ends the session",
        Duration::from_secs(60),
        POLL,
        async || {
            session = node.json(&["get", "probesessions", "-n", ns])["items"][0].clone();
            session["status"]["phase"] == "Succeeded"
        },
    )
    .await;
    let st = &session["status"];
    assert_eq!(complete(st)["reason"], "NodeDrained", "{st}");
    // Its results are kept: in the store, or spooled on the node while the store is away (draining the only
    // node also evicts the results server, where results go by default).
    let kept = st["results"].as_array().is_some_and(|r| !r.is_empty())
        || (st["upload"]["state"] == "Pending" && st["upload"]["pending"].as_u64() > Some(0));
    assert!(kept, "no results kept: {st}");
    node.kubectl_ok(&["uncordon", node.name()]);
    let st = finished_job(node, ns, "until-drained", Duration::from_secs(180)).await;
    eprintln!("drain -> job {} after {:?}", st["phase"], t.elapsed());
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let c = complete(&st);
    assert_eq!(c["reason"], "NodeDrained", "{st}");
    assert!(c["message"].as_str().unwrap().contains("cordoned"), "{c}");
    let complete = wait_for_every(Duration::from_secs(180), POLL, async || {
        node.json(&["get", "tracejob", "-n", ns, "until-drained"])["status"]["upload"]["state"]
            == "Complete"
    })
    .await;
    if !complete {
        let session = node.json(&["get", "probesessions", "-n", ns]);
        let job = node.json(&["get", "tracejob", "-n", ns, "until-drained"]);
        let (_, logs, _) = node.kubectl(&[
            "logs",
            "-n",
            "sonde-system",
            "daemonset/sonde-agent",
            "--tail=60",
        ]);
        panic!(
            "the drained job's results did not reach the store within 180 s\njob: {}\nsessions: {}\nagent: {logs:?}",
            job["status"], session["items"]
        );
    }
    rolled_out(node).await;
}

/// Resident memory of a process (VmRSS) and of its memory cgroup, in MiB: what the pod's limit counts (it includes
/// the BPF maps this kernel charges to the loader). The memory controller is on v1 on this host (hybrid:
/// `memory.usage_in_bytes` under `/sys/fs/cgroup/memory`) and on v2 on most users' (`memory.current` under the
/// unified root); whichever holds the controller is read, and a figure that cannot be read fails the test (it
/// once read as NaN, and `max(NaN)` let every bound pass).
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path_of = |prefix: &str| {
        cgroup
            .lines()
            .find_map(|l| l.split_once(prefix).map(|(_, p)| p.to_string()))
    };
    let mut tried = Vec::new();
    let candidates = [
        path_of(":memory:").map(|p| format!("/sys/fs/cgroup/memory{p}/memory.usage_in_bytes")),
        path_of("0::").map(|p| format!("/sys/fs/cgroup/unified{p}/memory.current")),
        path_of("0::").map(|p| format!("/sys/fs/cgroup{p}/memory.current")),
    ];
    let usage = candidates.into_iter().flatten().find_map(|file| {
        let v = std::fs::read_to_string(&file)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok());
        tried.push(file);
        v
    });
    let usage = usage.unwrap_or_else(|| {
        panic!(
            "no memory cgroup figure for pid {pid} (tried {tried:?}; /proc/{pid}/cgroup: {cgroup})"
        )
    });
    (rss_kib / 1024.0, usage / (1 << 20) as f64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Measured, not timed: apply -> attached for 20 jobs one after another on the real node with release images
/// (from the TraceJob's create to `status.nodes.attached` = 1, through the operator, the session and the
/// agent), and the agent's memory idle and with three probes loaded. Every job must attach; the numbers are
/// printed for the note.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_twenty_jobs_attach_and_the_agent_memory_is_reported() {
    sonde_tests::requires!(Root, ControlPlane);
    use kube::api::{Api, DeleteParams, PostParams};
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let ns = "attach";
    ping_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    let agents = host_pids_by_comm("sonde-agent");
    assert_eq!(agents.len(), 1, "agent processes {agents:?}");
    let idle = memory_mib(agents[0]);
    let client = node.plane.client(sonde_tests::Identity::Admin).await;
    let jobs: Api<sonde_crds::TraceJob> = Api::namespaced(client, ns);
    let job = |name: &str, probe: &str| -> sonde_crds::TraceJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob", "metadata": {"name": name},
            "spec": {"probe": probe, "target": {"podSelector": {"matchLabels": {"app": "ping"}}},
                     "duration": "60s"},
        }))
        .unwrap()
    };
    let attached =
        |j: &sonde_crds::TraceJob| j.status.as_ref().is_some_and(|s| s.nodes.attached == 1);
    let mut took = vec![];
    for i in 0..20 {
        let name = format!("attach-{i}");
        let t = Instant::now();
        jobs.create(&PostParams::default(), &job(&name, "wakeups"))
            .await
            .unwrap();
        loop {
            if attached(&jobs.get(&name).await.unwrap()) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{name} did not attach"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(t.elapsed());
        jobs.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    took.sort();
    eprintln!(
        "apply -> attached over {} jobs: p50 {:?}, p95 {:?}, max {:?}",
        took.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.95),
        took.last().unwrap()
    );
    for probe in ["wakeups", "runq-latency", "syscall-latency"] {
        jobs.create(
            &PostParams::default(),
            &job(&format!("three-{probe}"), probe),
        )
        .await
        .unwrap();
    }
    wait_until(
        "three probes attach",
        Duration::from_secs(60),
        POLL,
        async || {
            let all = node.json(&["get", "tracejobs", "-n", ns]);
            all["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["status"]["nodes"]["attached"] == 1)
                .count()
                == 3
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let loaded = memory_mib(agents[0]);
    eprintln!(
        "agent memory: idle RSS {:.1} MiB (cgroup {:.1} MiB); three probes RSS {:.1} MiB (cgroup {:.1} MiB)",
        idle.0, idle.1, loaded.0, loaded.1
    );
}

/// The ProbeSession of a TraceJob or ProbePolicy named `owner` on this node.
fn session_of(node: &RealNode, ns: &str, owner: &str) -> Value {
    let name = format!("{owner}-{}", node.name());
    let (ok, out, _) = node.kubectl(&["get", "probesession", "-n", ns, &name, "-o", "json"]);
    if ok {
        serde_json::from_str(&out).unwrap()
    } else {
        Value::Null
    }
}

/// The reason of a finished session: its Failed condition's when it failed, else its Complete condition's.
fn end_reason(st: &Value) -> String {
    let of = |t: &str| {
        st["conditions"].as_array().and_then(|c| {
            c.iter()
                .find(|c| c["type"] == t && c["status"] == "True")
                .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
        })
    };
    of("Failed").or_else(|| of("Complete")).unwrap_or_default()
}

/// Specs that pass the schema but ask the most of the agent, all at once next to a canary (field case A), on
/// the chart's default limits: twelve sessions, six from each of two namespaces (each namespace's share). Each
/// hostile session ends with a reason (or, for the standing and day-long ones, keeps running until deleted),
/// one more session of a namespace at its share is refused with NamespaceAtShare and one of a third namespace
/// with NodeAtCapacity, the agent process is never restarted and its memory stays under the pod's limit, and
/// the canary's answer is the field case's.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_hostile_specs_leave_the_agent_serving_its_other_sessions() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let hostile = Hostile::on_a_quiet_node(node).await;
    hostile.twelve_sessions_attach_at_the_default_limits().await;
    hostile.one_more_is_refused_at_each_limit().await;
    let peak = hostile.each_hostile_job_ends_with_a_reason().await;
    hostile.the_canary_keeps_its_answer().await;
    hostile.the_standing_sessions_run_until_deleted().await;
    hostile.the_agent_was_never_restarted_and_stayed_under_its_limit(peak);
}

/// What the hostile sessions select: the workload pod and the ping Deployment's pod of their namespace.
const HOSTILE_PODS: &str =
    "podSelector: {matchExpressions: [{key: app, operator: In, values: [mine, ping]}]}";

/// The largest event cap the schema allows (the default is 100000).
const HOSTILE_CAP: &str = "output: {maxEvents: 100000000}";

/// The scene of [`real_node_hostile_specs_leave_the_agent_serving_its_other_sessions`]: its three namespaces
/// (deleted when it ends), the hostile TraceJobs and the agent process it watches.
struct Hostile {
    node: &'static RealNode,
    /// The canary and the table's first five.
    ns: &'static str,
    /// The table's other five and a standing ProbePolicy.
    ns_b: &'static str,
    /// A namespace of no session, for the full node's refusal.
    ns_c: &'static str,
    /// (name, spec, the end reasons it may have) of each hostile TraceJob.
    table: Vec<(&'static str, String, &'static [&'static str])>,
    /// The agent's process and its container's restart count before any session started.
    agents: Vec<u32>,
    restarts_before: u64,
    _gone: [DeleteOnDrop<'static>; 3],
}

impl Hostile {
    /// Three fresh namespaces, each with the workload pod (and the first two the ping Deployment) Ready, on a
    /// node where no session of an earlier test still runs: the agent's share and capacity are all this test's.
    async fn on_a_quiet_node(node: &'static RealNode) -> Hostile {
        let (ns, ns_b, ns_c) = ("hostile", "hostile-b", "hostile-c");
        let _gone = [ns, ns_b, ns_c].map(|n| {
            fresh_namespace(node, n);
            DeleteOnDrop(node, n)
        });
        for n in [ns, ns_b, ns_c] {
            apply(node, n, &workload_pod(node, "mine", 21100));
        }
        for n in [ns, ns_b] {
            apply(node, n, &ping_deployment(node));
        }
        for n in [ns, ns_b, ns_c] {
            wait_pods_ready(node, n);
        }
        wait_until(
            "no session of an earlier test still runs",
            Duration::from_secs(90),
            POLL,
            async || {
                let all = node.json(&["get", "probesessions", "-A"]);
                all["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["status"]["phase"] != "Running")
            },
        )
        .await;
        let agents = host_pids_by_comm("sonde-agent");
        assert_eq!(agents.len(), 1, "agent processes {agents:?}");
        Hostile {
            node,
            ns,
            ns_b,
            ns_c,
            table: hostile_table(),
            agents,
            restarts_before: agent_restarts(node),
            _gone,
        }
    }

    /// The namespace a session's owner is in.
    fn home_of(&self, owner: &str) -> &'static str {
        match self.table.iter().position(|(n, _, _)| *n == owner) {
            Some(i) if i >= 5 => self.ns_b,
            None if owner == "tiny-windows" => self.ns_b,
            _ => self.ns,
        }
    }

    /// The canary, the table's jobs and a standing policy, six in each of two namespaces, all attach: twelve,
    /// the chart's default node capacity; the CPU budget over the node's ceiling is lowered to it.
    async fn twelve_sessions_attach_at_the_default_limits(&self) {
        let mut yaml = vec![format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: canary}}\nspec:\n  probe: wakeups\n  \
             target: {{podSelector: {{matchLabels: {{app: ping}}}}}}\n  duration: 45s\n  \
             thresholds: [{{metric: wakeupsPerSecond, value: 200}}]\n"
        )];
        let mut yaml_b = vec![];
        for (i, (name, spec, _)) in self.table.iter().enumerate() {
            let target = if spec.contains("target:") {
                String::new()
            } else {
                format!("  target: {{{HOSTILE_PODS}}}\n")
            };
            let duration = if spec.contains("duration:") {
                ""
            } else {
                "  duration: 30s\n"
            };
            // The canary and the first five in one namespace, the rest in another: six each, each one's share.
            let home = if i < 5 { &mut yaml } else { &mut yaml_b };
            home.push(format!(
                "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: {name}}}\nspec:\n  \
                 {spec}\n{target}{duration}"
            ));
        }
        yaml_b.push(format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: ProbePolicy\nmetadata: {{name: tiny-windows}}\nspec:\n  \
             probe: runq-latency\n  target: {{{HOSTILE_PODS}}}\n  window: 10s\n  \
             thresholds: [{{metric: runqLatencyUs, value: 0, comparison: GreaterOrEqual}}]\n  {HOSTILE_CAP}\n"
        ));
        assert_eq!(
            (yaml.len(), yaml_b.len()),
            (6, 6),
            "each namespace fills its share"
        );
        apply(self.node, self.ns, &yaml.join("---\n"));
        apply(self.node, self.ns_b, &yaml_b.join("---\n"));
        let mut owners: Vec<&str> = self.table.iter().map(|(n, _, _)| *n).collect();
        owners.extend(["canary", "tiny-windows"]);
        assert_eq!(owners.len(), 12, "the table fills the default limit");
        wait_until(
            "all twelve sessions attach",
            Duration::from_secs(90),
            POLL,
            async || {
                owners.iter().all(|o| {
                    session_of(self.node, self.home_of(o), o)["status"]["phase"] == "Running"
                })
            },
        )
        .await;
        eprintln!(
            "twelve sessions attached; agent memory {:?} MiB",
            memory_mib(self.agents[0])
        );
        let attached = session_of(self.node, self.home_of("cpu-10khz"), "cpu-10khz");
        let attached = attached["status"]["conditions"].to_string();
        assert!(
            attached.contains("lowered from 100% to 10%"),
            "the budget over the node's ceiling was not lowered: {attached}"
        );
    }

    /// One more of a namespace at its share, and one of a third namespace on the full node: each refused at
    /// once, naming its limit; the others go on.
    async fn one_more_is_refused_at_each_limit(&self) {
        for (n, reason, limit) in [
            (
                self.ns,
                "NamespaceAtShare",
                "agent.limits.maxSessionsPerNamespace",
            ),
            (self.ns_c, "NodeAtCapacity", "agent.limits.maxSessions"),
        ] {
            apply(
                self.node,
                n,
                &format!(
                    "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: one-too-many}}\nspec:\n  \
                     probe: exec\n  target: {{{HOSTILE_PODS}}}\n  duration: 20s\n"
                ),
            );
            let st = finished_job(self.node, n, "one-too-many", Duration::from_secs(60)).await;
            let session = session_of(self.node, n, "one-too-many");
            assert_eq!(end_reason(&session["status"]), reason, "{session}");
            assert_eq!(st["phase"], "Failed", "{st}");
            assert!(
                st.to_string().contains(limit),
                "the job does not name the limit: {st}"
            );
        }
    }

    /// Each hostile job ends with one of its reasons; returns the agent's peak memory (RSS, memory cgroup, MiB)
    /// as they ended.
    async fn each_hostile_job_ends_with_a_reason(&self) -> (f64, f64) {
        let mut peak = (0f64, 0f64);
        for (name, _, reasons) in self.table.iter().filter(|(_, _, r)| !r.is_empty()) {
            let st = finished_job(
                self.node,
                self.home_of(name),
                name,
                Duration::from_secs(120),
            )
            .await;
            let m = memory_mib(self.agents[0]);
            peak = (peak.0.max(m.0), peak.1.max(m.1));
            let session = &session_of(self.node, self.home_of(name), name)["status"];
            let reason = end_reason(session);
            assert!(
                reasons.contains(&reason.as_str()),
                "{name}: ended {} with reason {reason:?}, expected one of {reasons:?}: {session}",
                st["phase"]
            );
            eprintln!(
                "{name}: {} ({reason}), {} captured, {} dropped, kernel CPU {}%",
                st["phase"],
                session["counts"]["captured"],
                session["counts"]["dropped"],
                session["kernelCpuPercent"]
            );
        }
        peak
    }

    /// The canary next to the hostile sessions still gives field case A's answer.
    async fn the_canary_keeps_its_answer(&self) {
        let canary = finished_job(self.node, self.ns, "canary", Duration::from_secs(120)).await;
        assert_eq!(canary["phase"], "Succeeded", "{canary}");
        let rows = canary["summary"]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            rows.iter().any(|r| {
                r["key"].as_str().unwrap().starts_with("ping/")
                    && r["key"].as_str().unwrap().contains(" -> isc-socket/")
                    && r["perSecond"].as_f64().unwrap_or_default() > 100.0
            }),
            "the canary lost its answer: {canary}"
        );
    }

    /// The standing and the day-long sessions still run, then detach when deleted.
    async fn the_standing_sessions_run_until_deleted(&self) {
        let policy = session_of(self.node, self.ns_b, "tiny-windows");
        assert_eq!(policy["status"]["phase"], "Running", "{policy}");
        assert!(
            policy["status"]["windows"].as_u64().unwrap_or_default() >= 2,
            "{policy}"
        );
        assert_eq!(
            session_of(self.node, self.home_of("day-long"), "day-long")["status"]["phase"],
            "Running"
        );
        self.node.kubectl_ok(&[
            "delete",
            "probepolicy",
            "-n",
            self.ns_b,
            "tiny-windows",
            "--timeout=60s",
        ]);
        self.node.kubectl_ok(&[
            "delete",
            "tracejob",
            "-n",
            self.home_of("day-long"),
            "day-long",
            "--timeout=60s",
        ]);
        wait_until(
            "their sessions go",
            Duration::from_secs(30),
            POLL,
            async || {
                session_of(self.node, self.ns_b, "tiny-windows").is_null()
                    && session_of(self.node, self.home_of("day-long"), "day-long").is_null()
            },
        )
        .await;
    }

    /// The agent process was never restarted, and its peak stayed under the pod's limit.
    fn the_agent_was_never_restarted_and_stayed_under_its_limit(&self, peak: (f64, f64)) {
        assert_eq!(
            host_pids_by_comm("sonde-agent"),
            self.agents,
            "the agent process changed"
        );
        assert_eq!(
            agent_restarts(self.node),
            self.restarts_before,
            "the agent container restarted"
        );
        eprintln!(
            "agent peak while the hostile sessions ran: RSS {:.1} MiB, memory cgroup {:.1} MiB (limit 512 MiB)",
            peak.0, peak.1
        );
        // ARCHITECTURE.md: twelve hostile sessions peak well under the chart's 512 MiB limit.
        assert!(
            peak.0 > 0.0 && peak.1 > 0.0 && peak.0 < 512.0 && peak.1 < 512.0,
            "the agent's peak: RSS {:.1} MiB, memory cgroup {:.1} MiB (limit 512 MiB)",
            peak.0,
            peak.1
        );
    }
}

/// How often the kubelet restarted the agent's container.
fn agent_restarts(node: &RealNode) -> u64 {
    sonde_pods(node, "agent")[0]["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap()
}

/// The hostile TraceJobs: (name, spec, the end reasons it may have).
fn hostile_table() -> Vec<(&'static str, String, &'static [&'static str])> {
    let ports: Vec<String> = (21090..21106).map(|p| p.to_string()).collect();
    let ports = ports.join(", ");
    let syscalls: Vec<String> = (0..31).map(|n: u32| n.to_string()).collect();
    // The largest values the schema allows (syscall numbers 0-1023, netns 32 bits, threshold values 1e15).
    let syscalls = format!("{}, 1023", syscalls.join(", "));
    let comms = "[w-mine, aaaaaaaaaaaaaaa, bbbbbbbbbbbbbbb, ccccccccccccccc, ddddddddddddddd, \
                 eeeeeeeeeeeeeee, fffffffffffffff, ggggggggggggggg]";
    // (name, spec, the end reasons it may have). Durations are 30s but for the day-long job: they must outlast the
    // refusals checked after all twelve attach.
    vec![
        (
            "top-max",
            "probe: wakeups\n  params: {wakeups: {top: 1000}}\n  \
             thresholds: [{metric: wakeupsPerSecond, value: 0}]"
                .into(),
            &["DeadlineReached"],
        ),
        (
            "every-syscall",
            format!(
                "probe: syscall-latency\n  thresholds: [{{metric: syscallLatencyMs, value: 0, comparison: \
                 GreaterOrEqual}}]\n  {HOSTILE_CAP}"
            ),
            &["DeadlineReached", "OverBudget"],
        ),
        (
            "syscalls-32",
            format!("probe: syscall-latency\n  params: {{syscallLatency: {{syscalls: [{syscalls}]}}}}"),
            &["DeadlineReached"],
        ),
        (
            "cpu-10khz",
            "probe: cpu-profile\n  params: {cpuProfile: {frequencyHz: 10000, userStacks: true}}\n  \
             budget: {maxKernelCpuPercent: 100}"
                .into(),
            &["DeadlineReached", "OverBudget"],
        ),
        (
            "comms-8",
            format!("probe: exec\n  target: {{{HOSTILE_PODS}, comms: {comms}}}"),
            &["DeadlineReached"],
        ),
        (
            "ports-16",
            format!("probe: tcp-connect\n  params: {{tcpConnect: {{ports: [{ports}]}}}}"),
            &["DeadlineReached"],
        ),
        (
            "packet-any-netns",
            format!(
                "probe: packet-latency\n  params: {{packetLatency: {{ports: [{ports}], netns: \
                 4294967295}}}}\n  thresholds: [{{metric: segmentLatencyMs, value: 0}}]\n  {HOSTILE_CAP}"
            ),
            &["DeadlineReached", "OverBudget"],
        ),
        (
            "threshold-huge",
            "probe: runq-latency\n  thresholds: [{metric: runqLatencyUs, value: 1e15, action: Stop}]".into(),
            &["DeadlineReached"],
        ),
        (
            "sample-max",
            "probe: runq-latency\n  thresholds: [{metric: runqLatencyUs, value: 0, comparison: \
             GreaterOrEqual}]\n  output: {sampleEvery: 1000000, maxEvents: 1}"
                .into(),
            &["DeadlineReached", "OverBudget"],
        ),
        ("day-long", "probe: exec\n  duration: 24h".into(), &[]),
    ]
}

/// `helm upgrade` of the installed release with one value changed (`--set-json`), waiting for the rollout.
async fn helm_set_json(node: &RealNode, value: &str) {
    let (ok, out, err) = helm_upgrade_json(node, value);
    assert!(ok, "helm upgrade --set-json {value}: {err}\n{out}");
    rolled_out(node).await;
}

/// Sets a chart value back when dropped, passed or failed, so the next test finds the chart as installed.
struct HelmValueOnDrop<'a>(&'a RealNode, &'a str);

impl Drop for HelmValueOnDrop<'_> {
    fn drop(&mut self) {
        // No assert here: a panic while a failed test unwinds would abort the whole test binary.
        let (ok, _, err) = helm_upgrade_json(self.0, self.1);
        if !ok {
            eprintln!("restoring {}: {err}", self.1);
        }
    }
}

fn helm_upgrade_json(node: &RealNode, value: &str) -> (bool, String, String) {
    let kubeconfig = node.plane.kubeconfig(Identity::Admin);
    sonde_tests::helm(&[
        "upgrade",
        "sonde",
        "helm/sonde",
        "-n",
        "sonde-system",
        "--reuse-values",
        "--set-json",
        value,
        "--wait",
        "--timeout",
        "5m",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ])
}

/// Node-wide tracing for a namespace editor, end to end on the real node: `sonde-user` (the built-in `edit`
/// role in its namespace, which the chart aggregates TraceJob rights into) is refused at admission without the
/// node-wide permission; with it bound, the operator still refuses while the namespace is not in
/// tenancy.nodeWideNamespaces; once the admin lists it, the job runs node-wide and sees another namespace's
/// pod.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_a_granted_user_traces_the_whole_node() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    let (ns, elsewhere) = ("granted", "elsewhere");
    let _gone = [ns, elsewhere].map(|n| {
        fresh_namespace(node, n);
        DeleteOnDrop(node, n)
    });
    apply(node, elsewhere, &workload_pod(node, "elsewhere", 23300));
    wait_pods_ready(node, elsewhere);
    node.kubectl_ok(&[
        "create",
        "rolebinding",
        "editor",
        "-n",
        ns,
        "--clusterrole=edit",
        "--user=sonde-user",
    ]);
    let job = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: whole-node}}\nspec:\n  probe: exec\n  \
         target: {{nodeNames: [{}]}}\n  duration: 15s\n",
        node.name()
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &job).unwrap();
    let as_user = |args: &[&str]| node.plane.kubectl(Identity::User, args);
    let create = || as_user(&["create", "-n", ns, "-f", file.path().to_str().unwrap()]);
    // RBAC reaches the authorizer within moments of a binding: retry while the user's own rights settle.
    let mut refused = String::new();
    wait_until(
        "the user's create reaches admission",
        Duration::from_secs(30),
        POLL,
        async || {
            let (ok, _, err) = create();
            assert!(!ok, "a node-wide job was admitted without the permission");
            refused = err;
            refused.contains("podSelector")
        },
    )
    .await;
    assert!(
        refused.contains("sonde-node-wide-tracer") && refused.contains("sonde-user"),
        "{refused}"
    );

    node.kubectl_ok(&[
        "create",
        "rolebinding",
        "node-wide",
        "-n",
        ns,
        "--clusterrole=sonde-node-wide-tracer",
        "--user=sonde-user",
    ]);
    wait_until(
        "the granted user's job is admitted",
        Duration::from_secs(30),
        POLL,
        async || create().0,
    )
    .await;
    let st = finished_job(node, ns, "whole-node", Duration::from_secs(60)).await;
    assert_eq!(st["phase"], "Failed", "{st}");
    let failed = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned();
    assert_eq!(
        failed.as_ref().map(|c| c["reason"].clone()),
        Some("NodeWideNotAllowed".into()),
        "{st}"
    );
    let (ok, _, err) = as_user(&[
        "delete",
        "tracejob",
        "-n",
        ns,
        "whole-node",
        "--timeout=60s",
    ]);
    assert!(ok, "{err}");

    helm_set_json(node, &format!("tenancy.nodeWideNamespaces=[\"{ns}\"]")).await;
    let restore = HelmValueOnDrop(node, "tenancy.nodeWideNamespaces=[]");
    let (ok, _, err) = create();
    assert!(ok, "{err}");
    let st = finished_job(node, ns, "whole-node", Duration::from_secs(90)).await;
    drop(restore);
    rolled_out(node).await;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let text = results_text(&st);
    assert!(
        text.contains("/tmp/w-elsewhere"),
        "a node-wide exec trace missed another namespace's pod: {st}"
    );
}

/// scripts/images.sh builds reproducibly: the sonde and pause images built again from the same release
/// binaries and sources (SONDE_IMAGES_NO_CARGO=1), into a directory and a buildah storage of their own, have
/// the manifest digests of the archives in $SONDE_IMAGES_DIR; another creation time (SOURCE_DATE_EPOCH) gives
/// another digest, so the comparison can fail. Needs no node: root only (buildah, the script's chroot check).
#[tokio::test(flavor = "multi_thread")]
async fn real_node_images_are_reproducible() {
    sonde_tests::requires!(Root);
    // Alone: two cores building an image would slow the timed tests here.
    let _serial = SERIAL.lock().await;
    const TEST: &str = "real_node_images_are_reproducible";
    let cannot_run = |why: String| {
        assert!(
            std::env::var_os("SONDE_REQUIRE_ALL_TESTS").is_none(),
            "{TEST}: {why} (SONDE_REQUIRE_ALL_TESTS is set: it may not be skipped)"
        );
        eprintln!("skipped {TEST}: {why}");
    };
    /// The manifest digest of each reference an OCI archive names (its index.json).
    fn manifests(archive: &std::path::Path) -> std::collections::BTreeMap<String, String> {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("index.json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let index: Value = serde_json::from_slice(&out.stdout).unwrap();
        let named: std::collections::BTreeMap<String, String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let name = &m["annotations"]["org.opencontainers.image.ref.name"];
                (
                    name.as_str().unwrap().to_string(),
                    m["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert!(!named.is_empty(), "{}: {index}", archive.display());
        named
    }
    let images = std::env::var_os("SONDE_IMAGES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/images"));
    let names = ["sonde", "pause"];
    if let Some(n) = names
        .iter()
        .find(|n| !images.join(format!("{n}.oci.tar")).exists())
    {
        return cannot_run(format!(
            "no {n}.oci.tar in {} (scripts/images.sh)",
            images.display()
        ));
    }
    let again = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let build = |names: &[&str], epoch: Option<&str>| {
        let mut cmd = std::process::Command::new(repo_root().join("scripts/images.sh"));
        cmd.args(names)
            .env("SONDE_IMAGES_NO_CARGO", "1")
            .env("SONDE_IMAGES_DIR", again.path())
            .env("SONDE_CACHE", cache.path());
        if let Some(epoch) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", epoch);
        }
        let t = Instant::now();
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "scripts/images.sh {names:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "scripts/images.sh {names:?} (epoch {epoch:?}): {:?}",
            t.elapsed()
        );
    };
    build(&names, None);
    // Equal stamps are equal inputs as the script sees them (staged files, config, creation time, the
    // script): another tree or release build since $SONDE_IMAGES_DIR was built proves nothing either way.
    let stamp =
        |dir: &std::path::Path, n: &str| std::fs::read_to_string(dir.join(format!("{n}.stamp")));
    if let Some(n) = names
        .iter()
        .find(|n| stamp(&images, n).ok() != Some(stamp(again.path(), n).unwrap()))
    {
        return cannot_run(format!(
            "{n}.oci.tar in {} was built from other inputs than this tree's (scripts/images.sh)",
            images.display()
        ));
    }
    for n in names {
        let archive = format!("{n}.oci.tar");
        assert_eq!(
            manifests(&again.path().join(&archive)),
            manifests(&images.join(&archive)),
            "{n}: equal inputs, other digests"
        );
    }
    let before = manifests(&again.path().join("pause.oci.tar"));
    build(&["pause"], Some("86400"));
    let later = manifests(&again.path().join("pause.oci.tar"));
    assert_eq!(
        later.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    assert!(
        later.values().zip(before.values()).all(|(a, b)| a != b),
        "another creation time, the same digest: {later:?}"
    );
}

/// The HTTPS path end to end on the real node: given a certificate Secret as cert-manager's CA issuer makes one
/// (tls.crt, tls.key and ca.crt, for `sonde-results.sonde-system.svc`), the results server serves HTTPS on the
/// readers' and the intake's ports, the agent uploads through the Service to `results+https://` trusting only the
/// Secret's ca.crt, a job's results arrive on the server's volume, and a reader reads them over HTTPS with the
/// CA; plain HTTP gets no answer and a client without the CA does not trust the server. The chart is set back
/// after, passed or failed.
#[tokio::test(flavor = "multi_thread")]
async fn real_node_results_travel_over_https_with_a_certificate_secret() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let node = RealNode::get();
    chart(node).await;
    const NAME: &str = "sonde-results.sonde-system.svc";
    let certs = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("sh")
        .arg(repo_root().join("tests/certs.sh"))
        .arg(certs.path())
        .args(["", &format!("DNS:{NAME}")])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "tests/certs.sh: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |name: &str| certs.path().join(name).display().to_string();
    let delete_secret = || {
        let _ = node.kubectl(&[
            "delete",
            "secret",
            "results-tls",
            "-n",
            "sonde-system",
            "--ignore-not-found",
        ]);
    };
    delete_secret();
    node.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "results-tls",
        "-n",
        "sonde-system",
        &format!("--from-file=tls.crt={}", file("tls.crt")),
        &format!("--from-file=tls.key={}", file("tls.key")),
        &format!("--from-file=ca.crt={}", file("ca.crt")),
    ]);
    helm_set_json(node, "results.tls.secretName=\"results-tls\"").await;
    let restore = HelmValueOnDrop(node, "results.tls.secretName=\"\"");
    let ns = "https-path";
    fresh_namespace(node, ns);
    let _gone = DeleteOnDrop(node, ns);
    apply(node, ns, &ping_deployment(node));
    wait_pods_ready(node, ns);
    let example = std::fs::read_to_string(repo_root().join("examples/wakeups.yaml")).unwrap();
    apply(node, ns, &example.replace("duration: 60s", "duration: 8s"));
    let st = finished_job(node, ns, "ping-wakeups", Duration::from_secs(120)).await;
    assert_eq!(st["phase"], "Succeeded", "{st}");
    let results: Vec<&str> = st["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !results.is_empty()
            && results
                .iter()
                .all(|u| u.starts_with(&format!("results+https://{NAME}:"))),
        "{st}"
    );
    assert_eq!(st["upload"]["state"], "Complete", "{st}");
    let summary = results
        .iter()
        .find(|u| u.ends_with("/summary.json"))
        .unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(stored_path(summary)).unwrap()).unwrap();
    assert_eq!(report["probe"], "wakeups");

    // A reader of the namespace, over HTTPS by the certificate's name, trusting the CA.
    let ip = node.json(&[
        "-n",
        "sonde-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=results",
    ])["items"][0]["status"]["podIP"]
        .as_str()
        .expect("a results server pod with an IP")
        .to_string();
    let _ = node.kubectl(&["create", "serviceaccount", "viewer", "-n", ns]);
    node.kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        ns,
        "--clusterrole=view",
        &format!("--serviceaccount={ns}:viewer"),
    ]);
    let token = node.kubectl_ok(&[
        "create",
        "token",
        "viewer",
        "-n",
        ns,
        "--audience",
        "sonde-results",
    ]);
    // Every request here gives up after 10 s: one the server never answers is a `000`, not a hang.
    let curl = |args: &[&str]| curl_status(&[&["--max-time", "10"], args].concat());
    let resolve = format!("{NAME}:8080:{ip}");
    let url = format!("https://{NAME}:8080/api/v1/namespaces/{ns}/tracejobs/ping-wakeups");
    let bearer = format!("Authorization: Bearer {}", token.trim());
    let ca = file("ca.crt");
    let (code, body) = curl(&["--cacert", &ca, "--resolve", &resolve, "-H", &bearer, &url]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"Succeeded\""), "{body}");
    // Not without the CA, and not in clear.
    let (code, _) = curl(&["--resolve", &resolve, "-H", &bearer, &url]);
    assert_eq!(code, "000", "trusted without the CA");
    let (code, body) = curl(&[
        "-H",
        &bearer,
        &format!("http://{ip}:8080/api/v1/namespaces/{ns}/tracejobs"),
    ]);
    assert!(
        code == "000" || code.starts_with('4'),
        "plain HTTP answered {code}: {body}"
    );
    assert!(!body.contains("ping-wakeups"), "plain HTTP served: {body}");
    drop(restore);
    rolled_out(node).await;
    // Nothing mounts it any more.
    delete_secret();
}
