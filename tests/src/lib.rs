//! The end-to-end harness: a real control plane (tests/controlplane/up.sh, started once and shared by every test
//! binary), the Sonde CRDs installed, a namespace per test, this host registered as a Node and Pods bound to it
//! whose containers are real processes in cgroups named the way the kubelet names them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test harness fails its test by panicking"
)]

mod browser;
mod components;
mod controlplane;
pub mod fleet;
mod load;
mod namespace;
mod netpair;
mod node;
mod realnode;
mod s3;

pub use browser::{Browser, artifacts_dir};
pub use components::{
    Component, binary, chart_identities, curl_status, free_port, helm, http_get, http_get_as,
};
pub use controlplane::{ControlPlane, Identity, kubectl_with};
pub use load::{
    LOAD_BOUND, Load, SCHED_PIPE, bounded_argv, crafted_debug_binary, fast_ping_argv,
    isc_socket_argv, one_at_a_time, processes_matching,
};
pub use namespace::TestNamespace;
pub use netpair::{NetPair, TIGHT_TBF, assert_tcp_stage_is_quick, slow_segments};
pub use node::{CgroupDriver, RealPod, register_this_node, this_node_name};
pub use realnode::RealNode;
pub use s3::{LiveReader, S3Server, SeenChunk};

/// The repository root, for examples/ and crds/.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Polls `check` every 200 ms until it holds or `limit` passes; returns whether it held.
pub async fn wait_for(limit: std::time::Duration, check: impl AsyncFnMut() -> bool) -> bool {
    wait_for_every(limit, std::time::Duration::from_millis(200), check).await
}

/// [`wait_for`] with a chosen polling interval, for measurements and for checks that cost a process each.
/// `check` may keep what it saw in the caller's variables (an `async ||` closure), for the failure message.
pub async fn wait_for_every(
    limit: std::time::Duration,
    every: std::time::Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`wait_for_every`] that fails the test, saying `<what>: not within <limit>`, when `check` never held.
pub async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    check: impl AsyncFnMut() -> bool,
) {
    assert!(
        wait_for_every(limit, every, check).await,
        "{what}: not within {limit:?}"
    );
}

/// Program names of the wakeups probe (every strategy, and its interrupt-tracking context hooks), to see
/// whether anything is still attached.
pub const WAKEUPS_PROGS: &[&str] = &[
    "fentry_try_to_wake_up",
    "kprobe_try_to_wake_up",
    "tp_btf_sched_waking",
    "tp_sched_waking",
    "tp_irq_entry",
    "tp_irq_exit",
    "tp_hrtimer_entry",
    "tp_hrtimer_exit",
];

/// Every loaded eBPF program as bpftool describes it (`bpftool prog show -j`: id, name, pids holding it, ...).
/// Panics when bpftool fails or prints something else than a program list: an empty answer must mean nothing
/// is loaded, never that the question could not be asked.
pub fn bpf_prog_list() -> Vec<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool prog show failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool prog show -j printed no JSON list ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Whether a kernel program name (cut at 15 characters) is one of `prefixes`.
pub fn prog_named(p: &serde_json::Value, prefixes: &[&str]) -> bool {
    let name = p["name"].as_str().unwrap_or_default();
    prefixes
        .iter()
        .any(|pre| !name.is_empty() && pre.starts_with(name) || name.starts_with(pre))
}

/// Ids of loaded eBPF programs whose names start with one of `prefixes` (kernel names stop at 15 characters).
pub fn bpf_programs(prefixes: &[&str]) -> Vec<u64> {
    bpf_prog_list()
        .iter()
        .filter(|p| prog_named(p, prefixes))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// The events of a results folder, given the `file://` URL or path of its `events/manifest.json` (or of the
/// folder): every chunk read back and checked against the manifest (SHA-256, line count).
pub fn events_of(url: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(url.trim_start_matches("file://"));
    let folder = match path.ends_with("events/manifest.json") {
        true => path.parent().and_then(|p| p.parent()).unwrap_or(path),
        false => path,
    };
    let (_, events) =
        sonde_probes::chunks::read_events(folder).unwrap_or_else(|e| panic!("{url}: {e}"));
    events
}

/// CLOCK_MONOTONIC, the clock of the kernel's event timestamps (`ts_ns`).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What a test needs from the machine beyond `cargo test`.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// root: BPF programs, cgroups, network namespaces, a kubelet.
    Root,
    /// The Kubernetes control plane binaries (`tests/controlplane/build.sh`, `$SONDE_CONTROLPLANE_DIR`).
    ControlPlane,
    /// The chart's helm (`$SONDE_HELM`, or `helm` on PATH).
    Helm,
}

impl Need {
    fn met(self) -> bool {
        match self {
            Need::Root => rustix::process::geteuid().is_root(),
            Need::ControlPlane => std::env::var_os("SONDE_CONTROLPLANE_DIR").is_some(),
            Need::Helm => {
                std::env::var_os("SONDE_HELM").is_some()
                    || std::env::var_os("PATH").is_some_and(|p| {
                        std::env::split_paths(&p).any(|d| d.join("helm").is_file())
                    })
            }
        }
    }
}

/// Whether the calling test must be skipped because the machine lacks what it `needs`: `cargo test` as a user
/// without them passes. The README's test command (`scripts/test.sh`) sets `SONDE_REQUIRE_ALL_TESTS=1`, and
/// there a test that cannot run fails instead: a skipped test is not a passed test. Use [`requires!`].
pub fn skip_unless(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter(|n| !n.met())
        .map(|n| format!("{n:?}"))
        .collect();
    if missing.is_empty() {
        return false;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    assert!(
        std::env::var_os("SONDE_REQUIRE_ALL_TESTS").is_none(),
        "{test} needs {} (SONDE_REQUIRE_ALL_TESTS is set: it may not be skipped)",
        missing.join(", ")
    );
    eprintln!("skipped {test}: needs {}", missing.join(", "));
    true
}

/// Returns from the calling test unless the machine has every need (see [`skip_unless`]):
/// `sonde_tests::requires!(Root, ControlPlane);`.
#[macro_export]
macro_rules! requires {
    ($($need:ident),+ $(,)?) => {
        if $crate::skip_unless(&[$($crate::Need::$need),+]) {
            return;
        }
    };
}
