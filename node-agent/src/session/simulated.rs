//! A session without a kernel, for the fleet harness (`bench/fleet.sh`, the fleet test): the agent's own session
//! watch, refusal, reporter, beat, deadline and final status, with the probe replaced by a counter that captures
//! `rate` events per second. What the API server sees from it is what it sees from a real session on a node whose
//! probe counts as much; nothing is attached, spooled or uploaded, and a policy's windows are not rolled.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sonde_crds::conditions::types;
use sonde_crds::{Counts, Phase};
use tokio::sync::watch;

use super::{Reporter, STATUS_EVERY, SessionJob, deadline_instant, sleep_until, to_system};

/// What the agent's watch starts for each session: [`run`] with this rate.
pub(crate) fn runner(rate: u64) -> crate::agent::RunSession {
    std::sync::Arc::new(move |job, _targets, deleted, _drained| Box::pin(run(job, rate, deleted)))
}

/// Runs one simulated session to its deadline or its delete.
pub async fn run(job: SessionJob, rate: u64, mut deleted: watch::Receiver<bool>) {
    let mut rep = Reporter::new(&job);
    let deadline = job.spec.deadline.as_ref().map(|t| to_system(&t.0));
    if let Some((reason, why)) = job.refusal(deadline) {
        rep.fail(&job.metrics, reason, why);
        rep.write().await;
        return;
    }
    rep.status.phase = Phase::Running;
    rep.status.attach_strategy = Some("simulated".into());
    rep.status.attached_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    rep.condition(types::ATTACHED, true, "Attached", "attached via simulated");
    rep.write().await;
    let started = tokio::time::Instant::now();
    let until = deadline_instant(deadline);
    let mut beat = tokio::time::interval(STATUS_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let captured = |at: tokio::time::Instant| (at - started).as_secs() * rate;
    loop {
        tokio::select! {
            _ = sleep_until(until) => break,
            r = deleted.changed() => if r.is_err() || *deleted.borrow() { return },
            _ = beat.tick() => {
                rep.status.counts = Counts::new(captured(tokio::time::Instant::now()), 0, 0, 0);
                let _ = tokio::time::timeout(STATUS_EVERY, rep.report()).await;
            }
        }
    }
    rep.status.counts = Counts::new(captured(tokio::time::Instant::now()), 0, 0, 0);
    rep.status.phase = Phase::Succeeded;
    rep.condition(
        types::COMPLETE,
        true,
        "Completed",
        "simulated session reached its deadline",
    );
    rep.write_final().await;
}
