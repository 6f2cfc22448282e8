//! The control plane itself and the CRDs on it: what only a real API server can tell (structural schema, CEL,
//! printer columns, explain, RBAC, garbage collection), plus the node and pod fixtures the agent tests rely on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use sonde_crds::{ProbeSession, TraceJob};
use sonde_tests::{
    CgroupDriver, ControlPlane, Identity, RealPod, TestNamespace, register_this_node, repo_root,
    wait_for,
};

const WAKEUPS_JOB: &str = r#"
apiVersion: sonde.dev/v1alpha1
kind: TraceJob
metadata: {name: ping-wakeups}
spec:
  probe: wakeups
  target: {podSelector: {matchLabels: {app: ping}}}
  duration: 30s
"#;

#[tokio::test]
async fn crds_are_established_with_their_names() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let names = plane
        .install_crds()
        .await
        .expect("re-applying the CRDs is idempotent");
    for want in [
        "tracejobs.sonde.dev",
        "probepolicies.sonde.dev",
        "probesessions.sonde.dev",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} not installed: {names:?}"
        );
    }
    let (ok, out, err) =
        plane.kubectl(Identity::Admin, &["api-resources", "--api-group=sonde.dev"]);
    assert!(ok, "{err}");
    for short in ["tj", "pp", "ps"] {
        assert!(
            out.split_whitespace().any(|w| w == short),
            "short name {short} missing:\n{out}"
        );
    }
}

/// Every manifest in examples/bad is refused by the API server itself, and the refusal names the field its
/// `# expect:` line gives -- the same rules `sonde validate` checks client-side.
#[tokio::test]
async fn api_server_rejects_every_bad_example_naming_the_field() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "bad").await;
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("examples/bad")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let field = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks '# expect: <field>'", path.display()));
        let (ok, out, err) = plane.kubectl(
            Identity::Admin,
            &["create", "-n", &ns.name, "-f", path.to_str().unwrap()],
        );
        assert!(!ok, "{} was accepted: {out}", path.display());
        assert!(
            err.contains(field),
            "{}: refusal does not name {field}:\n{err}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} bad examples found");
    // The good examples are accepted by the same server.
    for good in [
        "wakeups.yaml",
        "packet-latency.yaml",
        "cpu-profile.yaml",
        "probepolicy-runq.yaml",
    ] {
        let path = repo_root().join("examples").join(good);
        let (ok, _, err) = plane.kubectl(
            Identity::Admin,
            &["create", "-n", &ns.name, "-f", path.to_str().unwrap()],
        );
        assert!(ok, "{good} refused: {err}");
    }
    // So is every probe's example from the registry (`sonde probes --example <probe>`).
    for info in sonde_probes::catalogue::all() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), info.example).unwrap();
        let (ok, _, err) = plane.kubectl(
            Identity::Admin,
            &[
                "create",
                "-n",
                &ns.name,
                "-f",
                file.path().to_str().unwrap(),
            ],
        );
        assert!(ok, "{}'s example refused: {err}", info.name);
    }
}

#[tokio::test]
async fn tracejob_spec_is_immutable_on_the_server() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "immutable").await;
    let client = plane.client(Identity::Admin).await;
    let api: Api<TraceJob> = Api::namespaced(client, &ns.name);
    let job: TraceJob = serde_yaml::from_str(WAKEUPS_JOB).unwrap();
    let mut job = api.create(&PostParams::default(), &job).await.unwrap();
    job.spec.duration = "45s".into();
    let err = api
        .replace("ping-wakeups", &PostParams::default(), &job)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec is immutable"), "{err}");
}

