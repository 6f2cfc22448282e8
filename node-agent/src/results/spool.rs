//! The spool: the node's directory of result sets on their way to the store, and the only state the results
//! layer keeps across restarts (everything else is derived from what is found here). A session's run writes in
//! a directory of its own: [`start`] records its [`Destination`] (`destination.json`) before anything else, so
//! a set a restart cuts off can still be sealed for the right place ([`super::recovery`]); [`seal`] fsyncs the
//! finished files and writes the marker, `upload.json` (a [`Parcel`]); [`deliver`] puts a sealed set to the
//! store and only then removes it. [`Live`] is the set of directories running sessions hold ([`claim`],
//! [`release`]), which recovery and the uploader leave alone.
//!
//! Layout: a trace's directory is the session's (`<namespace>/<session>/<uid first 8>/`), not one run's, so an
//! agent restarted mid-trace resumes it and continues its chunk sequence; a policy writes one directory per run
//! (`<uid first 8>-<start ms>/`), a `window-NNNNNN/` below it per window. Sets leave the spool only once the
//! store has taken every file: puts overwrite the same key with the same bytes (chunks are create-only and
//! count as done when the same object is there), so a set delivered again after a crash between its last put
//! and its removal leaves no duplicate.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::store;

/// The marker of a sealed result set.
pub const MARKER: &str = "upload.json";
/// Where a session's results go, written when it starts, so a set cut off by a restart can still be sealed.
pub const DESTINATION: &str = "destination.json";

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

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
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
    let urls = store::upload(store_url, &p.to.prefix, dir, &files).await?;
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

/// The closed chunks in an events folder, in sequence order (a chunk being written has a hidden name).
pub(super) fn chunk_files(events: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(events)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && store::is_chunk(n))
        })
        .collect();
    files.sort();
    files
}
