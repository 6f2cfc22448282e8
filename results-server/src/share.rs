//! Each namespace's share of the server's volume (`--max-mib-per-namespace`). Agents upload into one volume for
//! every tenant: without a share, one namespace's results could fill it and then every namespace's uploads would
//! fail. A namespace that holds its share or more is refused (507, saying so and how to free it); its agents keep
//! the results spooled and retry, and the other namespaces write on.
//!
//! What a namespace holds is the size of its objects under `tracejobs/<ns>/` and `probepolicies/<ns>/`. Listing
//! them walks the namespace's files, so it is done at most once per `every` for a namespace, and one listing at a
//! time: its puts wait for a listing under way instead of starting their own. Between listings the figure grows
//! by each accepted put. It can run high (a put counted and then listed as well, an object written again), never
//! for long: the next listing sets it right, and that is also how deleted results free the share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::{Error, Result};

/// How old a namespace's figure may be before a put lists its objects again.
pub const LIST_EVERY: Duration = Duration::from_secs(30);

/// A metric per namespace (only namespaces with a session of some node upload, so the labels are bounded).
pub type ByNamespace<M> = Family<Vec<(&'static str, String)>, M>;

pub struct Share {
    /// 0: no share.
    max_bytes: u64,
    every: Duration,
    /// Per namespace, its figure behind an async lock: held across a listing, so a namespace lists once at a
    /// time while the others go on.
    namespaces: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Held>>>>>,
    /// Puts refused because their namespace held its share.
    pub refused: ByNamespace<Counter>,
    /// Bytes each namespace holds, as last listed plus the puts accepted since.
    pub held: ByNamespace<Gauge>,
}

#[derive(Clone, Copy)]
struct Held {
    bytes: u64,
    listed: Instant,
}

impl Share {
    /// A share of `max_mib` MiB per namespace (0: none), listed afresh at most every `every`.
    pub fn new(max_mib: u64, every: Duration) -> Share {
        Share {
            max_bytes: max_mib.saturating_mul(1 << 20),
            every,
            namespaces: Mutex::new(HashMap::new()),
            refused: Family::default(),
            held: Family::default(),
        }
    }

    fn slot(&self, ns: &str) -> Arc<tokio::sync::Mutex<Option<Held>>> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.entry(ns.to_string()).or_default().clone()
    }

    fn label(ns: &str) -> Vec<(&'static str, String)> {
        vec![("namespace", ns.to_string())]
    }

    /// Whether namespace `ns` may write more into `store` (below `base`, the default location's path): refused
    /// when it holds its share or more. Lists its objects when its figure is older than `every` at `now`.
    pub async fn check(
        &self,
        store: &dyn ObjectStore,
        base: &Path,
        ns: &str,
        now: Instant,
    ) -> Result<()> {
        self.check_with(ns, now, || holdings(store, base, ns)).await
    }

    /// [`Share::check`], with `list` telling what the namespace holds.
    async fn check_with<F>(&self, ns: &str, now: Instant, list: impl FnOnce() -> F) -> Result<()>
    where
        F: Future<Output = Result<u64>>,
    {
        if self.max_bytes == 0 {
            return Ok(());
        }
        let slot = self.slot(ns);
        let mut held = slot.lock().await;
        let bytes = match *held {
            // `now` may predate a listing this put waited for: that one is fresh too.
            Some(h) if now.saturating_duration_since(h.listed) < self.every => h.bytes,
            _ => {
                let bytes = list().await?;
                *held = Some(Held { bytes, listed: now });
                bytes
            }
        };
        drop(held);
        self.show(ns, bytes);
        if bytes >= self.max_bytes {
            self.refused.get_or_create(&Share::label(ns)).inc();
            return Err(Error::OverShare {
                namespace: ns.to_string(),
                held: bytes,
                share: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Counts an accepted put of `bytes` until the next listing sees it.
    pub async fn add(&self, ns: &str, bytes: u64) {
        if self.max_bytes == 0 {
            return;
        }
        let slot = self.slot(ns);
        let mut held = slot.lock().await;
        if let Some(h) = held.as_mut() {
            h.bytes = h.bytes.saturating_add(bytes);
            let now = h.bytes;
            drop(held);
            self.show(ns, now);
        }
    }

    fn show(&self, ns: &str, bytes: u64) {
        self.held
            .get_or_create(&Share::label(ns))
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The bytes of a namespace's objects below `base`.
async fn holdings(store: &dyn ObjectStore, base: &Path, ns: &str) -> Result<u64> {
    let mut bytes = 0u64;
    for kind in sonde_crds::results::OwnerKind::ALL {
        let prefix = Path::from(
            format!("{}/{}", base.as_ref(), kind.namespace_folder(ns)).trim_start_matches('/'),
        );
        bytes = store
            .list(Some(&prefix))
            .try_fold(
                bytes,
                |sum, o| async move { Ok(sum.saturating_add(o.size)) },
            )
            .await
            .map_err(Error::Store)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    const MIB: usize = 1 << 20;

    async fn put(store: &InMemory, key: &str, bytes: usize) {
        store
            .put(&Path::from(key), vec![0u8; bytes].into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_namespace_past_its_share_is_refused_and_the_others_are_not() {
        let store = InMemory::new();
        let base = Path::from("results");
        put(
            &store,
            "results/tracejobs/team-a/ping-0a1b2c3d/node-1/summary.json",
            MIB,
        )
        .await;
        put(
            &store,
            "results/probepolicies/team-a/slow-0a1b2c3d/node-1/folded.txt",
            MIB,
        )
        .await;
        // Not team-a's: another namespace whose name starts alike, and outside the base path.
        put(
            &store,
            "results/tracejobs/team-ab/ping-0a1b2c3d/node-1/summary.json",
            5 * MIB,
        )
        .await;
        put(
            &store,
            "tracejobs/team-a/ping-0a1b2c3d/node-1/summary.json",
            5 * MIB,
        )
        .await;
        let share = Share::new(2, LIST_EVERY);
        let now = Instant::now();
        let refused = share.check(&store, &base, "team-a", now).await.unwrap_err();
        assert!(
            matches!(&refused, Error::OverShare { namespace, held, share }
                if namespace == "team-a" && *held == 2 * MIB as u64 && *share == 2 * MIB as u64),
            "{refused:?}"
        );
        assert_eq!(refused.status().as_u16(), 507);
        let message = refused.to_string();
        assert!(
            message.starts_with(
                "namespace team-a holds 2 MiB of results on this server's volume, its share is 2 MiB \
                 (Helm value results.persistence.maxMiBPerNamespace)"
            ),
            "{message}"
        );
        share.check(&store, &base, "team-b", now).await.unwrap();
        assert_eq!(
            share.refused.get_or_create(&Share::label("team-a")).get(),
            1
        );
        assert_eq!(
            share.refused.get_or_create(&Share::label("team-b")).get(),
            0
        );
        assert_eq!(
            share.held.get_or_create(&Share::label("team-a")).get(),
            2 * MIB as i64
        );
        // No share: nothing is listed or refused.
        Share::new(0, LIST_EVERY)
            .check(&store, &base, "team-a", now)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn puts_between_listings_count_and_a_listing_after_deletions_frees_the_share() {
        let store = InMemory::new();
        let base = Path::default();
        let share = Share::new(2, LIST_EVERY);
        let t0 = Instant::now();
        share.check(&store, &base, "team-a", t0).await.unwrap();
        // Accepted puts count although the store is not listed again before LIST_EVERY.
        let key = "tracejobs/team-a/ping-0a1b2c3d/node-1/events/000001.ndjson.gz";
        put(&store, key, 2 * MIB).await;
        share.add("team-a", 2 * MIB as u64).await;
        let later = t0 + LIST_EVERY / 2;
        assert!(matches!(
            share.check(&store, &base, "team-a", later).await,
            Err(Error::OverShare { held, .. }) if held == 2 * MIB as u64
        ));
        // Deleted, but not listed yet: still refused until the figure is LIST_EVERY old.
        store.delete(&Path::from(key)).await.unwrap();
        assert!(share.check(&store, &base, "team-a", later).await.is_err());
        share
            .check(&store, &base, "team-a", t0 + LIST_EVERY)
            .await
            .unwrap();
        assert_eq!(share.held.get_or_create(&Share::label("team-a")).get(), 0);
    }

    #[tokio::test]
    async fn a_namespace_lists_once_however_many_puts_wait_and_the_others_do_not_wait() {
        let share = Share::new(2, LIST_EVERY);
        let now = Instant::now();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        let lists = &counter;
        let list = move || async move {
            lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(MIB as u64)
        };
        let puts = (0..8).map(|_| share.check_with("team-a", now, list));
        for put in futures::future::join_all(puts).await {
            put.unwrap();
        }
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A namespace whose listing hangs holds up none of the others.
        let stuck = share.check_with("team-b", now, std::future::pending);
        let other = share.check_with("team-c", now, list);
        tokio::select! {
            _ = stuck => panic!("a listing that never ends ended"),
            r = other => r.unwrap(),
        }
        // A listing that fails fails the put, and the next put lists again.
        let failed = share.check_with("team-d", now, || async {
            Err(Error::Store(object_store::Error::NotImplemented {
                operation: "list".into(),
                implementer: "test".into(),
            }))
        });
        assert!(matches!(failed.await, Err(Error::Store(_))));
        share.check_with("team-d", now, list).await.unwrap();
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
