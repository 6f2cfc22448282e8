use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::metrics::Metrics;
use sonde_crds::NodeWide;

/// What every reconciler gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Which namespaces may trace whole nodes.
    pub node_wide: NodeWide,
    /// Names of the admin's storage locations, when the operator was told them.
    pub storage_locations: Option<std::collections::BTreeSet<String>>,
    /// Consecutive reconcile failures by object, for the error policies' requeue.
    pub backoff: crate::backoff::Backoff,
    /// Every pod of the cluster, from the operator's one pod watch ([`crate::pods`]).
    pub pods: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
    /// The agents' Leases: which nodes' sessions are alive ([`crate::liveness`]).
    pub leases: crate::liveness::AgentLeases,
    /// When each owner's status was last written, by uid ([`crate::owner::announce`]).
    status_writes: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        node_wide: NodeWide,
        storage_locations: Option<std::collections::BTreeSet<String>>,
        pods: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
        leases: crate::liveness::AgentLeases,
    ) -> Arc<Context> {
        let reporter = Reporter {
            controller: "sonde-operator".into(),
            instance,
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            node_wide,
            storage_locations,
            backoff: Default::default(),
            pods,
            leases,
            status_writes: Default::default(),
        })
    }
}

impl Context {
    /// When this process last wrote the status of the owner with `uid`.
    pub fn status_written(&self, uid: &str) -> Option<std::time::Instant> {
        let writes = self.status_writes.lock().unwrap_or_else(|e| e.into_inner());
        writes.get(uid).copied()
    }

    pub fn wrote_status(&self, uid: &str) {
        let mut writes = self.status_writes.lock().unwrap_or_else(|e| e.into_inner());
        // Owners come and go: forget those not written for an hour.
        writes.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(3600));
        writes.insert(uid.to_string(), std::time::Instant::now());
    }

    /// Publishes a Kubernetes Event about `reference`; a failure is logged, never fatal to a reconcile.
    pub async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "publishing an Event");
        }
    }
}

/// What a controller stream yields per reconcile; errors were already counted by the error policy.
pub async fn log_reconcile<T, E: std::fmt::Display>(r: std::result::Result<T, E>) {
    if let Err(e) = r {
        tracing::debug!(error = %e, "reconcile");
    }
}
