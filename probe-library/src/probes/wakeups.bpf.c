// SPDX-License-Identifier: GPL-2.0
/* wakeups: who wakes whom. Counts waker -> wakee pairs in the kernel, flags a pair whose wakeups within one
 * second exceed cfg_threshold, and sends events (all, sampled, or only breaches) over the ring buffer.
 * Attach chain: fentry/kprobe try_to_wake_up -> tp_btf sched_waking -> tracepoint sched/sched_waking; the irq
 * and hrtimer tracepoints below only keep the hard-interrupt nesting. */
#include "sonde.h"

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct wakeup_key);
	__type(value, struct wakeup_val);
} pairs SEC(".maps");

/* Hard-interrupt nesting on this CPU: device handlers (irq_handler_entry/exit) and hrtimer callbacks
 * (hrtimer_expire_entry/exit). A wakeup there -- a timer ending another task's sleep, a device completing I/O --
 * is not the doing of the task it interrupted: it counts with waker "[irq]" (pid 0) and is admitted only for its
 * wakee, so a traced pod never appears to wake, and never reveals, another pod's tasks. Softirq work (such as
 * loopback receive run on the sender's way out) stays the current task's: that is how ping wakes isc-socket. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} irq_depth SEC(".maps");

static __always_inline int irq_step(bool enter)
{
	__u32 zero = 0;
	__u32 *d = bpf_map_lookup_elem(&irq_depth, &zero);
	if (d) {
		if (enter)
			*d += 1;
		else if (*d > 0) /* an exit whose entry came before attach */
			*d -= 1;
	}
	return 0;
}

static __always_inline bool in_hardirq(void)
{
	__u32 zero = 0;
	__u32 *d = bpf_map_lookup_elem(&irq_depth, &zero);
	return d && *d > 0;
}

SEC("tracepoint/irq/irq_handler_entry")
int tp_irq_entry(void *ctx) { return irq_step(true); }
SEC("tracepoint/irq/irq_handler_exit")
int tp_irq_exit(void *ctx) { return irq_step(false); }
SEC("tracepoint/timer/hrtimer_expire_entry")
int tp_hrtimer_entry(void *ctx) { return irq_step(true); }
SEC("tracepoint/timer/hrtimer_expire_exit")
int tp_hrtimer_exit(void *ctx) { return irq_step(false); }

/* Pseudo wakers: a hard interrupt, another pod's task (never named to a tenant: see in_other_pod), a host task
 * under the redaction switch. */
#define WAKER_IRQ 0xffffffffull
#define WAKER_OTHER_POD 0xfffffffeull
#define TID_OUTSIDE 0xfffffffdull

