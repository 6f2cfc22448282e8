// SPDX-License-Identifier: GPL-2.0
/* tcp-retransmit: every retransmitted segment with its connection and TCP state. */
#include "sonde.h"

const volatile __u16 cfg_ports[MAX_PORTS] = {};
const volatile __u32 cfg_nports = 0;

static __always_inline bool port_ok(__u16 a, __u16 b)
{
	if (!cfg_nports)
		return true;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= cfg_nports)
			break;
		if (cfg_ports[i] == a || cfg_ports[i] == b)
			return true;
	}
	return false;
}

static __always_inline int emit_sock(struct sock *sk)
{
	__u16 sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_ok(sport, dport))
		return 0;
	stat_inc(STAT_SEEN);
	if (!keep_event(false))
		return 0;
	struct note_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->cpu = bpf_get_smp_processor_id();
	e->value = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->sport = sport;
	e->dport = dport;
	if (e->family == 2) {
		bpf_core_read(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(e->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("fentry/tcp_retransmit_skb")
int BPF_PROG(fentry_tcp_retransmit_skb, struct sock *sk) { return emit_sock(sk); }
SEC("kprobe/tcp_retransmit_skb")
int BPF_KPROBE(kprobe_tcp_retransmit_skb, struct sock *sk) { return emit_sock(sk); }
SEC("tracepoint/tcp/tcp_retransmit_skb")
int tp_tcp_retransmit_skb(struct trace_event_raw_tcp_retransmit_skb *ctx) { return emit_sock((struct sock *)ctx->skaddr); }

char LICENSE[] SEC("license") = "GPL";
