//! The Helm chart: it lints, its values schema refuses bad values naming them, and everything it renders is
//! accepted by the real API server (server-side dry run: schema, defaulting and admission of every object).
//! That its RBAC is enough to run the product is shown in tracejob.rs, where the operator and agent act as the
//! chart's service accounts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use sonde_crds::{
    AGENT_LEASE_NODE_ANNOTATION, NODE_LABEL, ProbeSession, agent_lease_name, node_label_value,
};
use sonde_tests::{ControlPlane, Identity, TestNamespace, helm, kubectl_with};

/// `helm template` of the chart with one `--set`.
fn template_with(value: &str) -> (bool, String, String) {
    helm(&[
        "template",
        "--kube-version=1.35.4",
        "sonde",
        "helm/sonde",
        "--set",
        value,
    ])
}

#[test]
fn chart_lints_and_its_schema_refuses_bad_values() {
    sonde_tests::requires!(Helm);
    let (ok, out, err) = helm(&["lint", "--strict", "helm/sonde"]);
    assert!(ok, "helm lint:\n{out}\n{err}");
    let (ok, out, err) = template_with("agent.storageUrl=ftp://nope");
    assert!(!ok, "a ftp:// storage URL rendered:\n{out}");
    assert!(err.contains("storageUrl"), "{err}");
    let (ok, _, err) = template_with("operator.replica=3");
    assert!(
        !ok && err.contains("replica"),
        "a misspelt value was accepted: {err}"
    );
    // Results go through the results server by default: without it, an object store must be named.
    let (ok, _, err) = template_with("results.enabled=false");
    assert!(
        !ok && err.contains("agent.storageUrl is empty"),
        "no storage for results rendered: {err}"
    );
    // Replicas of the server share its volume: only one that all of them can mount.
    let (ok, _, err) = template_with("results.replicas=2");
    assert!(
        !ok && err.contains("ReadWriteMany"),
        "two replicas on a ReadWriteOnce volume rendered: {err}"
    );
    let (ok, out, err) =
        template_with("results.replicas=2,results.persistence.accessModes={ReadWriteMany}");
    assert!(ok && out.contains("- ReadWriteMany"), "{err}");
}

/// With a certificate Secret the results server serves HTTPS from its tls.crt/tls.key (a whole-Secret mount,
/// which the kubelet updates when cert-manager rotates it), its Service's port is https, and the agents write to
/// results+https:// by the certificate's name while connecting to the Service's IP, trusting the Secret's ca.crt:
/// they never mount its key. Without it, plain HTTP as before.
#[test]
fn a_certificate_secret_turns_the_results_path_to_https() {
    sonde_tests::requires!(Helm);
    let (ok, out, err) = template_with("results.tls.secretName=results-tls");
    assert!(ok, "{err}");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let of = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let container = |d: &serde_yaml::Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    let env = |c: &serde_yaml::Value, name: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_string())
    };
    let server = of("Deployment", "sonde-results");
    let c = container(&server);
    assert_eq!(
        env(&c, "SONDE_TLS_CERT").as_deref(),
        Some("/etc/sonde/tls/tls.crt")
    );
    assert_eq!(
        env(&c, "SONDE_TLS_KEY").as_deref(),
        Some("/etc/sonde/tls/tls.key")
    );
    let mounts = serde_yaml::to_string(&c["volumeMounts"]).unwrap();
    assert!(
        mounts.contains("/etc/sonde/tls") && !mounts.contains("subPath"),
        "{mounts}"
    );
    let volumes = serde_yaml::to_string(&server["spec"]["template"]["spec"]["volumes"]).unwrap();
    assert!(volumes.contains("secretName: results-tls"), "{volumes}");
    let service = serde_yaml::to_string(&of("Service", "sonde-results")["spec"]["ports"]).unwrap();
    assert!(
        service.contains("name: https") && service.contains("port: 443"),
        "{service}"
    );
    let agent = of("DaemonSet", "sonde-agent");
    let c = container(&agent);
    let args = serde_yaml::to_string(&c["args"]).unwrap();
    assert!(
        args.contains("--storage-url=results+https://sonde-results.default.svc:$(SONDE_RESULTS_SERVICE_PORT_INTAKE)"),
        "{args}"
    );
    assert_eq!(
        env(&c, "SONDE_RESULTS_CA").as_deref(),
        Some("/etc/sonde/results-ca/ca.crt")
    );
    assert_eq!(
        env(&c, "SONDE_RESULTS_ADDRESS").as_deref(),
        Some("$(SONDE_RESULTS_SERVICE_HOST)")
    );
    let volumes = serde_yaml::to_string(&agent["spec"]["template"]["spec"]["volumes"]).unwrap();
    assert!(
        volumes.contains("key: ca.crt") && !volumes.contains("tls.key"),
        "the agents must get the CA only: {volumes}"
    );
    // Without a Secret: plain HTTP, as before.
    let (ok, out, err) = template_with("results.enabled=true");
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "results+http://$(SONDE_RESULTS_SERVICE_HOST):$(SONDE_RESULTS_SERVICE_PORT_INTAKE)"
        ) && !out.contains("SONDE_TLS_CERT"),
        "{out}"
    );
}

