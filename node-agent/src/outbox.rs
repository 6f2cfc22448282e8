//! Results on their way to the object store. A finished trace's (or policy window's) files stay in the spool
//! with a marker, `upload.json`, that names where they go; they leave the spool only once the store has taken
//! every one. The session tries once as it ends; the [`Uploader`] retries the rest with exponential backoff and
//! jitter, across agent restarts (it works from the markers it finds), and reports in the session's status
//! (`status.upload`, condition `ResultsComplete`).
//!
//! Rules for what is left in the spool:
//! - A sealed set (marker present) is uploaded whether or not its session still exists: deleting a job keeps its
//!   results (as `ttlSecondsAfterFinished` promises). Puts overwrite the same key with the same bytes, so a set
//!   uploaded again after a crash between the last put and the removal leaves no duplicate.
//! - A set whose store stays unreachable is retried every [`MAX_BACKOFF`] at most, for [`KEEP`]; then it is
//!   deleted with a warning and counted (`sonde_agent_results_abandoned_total`).
//! - A trace's events stream while it runs: each chunk the writer closes is fsynced, put create-only under
//!   `<prefix>/events/` and then removed from the spool ([`stream`]); the manifest keeps listing it. What is
//!   left at the end (chunks the store did not take, the manifest, summary and the other files) is sealed.
//! - A trace's spool directory is the session's (`<namespace>/<session>/<uid first 8>/`), not one run's: an
//!   agent restarted mid-trace resumes the session in the same directory and continues its chunk sequence, so
//!   the chunks of both runs land under one manifest and no chunk name is used twice. A trace directory that
//!   no session resumes within [`ORPHAN_AFTER`] of start-up (its session was deleted, or its deadline passed
//!   while the agent was down) is sealed as it is, manifest incomplete, and uploaded under its own prefix.
//! - A policy window's directory without a marker was cut off by an agent restart: it is sealed as it is at
//!   start-up (its events until the restart) and uploaded under `<prefix>/before-restart-<time>`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use sonde_crds::conditions::{Conditions, types};
use sonde_crds::{ProbeSession, Upload, UploadState};

use crate::limits::{Limits, SpoolGates};
use crate::upload;

/// The marker of a sealed result set.
pub const MARKER: &str = "upload.json";
/// Where a session's results go, written when it starts, so a set cut off by a restart can still be sealed.
pub const DESTINATION: &str = "destination.json";
/// Longest wait between two tries of one set.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long an undeliverable set is kept.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The session's own first try runs this long before the uploader takes a fresh set.
const FRESH: Duration = Duration::from_secs(20);
/// A trace directory no session resumed this long after the agent started is an orphan, sealed for upload.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// How often a running trace looks for closed chunks to send.
const STREAM_EVERY: Duration = Duration::from_millis(500);

/// Where a session's results go and whom to tell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub store_url: String,
    pub prefix: String,
    pub namespace: String,
    pub session: String,
    /// A trace's directory, whose chunks stream while it runs and which a restarted agent resumes; a policy
    /// window's is not.
    #[serde(default)]
    pub stream: bool,
    /// Written for the admin's default store (the session named no location): delivered to the default store as
    /// the agent has it when it delivers, since a reinstalled results server has a new address.
    #[serde(default)]
    pub default_store: bool,
}

impl Destination {
    /// The store to deliver to: `default_store` (the agent's default now) for results written for the default,
    /// else the one recorded.
    pub fn store<'a>(&'a self, default_store: &'a str) -> &'a str {
        match self.default_store && !default_store.is_empty() {
            true => default_store,
            false => &self.store_url,
        }
    }
}

/// Spool directories a running session writes in: the uploader leaves them to their session.
pub type Live = Arc<Mutex<HashSet<PathBuf>>>;

/// Takes `dir` for a session's run: false when a finished run already sealed it (its set waits for upload and
/// is not to be written into).
pub fn claim(live: &Live, dir: &Path) -> bool {
    let mut live = live.lock().unwrap_or_else(|e| e.into_inner());
    if dir.join(MARKER).exists() || live.contains(dir) {
        return false;
    }
    live.insert(dir.to_path_buf())
}

