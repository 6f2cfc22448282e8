//! A running probe: drains the ring buffer through the probe's aggregator in bounded slices, keeps counts,
//! reads kernel stats (drops, breaches, program run time) and produces the findings at the end.
//!
//! The kernel can produce events faster than user space decodes them (a scheduler-heavy node, a debug build).
//! A drain that reads until the ring is empty then never returns, and everything that must happen on time
//! (the deadline, Ctrl-C, Stop thresholds, the budget, status heartbeats) starves. So every drain is bounded
//! ([`DrainLimit`]): callers get control back after a slice and loop again at once while a backlog remains.
//! The kernel counts what it could not submit while the ring was full; at stop the programs are detached first,
//! so the final drain has a finite amount to read, and what it cannot read within its time bound is counted as
//! dropped too ([`Drops`]). Aggregates kept in kernel maps (pair counts, histograms) never depend on the ring
//! and stay exact.

use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;
use sonde_probe_abi::stat;
use sonde_vocab::{Metric, ThresholdAction};

use crate::aggregate::{Aggregator, Event, Findings, aggregator};
use crate::config::ProbeConfig;
use crate::error::Result;
use crate::loader::{self, Loaded};

/// Kernel-side counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct KernelStats {
    pub seen: u64,
    pub emitted: u64,
    pub dropped: u64,
    pub breaches: u64,
}

impl KernelStats {
    /// What the kernel counted since `earlier` (of the same programs): a window's own counts.
    pub fn since(&self, earlier: &KernelStats) -> KernelStats {
        KernelStats {
            seen: self.seen.saturating_sub(earlier.seen),
            emitted: self.emitted.saturating_sub(earlier.emitted),
            dropped: self.dropped.saturating_sub(earlier.dropped),
            breaches: self.breaches.saturating_sub(earlier.breaches),
        }
    }
}

/// The most records the ring buffer can hold: `events` in bpf/sonde.h is 4 MiB, and a record is at least its
/// 8-byte header and 8 bytes of event.
const RING_RECORDS_MAX: u64 = (4 << 20) / 16;

/// How much one drain call may do: at most `records` records or `time`, whichever ends first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainLimit {
    pub records: usize,
    pub time: Duration,
}

impl DrainLimit {
    /// One slice of a trace loop: short enough that a 100 ms tick, a deadline or a signal is never held up.
    pub const SLICE: DrainLimit = DrainLimit {
        records: 65_536,
        time: Duration::from_millis(20),
    };
    /// The final drain after the programs are detached: what is still unread after this is counted as dropped.
    /// Short, because it delays the stop a user asked for (deadline, Ctrl-C, Stop threshold).
    pub const FINAL: DrainLimit = DrainLimit {
        records: usize::MAX,
        time: Duration::from_millis(100),
    };
}

/// What one drain call did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Drained {
    /// Events handed to the sink.
    pub events: usize,
    /// The limit ended the call with records still waiting: call again soon (without sleeping).
    pub backlog: bool,
}

/// Events the kernel produced that never reached the results, by reason.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Drops {
    /// The ring buffer was full when the kernel tried to submit (user space behind); counted in the kernel.
    pub ring_buffer_full: u64,
    /// Still in the ring buffer when the final drain's time bound ran out.
    pub unread_at_stop: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.ring_buffer_full + self.unread_at_stop
    }
}

