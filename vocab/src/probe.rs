//! Which probe to run and its typed parameters: the probe registry. The probe library owns the behaviour; these
//! types own the shape the API server validates (with the `schema` feature, as the CRDs carry it), so an unknown
//! probe or a misspelt parameter is rejected at `kubectl apply`.

use serde::{Deserialize, Serialize};

/// The probe registry, the one place a probe's API shape is declared: its name, description, `params` section
/// and the metrics its thresholds may watch. From it come [`ProbeName`] (and `ALL`), [`ProbeParams`], [`Metric`]
/// and the CEL rules that tie params and thresholds to the probe (`PARAMS_MATCH_PROBE`,
/// `THRESHOLDS_MATCH_PROBE`), so none of them can miss a probe. The probe library's catalogue
/// (`sonde_probes::catalogue`) holds the kernel side; both are exhaustive matches on [`ProbeName`].
macro_rules! probe_registry {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $name:literal,
        params $field:ident = $key:literal: $params:ty,
        metrics [$( $(#[doc = $mdoc:literal])* $metric:ident = $mname:literal ),* $(,)?];
    )*) => {
        /// A probe from Sonde's prebuilt library.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum ProbeName {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant, )*
        }

        impl ProbeName {
            /// Every probe, in registry order.
            pub const ALL: &'static [ProbeName] = &[$(ProbeName::$variant),*];

            /// The name as written in manifests (`packet-latency`).
            pub fn as_str(self) -> &'static str {
                match self { $(ProbeName::$variant => $name,)* }
            }

            /// The `params` section that belongs to this probe (`packetLatency`).
            pub fn params_key(self) -> &'static str {
                match self { $(ProbeName::$variant => $key,)* }
            }

            /// The metrics its thresholds may watch besides `eventsPerSecond`, which every probe has.
            pub fn metrics(self) -> &'static [Metric] {
                match self { $(ProbeName::$variant => &[$(Metric::$metric),*],)* }
            }
        }

        /// Parameters of the chosen probe. Set at most the one section named after `probe`; every field has a default.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
        #[serde(deny_unknown_fields)]
        pub struct ProbeParams {
            $(
                #[serde(rename = $key, default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$params>,
            )*
        }

        impl ProbeParams {
            /// Sections that are set, by their manifest key.
            pub fn set_sections(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field.is_some() { out.push($key); } )*
                out
            }
        }

        /// A metric a threshold watches. Per-event metrics are checked in the kernel, so only breaching events
        /// cross the ring buffer; rate metrics are counted in the kernel per one-second window.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        pub enum Metric {
            $($( $(#[doc = $mdoc])* #[serde(rename = $mname)] $metric, )*)*
            /// Events of any probe per second, over all keys.
            #[serde(rename = "eventsPerSecond")]
            EventsPerSecond,
        }

        impl Metric {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($( Metric::$metric => $mname, )*)*
                    Metric::EventsPerSecond => "eventsPerSecond",
                }
            }
        }

        /// CEL: a `params` section may only be set for the probe it belongs to.
        pub const PARAMS_MATCH_PROBE: &str = concat!(
            "!has(self.params) || (",
            $( "(!has(self.params.", $key, ") || self.probe == '", $name, "') && ", )*
            "true)"
        );
        pub const PARAMS_MATCH_PROBE_MSG: &str = concat!(
            "params may only set the probe's own section: ",
            $( "params.", $key, " for ", $name, ", ", )*
            "and no other"
        );

        /// CEL: every threshold must watch a metric the probe produces.
        pub const THRESHOLDS_MATCH_PROBE: &str = concat!(
            "!has(self.thresholds) || self.thresholds.all(t, t.metric == 'eventsPerSecond'",
            $($( " || (t.metric == '", $mname, "' && self.probe == '", $name, "')", )*)*
            ")"
        );
        pub const THRESHOLDS_MATCH_PROBE_MSG: &str = concat!(
            "thresholds[].metric must be produced by the probe: ",
            $($( $mname, " (", $name, "), ", )*)*
            "or eventsPerSecond (any)"
        );
    };
}

