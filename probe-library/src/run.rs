//! A running probe: drains the ring buffer through the probe's aggregator, keeps counts, reads kernel stats
//! (drops, breaches, program run time) and produces the findings at the end.

use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use serde::Serialize;
use sonde_crds::{Metric, ThresholdAction};
use sonde_probe_abi::stat;

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
}

impl Running {
    pub fn start(config: ProbeConfig) -> Result<Running> {
        let mut loaded = loader::load(&config)?;
        let ring = loaded
            .ebpf
            .take_map("events")
            .and_then(|m| RingBuf::try_from(m).ok());
        Ok(Running {
            aggregator: aggregator(config.probe),
            loaded,
            config,
            ring,
            started: Instant::now(),
            window_started: Instant::now(),
            captured: 0,
            stop_requested: false,
        })
    }

    /// Decodes every record waiting in the ring buffer, handing each event to `sink`.
    pub fn drain(&mut self, mut sink: impl FnMut(&Event)) -> usize {
        let Some(ring) = self.ring.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while let Some(item) = ring.next() {
            if let Some(ev) = self.aggregator.record(&item) {
                n += 1;
                if ev.breach && is_stop_breach(&self.config, &ev) {
                    self.stop_requested = true;
                }
                sink(&ev);
            }
        }
        self.captured += n as u64;
        n
    }
}

fn is_stop_breach(config: &ProbeConfig, ev: &Event) -> bool {
    let Some(value) = ev.value else { return false };
    config.thresholds.iter().any(|t| {
        t.action == ThresholdAction::Stop
            && t.metric != Metric::EventsPerSecond
            && match t.comparison {
                sonde_crds::Comparison::GreaterThan => value > t.value,
                sonde_crds::Comparison::GreaterOrEqual => value >= t.value,
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

    /// Drains what is left, then reads the kernel aggregates. Detaches when the returned value drops.
    pub fn finish(&mut self, top: usize, sink: impl FnMut(&Event)) -> Findings {
        self.drain(sink);
        let elapsed = self.window_started.elapsed();
        self.aggregator.finish(&mut self.loaded.ebpf, elapsed, top)
    }

    /// Ends a window of a standing probe: the findings since the last roll, then the aggregates start again
    /// from zero. Programs stay attached.
    pub fn roll(&mut self, top: usize, sink: impl FnMut(&Event)) -> Findings {
        let findings = self.finish(top, sink);
        crate::window::reset_kernel_aggregates(&mut self.loaded.ebpf);
        self.aggregator.reset();
        self.window_started = Instant::now();
        findings
    }
}
