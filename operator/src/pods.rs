//! The operator's one cluster-wide pod watch. Its store is what placement reads (no LIST of pods per
//! reconcile), and each pod change (added, changed or deleted) goes to every controller, so a pod that starts
//! or stops matching wakes the owners of its namespace (one watch, not one per controller). Pods are kept with
//! only the fields placement reads, so the cache stays small on a large cluster.
//!
//! The fan-out is a channel per controller rather than kube-runtime's shared reflector handles: those pass on
//! no deletes, stall for good on an object deleted before they read it, and hold the watch back until every
//! handle reads (kube-runtime 5.0).

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

/// Pod changes for one controller; it ends when the watch does.
pub type PodEvents = Pin<Box<dyn Stream<Item = Result<Pod, watcher::Error>> + Send>>;

/// The pod store, one stream of pod changes per controller (`controllers` of them), and the watch that fills
/// both (run it beside the controllers).
pub fn watch(
    client: Client,
    controllers: usize,
) -> (Store<Pod>, Vec<PodEvents>, impl Future<Output = ()>) {
    let (store, writer) = reflector::store();
    let (senders, events): (Vec<_>, Vec<PodEvents>) = (0..controllers)
        .map(|_| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Pod>();
            let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok);
            (tx, Box::pin(stream) as PodEvents)
        })
        .unzip();
    let run = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .for_each(move |event| {
            match event {
                // The first list (and a re-list after the watch lapsed) as well as changes: a controller's queue
                // takes each owner once however many of its pods changed.
                Ok(
                    watcher::Event::Apply(pod)
                    | watcher::Event::Delete(pod)
                    | watcher::Event::InitApply(pod),
                ) => {
                    for tx in &senders {
                        // Unbounded: a controller that is behind never holds the watch (or the store) back.
                        let _ = tx.send(pod.clone());
                    }
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(e) => tracing::warn!(error = %e, "watching pods"),
            }
            std::future::ready(())
        });
    (store, events, run)
}

/// Keeps what placement reads: name, namespace, uid, labels, deletion, node and phase.
fn slim(pod: &mut Pod) {
    let m = &mut pod.metadata;
    m.managed_fields = None;
    m.annotations = None;
    m.owner_references = None;
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    pod.status = Some(PodStatus {
        phase,
        ..Default::default()
    });
}
