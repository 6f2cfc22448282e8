//! One ProbeSession on this node: load the probe through its attach chain, keep the in-kernel filter current,
//! stop at the deadline by the local clock (the API server may be gone), at a Stop threshold, over budget or
//! when the session is deleted; then write, upload and report the results.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use sonde_crds::conditions::{self, NODE_DRAINED, types};
use sonde_crds::{
    Counts, NODE_WIDE_NOT_ALLOWED, Phase, ProbeName, ProbeSession, ProbeSessionSpec,
    ProbeSessionStatus, Upload, UploadState,
};
use sonde_probes::results::ResultsWriter;
use sonde_probes::{Filter, Findings, ProbeConfig, Running};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::limits::{Limits, NODE_AT_CAPACITY};
use crate::{outbox, upload};

/// Field manager of everything the agent writes.
pub const MANAGER: &str = "sonde-agent";
/// How often status is written while a session runs (its heartbeat).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// The overhead budget is averaged over this window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// What the kernel filter should admit, recomputed by the agent as pods come and go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// None: no cgroup filter (the whole node).
    pub cgroups: Option<Vec<u64>>,
    /// Network namespaces of the target pods (packet-latency filters on these).
    pub netns: Vec<u32>,
    /// Target pods not (yet) running on this node, for the status message.
    pub unresolved: Vec<String>,
    /// The node's pods cgroup (id, level), so the kernel can tell other pods' tasks from host tasks.
    pub pods_root: Option<(u64, u32)>,
}

/// Everything a session task needs to run on its own.
pub struct SessionJob {
    pub api: Api<ProbeSession>,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: ProbeSessionSpec,
    pub spool: PathBuf,
    /// The object-store URL results go under, or why this session may not write anywhere.
    pub storage: Result<String, String>,
    /// The admin's tenancy switch: counterparts outside the traced pods are not named.
    pub redact_outside: bool,
    /// The node's limits on what a session may cost.
    pub limits: Limits,
    /// Whether the admin lets this session's namespace trace the whole node.
    pub node_wide_allowed: bool,
    /// Set while the node's spool is full of results waiting for the store: no new events are kept.
    pub spool_full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Spool directories running sessions hold, shared with the uploader.
    pub held: outbox::Live,
    /// This session's place among the node's running sessions; None when the agent is full.
    pub slot: Option<OwnedSemaphorePermit>,
    /// Set when a restarted agent picks up a session its previous process had started.
    pub resumed_note: Option<String>,
    pub metrics: crate::metrics::AgentMetrics,
}

impl SessionJob {
    /// The node's limits on what a trace keeps: its bytes of events, and none while the spool is full.
    fn limited(&self, w: ResultsWriter) -> ResultsWriter {
        w.with_max_bytes(self.limits.max_event_bytes).with_gate(
            self.spool_full.clone(),
            "this node's spool of results waiting for the object store reached its cap (Helm value \
             agent.limits.maxSpoolMiB)",
        )
    }

    /// Where results go under `prefix`; `run` has already ended a session whose storage was refused.
    fn destination(&self, prefix: &str) -> outbox::Destination {
        outbox::Destination {
            store_url: self.storage.clone().unwrap_or_default(),
            prefix: prefix.to_string(),
            namespace: self.namespace.clone(),
            session: self.name.clone(),
            stream: false,
        }
    }

