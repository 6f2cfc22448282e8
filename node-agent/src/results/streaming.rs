//! A running trace's events on their way to the store while it runs, so a long trace's results are readable as
//! they are captured and the spool holds only what the store has not taken yet. The chunk writer renames each
//! chunk to its final name once it is whole; [`stream`] (one task per trace, started and stopped by the
//! session) fsyncs each closed chunk, puts it create-only under `<prefix>/events/` and then removes it from the
//! spool; the manifest keeps listing it. While the store refuses, it retries with [`super::backoff`] and the
//! session's heartbeat reports what is waiting ([`Streamed`]). What is left when the trace ends (chunks the
//! store did not take, the manifest, summary and the other files) is sealed as one set ([`super::spool`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::backoff;
use super::spool::{Destination, chunk_files, sync_dir};
use super::store::Store;

/// How often a running trace looks for closed chunks to send.
const STREAM_EVERY: Duration = Duration::from_millis(500);

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
    store: &mut Option<Store>,
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
        None => &*store.insert(Store::open(&to.store_url)?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::recovery::seal_orphans;
    use crate::results::spool::{Live, claim, find, release, start};
    use crate::results::tests::to;

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
}
