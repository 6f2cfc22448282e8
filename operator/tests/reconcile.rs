//! The reconcilers against a mocked API server (a tower-test service behind a real `kube::Client`, as kube-rs's
//! controller-rs tests do): each test gives the objects the API server holds, runs one reconcile, and checks the
//! requests it made. Seconds, no control plane; the e2e tests cover the same paths against a real one.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use sonde_crds::{NodeWide, ProbeSession};
use sonde_operator::metrics::Metrics;
use sonde_operator::{Context, policy, tracejob};

const NS: &str = "team-a";
const JOBS: &str = "/apis/sonde.dev/v1alpha1/namespaces/team-a/tracejobs";
const SESSIONS: &str = "/apis/sonde.dev/v1alpha1/namespaces/team-a/probesessions";

/// One request the reconcile made.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Seen {
    fn is(&self, method: &Method, path: &str) -> bool {
        self.method == *method && self.path == path
    }
}

/// What the mocked API server holds: the owner (a TraceJob or ProbePolicy) and its sessions (applies of sessions
/// are kept, so the reconcile lists what it applied, as from a real API server).
#[derive(Clone)]
struct World {
    job: Value,
    sessions: Vec<ProbeSession>,
}

impl World {
    /// The API server's answer: lists from the world, applies echoed back (sessions kept), events accepted,
    /// anything else 404.
    fn answer(&mut self, r: &Seen) -> (u16, Value) {
        let plural = match self.job["kind"].as_str() {
            Some("TraceJob") => "tracejobs",
            _ => "probepolicies",
        };
        let name = self.job["metadata"]["name"].as_str().unwrap();
        let job_path = format!("/apis/sonde.dev/v1alpha1/namespaces/{NS}/{plural}/{name}");
        let list = |kind: &str, items: Value| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items});
        let session_path =
            |s: &ProbeSession| format!("{SESSIONS}/{}", s.metadata.name.as_deref().unwrap());
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", SESSIONS) => {
                let selected: Vec<&ProbeSession> = self
                    .sessions
                    .iter()
                    .filter(|s| selects(&r.query, s))
                    .collect();
                (
                    200,
                    list("ProbeSessionList", serde_json::to_value(selected).unwrap()),
                )
            }
            ("GET", "/api/v1/nodes") => (200, list("NodeList", json!([]))),
            ("GET", p) if p.starts_with(SESSIONS) => {
                match self.sessions.iter().find(|s| session_path(s) == p) {
                    Some(s) => (200, serde_json::to_value(s).unwrap()),
                    None => (404, not_found()),
                }
            }
            ("PATCH", p) if p.starts_with(SESSIONS) => {
                let applied: ProbeSession = serde_json::from_value(r.body.clone()).unwrap();
                self.sessions.retain(|s| session_path(s) != p);
                self.sessions.push(applied);
                (200, r.body.clone())
            }
            ("DELETE", SESSIONS) => {
                self.sessions.retain(|s| !selects(&r.query, s));
                (200, list("ProbeSessionList", json!([])))
            }
            ("PATCH", p) if p == job_path || p == format!("{job_path}/status") => {
                let mut job = self.job.clone();
                if let Some(st) = r.body.get("status") {
                    job["status"] = st.clone();
                }
                (200, job)
            }
            ("DELETE", p) if p.starts_with(SESSIONS) => {
                match self.sessions.iter().position(|s| session_path(s) == p) {
                    Some(i) => (200, serde_json::to_value(self.sessions.remove(i)).unwrap()),
                    None => (404, not_found()),
                }
            }
            ("DELETE", p) if p == job_path => (200, self.job.clone()),
            ("POST", p) if p.ends_with("/events") => (201, r.body.clone()),
            _ => (404, not_found()),
        }
    }
}

/// Whether a list's `labelSelector` (`key=value`, comma-separated, as the operator writes them) selects `s`.
fn selects(query: &str, s: &ProbeSession) -> bool {
    let selector: String = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let labels = s.metadata.labels.clone().unwrap_or_default();
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels.get(k).map(String::as_str) == Some(v),
            None => false,
        })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "not found", "reason": "NotFound", "code": 404})
}

