// SPDX-License-Identifier: GPL-2.0
/* tcp-connect: active connect latency, SYN_SENT -> ESTABLISHED, from inet_sock_set_state. */
#include "sonde.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2

struct start {
	__u64 ts;
	__u32 pid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct start);
} starts SEC(".maps");

SONDE_HISTS(1)

static __always_inline int on_state(struct sock *sk, int old, int new)
{
	__u64 key = (__u64)sk;
	if (new == TCP_SYN_SENT) {
		if (!current_admitted())
			return 0;
		struct start s = { .ts = bpf_ktime_get_ns(), .pid = bpf_get_current_pid_tgid() >> 32 };
		bpf_get_current_comm(s.comm, sizeof(s.comm));
		bpf_map_update_elem(&starts, &key, &s, BPF_ANY);
		return 0;
	}
	if (old != TCP_SYN_SENT)
		return 0;
	struct start *s = bpf_map_lookup_elem(&starts, &key);
	if (!s)
		return 0;
	/* The ports filter, here where both ports are known (at SYN_SENT the local port may not be bound yet). */
	__u16 sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	__u16 dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!port_ok(sport, dport)) {
		bpf_map_delete_elem(&starts, &key);
		return 0;
	}
	__u64 delta = bpf_ktime_get_ns() - s->ts;
	bool breach = latency_sample(0, delta);
	if (new == TCP_ESTABLISHED && keep_event(breach)) {
		struct latency_event *e = RESERVE_EVENT(struct latency_event);
		if (e) {
			e->latency_ns = delta;
			e->pid = s->pid;
			e->flags = breach ? EV_BREACH : 0;
			e->sport = sport;
			e->dport = dport;
			FILL_SOCK_ADDRS(e, sk);
			__builtin_memcpy(e->comm, s->comm, TASK_COMM_LEN);
			bpf_ringbuf_submit(e, 0);
		}
	}
	bpf_map_delete_elem(&starts, &key);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_btf_inet_sock_set_state, struct sock *sk, int old, int new)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return on_state(sk, old, new);
}

SEC("tracepoint/sock/inet_sock_set_state")
int tp_inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	return on_state((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate);
}

char LICENSE[] SEC("license") = "GPL";