pub fn release(live: &Live, dir: &Path) {
    live.lock().unwrap_or_else(|e| e.into_inner()).remove(dir);
}

/// A sealed result set: `files` (paths relative to its directory, summary.json last) go to
/// `<store_url>/<prefix>/<file>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Parcel {
    #[serde(flatten)]
    pub to: Destination,
    pub files: Vec<String>,
    /// A trace's final results (their URLs become the session's `status.results`), not a policy window's.
    pub last: bool,
    /// When it was sealed, RFC 3339.
    pub sealed: String,
    /// Sealed at start-up from what a restart cut off: no session is trying it, the uploader starts at once.
    #[serde(default)]
    pub cut_off: bool,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `value` as `dir/name` so that a crash leaves either the old file or the new one, both durable.
fn write_durably(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Records where a session's results go, in its fresh spool directory. Not fsynced: this is on the way to
/// attaching, where an fsync can wait seconds behind other sessions' writes; it serves a restarted agent, which
/// a killed process does not deprive of it (a crashed machine may: its trace is then not recovered).
pub fn start(dir: &Path, to: &Destination) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{DESTINATION}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(to).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, dir.join(DESTINATION))
}

/// Makes `files` in `dir` durable and marks the set for upload. After this, the set survives a crash.
pub fn seal(
    dir: &Path,
    to: &Destination,
    files: &[PathBuf],
    last: bool,
    cut_off: bool,
) -> std::io::Result<Parcel> {
    let mut names = Vec::new();
    for f in files {
        std::fs::File::open(f)?.sync_all()?;
        let relative = f
            .strip_prefix(dir)
            .ok()
            .or_else(|| f.file_name().map(Path::new));
        if let Some(n) = relative.and_then(|n| n.to_str()) {
            names.push(n.to_string());
        }
    }
    if let Some(events) = files.iter().find_map(|f| f.parent().filter(|p| *p != dir)) {
        sync_dir(events)?;
    }
    let parcel = Parcel {
        to: to.clone(),
        files: names,
        last,
        sealed: k8s_openapi::jiff::Timestamp::now().to_string(),
        cut_off,
    };
    write_durably(dir, MARKER, &parcel)?;
    Ok(parcel)
}

/// Uploads a sealed set and, once the store has every file, removes it from the spool. Returns the URLs.
pub async fn deliver(dir: &Path, p: &Parcel, store_url: &str) -> crate::Result<Vec<String>> {
    let files: Vec<PathBuf> = p.files.iter().map(|f| dir.join(f)).collect();
    let urls = upload::upload(store_url, &p.to.prefix, dir, &files).await?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), error = %e, "uploaded, but the spool copy stays")
        }
        _ => {}
    }
    // A policy's last window gone, the run's directory that held the windows goes too (runs never share one).
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.starts_with("window-")
        && let Some(run) = dir.parent()
    {
        let _ = std::fs::remove_dir(run);
    }
    Ok(urls)
}

/// What the spool holds: sealed sets, and session directories a restart cut off (no marker, a destination).
type Found = (Vec<(PathBuf, Parcel)>, Vec<(PathBuf, Destination)>);