    /// Where a run of this session writes, and whether its chunks stream to `prefix`. A trace writes in the
    /// session's directory, which a restarted agent resumes (its chunk numbers continue); a policy in one
    /// directory per run, a window below it each. A trace whose directory a finished run sealed (so it is not
    /// to be written into) writes beside it, to a prefix of its own.
    fn spool_dir(&self, windowed: bool) -> (PathBuf, outbox::Destination) {
        let base = self.spool.join(&self.namespace).join(&self.name);
        let uid = self.uid.get(..8).unwrap_or(&self.uid);
        let started_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let mut to = self.destination(&self.spec.result_prefix);
        if windowed {
            return (base.join(format!("{uid}-{started_ms}")), to);
        }
        to.stream = true;
        let dir = base.join(uid);
        if outbox::claim(&self.held, &dir) {
            return (dir, to);
        }
        let dir = base.join(format!("{uid}-{started_ms}"));
        to.prefix = format!("{}/run-{started_ms}", to.prefix);
        outbox::claim(&self.held, &dir);
        (dir, to)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Stop {
    Deadline,
    Threshold,
    OverBudget(String),
    Deleted,
    Failed(String),
    /// The node was cordoned (`kubectl cordon`/`drain`): a one-shot trace stops and reports before the node is
    /// taken down, rather than being cut off with it.
    Drained(String),
}

/// Writes status by server-side apply; failures are logged and retried on the next beat, never fatal: the
/// trace goes on (and ends on time) without the API server.
struct Reporter {
    api: Api<ProbeSession>,
    name: String,
    generation: Option<i64>,
    status: ProbeSessionStatus,
    /// Events not kept in the results so far, by reason (`status.counts.notKept`).
    not_kept: std::collections::BTreeMap<String, u64>,
}

impl Reporter {
    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        conditions::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
            &now,
        );
    }

    /// Where the results stand: `status.upload` and the `ResultsComplete` condition.
    fn report_upload(&mut self, upload: Upload) {
        let (ok, reason, message) = upload.condition(false, false, "");
        self.condition(types::RESULTS_COMPLETE, ok, reason, message);
        self.status.upload = Some(upload);
    }

