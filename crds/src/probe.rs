//! Which probe to run and its typed parameters. The probe library owns the behaviour; these types own the
//! shape the API server validates, so an unknown probe or a misspelt parameter is rejected at `kubectl apply`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A probe from Sonde's prebuilt library.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeName {
    /// Who wakes whom: waker comm/pid -> wakee comm/pid with counts and rates (sched_waking).
    Wakeups,
    /// Per TCP segment latency from device xmit to netif receive and the TCP receive functions.
    PacketLatency,
    /// Sampled kernel+user stacks folded into a flame graph.
    CpuProfile,
    /// Run-queue latency (wakeup to on-CPU) as a log2 histogram.
    RunqLatency,
    /// TCP retransmissions with addresses and state.
    TcpRetransmit,
    /// TCP active connect latency (SYN_SENT -> ESTABLISHED).
    TcpConnect,
    /// Process executions.
    Exec,
    /// OOM killer victims.
    OomKill,
    /// Per-syscall latency histograms.
    SyscallLatency,
}

impl ProbeName {
    pub const ALL: [ProbeName; 9] = [
        ProbeName::Wakeups,
        ProbeName::PacketLatency,
        ProbeName::CpuProfile,
        ProbeName::RunqLatency,
        ProbeName::TcpRetransmit,
        ProbeName::TcpConnect,
        ProbeName::Exec,
        ProbeName::OomKill,
        ProbeName::SyscallLatency,
    ];

    /// The name as written in manifests (`packet-latency`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::Wakeups => "wakeups",
            ProbeName::PacketLatency => "packet-latency",
            ProbeName::CpuProfile => "cpu-profile",
            ProbeName::RunqLatency => "runq-latency",
            ProbeName::TcpRetransmit => "tcp-retransmit",
            ProbeName::TcpConnect => "tcp-connect",
            ProbeName::Exec => "exec",
            ProbeName::OomKill => "oom-kill",
            ProbeName::SyscallLatency => "syscall-latency",
        }
    }

    /// The `params` section that belongs to this probe (`packetLatency`).
    pub fn params_key(self) -> &'static str {
        match self {
            ProbeName::Wakeups => "wakeups",
            ProbeName::PacketLatency => "packetLatency",
            ProbeName::CpuProfile => "cpuProfile",
            ProbeName::RunqLatency => "runqLatency",
            ProbeName::TcpRetransmit => "tcpRetransmit",
            ProbeName::TcpConnect => "tcpConnect",
            ProbeName::Exec => "exec",
            ProbeName::OomKill => "oomKill",
            ProbeName::SyscallLatency => "syscallLatency",
        }
    }
}

impl std::fmt::Display for ProbeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProbeName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ProbeName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ProbeName::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown probe {s:?}; the library has: {}", known.join(", "))
            })
    }
}

/// Parameters of the chosen probe. Set at most the one section named after `probe`; every field has a default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wakeups: Option<WakeupsParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_latency: Option<PacketLatencyParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_profile: Option<CpuProfileParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runq_latency: Option<EmptyParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retransmit: Option<PortParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_connect: Option<PortParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<EmptyParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<EmptyParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall_latency: Option<SyscallLatencyParams>,
}

impl ProbeParams {
    /// How many summary rows to keep: `params.wakeups.top` where the probe has it, else 10.
    pub fn top_rows(params: Option<&ProbeParams>) -> usize {
        params
            .and_then(|p| p.wakeups.as_ref())
            .and_then(|w| w.top)
            .unwrap_or(10) as usize
    }

    /// Sections that are set, by their manifest key.
    pub fn set_sections(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut push = |set: bool, p: ProbeName| {
            if set {
                out.push(p.params_key())
            }
        };
        push(self.wakeups.is_some(), ProbeName::Wakeups);
        push(self.packet_latency.is_some(), ProbeName::PacketLatency);
        push(self.cpu_profile.is_some(), ProbeName::CpuProfile);
        push(self.runq_latency.is_some(), ProbeName::RunqLatency);
        push(self.tcp_retransmit.is_some(), ProbeName::TcpRetransmit);
        push(self.tcp_connect.is_some(), ProbeName::TcpConnect);
        push(self.exec.is_some(), ProbeName::Exec);
        push(self.oom_kill.is_some(), ProbeName::OomKill);
        push(self.syscall_latency.is_some(), ProbeName::SyscallLatency);
        out
    }
}

/// A probe without parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyParams {}

/// Parameters of `wakeups`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WakeupsParams {
    /// Count only wakeups whose wakee has this command name (e.g. `ping`). Targets select the wakee too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15))]
    pub wakee_comm: Option<String>,
    /// Rows kept in the summary (top N waker -> wakee pairs by count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub top: Option<u32>,
}

/// Parameters of `packet-latency`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PacketLatencyParams {
    /// Only segments with one of these TCP ports (source or destination). Empty means all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535"))]
    pub ports: Vec<u32>,
    /// Only segments received in the network namespace with this inode (`ls -Li /proc/<pid>/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// Parameters of `cpu-profile`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuProfileParams {
    /// Samples per second per CPU. Odd values such as 99 avoid lockstep with timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub frequency_hz: Option<u32>,
    /// Also walk user-space stacks (needs frame pointers in the target for deep stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_stacks: Option<bool>,
}

/// Parameters of probes that filter by TCP port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortParams {
    /// Only connections with one of these ports (local or remote). Empty means all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535"))]
    pub ports: Vec<u32>,
}

/// Parameters of `syscall-latency`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallLatencyParams {
    /// Only these syscall numbers (x86_64 numbering). Empty means every syscall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub syscalls: Vec<u32>,
}