/// Every sealed set under `spool`, and every session directory a restart cut off.
pub fn find(spool: &Path) -> Found {
    let (mut sealed, mut cut) = (Vec::new(), Vec::new());
    let mut dirs = vec![(spool.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let read = |name: &str| std::fs::read(dir.join(name)).ok();
        if let Some(p) = read(MARKER).and_then(|b| serde_json::from_slice::<Parcel>(&b).ok()) {
            sealed.push((dir.clone(), p));
            continue;
        }
        if let Some(d) = read(DESTINATION).and_then(|b| serde_json::from_slice(&b).ok()) {
            cut.push((dir.clone(), d));
        }
        if depth >= 4 {
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    sealed.sort_by(|a, b| a.1.sealed.cmp(&b.1.sealed));
    (sealed, cut)
}

/// Seals what a restart cut off (called once at start-up, before any session runs): the events written until
/// then, for a prefix of their own beside the resumed trace's.
pub fn seal_cut_off(spool: &Path) {
    let (_, cut) = find(spool);
    for (dir, mut to) in cut.into_iter().filter(|(_, to)| !to.stream) {
        // Its files and its complete chunks (a chunk half written when the process died is left out).
        let files: Vec<PathBuf> = [dir.clone(), dir.join(sonde_probes::chunks::EVENTS_DIR)]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.') && n != DESTINATION)
            })
            .collect();
        let when = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        to.prefix = sonde_crds::results::Below::BeforeRestart(when.to_string()).under(&to.prefix);
        // No file of its own (a policy's directory, whose windows are below it, or a trace cut off before its
        // first event): only the destination goes, and the directory if nothing else is left.
        let sealed = match files.is_empty() {
            true => std::fs::remove_file(dir.join(DESTINATION)).map(|()| {
                let _ = std::fs::remove_dir(&dir);
            }),
            false => seal(&dir, &to, &files, false, true).map(drop),
        };
        match sealed {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), files = files.len(), "sealed results cut off by a restart")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "sealing results cut off by a restart")
            }
        }
    }
}

/// Seals the trace directories no running session holds (called by the uploader once the agent has run for
/// [`ORPHAN_AFTER`], so a resumed session had its chance to take its directory back): their chunks and
/// manifest, incomplete, go to their own prefix.
pub fn seal_orphans(spool: &Path, live: &Live) {
    let (_, cut) = find(spool);
    for (dir, to) in cut.into_iter().filter(|(_, to)| to.stream) {
        let live = live.lock().unwrap_or_else(|e| e.into_inner());
        if live.contains(&dir) {
            continue;
        }
        let events = dir.join(sonde_probes::chunks::EVENTS_DIR);
        let mut files: Vec<PathBuf> = chunk_files(&events);
        if events.join(sonde_probes::chunks::MANIFEST).exists() {
            files.push(events.join(sonde_probes::chunks::MANIFEST));
        }
        let sealed = match files.is_empty() {
            true => std::fs::remove_dir_all(&dir),
            false => seal(&dir, &to, &files, false, true).map(drop),
        };
        drop(live);
        match sealed {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), files = files.len(), "sealed a trace no session resumed")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "sealing a trace no session resumed")
            }
        }
    }
}

/// The closed chunks in an events folder, in sequence order (a chunk being written has a hidden name).
fn chunk_files(events: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(events)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && upload::is_chunk(n))
        })
        .collect();
    files.sort();
    files
}

/// How a running trace's chunks stand, for its heartbeat.
#[derive(Clone, Debug, Default)]
pub struct Streamed {
    /// Closed chunks still in the spool.
    pub waiting: u32,
    /// When the oldest of them was closed.
    pub oldest: Option<SystemTime>,
    /// Chunks the store took.
    pub sent: u64,
    /// The store's answer to the last try, while it fails.
    pub error: Option<String>,
}