    async fn write(&mut self) -> bool {
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

pub async fn run(
    mut job: SessionJob,
    mut targets: watch::Receiver<Targets>,
    mut deleted: watch::Receiver<bool>,
    drained: watch::Receiver<Option<String>>,
) {
    let mut rep = Reporter {
        api: job.api.clone(),
        name: job.name.clone(),
        generation: job.generation,
        status: ProbeSessionStatus::default(),
        not_kept: Default::default(),
    };
    let deadline = job.spec.deadline.as_ref().map(|t| to_system(&t.0));
    if let Some(d) = deadline
        && d <= SystemTime::now()
    {
        rep.status.phase = Phase::Failed;
        rep.status.message = Some(match &job.resumed_note {
            Some(note) => format!("{note}; the deadline passed before it could attach again"),
            None => "the deadline passed before the agent could attach".into(),
        });
        rep.condition(
            types::FAILED,
            true,
            "DeadlinePassed",
            rep.status.message.clone().unwrap_or_default(),
        );
        rep.write().await;
        return;
    }

    let refused = match (&job.storage, &job.slot) {
        _ if job.spec.all_pods && !job.node_wide_allowed => Some((
            NODE_WIDE_NOT_ALLOWED,
            format!(
                "this session traces the whole node and namespace {} may not (Helm value \
                 tenancy.nodeWideNamespaces, which this node's agent checks too)",
                job.namespace
            ),
        )),
        (Err(why), _) => Some(("StorageNotAllowed", why.clone())),
        (_, None) => Some((NODE_AT_CAPACITY, job.limits.capacity_refusal())),
        _ => None,
    };
    if let Some((reason, why)) = refused {
        tracing::warn!(session = %job.name, namespace = %job.namespace, reason, "session refused");
        rep.status.phase = Phase::Failed;
        rep.status.message = Some(why.clone());
        rep.condition(types::FAILED, true, reason, why);
        rep.write().await;
        return;
    }
    let (budget_pct, budget_note) = job.limits.budget(job.spec.budget.max_kernel_cpu_percent);
    let t = targets.borrow_and_update().clone();
    let config = probe_config(&job.spec, &t, job.redact_outside);
    let window = job
        .spec
        .window
        .as_deref()
        .and_then(|w| sonde_crds::parse_duration(w).ok());
    let keep_events = config.events_expected();
    let (spool, to) = job.spool_dir(window.is_some());
    let first_dir = match window {
        Some(_) => spool.join("window-000000"),
        None => spool.clone(),
    };
    // A directory with a destination and no seal: the run a previous agent process was in when it died.
    let resumed = to.stream && first_dir.join(outbox::DESTINATION).exists();
    job.resumed_note = job.resumed_note.take().map(|n| match resumed {
        true => format!(
            "{n}; the events the previous process had written are kept, those of its last {}s or less are missing",
            sonde_probes::chunks::ChunkLimits::default().max_age.as_secs()
        ),
        false => format!("{n}; events before that were lost with the previous process"),
    });
    let open = match resumed {
        true => ResultsWriter::resume,
        false => ResultsWriter::create,
    };
    let writer = open(&first_dir, keep_events, job.spec.output.max_events)
        .map(|w| job.limited(w))
        .and_then(|w| {
            outbox::start(&first_dir, &to)
                .map(|()| w)
                .map_err(|e| sonde_probes::Error::Io {
                    context: format!("spooling in {}", first_dir.display()),
                    source: e,
                })
        });
    let started =
        writer.and_then(|w| tokio::task::block_in_place(|| Running::start(config)).map(|r| (w, r)));
    let (mut writer, mut running) = match started {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(session = %job.name, error = %e, "attach failed");
            // Nothing captured in this run: its directory goes (a resumed trace's keeps what it had).
            if !resumed {
                let _ = std::fs::remove_dir_all(&spool);
            }
            outbox::release(&job.held, &spool);
            rep.status.phase = Phase::Failed;
            rep.status.message = Some(e.to_string());
            rep.condition(types::ATTACHED, false, e.label(), e.to_string());
            rep.condition(types::FAILED, true, e.label(), e.to_string());
            rep.write().await;
            return;
        }
    };
    let strategy = running.loaded.strategy();
    tracing::info!(session = %job.name, probe = %job.spec.probe, %strategy, "attached");
    // A trace's chunks go to the store while it runs.
    let streaming = (to.stream && keep_events).then(|| Streaming::start(&spool, &to));
    rep.status.phase = Phase::Running;
    rep.status.attach_strategy = Some(strategy.clone());
    rep.status.attached_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    rep.status.message = job.resumed_note.clone().or_else(|| unresolved_message(&t));
    rep.condition(
        types::ATTACHED,
        true,
        "Attached",
        match &budget_note {
            Some(n) => format!("attached via {strategy}; {n}"),
            None => format!("attached via {strategy}"),
        },
    );
    rep.write().await;

    let deadline_at = deadline.map(|d| {
        let left = d.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_status = Instant::now();
    let mut budget = BudgetWindow::default();
    let mut write_error = None;
    let top = sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref());
    let title = format!("sonde {} {}/{}", job.spec.probe, job.namespace, job.name);
    let mut windows = window.map(|every| Windows {
        every,
        ticker: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        n: 0,
        breaches_before: 0,
        spool: spool.clone(),
        keep_events,
    });
    // Set when the last drain slice stopped at its limit: the next slice starts after a yield, not a tick.
    let mut backlog = false;
    let stop = loop {
        // Checked on every turn (at least every tick): a policy keeps tracing on a cordoned node, whose pods
        // may well stay; a one-shot trace with a deadline ends here with what it has.
        if deadline.is_some()
            && let Some(why) = drained.borrow().clone()
        {
            break Stop::Drained(why);
        }
        tokio::select! {
            _ = sleep_until(deadline_at) => break Stop::Deadline,
            _ = next_window(&mut windows) => {
                // A standing probe: publish this window, start the next, stay attached.
                if let Some(w) = windows.as_mut()
                    && let Err(e) = end_window(&job, w, &mut running, &mut writer, &mut rep, top, &title).await
                {
                    break Stop::Failed(e);
                }
                last_status = Instant::now();
                continue;
            }
            r = deleted.changed() => if r.is_err() || *deleted.borrow() { break Stop::Deleted },
            r = targets.changed() => {
                if r.is_ok() {
                    let t = targets.borrow_and_update().clone();
                    let mut updated = match (&t.cgroups, job.spec.all_pods) {
                        (Some(ids), false) => running.set_cgroups(ids),
                        _ => Ok(()),
                    };
                    if job.spec.probe == ProbeName::PacketLatency && !job.spec.all_pods {
                        updated = updated.and(running.set_netns(&t.netns));
                    }
                    if let Err(e) = updated {
                        tracing::warn!(session = %job.name, error = %e, "updating the target filter");
                    }
                    rep.status.message = job.resumed_note.clone().or_else(|| unresolved_message(&t));
                }
            }
            _ = tick.tick(), if !backlog => {}
            _ = tokio::task::yield_now(), if backlog => {}
        }
        backlog =
            tokio::task::block_in_place(|| running.drain(writer.sink(&mut write_error))).backlog;
        // A standing probe records; only a one-shot trace ends on a Stop threshold.
        if running.stop_requested && windows.is_none() {
            break Stop::Threshold;
        }
        let (run_time, _) = running.kernel_runtime();
        if let Some(pct) = budget.sample(run_time)
            && pct > budget_pct
        {
            break Stop::OverBudget(format!(
                "probe used {pct:.2}% of a CPU in the kernel over the last {:.0}s, budget {budget_pct}%{}",
                budget.span().as_secs_f64(),
                budget_note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ));
        }
        // A chunk 2 s old is closed (a clock read, every turn): a reader sees events within seconds, and an agent
        // killed mid-trace loses at most the open chunk's (the next agent resumes the rest).
        if let Err(e) = writer.flush() {
            write_error.get_or_insert(e);
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            tally_not_kept(&job, &mut rep, &mut writer);
            fill_counts(&mut rep, &running);
            if let Some(st) = &streaming {
                st.report(&mut rep);
            }
            rep.write().await;
        }
    };
    tracing::info!(session = %job.name, ?stop, "stopping");

    let findings =
        tokio::task::block_in_place(|| running.finish(top, writer.sink(&mut write_error)));
    tally_not_kept(&job, &mut rep, &mut writer);
    fill_counts(&mut rep, &running);
    let (run_time, runs) = running.kernel_runtime();
    let elapsed = running.elapsed();
    let attempts = running.loaded.attempts.clone();
    drop(running); // detach now: the trace is over, writing results must not extend it

    let report = serde_json::json!({
        "session": format!("{}/{}", job.namespace, job.name),
        "node": job.spec.node_name,
        "probe": job.spec.probe.to_string(),
        "attach_strategy": strategy,
        "attach_attempts": attempts,
        "duration_seconds": elapsed.as_secs_f64(),
        "stopped_by": stop_label(&stop),
        "counts": rep.status.counts,
        "kernel_run_time_ns": run_time.as_nanos() as u64,
        "kernel_runs": runs,
        "summary": findings.summary,
        "note": job.resumed_note,
    });
    let cap_note = writer.cap_note();
    let prefix = match windows {
        Some(_) => window_prefix(&to.prefix),
        None => to.prefix.clone(),
    };
    if let Some(st) = streaming {
        st.stop().await;
    }
    let published = publish(
        &job,
        writer,
        &findings,
        &title,
        &report,
        &prefix,
        windows.is_none(),
    )
    .await;
    outbox::release(&job.held, &spool);
    let mut problems = published.problems;
    problems.extend(
        write_error
            .into_iter()
            .map(|e| format!("writing events: {e}")),
    );
    rep.status.results = published.urls;
    rep.report_upload(published.upload);
    if stop == Stop::Deleted {
        return; // nothing to report to: the object is gone (its results are uploaded all the same)
    }
    rep.status.summary = Some(findings.summary);
    rep.status.kernel_cpu_percent =
        Some(run_time.as_secs_f64() / elapsed.as_secs_f64().max(1e-3) * 100.0);
    if rep.status.counts.breaches > 0 {
        let n = rep.status.counts.breaches;
        rep.condition(
            types::THRESHOLD_BREACHED,
            true,
            "Breached",
            format!("{n} threshold breaches"),
        );
    }
    let (phase, reason, message) = match &stop {
        Stop::OverBudget(m) => (Phase::Failed, "OverBudget", m.clone()),
        Stop::Failed(m) => (Phase::Failed, "AgentError", m.clone()),
        _ if !problems.is_empty() => (Phase::Failed, "ResultsLost", problems.join("; ")),
        Stop::Threshold => (
            Phase::Succeeded,
            "ThresholdStop",
            "stopped by a threshold with action Stop".into(),
        ),
        Stop::Drained(why) => (
            Phase::Succeeded,
            NODE_DRAINED,
            format!(
                "{why}: stopped {}s before the deadline; the results cover the trace until then",
                deadline
                    .and_then(|d| d.duration_since(SystemTime::now()).ok())
                    .unwrap_or_default()
                    .as_secs()
            ),
        ),
        _ => (
            Phase::Succeeded,
            "DeadlineReached",
            "traced until the deadline".into(),
        ),
    };
    if let Stop::OverBudget(m) = &stop {
        rep.condition(types::OVER_BUDGET, true, "OverBudget", m.clone());
    }
    rep.status.phase = phase;
    rep.condition(
        types::COMPLETE,
        phase == Phase::Succeeded,
        reason,
        message.clone(),
    );
    if phase == Phase::Failed {
        rep.condition(types::FAILED, true, reason, message.clone());
    }
    let notes = [Some(message), cap_note, job.resumed_note.clone()];
    rep.status.message = Some(notes.into_iter().flatten().collect::<Vec<_>>().join("; "));
    // The final status matters: keep trying for a while if the API server is briefly away.
    for _ in 0..30 {
        if rep.write().await {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn stop_label(stop: &Stop) -> &'static str {
    match stop {
        Stop::Deadline => "deadline",
        Stop::Threshold => "threshold",
        Stop::OverBudget(_) => "budget",
        Stop::Deleted => "deleted",
        Stop::Failed(_) => "error",
        Stop::Drained(_) => "drained",
    }
}

fn probe_config(spec: &ProbeSessionSpec, t: &Targets, redact_outside: bool) -> ProbeConfig {
    let mut filter = Filter {
        comms: (!spec.comms.is_empty()).then(|| spec.comms.clone()),
        ..Default::default()
    };
    if !spec.all_pods {
        filter.cgroups = Some(t.cgroups.clone().unwrap_or_default());
        filter.pods_root = t.pods_root;
        filter.redact_outside = redact_outside;
    }
    if spec.probe == ProbeName::PacketLatency {
        // Softirq context has no task to match: the receiving pods' network namespaces are the filter. The
        // cgroups only decide which task the pid/comm columns may name (never another pod's).
        filter.netns = (!spec.all_pods).then(|| t.netns.clone());
        filter.comms = None;
    }
    ProbeConfig {
        probe: spec.probe,
        params: spec.params.clone().unwrap_or_default(),
        filter,
        thresholds: spec.thresholds.clone(),
        output: spec.output.clone(),
    }
}

/// Counts from the kernel and the drain; `EventsDropped` once any event was dropped.
/// Counts the events `writer` did not keep since the last call: in the session's status and the node's metric.
fn tally_not_kept(job: &SessionJob, rep: &mut Reporter, writer: &mut ResultsWriter) {
    for (reason, n) in writer.take_not_kept() {
        *rep.not_kept.entry(reason.to_string()).or_default() += n;
        job.metrics
            .events_not_kept
            .get_or_create(&vec![("reason", reason)])
            .inc_by(n);
    }
}

fn fill_counts(rep: &mut Reporter, running: &Running) {
    let k = running.kernel_stats();
    let drops = running.drops();
    rep.status.counts = Counts::new(
        running.captured,
        drops.ring_buffer_full,
        drops.unread_at_stop,
        k.breaches,
    );
    rep.status.counts.not_kept = rep.not_kept.clone();
    if let Some(msg) = rep.status.counts.drop_message() {
        rep.condition(types::EVENTS_DROPPED, true, "UserSpaceBehind", msg);
    }
}

fn unresolved_message(t: &Targets) -> Option<String> {
    (!t.unresolved.is_empty()).then(|| {
        format!(
            "waiting for pods to run on this node: {}",
            t.unresolved.join(", ")
        )
    })
}

/// Writes a finished window's (or trace's) results and uploads them; returns their URLs and what went wrong.
/// What became of a finished trace's (or window's) results.
struct Published {
    /// Their URLs, once the store has them.
    urls: Vec<String>,
    /// What could not even be written on the node (those results are lost).
    problems: Vec<String>,
    /// Where this session's result sets stand, this one and any earlier still spooled.
    upload: Upload,
}

/// Writes the results, seals them in the spool (durable, marked for upload) and tries the store once. A set the
/// store does not take now stays sealed for the uploader (`outbox`), which retries it.
async fn publish(
    job: &SessionJob,
    mut writer: ResultsWriter,
    findings: &Findings,
    title: &str,
    report: &serde_json::Value,
    prefix: &str,
    last: bool,
) -> Published {
    let mut problems = Vec::new();
    let mut files = writer.finish(findings, title).unwrap_or_else(|e| {
        problems.push(format!("writing results: {e}"));
        Vec::new()
    });
    match writer.write_summary(report) {
        Ok(p) => files.push(p),
        Err(e) => problems.push(format!("writing summary.json: {e}")),
    }
    let dir = writer.dir().to_path_buf();
    let to = job.destination(prefix);
    // fsyncs can wait behind other writes for seconds: off the async workers.
    let sealed = tokio::task::block_in_place(|| outbox::seal(&dir, &to, &files, last, false));
    let delivered = match sealed {
        Ok(parcel) => outbox::deliver(&dir, &parcel).await,
        Err(e) => {
            // Not durable on the node: the store is the only copy there can be.
            problems.push(format!("spooling results in {}: {e}", dir.display()));
            upload::upload(&to.store_url, &to.prefix, &dir, &files).await
        }
    };
    let (mut urls, error) = match delivered {
        Ok(urls) => (urls, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    // Chunks are listed in the manifest, not in status (a day-long trace has tens of thousands).
    urls.retain(|u| !u.ends_with(".ndjson.gz"));
    let mut upload = outbox::state_of(&job.spool, &job.namespace, &job.name, error.as_deref());
    if !problems.is_empty() {
        upload.state = UploadState::Incomplete;
        upload.message = Some(problems.join("; "));
    }
    Published {
        urls,
        problems,
        upload,
    }
}

/// Where a window's results go: named by its end time, so windows of a reloaded session never collide.
fn window_prefix(result_prefix: &str) -> String {
    let end = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    format!("{result_prefix}/window-{end}")
}

/// A running trace's chunk streamer ([`outbox::stream`]).
struct Streaming {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: std::sync::Arc<std::sync::Mutex<outbox::Streamed>>,
}

impl Streaming {
    fn start(dir: &std::path::Path, to: &outbox::Destination) -> Streaming {
        let (stop, stopped) = watch::channel(false);
        let state = std::sync::Arc::default();
        let task = tokio::spawn(outbox::stream(
            dir.to_path_buf(),
            to.clone(),
            stopped,
            std::sync::Arc::clone(&state),
        ));
        Streaming { stop, task, state }
    }

    /// Puts the chunks' state in the heartbeat: pending while the store refuses them, else streaming (once
    /// it has been pending: a trace whose store never failed says nothing until its end).
    fn report(&self, rep: &mut Reporter) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if st.error.is_none() && rep.status.upload.is_none() {
            return;
        }
        let upload = match st.error {
            None => Upload::default(),
            Some(error) => Upload {
                state: UploadState::Pending,
                pending: st.waiting,
                oldest_pending: st
                    .oldest
                    .map(|t| Time(k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or_default())),
                message: Some(error),
            },
        };
        let (ok, reason, message) = upload.condition(true, false, "on the node");
        rep.condition(types::RESULTS_COMPLETE, ok, reason, message);
        rep.status.upload = Some(upload);
    }

    /// Stops sending (a put under way finishes): what is left goes with the sealed set.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The rolling windows of a standing probe.
struct Windows {
    every: Duration,
    ticker: tokio::time::Interval,
    /// Windows completed.
    n: u64,
    breaches_before: u64,
    spool: PathBuf,
    keep_events: bool,
}

async fn next_window(windows: &mut Option<Windows>) {
    match windows {
        Some(w) => {
            w.ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Ends a window: its findings and events are published, the kernel aggregates and the events file start
/// again, and status reports the window (its summary, results, whether it breached). Err only when the next
/// window cannot be written.
async fn end_window(
    job: &SessionJob,
    w: &mut Windows,
    running: &mut Running,
    writer: &mut ResultsWriter,
    rep: &mut Reporter,
    top: usize,
    title: &str,
) -> Result<(), String> {
    let mut write_error = None;
    let findings = tokio::task::block_in_place(|| running.roll(top, writer.sink(&mut write_error)));
    let mut problems: Vec<String> = write_error
        .into_iter()
        .map(|e| format!("writing events: {e}"))
        .collect();
    w.n += 1;
    let dir = w.spool.join(format!("window-{:06}", w.n));
    let next = ResultsWriter::create(&dir, w.keep_events, job.spec.output.max_events)
        .map(|w| job.limited(w))
        .map_err(|e| format!("starting window {}: {e}", w.n))?;
    outbox::start(&dir, &job.destination(&job.spec.result_prefix))
        .map_err(|e| format!("starting window {}: {e}", w.n))?;
    tally_not_kept(job, rep, writer);
    let done = std::mem::replace(writer, next);
    fill_counts(rep, running);
    let breaches = rep.status.counts.breaches - w.breaches_before;
    w.breaches_before = rep.status.counts.breaches;
    let report = serde_json::json!({
        "session": format!("{}/{}", job.namespace, job.name),
        "node": job.spec.node_name,
        "probe": job.spec.probe.to_string(),
        "window": w.n,
        "window_seconds": w.every.as_secs_f64(),
        "breaches": breaches,
        "counts": rep.status.counts,
        "summary": findings.summary,
    });
    let prefix = window_prefix(&job.spec.result_prefix);
    let published = publish(job, done, &findings, title, &report, &prefix, false).await;
    problems.extend(published.problems);
    rep.status.windows = w.n;
    rep.status.results = published.urls;
    rep.report_upload(published.upload);
    rep.status.summary = Some(findings.summary);
    let n = w.n;
    if breaches > 0 {
        rep.status.last_breach_time = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let msg = format!("{breaches} breaches in window {n}");
        rep.condition(types::THRESHOLD_BREACHED, true, "Breached", msg);
    } else {
        let msg = format!("no breach in window {n}");
        rep.condition(types::THRESHOLD_BREACHED, false, "Quiet", msg);
    }
    rep.status.message = (!problems.is_empty()).then(|| problems.join("; "));
    rep.write().await;
    Ok(())
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn to_system(ts: &k8s_openapi::jiff::Timestamp) -> SystemTime {
    let ns = ts.as_nanosecond();
    if ns >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Kernel run time sampled once per tick, averaged over the last [`BUDGET_WINDOW`].
#[derive(Default)]
struct BudgetWindow {
    samples: VecDeque<(Instant, Duration)>,
}

impl BudgetWindow {
    /// Percent of one CPU over the window, once it spans at least 2 s.
    fn sample(&mut self, run_time: Duration) -> Option<f64> {
        let now = Instant::now();
        self.samples.push_back((now, run_time));
        while self.samples.len() > 2 && now - self.samples[1].0 >= BUDGET_WINDOW {
            self.samples.pop_front();
        }
        let span = self.span();
        let (_, first) = self.samples.front()?;
        (span >= Duration::from_secs(2))
            .then(|| run_time.saturating_sub(*first).as_secs_f64() / span.as_secs_f64() * 100.0)
    }

    fn span(&self) -> Duration {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => Duration::ZERO,
        }
    }
}
