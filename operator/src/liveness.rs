//! Which agents are alive: their nodes' Leases (`sonde_crds::agent_lease_name`), renewed by each agent every 10 s
//! for 40 s and watched here in the agents' namespace. A session's agent is alive while its node's Lease is, so a
//! session's status is written when it has something to say, not to prove its agent lives: one small write per
//! node every 10 s instead of one per session every 2 s.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use sonde_crds::{AGENT_LEASE_LABEL, AGENT_LEASE_NODE_ANNOTATION, agent_lease_name};

use crate::rollup::later;

/// The agents' Leases, as the watch last saw them.
#[derive(Clone)]
pub struct AgentLeases {
    store: Store<Lease>,
    namespace: String,
}

impl AgentLeases {
    /// The store and the watch that fills it (run it beside the controllers).
    pub fn watch(client: Client, namespace: &str) -> (AgentLeases, impl Future<Output = ()>) {
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().labels(&format!("{AGENT_LEASE_LABEL}=true"));
        let run = watcher(Api::<Lease>::namespaced(client, namespace), config)
            .default_backoff()
            .reflect(writer)
            .for_each(|event| {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watching the agents' leases");
                }
                std::future::ready(())
            });
        let leases = AgentLeases {
            store,
            namespace: namespace.into(),
        };
        (leases, run)
    }

    /// No Lease at all (tests of the reconcilers that have no agents).
    pub fn none() -> AgentLeases {
        AgentLeases {
            store: reflector::store().0,
            namespace: String::new(),
        }
    }

    /// Until when the agent of `node` said it is alive: its Lease's renewal plus its duration. None without a
    /// Lease, or with one that names another node (only its own node's agent may write it: the chart's
    /// admission policy checks the annotation against the writer's token).
    pub fn alive_until(&self, node: &str) -> Option<Timestamp> {
        let lease = self
            .store
            .get(&ObjectRef::new(&agent_lease_name(node)).within(&self.namespace))?;
        let names = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(AGENT_LEASE_NODE_ANNOTATION));
        if names.map(String::as_str) != Some(node) {
            return None;
        }
        until(lease.spec.as_ref()?)
    }
}

fn until(spec: &k8s_openapi::api::coordination::v1::LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref()?.0;
    let lasts = SignedDuration::from_secs(spec.lease_duration_seconds?.max(0).into());
    Some(later(renewed, lasts))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    #[test]
    fn a_lease_lasts_its_duration_from_its_renewal_and_never_overflows() {
        let at = |s| Timestamp::from_second(s).unwrap();
        let spec = |renew: Timestamp, secs| LeaseSpec {
            renew_time: Some(MicroTime(renew)),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        };
        assert_eq!(until(&spec(at(100), 40)), Some(at(140)));
        assert_eq!(until(&spec(Timestamp::MAX, 40)), Some(Timestamp::MAX));
        assert_eq!(until(&spec(at(100), -5)), Some(at(100)));
        assert_eq!(until(&LeaseSpec::default()), None);
    }
}
