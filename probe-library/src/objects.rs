//! The compiled eBPF objects, embedded at build time (see build.rs).

use aya::include_bytes_aligned;
use sonde_crds::ProbeName;

pub fn object(name: ProbeName) -> &'static [u8] {
    match name {
        ProbeName::Wakeups => include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wakeups.bpf.o")),
        ProbeName::PacketLatency => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packet_latency.bpf.o"))
        }
        ProbeName::CpuProfile => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cpu_profile.bpf.o"))
        }
        ProbeName::RunqLatency => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/runq_latency.bpf.o"))
        }
        ProbeName::TcpRetransmit => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_retransmit.bpf.o"))
        }
        ProbeName::TcpConnect => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_connect.bpf.o"))
        }
        ProbeName::Exec => include_bytes_aligned!(concat!(env!("OUT_DIR"), "/exec.bpf.o")),
        ProbeName::OomKill => include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oom_kill.bpf.o")),
        ProbeName::SyscallLatency => {
            include_bytes_aligned!(concat!(env!("OUT_DIR"), "/syscall_latency.bpf.o"))
        }
    }
}