/// Runs one TraceJob reconcile against `world` with `pods` in the operator's pod store; returns its result and
/// every request it made, in order.
async fn reconcile(world: World, pods: Vec<Pod>) -> (sonde_operator::Result<Action>, Vec<Seen>) {
    run(world, pods, tracejob::reconcile).await
}

/// Runs one reconcile of the world's owner by `reconcile`.
async fn run<K, F>(
    mut world: World,
    pods: Vec<Pod>,
    reconcile: fn(Arc<K>, Arc<Context>) -> F,
) -> (sonde_operator::Result<Action>, Vec<Seen>)
where
    K: serde::de::DeserializeOwned,
    F: std::future::Future<Output = sonde_operator::Result<Action>>,
{
    let job: Arc<K> = Arc::new(serde_json::from_value(world.job.clone()).unwrap());
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let server = tokio::spawn(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let r = Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, answer) = world.answer(&r);
            log.lock().unwrap().push(r);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            respond.send_response(resp);
        }
    });
    let (store, mut writer) = reflector::store::<Pod>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::InitApply(p));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let ctx = Context::new(
        client,
        Arc::new(Metrics::register(&mut Registry::default())),
        None,
        NodeWide::parse(""),
        None,
        store,
        sonde_operator::liveness::AgentLeases::none(),
    );
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(job, ctx))
        .await
        .expect("the reconcile hung");
    // The context (and every client) is gone: the server's loop ends.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the mocked API server did not stop")
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

/// A TraceJob `ping` of namespace team-a with its finalizer already on (the reconcile that adds it does nothing
/// else), wakeups on pods app=ping; `extra` is merged into it (status, spec fields, metadata).
fn job(extra: Value) -> Value {
    let mut j = json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "TraceJob",
        "metadata": {"name": "ping", "namespace": NS, "uid": "0a1b2c3d-0000-4000-8000-000000000001",
                     "generation": 1, "finalizers": ["sonde.dev/sessions"]},
        "spec": {"probe": "wakeups", "target": {"podSelector": {"matchLabels": {"app": "ping"}}},
                 "duration": "60s"}
    });
    merge(&mut j, extra);
    j
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn pod(ns: &str, name: &str, app: &str, node: &str, phase: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": phase}
    }))
    .unwrap()
}

fn applied_sessions(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|r| r.method == Method::PATCH && r.path.starts_with(SESSIONS))
        .collect()
}

fn status_patch(seen: &[Seen]) -> &Value {
    let path = format!("{JOBS}/ping/status");
    &seen
        .iter()
        .rfind(|r| r.is(&Method::PATCH, &path))
        .unwrap_or_else(|| panic!("no status written: {seen:#?}"))
        .body["status"]
}

