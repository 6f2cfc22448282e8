//! Uploads from the node agents, for clusters without an object store: the server owns a volume (its default
//! storage location, `file://` on a PersistentVolume) and agents put their result files here instead of holding
//! storage credentials. An upload is allowed to the agents' service account only, with a pod-bound token for
//! the server's audience, and only below the result prefix of a ProbeSession of the node that token names: an
//! agent writes its own node's results and nothing else. Chunks are create-only, as in any store: `If-None-Match:
//! *` on an object that exists answers 200 when it has the same size (a retried put that had landed) and 409
//! otherwise, never overwriting it. A namespace that holds its share of the volume or more is refused with 507
//! (`share`), so that it cannot fill the volume for the others.
//!
//! With S3 configured the agents write to it directly and this route is unused: results do not all flow
//! through one pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use kube::api::{Api, ListParams};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use sonde_crds::results::{OwnerKind, ResultsPath};
use sonde_crds::{NODE_LABEL, ProbeSession, node_label_value};
use tokio::io::AsyncWriteExt;

use crate::Ctx;
use crate::auth::User;
use crate::error::{Error, Result};
use crate::limit::Peer;
use crate::share::Share;

/// The token claim (TokenReview `extra`) of a pod-bound service-account token that names the pod's node.
pub const NODE_CLAIM: &str = "authentication.kubernetes.io/node-name";
/// A create-only object is read whole before it is put (event chunks: at most 8 MiB of NDJSON, gzipped).
const MAX_CREATE_ONLY: usize = 64 << 20;
/// How long a session's prefix, once seen, is taken without asking the API server again.
const PREFIX_FOR: Duration = Duration::from_secs(60);

/// Who may upload, the prefixes recently found allowed, and how much each namespace may hold.
pub struct Intake {
    /// The agents' user, `system:serviceaccount:<namespace>:<name>`.
    pub agent_user: String,
    prefixes: Mutex<HashMap<String, Instant>>,
    pub share: Share,
}

impl Intake {
    pub fn new(agent_user: String, share: Share) -> Intake {
        Intake {
            agent_user,
            prefixes: Mutex::new(HashMap::new()),
            share,
        }
    }

    /// The node of an agent's token, or why this user may not upload.
    fn node_of(&self, user: &User) -> Result<String> {
        if user.name != self.agent_user {
            return Err(Error::Forbidden(format!(
                "{} may not upload results (only {})",
                user.name, self.agent_user
            )));
        }
        match user.extra.get(NODE_CLAIM).and_then(|v| v.first()) {
            Some(node) if !node.is_empty() => Ok(node.clone()),
            _ => Err(Error::Forbidden(format!(
                "the token of {} names no node: use the pod's projected token",
                user.name
            ))),
        }
    }

    /// Whether `node` may write under `prefix` (`<kind>/<namespace>/<name>-<uid8>/<node>`): a ProbeSession of
    /// that node writes there, or one did (the node's folder holds its earlier files) and the object it belongs
    /// to still exists. The second case takes the files of a session that ended before they were delivered (a
    /// suspended policy's last window, an outage outlasting the session); a node never starts a folder without
    /// a session.
    async fn session_writes(
        &self,
        client: &kube::Client,
        stored: &Path,
        path: &ResultsPath,
        prefix: &str,
        store: &dyn object_store::ObjectStore,
    ) -> Result<()> {
        let (ns, node) = (path.namespace.as_str(), path.node.as_str());
        let now = Instant::now();
        {
            let mut known = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|_, until| *until > now);
            if known.contains_key(prefix) {
                return Ok(());
            }
        }
        let api: Api<ProbeSession> = Api::namespaced(client.clone(), ns);
        let lp = ListParams::default().labels(&format!("{NODE_LABEL}={}", node_label_value(node)));
        let sessions = api.list(&lp).await.map_err(Error::Kube)?;
        {
            let mut known = self.prefixes.lock().unwrap_or_else(|e| e.into_inner());
            for s in sessions.items.iter().filter(|s| s.spec.node_name == node) {
                known.insert(s.spec.result_prefix.clone(), now + PREFIX_FOR);
            }
            if known.contains_key(prefix) {
                return Ok(());
            }
        }
        let refused = format!("no ProbeSession of node {node} writes under {prefix}");
        match owner_exists(client, path).await? {
            true => {
                let earlier = store
                    .list_with_delimiter(Some(stored))
                    .await
                    .map_err(Error::Store)?;
                match earlier.objects.is_empty() && earlier.common_prefixes.is_empty() {
                    true => Err(Error::Forbidden(refused)),
                    false => Ok(()),
                }
            }
            false => Err(Error::Gone(format!(
                "{refused}, and the object they belong to is gone: nobody could read them"
            ))),
        }
    }
}

