//! The run loop of a session's trace: each turn drains the ring buffer, checks Stop thresholds and the budget,
//! closes old chunks and writes the heartbeat, until the deadline, deletion, a drained node, a threshold or the
//! budget ends it.

use super::*;

/// What ends a trace from outside: the target pods changing, the session deleted, the node drained, the deadline.
pub(super) struct Signals {
    pub(super) targets: watch::Receiver<Targets>,
    pub(super) deleted: watch::Receiver<bool>,
    pub(super) drained: watch::Receiver<Option<String>>,
    pub(super) deadline: Option<SystemTime>,
}

/// A session's trace while it runs: what each turn of the loop reads and updates.
pub(super) struct Trace {
    pub(super) running: Running,
    pub(super) writer: ResultsWriter,
    pub(super) rep: Reporter,
    pub(super) windows: Option<Windows>,
    /// The trace's chunks going to the store while it runs (not a policy's windows).
    pub(super) streaming: Option<Streaming>,
    pub(super) write_error: Option<sonde_probes::Error>,
    pub(super) budget: BudgetWindow,
    pub(super) budget_pct: f64,
    pub(super) budget_note: Option<String>,
    pub(super) top: usize,
    pub(super) title: String,
    /// Where this run writes, and where its results go.
    pub(super) spool: PathBuf,
    pub(super) to: spool::Destination,
}

impl Trace {
    /// Traces until something stops it: the deadline, a drained node, deletion, a Stop threshold, the budget, or
    /// a policy window that cannot be written.
    pub(super) async fn run(&mut self, job: &SessionJob, signals: &mut Signals) -> Stop {
        let deadline_at = deadline_instant(signals.deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_status = Instant::now();
        // Set when the last drain slice stopped at its limit: the next slice starts after a yield, not a tick.
        let mut backlog = false;
        loop {
            // Checked on every turn (at least every tick): a policy keeps tracing on a cordoned node, whose pods
            // may well stay; a one-shot trace with a deadline ends here with what it has.
            if signals.deadline.is_some()
                && let Some(why) = signals.drained.borrow().clone()
            {
                return Stop::Drained(why);
            }
            tokio::select! {
                _ = sleep_until(deadline_at) => return Stop::Deadline,
                _ = next_window(&mut self.windows) => {
                    // A standing probe: publish this window, start the next, stay attached.
                    self.end_window(job).await;
                    last_status = Instant::now();
                    continue;
                }
                r = signals.deleted.changed() => if r.is_err() || *signals.deleted.borrow() { return Stop::Deleted },
                r = signals.targets.changed() => {
                    if r.is_ok() {
                        let t = signals.targets.borrow_and_update().clone();
                        self.retarget(job, &t);
                    }
                }
                _ = tick.tick(), if !backlog => {}
                _ = tokio::task::yield_now(), if backlog => {}
            }
            let (running, writer) = (&mut self.running, &mut self.writer);
            let write_error = &mut self.write_error;
            backlog =
                tokio::task::block_in_place(|| running.drain(writer.sink(write_error))).backlog;
            // A standing probe records; only a one-shot trace ends on a Stop threshold.
            if self.running.stop_requested && self.windows.is_none() {
                return Stop::Threshold;
            }
            if let Some(over) = self.over_budget() {
                return over;
            }
            // A chunk 2 s old is closed (a clock read, every turn): a reader sees events within seconds, and an
            // agent killed mid-trace loses at most the open chunk's (the next agent resumes the rest).
            if let Err(e) = self.writer.flush() {
                self.write_error.get_or_insert(e);
            }
            if last_status.elapsed() >= STATUS_EVERY {
                last_status = Instant::now();
                self.heartbeat(job).await;
            }
        }
    }

    /// The target pods changed: the kernel filter admits exactly their cgroups (and network namespaces).
    fn retarget(&mut self, job: &SessionJob, t: &Targets) {
        let mut updated = match (&t.cgroups, job.spec.all_pods) {
            (Some(ids), false) => self.running.set_cgroups(ids),
            _ => Ok(()),
        };
        if sonde_probes::catalogue::info(job.spec.probe).filtered == Filtered::Netns
            && !job.spec.all_pods
        {
            updated = updated.and(self.running.set_netns(&t.netns));
        }
        if let Err(e) = updated {
            tracing::warn!(session = %job.name, error = %e, "updating the target filter");
        }
        self.rep.status.message = job.resumed_note.clone().or_else(|| unresolved_message(t));
    }

    /// The programs' CPU time over the sliding window, once it is over the budget.
    fn over_budget(&mut self) -> Option<Stop> {
        let (run_time, _) = self.running.kernel_runtime();
        let pct = self.budget.sample(Instant::now(), run_time)?;
        (pct > self.budget_pct).then(|| {
            Stop::OverBudget(format!(
                "probe used {pct:.2}% of a CPU in the kernel over the last {:.0}s, budget {}%{}",
                self.budget.span().as_secs_f64(),
                self.budget_pct,
                self.budget_note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ))
        })
    }

    /// Every [`STATUS_EVERY`]: counts and what streamed, written when there is something new
    /// ([`Reporter::report`]).
    async fn heartbeat(&mut self, job: &SessionJob) {
        tally_not_kept(job, &mut self.rep, &mut self.writer);
        fill_counts(&mut self.rep, &self.running);
        if let Some(st) = &self.streaming {
            st.report(&mut self.rep);
        }
        self.rep.report().await;
    }
}
