//! `sonde run` under overload (root, real kernel): two unbounded sched-pipe loads keep both cores busy and wake
//! each other far faster than the events can be written. The deadline, Ctrl-C and a Stop threshold still end
//! the run on time, drops are counted and reported, and the kernel's pair counts stay exact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sonde_tests::{LOAD_BOUND, Load};

fn job(dir: &Path, comms: &str, thresholds: &str) -> PathBuf {
    let path = dir.join("flood.yaml");
    let yaml = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {{name: flood}}\nspec:\n  probe: wakeups\n  \
         target: {{comms: [{comms}]}}\n  duration: 60s\n  output: {{events: true}}\n{thresholds}"
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

struct Run {
    child: Child,
    attached: Instant,
    out_dir: PathBuf,
    _dir: tempfile::TempDir,
    _loads: Vec<Load>,
}

/// Two sched-pipe pairs: a few pairs at tens of thousands of wakeups a second each.
fn pipes() -> Vec<Load> {
    vec![Load::sched_pipe(), Load::sched_pipe()]
}

/// Starts `sonde run` on `loads`; returns once it says it attached.
fn start(loads: Vec<Load>, comms: &str, duration: &str, thresholds: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("results");
    let file = job(dir.path(), comms, thresholds);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args([
            "run",
            "-f",
            file.to_str().unwrap(),
            "--json",
            "--duration",
            duration,
        ])
        .arg("--output")
        .arg(&out_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonde runs");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let attached = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains("attached via") => break Instant::now(),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("sonde run never said it attached ({e})");
            }
        }
    };
    Run {
        child,
        attached,
        out_dir,
        _dir: dir,
        _loads: loads,
    }
}

impl Run {
    /// Waits for the exit (at most 20 s); returns the time since attach and the JSON report.
    fn finish(mut self) -> (Duration, Value, PathBuf, Run) {
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("sonde run still running 20 s later");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = self.attached.elapsed();
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(status.success(), "sonde run failed: {status}; {stdout}");
        let report: Value = serde_json::from_str(&stdout).expect("--json report");
        let out_dir = self.out_dir.clone();
        (took, report, out_dir, self)
    }
}

/// Every event the kernel produced is captured or counted as dropped; the pair counts are the kernel's own.
fn assert_accounted(report: &Value, out_dir: &Path) {
    let k = &report["kernel"];
    let seen = k["seen"].as_u64().unwrap();
    let emitted = k["emitted"].as_u64().unwrap();
    let counts = &report["counts"];
    let captured = counts["captured"].as_u64().unwrap();
    let unread = counts["droppedUnreadAtStop"].as_u64().unwrap();
    let ring_full = counts["dropped"].as_u64().unwrap() - unread;
    assert_eq!(ring_full, k["dropped"].as_u64().unwrap(), "{report}");
    // The debug build is the overload the issue describes: its decoder is far slower than these loads produce.
    // A release build keeps up on this machine (about 290k events/s, measured), so there the same run checks
    // timing and exact accounting; probe-library/tests/overload.rs forces the ring full in both builds.
    if cfg!(debug_assertions) {
        assert!(
            ring_full > 0,
            "the ring never filled: not an overload {report}"
        );
    }
    assert_eq!(seen, emitted + ring_full, "{report}");
    assert_eq!(emitted, captured + unread, "{report}");
    // Absent with no drops (a release build keeps up).
    let pct = counts["droppedPercent"].as_f64().unwrap_or(0.0);
    let dropped = ring_full + unread;
    let expect = 100.0 * dropped as f64 / (captured + dropped).max(1) as f64;
    assert!((pct - expect).abs() < 0.01, "{pct} vs {expect}");
    let figure = report["summary"]["figures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "wakeups")
        .expect("wakeups figure");
    assert_eq!(figure["value"].as_f64().unwrap() as u64, seen, "{report}");
    let (_, events) = sonde_probes::chunks::read_events(out_dir).unwrap();
    assert_eq!(
        events.len() as u64,
        report["eventsWritten"].as_u64().unwrap()
    );
    eprintln!(
        "seen {seen}, captured {captured}, dropped {ring_full} + {unread} unread at stop ({pct}%)"
    );
}

#[test]
fn the_deadline_holds_under_a_flood() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    let (took, report, out_dir, _run) = start(pipes(), "sched-pipe", "3s", "").finish();
    assert_eq!(report["stoppedBy"], "deadline", "{report}");
    // The trace ends at the deadline by the process's own clock (attach to the stop). The exit also waits for the
    // detach (the kernel's RCU grace periods: up to 3.4 s under these floods), the final drain and the results
    // being written, which take what the machine gives: 3.8 s after attaching on an idle machine, 7.4 s once in
    // CI right after the release build. It is only bounded against a hang.
    let traced = Duration::from_secs_f64(report["durationSeconds"].as_f64().unwrap());
    assert!(
        traced < Duration::from_millis(3500),
        "traced for {traced:?} (exited {took:?} after attaching)"
    );
    assert!(took >= Duration::from_secs(3), "exited early: {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "exited {took:?} after attaching (traced for {traced:?})"
    );
    assert_accounted(&report, &out_dir);
}

