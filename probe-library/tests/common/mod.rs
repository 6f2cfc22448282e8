//! Shared by the kernel tests: load a probe, run a workload while tracing, collect what it reported.
#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_crds::*;
use sonde_probes::{Filter, Findings, KernelStats, ProbeConfig, Running};

pub(crate) struct Outcome {
    pub events: Vec<Value>,
    pub findings: Findings,
    pub stats: KernelStats,
    pub strategy: String,
}

pub(crate) fn config(
    probe: ProbeName,
    filter: Filter,
    thresholds: Vec<Threshold>,
    params: ProbeParams,
) -> ProbeConfig {
    ProbeConfig {
        probe,
        params,
        filter,
        thresholds,
        output: Output::default(),
    }
}

/// A threshold that records breaches.
pub(crate) fn threshold(metric: Metric, comparison: Comparison, value: f64) -> Threshold {
    Threshold {
        metric,
        comparison,
        value,
        action: ThresholdAction::Record,
    }
}

/// Loads the probe, runs `load` while tracing for `duration`, and returns everything the probe reported.
pub(crate) fn trace(
    cfg: ProbeConfig,
    duration: Duration,
    load: impl FnOnce() + Send + 'static,
) -> Outcome {
    trace_without(cfg, &[], duration, load)
}

/// [`trace`] with the attach strategies in `skip` passed over: a fallback further down the chain.
pub(crate) fn trace_without(
    cfg: ProbeConfig,
    skip: &[&str],
    duration: Duration,
    load: impl FnOnce() + Send + 'static,
) -> Outcome {
    let mut running =
        Running::start_without(cfg, skip).expect("probe loads through its attach chain");
    let strategy = running.loaded.strategy();
    let worker = std::thread::spawn(load);
    let mut events = Vec::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if !running.drain(|e| events.push(e.json.clone())).backlog {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    worker.join().expect("workload thread");
    let findings = running.finish(50, |e| events.push(e.json.clone()));
    Outcome {
        events,
        findings,
        stats: running.kernel_stats(),
        strategy,
    }
}

/// A busy function for cpu-profile tests to find by name in the folded stacks.
#[inline(never)]
pub(crate) fn sonde_profile_busy_loop(until: Instant) -> u64 {
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}
