//! The rolling windows of a standing probe (a ProbePolicy's session): each window's findings and events are
//! published on their own, then the kernel aggregates and the events file start again.

use super::*;

/// The rolling windows of a standing probe.
pub(super) struct Windows {
    pub(super) every: Duration,
    pub(super) ticker: tokio::time::Interval,
    /// Windows completed.
    pub(super) n: u64,
    /// The session's counts when the current window started (they are cumulative; a window reports its own).
    pub(super) before: RunReport,
    pub(super) spool: PathBuf,
    pub(super) keep_events: bool,
}

impl Windows {
    /// Makes `report` (of the session so far) the report of window `n`: its counts, kernel counters and run time
    /// are those since the window started. Returns the window's breaches.
    pub(super) fn describe(&mut self, report: &mut RunReport) -> u64 {
        let session = report.clone();
        report.counts = session.counts.since(&self.before.counts);
        report.kernel = session.kernel.since(&self.before.kernel);
        report.kernel_run_time_ns = session
            .kernel_run_time_ns
            .saturating_sub(self.before.kernel_run_time_ns);
        report.kernel_runs = session.kernel_runs.saturating_sub(self.before.kernel_runs);
        let breaches = report.counts.breaches;
        report.window = Some(WindowReport {
            number: self.n,
            seconds: self.every.as_secs_f64(),
            breaches,
        });
        self.before = session;
        breaches
    }
}

pub(super) async fn next_window(windows: &mut Option<Windows>) {
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
pub(super) async fn end_window(
    job: &SessionJob,
    w: &mut Windows,
    running: &mut Running,
    writer: &mut ResultsWriter,
    rep: &mut Reporter,
    top: usize,
    title: &str,
) -> Result<(), String> {
    let mut write_error = None;
    let lasted = running.window_started.elapsed();
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
    let mut report = job.report(running, &done, rep, "window", &findings);
    report.duration_seconds = lasted.as_secs_f64();
    let breaches = w.describe(&mut report);
    let prefix = window_prefix(&job.spec.result_prefix);
    let published = publish(job, done, &findings, title, &mut report, &prefix, false).await;
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
