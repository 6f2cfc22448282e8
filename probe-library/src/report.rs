//! `summary.json`: one shape for every trace, whether `sonde run` wrote it on this machine or a node agent wrote
//! it for a ProbeSession (or for one window of a policy's session). `sonde run --json` prints the same.

use serde::Serialize;
use sonde_vocab::{Counts, Summary};

use crate::{AttachAttempt, KernelStats, Running};

/// What a finished trace (or window) did and found.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// The TraceJob's name (`sonde run`), or the ProbeSession as `namespace/name`.
    pub job: String,
    /// The node it ran on; absent for `sonde run`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub probe: String,
    /// Set when this is one window of a standing policy's session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowReport>,
    /// The attach strategy of each hook that loaded (`tp_btf+tracepoint`, ...).
    pub attach_strategy: String,
    /// Every attempt along the hooks' attach chains, with the kernel's answer to those that failed.
    pub attach_attempts: Vec<AttachAttempt>,
    /// From attach (or the window's start) to the stop (detaching and the final drain come after).
    pub duration_seconds: f64,
    /// `deadline`, `interrupt`, `threshold`, `deleted`, `window`, ...
    pub stopped_by: String,
    /// CLOCK_MONOTONIC (ns) when the trace stopped, before detaching: with the time a stop was asked for, by the
    /// same clock, how soon it took effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at_monotonic_ns: Option<u64>,
    /// How long detaching took after the stop (the kernel's RCU grace periods, seconds under a flood).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detach_seconds: Option<f64>,
    /// Events captured, dropped (by reason), not kept (by reason), threshold breaches: the window's own for a
    /// window, as are the kernel's counters and run time below.
    pub counts: Counts,
    /// Events written to `events/` (captured minus those not kept).
    pub events_written: u64,
    /// The kernel's own counters: records seen, emitted, dropped with the ring buffer full, breaches.
    pub kernel: KernelStats,
    /// CPU time the probe's programs ran in the kernel, and how many times they ran.
    pub kernel_run_time_ns: u64,
    pub kernel_runs: u64,
    /// Anything a reader should know about how the targets were chosen or the trace was kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub summary: Summary,
    /// Where `sonde run` wrote the result set; absent on a node (the set's place in the store is its prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// The other files of the result set, relative to its folder (filled by
    /// [`crate::results::ResultsWriter::write_summary`]); the events' chunks are listed in `events/manifest.json`.
    pub results: Vec<String>,
}

/// One window of a standing policy's session.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowReport {
    /// 1, 2, ... within the session.
    pub number: u64,
    /// The policy's window length.
    pub seconds: f64,
    /// Breaches in this window (`counts.breaches` is the session's so far).
    pub breaches: u64,
}

impl Running {
    /// Counts so far: captured, dropped by reason, the kernel's breaches. `not_kept` is the results writer's.
    pub fn counts(&self) -> Counts {
        let drops = self.drops();
        Counts::new(
            self.captured,
            drops.ring_buffer_full,
            drops.unread_at_stop,
            self.kernel_stats().breaches,
        )
    }

    /// The report of the trace (or current window) so far; the caller adds what only it knows (node, window,
    /// notes, counts not kept) before
    /// [`crate::results::ResultsWriter::write_summary`].
    pub fn report(&self, job: String, stopped_by: &str, summary: Summary) -> RunReport {
        let (run_time, runs) = self.kernel_runtime();
        RunReport {
            job,
            node: None,
            probe: self.config.probe.to_string(),
            window: None,
            attach_strategy: self.loaded.strategy(),
            attach_attempts: self.loaded.attempts.clone(),
            duration_seconds: self
                .traced
                .unwrap_or_else(|| self.window_started.elapsed())
                .as_secs_f64(),
            stopped_by: stopped_by.to_string(),
            stopped_at_monotonic_ns: self.stopped_at_ns,
            detach_seconds: self.detached_in.map(|d| d.as_secs_f64()),
            counts: self.counts(),
            events_written: 0,
            kernel: self.kernel_stats(),
            kernel_run_time_ns: u64::try_from(run_time.as_nanos()).unwrap_or(u64::MAX),
            kernel_runs: runs,
            notes: Vec::new(),
            summary,
            folder: None,
            results: Vec::new(),
        }
    }
}
