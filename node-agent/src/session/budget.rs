//! The overhead budget's measure: the probe's kernel run time (`bpf_stats`) as percent of one CPU, averaged over
//! a sliding window, so a burst does not stop a session but a sustained cost does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The budget is averaged over this window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// No verdict before the window spans this much.
const MIN_SPAN: Duration = Duration::from_secs(2);

/// Kernel run time sampled once per tick, averaged over the last [`BUDGET_WINDOW`].
#[derive(Default)]
pub(super) struct BudgetWindow {
    samples: VecDeque<(Instant, Duration)>,
}

impl BudgetWindow {
    /// Records the probes' total kernel run time at `now`; percent of one CPU over the window, once it spans at
    /// least 2 s.
    pub(super) fn sample(&mut self, now: Instant, run_time: Duration) -> Option<f64> {
        self.samples.push_back((now, run_time));
        while self.samples.len() > 2 && now - self.samples[1].0 >= BUDGET_WINDOW {
            self.samples.pop_front();
        }
        let span = self.span();
        let (_, first) = self.samples.front()?;
        (span >= MIN_SPAN)
            .then(|| run_time.saturating_sub(*first).as_secs_f64() / span.as_secs_f64() * 100.0)
    }

    /// How much time the window covers now.
    pub(super) fn span(&self) -> Duration {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_verdict_before_two_seconds_then_the_average_over_the_window() {
        let t0 = Instant::now();
        let mut w = BudgetWindow::default();
        // 5 % of a CPU: 50 ms of kernel time per second, sampled every 500 ms.
        let at = |i: u32| (t0 + 500 * MS * i, 25 * MS * i);
        for i in 0..4 {
            let (t, run) = at(i);
            assert_eq!(w.sample(t, run), None, "a verdict after {:?}", 500 * MS * i);
        }
        let (t, run) = at(4);
        let pct = w.sample(t, run).unwrap();
        assert!((pct - 5.0).abs() < 1e-9, "{pct}");
    }

    #[test]
    fn a_burst_ages_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = BudgetWindow::default();
        // A 1 s burst at 100 %, then idle: over the first 2 s that is 50 %; 12 s later the burst is out.
        assert_eq!(w.sample(t0, Duration::ZERO), None);
        assert_eq!(w.sample(t0 + 1000 * MS, 1000 * MS), None);
        let pct = w.sample(t0 + 2000 * MS, 1000 * MS).unwrap();
        assert!((pct - 50.0).abs() < 1e-9, "{pct}");
        let mut last = pct;
        for s in 3..=14u32 {
            last = w.sample(t0 + 1000 * MS * s, 1000 * MS).unwrap();
        }
        assert_eq!(last, 0.0, "the burst still counts after 14 s");
        assert!(w.span() <= BUDGET_WINDOW + 1000 * MS);
    }
}
