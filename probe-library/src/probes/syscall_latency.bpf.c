// SPDX-License-Identifier: GPL-2.0
/* syscall-latency: per-syscall log2 histograms (us) of every admitted syscall; slow ones as events. */
#include "sonde.h"

#define MAX_SYSCALLS 512
const volatile __u8 cfg_filter_syscall = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u8);
} filter_syscalls SEC(".maps");

struct enter {
	__u64 ts;
	__u32 nr;
};

/* LRU: a thread's exit or exit_group never returns to sys_exit, so its entry stays until evicted; in a plain hash
 * they would fill the map after 16k thread exits and every later insert would fail. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct enter);
} inflight SEC(".maps");

/* hist per syscall number */
SONDE_HISTS(MAX_SYSCALLS)

SEC("tracepoint/raw_syscalls/sys_enter")
int tp_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 nr = ctx->id;
	if (nr >= MAX_SYSCALLS)
		return 0;
	if (cfg_filter_syscall && !bpf_map_lookup_elem(&filter_syscalls, &nr))
		return 0;
	if (!current_admitted())
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct enter e = { .ts = bpf_ktime_get_ns(), .nr = nr };
	bpf_map_update_elem(&inflight, &tid, &e, BPF_ANY);
	return 0;
}

SEC("tracepoint/raw_syscalls/sys_exit")
int tp_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct enter *in = bpf_map_lookup_elem(&inflight, &tid);
	if (!in)
		return 0;
	__u64 delta = bpf_ktime_get_ns() - in->ts;
	__u32 nr = in->nr;
	bpf_map_delete_elem(&inflight, &tid);
	if (!latency_sample(nr & (MAX_SYSCALLS - 1), delta))
		return 0;
	struct latency_event *e = RESERVE_EVENT(struct latency_event);
	if (!e)
		return 0;
	e->latency_ns = delta;
	e->pid = id >> 32;
	e->tid = tid;
	e->id = nr;
	e->flags = EV_BREACH;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