/// The documents of a `helm template` output.
fn documents(rendered: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect()
}

/// The agents' uploads have a port of their own on the results server, and the chart's NetworkPolicy lets only
/// the agent pods reach it (by the labels the agent DaemonSet's pods carry), while the readers' API and the
/// metrics stay open: the agent's storage URL names that port, the Service maps it to the container's port
/// the server takes uploads on. Without the intake (an object store) or with the policy turned off, none.
#[test]
fn only_the_agent_pods_may_reach_the_results_intake() {
    sonde_tests::requires!(Helm);
    let (ok, out, err) = template_with("results.enabled=true");
    assert!(ok, "{err}");
    let docs = documents(&out);
    let of = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let server = of("Deployment", "sonde-results");
    let agent = of("DaemonSet", "sonde-agent");
    let policy = of("NetworkPolicy", "sonde-results");
    let pod_labels = |d: &serde_yaml::Value| d["spec"]["template"]["metadata"]["labels"].clone();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        pod_labels(&server),
        "the policy does not select the server's pods"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_yaml::from_str::<serde_yaml::Value>("[Ingress]").unwrap()
    );
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    let ports = |r: &serde_yaml::Value| -> Vec<String> {
        r["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_str().unwrap().to_string())
            .collect()
    };
    // Every rule that admits the intake port admits the agent pods only.
    let to_intake: Vec<_> = rules
        .iter()
        .filter(|r| ports(r).iter().any(|p| p == "intake"))
        .collect();
    assert_eq!(to_intake.len(), 1, "{rules:?}");
    let from = to_intake[0]["from"].as_sequence().expect("a from list");
    assert_eq!(from.len(), 1, "{from:?}");
    assert!(from[0]["namespaceSelector"].is_null() && from[0]["ipBlock"].is_null());
    assert_eq!(from[0]["podSelector"]["matchLabels"], pod_labels(&agent));
    let open: Vec<String> = rules
        .iter()
        .filter(|r| r["from"].is_null())
        .flat_map(ports)
        .collect();
    assert_eq!(open, ["http", "metrics"], "{rules:?}");
    // The port by that name: the container's, which the server takes uploads on, and the Service's, which the
    // agent's URL names.
    let c = &server["spec"]["template"]["spec"]["containers"][0];
    let intake_port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "intake")
        .expect("a container port named intake")["containerPort"]
        .as_u64()
        .unwrap();
    let args = serde_yaml::to_string(&c["args"]).unwrap();
    assert!(
        args.contains(&format!("--intake-listen=0.0.0.0:{intake_port}")),
        "{args}"
    );
    let service = of("Service", "sonde-results");
    let sp = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "intake")
        .expect("a Service port named intake")
        .clone();
    assert_eq!(sp["targetPort"], "intake");
    let agent_args =
        serde_yaml::to_string(&agent["spec"]["template"]["spec"]["containers"][0]["args"]).unwrap();
    assert!(
        agent_args.contains(":$(SONDE_RESULTS_SERVICE_PORT_INTAKE)"),
        "{agent_args}"
    );
    // The intake needs a port of its own: one of the server's other ports is refused, naming the value.
    let (ok, _, err) = template_with("results.intakePort=9090");
    assert!(!ok && err.contains("results.intakePort 9090"), "{err}");
    // A release installed before these values (`helm upgrade --reuse-values` keeps its old values): the intake on
    // its default port, the policy on.
    let (ok, out, err) = template_with("results.intakePort=null,results.networkPolicy=null");
    assert!(ok, "{err}");
    assert!(
        out.contains("--intake-listen=0.0.0.0:8081") && out.contains("kind: NetworkPolicy"),
        "{out}"
    );
    // No intake, no policy: results in an object store; or the policy turned off.
    for value in [
        "agent.storageUrl=s3://bucket/results",
        "results.networkPolicy.enabled=false",
    ] {
        let (ok, out, err) = template_with(value);
        assert!(ok, "{value}: {err}");
        assert!(!out.contains("kind: NetworkPolicy"), "{value}: {out}");
        if value.starts_with("agent.") {
            assert!(!out.contains("intake"), "{value}: {out}");
        }
    }
}

