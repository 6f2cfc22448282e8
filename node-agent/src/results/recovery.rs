//! What a previous agent process left in the spool, and what becomes of it. A sealed set is the uploader's as
//! it is. A directory with a destination and no marker was being written when that process died, and is:
//! - a policy window's: sealed as it is at start-up ([`seal_cut_off`], before any session runs), with its
//!   events until the restart, and uploaded under `<prefix>/before-restart-<time>`;
//! - a trace's: left for its session to resume (a trace's directory is the session's, across processes, and
//!   its chunk sequence continues), unless no session takes it back within [`ORPHAN_AFTER`] of start-up (its
//!   session was deleted, or its deadline passed while the agent was down): the uploader then seals it as it
//!   is ([`seal_orphans`]), manifest incomplete, for upload under its own prefix.
//!
//! Both work from what is on disk, not from what the previous process remembered, so they hold across any
//! number of restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::spool::{DESTINATION, Live, chunk_files, find, seal};

/// A trace directory no session resumed this long after the agent started is an orphan, sealed for upload.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(30);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::spool::{deliver, start};
    use crate::results::tests::to;

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
}
