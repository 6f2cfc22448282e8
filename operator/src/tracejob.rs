//! The TraceJob reconciler: resolve the target to nodes, apply one ProbeSession per node (server-side apply, so
//! a restarted operator converges on the same objects instead of making duplicates), roll statuses up, emit
//! Events on transitions, delete the job after its TTL.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use sonde_crds::conditions;
use sonde_crds::{Phase, ProbeSession, TraceJob, TraceJobStatus, UploadState};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::owner;
use crate::placement;
use crate::rollup::{self, REPORT_GRACE, Unplaced};

pub async fn run(ctx: Arc<Context>, pods: crate::pods::PodEvents) {
    owner::run::<TraceJob, _, _>(ctx, pods, reconcile).await;
}

#[tracing::instrument(skip_all, fields(namespace = job.namespace().unwrap_or_default(), name = %job.name_any()))]
pub async fn reconcile(job: Arc<TraceJob>, ctx: Arc<Context>) -> Result<Action> {
    owner::reconcile(job, ctx, |job, ctx, ns| async move {
        apply(job, &ctx, &ns).await
    })
    .await
}

async fn apply(job: Arc<TraceJob>, ctx: &Context, ns: &str) -> Result<Action> {
    let name = job.name_any();
    let uid = job.uid().unwrap_or_default();
    let jobs: Api<TraceJob> = Api::namespaced(ctx.client.clone(), ns);
    let sessions_api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);
    let old = job.status.clone();
    let now = Timestamp::now();

    if let Some(st) = old.as_ref().filter(|s| s.phase.is_finished()) {
        // Finished, but results still on their way: the agents report late uploads on the sessions.
        if st
            .upload
            .as_ref()
            .is_some_and(|u| u.state == UploadState::Pending)
        {
            let sessions = placement::owned_sessions(&sessions_api, &uid).await?;
            let mut next = st.clone();
            rollup::upload_rollup(&mut next, &sessions, job.metadata.generation, &Time(now));
            next.results = sessions
                .iter()
                .filter_map(|s| s.status.as_ref())
                .flat_map(|s| s.results.clone())
                .collect();
            if &next != st {
                owner::patch_status(&jobs, &name, &next).await?;
            }
        }
        return after_finish(ctx, &job, st, &jobs, now).await;
    }

    let duration = sonde_crds::parse_duration(&job.spec.duration).map_err(Error::Duration)?;
    let mut sessions = placement::owned_sessions(&sessions_api, &uid).await?;
    // The deadline is fixed once: by the sessions already out there, else by the recorded start, else now.
    let start = old
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    let deadline = sessions
        .iter()
        .filter_map(|s| s.spec.deadline.as_ref().map(|d| d.0))
        .min()
        .unwrap_or_else(|| {
            rollup::later(
                start,
                SignedDuration::try_from(duration).unwrap_or(SignedDuration::ZERO),
            )
        });

    let mut no_targets = None;
    let mut notes = Vec::new();
    if job.spec.target.pids.is_some() || job.spec.target.cgroup_paths.is_some() {
        notes.push(
            "pids and cgroupPaths apply to `sonde run` on one machine and are ignored in a cluster"
                .into(),
        );
    }
    let refused = placement::refusal(ctx, &job.spec.target, &job.spec.storage, ns);
    if let Some(why) = &refused {
        // Refused even if it was allowed when it started (the admin's setting changed): detach everywhere.
        if !sessions.is_empty() {
            placement::delete_sessions(&sessions_api, &uid).await?;
            sessions.clear();
        }
        no_targets = Some(why.clone());
    } else if now < deadline {
        let mut placement = placement::place(&job.spec.target, ctx, ns).await?;
        let cordoned = placement::cordoned_nodes(ctx).await?;
        let on_cordoned: Vec<String> = placement
            .keys()
            .filter(|n| cordoned.contains(*n))
            .cloned()
            .collect();
        placement.retain(|node, _| !cordoned.contains(node));
        if placement.is_empty() {
            no_targets = Some(Unplaced::no_match(if on_cordoned.is_empty() {
                placement::describe_no_targets(&job.spec.target, ns)
            } else {
                format!(
                    "every target is on a cordoned node ({})",
                    on_cordoned.join(", ")
                )
            }));
        }
        let refused = owner::apply_sessions(
            &sessions_api,
            &*job,
            placement,
            Some(deadline),
            None,
            &sessions,
        )
        .await?;
        no_targets = refused.or(no_targets);
        sessions = placement::owned_sessions(&sessions_api, &uid).await?;
    }
    let top = sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref());
    let status = rollup::rollup(&rollup::Input {
        old: old.as_ref(),
        sessions: &sessions,
        generation: job.metadata.generation,
        start,
        deadline,
        now,
        no_targets,
        notes,
        top,
    });
    publish_transitions(ctx, &job, old.as_ref(), &status).await;
    if old.as_ref() != Some(&status) {
        owner::patch_status(&jobs, &name, &status).await?;
    }
    if status.phase.is_finished() {
        return after_finish(ctx, &job, &status, &jobs, now).await;
    }
    // Session changes wake the controller; the timer covers the deadline and agents that go quiet.
    let wake = if now < deadline {
        deadline.duration_since(now)
    } else {
        REPORT_GRACE
    };
    Ok(Action::requeue(
        to_std(wake)
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(500)),
    ))
}

