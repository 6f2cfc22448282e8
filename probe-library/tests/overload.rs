//! Overload: the kernel produces wakeup events faster than user space reads them (an unbounded sched-pipe load
//! and a consumer slowed on purpose, so this holds in debug and release builds alike). Every drain call still
//! returns after its slice, `finish` and `roll` return in bounded time, every event is accounted for
//! (captured, dropped with the ring full, or counted unread at stop), and the kernel's pair counts stay exact.
//! Needs root and a BTF kernel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::{Duration, Instant};

use sonde_crds::*;
use sonde_probes::{DrainLimit, Filter, Findings, ProbeConfig, Running};
use sonde_tests::Load;

mod common;

fn flood() -> ProbeConfig {
    let filter = Filter {
        comms: Some(vec!["sched-pipe".into()]),
        ..Default::default()
    };
    common::config(ProbeName::Wakeups, filter, vec![], ProbeParams::default())
}

/// A consumer slower than any producer: 1 ms of work every 16 events (at most 16k events/s).
fn slow(n: &mut u64) {
    *n += 1;
    if n.is_multiple_of(16) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wakeups(f: &Findings) -> u64 {
    f.summary
        .figures
        .iter()
        .find(|f| f.name == "wakeups")
        .map(|f| f.value as u64)
        .unwrap_or(0)
}

/// Generous bound on one slice: its time limit, plus one batch of slow events between clock reads, plus
/// scheduling delay on a machine whose two cores the load keeps busy.
const SLICE_BOUND: Duration = Duration::from_millis(300);

#[test]
fn drains_stay_bounded_and_every_event_is_accounted_for() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    let _load = Load::sched_pipe();
    let mut running = Running::start(flood()).expect("wakeups loads");
    let mut n = 0u64;
    let (mut slowest, mut backlogs, mut slices) = (Duration::ZERO, 0, 0);
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let t = Instant::now();
        let d = running.drain(|_| slow(&mut n));
        slowest = slowest.max(t.elapsed());
        slices += 1;
        if d.backlog {
            backlogs += 1;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(
        backlogs > 0,
        "no slice ended with a backlog in {slices}: the consumer kept up, so nothing here was overloaded"
    );
    assert!(
        slowest < SLICE_BOUND,
        "a drain slice took {slowest:?} (limit {:?})",
        DrainLimit::SLICE.time
    );
    let t = Instant::now();
    let findings = running.finish(10_000, |_| slow(&mut n));
    let took = t.elapsed();
    // finish = detach + the final drain (bounded by FINAL.time) + reading the maps. Detach waits out the kernel's
    // RCU grace periods, which the flood stretches (0.14 s to 3.4 s measured on two cores): bounded so that a
    // drain that never returns fails, not the kernel's pace.
    assert!(
        took < DrainLimit::FINAL.time + Duration::from_secs(5),
        "finish took {took:?}"
    );
    let k = running.kernel_stats();
    let drops = running.drops();
    eprintln!(
        "{slices} slices, {backlogs} with a backlog, slowest {slowest:?}; finish {took:?}; {k:?}; {drops:?}; \
         captured {}",
        running.captured
    );
    assert!(drops.ring_buffer_full > 0, "the ring never filled: {k:?}");
    assert!(
        drops.unread_at_stop > 0,
        "the final drain read everything: its bound was never exercised ({drops:?})"
    );
    // Every wakeup the filter admitted tried to reserve a record; every reserved record was read or counted.
    assert_eq!(k.seen, k.emitted + k.dropped, "{k:?}");
    assert_eq!(
        k.emitted,
        running.captured + drops.unread_at_stop,
        "{k:?} {drops:?}"
    );
    assert_eq!(n, running.captured);
    // The pair counts live in a kernel map: every admitted wakeup is in them, dropped events included.
    assert_eq!(wakeups(&findings), k.seen, "{:#?}", findings.summary);
}

#[test]
fn a_window_roll_under_a_flood_returns_in_bounded_time() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    let mut load = Load::sched_pipe();
    let mut running = Running::start(flood()).expect("wakeups loads");
    let mut n = 0u64;
    for window in 1..=2 {
        let end = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < end {
            if !running.drain(|_| slow(&mut n)).backlog {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let t = Instant::now();
        let findings = running.roll(10, |_| slow(&mut n));
        let took = t.elapsed();
        assert!(took < SLICE_BOUND, "roll {window} took {took:?}");
        assert!(
            wakeups(&findings) > 1000,
            "window {window} counted {} wakeups",
            wakeups(&findings)
        );
    }
    assert!(running.kernel_stats().dropped > 0, "never overloaded");
    load.stop();
    // The roll kept everything attached: after the load ends the probe still runs and finishes cleanly.
    let t = Instant::now();
    running.finish(10, |_| {});
    assert!(t.elapsed() < Duration::from_secs(1));
}
