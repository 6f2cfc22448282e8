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

/// What changes with every event (counts, how many sets wait for the store, the numbers in a condition's message)
/// is written at most this often while a session runs, with the kernel CPU figure; anything a reader or the operator
/// acts on (phase, a condition's status or reason, attach, results, the upload state) at the next beat after it
/// changes. Liveness is the node's Lease (`crate::liveness`), not these writes: an idle session writes nothing.
pub(crate) const COUNTS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes status by server-side apply; failures are logged and retried on the next beat, never fatal: the
/// trace goes on (and ends on time) without the API server.
pub(super) struct Reporter {
    pub(super) api: Api<ProbeSession>,
    pub(super) name: String,
    pub(super) generation: Option<i64>,
    pub(super) status: ProbeSessionStatus,
    /// Events not kept in the results so far, by reason (`status.counts.notKept`).
    pub(super) not_kept: std::collections::BTreeMap<String, u64>,
    /// What the last write that went through said, and when.
    pub(super) written: Option<(ProbeSessionStatus, std::time::Instant)>,
    /// The node's share of writes that can wait, and this session's name in it.
    share: (super::status_share::StatusShare, String),
}

/// The part of a status that is written as soon as it changes: `st` without what moves with every event.
fn at_once(st: &ProbeSessionStatus) -> ProbeSessionStatus {
    let mut st = st.clone();
    st.heartbeat = None;
    st.counts = Default::default();
    st.kernel_cpu_percent = None;
    if let Some(u) = &mut st.upload {
        u.pending = 0;
        u.oldest_pending = None;
        u.message = None;
    }
    for c in &mut st.conditions {
        c.message.clear();
    }
    st
}

impl Reporter {
    /// The reporter of `job`'s session, which has written nothing yet.
    pub(super) fn new(job: &super::SessionJob) -> Reporter {
        Reporter {
            api: job.api.clone(),
            name: job.name.clone(),
            generation: job.generation,
            status: ProbeSessionStatus::default(),
            not_kept: Default::default(),
            written: None,
            share: (
                job.status_share.clone(),
                format!("{}/{}", job.namespace, job.name),
            ),
        }
    }

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

    /// Writes the status if it has something new (see [`COUNTS_EVERY`]); true when it did, or had nothing to
    /// write. The beat of a running session calls this; a step that must be seen (attach, a window, the end)
    /// calls [`Reporter::write`].
    pub(super) async fn report(&mut self) -> bool {
        self.status.observed_generation = self.generation;
        let due = match &self.written {
            None => true,
            Some((last, at)) => {
                // The kernel CPU figure moves with the whole node's activity (the programs run on every hook
                // hit, traced or not): it goes along with a write, never causes one.
                let mut now = self.status.clone();
                now.heartbeat.clone_from(&last.heartbeat);
                now.kernel_cpu_percent = last.kernel_cpu_percent;
                let (share, me) = &self.share;
                now != *last
                    && (at_once(&now) != at_once(last)
                        || (at.elapsed() >= COUNTS_EVERY && share.take(me, *at)))
            }
        };
        !due || self.write().await
    }

    /// Writes the final status: it matters, so it is tried for 30 s if the API server is briefly away.
    pub(super) async fn write_final(&mut self) {
        for _ in 0..30 {
            if self.write().await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
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
            Ok(_) => {
                self.written = Some((self.status.clone(), std::time::Instant::now()));
                self.share.0.forget(&self.share.1);
                true
            }
            Err(e) => {
                tracing::warn!(session = %self.name, error = %e, "status update failed; will retry");
                false
            }
        }
    }
}

impl Drop for Reporter {
    /// An ended session waits for no share of the node's writes.
    fn drop(&mut self) {
        self.share.0.forget(&self.share.1);
    }
}