/// Sends a running trace's closed chunks to the store as they appear, oldest first, until `stop` is set: each
/// is fsynced, put create-only and then removed from the spool. While the store fails it retries with
/// [`backoff`]; what it has not sent when stopped stays for the sealed set.
pub async fn stream(
    dir: PathBuf,
    to: Destination,
    mut stop: tokio::sync::watch::Receiver<bool>,
    state: Arc<Mutex<Streamed>>,
) {
    let events = dir.join(sonde_probes::chunks::EVENTS_DIR);
    let mut attempts = 0;
    // One client for the trace (its connections are reused).
    let mut store = None;
    loop {
        let sent = send_closed(&events, &to, &mut store, &stop, &state).await;
        let wait = match sent {
            Ok(()) => {
                attempts = 0;
                update(&state, |s| s.error = None);
                STREAM_EVERY
            }
            Err(e) => {
                attempts += 1;
                tracing::debug!(session = %to.session, attempts, error = %e, "streaming chunks failed; will retry");
                update(&state, |s| s.error = Some(e.to_string()));
                backoff(attempts)
            }
        };
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

fn update(state: &Mutex<Streamed>, f: impl FnOnce(&mut Streamed)) {
    f(&mut state.lock().unwrap_or_else(|e| e.into_inner()))
}

async fn send_closed(
    events: &Path,
    to: &Destination,
    store: &mut Option<upload::Store>,
    stop: &tokio::sync::watch::Receiver<bool>,
    state: &Mutex<Streamed>,
) -> crate::Result<()> {
    let files = chunk_files(events);
    let oldest = files
        .first()
        .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
    let n = files.len() as u32;
    update(state, |s| {
        s.waiting = n;
        s.oldest = oldest;
    });
    if files.is_empty() {
        return Ok(());
    }
    let store = match store {
        Some(s) => &*s,
        None => &*store.insert(upload::Store::open(&to.store_url)?),
    };
    // Durable before the store sees it: a chunk the store does not take survives a crash of the node.
    let to_sync = files.clone();
    let events_dir = events.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for f in &to_sync {
            std::fs::File::open(f)?.sync_all()?;
        }
        sync_dir(&events_dir)
    })
    .await
    .map_err(std::io::Error::other)??;
    for f in files {
        if *stop.borrow() {
            break;
        }
        let name = format!(
            "{}/{}",
            sonde_probes::chunks::EVENTS_DIR,
            f.file_name().and_then(|n| n.to_str()).unwrap_or_default()
        );
        store.put_file(&to.prefix, &name, &f).await?;
        std::fs::remove_file(&f)?;
        update(state, |s| {
            s.waiting = s.waiting.saturating_sub(1);
            s.sent += 1;
        });
    }
    Ok(())
}

/// How a session's sets stand, from the spool: what the uploader (and the session, at its end) reports.
pub fn state_of(spool: &Path, namespace: &str, session: &str, last_error: Option<&str>) -> Upload {
    state_in(&find(spool).0, namespace, session, last_error)
}

/// [`state_of`], from the sealed sets already found.
fn state_in(
    sealed: &[(PathBuf, Parcel)],
    namespace: &str,
    session: &str,
    last_error: Option<&str>,
) -> Upload {
    let mine: Vec<&Parcel> = sealed
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.to.namespace == namespace && p.to.session == session)
        .collect();
    let oldest = mine
        .iter()
        .filter_map(|p| p.sealed.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .min();
    Upload {
        state: if mine.is_empty() {
            UploadState::Complete
        } else {
            UploadState::Pending
        },
        pending: mine.len() as u32,
        oldest_pending: oldest.map(Time),
        message: (!mine.is_empty()).then(|| last_error.unwrap_or("not uploaded yet").to_string()),
    }
}

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