pub struct Running {
    pub loaded: Loaded,
    pub config: ProbeConfig,
    aggregator: Box<dyn Aggregator>,
    ring: Option<RingBuf<MapData>>,
    pub started: Instant,
    /// Start of the current window (the start, unless [`Running::roll`] was called).
    pub window_started: Instant,
    pub captured: u64,
    /// A breach of a threshold whose action is Stop was seen.
    pub stop_requested: bool,
    /// Records left in the ring buffer by the final drain.
    unread_at_stop: u64,
    /// The kernel threshold is a Stop threshold: its breach count in the kernel stops the trace.
    kernel_stop: bool,
    /// Programs' run time and count, read just before they were detached (after that the kernel has none).
    detached_runtime: Option<(Duration, u64)>,
    /// How long the trace (or its last window) ran, from attach to the stop: set by [`Running::finish`], before
    /// detaching, which under a flood waits out the kernel's RCU grace periods for seconds.
    pub traced: Option<Duration>,
    /// CLOCK_MONOTONIC (ns) at that stop: a caller that knows when it asked for the stop (a signal, a breach),
    /// by the same clock, measures how soon the trace ended, apart from the detach that follows.
    pub stopped_at_ns: Option<u64>,
    /// How long detaching took (the kernel's RCU grace periods; seconds under a flood).
    pub detached_in: Option<Duration>,
}

impl Running {
    pub fn start(config: ProbeConfig) -> Result<Running> {
        Self::start_without(config, &[])
    }

    /// [`Running::start`] passing over the attach strategies in `skip` ([`loader::load_without`]).
    pub fn start_without(config: ProbeConfig, skip: &[&str]) -> Result<Running> {
        let mut loaded = loader::load_without(&config, skip)?;
        let ring = loaded
            .ebpf
            .take_map("events")
            .and_then(|m| RingBuf::try_from(m).ok());
        Ok(Running {
            kernel_stop: config.kernel_threshold_stops(),
            aggregator: aggregator(config.probe),
            loaded,
            config,
            ring,
            started: Instant::now(),
            window_started: Instant::now(),
            captured: 0,
            stop_requested: false,
            unread_at_stop: 0,
            detached_runtime: None,
            traced: None,
            stopped_at_ns: None,
            detached_in: None,
        })
    }

    /// One slice of [`DrainLimit::SLICE`]: decodes waiting records, handing each event to `sink`.
    pub fn drain(&mut self, sink: impl FnMut(&Event)) -> Drained {
        self.drain_within(DrainLimit::SLICE, sink)
    }

    /// Decodes waiting records until the ring is empty or `limit` is reached.
    pub fn drain_within(&mut self, limit: DrainLimit, mut sink: impl FnMut(&Event)) -> Drained {
        self.aggregator.observe(&self.loaded.ebpf);
        let Some(ring) = self.ring.as_mut() else {
            return Drained::default();
        };
        let start = Instant::now();
        let mut out = Drained::default();
        let mut read = 0usize;
        loop {
            // Checking the clock every 64 records keeps its cost out of the per-record path.
            if read >= limit.records || (read % 64 == 63 && start.elapsed() >= limit.time) {
                out.backlog = true;
                break;
            }
            let Some(item) = ring.next() else { break };
            read += 1;
            if let Some(ev) = self.aggregator.record(&item) {
                out.events += 1;
                if ev.breach && is_stop_breach(&self.config, &ev) {
                    self.stop_requested = true;
                }
                sink(&ev);
            }
        }
        self.captured += out.events as u64;
        if self.kernel_stop && !self.stop_requested && self.kernel_stats().breaches > 0 {
            self.stop_requested = true;
        }
        out
    }

    /// Events that never reached the results, by reason.
    pub fn drops(&self) -> Drops {
        Drops {
            ring_buffer_full: self.kernel_stats().dropped,
            unread_at_stop: self.unread_at_stop,
        }
    }

    /// Detaches and unloads every program: the kernel produces nothing more, the maps stay readable.
    fn detach(&mut self) {
        if self.detached_runtime.is_some() {
            return;
        }
        self.detached_runtime = Some(self.kernel_runtime());
        loader::detach(&mut self.loaded);
    }

    /// Counts and discards what is left in the ring (cheap: nothing is decoded). Only after [`Self::detach`],
    /// when the ring cannot refill, so at most a full ring's records; bounded by that all the same: a program
    /// the kernel failed to unload would refill it as fast as it is read, and the stop must not wait on that.
    fn discard_unread(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mut left = RING_RECORDS_MAX;
        while ring.next().is_some() {
            self.unread_at_stop += 1;
            left -= 1;
            if left == 0 {
                tracing::warn!(
                    probe = %self.config.probe,
                    "the ring buffer still fills after detaching; a program may have failed to unload"
                );
                return;
            }
        }
    }
}

