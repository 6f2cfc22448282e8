//! biolatency against the block layer's own count: the requests a selected task makes to a loop device, measured
//! from issue to completion, are exactly the requests it made (the device's `/sys/block/<dev>/stat` says how many
//! it completed), and neither another task's requests to the same device nor any request to another device is
//! counted. Needs root and a BTF kernel, as every kernel test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test reports failure by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::{config, threshold, trace_without};
use sonde_crds::*;
use sonde_probes::Filter;

/// A loop device over a file on tmpfs, detached and removed on drop.
struct LoopDevice {
    dev: PathBuf,
    file: PathBuf,
}

impl LoopDevice {
    fn new(name: &str) -> LoopDevice {
        let file = PathBuf::from(format!(
            "/dev/shm/sonde-biolatency-{name}-{}",
            std::process::id()
        ));
        std::fs::write(&file, vec![0u8; 8 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDevice { dev, file }
    }

    fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// `major:minor`, as the probe names a disk.
    fn number(&self) -> String {
        std::fs::read_to_string(format!("/sys/block/{}/dev", self.name()))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Write requests the device has completed (the fifth field of its stat).
    fn writes_completed(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/sys/block/{}/stat", self.name())).unwrap();
        stat.split_whitespace().nth(4).unwrap().parse().unwrap()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// `count` synchronous 4 KiB direct writes to `dev` by a dd named `exe`: one request each (O_DIRECT waits for
/// every write, so none is merged with the next, and 4 KiB is never split).
fn direct_writes(exe: &Path, dev: &Path, count: u32) {
    let status = Command::new(exe)
        .arg("if=/dev/zero")
        .arg(format!("of={}", dev.display()))
        .args(["bs=4096", "oflag=direct", "status=none"])
        .arg(format!("count={count}"))
        .status()
        .unwrap();
    assert!(status.success(), "{} to {}", exe.display(), dev.display());
}

/// The tests take turns: two `losetup --find` at once may pick the same free device.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn counts_exactly_the_selected_tasks_requests(skip: &[&str], expect_strategy: &str) {
    sonde_tests::requires!(Root);
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (LoopDevice::new("a"), LoopDevice::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let dd = |name: &str| {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink("/usr/bin/dd", &link).unwrap();
        link
    };
    let (mine, other) = (dd("sonde-dd-mine"), dd("sonde-dd-other"));
    let filter = Filter {
        comms: Some(vec!["sonde-dd-mine".into()]),
        ..Default::default()
    };
    // Every request breaches (1 ns), so each one the probe counts is also an event that names its task and disk.
    let thresholds = vec![threshold(
        Metric::IoLatencyUs,
        Comparison::GreaterOrEqual,
        0.001,
    )];
    let before = (a.writes_completed(), b.writes_completed());
    let (dev_a, dev_b) = (a.dev.clone(), b.dev.clone());
    let out = trace_without(
        config(
            ProbeName::Biolatency,
            filter,
            thresholds,
            ProbeParams::default(),
        ),
        skip,
        Duration::from_millis(3000),
        move || {
            std::thread::sleep(Duration::from_millis(200));
            direct_writes(&mine, &dev_a, 200);
            // Another task on the same disk, and on another disk: neither is the selected task's.
            direct_writes(&other, &dev_a, 100);
            direct_writes(&other, &dev_b, 50);
        },
    );
    assert_eq!(out.strategy, expect_strategy);
    let done = (
        a.writes_completed() - before.0,
        b.writes_completed() - before.1,
    );
    // The block layer's own count: every write was one request, and nothing else wrote to these devices.
    assert_eq!(
        done,
        (300, 50),
        "requests completed on {} and {}",
        a.name(),
        b.name()
    );
    // Every request the selected task started breached (1 ns) and was sent: the histogram and the events agree.
    // Those on the loop device are exactly its 200 writes; any others are its own reads of other disks (exec
    // loading dd and its libraries when they are not cached: seen once in CI as 2 reads of the root disk), never
    // the other task's requests nor any on the second loop device.
    let counted: u64 = out.findings.histograms.iter().map(|h| h.total).sum();
    assert_eq!(counted, out.events.len() as u64, "histogram vs events");
    let on = |dev: &LoopDevice| {
        out.events
            .iter()
            .filter(|e| e["disk"] == dev.number().as_str())
            .count()
    };
    assert_eq!(
        (on(&a), on(&b)),
        (200, 0),
        "the selected task's 200 requests of {}'s 300, and none on {}",
        a.name(),
        b.name()
    );
    for e in &out.events {
        assert_eq!(e["comm"], "sonde-dd-mine", "{e}");
        let us = e["latency_us"].as_f64().unwrap();
        assert!(us > 0.0 && us < 1e6, "a 4 KiB request took {us} us");
    }
    let rows = &out.findings.summary.rows;
    let row = rows
        .iter()
        .find(|r| r.key.ends_with(&format!(" -> {}", a.number())))
        .unwrap_or_else(|| panic!("no row for {}: {rows:?}", a.name()));
    assert!(row.key.starts_with("sonde-dd-mine/"), "{rows:?}");
    assert_eq!(row.count, 200, "{rows:?}");
}

#[test]
fn biolatency_counts_exactly_the_selected_tasks_requests_to_a_loop_device() {
    counts_exactly_the_selected_tasks_requests(&[], "tp_btf");
}

#[test]
fn biolatency_on_the_classic_tracepoints_counts_the_same() {
    counts_exactly_the_selected_tasks_requests(&["tp_btf"], "tracepoint");
}