fn event_reasons(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/events"))
        .map(|r| r.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_new_job_applies_one_session_per_node_of_its_running_pods() {
    let pods = vec![
        pod(NS, "ping-1", "ping", "node-a", "Running"),
        pod(NS, "ping-2", "ping", "node-b", "Running"),
        pod(NS, "ping-3", "ping", "node-a", "Pending"),
        pod(NS, "pong-1", "pong", "node-c", "Running"),
        pod("team-b", "ping-1", "ping", "node-d", "Running"),
        pod(NS, "ping-old", "ping", "node-e", "Succeeded"),
    ];
    let before = Timestamp::now();
    let world = World {
        job: job(json!({})),
        sessions: vec![],
    };
    let (result, seen) = reconcile(world, pods).await;
    let after = Timestamp::now();
    let action = result.unwrap();
    assert_ne!(
        action,
        Action::await_change(),
        "a running job wakes for its deadline"
    );

    let applied = applied_sessions(&seen);
    let nodes: Vec<&str> = applied
        .iter()
        .map(|r| r.body["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{seen:#?}");
    for r in &applied {
        assert!(
            r.query.contains("fieldManager=sonde-operator") && r.query.contains("force=true"),
            "server-side apply as the operator: {}",
            r.query
        );
        assert_eq!(
            r.body["metadata"]["ownerReferences"][0]["uid"],
            "0a1b2c3d-0000-4000-8000-000000000001"
        );
        assert_eq!(
            r.body["metadata"]["labels"]["sonde.dev/owner-uid"],
            "0a1b2c3d-0000-4000-8000-000000000001"
        );
    }
    let a_pods: Vec<&str> = applied[0].body["spec"]["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        a_pods,
        ["ping-1", "ping-3"],
        "pods of team-a only, not finished ones"
    );
    // The deadline is the start plus the duration, the same on every node.
    let deadline: Timestamp = applied[0].body["spec"]["deadline"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        applied[1].body["spec"]["deadline"],
        applied[0].body["spec"]["deadline"]
    );
    let d = SignedDuration::from_secs(60);
    assert!(
        // Time is written to the second.
        deadline >= before + d - SignedDuration::from_secs(1) && deadline <= after + d,
        "deadline {deadline} for a 60 s job started between {before} and {after}"
    );
    let status = status_patch(&seen);
    assert_eq!(status["nodes"]["targeted"], 2, "{status:#}");
    let scheduled = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Scheduled")
        .unwrap();
    assert_eq!(scheduled["status"], "True", "{status:#}");
    assert_eq!(event_reasons(&seen), ["Scheduled"]);
}

/// A True condition, as an earlier reconcile set it.
fn condition(type_: &str, reason: &str) -> Value {
    json!({"type": type_, "status": "True", "reason": reason, "message": "",
           "lastTransitionTime": "2026-12-01T00:00:00Z"})
}

/// A session of the job on `node`, as the operator applied it and the agent reported on it.
fn session(node: &str, deadline: Timestamp, status: Value) -> ProbeSession {
    serde_json::from_value(json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession",
        "metadata": {"name": format!("ping-{node}"), "namespace": NS,
                     "labels": {"sonde.dev/owner-uid": "0a1b2c3d-0000-4000-8000-000000000001",
                                "sonde.dev/node": node}},
        "spec": {"nodeName": node, "probe": "wakeups", "deadline": deadline.to_string(),
                 "resultPrefix": format!("tracejobs/team-a/ping-0a1b2c3d/{node}")},
        "status": status
    }))
    .unwrap()
}

fn other_owners_session(node: &str, deadline: Timestamp) -> ProbeSession {
    let mut s = session(node, deadline, json!({"phase": "Running"}));
    s.metadata.name = Some(format!("pong-{node}"));
    let labels = s.metadata.labels.get_or_insert_default();
    labels.insert(
        "sonde.dev/owner-uid".into(),
        "ffffffff-0000-4000-8000-000000000002".into(),
    );
    s
}

#[tokio::test]
async fn the_deadline_is_fixed_once_by_the_sessions_already_placed() {
    // The job started 10 s ago with 60 s; its duration was since edited to 600 s, and a pod came up on a
    // second node. The new node's session ends when the first one does.
    let now = Timestamp::now();
    let first_deadline = (now + SignedDuration::from_secs(50))
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap();
    let world = World {
        job: job(json!({
            "spec": {"duration": "600s"},
            "status": {"phase": "Running", "startTime": (now - SignedDuration::from_secs(10)).to_string()}
        })),
        sessions: vec![
            session("node-a", first_deadline, json!({"phase": "Running"})),
            // Another job's session in the namespace, with an earlier deadline: not this job's.
            other_owners_session("node-c", now + SignedDuration::from_secs(5)),
        ],
    };
    let pods = vec![
        pod(NS, "ping-1", "ping", "node-a", "Running"),
        pod(NS, "ping-2", "ping", "node-b", "Running"),
    ];
    let (result, seen) = reconcile(world, pods).await;
    result.unwrap();
    let applied = applied_sessions(&seen);
    assert_eq!(applied.len(), 2, "{seen:#?}");
    for r in applied {
        let deadline: Timestamp = r.body["spec"]["deadline"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(deadline, first_deadline, "{}", r.path);
    }
    // The node-a session existed: only the new name was looked up (a name another owner may hold).
    let lookups: Vec<&str> = seen
        .iter()
        .filter(|r| r.method == Method::GET && r.path.starts_with(&format!("{SESSIONS}/")))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(lookups, [format!("{SESSIONS}/ping-node-b")]);
}

#[tokio::test]
async fn a_job_whose_sessions_all_finished_succeeds_once_and_says_so() {
    let now = Timestamp::now();
    let past = now - SignedDuration::from_secs(5);
    let done = |n: u64| {
        json!({"phase": "Succeeded", "attachStrategy": "tp_btf",
               "counts": {"captured": n, "dropped": 0, "breaches": 0}})
    };
    let world = World {
        job: job(json!({
            "status": {"phase": "Running", "startTime": (now - SignedDuration::from_secs(65)).to_string(),
                       "conditions": [condition("Scheduled", "SessionsCreated"), condition("Attached", "Attached")]}
        })),
        sessions: vec![
            session("node-a", past, done(7)),
            session("node-b", past, done(5)),
        ],
    };
    let (result, seen) =
        reconcile(world, vec![pod(NS, "ping-1", "ping", "node-c", "Running")]).await;
    let action = result.unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "nothing more to do without a TTL"
    );
    assert!(
        applied_sessions(&seen).is_empty(),
        "past the deadline nothing is placed: {seen:#?}"
    );
    let status = status_patch(&seen);
    assert_eq!(status["phase"], "Succeeded", "{status:#}");
    assert_eq!(status["counts"]["captured"], 12, "{status:#}");
    assert_eq!(status["progress"], "2/2");
    assert!(status["completionTime"].is_string(), "{status:#}");
    assert_eq!(event_reasons(&seen), ["Completed"]);
}

#[tokio::test]
async fn a_finished_job_is_deleted_once_its_ttl_has_passed() {
    let now = Timestamp::now();
    let finished = |ttl: i64| {
        job(json!({
            "spec": {"ttlSecondsAfterFinished": ttl},
            "status": {"phase": "Succeeded",
                       "startTime": (now - SignedDuration::from_secs(90)).to_string(),
                       "completionTime": (now - SignedDuration::from_secs(20)).to_string()}
        }))
    };
    let deletes = |seen: &[Seen]| {
        seen.iter()
            .filter(|r| r.is(&Method::DELETE, &format!("{JOBS}/ping")))
            .count()
    };

    let (result, seen) = reconcile(
        World {
            job: finished(10),
            sessions: vec![],
        },
        vec![],
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(deletes(&seen), 1, "{seen:#?}");

    let (result, seen) = reconcile(
        World {
            job: finished(3600),
            sessions: vec![],
        },
        vec![],
    )
    .await;
    assert_eq!(deletes(&seen), 0, "{seen:#?}");
    // It wakes when the TTL ends, 3580 s from now (Action keeps its duration private; Debug shows it).
    let wake = format!("{:?}", result.unwrap());
    assert!(
        wake.contains("requeue_after: Some(357"),
        "wakes for the TTL: {wake}"
    );
    assert!(
        seen.iter()
            .all(|r| r.method == Method::GET || r.method == Method::POST),
        "a finished job is left as it is: {seen:#?}"
    );
}

#[tokio::test]
async fn deleting_a_job_deletes_its_sessions_before_its_finalizer() {
    let now = Timestamp::now();
    let world = World {
        job: job(json!({"metadata": {"deletionTimestamp": now.to_string()},
                        "status": {"phase": "Running", "startTime": now.to_string()}})),
        sessions: vec![session(
            "node-a",
            now + SignedDuration::from_secs(30),
            json!({"phase": "Running"}),
        )],
    };
    let (result, seen) = reconcile(world, vec![]).await;
    assert_eq!(result.unwrap(), Action::await_change());
    let calls: Vec<(String, &str)> = seen
        .iter()
        .map(|r| (r.method.to_string(), r.path.as_str()))
        .collect();
    let job_path = format!("{JOBS}/ping");
    assert_eq!(
        calls,
        [
            ("DELETE".to_string(), SESSIONS),
            ("PATCH".to_string(), job_path.as_str())
        ],
        "{seen:#?}"
    );
    let selector: String = url::form_urlencoded::parse(seen[0].query.as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    assert_eq!(
        selector,
        "sonde.dev/owner-uid=0a1b2c3d-0000-4000-8000-000000000001"
    );
    assert!(
        seen[1].body.to_string().contains("sonde.dev/sessions"),
        "the finalizer is removed: {}",
        seen[1].body
    );
}

/// A ProbePolicy `ping` of namespace team-a (finalizer on), runq-latency on pods app=ping in 60 s windows.
fn policy(extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbePolicy",
        "metadata": {"name": "ping", "namespace": NS, "uid": "0a1b2c3d-0000-4000-8000-000000000001",
                     "generation": 1, "finalizers": ["sonde.dev/policy-sessions"]},
        "spec": {"probe": "runq-latency", "target": {"podSelector": {"matchLabels": {"app": "ping"}}},
                 "window": "60s", "thresholds": [{"metric": "runqLatencyUs", "value": 50000}]}
    });
    merge(&mut p, extra);
    p
}

#[tokio::test]
async fn a_policy_follows_its_pods_with_windowed_sessions() {
    // Its pods are now on node-b only: node-b gets a windowed session, node-a's (left from before) goes.
    let world = World {
        job: policy(json!({})),
        sessions: vec![session(
            "node-a",
            Timestamp::now(),
            json!({"phase": "Running"}),
        )],
    };
    let pods = vec![pod(NS, "ping-1", "ping", "node-b", "Running")];
    let (result, seen) = run(world, pods, policy::reconcile).await;
    result.unwrap();
    let applied = applied_sessions(&seen);
    assert_eq!(applied.len(), 1, "{seen:#?}");
    assert_eq!(applied[0].body["spec"]["nodeName"], "node-b");
    assert_eq!(applied[0].body["spec"]["window"], "60s");
    assert!(
        applied[0].body["spec"]["deadline"].is_null(),
        "a standing probe has no deadline"
    );
    assert!(
        seen.iter()
            .any(|r| r.is(&Method::DELETE, &format!("{SESSIONS}/ping-node-a"))),
        "the session of the node without pods is deleted: {seen:#?}"
    );
    let status = &seen
        .iter()
        .rfind(|r| {
            r.is(
                &Method::PATCH,
                "/apis/sonde.dev/v1alpha1/namespaces/team-a/probepolicies/ping/status",
            )
        })
        .expect("policy status written")
        .body["status"];
    assert_eq!(status["nodes"]["targeted"], 1, "{status:#}");
}

#[tokio::test]
async fn a_refused_policy_warns_once_per_reason() {
    // No podSelector: the whole node, which team-a may not trace (the operator allows no namespace here).
    let node_wide = json!({"spec": {"target": {"podSelector": null, "nodeNames": ["node-a"]}}});
    let (result, seen) = run(
        World {
            job: policy(node_wide.clone()),
            sessions: vec![],
        },
        vec![],
        policy::reconcile,
    )
    .await;
    result.unwrap();
    assert!(applied_sessions(&seen).is_empty(), "{seen:#?}");
    assert_eq!(event_reasons(&seen), ["NodeWideNotAllowed"]);

    // The next reconcile finds the refusal already in its status: no second Warning.
    let status = seen
        .iter()
        .rfind(|r| r.path.ends_with("/probepolicies/ping/status"))
        .expect("status written")
        .body["status"]
        .clone();
    let mut again = policy(node_wide);
    again["status"] = status;
    let (result, seen) = run(
        World {
            job: again,
            sessions: vec![],
        },
        vec![],
        policy::reconcile,
    )
    .await;
    result.unwrap();
    assert!(event_reasons(&seen).is_empty(), "{seen:#?}");

    // Suspended as well: status says Suspended, and the refusal is not repeated as a Warning.
    let mut suspended = policy(
        json!({"spec": {"target": {"podSelector": null, "nodeNames": ["node-a"]},
                                              "suspend": true}}),
    );
    suspended["status"] = json!({"conditions": [condition("Attached", "Suspended")]});
    suspended["status"]["conditions"][0]["status"] = json!("False");
    let (result, seen) = run(
        World {
            job: suspended,
            sessions: vec![],
        },
        vec![],
        policy::reconcile,
    )
    .await;
    result.unwrap();
    assert!(event_reasons(&seen).is_empty(), "{seen:#?}");
}

#[tokio::test]
async fn a_failed_policy_session_is_placed_anew_once_the_policy_is_fixed() {
    // The session the policy places on node-a, as it applies it.
    let pods = vec![pod(NS, "ping-1", "ping", "node-a", "Running")];
    let (result, seen) = run(
        World {
            job: policy(json!({})),
            sessions: vec![],
        },
        pods.clone(),
        policy::reconcile,
    )
    .await;
    result.unwrap();
    let mut failed: ProbeSession =
        serde_json::from_value(applied_sessions(&seen)[0].body.clone()).unwrap();
    failed.status = Some(
        serde_json::from_value(json!({"phase": "Failed", "conditions": [{
            "type": "Failed", "status": "True", "reason": "OverBudget", "message": "12% > 10%",
            "lastTransitionTime": Timestamp::now().to_string()}]}))
        .unwrap(),
    );
    let deleted = |seen: &[Seen]| {
        seen.iter()
            .any(|r| r.is(&Method::DELETE, &format!("{SESSIONS}/ping-node-a")))
    };
    // Failed just now, the policy unchanged: it stays failed for a while (the agent does not restart it).
    let (result, seen) = run(
        World {
            job: policy(json!({})),
            sessions: vec![failed.clone()],
        },
        pods.clone(),
        policy::reconcile,
    )
    .await;
    result.unwrap();
    assert!(!deleted(&seen), "{seen:#?}");
    // The policy now allows more overhead: the failed session is deleted, to be placed anew with a uid of its own
    // (not applied again in place, which the agent would ignore).
    let (result, seen) = run(
        World {
            job: policy(json!({"spec": {"budget": {"maxKernelCpuPercent": 20.0}}})),
            sessions: vec![failed],
        },
        pods,
        policy::reconcile,
    )
    .await;
    result.unwrap();
    assert!(deleted(&seen), "{seen:#?}");
    assert!(applied_sessions(&seen).is_empty(), "{seen:#?}");
}

/// Arbitrary specs and statuses within the schema (and past it where an object stored before a bound may be):
/// every reconcile of a TraceJob and of a ProbePolicy returns, and none panics. A panic in a reconcile once
/// ended the process for every tenant (`ttlSecondsAfterFinished: 300000000000`; a heartbeat dated 9999-12-31).
mod no_reconcile_panics {
    use proptest::prelude::*;
    use sonde_operator::Error;

    use super::*;

    /// 0001-01-01T00:00:00Z, the first RFC 3339 instant a status can hold, and the last one the operator can read
    /// (jiff's `Timestamp::MAX`, 9999-12-30T22:00:00Z: a later one fails to parse, and the object with it).
    const FIRST: i64 = -62_135_596_800;
    const LAST: i64 = 253_402_207_200;

    fn instant() -> impl Strategy<Value = Value> {
        let now = Timestamp::now().as_second();
        prop_oneof![
            Just(FIRST),
            Just(LAST),
            FIRST..=LAST,
            (now - 100_000)..(now + 100_000),
        ]
        .prop_map(|s| json!(Timestamp::from_second(s).unwrap().to_string()))
    }

    fn maybe_instant() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), instant()]
    }

    fn count() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(u64::MAX), 0..1_000u64, any::<u64>()]
    }

    fn phase() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["Pending", "Running", "Succeeded", "Failed"])
    }

    fn counts() -> impl Strategy<Value = Value> {
        (count(), count(), count(), count(), count()).prop_map(|(c, d, u, b, k)| {
            json!({"captured": c, "dropped": d, "droppedUnreadAtStop": u, "breaches": b,
                   "notKept": {"SpoolFull": k}})
        })
    }

    fn upload() -> impl Strategy<Value = Value> {
        (
            prop::sample::select(vec!["Complete", "Pending", "Incomplete"]),
            prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            maybe_instant(),
        )
            .prop_map(|(state, pending, oldest)| {
                json!({"state": state, "pending": pending, "oldestPending": oldest})
            })
    }

    /// A session's status as an agent (or anyone who may write it) could leave it.
    fn session_status() -> impl Strategy<Value = Value> {
        (
            phase(),
            (maybe_instant(), maybe_instant(), maybe_instant(), instant()),
            counts(),
            (count(), prop_oneof![Just(f64::MAX), 0.0..1e300f64]),
            upload(),
            count(),
        )
            .prop_map(
                |(
                    phase,
                    (beat, attached, breach, failed_at),
                    counts,
                    (rows, rate),
                    upload,
                    windows,
                )| {
                    json!({"phase": phase, "heartbeat": beat, "attachedAt": attached,
                           "lastBreachTime": breach, "counts": counts, "upload": upload,
                           "windows": windows, "kernelCpuPercent": rate,
                           "conditions": [{"type": "Failed", "status": "True", "reason": "Broken",
                                           "message": "", "lastTransitionTime": failed_at}],
                           "summary": {"keyMeaning": "k", "rows": [
                               {"key": "a", "count": rows, "perSecond": rate, "max": rate},
                               {"key": "a", "count": rows, "perSecond": rate, "max": rate}],
                               "figures": [{"name": "p99", "value": rate, "unit": "ms"}]}})
                },
            )
    }

    /// Up to three nodes' sessions, each with a deadline anywhere in time (absent for a policy's).
    fn sessions(policy: bool) -> impl Strategy<Value = Vec<ProbeSession>> {
        prop::collection::vec((instant(), session_status()), 0..=3).prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (deadline, status))| {
                    let mut s = session(&format!("node-{i}"), Timestamp::UNIX_EPOCH, status);
                    s.spec.deadline = if policy {
                        None
                    } else {
                        serde_json::from_value(deadline).unwrap()
                    };
                    if policy {
                        s.spec.window = Some("60s".into());
                    }
                    s
                })
                .collect()
        })
    }

    /// A TTL within the schema, at its bounds, and past it (an object stored before the bound existed).
    fn ttl() -> impl Strategy<Value = Value> {
        let max = sonde_crds::TTL_MAX_SECONDS;
        prop_oneof![
            Just(Value::Null),
            Just(json!(0)),
            Just(json!(max)),
            (0..=max).prop_map(|t| json!(t)),
            Just(json!(300_000_000_000i64)),
            Just(json!(i64::MAX)),
        ]
    }

    fn job_status() -> impl Strategy<Value = Value> {
        (
            phase(),
            maybe_instant(),
            maybe_instant(),
            counts(),
            upload(),
        )
            .prop_map(|(phase, start, done, counts, upload)| {
                json!({"phase": phase, "startTime": start, "completionTime": done, "counts": counts,
                       "upload": upload, "lastBreachTime": start})
            })
    }

    fn duration() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["1s", "60s", "24h", "1.5s", "86399s999ms"])
    }

    /// Runs `cases` reconciles on a runtime of their own, each checked to return without a panic.
    fn check<K, F>(reconcile: fn(Arc<K>, Arc<Context>) -> F, world: World, pods: Vec<Pod>)
    where
        K: serde::de::DeserializeOwned,
        F: std::future::Future<Output = sonde_operator::Result<Action>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let job = world.job.clone();
        let (result, _) = rt.block_on(run(world, pods, reconcile));
        if let Err(e @ Error::Panicked { .. }) = result {
            panic!("{e}\nfor {job:#}");
        }
    }

    fn running_pods() -> Vec<Pod> {
        vec![pod(NS, "ping-0", "ping", "node-0", "Running")]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_trace_job(ttl in ttl(), duration in duration(), status in prop_oneof![Just(Value::Null), job_status()],
                       sessions in sessions(false), threshold in prop_oneof![Just(0.0), Just(1e15), 0.0..1e15f64]) {
            let j = job(json!({"spec": {"ttlSecondsAfterFinished": ttl, "duration": duration,
                                        "thresholds": [{"metric": "eventsPerSecond", "value": threshold}]},
                               "status": status}));
            check(tracejob::reconcile, World { job: j, sessions }, running_pods());
        }

        #[test]
        fn a_probe_policy(status in prop_oneof![Just(Value::Null), job_status()], sessions in sessions(true),
                          suspend in any::<bool>(), window in prop::sample::select(vec!["10s", "60s", "1h"])) {
            let p = policy(json!({"spec": {"suspend": suspend, "window": window}, "status": status}));
            check(policy::reconcile, World { job: p, sessions }, running_pods());
        }
    }
}
