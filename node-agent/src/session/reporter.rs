//! A session's status, written by server-side apply: conditions, counts, upload state and the heartbeat. It is
//! one of the two writers of a session's status: the uploader patches `status.upload`, the `ResultsComplete`
//! condition and a trace's `status.results` once the session's own try is over. Which fields each writes, when,
//! and why they do not undo each other: [`crate::results::status`].

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sonde_crds::conditions::Conditions;
use sonde_crds::conditions::types;
use sonde_crds::{Phase, ProbeSession, ProbeSessionStatus, Upload};

use crate::metrics::AgentMetrics;

use super::MANAGER;

/// Writes status by server-side apply; failures are logged and retried on the next beat, never fatal: the
/// trace goes on (and ends on time) without the API server.
pub(super) struct Reporter {
    pub(super) api: Api<ProbeSession>,
    pub(super) name: String,
    pub(super) generation: Option<i64>,
    pub(super) status: ProbeSessionStatus,
    /// Events not kept in the results so far, by reason (`status.counts.notKept`).
    pub(super) not_kept: std::collections::BTreeMap<String, u64>,
}

impl Reporter {
    pub(super) fn condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        Conditions::new(&mut self.status.conditions, self.generation, now)
            .set(type_, status, reason, message);
    }

    /// Ends the session Failed with `reason` (its `Failed` condition's, and the `reason` label of
    /// `sonde_agent_sessions_failed`) and `message`.
    pub(super) fn fail(&mut self, metrics: &AgentMetrics, reason: &'static str, message: String) {
        self.status.phase = Phase::Failed;
        self.status.message = Some(message.clone());
        self.condition(types::FAILED, true, reason, message);
        metrics
            .sessions_failed
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Where the results stand: `status.upload` and the `ResultsComplete` condition.
    pub(super) fn report_upload(&mut self, upload: Upload) {
        let (ok, reason, message) = upload.condition(false, false, "");
        self.condition(types::RESULTS_COMPLETE, ok, reason, message);
        self.status.upload = Some(upload);
    }

    pub(super) async fn write(&mut self) -> bool {
        self.status.heartbeat = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        self.status.observed_generation = self.generation;
        let body = serde_json::json!({
            "apiVersion": "sonde.dev/v1alpha1", "kind": "ProbeSession", "status": self.status,
        });
        match self
            .api
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(session = %self.name, error = %e, "status update failed; will retry");
                false
            }
        }
    }
}