#[test]
fn ctrl_c_stops_a_flooded_run_and_keeps_its_results() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    let run = start(pipes(), "sched-pipe", "60s", "");
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    let sent_ns = sonde_tests::monotonic_ns();
    let st = Command::new("kill")
        .args(["-INT", &run.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (_, report, out_dir, _run) = run.finish();
    let exited = sent.elapsed();
    assert_eq!(report["stoppedBy"], "interrupt", "{report}");
    // Ctrl-C ends the trace within 0.5 s (ARCHITECTURE.md, Overload), by the run's own clock: from the signal to the stop, both on
    // CLOCK_MONOTONIC. Unloading the programs comes after and is the kernel's pace (RCU grace periods, which two
    // floods on two cores stretch to seconds): reported apart, bounded only against a hang.
    let stopped = stop_latency(&report, sent_ns);
    eprintln!(
        "trace stopped {stopped:?} after SIGINT; detached in {}s; exited {exited:?} after it",
        report["detachSeconds"]
    );
    assert!(
        stopped <= Duration::from_millis(500),
        "the trace stopped {stopped:?} after SIGINT"
    );
    assert!(
        exited < Duration::from_secs(15),
        "exited {exited:?} after SIGINT"
    );
    assert_accounted(&report, &out_dir);
}

/// From `asked_ns` (CLOCK_MONOTONIC) to the stop the run reports by the same clock.
fn stop_latency(report: &Value, asked_ns: u64) -> Duration {
    let stopped_ns = report["stoppedAtMonotonicNs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stoppedAtMonotonicNs: {report}"));
    Duration::from_nanos(stopped_ns.saturating_sub(asked_ns))
}

#[test]
fn a_stop_threshold_ends_a_flooded_run() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    // The flood: sched-messaging's hundreds of pairs, each far under the threshold, together far more events
    // than are read. Then one sched-pipe pair crosses it within milliseconds, while the ring is full: the
    // breaching event itself is likely dropped, and the kernel's breach count must stop the run.
    let flood = Load::start(
        LOAD_BOUND,
        &[
            "perf",
            "bench",
            "sched",
            "messaging",
            "-p",
            "-g",
            "4",
            "-l",
            "10000000",
        ],
    );
    let thresholds = "  thresholds: [{metric: wakeupsPerSecond, value: 1000, action: Stop}]\n";
    let mut run = start(
        vec![flood],
        "sched-messaging, sched-pipe",
        "60s",
        thresholds,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "stopped before any pair crossed the threshold"
    );
    // The bound below is on how soon a breach ends the run, not on how soon a starved load can breach: the
    // trigger is favoured by the scheduler (the flood and the decoder share the two CPUs with it).
    let trigger = Instant::now();
    let trigger_ns = sonde_tests::monotonic_ns();
    run._loads.push(Load::sched_pipe_favoured());
    let (_, report, out_dir, _run) = run.finish();
    let exited = trigger.elapsed();
    assert_eq!(report["stoppedBy"], "threshold", "{report}");
    // A Stop threshold ends the trace within 3 s of the breaching load's start (ARCHITECTURE.md), by the run's clock;
    // the detach after it is the kernel's pace (see ctrl_c_stops_a_flooded_run_and_keeps_its_results).
    let stopped = stop_latency(&report, trigger_ns);
    eprintln!(
        "trace stopped {stopped:?} after the breach began; detached in {}s; exited {exited:?} after it",
        report["detachSeconds"]
    );
    assert!(
        stopped <= Duration::from_secs(3),
        "the trace stopped {stopped:?} after the breach began; ran {}s",
        report["durationSeconds"]
    );
    assert!(
        exited < Duration::from_secs(15),
        "exited {exited:?} after the breach"
    );
    assert!(report["kernel"]["breaches"].as_u64().unwrap() > 0);
    assert_accounted(&report, &out_dir);
}
