//! `sonde run` end to end as a user runs it (root, real kernel), and its refusals of bad input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::path::Path;
use std::process::Command;

fn sonde(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sonde"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("sonde runs")
}

#[test]
fn run_wakeups_example_writes_results_and_json() {
    sonde_tests::requires!(Root);
    let mut ping = sonde_tests::Load::self_bounded(&sonde_tests::fast_ping_argv());
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("r");
    let out = sonde(&[
        "run",
        "-f",
        "examples/wakeups.yaml",
        "--duration",
        "2s",
        "--json",
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    ping.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints the report");
    assert_eq!(report["probe"], "wakeups");
    assert_eq!(report["stoppedBy"], "deadline");
    let secs = report["durationSeconds"].as_f64().unwrap();
    assert!((2.0..4.0).contains(&secs), "{secs}");
    assert!(
        report["counts"]["captured"].as_u64().unwrap() > 0,
        "ping wakes something: {report}"
    );
    let attempts = report["attachAttempts"].as_array().unwrap();
    assert!(
        attempts.iter().any(|a| a["error"].is_null()),
        "one attach attempt succeeded"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"], report["summary"]);
    assert_eq!(report["folder"], out_dir.display().to_string());
    let listed = summary["results"].as_array().unwrap();
    assert!(
        listed.iter().any(|f| f == "events/manifest.json"),
        "summary.json lists the set's files: {summary}"
    );
    let (manifest, events) = sonde_probes::chunks::read_events(&out_dir).unwrap();
    assert!(manifest.complete);
    assert_eq!(
        events.len() as u64,
        report["eventsWritten"].as_u64().unwrap()
    );
}

#[test]
fn run_refuses_bad_input_naming_the_problem() {
    let out = sonde(&[
        "run",
        "-f",
        "examples/bad/unknown-probe.yaml",
        "--duration",
        "1s",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.probe") && err.contains("wakeupz"),
        "{err}"
    );

    let out = sonde(&["run", "-f", "examples/probepolicy-runq.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ProbePolicy"));

    let out = sonde(&["run", "-f", "examples/wakeups.yaml", "--duration", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));

    let out = sonde(&["run", "-f", "examples/does-not-exist.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does-not-exist.yaml"));
}

#[test]
fn validate_accepts_examples_and_probes_lists_the_library() {
    let out = sonde(&[
        "validate",
        "-f",
        "examples/wakeups.yaml",
        "-f",
        "examples/packet-latency.yaml",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sonde(&["probes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for p in [
        "wakeups",
        "packet-latency",
        "cpu-profile",
        "runq-latency",
        "tcp-retransmit",
        "tcp-connect",
        "exec",
        "oom-kill",
        "syscall-latency",
    ] {
        assert!(text.contains(p), "{p} missing from {text}");
    }
}

/// The output disk fills up mid-trace (a 256 KiB tmpfs under a flood with events on): the trace goes on to its
/// deadline, the report with the kernel's counts and summary is still printed, and the exit fails naming the
/// write that failed.
#[test]
fn a_full_output_disk_keeps_the_report_and_fails_naming_the_write() {
    sonde_tests::requires!(Root);
    let _one = sonde_tests::one_at_a_time();
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    let _mounted = Mounted(small.clone());
    let job = dir.path().join("flood.yaml");
    std::fs::write(
        &job,
        "apiVersion: sonde.dev/v1alpha1\nkind: TraceJob\nmetadata: {name: full}\nspec:\n  probe: wakeups\n  \
         target: {comms: [sched-pipe]}\n  duration: 3s\n  output: {events: true}\n",
    )
    .unwrap();
    let _load = sonde_tests::Load::sched_pipe();
    let out = sonde(&[
        "run",
        "-f",
        job.to_str().unwrap(),
        "--json",
        "--output",
        small.join("results").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed write must fail the run");
    assert!(stderr.contains("writing events"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the report, printed");
    assert_eq!(report["stoppedBy"], "deadline", "{report}");
    let captured = report["counts"]["captured"].as_u64().unwrap();
    assert!(captured > 1000, "{report}");
    // Every event is accounted for: written before the failure, or not kept from it on.
    let failed = report["counts"]["notKept"]["WriteFailed"]
        .as_u64()
        .unwrap_or(0);
    assert!(failed > 0, "{report}");
    assert_eq!(
        report["eventsWritten"].as_u64().unwrap() + failed,
        captured,
        "{report}"
    );
    let rows = report["summary"]["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["key"].as_str().unwrap().contains("sched-pipe")),
        "{report}"
    );
}
