// SPDX-License-Identifier: GPL-2.0
/* cpu-profile: on each cpu-clock sample, count (process, kernel stack, user stack) in the kernel; the agent
 * symbolizes and folds the stacks at the end. Nothing crosses the ring buffer per sample. The process is its pid
 * and start time, so that a pid reused before the agent looks at it is another key, never named by the process
 * that took the pid over (crate::procmaps). */
#include "sonde.h"

#define PERF_MAX_STACK_DEPTH 127

const volatile __u8 cfg_user_stacks = 1;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PERF_MAX_STACK_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct stack_key);
	__type(value, __u64);
} counts SEC(".maps");

SEC("perf_event")
int profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (id == 0) /* idle */
		return 0;
	if (!current_admitted())
		return 0;
	stat_inc(STAT_SEEN);
	struct stack_key key = {};
	key.pid = id >> 32;
	key.start_ns = task_process_start_ns((struct task_struct *)bpf_get_current_task());
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.kstack = bpf_get_stackid(ctx, &stacks, 0);
	key.ustack = cfg_user_stacks ? bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK) : -1;
	__u64 one = 1;
	__u64 *c = bpf_map_lookup_elem(&counts, &key);
	if (c)
		__sync_fetch_and_add(c, 1);
	else
		bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
