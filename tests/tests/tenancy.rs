//! Tenant isolation on the real API server: a namespace traces only its own pods unless a cluster admin allows
//! node-wide targets, checked twice (the chart's admission policy for the requesting user, the operator for the
//! namespace).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use sonde_crds::{OWNER_UID_LABEL, Phase, ProbePolicy, ProbeSession, TraceJob};
use sonde_tests::{
    Component, ControlPlane, Identity, TestNamespace, helm, register_this_node, this_node_name,
    wait_for,
};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn node_wide_job(name: &str) -> TraceJob {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob", "metadata": {"name": name},
        "spec": {"probe": "exec", "target": {"nodeNames": [this_node_name()]}, "duration": "60s"},
    }))
    .unwrap()
}

fn node_wide_policy(name: &str) -> ProbePolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbePolicy", "metadata": {"name": name},
        "spec": {
            "probe": "exec", "target": {"nodeNames": [this_node_name()]}, "window": "60s",
            "thresholds": [{"metric": "eventsPerSecond", "value": 1000}],
        },
    }))
    .unwrap()
}

/// This node registered, two fresh namespaces `<prefix>-ok` and `<prefix>-no`, and the environment (operator's or
/// agent's) that lets the first trace whole nodes (with kube-system) and not the second.
async fn allowed_and_refused(
    plane: &'static ControlPlane,
    client: &kube::Client,
    prefix: &str,
) -> (TestNamespace, TestNamespace, Vec<(String, String)>) {
    register_this_node(client).await.expect("node registered");
    let allowed = TestNamespace::create(plane, &format!("{prefix}-ok")).await;
    let refused = TestNamespace::create(plane, &format!("{prefix}-no")).await;
    let env = vec![(
        "SONDE_NODE_WIDE_NAMESPACES".to_string(),
        format!("kube-system, {}", allowed.name),
    )];
    (allowed, refused, env)
}

/// The operator places node-wide sessions only for the namespaces the admin listed; elsewhere a TraceJob fails
/// at once and a ProbePolicy is not attached, both with reason NodeWideNotAllowed and a message naming the way
/// out, and no session exists.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_places_node_wide_sessions_only_for_allowed_namespaces() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::get().await;
    let client = plane.client(Identity::Admin).await;
    let (allowed, refused, env) = allowed_and_refused(plane, &client, "nodewide").await;
    let dir = tempfile::tempdir().unwrap();
    let kc = plane.kubeconfig(Identity::Admin);
    let mut operator = Component::operator_with_env(&kc, &refused.name, dir.path(), &env);
    // Sessions are named <owner>-<node>, so the policy's name differs from the job's.
    let mut owners = Vec::new();
    for ns in [&allowed.name, &refused.name] {
        let jobs: Api<TraceJob> = Api::namespaced(client.clone(), ns);
        let job = jobs
            .create(&PostParams::default(), &node_wide_job("whole-node"))
            .await
            .unwrap();
        let policies: Api<ProbePolicy> = Api::namespaced(client.clone(), ns);
        let policy = policies
            .create(
                &PostParams::default(),
                &node_wide_policy("whole-node-policy"),
            )
            .await
            .unwrap();
        owners.push((job.uid().unwrap(), policy.uid().unwrap()));
    }
    let [(ok_job, ok_policy), _] = <[_; 2]>::try_from(owners).unwrap();
    let sessions = |ns: &str, owner: Option<&str>| {
        let api: Api<ProbeSession> = Api::namespaced(client.clone(), ns);
        let lp = match owner {
            Some(uid) => ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}")),
            None => ListParams::default(),
        };
        async move { api.list(&lp).await.unwrap().items }
    };
    let placed = wait_for(Duration::from_secs(30), || async {
        sessions(&allowed.name, Some(ok_job.as_str())).await.len() == 1
            && sessions(&allowed.name, Some(ok_policy.as_str()))
                .await
                .len()
                == 1
            && sessions(&allowed.name, None).await.len() == 2
    })
    .await;
    assert!(
        placed,
        "not one session each for the job and the policy in the allowed namespace: {:?}: {}",
        sessions(&allowed.name, None)
            .await
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>(),
        operator.log_text()
    );
    let jobs: Api<TraceJob> = Api::namespaced(client.clone(), &refused.name);
    let failed = wait_for(Duration::from_secs(30), || async {
        let j = jobs.get("whole-node").await.unwrap();
        j.status.is_some_and(|s| s.phase == Phase::Failed)
    })
    .await;
    let st = jobs.get("whole-node").await.unwrap().status;
    assert!(failed, "the refused job did not fail: {st:?}");
    let st = st.unwrap();
    let c = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(c.reason, "NodeWideNotAllowed", "{c:?}");
    assert!(
        c.message.contains("podSelector") && c.message.contains(&refused.name),
        "{}",
        c.message
    );
    let policies: Api<ProbePolicy> = Api::namespaced(client.clone(), &refused.name);
    let attached = |policy: ProbePolicy| {
        policy
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Attached")
    };
    let not_attached = wait_for(Duration::from_secs(30), || async {
        attached(policies.get("whole-node-policy").await.unwrap())
            .is_some_and(|c| c.reason == "NodeWideNotAllowed")
    })
    .await;
    let policy = policies.get("whole-node-policy").await.unwrap();
    assert!(
        not_attached,
        "the refused policy was not refused: {:?}: {}",
        policy.status,
        operator.log_text()
    );
    let c = attached(policy).unwrap();
    assert_eq!(c.status, "False", "{c:?}");
    assert!(
        c.message.contains("podSelector") && c.message.contains(&refused.name),
        "{}",
        c.message
    );
    assert!(
        sessions(&refused.name, None).await.is_empty(),
        "a session was placed"
    );
    // Still one session each in the allowed namespace: the refusal elsewhere touched nothing there.
    assert_eq!(
        sessions(&allowed.name, Some(ok_job.as_str())).await.len(),
        1
    );
    assert_eq!(
        sessions(&allowed.name, Some(ok_policy.as_str()))
            .await
            .len(),
        1
    );
    operator.kill();
}

