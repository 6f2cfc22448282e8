//! One ProbeSession on this node: load the probe through its attach chain, keep the in-kernel filter current,
//! stop at the deadline by the local clock (the API server may be gone), at a Stop threshold, over budget or
//! when the session is deleted; then write, upload and report the results.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use sonde_crds::conditions::types;
use sonde_crds::{
    Counts, NODE_WIDE_NOT_ALLOWED, Phase, ProbeSession, ProbeSessionSpec, Upload, UploadState,
};
use sonde_probes::catalogue::Filtered;
use sonde_probes::results::ResultsWriter;
use sonde_probes::{Filter, Findings, ProbeConfig, RunReport, Running, WindowReport};
use tokio::sync::watch;

use crate::limits::{Limits, Refused, Slot};
use crate::results::spool;

mod budget;
mod outcome;
mod publish;
mod reporter;
pub mod simulated;
pub mod status_share;
mod trace;
mod windows;

use budget::BudgetWindow;
use outcome::{Outcome, Stop, outcome};
use publish::{Streaming, publish, window_prefix};
use reporter::Reporter;
use trace::{Signals, Trace};
use windows::{Windows, next_window};

/// Field manager of everything the agent writes.
pub const MANAGER: &str = "sonde-agent";
/// How often a running session looks at its status; it is written when it has something new
/// ([`reporter::COUNTS_EVERY`]). The agent's liveness is its node's Lease (`crate::liveness`).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// What the kernel filter should admit, recomputed by the agent as pods come and go.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// None: no cgroup filter (the whole node).
    pub cgroups: Option<Vec<u64>>,
    /// Network namespaces of the target pods (packet-latency filters on these).
    pub netns: Vec<u32>,
    /// Target pods not (yet) running on this node, for the status message.
    pub unresolved: Vec<String>,
    /// Target pods the spec names in another namespace than the session's: never traced.
    pub foreign: Vec<String>,
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
    /// Closed while the node's spool, or this namespace's share of it, is full of results waiting for the
    /// store: no new events are kept.
    pub spool_gate: sonde_probes::results::Gate,
    /// Spool directories running sessions hold, shared with the uploader.
    pub held: spool::Live,
    /// This session's place among the node's running sessions, or why it has none (the node or its
    /// namespace's share of it is full).
    pub slot: Result<Slot, Refused>,
    /// Set when a restarted agent picks up a session its previous process had started.
    pub resumed_note: Option<String>,
    /// The node's share of status writes that can wait.
    pub status_share: status_share::StatusShare,
    pub metrics: crate::metrics::AgentMetrics,
}

impl SessionJob {
    /// The node's limits on what a trace keeps: its bytes of events, and none while the spool (or its
    /// namespace's share of it) is full.
    fn limited(&self, w: ResultsWriter) -> ResultsWriter {
        w.with_max_bytes(self.limits.max_event_bytes)
            .with_gate(self.spool_gate.clone())
    }

    /// `summary.json` of this session's trace (or window) so far, counts as status has them.
    fn report(
        &self,
        running: &Running,
        writer: &ResultsWriter,
        rep: &Reporter,
        stopped_by: &str,
        findings: &Findings,
    ) -> RunReport {
        let mut report = running.report(
            format!("{}/{}", self.namespace, self.name),
            stopped_by,
            findings.summary.clone(),
        );
        report.node = Some(self.spec.node_name.clone());
        report.counts = rep.status.counts.clone();
        report.events_written = writer.written;
        report.notes.extend(self.resumed_note.clone());
        report
    }

    /// Where results go under `prefix`; `run` has already ended a session whose storage was refused.
    fn destination(&self, prefix: &str) -> spool::Destination {
        spool::Destination {
            store_url: self.storage.clone().unwrap_or_default(),
            prefix: prefix.to_string(),
            namespace: self.namespace.clone(),
            session: self.name.clone(),
            stream: false,
            default_store: self
                .spec
                .storage
                .as_ref()
                .and_then(|s| s.location.as_ref())
                .is_none(),
        }
    }

