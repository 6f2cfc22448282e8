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
        })
    }
}

impl Context {
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