/// The chart's admission policy: a namespace user without the node-wide permission cannot create a TraceJob or
/// a ProbePolicy without a podSelector (the message says why and what to do), can with one, and can node-wide
/// once an admin binds the chart's node-wide ClusterRole in the namespace. With the policy's binding removed the
/// same requests pass: the refusal came from the policy.
#[tokio::test(flavor = "multi_thread")]
async fn node_wide_targets_need_a_permission_the_admin_grants() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let admission = Admission::applied(ControlPlane::get().await);
    admission.a_namespace_user_needs_a_pod_selector().await;
    admission.every_spelling_of_no_selector_is_refused();
    admission.a_null_selector_is_pruned_not_kept();
    admission.no_one_writes_a_probe_session_by_hand().await;
    admission.the_granted_user_creates_node_wide_objects().await;
    admission
        .without_the_policy_binding_the_same_requests_pass()
        .await;
}

/// The helm release name [`node_wide_targets_need_a_permission_the_admin_grants`] renders the chart's tenancy
/// objects under: their names start with it.
const ADMISSION_RELEASE: &str = "tenancy-e2e";

/// The chart's tenancy objects (the admission policy and its binding, the node-wide ClusterRole) applied for
/// [`node_wide_targets_need_a_permission_the_admin_grants`]. Dropped, it deletes them and every object the test
/// made in `sonde-user` (labelled `sonde.dev/tenancy-e2e`), passed or failed.
struct Admission {
    plane: &'static ControlPlane,
    /// The rendered objects, applied and deleted by this file.
    rendered: tempfile::NamedTempFile,
}