async fn after_finish(
    ctx: &Context,
    job: &TraceJob,
    st: &TraceJobStatus,
    jobs: &Api<TraceJob>,
    now: Timestamp,
) -> Result<Action> {
    let (Some(ttl), Some(done)) = (
        job.spec.ttl_seconds_after_finished,
        st.completion_time.as_ref(),
    ) else {
        return Ok(Action::await_change());
    };
    // The schema bounds the TTL; an object stored before it did may hold any number. Such a job is kept (as
    // without a TTL) and the user told which field, rather than a sum past the end of time.
    if !(0..=sonde_crds::TTL_MAX_SECONDS).contains(&ttl) {
        let note = format!(
            "spec.ttlSecondsAfterFinished {ttl} is outside 0-{}: the finished job is kept; delete it by hand",
            sonde_crds::TTL_MAX_SECONDS
        );
        tracing::warn!(job = %job.name_any(), "{note}");
        ctx.publish(
            &job.object_ref(&()),
            EventType::Warning,
            "TTLOutOfRange",
            note,
        )
        .await;
        return Ok(Action::await_change());
    }
    let expires = rollup::later(done.0, SignedDuration::from_secs(ttl));
    if now >= expires {
        tracing::info!(job = %job.name_any(), "ttlSecondsAfterFinished reached; deleting");
        jobs.delete(&job.name_any(), &DeleteParams::background())
            .await?;
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(to_std(expires.duration_since(now))))
}

/// Kubernetes Events for what changed between two statuses.
async fn publish_transitions(
    ctx: &Context,
    job: &TraceJob,
    old: Option<&TraceJobStatus>,
    new: &TraceJobStatus,
) {
    let old_phase = old.map(|s| s.phase);
    let mut events = Vec::new();
    let was = |t: &str| old.is_some_and(|s| conditions::is_true(&s.conditions, t));
    let now_true = |t: &str| conditions::is_true(&new.conditions, t);
    let msg = |t: &str| {
        new.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    use conditions::types::*;
    if now_true(SCHEDULED) && !was(SCHEDULED) {
        events.push((EventType::Normal, "Scheduled", msg(SCHEDULED)));
    }
    // Why nothing is scheduled (NoMatchingPods, NodeWideNotAllowed): a Warning each time the reason changes.
    fn unscheduled(s: &TraceJobStatus) -> Option<&str> {
        conditions::false_condition(&s.conditions, SCHEDULED).map(|c| c.reason.as_str())
    }
    if let Some(reason) = unscheduled(new)
        && old.and_then(unscheduled) != Some(reason)
    {
        events.push((EventType::Warning, reason, msg(SCHEDULED)));
    }
    if now_true(ATTACHED) && !was(ATTACHED) {
        events.push((EventType::Normal, "Attached", msg(ATTACHED)));
    }
    if new.counts.breaches > old.map(|s| s.counts.breaches).unwrap_or(0) && !was(THRESHOLD_BREACHED)
    {
        events.push((
            EventType::Warning,
            "ThresholdBreached",
            msg(THRESHOLD_BREACHED),
        ));
    }
    if old_phase != Some(new.phase) {
        match new.phase {
            Phase::Succeeded => events.push((EventType::Normal, "Completed", msg(COMPLETE))),
            Phase::Failed => events.push((EventType::Warning, "Failed", msg(FAILED))),
            _ => {}
        }
    }
    let reference = job.object_ref(&());
    for (type_, reason, note) in events {
        ctx.publish(&reference, type_, reason, note).await;
    }
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}
