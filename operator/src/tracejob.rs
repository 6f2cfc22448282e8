//! The TraceJob reconciler, in the steps of [`crate::owner`]: place (resolve the target to nodes, apply one
//! ProbeSession per node by server-side apply, so a restarted operator converges on the same objects instead of
//! making duplicates), roll the sessions' statuses up, announce (Events on transitions, the status); then delete
//! the job after its TTL.

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

use crate::conditions::{EventReason, types};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::owner::{self, Announcement, Placed};
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
    let jobs: Api<TraceJob> = Api::namespaced(ctx.client.clone(), ns);
    let sessions_api: Api<ProbeSession> = Api::namespaced(ctx.client.clone(), ns);
    let now = Timestamp::now();
    if let Some(st) = job.status.as_ref().filter(|s| s.phase.is_finished()) {
        return finished(ctx, &job, st, &jobs, &sessions_api, now).await;
    }

    let duration = sonde_crds::parse_duration(&job.spec.duration).map_err(Error::Duration)?;
    let sessions = placement::owned_sessions(&sessions_api, &job.uid().unwrap_or_default()).await?;
    // The deadline is fixed once: by the sessions already out there, else by the recorded start, else now.
    let start = job
        .status
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

    let placed = place(ctx, &job, ns, &sessions_api, sessions, deadline, now).await?;
    let status = roll_up(&job, &placed, start, deadline, now, &ctx.leases);
    announce(ctx, &job, &jobs, &status).await?;

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

/// Place: until the deadline, one session per node the target runs on (none on a cordoned node); none anywhere
/// when the target is refused. `sessions` are the job's as listed before.
async fn place(
    ctx: &Context,
    job: &TraceJob,
    ns: &str,
    api: &Api<ProbeSession>,
    mut sessions: Vec<ProbeSession>,
    deadline: Timestamp,
    now: Timestamp,
) -> Result<Placed> {
    let uid = job.uid().unwrap_or_default();
    let mut no_targets = None;
    let refused = placement::refusal(ctx, &job.spec.target, &job.spec.storage, ns);
    if let Some(why) = &refused {
        // Refused even if it was allowed when it started (the admin's setting changed): detach everywhere.
        if !sessions.is_empty() {
            placement::delete_sessions(api, &uid).await?;
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
        let refused =
            owner::apply_sessions(api, job, placement, Some(deadline), None, &sessions).await?;
        no_targets = refused.or(no_targets);
        sessions = placement::owned_sessions(api, &uid).await?;
    }
    Ok(Placed {
        sessions,
        no_targets,
    })
}

/// Roll up: the sessions' statuses into the job's, over the fixed start and deadline.
fn roll_up(
    job: &TraceJob,
    placed: &Placed,
    start: Timestamp,
    deadline: Timestamp,
    now: Timestamp,
    leases: &crate::liveness::AgentLeases,
) -> TraceJobStatus {
    let mut notes = Vec::new();
    if job.spec.target.pids.is_some() || job.spec.target.cgroup_paths.is_some() {
        notes.push(
            "pids and cgroupPaths apply to `sonde run` on one machine and are ignored in a cluster"
                .into(),
        );
    }
    rollup::rollup(&rollup::Input {
        old: job.status.as_ref(),
        sessions: &placed.sessions,
        generation: job.metadata.generation,
        start,
        deadline,
        now,
        no_targets: placed.no_targets.clone(),
        alive_until: placed
            .sessions
            .iter()
            .filter_map(|s| {
                let node = &s.spec.node_name;
                leases.alive_until(node).map(|t| (node.clone(), t))
            })
            .collect(),
        notes,
        top: sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref()),
    })
}

/// Announce: an Event for each transition, then the status.
async fn announce(
    ctx: &Context,
    job: &TraceJob,
    jobs: &Api<TraceJob>,
    status: &TraceJobStatus,
) -> Result<()> {
    let events = transitions(job.status.as_ref(), status);
    owner::announce(ctx, jobs, job, events, status).await
}

/// A finished job: its results may still be on their way (the agents report late uploads on the sessions), so
/// while they are pending the upload is rolled up and announced anew; then its TTL.
async fn finished(
    ctx: &Context,
    job: &TraceJob,
    st: &TraceJobStatus,
    jobs: &Api<TraceJob>,
    sessions_api: &Api<ProbeSession>,
    now: Timestamp,
) -> Result<Action> {
    if st
        .upload
        .as_ref()
        .is_some_and(|u| u.state == UploadState::Pending)
    {
        let sessions =
            placement::owned_sessions(sessions_api, &job.uid().unwrap_or_default()).await?;
        let mut next = st.clone();
        rollup::upload_rollup(&mut next, &sessions, job.metadata.generation, &Time(now));
        next.results = sessions
            .iter()
            .filter_map(|s| s.status.as_ref())
            .flat_map(|s| s.results.clone())
            .collect();
        owner::announce(ctx, jobs, job, Vec::new(), &next).await?;
    }
    after_finish(ctx, job, st, jobs, now).await
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
            EventReason::TTLOutOfRange.as_str(),
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

/// The Events for what changed between two statuses.
fn transitions<'a>(old: Option<&TraceJobStatus>, new: &'a TraceJobStatus) -> Vec<Announcement<'a>> {
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
    let event = |type_, reason: EventReason, condition| (type_, reason.as_str(), msg(condition));
    use types::*;
    if now_true(SCHEDULED) && !was(SCHEDULED) {
        events.push(event(EventType::Normal, EventReason::Scheduled, SCHEDULED));
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
        events.push(event(EventType::Normal, EventReason::Attached, ATTACHED));
    }
    if new.counts.breaches > old.map(|s| s.counts.breaches).unwrap_or(0) && !was(THRESHOLD_BREACHED)
    {
        let reason = EventReason::ThresholdBreached;
        events.push(event(EventType::Warning, reason, THRESHOLD_BREACHED));
    }
    if old_phase != Some(new.phase) {
        match new.phase {
            Phase::Succeeded => {
                events.push(event(EventType::Normal, EventReason::Completed, COMPLETE));
            }
            Phase::Failed => events.push(event(EventType::Warning, EventReason::Failed, FAILED)),
            _ => {}
        }
    }
    events
}

fn to_std(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}
