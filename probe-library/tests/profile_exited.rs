//! cpu-profile names a process's user frames by the mappings it had when it was sampled: after it exited (and
//! its pid is free for another process), its functions are still named. Needs root and a BTF kernel.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::time::Duration;

mod common;

use common::config;
use sonde_crds::*;
use sonde_probes::{Filter, Running};

#[test]
fn a_process_that_exited_is_named_by_its_mappings() {
    sonde_tests::requires!(Root);
    // The busy process: a small C program built here (frame pointers kept, so its stacks unwind), whose busy
    // function the profile must name after the process has exited and been reaped.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("busy.c");
    std::fs::write(
        &src,
        "#include <time.h>\n\
         __attribute__((noinline)) unsigned long sonde_exited_busy_loop(double s) {\n\
           struct timespec a, b; unsigned long x = 0; clock_gettime(CLOCK_MONOTONIC, &a);\n\
           do { for (int i = 0; i < 10000; i++) x = x * 31 + i; clock_gettime(CLOCK_MONOTONIC, &b); }\n\
           while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < s);\n\
           return x; }\n\
         int main(void) { return sonde_exited_busy_loop(1.5) == 42; }\n",
    )
    .unwrap();
    let exe = dir.path().join("sonde-busy");
    let built = std::process::Command::new("cc")
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(built.success());
    let mut busy = std::process::Command::new(&exe).spawn().unwrap();
    let pid = busy.id();
    let filter = Filter {
        pids: Some(vec![pid]),
        ..Default::default()
    };
    let params = ProbeParams {
        cpu_profile: Some(CpuProfileParams {
            frequency_hz: Some(499),
            user_stacks: Some(true),
        }),
        ..Default::default()
    };
    let mut running = Running::start(config(ProbeName::CpuProfile, filter, vec![], params))
        .expect("probe loads through its attach chain");
    // Drained as a trace does, while the process runs.
    while busy.try_wait().unwrap().is_none() {
        running.drain(|_| {});
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(busy.wait().unwrap().success());
    // Reaped: the pid is free, the process's /proc is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let findings = running.finish(50, |_| {});
    assert_eq!(running.loaded.strategy(), "perf_event");
    let hits: u64 = findings
        .folded
        .iter()
        .filter(|l| l.contains("sonde_exited_busy_loop"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    let total: u64 = findings
        .folded
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    eprintln!("{hits} of {total} samples in the busy loop");
    // Before the mappings were kept, every user frame of a process gone by the end was `[unknown]` (measured:
    // 0 of 382 named with the periodic look turned off); with them, 356 of 359 and 382 of 383.
    assert!(total >= 100, "{total} samples");
    assert!(
        hits * 10 >= total * 9,
        "busy loop named in {hits} of {total} samples: {:#?}",
        &findings.folded[..findings.folded.len().min(5)]
    );
}