#[tokio::test]
async fn kubectl_shows_printer_columns_and_explains_fields() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "columns").await;
    let file = tempfile_with(WAKEUPS_JOB);
    let (ok, _, err) = plane.kubectl(Identity::Admin, &["create", "-n", &ns.name, "-f", &file]);
    assert!(ok, "{err}");
    let (ok, out, err) = plane.kubectl(Identity::Admin, &["get", "tracejobs", "-n", &ns.name]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for col in ["NAME", "PROBE", "PHASE", "NODES", "BREACHES", "AGE"] {
        assert!(header.contains(&col), "column {col} missing: {header:?}");
    }
    assert!(
        out.lines().nth(1).unwrap_or("").contains("wakeups"),
        "{out}"
    );

    let (ok, out, err) = plane.kubectl(Identity::Admin, &["explain", "tracejob.spec.probe"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("DESCRIPTION") && out.contains("wakeups") && out.len() > 200,
        "{out}"
    );
    let (ok, out, err) = plane.kubectl(Identity::Admin, &["explain", "probesession.spec.deadline"]);
    assert!(ok, "{err}");
    assert!(out.to_lowercase().contains("deadline"), "{out}");
}

/// The namespaced identity works in its namespace and nowhere else.
#[tokio::test]
async fn rbac_confines_the_namespaced_user() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let file = tempfile_with(&WAKEUPS_JOB.replace("ping-wakeups", "user-job"));
    let (ok, _, err) = plane.kubectl(Identity::User, &["create", "-n", "sonde-user", "-f", &file]);
    assert!(ok || err.contains("AlreadyExists"), "{err}");
    let (ok, _, err) = plane.kubectl(Identity::User, &["create", "-n", "default", "-f", &file]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    let (ok, _, err) = plane.kubectl(Identity::User, &["get", "probesessions", "-A"]);
    assert!(!ok && err.contains("forbidden"), "{err}");
    plane.kubectl(Identity::User, &["delete", "-n", "sonde-user", "-f", &file]);
}

/// Deleting a TraceJob deletes the ProbeSessions it owns, through the controller-manager's garbage collector.
#[tokio::test]
async fn garbage_collector_deletes_owned_probe_sessions() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "gc").await;
    let client = plane.client(Identity::Admin).await;
    let jobs: Api<TraceJob> = Api::namespaced(client.clone(), &ns.name);
    let sessions: Api<ProbeSession> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs
        .create(
            &PostParams::default(),
            &serde_yaml::from_str(WAKEUPS_JOB).unwrap(),
        )
        .await
        .unwrap();
    let owner = serde_json::json!([{
        "apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob", "name": job.name_any(),
        "uid": job.uid().unwrap(), "controller": true, "blockOwnerDeletion": true,
    }]);
    for node in ["node-a", "node-b"] {
        let session: ProbeSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "metadata": {"name": format!("ping-wakeups-{node}"), "ownerReferences": owner,
                         "labels": {"sonde.dev/node": node}},
            "spec": {"nodeName": node, "probe": "wakeups", "deadline": "2030-01-01T00:00:00Z",
                     "pods": [], "resultPrefix": format!("{}/ping-wakeups/{node}", ns.name)},
        }))
        .unwrap();
        sessions
            .create(&PostParams::default(), &session)
            .await
            .unwrap();
    }
    assert_eq!(
        sessions
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    jobs.delete("ping-wakeups", &DeleteParams::background())
        .await
        .unwrap();
    // The collector picks up a new CRD at its next discovery resync (30 s), so allow two of them.
    let gone = wait_for(Duration::from_secs(70), || async {
        sessions
            .list(&Default::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(
        gone,
        "ProbeSessions survived their owner's deletion for 70s"
    );
}

/// The fixture the agent tests stand on: a Pod bound to this node, Running, whose container is a real process
/// in a kubelet-named cgroup.
#[tokio::test]
async fn real_pods_run_in_kubelet_named_cgroups() {
    sonde_tests::requires!(ControlPlane);
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "pods").await;
    let client = plane.client(Identity::Admin).await;
    let node = register_this_node(&client).await.unwrap();
    for (name, driver) in [
        ("sleeper-systemd", CgroupDriver::Systemd),
        ("sleeper-cgroupfs", CgroupDriver::Cgroupfs),
    ] {
        let pod = RealPod::start(
            &client,
            &ns.name,
            name,
            &[("app", "sleeper")],
            driver,
            &["sleep", "300"],
        )
        .await
        .unwrap();
        let procs = std::fs::read_to_string(pod.cgroup.join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pod.pid().to_string()), "{procs}");
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", pod.pid())).unwrap();
        assert_eq!(comm.trim(), "sleep");
        let path = pod.cgroup.to_string_lossy().into_owned();
        match driver {
            CgroupDriver::Systemd => {
                assert!(path.contains(&format!("cri-containerd-{}.scope", pod.container_id)))
            }
            CgroupDriver::Cgroupfs => {
                assert!(path.ends_with(&format!("pod{}/{}", pod.uid, pod.container_id)))
            }
        }
        let live = Api::<Pod>::namespaced(client.clone(), &ns.name)
            .get(name)
            .await
            .unwrap();
        assert_eq!(
            live.spec.as_ref().unwrap().node_name.as_deref(),
            Some(node.as_str())
        );
        let status = live.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let cs = &status.container_statuses.unwrap()[0];
        assert_eq!(
            cs.container_id.as_deref(),
            Some(format!("containerd://{}", pod.container_id).as_str())
        );
        let cgroup = pod.cgroup.clone();
        drop(pod);
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    }
}

fn tempfile_with(text: &str) -> String {
    let path = std::env::temp_dir().join(format!(
        "sonde-e2e-{}-{:x}.yaml",
        std::process::id(),
        text.len() ^ text.as_ptr() as usize
    ));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}