/// Whether the TraceJob or ProbePolicy `path` belongs to exists: this very object (its uid), not a later one of
/// its name.
async fn owner_exists(client: &kube::Client, path: &ResultsPath) -> Result<bool> {
    let (ns, name) = (path.namespace.as_str(), path.name.as_str());
    let uid = match path.kind {
        OwnerKind::TraceJob => Api::<sonde_crds::TraceJob>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(Error::Kube)?
            .and_then(|o| o.metadata.uid),
        OwnerKind::ProbePolicy => Api::<sonde_crds::ProbePolicy>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(Error::Kube)?
            .and_then(|o| o.metadata.uid),
    };
    Ok(uid.is_some_and(|u| path.is_of(&u)))
}

/// The results path a key is below (`<kind>/<namespace>/<name>-<uid8>/<node>/<file...>`), if it is a result key
/// of node `node`.
fn split_key(key: &str, node: &str) -> Result<ResultsPath> {
    let (path, _) = ResultsPath::parse_key(key)
        .map_err(|e| Error::BadRequest(format!("not a result key: {e}")))?;
    if path.node != node {
        return Err(Error::Forbidden(format!(
            "the agent of node {node} may not write node {}'s results",
            path.node
        )));
    }
    Ok(path)
}

/// `PUT /agent/v1/objects/{key}`: one result file from an agent, into the server's own location.
pub async fn put_object(
    State(ctx): State<Ctx>,
    UrlPath(key): UrlPath<String>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let Some(intake) = &ctx.intake else {
        return Err(Error::NotFound(
            "this server takes no uploads (it has no --agent-user)".into(),
        ));
    };
    let token = crate::auth::token(&headers).ok_or(Error::NoToken)?;
    // Limited per client as any request whose token costs a review: an agent's token is reviewed once per
    // allowance and its uploads meanwhile pass without (each agent is its own pod, its own address).
    let user = ctx.auth.authenticate(token, peer).await?;
    let node = intake.node_of(&user)?;
    let path = split_key(&key, &node)?;
    let prefix = path.to_string();
    let ns = path.namespace.as_str();
    let (store, base) = ctx.stores.default_store()?;
    intake
        .session_writes(
            &ctx.client,
            &under(&base, &prefix),
            &path,
            &prefix,
            store.as_ref(),
        )
        .await?;
    // Checked once the namespace is known to have a session here: the share's figures and metrics are kept per
    // namespace, and only real ones get one.
    write(
        &intake.share,
        store,
        &base,
        ns,
        &key,
        create_only(&headers),
        body,
    )
    .await
}

/// `key` below the default location's path.
fn under(base: &Path, key: &str) -> Path {
    Path::from(format!("{}/{key}", base.as_ref()).trim_start_matches('/'))
}

/// Whether a put is create-only (`If-None-Match: *`, an event chunk).
fn create_only(headers: &HeaderMap) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == b"*")
}