#[tokio::test]
async fn everything_the_chart_renders_is_accepted_by_the_api_server() {
    sonde_tests::requires!(ControlPlane, Helm);
    let plane = ControlPlane::get().await;
    // The default values, and the HTTPS variant's objects too (a Secret volume on each side, the https port).
    let render = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "--kube-version=1.35.4",
            "sonde",
            "helm/sonde",
            "-n",
            "sonde-chart",
            "--include-crds",
        ];
        args.extend(extra);
        let (ok, rendered, err) = helm(&args);
        assert!(ok, "helm template {extra:?}: {err}");
        rendered
    };
    let rendered = render(&[]);
    for kind in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Service",
        "PersistentVolumeClaim",
        "NetworkPolicy",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}")),
            "no {kind} rendered"
        );
    }
    let _ = plane.kubectl(Identity::Admin, &["create", "namespace", "sonde-chart"]);
    for (name, rendered) in [
        ("chart-rendered.yaml", rendered),
        (
            "chart-rendered-tls.yaml",
            render(&["--set", "results.tls.secretName=results-tls"]),
        ),
    ] {
        let file = plane.dir.join(name);
        std::fs::write(&file, &rendered).unwrap();
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
        assert!(ok, "the API server refused {name}:\n{err}\n{out}");
        for what in [
            "daemonset.apps/sonde-agent",
            "deployment.apps/sonde-results",
        ] {
            assert!(
                out.contains(&format!("{what} serverside-applied (server dry run)")),
                "{name}: {out}"
            );
        }
    }
}

/// A kubeconfig in the plane's directory authenticating with `token` (as the chart's pods would).
fn token_kubeconfig(plane: &ControlPlane, file: &str, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(plane.kubeconfig(Identity::Admin)).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig");
    let kc = plane.dir.join(file);
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{}'}}\nusers:\n- name: u\n  user: {{token: '{}'}}\ncontexts:\n- name: u\n  context: {{cluster: c, user: u}}\ncurrent-context: u\n",
            plane.dir.join("pki/ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    kc
}

/// A client acting with the token in `kubeconfig`.
async fn token_client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("a token kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    Client::try_from(config).expect("a client")
}

/// The user extra the API server sees for a kubeconfig's token (SelfSubjectReview), as JSON.
fn whoami_extra(kubeconfig: &Path) -> serde_json::Value {
    let (ok, out, err) = kubectl_with(kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "kubectl auth whoami: {err}");
    let review: serde_json::Value = serde_json::from_str(&out).expect("a SelfSubjectReview");
    review["status"]["userInfo"]["extra"].clone()
}

/// Cluster-scoped objects of one test (its admission policy and binding, its Nodes), deleted when it ends.
struct ClusterScoped {
    plane: &'static ControlPlane,
    objects: Vec<(&'static str, String)>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        for (kind, name) in &self.objects {
            let _ = self.plane.kubectl(
                Identity::Admin,
                &["delete", kind, name, "--ignore-not-found", "--wait=false"],
            );
        }
    }
}

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The chart's ValidatingAdmissionPolicy (templates/admission.yaml) confines each node's agent to the
/// ProbeSessions of its own node: with a token bound to a pod on node A (as the kubelet gets for the agent's pod)
/// the agent may write A's session status but not B's, and the refusal names both nodes; a token of the agent's
/// service account that names no node may write nothing; the operator and admins are not affected; and once the
/// binding is deleted B's write goes through, so the refusals came from the policy and not from RBAC.
#[tokio::test]
async fn agents_may_write_only_the_probesessions_of_their_own_node() {
    sonde_tests::requires!(ControlPlane, Helm);
    let s = NodeScope::applied().await;
    s.tokens_name_their_pods_node().await;
    s.one_session_per_node().await;
    s.the_agent_of_a_may_not_write_bs_session().await;
    s.the_policy_type_checks().await;
    s.a_writes_its_own_and_a_token_naming_no_node_writes_nothing()
        .await;
    s.the_operator_and_the_admin_are_not_matched().await;
    s.each_agent_renews_its_own_nodes_lease_only().await;
    s.without_the_binding_bs_session_is_written().await;
}

