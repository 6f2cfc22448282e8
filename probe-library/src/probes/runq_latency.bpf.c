// SPDX-License-Identifier: GPL-2.0
/* runq-latency: time from wakeup to running, per task, as a log2 histogram in microseconds; waits over
 * cfg_threshold (ns) are sent as events. */
#include "sonde.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} wakeup_ts SEC(".maps");

SONDE_HISTS(1)

static __always_inline void on_wake(__u32 tid, bool ok)
{
	if (!ok || !tid)
		return;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&wakeup_ts, &tid, &now, BPF_ANY);
}

/* `next` is the task that waited: the event names it (at sched_switch the current task is still `prev`). */
static __always_inline void on_switch(__u32 prev_tid, bool prev_runnable, bool prev_ok, __u32 next_tid,
				      __u32 next_tgid, const char *next_comm)
{
	/* A preempted task (still runnable) waits on the run queue from now. */
	if (prev_runnable && prev_ok)
		on_wake(prev_tid, true);
	__u64 *ts = bpf_map_lookup_elem(&wakeup_ts, &next_tid);
	if (!ts)
		return;
	__u64 delta = bpf_ktime_get_ns() - *ts;
	bpf_map_delete_elem(&wakeup_ts, &next_tid);
	if (!latency_sample(0, delta)) /* per-wakeup events are too many to send: only long waits */
		return;
	struct latency_event *e = RESERVE_EVENT(struct latency_event);
	if (!e)
		return;
	e->latency_ns = delta;
	e->tid = next_tid;
	e->pid = next_tgid;
	e->flags = EV_BREACH;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), next_comm);
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(tp_btf_sched_wakeup, struct task_struct *p) { on_wake(BPF_CORE_READ(p, pid), task_admitted(p)); return 0; }
SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(tp_btf_sched_wakeup_new, struct task_struct *p) { on_wake(BPF_CORE_READ(p, pid), task_admitted(p)); return 0; }
SEC("tp_btf/sched_switch")
int BPF_PROG(tp_btf_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	/* Preempted, a task stays on the run queue whatever state it had set on its way to sleep. */
	on_switch(BPF_CORE_READ(prev, pid), preempt || task_state(prev) == 0, task_admitted(prev), BPF_CORE_READ(next, pid),
		  BPF_CORE_READ(next, tgid), next->comm);
	return 0;
}

/* Classic tracepoints carry no task pointer: filter on comm/pid only. */
static __always_inline bool tp_ok(__u32 pid, const char *comm)
{
	char c[TASK_COMM_LEN] = {};
	bpf_probe_read_kernel_str(c, sizeof(c), comm);
	return !cfg_filter_cgroup && admitted(0, pid, c);
}
SEC("tracepoint/sched/sched_wakeup")
int tp_sched_wakeup(struct trace_event_raw_sched_wakeup_template *ctx) { on_wake(ctx->pid, tp_ok(ctx->pid, ctx->comm)); return 0; }
SEC("tracepoint/sched/sched_wakeup_new")
int tp_sched_wakeup_new(struct trace_event_raw_sched_wakeup_template *ctx) { on_wake(ctx->pid, tp_ok(ctx->pid, ctx->comm)); return 0; }
/* The record's prev_state of a preempted task is TASK_REPORT_MAX (since 4.14; __trace_sched_switch_state), not
 * TASK_RUNNING: that task is runnable too. */
#define TASK_REPORT_MAX 0x100
SEC("tracepoint/sched/sched_switch")
int tp_sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	long state = ctx->prev_state;
	bool runnable = state == 0 || (state & TASK_REPORT_MAX);
	/* The record has no tgid: events from this fallback carry pid 0. */
	on_switch(ctx->prev_pid, runnable, tp_ok(ctx->prev_pid, ctx->prev_comm), ctx->next_pid, 0, ctx->next_comm);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