/// Writes an allowed upload of namespace `ns` as `key` below `base`, if the namespace is within its share.
async fn write(
    share: &Share,
    store: Arc<dyn ObjectStore>,
    base: &Path,
    ns: &str,
    key: &str,
    create_only: bool,
    body: Body,
) -> Result<StatusCode> {
    let path = under(base, key);
    if !create_only {
        if let Err(refused) = share.check(store.as_ref(), base, ns, Instant::now()).await {
            drain(body).await;
            return Err(refused);
        }
        // Streamed: a large file never sits whole in memory.
        let mut to = BufWriter::new(store.clone(), path.clone());
        let mut from = body.into_data_stream();
        let mut written = 0u64;
        while let Some(part) = from.next().await {
            let part = part.map_err(|e| Error::BadRequest(format!("reading the upload: {e}")))?;
            if let Err(e) = to.write_all(&part).await {
                let _ = to.abort().await;
                return Err(Error::Stored(format!("{path}: {e}")));
            }
            written += part.len() as u64;
        }
        to.shutdown()
            .await
            .map_err(|e| Error::Stored(format!("{path}: {e}")))?;
        share.add(ns, written).await;
        return Ok(StatusCode::CREATED);
    }
    let bytes = axum::body::to_bytes(body, MAX_CREATE_ONLY)
        .await
        .map_err(|e| Error::BadRequest(format!("reading the upload: {e}")))?;
    let len = bytes.len() as u64;
    if let Err(refused) = share.check(store.as_ref(), base, ns, Instant::now()).await {
        // A retried put that had landed before the namespace reached its share is done, not refused: else the
        // agent would hold (and count as pending) a chunk the server has.
        return match store.head(&path).await {
            Ok(there) if there.size == len => Ok(StatusCode::OK),
            _ => Err(refused),
        };
    }
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store.put_opts(&path, bytes.into(), opts).await {
        Ok(_) => {
            share.add(ns, len).await;
            Ok(StatusCode::CREATED)
        }
        Err(object_store::Error::AlreadyExists { .. }) => {
            let there = store.head(&path).await.map_err(Error::Store)?;
            match there.size == len {
                true => Ok(StatusCode::OK),
                false => Err(Error::Conflict(format!(
                    "{key} exists with {} bytes, this one has {len}: not overwritten",
                    there.size
                ))),
            }
        }
        Err(e) => Err(Error::Store(e)),
    }
}

