//! Leader election on a coordination.k8s.io Lease: one replica reconciles, the others wait. Updates carry the
//! resourceVersion they read, so two candidates cannot both win; a leader that cannot renew in time stops.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::error::Result;

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    ttl: Duration,
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        ttl: Duration,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            ttl,
        }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        loop {
            if self.try_acquire_or_renew().await? {
                tracing::info!(lease = %self.name, identity = %self.identity, "leading");
                return Ok(());
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }

    /// Renews until renewal fails for longer than the lease lasts; returns when leadership is lost.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease");
                    if last_ok.elapsed() >= self.ttl {
                        return;
                    }
                }
            }
        }
    }

    /// Hands the lease over when this process stops (a rollout's SIGTERM): the standby takes it at its next
    /// poll instead of waiting out the lease, and no old leader keeps reconciling with the old configuration.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "lease released"),
            Err(e) => tracing::warn!(error = %e, "releasing the lease; it expires by itself"),
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let ttl_secs = self.ttl.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::core::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(ttl_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(t), Some(d)) => {
                crate::rollup::later(t.0, SignedDuration::from_secs(d.into())) < now
            }
            _ => true,
        };
        // An empty holder is a lease handed over (`release`): free at once.
        let vacant = spec
            .holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty();
        if !mine && !expired && !vacant {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(ttl_secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