    /// Where a run of this session writes, and whether its chunks stream to `prefix`. A trace writes in the
    /// session's directory, which a restarted agent resumes (its chunk numbers continue); a policy in one
    /// directory per run, a window below it each. A trace whose directory a finished run sealed (so it is not
    /// to be written into) writes beside it, to a prefix of its own.
    fn spool_dir(&self, windowed: bool) -> (PathBuf, spool::Destination) {
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
        if spool::claim(&self.held, &dir) {
            return (dir, to);
        }
        let dir = base.join(format!("{uid}-{started_ms}"));
        to.prefix = sonde_crds::results::Below::Run(started_ms.to_string()).under(&to.prefix);
        spool::claim(&self.held, &dir);
        (dir, to)
    }
}

/// Runs one session to its end: refused before it starts, failed to attach, or traced until it stops; then its
/// results are published and its final status written.
pub async fn run(
    mut job: SessionJob,
    targets: watch::Receiver<Targets>,
    deleted: watch::Receiver<bool>,
    drained: watch::Receiver<Option<String>>,
) {
    let mut rep = Reporter::new(&job);
    let deadline = job.spec.deadline.as_ref().map(|t| to_system(&t.0));
    if let Some((reason, why)) = job.refusal(deadline) {
        tracing::warn!(session = %job.name, namespace = %job.namespace, reason, "session refused");
        rep.fail(&job.metrics, reason, why);
        rep.write().await;
        return;
    }
    let mut signals = Signals {
        targets,
        deleted,
        drained,
        deadline,
    };
    let Some(mut trace) = attach(&mut job, rep, &mut signals.targets).await else {
        return;
    };
    let stop = trace.run(&job, &mut signals).await;
    tracing::info!(session = %job.name, ?stop, "stopping");
    finish(&job, trace, stop, deadline).await;
}

impl SessionJob {
    /// Why this session may not start at all: its deadline passed before the agent got to it, its namespace may
    /// not trace the whole node, its storage is not the admin's, or the node runs all the sessions it may.
    fn refusal(&self, deadline: Option<SystemTime>) -> Option<(&'static str, String)> {
        if deadline.is_some_and(|d| d <= SystemTime::now()) {
            let why = match &self.resumed_note {
                Some(note) => format!("{note}; the deadline passed before it could attach again"),
                None => "the deadline passed before the agent could attach".into(),
            };
            return Some(("DeadlinePassed", why));
        }
        match (&self.storage, &self.slot) {
            _ if self.spec.all_pods && !self.node_wide_allowed => Some((
                NODE_WIDE_NOT_ALLOWED,
                format!(
                    "this session traces the whole node and namespace {} may not (Helm value \
                     tenancy.nodeWideNamespaces, which this node's agent checks too)",
                    self.namespace
                ),
            )),
            (Err(why), _) => Some(("StorageNotAllowed", why.clone())),
            (_, Err(refused)) => Some((refused.reason, refused.message.clone())),
            _ => None,
        }
    }
}

/// Opens the session's results (resuming those of a previous agent process) and attaches the probe through its
/// chain. None when it could not: the session is then Failed, with the kernel's answer.
async fn attach(
    job: &mut SessionJob,
    mut rep: Reporter,
    targets: &mut watch::Receiver<Targets>,
) -> Option<Trace> {
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
    let resumed = to.stream && first_dir.join(spool::DESTINATION).exists();
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
            spool::start(&first_dir, &to)
                .map(|()| w)
                .map_err(|e| sonde_probes::Error::Io {
                    context: format!("spooling in {}", first_dir.display()),
                    source: e,
                })
        });
    let started =
        writer.and_then(|w| tokio::task::block_in_place(|| Running::start(config)).map(|r| (w, r)));
    let (writer, running) = match started {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!(session = %job.name, error = %e, "attach failed");
            // Nothing captured in this run: its directory goes (a resumed trace's keeps what it had).
            if !resumed {
                let _ = std::fs::remove_dir_all(&spool);
            }
            spool::release(&job.held, &spool);
            rep.condition(types::ATTACHED, false, e.label(), e.to_string());
            rep.fail(&job.metrics, e.label(), e.to_string());
            rep.write().await;
            return None;
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
    let windows = window.map(|every| Windows {
        ticker: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
        n: 0,
        before: Default::default(),
        spool: spool.clone(),
        keep_events,
    });
    Some(Trace {
        running,
        writer,
        rep,
        windows,
        streaming,
        write_error: None,
        budget: BudgetWindow::default(),
        budget_pct,
        budget_note,
        top: sonde_crds::ProbeParams::top_rows(job.spec.params.as_ref()),
        title: format!("sonde {} {}/{}", job.spec.probe, job.namespace, job.name),
        spool,
        to,
    })
}

