//! The operator's one cluster-wide pod watch. Its store is what placement reads (no LIST of pods per
//! reconcile) and its events wake both controllers (one watch, not one per controller). Pods are kept with
//! only the fields placement reads, so the cache stays small on a large cluster.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

/// Events buffered for the controllers before the watch waits for them.
const BUFFER: usize = 1024;

/// The pods, as the watch keeps them.
pub struct Pods {
    pub store: Store<Pod>,
    /// Pod events for the controllers (each clones its own); None only with a store that is not shared.
    pub events: Option<ReflectHandle<Pod>>,
}

/// The shared pod store and the watch that fills it (run it beside the controllers).
pub fn watch(client: Client) -> (Pods, impl Future<Output = ()>) {
    let (store, writer) = reflector::store_shared(BUFFER);
    let events = writer.subscribe();
    let run = watcher(Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(slim)
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "watching pods");
            }
        });
    (Pods { store, events }, run)
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