/* `p` is NULL on the classic tracepoint. Without a threshold no clock is read: the count alone is kept. */
static __always_inline int on_wakeup(const char wakee_comm[TASK_COMM_LEN], __u32 wakee_pid, __u32 wakee_tid,
				     struct task_struct *p, bool wakee_ok)
{
	bool irq = in_hardirq();
	/* A current task in another pod (a softirq run on top of it, say) is not named: it counts as "[other pod]". */
	bool hidden = false;
	if (!irq && cfg_pods_root)
		hidden = in_other_pod((struct task_struct *)bpf_get_current_task());
	bool waker_out = !irq && !hidden && redacted((struct task_struct *)bpf_get_current_task());
	/* Pseudo wakers keep pid 0 and a tid no task has, so they never share a pair with a real task. */
	__u64 id = irq ? WAKER_IRQ : hidden ? WAKER_OTHER_POD : waker_out ? TID_OUTSIDE : bpf_get_current_pid_tgid();
	char waker_comm[TASK_COMM_LEN] = {};
	bool have_waker_comm = false;
	char wakee_out_comm[TASK_COMM_LEN] = "[outside]";
	if (!wakee_ok) {
		if (irq || hidden)
			return 0;
		/* Without a task pointer (classic tracepoint) the wakee's pod is unknown: not reported either. */
		if (cfg_pods_root && (!p || in_other_pod(p)))
			return 0;
		/* An admitted waker woke a task outside the traced pods: named only if the admin allows. */
		if (redacted(p)) {
			wakee_comm = wakee_out_comm;
			wakee_pid = 0;
			wakee_tid = TID_OUTSIDE;
			p = NULL;
		}
		if (cfg_filter_comm) {
			bpf_get_current_comm(waker_comm, sizeof(waker_comm));
			have_waker_comm = true;
		}
		if (!admitted(cfg_filter_cgroup ? bpf_get_current_cgroup_id() : 0, id >> 32, waker_comm))
			return 0;
	}
	stat_inc(STAT_SEEN);
	struct wakeup_key key = { .waker_tid = (__u32)id, .wakee_tid = wakee_tid };
	__u64 now = cfg_threshold || cfg_emit_events ? bpf_ktime_get_ns() : 0;
	struct wakeup_val *v = bpf_map_lookup_elem(&pairs, &key);
	if (!v) {
		struct wakeup_val init = { .window_start_ns = now, .waker_pid = id >> 32, .wakee_pid = wakee_pid };
		if (irq)
			__builtin_memcpy(init.waker_comm, "[irq]", 6);
		else if (hidden)
			__builtin_memcpy(init.waker_comm, "[other pod]", 12);
		else if (waker_out)
			__builtin_memcpy(init.waker_comm, "[outside]", 10);
		else if (have_waker_comm)
			__builtin_memcpy(init.waker_comm, waker_comm, TASK_COMM_LEN);
		else
			bpf_get_current_comm(init.waker_comm, sizeof(init.waker_comm));
		__builtin_memcpy(init.wakee_comm, wakee_comm, TASK_COMM_LEN);
		bpf_map_update_elem(&pairs, &key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&pairs, &key);
		if (!v)
			return 0;
	}
	__sync_fetch_and_add(&v->count, 1);
	if (!cfg_threshold && !cfg_emit_events)
		return 0;
	/* The one-second window is per pair; a lost race between CPUs only blurs a window's edge. */
	if (now - v->window_start_ns >= 1000000000ull) {
		v->window_start_ns = now;
		v->window_count = 0;
	}
	__u32 in_window = ++v->window_count;
	/* A pair breaches once per window: the wakeup that crosses the rate. */
	bool breach = cfg_threshold && in_window == (cfg_threshold_ge ? cfg_threshold : cfg_threshold + 1);
	if (breach) {
		__sync_fetch_and_add(&v->breached_windows, 1);
		stat_inc(STAT_BREACHES);
	}
	if (!keep_event(breach))
		return 0;
	struct wakeup_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	e->ts_ns = now;
	e->waker_pid = id >> 32;
	e->waker_tid = (__u32)id;
	e->wakee_pid = wakee_pid;
	e->wakee_tid = wakee_tid;
	e->wakee_cgroup = p ? task_cgroup_id(p) : 0;
	e->window_count = in_window;
	e->flags = breach ? EV_BREACH : 0;
	e->cpu = bpf_get_smp_processor_id();
	e->_pad = 0;
	__builtin_memcpy(e->waker_comm, v->waker_comm, TASK_COMM_LEN);
	__builtin_memcpy(e->wakee_comm, wakee_comm, TASK_COMM_LEN);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* fentry and tp_btf get a BTF-typed task: plain loads, no probe-read helper calls. */
static __always_inline int on_btf_task(struct task_struct *p)
{
	char comm[TASK_COMM_LEN];
	__builtin_memcpy(comm, p->comm, TASK_COMM_LEN);
	__u32 tgid = p->tgid;
	return on_wakeup(comm, tgid, p->pid, p, task_admitted_as(p, tgid, comm));
}

SEC("fentry/try_to_wake_up")
int BPF_PROG(fentry_try_to_wake_up, struct task_struct *p)
{
	return on_btf_task(p);
}

SEC("kprobe/try_to_wake_up")
int BPF_KPROBE(kprobe_try_to_wake_up, struct task_struct *p)
{
	char comm[TASK_COMM_LEN] = {};
	BPF_CORE_READ_STR_INTO(&comm, p, comm);
	__u32 tgid = BPF_CORE_READ(p, tgid);
	return on_wakeup(comm, tgid, BPF_CORE_READ(p, pid), p, task_admitted_as(p, tgid, comm));
}

SEC("tp_btf/sched_waking")
int BPF_PROG(tp_btf_sched_waking, struct task_struct *p)
{
	return on_btf_task(p);
}

/* Without BTF the tracepoint gives only the wakee's tid and comm: its tgid and cgroup are unknown here. */
SEC("tracepoint/sched/sched_waking")
int tp_sched_waking(struct trace_event_raw_sched_wakeup_template *ctx)
{
	char comm[TASK_COMM_LEN];
	__builtin_memcpy(comm, ctx->comm, TASK_COMM_LEN);
	bool ok = !cfg_filter_cgroup && admitted(0, ctx->pid, comm);
	return on_wakeup(comm, ctx->pid, ctx->pid, NULL, ok);
}

char LICENSE[] SEC("license") = "GPL";