fn is_stop_breach(config: &ProbeConfig, ev: &Event) -> bool {
    let Some(value) = ev.value else { return false };
    config.thresholds.iter().any(|t| {
        t.action == ThresholdAction::Stop
            && t.metric != Metric::EventsPerSecond
            && match t.comparison {
                sonde_vocab::Comparison::GreaterThan => value > t.value,
                sonde_vocab::Comparison::GreaterOrEqual => value >= t.value,
            }
    })
}

impl Running {
    pub fn kernel_stats(&self) -> KernelStats {
        let Some(map) = self.loaded.ebpf.map("stats") else {
            return KernelStats::default();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return KernelStats::default();
        };
        let get = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        KernelStats {
            seen: get(stat::SEEN),
            emitted: get(stat::EMITTED),
            dropped: get(stat::DROPPED),
            breaches: get(stat::BREACHES),
        }
    }

    /// Total kernel time spent in this probe's programs (needs `kernel.bpf_stats_enabled=1`) and run count.
    pub fn kernel_runtime(&self) -> (Duration, u64) {
        if let Some(r) = self.detached_runtime {
            return r;
        }
        let mut total = Duration::ZERO;
        let mut runs = 0;
        for name in &self.loaded.programs {
            if let Some(p) = self.loaded.ebpf.program(name)
                && let Ok(info) = p.info()
            {
                total += info.run_time();
                runs += info.run_count();
            }
        }
        (total, runs)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Replaces the admitted cgroups (pods came or went).
    pub fn set_cgroups(&mut self, ids: &[u64]) -> Result<()> {
        let probe = self.config.probe;
        crate::filter::set_exactly(&mut self.loaded.ebpf, probe, "filter_cgroups", ids)
    }

    /// Replaces the admitted network namespaces (packet-latency: the target pods' namespaces changed).
    pub fn set_netns(&mut self, inodes: &[u32]) -> Result<()> {
        let probe = self.config.probe;
        crate::filter::set_exactly(&mut self.loaded.ebpf, probe, "filter_netns", inodes)
    }

    /// Ends the trace: detaches (the kernel aggregates are final and the ring stops filling), drains what is
    /// left for at most [`DrainLimit::FINAL`], counts the rest as dropped ([`Drops::unread_at_stop`]), then reads
    /// the kernel aggregates. Bounded in time however fast events arrived.
    pub fn finish(&mut self, top: usize, sink: impl FnMut(&Event)) -> Findings {
        let elapsed = self.window_started.elapsed();
        self.traced = Some(elapsed);
        self.stopped_at_ns = Some(monotonic_ns());
        let detaching = Instant::now();
        self.detach();
        self.detached_in = Some(detaching.elapsed());
        self.drain_within(DrainLimit::FINAL, sink);
        self.discard_unread();
        self.aggregator.finish(&mut self.loaded.ebpf, elapsed, top)
    }

    /// Ends a window of a standing probe: the findings since the last roll, then the aggregates start again
    /// from zero. Programs stay attached; one bounded slice is drained first, and records still waiting belong
    /// to the next window's events (the kernel aggregates are read and reset here, whatever the backlog).
    pub fn roll(&mut self, top: usize, sink: impl FnMut(&Event)) -> Findings {
        self.drain(sink);
        let elapsed = self.window_started.elapsed();
        let findings = self.aggregator.finish(&mut self.loaded.ebpf, elapsed, top);
        crate::window::reset_kernel_aggregates(
            &mut self.loaded.ebpf,
            crate::catalogue::info(self.loaded.probe).aggregates,
        );
        self.aggregator.reset();
        self.window_started = Instant::now();
        findings
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every process on the host shares (and the kernel's ktime).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or_default()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or_default())
}