/// Reads a refused upload to its end (up to [`MAX_CREATE_ONLY`]) before the answer: hyper closes a connection
/// whose request body is left unread, and closing with unread bytes resets it, so an agent still sending would
/// see a reset instead of why it was refused.
async fn drain(body: Body) {
    let mut from = body.into_data_stream();
    let mut read = 0;
    while read < MAX_CREATE_ONLY {
        match from.next().await {
            Some(Ok(part)) => read += part.len(),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_their_nodes_session_folder() {
        let key = "tracejobs/team-a/ping-0a1b2c3d/node-1/events/000001.ndjson.gz";
        let path = split_key(key, "node-1").unwrap();
        assert_eq!(
            (path.to_string().as_str(), path.namespace.as_str()),
            ("tracejobs/team-a/ping-0a1b2c3d/node-1", "team-a")
        );
        assert!(matches!(
            split_key(key, "node-2"),
            Err(Error::Forbidden(m)) if m.contains("node-1")
        ));
        for bad in [
            "tracejobs/team-a/ping-0a1b2c3d/node-1",
            "tracejobs/team-a/../node-1/x/summary.json",
            "secrets/team-a/ping-0a1b2c3d/node-1/summary.json",
            "tracejobs/team-a//node-1/summary.json",
            "tracejobs/team-a/ping/node-1/sum mary.json",
        ] {
            assert!(
                matches!(split_key(bad, "node-1"), Err(Error::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_the_agents_with_a_node_bound_token_may_upload() {
        let intake = Intake::new(
            "system:serviceaccount:sonde:sonde-agent".into(),
            Share::new(0, crate::share::LIST_EVERY),
        );
        let mut user = User {
            name: "system:serviceaccount:sonde:sonde-agent".into(),
            uid: "u".into(),
            groups: vec![],
            extra: Default::default(),
        };
        assert!(matches!(intake.node_of(&user), Err(Error::Forbidden(m)) if m.contains("no node")));
        user.extra.insert(NODE_CLAIM.into(), vec!["node-1".into()]);
        assert_eq!(intake.node_of(&user).unwrap(), "node-1");
        user.name = "system:serviceaccount:team-a:default".into();
        assert!(matches!(intake.node_of(&user), Err(Error::Forbidden(_))));
    }

    /// What an answer says: its status and the problem's `detail`.
    async fn answer(r: Result<StatusCode>) -> (u16, String) {
        use axum::response::IntoResponse;
        let res = r.into_response();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            status,
            problem["detail"].as_str().unwrap_or_default().into(),
        )
    }

    #[tokio::test]
    async fn a_namespace_over_its_share_is_refused_with_507_and_why() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let base = Path::from("data");
        let share = Share::new(1, crate::share::LIST_EVERY);
        let chunk =
            |n: u32| format!("tracejobs/team-a/ping-0a1b2c3d/node-1/events/{n:06}.ndjson.gz");
        let first = chunk(1);
        let mib = || Body::from(vec![7u8; 1 << 20]);
        // Under its share when listed (empty): taken, and counted although not listed again.
        let put = write(&share, store.clone(), &base, "team-a", &first, true, mib());
        assert_eq!(answer(put.await).await.0, 201);
        for (key, create_only) in [
            (chunk(2), true),
            (
                "tracejobs/team-a/ping-0a1b2c3d/node-1/folded.txt".into(),
                false,
            ),
        ] {
            let put = write(
                &share,
                store.clone(),
                &base,
                "team-a",
                &key,
                create_only,
                mib(),
            );
            let (status, detail) = answer(put.await).await;
            assert_eq!(status, 507, "{key}");
            assert!(
                detail.starts_with("namespace team-a holds 1 MiB of results on this server's volume, its share is 1 MiB"),
                "{detail}"
            );
            assert!(
                store.head(&under(&base, &key)).await.is_err(),
                "{key} was written"
            );
        }
        // A retry of a chunk that had landed is done, over the share or not.
        let put = write(&share, store.clone(), &base, "team-a", &first, true, mib());
        assert_eq!(answer(put.await).await.0, 200);
        // Another namespace writes on, streamed or create-only.
        for (key, create_only) in [
            (
                "probepolicies/team-b/slow-0a1b2c3d/node-1/summary.json",
                false,
            ),
            (
                "probepolicies/team-b/slow-0a1b2c3d/node-1/window-1/events/000001.ndjson.gz",
                true,
            ),
        ] {
            let put = write(
                &share,
                store.clone(),
                &base,
                "team-b",
                key,
                create_only,
                Body::from("{}"),
            );
            assert_eq!(answer(put.await).await.0, 201, "{key}");
            assert_eq!(store.head(&under(&base, key)).await.unwrap().size, 2);
        }
    }

    #[tokio::test]
    async fn a_refused_upload_is_read_to_its_end_so_the_agent_reads_why() {
        // Over its share from the first listing.
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let key = "tracejobs/team-a/ping-0a1b2c3d/node-1/folded.txt";
        store
            .put(&Path::from(key), vec![0u8; 1 << 20].into())
            .await
            .unwrap();
        let ctx = Arc::new((store, Share::new(1, crate::share::LIST_EVERY)));
        let app = axum::Router::new()
            .route(
                "/{*key}",
                axum::routing::put(
                    |State(ctx): State<Arc<(Arc<dyn ObjectStore>, Share)>>,
                     UrlPath(key): UrlPath<String>,
                     body: Body| async move {
                        write(
                            &ctx.1,
                            ctx.0.clone(),
                            &Path::default(),
                            "team-a",
                            &key,
                            false,
                            body,
                        )
                        .await
                    },
                ),
            )
            .with_state(ctx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        // More than the socket buffers take: without reading it, the server would reset the connection while the
        // agent still sends.
        let len = 32 << 20;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let exchange = async {
            use tokio::io::AsyncReadExt;
            let head = format!(
                "PUT /{key} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
            );
            conn.write_all(head.as_bytes()).await?;
            let part = vec![b'x'; 1 << 20];
            for _ in 0..len >> 20 {
                conn.write_all(&part).await?;
            }
            let mut answer = String::new();
            conn.read_to_string(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
        assert!(answer.contains("namespace team-a holds 1 MiB"), "{answer}");
        server.abort();
    }
}