/// The next wait after `attempts` failed tries: doubling from 1 s up to [`MAX_BACKOFF`], ±20 % jitter so many
/// sets (or agents) do not retry in lockstep.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1 << attempts.min(6)).min(MAX_BACKOFF);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    base.mul_f64(0.8 + f64::from(nanos % 400) / 1000.0)
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
        let api: Api<ProbeSession> = Api::namespaced(self.client.clone(), ns);
        // The session may write its own status between this read and the patch: the patch names the version it
        // read (a merge patch replaces the whole conditions list), and a conflict reads again.
        for _ in 0..3 {
            let Ok(Some(session)) = api.get_opt(name).await else {
                return;
            };
            let mut st = session.status.unwrap_or_default();
            let (ok, reason, message) = upload.condition(false, true, "");
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            Conditions::new(&mut st.conditions, session.metadata.generation, now).set(
                types::RESULTS_COMPLETE,
                ok,
                reason,
                message,
            );
            let mut patch = serde_json::json!({
                "metadata": {"resourceVersion": session.metadata.resource_version},
                "status": {"upload": upload, "conditions": st.conditions},
            });
            if let Some(urls) = &urls {
                patch["status"]["results"] = serde_json::json!(urls);
            }
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.told.insert(key, upload);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    tracing::warn!(session = %name, error = %e, "reporting the upload state");
                    return;
                }
            }
        }
        tracing::warn!(session = %name, "reporting the upload state: the session kept changing under it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(prefix: &str) -> Destination {
        Destination {
            store_url: "file:///nowhere".into(),
            prefix: prefix.into(),
            namespace: "ns".into(),
            session: "job-node".into(),
            stream: false,
            default_store: false,
        }
    }

    #[test]
    fn a_sealed_set_is_found_and_counted_until_delivered() {
        let spool = tempfile::tempdir().unwrap();
        let dir = spool.path().join("ns/job-node/a");
        start(&dir, &to("tracejobs/ns/job-1/node")).unwrap();
        std::fs::write(dir.join("summary.json"), b"{}").unwrap();
        let p = seal(
            &dir,
            &to("tracejobs/ns/job-1/node"),
            &[dir.join("summary.json")],
            true,
            false,
        )
        .unwrap();
        assert_eq!(p.files, vec!["summary.json"]);
        let (sealed, cut) = find(spool.path());
        assert_eq!((sealed.len(), cut.len()), (1, 0));
        let u = state_of(spool.path(), "ns", "job-node", Some("store down"));
        assert_eq!((u.state, u.pending), (UploadState::Pending, 1));
        assert!(u.condition(false, false, "").2.contains("store down"));
        assert_eq!(
            state_of(spool.path(), "ns", "other", None).state,
            UploadState::Complete
        );
    }

    #[tokio::test]
    async fn delivery_empties_the_spool_and_a_cut_off_trace_gets_a_prefix_of_its_own() {
        let spool = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut d = to("tracejobs/ns/job-1/node");
        d.store_url = format!("file://{}", store.path().display());
        let dir = spool.path().join("ns/job-node/a");
        start(&dir, &d).unwrap();
        std::fs::create_dir_all(dir.join("events")).unwrap();
        std::fs::write(dir.join("events/000000.ndjson.gz"), b"{\"n\":1}\n").unwrap();
        std::fs::write(dir.join("events/.000001.ndjson.gz.part"), b"half").unwrap();
        // The agent died here, mid-trace: at start-up the set is sealed as it is.
        seal_cut_off(spool.path());
        let (sealed, cut) = find(spool.path());
        assert_eq!((sealed.len(), cut.len()), (1, 0));
        let (dir, p) = &sealed[0];
        assert!(
            p.to.prefix
                .starts_with("tracejobs/ns/job-1/node/before-restart-"),
            "{}",
            p.to.prefix
        );
        assert!(!p.last);
        let urls = deliver(dir, p, &p.to.store_url).await.unwrap();
        assert_eq!(urls.len(), 1, "{urls:?}");
        assert!(urls[0].ends_with("/events/000000.ndjson.gz"), "{urls:?}");
        assert!(!dir.exists(), "the spool copy stayed");
        let key = urls[0].trim_start_matches("file://");
        assert_eq!(std::fs::read(key).unwrap(), b"{\"n\":1}\n");
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
        let api = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let metrics = crate::metrics::AgentMetrics::default();
        let mut u = Uploader::new(
            spool.path().to_path_buf(),
            kube::Client::try_from(api).unwrap(),
            metrics.clone(),
            gates.clone(),
            Limits {
                max_spool_bytes: 100 << 20,
                max_spool_bytes_per_namespace: 1 << 20,
                ..Default::default()
            },
            String::new(),
            Live::default(),
        );
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
        let api = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let mut u = Uploader::new(
            spool.path().to_path_buf(),
            kube::Client::try_from(api).unwrap(),
            crate::metrics::AgentMetrics::default(),
            SpoolGates::default(),
            Limits {
                max_spool_bytes: u64::MAX,
                max_spool_bytes_per_namespace: u64::MAX,
                ..Default::default()
            },
            up.clone(),
            Live::default(),
        );
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

    /// A running trace's closed chunks go to the store and leave the spool; the one being written stays. An
    /// agent that finds the trace's directory and no session resuming it seals it for its own prefix.
    #[tokio::test(flavor = "multi_thread")]
    async fn closed_chunks_stream_and_an_unresumed_trace_is_sealed() {
        let spool = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut d = to("tracejobs/ns/job-1/node");
        d.store_url = format!("file://{}", store.path().display());
        d.stream = true;
        let dir = spool.path().join("ns/job-node/abcd1234");
        start(&dir, &d).unwrap();
        let events = dir.join("events");
        std::fs::create_dir_all(&events).unwrap();
        for f in [
            "000000.ndjson.gz",
            "000001.ndjson.gz",
            ".000002.ndjson.gz.part",
        ] {
            std::fs::write(events.join(f), f.as_bytes()).unwrap();
        }
        std::fs::write(events.join("manifest.json"), b"{}").unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let state = Arc::new(Mutex::new(Streamed::default()));
        let task = tokio::spawn(stream(dir.clone(), d.clone(), stopped, state.clone()));
        let stored = store.path().join("tracejobs/ns/job-1/node/events");
        for _ in 0..50 {
            if state.lock().unwrap().sent == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(state.lock().unwrap().sent, 2);
        assert_eq!(
            std::fs::read(stored.join("000001.ndjson.gz")).unwrap(),
            b"000001.ndjson.gz"
        );
        assert!(!events.join("000000.ndjson.gz").exists());
        assert!(events.join(".000002.ndjson.gz.part").exists());

        // A session still holds it: left alone.
        let live = Live::default();
        assert!(claim(&live, &dir));
        seal_orphans(spool.path(), &live);
        assert!(find(spool.path()).0.is_empty());
        release(&live, &dir);
        std::fs::write(events.join("000002.ndjson.gz"), b"c").unwrap();
        seal_orphans(spool.path(), &live);
        let (sealed, _) = find(spool.path());
        assert_eq!(sealed.len(), 1);
        let p = &sealed[0].1;
        assert!(p.cut_off && !p.last);
        assert_eq!(
            p.to.prefix, "tracejobs/ns/job-1/node",
            "an orphan keeps its prefix"
        );
        assert_eq!(p.files, ["events/000002.ndjson.gz", "events/manifest.json"]);
        assert!(
            !claim(&live, &dir),
            "a sealed directory is not written into"
        );
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
                let (head, _) = crate::upload::tests::read_request(&mut conn).await;
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
        let spool = tempfile::tempdir().unwrap();
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
        let uploader = |metrics: &crate::metrics::AgentMetrics| {
            let api = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            Uploader::new(
                spool.path().to_path_buf(),
                kube::Client::try_from(api).unwrap(),
                metrics.clone(),
                SpoolGates::default(),
                Limits {
                    max_spool_bytes: u64::MAX,
                    max_spool_bytes_per_namespace: u64::MAX,
                    ..Default::default()
                },
                String::new(),
                Live::default(),
            )
        };

        let (port, mut seen) = answering("410 Gone", "tracejob ns/deleted does not exist").await;
        let gone = set("deleted", port);
        let metrics = crate::metrics::AgentMetrics::default();
        let mut u = uploader(&metrics);
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
        let metrics = crate::metrics::AgentMetrics::default();
        let mut u = uploader(&metrics);
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

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter() {
        let b1 = backoff(1);
        assert!(
            b1 >= Duration::from_millis(1600) && b1 <= Duration::from_millis(2400),
            "{b1:?}"
        );
        let b9 = backoff(9);
        assert!(
            b9 <= MAX_BACKOFF.mul_f64(1.2) && b9 >= MAX_BACKOFF.mul_f64(0.8),
            "{b9:?}"
        );
    }
}