impl Admission {
    /// The chart's `templates/tenancy.yaml`, rendered as release [`ADMISSION_RELEASE`] and applied.
    fn applied(plane: &'static ControlPlane) -> Admission {
        let (ok, rendered, err) = helm(&[
            "template",
            "--kube-version=1.35.4",
            ADMISSION_RELEASE,
            "helm/sonde",
            "--show-only",
            "templates/tenancy.yaml",
        ]);
        assert!(ok, "helm template: {err}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &rendered).unwrap();
        let path = file.path().to_str().unwrap();
        let (ok, _, err) = plane.kubectl(Identity::Admin, &["apply", "-f", path]);
        assert!(ok, "applying the tenancy objects: {err}");
        Admission {
            plane,
            rendered: file,
        }
    }

    /// kubectl as the cluster's admin.
    fn admin(&self, args: &[&str]) -> (bool, String, String) {
        self.plane.kubectl(Identity::Admin, args)
    }

    /// `kubectl create` as `sonde-user` of a `kind` (TraceJob or ProbePolicy) in its namespace; without
    /// `selector` the target is this node, whole. Whether it was created, and kubectl's error.
    fn create(&self, kind: &str, name: &str, selector: bool) -> (bool, String) {
        let target = if selector {
            "podSelector: {matchLabels: {app: mine}}".to_string()
        } else {
            format!("nodeNames: [{}]", this_node_name())
        };
        let rest = match kind {
            "TraceJob" => "duration: 10s",
            _ => "window: 60s\n  thresholds: [{metric: eventsPerSecond, value: 1000}]",
        };
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            format!(
                "apiVersion: sonde.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: sonde-user, \
                 labels: {{sonde.dev/tenancy-e2e: \"true\"}}}}\nspec:\n  probe: exec\n  target: {{{target}}}\n  \
                 {rest}\n"
            ),
        )
        .unwrap();
        let out = self.plane.kubectl(
            Identity::User,
            &["create", "-f", f.path().to_str().unwrap()],
        );
        (out.0, out.2)
    }

