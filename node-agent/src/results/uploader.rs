//! The background task that delivers sealed sets: every second it looks at the spool, puts each set that is due
//! to its store ([`super::spool::deliver`]) and tells the set's session how its results stand
//! ([`super::status`]). The session tries a set once as it ends; the uploader retries what the store did not
//! take, with [`super::backoff`], and works from the markers it finds, so a set outlives its session, the
//! agent's restarts and store outages:
//! - A sealed set is uploaded whether or not its session still exists: deleting a job keeps its results (as
//!   `ttlSecondsAfterFinished` promises).
//! - A set whose store stays unreachable is retried every [`super::MAX_BACKOFF`] at most, for [`KEEP`]; then
//!   it is deleted with a warning and counted (`sonde_agent_results_abandoned_total`), as is at once a set the
//!   results server calls gone (its TraceJob or ProbePolicy no longer exists).
//! - A store that cannot be used at all is tried for one set per pass: its other sets wait with its backoff
//!   instead of each timing out in front of the sets of stores that are up.
//!
//! It also measures what waits in the spool against the node's cap and each namespace's share of it
//! ([`SpoolGates`]), and seals the trace directories no session resumed ([`super::recovery::seal_orphans`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Client;
use sonde_crds::Upload;

use super::backoff;
use super::recovery::{ORPHAN_AFTER, seal_orphans};
use super::spool::{Live, MARKER, Parcel, deliver, find};
use super::status::{state_in, write_upload};
use crate::limits::{Limits, SpoolGates};

/// How long an undeliverable set is kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The session's own first try runs this long before the uploader takes a fresh set.
const FRESH: Duration = Duration::from_secs(20);

/// Bytes of a result set's files: those directly in `dir` and its events.
fn dir_bytes(dir: &Path) -> u64 {
    [
        dir.to_path_buf(),
        dir.join(sonde_probes::chunks::EVENTS_DIR),
    ]
    .iter()
    .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
    .filter_map(|e| e.metadata().ok())
    .filter(|m| m.is_file())
    .map(|m| m.len())
    .sum()
}

struct Retry {
    session: (String, String),
    attempts: u32,
    next: Instant,
    error: String,
}

/// Retries every sealed set in the spool until the store takes it, and tells its session.
pub struct Uploader {
    pub spool: PathBuf,
    pub client: Client,
    pub metrics: crate::metrics::AgentMetrics,
    /// Closed while sealed sets take more than the node's `max_spool_bytes`, or a namespace's more than its
    /// share: those sessions then keep no new events.
    pub spool_gates: SpoolGates,
    pub limits: Limits,
    /// Whether the node's spool was full at the last look, to log the change once.
    spool_full: bool,
    /// The admin's default store as this agent has it ([`Destination::store`]).
    default_store: String,
    /// Directories running sessions hold.
    live: Live,
    started: Instant,
    retries: HashMap<PathBuf, Retry>,
    /// What each session was last told, so status is written only on a change.
    told: HashMap<(String, String), Upload>,
}

impl Uploader {
    pub fn new(
        spool: PathBuf,
        client: Client,
        metrics: crate::metrics::AgentMetrics,
        spool_gates: SpoolGates,
        limits: Limits,
        default_store: String,
        live: Live,
    ) -> Uploader {
        Uploader {
            spool,
            client,
            metrics,
            spool_gates,
            limits,
            spool_full: false,
            default_store,
            live,
            started: Instant::now(),
            retries: HashMap::new(),
            told: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.pass().await;
        }
    }