/// One release's RBAC and admission policies in a namespace of the test's own, two Nodes, and the agent's service
/// account's tokens bound to a pod on node A, to a pod on a node without a Node object and to nothing, with the
/// operator's; dropped in order (the cluster-scoped objects before the namespace).
struct NodeScope {
    _cleanup: ClusterScoped,
    ns: TestNamespace,
    plane: &'static ControlPlane,
    client: Client,
    policy: String,
    lease_policy: String,
    node_a: String,
    node_b: String,
    ghost: String,
    agent_a: PathBuf,
    agent_ghost: PathBuf,
    agent_unbound: PathBuf,
    as_agent_a: Client,
    as_agent_unbound: Client,
    as_operator: Client,
}

impl NodeScope {
    async fn applied() -> NodeScope {
        let plane = ControlPlane::get().await;
        let ns = TestNamespace::create(plane, "nodescope").await;
        let client = plane.client(Identity::Admin).await;
        let policy = format!("sonde-agent-node-scope-{}", ns.name);
        let lease_policy = format!("sonde-agent-lease-scope-{}", ns.name);
        let (node_a, node_b, ghost) = (
            format!("{}-a", ns.name),
            format!("{}-b", ns.name),
            format!("{}-ghost", ns.name),
        );
        let _cleanup = ClusterScoped {
            plane,
            objects: vec![
                ("validatingadmissionpolicybinding", policy.clone()),
                ("validatingadmissionpolicy", policy.clone()),
                ("validatingadmissionpolicybinding", lease_policy.clone()),
                ("validatingadmissionpolicy", lease_policy.clone()),
                ("node", node_a.clone()),
                ("node", node_b.clone()),
            ],
        };

        // The chart's service accounts, RBAC and admission policy for a release in this test's namespace. Its
        // ClusterRoleBindings become RoleBindings of this namespace: the cluster-wide ones are named alike for every
        // release and would take the grants away from a release another test runs (tracejob.rs, sonde-system).
        let (ok, rendered, err) = helm(&[
            "template",
            "--kube-version=1.35.4",
            "sonde",
            "helm/sonde",
            "-n",
            &ns.name,
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/admission.yaml",
        ]);
        assert!(ok, "helm template: {err}");
        let mut docs = Vec::new();
        let mut kinds = Vec::new();
        for doc in rendered.split("\n---\n") {
            let mut doc: serde_yaml::Value = serde_yaml::from_str(doc).expect("rendered YAML");
            if doc.is_null() {
                continue;
            }
            if doc["kind"] == "ClusterRoleBinding" {
                doc["kind"] = "RoleBinding".into();
                doc["metadata"]["namespace"] = ns.name.as_str().into();
            }
            kinds.push(doc["kind"].as_str().unwrap_or_default().to_string());
            docs.push(serde_yaml::to_string(&doc).unwrap());
        }
        for kind in [
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ] {
            assert!(kinds.iter().any(|k| k == kind), "no {kind} rendered");
        }
        assert!(
            rendered.contains(&format!("name: {policy}\n")),
            "the policy is not named {policy}:\n{rendered}"
        );
        let file = plane.dir.join(format!("chart-nodescope-{}.yaml", ns.name));
        std::fs::write(&file, docs.join("---\n")).unwrap();
        let (ok, out, err) = plane.kubectl(
            Identity::Admin,
            &["apply", "--server-side", "-f", file.to_str().unwrap()],
        );
        assert!(ok, "applying the chart's RBAC and policy: {err}\n{out}");

        // Two hand-written Nodes, and the agent's pod bound to A: it never runs (no kubelet here), but a token bound
        // to it is what the kubelet would hand the agent. A pod on a node without a Node object, for the token only.
        let nodes: Api<Node> = Api::all(client.clone());
        for name in [&node_a, &node_b] {
            let node: Node =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            nodes.create(&PostParams::default(), &node).await.unwrap();
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let mut pod_uids = Vec::new();
        for (pod, node) in [("agent-a", &node_a), ("agent-ghost", &ghost)] {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": pod},
                "spec": {
                    "nodeName": node, "serviceAccountName": "sonde-agent", "automountServiceAccountToken": false,
                    "containers": [{"name": "agent", "image": "sonde.dev/e2e-fixture:never-runs"}],
                },
            }))
            .unwrap();
            let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
            pod_uids.push(pod.metadata.uid.expect("a pod uid"));
        }
        let token = |sa: &str, bound: Option<(&str, &str)>| {
            let mut args = vec!["create", "token", sa, "-n", &ns.name, "--duration=10m"];
            if let Some((pod, uid)) = bound {
                args.extend([
                    "--bound-object-kind",
                    "Pod",
                    "--bound-object-name",
                    pod,
                    "--bound-object-uid",
                    uid,
                ]);
            }
            let (ok, token, err) = plane.kubectl(Identity::Admin, &args);
            assert!(ok, "token for {sa} ({bound:?}): {err}");
            token
        };
        let agent_a = token_kubeconfig(
            plane,
            &format!("agent-a-{}.kubeconfig", ns.name),
            &token("sonde-agent", Some(("agent-a", &pod_uids[0]))),
        );
        let agent_ghost = token_kubeconfig(
            plane,
            &format!("agent-ghost-{}.kubeconfig", ns.name),
            &token("sonde-agent", Some(("agent-ghost", &pod_uids[1]))),
        );
        let agent_unbound = token_kubeconfig(
            plane,
            &format!("agent-unbound-{}.kubeconfig", ns.name),
            &token("sonde-agent", None),
        );
        let operator = token_kubeconfig(
            plane,
            &format!("operator-{}.kubeconfig", ns.name),
            &token("sonde-operator", None),
        );

        // Clients acting with each token; status is written as the agent writes it: a server-side apply of the
        // status subresource (no GET first: the agent's role may not read probesessions/status).
        let as_agent_a = token_client(&agent_a).await;
        let as_agent_unbound = token_client(&agent_unbound).await;
        let as_operator = token_client(&operator).await;
        NodeScope {
            _cleanup,
            ns,
            plane,
            client,
            policy,
            lease_policy,
            node_a,
            node_b,
            ghost,
            agent_a,
            agent_ghost,
            agent_unbound,
            as_agent_a,
            as_agent_unbound,
            as_operator,
        }
    }

    /// Status as the agent writes it: a server-side apply of the status subresource (no GET first: the agent's
    /// role may not read probesessions/status).
    async fn write_status(
        &self,
        client: &Client,
        session: &str,
        message: &str,
    ) -> Result<(), String> {
        let api: Api<ProbeSession> = Api::namespaced(client.clone(), &self.ns.name);
        let status = serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "status": {"message": message},
        });
        api.patch_status(
            session,
            &PatchParams::apply("sonde-agent").force(),
            &Patch::Apply(status),
        )
        .await
        .map(|_| ())
        .map_err(api_message)
    }

    /// What the API server makes of each token: the pod's node when the pod is bound to one, nothing else.
    async fn tokens_name_their_pods_node(&self) {
        let NodeScope {
            client,
            node_a,
            ghost,
            agent_a,
            agent_ghost,
            agent_unbound,
            ..
        } = self;
        // What the API server makes of each token: the pod's node when the pod is bound to one (with the Node's uid
        // when the Node object exists), nothing when the token is not bound to a pod.
        let nodes: Api<Node> = Api::all(client.clone());
        let extra = whoami_extra(agent_a);
        println!("user extra of the token bound to agent-a: {extra}");
        assert_eq!(
            extra[NODE_NAME_EXTRA],
            serde_json::json!([node_a]),
            "{extra}"
        );
        let node_a_uid = nodes.get(node_a).await.unwrap().metadata.uid.unwrap();
        assert_eq!(
            extra["authentication.kubernetes.io/node-uid"],
            serde_json::json!([node_a_uid]),
            "{extra}"
        );
        let extra = whoami_extra(agent_ghost);
        println!("user extra of the token bound to a pod on a node without a Node object: {extra}");
        assert_eq!(
            extra[NODE_NAME_EXTRA],
            serde_json::json!([ghost]),
            "{extra}"
        );
        assert!(
            extra.get("authentication.kubernetes.io/node-uid").is_none(),
            "{extra}"
        );
        let extra = whoami_extra(agent_unbound);
        println!("user extra of the unbound token: {extra}");
        assert!(extra.get(NODE_NAME_EXTRA).is_none(), "{extra}");
    }

    /// One session per node, created as the operator would.
    async fn one_session_per_node(&self) {
        let NodeScope {
            ns,
            client,
            node_a,
            node_b,
            ..
        } = self;
        // One session per node, created as the operator would.
        let sessions: Api<ProbeSession> = Api::namespaced(client.clone(), &ns.name);
        for (name, node) in [("session-a", &node_a), ("session-b", &node_b)] {
            let session: ProbeSession = serde_json::from_value(serde_json::json!({
                "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
                "metadata": {"name": name, "labels": {NODE_LABEL: node_label_value(node)}},
                "spec": {"nodeName": node, "probe": "wakeups", "deadline": "2030-01-01T00:00:00Z",
                         "pods": [], "resultPrefix": format!("{}/nodescope/{node}", ns.name)},
            }))
            .unwrap();
            sessions
                .create(&PostParams::default(), &session)
                .await
                .unwrap();
        }
    }

    /// The agent of node A writing node B's session is refused, naming both nodes.
    async fn the_agent_of_a_may_not_write_bs_session(&self) {
        let NodeScope {
            ns,
            policy,
            node_a,
            node_b,
            as_agent_a,
            ..
        } = self;
        // A new policy takes about a second to be enforced (and the RBAC grants as long): wait until the write to B
        // is refused by it before asserting anything.
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let (refused, refusal) = loop {
            let outcome = self
                .write_status(as_agent_a, "session-b", "forged by the agent of node A")
                .await;
            let refused = outcome
                .as_ref()
                .is_err_and(|e| e.contains("ValidatingAdmissionPolicy"));
            if refused || tokio::time::Instant::now() >= until {
                break (refused, outcome.err().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            refused,
            "the agent of node A could still write node B's session after 15s (last refusal: {refusal})"
        );
        println!("agent of node A writing node B's session: {refusal}");
        let want = format!(
            "the sonde-agent of node {node_a} may only write ProbeSessions of node {node_a}; this one ({}/session-b) \
             is for node {node_b}",
            ns.name
        );
        assert!(refusal.contains(&want), "want {want:?} in {refusal}");
        assert!(refusal.contains(&format!("'{policy}'")), "{refusal}");
    }

    /// The API server type-checks the policy's CEL against the ProbeSession schema.
    async fn the_policy_type_checks(&self) {
        let NodeScope { plane, policy, .. } = self;
        // The API server type-checks the policy's CEL against the ProbeSession schema: no warnings (a misspelt field
        // would fail at run time and, with failurePolicy Fail, refuse every agent write).
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        let checked = loop {
            let (ok, out, err) = plane.kubectl(
                Identity::Admin,
                &[
                    "get",
                    "validatingadmissionpolicy",
                    policy,
                    "-o",
                    "jsonpath={.status}",
                ],
            );
            assert!(ok, "reading the policy: {err}");
            if out.contains("typeChecking") || tokio::time::Instant::now() >= until {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            checked.contains("typeChecking") && !checked.contains("expressionWarnings"),
            "the policy's type check: {checked}"
        );
    }

    /// The agent of node A writes its own session; a token naming no node writes none.
    async fn a_writes_its_own_and_a_token_naming_no_node_writes_nothing(&self) {
        let NodeScope {
            ns,
            client,
            as_agent_a,
            as_agent_unbound,
            ..
        } = self;
        self.write_status(as_agent_a, "session-a", "written by the agent of node A")
            .await
            .expect("the agent of node A writes its own session");
        let sessions: Api<ProbeSession> = Api::namespaced(client.clone(), &ns.name);
        let a = sessions.get("session-a").await.unwrap();
        assert_eq!(
            a.status.and_then(|s| s.message).as_deref(),
            Some("written by the agent of node A")
        );

        let err = self
            .write_status(as_agent_unbound, "session-a", "written without a node")
            .await
            .expect_err("a token naming no node wrote node A's session");
        println!("agent token naming no node writing node A's session: {err}");
        assert!(
            err.contains("this token names no node, so it may not write ProbeSession")
                && err.contains(&format!("{}/session-a", ns.name)),
            "{err}"
        );
    }

    /// The operator's service account and the admin are not matched by the policy.
    async fn the_operator_and_the_admin_are_not_matched(&self) {
        let NodeScope {
            ns,
            client,
            as_operator,
            ..
        } = self;
        let operator_sessions: Api<ProbeSession> = Api::namespaced(as_operator.clone(), &ns.name);
        operator_sessions
            .patch(
                "session-b",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"sonde.dev/e2e-written-by": "operator"}}})),
            )
            .await
            .expect("the operator writes node B's session");
        self.write_status(client, "session-b", "written by the admin")
            .await
            .expect("the admin writes node B's status");
    }

    /// The agents' Leases: its own node's only.
    async fn each_agent_renews_its_own_nodes_lease_only(&self) {
        let NodeScope {
            plane,
            ns,
            lease_policy,
            node_a,
            node_b,
            as_agent_a,
            as_agent_unbound,
            ..
        } = self;
        // The agents' Leases (liveness, node-agent/src/liveness.rs): an agent renews its own node's Lease and no
        // other, nor the operator's leader Lease, so no agent keeps another node's sessions alive.
        let apply_lease = |client: &Client, name: String, node: String| {
            let api: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
            async move {
                let lease = serde_json::json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "annotations": {AGENT_LEASE_NODE_ANNOTATION: node}},
                    "spec": {"holderIdentity": "agent", "leaseDurationSeconds": 40},
                });
                api.patch(
                    &name,
                    &PatchParams::apply("sonde-agent").force(),
                    &Patch::Apply(lease),
                )
                .await
                .map(|_| ())
                .map_err(api_message)
            }
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let forged = loop {
            let outcome = apply_lease(as_agent_a, agent_lease_name(node_b), node_b.clone()).await;
            if outcome.is_err() || tokio::time::Instant::now() >= until {
                break outcome;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let err = forged.expect_err("the agent of node A renewed node B's Lease");
        println!("agent of node A renewing node B's Lease: {err}");
        assert!(
            err.contains(&format!(
                "the sonde-agent of node {node_a} may only write the Lease of its own node"
            )) && err.contains(&format!("'{lease_policy}'")),
            "{err}"
        );
        apply_lease(as_agent_a, agent_lease_name(node_a), node_a.clone())
            .await
            .expect("the agent of node A renews its own node's Lease");
        let err = apply_lease(as_agent_a, "sonde-operator".into(), node_a.clone())
            .await
            .expect_err("the agent of node A wrote the operator's leader Lease");
        assert!(err.contains("not Lease"), "{err}");
        let err = apply_lease(as_agent_unbound, agent_lease_name(node_a), node_a.clone())
            .await
            .expect_err("a token naming no node renewed node A's Lease");
        assert!(
            err.contains("this token names no node, so it may not write Lease"),
            "{err}"
        );
        // As for the sessions' policy: the API server type-checks its CEL, without warnings.
        let (ok, checked, err) = plane.kubectl(
            Identity::Admin,
            &[
                "get",
                "validatingadmissionpolicy",
                lease_policy,
                "-o",
                "jsonpath={.status}",
            ],
        );
        assert!(ok, "reading the lease policy: {err}");
        assert!(
            !checked.contains("expressionWarnings"),
            "the lease policy's type check: {checked}"
        );
    }

    /// Without the binding the same write of B goes through: the refusals came from the policy.
    async fn without_the_binding_bs_session_is_written(&self) {
        let NodeScope {
            plane,
            policy,
            as_agent_a,
            ..
        } = self;
        // Without the binding, the same write of B goes through: the refusals above were the policy's.
        let (ok, _, err) = plane.kubectl(
            Identity::Admin,
            &["delete", "validatingadmissionpolicybinding", policy],
        );
        assert!(ok, "deleting the binding: {err}");
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let (allowed, last) = loop {
            let outcome = self
                .write_status(as_agent_a, "session-b", "written once the binding is gone")
                .await;
            if outcome.is_ok() || tokio::time::Instant::now() >= until {
                break (outcome.is_ok(), outcome.err().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            allowed,
            "node B's session stayed refused to the agent of node A without the policy's binding: {last}"
        );
    }
}

/// What the API server said when it refused a request (its Status message), else the client's error.
fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(status) => status.message,
        e => e.to_string(),
    }
}