    /// kubectl as `sonde-user` with `args` and `-f` a file of `doc`: whether it passed, and kubectl's error.
    fn as_user(&self, args: &[&str], doc: &Value) -> (bool, String) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), doc.to_string()).unwrap();
        let mut args = args.to_vec();
        args.extend(["-f", f.path().to_str().unwrap()]);
        let (ok, _, err) = self.plane.kubectl(Identity::User, &args);
        (ok, err)
    }

    /// Tries `attempt`, the creation of `resource` `name` in `sonde-user`'s namespace, until admission refuses it:
    /// a policy takes effect within about a second of its creation, so an object created before that is deleted
    /// and tried again. Whether it was refused within 15 s, and the last error.
    async fn refused_at_admission(
        &self,
        resource: &str,
        name: &str,
        attempt: impl Fn() -> (bool, String),
    ) -> (bool, String) {
        let mut refusal = String::new();
        let refused = wait_for(Duration::from_secs(15), || {
            let (ok, err) = attempt();
            if ok {
                self.admin(&["delete", "-n", "sonde-user", resource, name, "--wait=false"]);
            }
            let done = err.contains("denied request");
            refusal = err;
            async move { done }
        })
        .await;
        (refused, refusal)
    }

    /// Whether `sonde-user` creates a node-wide `kind` named `name` within 15 s, tried again until then: a binding
    /// made or deleted takes effect within moments, not at once.
    async fn creates_node_wide(&self, kind: &str, name: &str) -> bool {
        wait_for(Duration::from_secs(15), || {
            let (ok, _) = self.create(kind, name, false);
            async move { ok }
        })
        .await
    }

    /// A namespace user may not create a node-wide TraceJob or ProbePolicy (the refusal says why and names the
    /// role that would allow it), and may create one with a podSelector.
    async fn a_namespace_user_needs_a_pod_selector(&self) {
        for kind in ["TraceJob", "ProbePolicy"] {
            let (refused, refusal) = self
                .refused_at_admission(&kind.to_lowercase(), "node-wide", || {
                    self.create(kind, "node-wide", false)
                })
                .await;
            assert!(refused, "a namespace user created a node-wide {kind}");
            assert!(
                refusal.contains(&format!("{kind} without spec.target.podSelector"))
                    && refusal.contains("sonde-user")
                    && refusal.contains(&format!("{ADMISSION_RELEASE}-node-wide-tracer")),
                "{refusal}"
            );
            let (ok, err) = self.create(kind, "own-pods", true);
            assert!(ok, "a {kind} with a podSelector was refused: {err}");
        }
    }

    /// Every spelling of "no selector" is refused alike, through kubectl's typed create and a raw POST, on create
    /// and on update: an explicit `podSelector: null` once reached the policy as a present key (`has()` true)
    /// while the operator read it as absent and placed a node-wide session. The schema has no nullable spec
    /// field, so the API server prunes the null before admission.
    fn every_spelling_of_no_selector_is_refused(&self) {
        let node = this_node_name();
        let mut spellings: Vec<(&str, String)> = Vec::new();
        for kind in ["TraceJob", "ProbePolicy"] {
            for target in [
                json!({"nodeNames": [node]}),
                json!({"podSelector": null, "nodeNames": [node]}),
                json!({"podSelector": null, "nodeSelector": {"kubernetes.io/os": "linux"}}),
                json!({"podSelector": null, "comms": ["sh"]}),
                json!({"comms": ["sh"]}),
                json!({"nodeSelector": {"kubernetes.io/os": "linux"}}),
            ] {
                spellings.push((kind, target.to_string()));
            }
        }
        for (i, (kind, target)) in spellings.iter().enumerate() {
            let target: Value = serde_json::from_str(target).unwrap();
            let plural = format!("{}s", kind.to_lowercase()).replace("policys", "policies");
            let raw = format!("/apis/sonde.dev/v1alpha1/namespaces/sonde-user/{plural}");
            for (how, args) in [
                ("kubectl create", vec!["create"]),
                ("a raw POST", vec!["create", "--raw", &raw]),
            ] {
                let name = format!("no-selector-{i}-{}", args.len());
                let (ok, err) = self.as_user(&args, &tenancy_object(kind, &name, &target));
                assert!(
                    !ok && (err.contains("denied request") || err.contains("Invalid value")),
                    "{how} of a {kind} with target {target} by a namespace user: accepted ({err})"
                );
            }
            // On update: a policy made with a selector, whose selector is then set to null (a JSON patch keeps the
            // null; a merge patch would delete the key) or replaced by a target without one.
            if *kind == "ProbePolicy" {
                let name = format!("selector-then-none-{i}");
                let (ok, err) = self.as_user(
                    &["create"],
                    &tenancy_object(
                        kind,
                        &name,
                        &json!({"podSelector": {"matchLabels": {"app": "mine"}}}),
                    ),
                );
                assert!(ok, "{err}");
                let mut no_selector = target.clone();
                no_selector.as_object_mut().unwrap().remove("podSelector");
                let patch =
                    json!([{"op": "replace", "path": "/spec/target", "value": target}]).to_string();
                let (ok, _, err) = self.plane.kubectl(
                    Identity::User,
                    &[
                        "patch",
                        "-n",
                        "sonde-user",
                        "probepolicy",
                        &name,
                        "--type=json",
                        "-p",
                        &patch,
                    ],
                );
                assert!(
                    !ok && refused_for_no_selector(&err),
                    "a JSON patch to target {target} was accepted: {err}"
                );
                let get = || {
                    let (_, out, _) = self.admin(&[
                        "get",
                        "-n",
                        "sonde-user",
                        "probepolicy",
                        &name,
                        "-o",
                        "json",
                    ]);
                    serde_json::from_str::<Value>(&out).unwrap()
                };
                let mut replaced = tenancy_object(kind, &name, &no_selector);
                replaced["metadata"]["resourceVersion"] =
                    get()["metadata"]["resourceVersion"].clone();
                let (ok, err) = self.as_user(&["replace"], &replaced);
                assert!(
                    !ok && refused_for_no_selector(&err),
                    "a replace with target {no_selector} was accepted: {err}"
                );
                let stored = get();
                assert_eq!(
                    stored["spec"]["target"],
                    json!({"podSelector": {"matchLabels": {"app": "mine"}}}),
                    "the policy's target changed"
                );
            }
        }
    }

    /// The null is pruned, not kept: a node-wide object the admin may create is stored without the key.
    fn a_null_selector_is_pruned_not_kept(&self) {
        let node = this_node_name();
        let f = tempfile::NamedTempFile::new().unwrap();
        let nulled = tenancy_object(
            "TraceJob",
            "null-pruned",
            &json!({"podSelector": null, "nodeNames": [node]}),
        );
        std::fs::write(f.path(), nulled.to_string()).unwrap();
        let (ok, out, err) =
            self.admin(&["create", "-o", "json", "-f", f.path().to_str().unwrap()]);
        assert!(ok, "{err}");
        let stored: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            stored["spec"]["target"],
            json!({"nodeNames": [node]}),
            "the API server kept the null"
        );
    }

    /// ProbeSessions are the operator's alone: not even an admin writes one by hand.
    async fn no_one_writes_a_probe_session_by_hand(&self) {
        let forged = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            forged.path(),
            format!(
                "apiVersion: sonde.dev/v1alpha1\nkind: ProbeSession\nmetadata: {{name: forged, namespace: sonde-user, \
                 labels: {{sonde.dev/tenancy-e2e: \"true\"}}}}\nspec:\n  nodeName: {}\n  probe: exec\n  \
                 allPods: true\n  resultPrefix: tracejobs/sonde-user/forged-00000000/x\n",
                this_node_name()
            ),
        )
        .unwrap();
        let (refused, refusal) = self
            .refused_at_admission("probesession", "forged", || {
                let (ok, _, err) = self.admin(&["create", "-f", forged.path().to_str().unwrap()]);
                (ok, err)
            })
            .await;
        assert!(refused, "an admin wrote a ProbeSession by hand");
        assert!(
            refusal.contains("written only by the Sonde operator")
                && refusal.contains("create a TraceJob"),
            "{refusal}"
        );
    }

    /// Once the admin binds the chart's node-wide ClusterRole in the namespace, its user creates node-wide
    /// TraceJobs and ProbePolicies.
    async fn the_granted_user_creates_node_wide_objects(&self) {
        let (ok, _, err) = self.admin(&[
            "create",
            "rolebinding",
            "node-wide",
            "-n",
            "sonde-user",
            &format!("--clusterrole={ADMISSION_RELEASE}-node-wide-tracer"),
            "--user=sonde-user",
        ]);
        assert!(ok, "{err}");
        self.admin(&[
            "label",
            "-n",
            "sonde-user",
            "rolebinding",
            "node-wide",
            "sonde.dev/tenancy-e2e=true",
        ]);
        for kind in ["TraceJob", "ProbePolicy"] {
            assert!(
                self.creates_node_wide(kind, "node-wide-granted").await,
                "the granted user still cannot create a node-wide {kind}"
            );
        }
    }

    /// With the grant and the policy's binding removed, the user's node-wide requests pass: the refusals came
    /// from the policy.
    async fn without_the_policy_binding_the_same_requests_pass(&self) {
        self.admin(&["delete", "-n", "sonde-user", "rolebinding", "node-wide"]);
        self.admin(&[
            "delete",
            "validatingadmissionpolicybinding",
            &format!("{ADMISSION_RELEASE}-node-wide-targets.sonde.dev"),
        ]);
        for kind in ["TraceJob", "ProbePolicy"] {
            assert!(
                self.creates_node_wide(kind, "node-wide-unchecked").await,
                "{kind} refused without the policy binding: the refusal was not the policy's"
            );
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // Lossy, not unwrap: a panic while a failed test unwinds would abort the whole test binary.
        let path = self.rendered.path().to_string_lossy();
        let _ = self.admin(&["delete", "--ignore-not-found", "-f", &path]);
        let _ = self.admin(&[
            "delete",
            "--ignore-not-found",
            "-n",
            "sonde-user",
            "tracejob,probepolicy,probesession,rolebinding",
            "-l",
            "sonde.dev/tenancy-e2e",
        ]);
    }
}