/// After the stop: detach, publish the results (the last window's, for a policy) and write the final status.
async fn finish(job: &SessionJob, trace: Trace, stop: Stop, deadline: Option<SystemTime>) {
    let Trace {
        mut running,
        mut writer,
        mut rep,
        windows,
        streaming,
        mut write_error,
        top,
        title,
        spool,
        to,
        ..
    } = trace;
    let findings =
        tokio::task::block_in_place(|| running.finish(top, writer.sink(&mut write_error)));
    tally_not_kept(job, &mut rep, &mut writer);
    fill_counts(&mut rep, &running);
    let (run_time, _) = running.kernel_runtime();
    let elapsed = running.elapsed();
    let mut report = job.report(&running, &writer, &rep, stop.label(), &findings);
    drop(running); // detach now: the trace is over, writing results must not extend it
    // A policy's last window, cut short by the stop.
    let windowed = windows.is_some();
    if let Some(mut w) = windows {
        w.n += 1;
        w.describe(&mut report);
    }
    let cap_note = writer.cap_note();
    let prefix = match windowed {
        true => window_prefix(&to.prefix),
        false => to.prefix.clone(),
    };
    // The trace's summary goes into status at once: publishing can take minutes (below).
    rep.status.summary = Some(findings.summary.clone());
    let publishing = async {
        if let Some(st) = streaming {
            st.stop().await;
        }
        publish(
            job,
            writer,
            &findings,
            &title,
            &mut report,
            &prefix,
            !windowed,
        )
        .await
    };
    let published = match stop {
        Stop::Deleted => publishing.await,
        // Publishing can take minutes against a slow or unreachable store (one attempt per file; the uploader
        // retries later): the trace's counts and summary are reported now and the heartbeat goes on, so the
        // operator waits for this result instead of counting the agent as gone.
        _ => beating(&mut rep, publishing).await,
    };
    spool::release(&job.held, &spool);
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
    let left = deadline
        .and_then(|d| d.duration_since(SystemTime::now()).ok())
        .unwrap_or_default();
    let Outcome {
        phase,
        reason,
        message,
    } = outcome(&stop, &problems, left);
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
        rep.fail(&job.metrics, reason, message.clone());
    }
    let notes = [Some(message), cap_note, job.resumed_note.clone()];
    rep.status.message = Some(notes.into_iter().flatten().collect::<Vec<_>>().join("; "));
    rep.write_final().await;
}

/// Runs `work` while reporting the session's status every [`STATUS_EVERY`] (written when it has something new),
/// from now on. The two go on side by side: a slow API server never holds up the work (a write that takes longer
/// than a beat is given up, and missed beats are not made up).
async fn beating<T>(rep: &mut Reporter, work: impl std::future::Future<Output = T>) -> T {
    let beat = async {
        let mut ticks = tokio::time::interval(STATUS_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let _ = tokio::time::timeout(STATUS_EVERY, rep.report()).await;
        }
    };
    tokio::select! {
        out = work => out,
        never = beat => never,
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
    if sonde_probes::catalogue::info(spec.probe).filtered == Filtered::Netns {
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

/// Counts from the kernel and the drain; `EventsDropped` once any event was dropped.
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

pub(crate) fn unresolved_message(t: &Targets) -> Option<String> {
    let waiting = (!t.unresolved.is_empty()).then(|| {
        format!(
            "waiting for pods to run on this node: {}",
            t.unresolved.join(", ")
        )
    });
    let foreign = (!t.foreign.is_empty()).then(|| {
        format!(
            "not traced, outside the session's namespace: {}",
            t.foreign.join(", ")
        )
    });
    match (waiting, foreign) {
        (Some(w), Some(f)) => Some(format!("{w}; {f}")),
        (w, f) => w.or(f),
    }
}

/// The local deadline as a timer instant (now when it has passed); None without one.
fn deadline_instant(deadline: Option<SystemTime>) -> Option<tokio::time::Instant> {
    deadline.map(|d| {
        let left = d.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    })
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
