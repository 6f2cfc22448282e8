//! The rolling windows of a standing probe (a ProbePolicy's session): each window's findings and events are
//! published on their own, then the kernel aggregates and the events file start again.

use sonde_probes::KernelStats;

use super::*;

/// The rolling windows of a standing probe.
pub(super) struct Windows {
    pub(super) ticker: tokio::time::Interval,
    /// Windows completed.
    pub(super) n: u64,
    /// The session's figures when the current window started (they are cumulative; a window reports its own).
    pub(super) before: Cumulative,
    pub(super) spool: PathBuf,
    pub(super) keep_events: bool,
}

impl Windows {
    /// Makes `report` (of the session so far) the report of window `n`: its counts, kernel counters and run time
    /// are those since the window started. Returns the window's breaches.
    pub(super) fn describe(&mut self, report: &mut RunReport) -> u64 {
        let session = Cumulative::of(report);
        report.counts = session.counts.since(&self.before.counts);
        report.kernel = session.kernel.since(&self.before.kernel);
        report.kernel_run_time_ns = session.run_time_ns.saturating_sub(self.before.run_time_ns);
        report.kernel_runs = session.runs.saturating_sub(self.before.runs);
        let breaches = report.counts.breaches;
        report.window = Some(WindowReport {
            number: self.n,
            // As long as it was: a window cut short by the stop, or one that went on when the next could not
            // start, is not the policy's window long.
            seconds: report.duration_seconds,
            breaches,
        });
        self.before = session;
        breaches
    }
}

/// The session's cumulative figures that a window reports the difference of.
#[derive(Default)]
pub(super) struct Cumulative {
    counts: Counts,
    kernel: KernelStats,
    run_time_ns: u64,
    runs: u64,
}

impl Cumulative {
    fn of(report: &RunReport) -> Self {
        Self {
            counts: report.counts.clone(),
            kernel: report.kernel,
            run_time_ns: report.kernel_run_time_ns,
            runs: report.kernel_runs,
        }
    }
}

/// How often the ring buffer is read while a window's results are published.
const DRAIN_WHILE_PUBLISHING: Duration = Duration::from_millis(100);

pub(super) async fn next_window(windows: &mut Option<Windows>) {
    match windows {
        Some(w) => {
            w.ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Trace {
    /// Ends a window: its findings and events are published, the kernel aggregates and the events file start
    /// again, and status reports the window (its summary, results, whether it breached). When the next window
    /// cannot be started (its spool directory cannot be written), this one goes on until the next tick and status
    /// says why.
    pub(super) async fn end_window(&mut self, job: &SessionJob) {
        let Trace {
            running,
            writer,
            write_error,
            rep,
            windows,
            top,
            title,
            ..
        } = self;
        let Some(w) = windows.as_mut() else {
            return;
        };
        let top = *top;
        // The next window's files first: the kernel aggregates are read and reset only once it can be written.
        let dir = w.spool.join(format!("window-{:06}", w.n + 1));
        let next = ResultsWriter::create(&dir, w.keep_events, job.spec.output.max_events)
            .map(|w| job.limited(w))
            .map_err(|e| e.to_string())
            .and_then(|next| {
                spool::start(&dir, &job.destination(&job.spec.result_prefix))
                    .map(|()| next)
                    .map_err(|e| e.to_string())
            });
        let next = match next {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(session = %job.name, error = %e, "could not start the next window; this one goes on");
                rep.status.message = Some(format!(
                    "window {} goes on: the next could not be started ({e})",
                    w.n + 1
                ));
                rep.write().await;
                return;
            }
        };
        let mut roll_error = None;
        let lasted = running.window_started.elapsed();
        let findings =
            tokio::task::block_in_place(|| running.roll(top, writer.sink(&mut roll_error)));
        let mut problems: Vec<String> = roll_error
            .into_iter()
            .map(|e| format!("writing events: {e}"))
            .collect();
        w.n += 1;
        tally_not_kept(job, rep, writer);
        let done = std::mem::replace(writer, next);
        fill_counts(rep, running);
        let mut report = job.report(running, &done, rep, "window", &findings);
        report.duration_seconds = lasted.as_secs_f64();
        let breaches = w.describe(&mut report);
        let prefix = window_prefix(&job.spec.result_prefix);
        // Uploading the window can take long against a slow store: the next window's events are read meanwhile,
        // so the ring buffer does not fill up and drop them.
        let published = {
            let publishing = publish(job, done, &findings, title, &mut report, &prefix, false);
            tokio::pin!(publishing);
            let mut drain = tokio::time::interval(DRAIN_WHILE_PUBLISHING);
            loop {
                tokio::select! {
                    published = &mut publishing => break published,
                    _ = drain.tick() => {
                        tokio::task::block_in_place(|| running.drain(writer.sink(write_error)));
                    }
                }
            }
        };
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(breaches: u64, runs: u64, run_time_ns: u64) -> RunReport {
        let mut r = RunReport::default();
        r.counts.breaches = breaches;
        r.kernel_runs = runs;
        r.kernel_run_time_ns = run_time_ns;
        r
    }

    #[tokio::test]
    async fn each_window_reports_its_own_figures_not_the_sessions() {
        let every = Duration::from_secs(10);
        let mut w = Windows {
            ticker: tokio::time::interval(every),
            n: 1,
            before: Cumulative::default(),
            spool: PathBuf::new(),
            keep_events: false,
        };
        let mut first = session(2, 100, 1_000);
        assert_eq!(w.describe(&mut first), 2);
        assert_eq!((first.kernel_runs, first.kernel_run_time_ns), (100, 1_000));
        w.n = 2;
        let mut second = session(5, 160, 1_600);
        second.duration_seconds = 9.5;
        assert_eq!(w.describe(&mut second), 3);
        assert_eq!((second.kernel_runs, second.kernel_run_time_ns), (60, 600));
        let window = second.window.expect("a window's report says which");
        assert_eq!(
            (window.number, window.seconds, window.breaches),
            (2, 9.5, 3)
        );
    }
}