/// A TraceJob or ProbePolicy of `sonde-user`'s namespace with `target`, labelled for [`Admission`]'s cleanup.
fn tenancy_object(kind: &str, name: &str, target: &Value) -> Value {
    let mut spec = json!({"probe": "exec", "target": target});
    match kind {
        "TraceJob" => spec["duration"] = json!("10s"),
        _ => {
            spec["window"] = json!("60s");
            spec["thresholds"] = json!([{"metric": "eventsPerSecond", "value": 1000}]);
        }
    }
    json!({"apiVersion": "sonde.dev/v1alpha1", "kind": kind,
           "metadata": {"name": name, "namespace": "sonde-user", "labels": {"sonde.dev/tenancy-e2e": "true"}},
           "spec": spec})
}

/// Whether kubectl's error is a refusal of a target without a selector: the admission policy's, or the schema's
/// rule that a ProbePolicy names podSelector or nodeNames.
fn refused_for_no_selector(err: &str) -> bool {
    err.contains("without spec.target.podSelector")
        || err.contains("a ProbePolicy target needs podSelector")
}

/// Users name storage only by the admin's location names: the API server refuses a URL (saying what to do
/// instead), the operator fails a job naming an unknown location at once (listing the defined ones), and a
/// defined location passes.
#[tokio::test(flavor = "multi_thread")]
async fn storage_is_only_a_location_the_admin_defined() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::get().await;
    let client = plane.client(Identity::Admin).await;
    let ns = TestNamespace::create(plane, "storage").await;
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "SONDE_STORAGE_LOCATIONS".to_string(),
        "archive=s3://bucket/sonde".to_string(),
    )];
    let kc = plane.kubeconfig(Identity::Admin);
    let mut operator = Component::operator_with_env(&kc, &ns.name, dir.path(), &env);
    let job = |name: &str, storage: &str| {
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: {name}, namespace: {}}}\nspec:\n  \
             probe: exec\n  target: {{podSelector: {{matchLabels: {{app: mine}}}}}}\n  duration: 60s\n  \
             storage: {storage}\n",
            ns.name
        )
    };
    let create = |yaml: String| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        plane.kubectl(
            Identity::Admin,
            &["create", "-f", f.path().to_str().unwrap()],
        )
    };
    let (ok, _, err) = create(job("to-a-url", "{url: 'file:///etc'}"));
    assert!(!ok, "a storage URL was accepted");
    assert!(
        err.contains("spec.storage.url is no longer accepted"),
        "{err}"
    );
    for (name, storage) in [
        ("unknown", "{location: nope}"),
        ("known", "{location: archive}"),
    ] {
        let (ok, _, err) = create(job(name, storage));
        assert!(ok, "{name}: {err}");
    }
    let jobs: Api<TraceJob> = Api::namespaced(client.clone(), &ns.name);
    let reason = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            let st = jobs.get(name).await.unwrap().status.unwrap_or_default();
            let c = st
                .conditions
                .iter()
                .find(|c| c.type_ == "Scheduled")
                .cloned();
            (st.phase, c.map(|c| (c.reason, c.message)))
        }
    };
    let refused = wait_for(Duration::from_secs(30), || async {
        reason("unknown").await.0 == Phase::Failed
    })
    .await;
    let (phase, scheduled) = reason("unknown").await;
    assert!(refused, "{phase:?} {scheduled:?}: {}", operator.log_text());
    let (why, msg) = scheduled.unwrap();
    assert_eq!(why, "StorageNotAllowed");
    assert!(msg.contains("\"nope\"") && msg.contains("archive"), "{msg}");
    // The known location is placed like any job: here no pod matches yet.
    let waiting = wait_for(Duration::from_secs(30), || async {
        reason("known")
            .await
            .1
            .is_some_and(|(r, _)| r == "NoMatchingPods")
    })
    .await;
    assert!(waiting, "{:?}", reason("known").await);
    operator.kill();
}

