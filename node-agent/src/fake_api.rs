//! A fake Kubernetes API server on loopback, for the tests of the agent's watch loop (`agent.rs`): a real
//! `kube::Client` talks HTTP/1.1 to it, so the agent's own watchers run as against a cluster (a list, then a
//! watch from the list's resourceVersion; a 410 makes them list again). It holds ProbeSessions, whose changes
//! it logs as watch events with increasing resourceVersions and filters by `labelSelector` as the API server
//! does; it lists no Pods and the one Node, holds their watches open without events, and answers anything else
//! 404. A socket rather than a tower-test service (the operator's tier): the agent's watch responses stream,
//! which needs no dependency over a socket.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::results::store::tests::read_request;

const SESSIONS: &str = "/apis/sonde.dev/v1alpha1/probesessions";

/// The fake API server, serving until dropped.
pub(crate) struct FakeApi {
    world: Arc<Mutex<World>>,
    /// The newest resourceVersion: session watches wait on it for events.
    changed: watch::Sender<u64>,
    port: u16,
    server: tokio::task::JoinHandle<()>,
}

struct World {
    /// The one Node listed.
    node: String,
    rv: u64,
    /// Sessions by namespace and name.
    sessions: BTreeMap<(String, String), Value>,
    /// Every change as a watch event, with its resourceVersion, in order.
    log: Vec<(u64, Value)>,
    /// Each request's method and target (path and query), in order.
    requests: Vec<String>,
}

impl World {
    /// The next resourceVersion, logged with `event` (type, and the object as it is now).
    fn log(&mut self, type_: &str, mut object: Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log
            .push((self.rv, json!({"type": type_, "object": object})));
    }
}

impl FakeApi {
    /// Serves on a free port of loopback, listing `node` as the one Node.
    pub(crate) async fn start(node: &str) -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let world = Arc::new(Mutex::new(World {
            node: node.to_string(),
            rv: 1,
            sessions: BTreeMap::new(),
            log: Vec::new(),
            requests: Vec::new(),
        }));
        let (changed, _) = watch::channel(1);
        let (w, c) = (world.clone(), changed.clone());
        let server = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(tcp, w.clone(), c.subscribe()));
            }
        });
        FakeApi {
            world,
            changed,
            port,
            server,
        }
    }

    /// A client of this server.
    pub(crate) fn client(&self) -> kube::Client {
        let url = format!("http://127.0.0.1:{}", self.port).parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// Creates or replaces a session (`metadata.namespace` and `name` say which): watches see it ADDED or
    /// MODIFIED.
    pub(crate) fn apply(&self, session: Value) {
        self.change(|w| {
            let key = key_of(&session);
            let type_ = match w.sessions.contains_key(&key) {
                true => "MODIFIED",
                false => "ADDED",
            };
            w.log(type_, session.clone());
            let (_, logged) = w.log.last().unwrap();
            w.sessions.insert(key, logged["object"].clone());
        });
    }

    /// Deletes a session: watches see it DELETED.
    pub(crate) fn delete(&self, namespace: &str, name: &str) {
        self.change(|w| {
            let gone = w.sessions.remove(&(namespace.into(), name.into())).unwrap();
            w.log("DELETED", gone);
        });
    }

    /// Deletes a session with no event, as one deleted while the agent's watch was down.
    pub(crate) fn forget(&self, namespace: &str, name: &str) {
        self.change(|w| {
            w.sessions.remove(&(namespace.into(), name.into())).unwrap();
        });
    }

    /// Tells the watches open now that their resourceVersion is too old (410 Gone): they list again.
    pub(crate) fn expire(&self) {
        self.change(|w| {
            let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": "too old resource version", "reason": "Expired", "code": 410});
            w.rv += 1;
            let rv = w.rv;
            w.log.push((rv, json!({"type": "ERROR", "object": gone})));
        });
    }

    /// Each request so far: its method and target (`GET /api/v1/pods?...`).
    pub(crate) fn requests(&self) -> Vec<String> {
        self.world.lock().unwrap().requests.clone()
    }

    fn change(&self, f: impl FnOnce(&mut World)) {
        let rv = {
            let mut w = self.world.lock().unwrap();
            f(&mut w);
            w.rv
        };
        self.changed.send_replace(rv);
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn key_of(session: &Value) -> (String, String) {
    let m = &session["metadata"];
    let s = |v: &Value| v.as_str().unwrap().to_string();
    (s(&m["namespace"]), s(&m["name"]))
}

/// Whether a `labelSelector` (`key=value`, comma-separated, as the agent writes it) selects `object`.
fn selects(selector: &str, object: &Value) -> bool {
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => object["metadata"]["labels"][k].as_str() == Some(v),
            None => false,
        })
}

