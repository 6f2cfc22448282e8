// SPDX-License-Identifier: GPL-2.0
/* tcp-retransmit: every retransmitted segment with its connection and TCP state. */
#include "sonde.h"

static __always_inline int emit_sock(struct sock *sk)
{
	__u16 sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_ok(sport, dport) || !sock_admitted(sk))
		return 0;
	stat_inc(STAT_SEEN);
	if (!keep_event(false))
		return 0;
	struct note_event *e = RESERVE_EVENT(struct note_event);
	if (!e)
		return 0;
	/* No pid or comm: retransmits fire from timers and softirqs, where the current task is whoever was on the
	 * CPU (often another pod's), not the socket's owner. The 4-tuple names the connection. */
	e->value = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->sport = sport;
	e->dport = dport;
	FILL_SOCK_ADDRS(e, sk);
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
