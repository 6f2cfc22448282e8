//! CEL rules shared by every kind that names a probe. They live in the schema, so the API server rejects a
//! mismatched spec at `kubectl apply` and `sonde run` evaluates the very same rules client-side.

/// A `params` section may only be set for the probe it belongs to.
pub const PARAMS_MATCH_PROBE: &str = "!has(self.params) || (\
(!has(self.params.wakeups) || self.probe == 'wakeups') && \
(!has(self.params.packetLatency) || self.probe == 'packet-latency') && \
(!has(self.params.cpuProfile) || self.probe == 'cpu-profile') && \
(!has(self.params.runqLatency) || self.probe == 'runq-latency') && \
(!has(self.params.tcpRetransmit) || self.probe == 'tcp-retransmit') && \
(!has(self.params.tcpConnect) || self.probe == 'tcp-connect') && \
(!has(self.params.exec) || self.probe == 'exec') && \
(!has(self.params.oomKill) || self.probe == 'oom-kill') && \
(!has(self.params.syscallLatency) || self.probe == 'syscall-latency'))";
pub const PARAMS_MATCH_PROBE_MSG: &str = "params may only set the section named after the probe (params.wakeups for wakeups, params.packetLatency for packet-latency, ...)";

/// Every threshold must watch a metric the probe produces.
pub const THRESHOLDS_MATCH_PROBE: &str = "!has(self.thresholds) || self.thresholds.all(t, \
t.metric == 'eventsPerSecond' || \
(t.metric == 'wakeupsPerSecond' && self.probe == 'wakeups') || \
(t.metric == 'segmentLatencyMs' && self.probe == 'packet-latency') || \
(t.metric == 'runqLatencyUs' && self.probe == 'runq-latency') || \
(t.metric == 'syscallLatencyMs' && self.probe == 'syscall-latency') || \
(t.metric == 'connectLatencyMs' && self.probe == 'tcp-connect'))";
pub const THRESHOLDS_MATCH_PROBE_MSG: &str = "thresholds[].metric must be produced by the probe: wakeupsPerSecond (wakeups), segmentLatencyMs (packet-latency), runqLatencyUs (runq-latency), syscallLatencyMs (syscall-latency), connectLatencyMs (tcp-connect), or eventsPerSecond (any)";
