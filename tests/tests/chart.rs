//! The Helm chart: it lints, its values schema refuses bad values naming them, and everything it renders is
//! accepted by the real API server (server-side dry run: schema, defaulting and admission of every object).
//! That its RBAC is enough to run the product is shown in tracejob.rs, where the operator and agent act as the
//! chart's service accounts.

use sonde_tests::{ControlPlane, Identity, helm};

#[test]
fn chart_lints_and_its_schema_refuses_bad_values() {
    let (ok, out, err) = helm(&["lint", "--strict", "helm/sonde"]);
    assert!(ok, "helm lint:\n{out}\n{err}");
    let (ok, out, err) = helm(&[
        "template",
        "--kube-version=1.35.4",
        "sonde",
        "helm/sonde",
        "--set",
        "agent.storageUrl=ftp://nope",
    ]);
    assert!(!ok, "a ftp:// storage URL rendered:\n{out}");
    assert!(err.contains("storageUrl"), "{err}");
    let (ok, _, err) = helm(&[
        "template",
        "--kube-version=1.35.4",
        "sonde",
        "helm/sonde",
        "--set",
        "operator.replica=3",
    ]);
    assert!(
        !ok && err.contains("replica"),
        "a misspelt value was accepted: {err}"
    );
}

#[tokio::test]
async fn everything_the_chart_renders_is_accepted_by_the_api_server() {
    let plane = ControlPlane::get().await;
    let (ok, rendered, err) = helm(&[
        "template",
        "--kube-version=1.35.4",
        "sonde",
        "helm/sonde",
        "-n",
        "sonde-chart",
        "--include-crds",
    ]);
    assert!(ok, "helm template: {err}");
    for kind in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}")),
            "no {kind} rendered"
        );
    }
    let file = plane.dir.join("chart-rendered.yaml");
    std::fs::write(&file, &rendered).unwrap();
    let _ = plane.kubectl(Identity::Admin, &["create", "namespace", "sonde-chart"]);
    let (ok, out, err) = plane.kubectl(
        Identity::Admin,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "the API server refused the chart:\n{err}\n{out}");
    assert!(
        out.contains("daemonset.apps/sonde-agent serverside-applied (server dry run)"),
        "{out}"
    );
}