/// The agents check node-wide targets again: a session tracing the whole node (as a forged or stale one would)
/// runs only for a namespace the admin listed; elsewhere the agent fails it with reason NodeWideNotAllowed
/// before loading anything.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_runs_node_wide_sessions_only_for_allowed_namespaces() {
    sonde_tests::requires!(Root, ControlPlane);
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::get().await;
    let client = plane.client(Identity::Admin).await;
    let (allowed, refused, env) = allowed_and_refused(plane, &client, "agent-wide").await;
    let dir = tempfile::tempdir().unwrap();
    let kc = plane.kubeconfig(Identity::Admin);
    let _agent = Component::agent_with_env(&kc, dir.path(), &env);
    let node = this_node_name();
    let deadline =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(20);
    for ns in [&allowed.name, &refused.name] {
        let session: ProbeSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
            "metadata": {"name": "whole-node", "labels": {
                sonde_crds::NODE_LABEL: sonde_crds::node_label_value(&node)}},
            "spec": {"nodeName": node, "probe": "exec", "allPods": true, "deadline": deadline.to_string(),
                     "resultPrefix": format!("tracejobs/{ns}/whole-node-00000000/{node}")},
        }))
        .unwrap();
        let api: Api<ProbeSession> = Api::namespaced(client.clone(), ns);
        api.create(&PostParams::default(), &session).await.unwrap();
    }
    let phase = |ns: &str| {
        let api: Api<ProbeSession> = Api::namespaced(client.clone(), ns);
        async move {
            api.get("whole-node")
                .await
                .unwrap()
                .status
                .unwrap_or_default()
        }
    };
    let ran = wait_for(Duration::from_secs(30), || async {
        phase(&allowed.name).await.phase == Phase::Running
            && phase(&refused.name).await.phase == Phase::Failed
    })
    .await;
    let (ok, no) = (phase(&allowed.name).await, phase(&refused.name).await);
    assert!(ran, "allowed: {ok:?}\nrefused: {no:?}");
    let c = no.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(c.reason, "NodeWideNotAllowed", "{c:?}");
    assert!(c.message.contains(&refused.name), "{}", c.message);
    assert!(
        no.attach_strategy.is_none(),
        "the refused session attached: {no:?}"
    );
}