/// Answers one request on its own connection (every answer closes it).
async fn serve(tcp: TcpStream, world: Arc<Mutex<World>>, changed: watch::Receiver<u64>) {
    let mut conn = BufReader::new(tcp);
    let (head, _) = read_request(&mut conn).await;
    let mut line = head.split(' ');
    let (method, target) = (
        line.next().unwrap_or_default(),
        line.next().unwrap_or_default(),
    );
    let url = url::Url::parse(&format!("http://api{target}")).unwrap();
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let watching = query("watch") == "true";
    let selector = query("labelSelector");
    let list = |kind: &str, rv: u64, items: Vec<Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    let answer = {
        let mut w = world.lock().unwrap();
        w.requests.push(format!("{method} {target}"));
        match (method, url.path(), watching) {
            ("GET", SESSIONS, false) => {
                let items = w.sessions.values().filter(|s| selects(&selector, s));
                Some((
                    200,
                    list("ProbeSessionList", w.rv, items.cloned().collect()),
                ))
            }
            ("GET", SESSIONS | "/api/v1/pods" | "/api/v1/nodes", true) => None,
            ("GET", "/api/v1/pods", false) => Some((200, list("PodList", 1, vec![]))),
            ("GET", "/api/v1/nodes", false) => {
                let node = json!({"apiVersion": "v1", "kind": "Node", "spec": {},
                                  "metadata": {"name": w.node, "resourceVersion": "1"}});
                Some((200, list("NodeList", 1, vec![node])))
            }
            _ => Some((
                404,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "not found", "reason": "NotFound", "code": 404}),
            )),
        }
    };
    match answer {
        Some((code, body)) => {
            let body = body.to_string();
            let status = match code {
                200 => "200 OK",
                _ => "404 Not Found",
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all((head + &body).as_bytes()).await;
            let _ = conn.shutdown().await;
        }
        None if url.path() == SESSIONS => {
            let from = query("resourceVersion").parse().unwrap_or(0);
            stream_sessions(conn, world, changed, from, &selector).await
        }
        // Pods and Nodes never change here: their watches stay open, quiet, until the client goes.
        None => {
            if start_stream(&mut conn).await {
                let _ = conn.read(&mut [0; 1]).await;
            }
        }
    }
}

/// A watch's head: its events follow as chunks, one JSON line each. Whether the client took it.
async fn start_stream(conn: &mut BufReader<TcpStream>) -> bool {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.is_ok()
}

/// A session watch from resourceVersion `from`: the logged events after it, then each new one, until the client
/// goes.
async fn stream_sessions(
    mut conn: BufReader<TcpStream>,
    world: Arc<Mutex<World>>,
    mut changed: watch::Receiver<u64>,
    mut from: u64,
    selector: &str,
) {
    if !start_stream(&mut conn).await {
        return;
    }
    loop {
        changed.borrow_and_update();
        let events: Vec<(u64, Value)> = {
            let w = world.lock().unwrap();
            let new = w.log.iter().filter(|(rv, _)| *rv > from);
            new.cloned().collect()
        };
        for (rv, event) in events {
            from = rv;
            if event["type"] != "ERROR" && !selects(selector, &event["object"]) {
                continue;
            }
            let line = event.to_string() + "\n";
            let chunk = format!("{:x}\r\n{line}\r\n", line.len());
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let mut byte = [0; 1];
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            // The client went (a watch it gave up after a 410 is closed).
            _ = conn.read(&mut byte) => return,
        }
    }
}