probe_registry! {
    /// Who wakes whom: waker comm/pid -> wakee comm/pid with counts and rates (sched_waking).
    Wakeups = "wakeups",
        params wakeups = "wakeups": WakeupsParams,
        metrics [
            /// Wakeups per second of one waker -> wakee pair (`wakeups`).
            WakeupsPerSecond = "wakeupsPerSecond",
        ];
    /// Per TCP segment latency from device xmit to netif receive and the TCP receive functions.
    PacketLatency = "packet-latency",
        params packet_latency = "packetLatency": PacketLatencyParams,
        metrics [
            /// Milliseconds from device xmit to a receive stage, per TCP segment (`packet-latency`).
            SegmentLatencyMs = "segmentLatencyMs",
        ];
    /// Sampled kernel+user stacks folded into a flame graph.
    CpuProfile = "cpu-profile",
        params cpu_profile = "cpuProfile": CpuProfileParams,
        metrics [];
    /// Run-queue latency (wakeup to on-CPU) as a log2 histogram.
    RunqLatency = "runq-latency",
        params runq_latency = "runqLatency": EmptyParams,
        metrics [
            /// Microseconds a task waited runnable before running (`runq-latency`).
            RunqLatencyUs = "runqLatencyUs",
        ];
    /// TCP retransmissions with addresses and state.
    TcpRetransmit = "tcp-retransmit",
        params tcp_retransmit = "tcpRetransmit": PortParams,
        metrics [];
    /// TCP active connect latency (SYN_SENT -> ESTABLISHED).
    TcpConnect = "tcp-connect",
        params tcp_connect = "tcpConnect": PortParams,
        metrics [
            /// Milliseconds from SYN to established (`tcp-connect`).
            ConnectLatencyMs = "connectLatencyMs",
        ];
    /// Process executions.
    Exec = "exec",
        params exec = "exec": EmptyParams,
        metrics [];
    /// OOM killer victims.
    OomKill = "oom-kill",
        params oom_kill = "oomKill": EmptyParams,
        metrics [];
    /// Smoothed TCP round-trip time per connection as segments arrive, as a log2 histogram.
    TcpRtt = "tcp-rtt",
        params tcp_rtt = "tcpRtt": PortParams,
        metrics [
            /// Milliseconds of a connection's smoothed round-trip time, per received segment (`tcp-rtt`).
            RttMs = "rttMs",
        ];
    /// Block I/O latency from issue to completion, as a log2 histogram, by the task that started the request.
    Biolatency = "biolatency",
        params biolatency = "biolatency": EmptyParams,
        metrics [
            /// Microseconds a block I/O request took from issue to the device until completion (`biolatency`).
            IoLatencyUs = "ioLatencyUs",
        ];
    /// Per-syscall latency histograms.
    SyscallLatency = "syscall-latency",
        params syscall_latency = "syscallLatency": SyscallLatencyParams,
        metrics [
            /// Milliseconds a syscall took (`syscall-latency`).
            SyscallLatencyMs = "syscallLatencyMs",
        ];
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
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = ProbeName::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown probe {s:?}; the library has: {}", known.join(", "))
            })
    }
}

impl ProbeParams {
    /// How many summary rows to keep: `params.wakeups.top` where the probe has it, else 10.
    pub fn top_rows(params: Option<&ProbeParams>) -> usize {
        params
            .and_then(|p| p.wakeups.as_ref())
            .and_then(|w| w.top)
            .unwrap_or(10) as usize
    }
}

/// A probe without parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(deny_unknown_fields)]
pub struct EmptyParams {}

/// Parameters of `wakeups`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WakeupsParams {
    /// Count only wakeups whose wakee has this command name (e.g. `ping`). Targets select the wakee too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(min = 1, max = 15)))]
    pub wakee_comm: Option<String>,
    /// Rows kept in the summary (top N waker -> wakee pairs by count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 1000)))]
    pub top: Option<u32>,
}

/// Parameters of `packet-latency`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PacketLatencyParams {
    /// Only segments with one of these TCP ports (source or destination). Empty means all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = 16)))]
    #[cfg_attr(feature = "schema", x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535")))]
    pub ports: Vec<u32>,
    /// Only segments received in the network namespace with this inode (`ls -Li /proc/<pid>/ns/net`; the kernel's
    /// namespace inodes are 32-bit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4_294_967_295_u64)))]
    pub netns: Option<u64>,
}

/// Parameters of `cpu-profile`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuProfileParams {
    /// Samples per second per CPU. Odd values such as 99 avoid lockstep with timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 10000)))]
    pub frequency_hz: Option<u32>,
    /// Also walk user-space stacks (needs frame pointers in the target for deep stacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_stacks: Option<bool>,
}

/// Parameters of probes that filter by TCP port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortParams {
    /// Only connections with one of these ports (local or remote). Empty means all ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = 16)))]
    #[cfg_attr(feature = "schema", x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports must be 1-65535")))]
    pub ports: Vec<u32>,
}

/// Parameters of `syscall-latency`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(kube::KubeSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyscallLatencyParams {
    /// Only these syscall numbers (x86_64 numbering, 0-1023). Empty means every syscall.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(length(max = 32)))]
    #[cfg_attr(feature = "schema", x_kube(validation = Rule::new("self.all(n, n <= 1023)").message("syscall numbers must be 0-1023")))]
    pub syscalls: Vec<u32>,
}