    /// One look at the spool: tries each set that is due, then tells sessions whose state changed.
    pub async fn pass(&mut self) {
        if self.started.elapsed() >= ORPHAN_AFTER {
            seal_orphans(&self.spool, &self.live);
        }
        let (sealed, running) = find(&self.spool);
        self.metrics.results_pending.set(sealed.len() as i64);
        // Sealed sets and the chunks running traces have not sent yet: both wait for the store, counted against
        // the node's cap and their namespace's share.
        let mut waiting: HashMap<String, u64> = HashMap::new();
        let sets = sealed.iter().map(|(d, p)| (d, &p.to.namespace));
        for (dir, ns) in sets.chain(running.iter().map(|(d, to)| (d, &to.namespace))) {
            let b = waiting.entry(ns.clone()).or_default();
            *b = b.saturating_add(dir_bytes(dir));
        }
        let bytes = waiting.values().fold(0u64, |a, b| a.saturating_add(*b));
        let used = self.spool_gates.measure(&self.limits, waiting);
        if used.node_full != self.spool_full {
            self.spool_full = used.node_full;
            tracing::warn!(
                bytes,
                cap = self.limits.max_spool_bytes,
                full = used.node_full,
                "results waiting in the spool vs its cap"
            );
        }
        if !used.over_share.is_empty() {
            tracing::info!(namespaces = ?used.over_share, share = self.limits.max_spool_bytes_per_namespace, "namespaces past their share of the spool keep no new events");
        }
        self.metrics.spool_full.set(i64::from(used.node_full));
        self.metrics
            .namespaces_over_spool_share
            .set(used.over_share.len() as i64);
        // Per session: whether its final set (and so its result URLs) went up in this pass. One status write
        // each, so the job never sees the upload complete without the URLs.
        let mut touched: HashMap<(String, String), Option<Vec<String>>> = HashMap::new();
        // What stays sealed after this pass: how sessions stand, without walking the spool again.
        let mut left = Vec::new();
        // Stores that could not be reached in this pass: their other sets wait with the same backoff instead of
        // each timing out in turn in front of the sets of stores that are up (a reinstalled results server has a
        // new address; sets spooled for the old one would otherwise hold up every other for minutes).
        let mut down: HashMap<String, String> = HashMap::new();
        for (dir, p) in sealed {
            let age = std::fs::metadata(dir.join(MARKER))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let fresh = age < FRESH && !p.cut_off && !self.retries.contains_key(&dir);
            if fresh
                || self
                    .retries
                    .get(&dir)
                    .is_some_and(|r| r.next > Instant::now())
            {
                left.push((dir, p));
                continue;
            }
            let key = (p.to.namespace.clone(), p.to.session.clone());
            let store = p.to.store(&self.default_store).to_string();
            if let Some(error) = down.get(&store) {
                let r = self.retry(&dir, &key);
                r.next = Instant::now() + backoff(r.attempts.max(1));
                r.error.clone_from(error);
                touched.entry(key).or_default();
                left.push((dir, p));
                continue;
            }
            match deliver(&dir, &p, &store).await {
                Ok(urls) => {
                    self.retries.remove(&dir);
                    tracing::info!(session = %p.to.session, namespace = %p.to.namespace, prefix = %p.to.prefix, "results uploaded late");
                    let urls = p.last.then_some(urls);
                    let entry = touched.entry(key).or_default();
                    if urls.is_some() {
                        *entry = urls;
                    }
                }
                Err(e) if age > KEEP || matches!(e, crate::Error::StoreGone { .. }) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "results undeliverable (for a week, or their object is gone); deleted");
                    self.metrics.results_abandoned.inc();
                    let _ = std::fs::remove_dir_all(&dir);
                    self.retries.remove(&dir);
                    touched.entry(key).or_default();
                }
                Err(e) => {
                    if matches!(e, crate::Error::StoreDown { .. }) {
                        down.insert(store, e.to_string());
                    }
                    let r = self.retry(&dir, &key);
                    r.attempts += 1;
                    r.next = Instant::now() + backoff(r.attempts);
                    let error = e.to_string();
                    // Why results do not leave the node belongs in the log: once per new reason, and every tenth
                    // attempt while it lasts.
                    if error != r.error || r.attempts % 10 == 1 {
                        tracing::warn!(dir = %dir.display(), attempts = r.attempts, error = %e, "upload failed; will retry");
                    } else {
                        tracing::debug!(dir = %dir.display(), attempts = r.attempts, error = %e, "upload failed; will retry");
                    }
                    r.error = error;
                    touched.entry(key).or_default();
                    left.push((dir, p));
                }
            }
        }
        for ((ns, name), urls) in touched {
            self.tell(&ns, &name, urls, &left).await;
        }
    }

    /// The retry state of the set in `dir` of `session`, new if it has none.
    fn retry(&mut self, dir: &Path, session: &(String, String)) -> &mut Retry {
        self.retries.entry(dir.to_path_buf()).or_insert(Retry {
            session: session.clone(),
            attempts: 0,
            next: Instant::now(),
            error: String::new(),
        })
    }

    /// Writes the session's `status.upload` and `ResultsComplete` condition (and its result URLs once its final
    /// set is in), if they changed. A session that no longer exists is not told.
    async fn tell(
        &mut self,
        ns: &str,
        name: &str,
        urls: Option<Vec<String>>,
        sealed: &[(PathBuf, Parcel)],
    ) {
        let key = (ns.to_string(), name.to_string());
        let error = self
            .retries
            .values()
            .find(|r| r.session == key)
            .map(|r| r.error.clone());
        let upload = state_in(sealed, ns, name, error.as_deref());
        if urls.is_none() && self.told.get(&key) == Some(&upload) {
            return;
        }
        if write_upload(&self.client, ns, name, &upload, urls.as_deref()).await {
            self.told.insert(key, upload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::AgentMetrics;
    use crate::results::spool::{seal, start};
    use crate::results::tests::to;

    /// An uploader of `spool` whose API server is never reached (nothing listens on port 1 of loopback).
    fn uploader(
        spool: &Path,
        metrics: &AgentMetrics,
        gates: &SpoolGates,
        limits: Limits,
        default_store: &str,
    ) -> Uploader {
        let api = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Uploader::new(
            spool.to_path_buf(),
            kube::Client::try_from(api).unwrap(),
            metrics.clone(),
            gates.clone(),
            limits,
            default_store.to_string(),
            Live::default(),
        )
    }

    /// No cap on the spool, the node's or a namespace's.
    fn uncapped() -> Limits {
        Limits {
            max_spool_bytes: u64::MAX,
            max_spool_bytes_per_namespace: u64::MAX,
            ..Default::default()
        }
    }

    /// One namespace's results waiting past its share of the spool close that namespace's gate only: its
    /// sessions keep no new events, another namespace's (whose running trace has chunks waiting too) still do.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_namespace_past_its_share_of_the_spool_waits_alone() {
        let spool = tempfile::tempdir().unwrap();
        let down = "results+http://127.0.0.1:1";
        let mut a = to("tracejobs/team-a/big-1/node");
        (a.namespace, a.store_url) = ("team-a".into(), down.into());
        let dir = spool.path().join("team-a/big/a");
        start(&dir, &a).unwrap();
        std::fs::write(dir.join("summary.json"), vec![b' '; 2 << 20]).unwrap();
        seal(&dir, &a, &[dir.join("summary.json")], true, false).unwrap();
        let mut b = to("tracejobs/team-b/small-1/node");
        (b.namespace, b.store_url, b.stream) = ("team-b".into(), down.into(), true);
        let running = spool.path().join("team-b/small/a");
        start(&running, &b).unwrap();
        std::fs::write(running.join("chunk"), vec![b' '; 100 << 10]).unwrap();
        let gates = SpoolGates::default();
        let (gate_a, gate_b) = (gates.of("team-a"), gates.of("team-b"));
        let metrics = AgentMetrics::default();
        let limits = Limits {
            max_spool_bytes: 100 << 20,
            max_spool_bytes_per_namespace: 1 << 20,
            ..Default::default()
        };
        let mut u = uploader(spool.path(), &metrics, &gates, limits, "");
        u.pass().await;
        assert!(gate_a.is_closed(), "team-a is past its share");
        assert!(
            gate_a.why().contains("namespace team-a's results")
                && gate_a.why().contains(
                    "(2 MiB waiting; Helm value agent.limits.maxSpoolMiBPerNamespace, 1 MiB)"
                ),
            "{}",
            gate_a.why()
        );
        assert!(!gate_b.is_closed(), "team-b paid for team-a's results");
        assert_eq!(metrics.namespaces_over_spool_share.get(), 1);
        assert_eq!(metrics.spool_full.get(), 0);
    }

    /// A store that cannot be used is tried once per pass: its other sets wait with its backoff instead of each
    /// timing out in front of the sets of a store that is up. A set written for the default store goes to the
    /// default store the agent has now (a reinstalled results server has a new address).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_that_is_down_holds_up_no_other_and_the_default_store_is_the_current_one() {
        let spool = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let up = format!("file://{}", store.path().display());
        // Nothing listens on port 1 of loopback, and this process has no token for a results server.
        let gone = "results+http://127.0.0.1:1";
        let set = |name: &str, url: &str, default_store: bool| {
            let mut d = to(&format!("tracejobs/ns/{name}/node"));
            d.store_url = url.to_string();
            d.default_store = default_store;
            d.session = name.to_string();
            let dir = spool.path().join(format!("ns/{name}/a"));
            start(&dir, &d).unwrap();
            std::fs::write(dir.join("summary.json"), b"{}").unwrap();
            seal(&dir, &d, &[dir.join("summary.json")], true, true).unwrap();
            dir
        };
        let stale = [set("old-1", gone, false), set("old-2", gone, false)];
        let moved = set("moved", gone, true);
        let fresh = set("fresh", &up, false);
        let (metrics, gates) = (AgentMetrics::default(), SpoolGates::default());
        let mut u = uploader(spool.path(), &metrics, &gates, uncapped(), &up);
        u.pass().await;
        assert!(!fresh.exists(), "the set for the store that is up waited");
        assert!(
            !moved.exists(),
            "the set for the default store went to its old address"
        );
        let mut attempts: Vec<u32> = stale.iter().map(|d| u.retries[d].attempts).collect();
        attempts.sort();
        assert_eq!(
            attempts,
            [0, 1],
            "the unreachable store was tried for each of its sets"
        );
        assert!(u.retries.values().all(|r| r.error.contains(" down: ")));
    }

    /// A results server on loopback that answers every request with `status` (e.g. `410 Gone`) and a problem
    /// body whose detail is `detail`, after reading it whole; reports each request's head.
    async fn answering(
        status: &'static str,
        detail: &'static str,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut conn = tokio::io::BufReader::new(tcp);
                let (head, _) = crate::results::store::tests::read_request(&mut conn).await;
                let code: u16 = status[..3].parse().unwrap();
                let problem = serde_json::json!({"status": code, "detail": detail}).to_string();
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{problem}",
                    problem.len()
                );
                // Reported before the answer: the uploader's pass ends only after it.
                let _ = tx.send(head);
                conn.write_all(answer.as_bytes()).await.unwrap();
                conn.shutdown().await.unwrap();
            }
        });
        (port, rx)
    }

    /// A results server that answers 410 Gone (the set's TraceJob or ProbePolicy no longer exists) is never
    /// going to take the set: the uploader deletes it at once and counts it in
    /// `sonde_agent_results_abandoned_total`. Any other refusal (503 here) keeps the set for the next retry,
    /// uncounted.
    ///
    /// The agent reads its token for the results server from `SONDE_RESULTS_TOKEN_FILE` before each put, and
    /// a test may not set the environment of its own process (other tests run beside it): run without it, the
    /// test runs itself again in a child process that has it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_set_the_results_server_calls_gone_is_deleted_and_counted() {
        const NAME: &str = "a_set_the_results_server_calls_gone_is_deleted_and_counted";
        if std::env::var_os("SONDE_RESULTS_TOKEN_FILE").is_none() {
            let token = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(token.path(), "the-token\n").unwrap();
            let module = module_path!().split_once("::").unwrap().1;
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([&format!("{module}::{NAME}"), "--exact", "--nocapture"])
                .env("SONDE_RESULTS_TOKEN_FILE", token.path())
                .output()
                .unwrap();
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(
                out.status.success() && stdout.contains("test result: ok. 1 passed"),
                "the test with a token ({}):\n{stdout}\n{stderr}",
                out.status
            );
            return;
        }
        let (spool, gates) = (tempfile::tempdir().unwrap(), SpoolGates::default());
        let set = |name: &str, port: u16| {
            let mut d = to(&format!("tracejobs/ns/{name}/node"));
            d.store_url = format!("results+http://127.0.0.1:{port}");
            d.session = format!("{name}-node");
            let dir = spool.path().join(format!("ns/{name}-node/a"));
            start(&dir, &d).unwrap();
            std::fs::create_dir_all(dir.join("events")).unwrap();
            let files = [
                dir.join("events/000000.ndjson.gz"),
                dir.join("summary.json"),
            ];
            for f in &files {
                std::fs::write(f, b"{}").unwrap();
            }
            // Sealed at start-up from what a restart cut off: not left to a session's own first try.
            seal(&dir, &d, &files, true, true).unwrap();
            dir
        };

        let (port, mut seen) = answering("410 Gone", "tracejob ns/deleted does not exist").await;
        let gone = set("deleted", port);
        let metrics = AgentMetrics::default();
        let mut u = uploader(spool.path(), &metrics, &gates, uncapped(), "");
        u.pass().await;
        let head = seen.try_recv().unwrap();
        assert!(
            head.starts_with(
                "PUT /agent/v1/objects/tracejobs/ns/deleted/node/events/000000.ndjson.gz HTTP/1.1\r\n"
            ) && head.contains("authorization: Bearer the-token\r\n"),
            "{head}"
        );
        assert!(seen.try_recv().is_err(), "the uploader went on after 410");
        assert!(!gone.exists(), "the set the server called gone stayed");
        assert_eq!(metrics.results_abandoned.get(), 1);
        assert!(u.retries.is_empty());
        assert!(find(spool.path()).0.is_empty());

        let (port, mut seen) = answering("503 Service Unavailable", "the volume is full").await;
        let refused = set("refused", port);
        let metrics = AgentMetrics::default();
        let mut u = uploader(spool.path(), &metrics, &gates, uncapped(), "");
        u.pass().await;
        assert!(seen.try_recv().is_ok(), "the server was not asked");
        assert!(
            refused.join(MARKER).exists(),
            "a set refused with 503 was deleted"
        );
        assert_eq!(metrics.results_abandoned.get(), 0);
        let r = &u.retries[&refused];
        assert_eq!(r.attempts, 1);
        assert!(
            r.error
                .contains("503 Service Unavailable: the volume is full"),
            "{}",
            r.error
        );
    }
}
