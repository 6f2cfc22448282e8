// SPDX-License-Identifier: GPL-2.0
/* tcp-rtt: the smoothed round-trip time of TCP connections as each segment arrives (tcp_rcv_established), as a
 * log2 histogram in microseconds; samples over cfg_threshold (ns) are sent as events with the connection. The
 * classic of libbpf-tools' tcprtt. */
#include "sonde.h"

SONDE_HISTS(1)

/* `srtt_us` is the kernel's smoothed RTT in microseconds, shifted left by 3 (tcp_sock). */
static __always_inline int on_segment(struct sock *sk, __u32 srtt_us)
{
	__u16 sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_ok(sport, dport) || !sock_admitted(sk))
		return 0;
	__u64 rtt_ns = (__u64)srtt_us * 1000;
	bool breach = latency_sample(0, rtt_ns);
	if (!keep_event(breach))
		return 0;
	struct latency_event *e = RESERVE_EVENT(struct latency_event);
	if (!e)
		return 0;
	/* No pid or comm: segments arrive in softirq context, where the current task is whoever was on the CPU. */
	e->latency_ns = rtt_ns;
	e->flags = breach ? EV_BREACH : 0;
	e->sport = sport;
	e->dport = dport;
	FILL_SOCK_ADDRS(e, sk);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline __u32 srtt_of(struct sock *sk)
{
	return BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
}

SEC("fentry/tcp_rcv_established")
int BPF_PROG(fentry_tcp_rcv_established, struct sock *sk) { return on_segment(sk, srtt_of(sk)); }
SEC("kprobe/tcp_rcv_established")
int BPF_KPROBE(kprobe_tcp_rcv_established, struct sock *sk) { return on_segment(sk, srtt_of(sk)); }
/* tcp_probe fires at the top of tcp_rcv_established with the socket. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(tp_btf_tcp_probe, struct sock *sk) { return on_segment(sk, srtt_of(sk)); }
SEC("tracepoint/tcp/tcp_probe")
int tp_tcp_probe(struct trace_event_raw_tcp_probe *ctx) { return on_segment((struct sock *)ctx->skaddr, ctx->srtt); }

char LICENSE[] SEC("license") = "GPL";