/// `sonde results` sends the results server only a token minted for the audience `sonde-results`: never the
/// kubeconfig's own (whoever answers at `--server` could act as the user on the cluster with it). A service
/// account that may not mint its own token gets an error naming the permission, and the server hears nothing;
/// once it may, the server receives a token whose audience is `sonde-results` alone.
#[tokio::test(flavor = "multi_thread")]
async fn sonde_results_sends_only_a_token_minted_for_the_results_server() {
    sonde_tests::requires!(Root, ControlPlane);
    use base64::Engine;
    use std::io::{BufRead, BufReader, Write};
    let _serial = SERIAL.lock().await;
    let plane = ControlPlane::get().await;
    let ns = TestNamespace::create(plane, "cli-token").await;
    let admin = |args: &[&str]| plane.kubectl(Identity::Admin, args);
    let (ok, _, err) = admin(&["create", "serviceaccount", "cli-user", "-n", &ns.name]);
    assert!(ok, "{err}");
    let (ok, api_token, err) = admin(&["create", "token", "cli-user", "-n", &ns.name]);
    assert!(ok, "{err}");
    let api_token = api_token.trim().to_string();
    // The user's kubeconfig: the test cluster, this service account's API token.
    let mut kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(plane.kubeconfig(Identity::Admin)).unwrap())
            .unwrap();
    for user in kc["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml::from_str(&format!("{{token: {api_token}}}")).unwrap();
    }
    let kc_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kc_file.path(), serde_yaml::to_string(&kc).unwrap()).unwrap();
    // A stand-in results server that records each request's Authorization header and lists no jobs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = heard.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut auth = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = line[line.len() - v.len()..].trim().to_string();
                }
                line.clear();
            }
            log.lock().unwrap().push(auth);
            let mut conn = conn;
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
            );
        }
    });
    let list = || {
        let out = std::process::Command::new(sonde_tests::binary("sonde"))
            .args([
                "results",
                "list",
                "--server",
                &format!("http://127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", kc_file.path())
            .env_remove("SONDE_TOKEN")
            .output()
            .expect("sonde runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = list();
    assert!(
        !ok && err.contains("create serviceaccounts/token") && err.contains("--token"),
        "without the right to mint a token: {err}"
    );
    assert!(
        heard.lock().unwrap().is_empty(),
        "the results server was sent {:?}",
        heard.lock().unwrap()
    );
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: own-token, namespace: {ns}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [serviceaccounts/token], resourceNames: [cli-user], verbs: [create]}}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: own-token, namespace: {ns}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: own-token}}\n\
         subjects: [{{kind: ServiceAccount, name: cli-user, namespace: {ns}}}]\n",
        ns = ns.name
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), rbac).unwrap();
    let (ok, _, err) = admin(&["apply", "-f", f.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let minted = wait_for(Duration::from_secs(15), || async { list().0 }).await;
    assert!(minted, "with the right to mint a token: {}", list().1);
    let sent = heard.lock().unwrap().clone();
    assert!(
        !sent.is_empty() && sent.iter().all(|a| a.starts_with("Bearer ")),
        "{sent:?}"
    );
    for auth in &sent {
        let token = auth.trim_start_matches("Bearer ");
        assert_ne!(token, api_token, "the kubeconfig's own token was sent");
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], json!(["sonde-results"]), "{claims}");
    }
}
