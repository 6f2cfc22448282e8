// SPDX-License-Identifier: GPL-2.0
/* oom-kill: the OOM killer's victims with their resident memory at the kill. */
#include "sonde.h"

struct oom_control___min { struct task_struct *chosen; } __attribute__((preserve_access_index));

/* The trigger is whoever allocated when memory ran out: another pod's task (never named to a tenant, as in the
 * other probes), or a host task under the admin's redaction switch, as likely as the victim's own. */
static __always_inline void trigger_comm(char *comm)
{
	struct task_struct *cur = (struct task_struct *)bpf_get_current_task();
	if (in_other_pod(cur))
		__builtin_memcpy(comm, "[other pod]", sizeof("[other pod]"));
	else if (redacted(cur))
		__builtin_memcpy(comm, "[outside]", sizeof("[outside]"));
	else
		bpf_get_current_comm(comm, TASK_COMM_LEN);
}

static __always_inline int emit(__u32 pid, const char *comm, __u64 rss_pages)
{
	stat_inc(STAT_SEEN);
	struct note_event *e = RESERVE_EVENT(struct note_event);
	if (!e)
		return 0;
	e->pid = pid;
	e->value = rss_pages * 4 / 1024; /* MiB, assuming 4 KiB pages */
	trigger_comm(e->comm);
	bpf_probe_read_kernel_str(e->text, TASK_COMM_LEN, comm);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The victim with its resident memory, whichever hook found it. */
static __always_inline int emit_victim(struct task_struct *t)
{
	if (!task_admitted(t))
		return 0;
	return emit(BPF_CORE_READ(t, tgid), t->comm, mm_resident_pages(BPF_CORE_READ(t, mm)));
}

/* Clusters with kprobes take this one first: the chosen victim, before the kill. */
SEC("kprobe/oom_kill_process")
int BPF_KPROBE(kprobe_oom_kill_process, struct oom_control___min *oc)
{
	return emit_victim(BPF_CORE_READ(oc, chosen));
}

/* 6.8+ passes the victim task itself, so the target filter sees the victim's cgroup. */
SEC("tp_btf/mark_victim")
int BPF_PROG(tp_btf_mark_victim, struct task_struct *t)
{
	return emit_victim(t);
}

/* The record carries the victim's pid and comm but not its cgroup, and the current task is whoever allocated:
 * with a cgroup (pod) filter nothing can be admitted here, so nothing is (tp_btf above comes first). */
SEC("tracepoint/oom/mark_victim")
int tp_mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	unsigned int off = ctx->__data_loc_comm & 0xffff;
	char comm[TASK_COMM_LEN] = {};
	bpf_probe_read_kernel_str(comm, sizeof(comm), (const char *)ctx + off);
	if (cfg_filter_cgroup || !admitted(0, ctx->pid, comm))
		return 0;
	return emit(ctx->pid, (const char *)ctx + off, ctx->anon_rss + ctx->file_rss + ctx->shmem_rss);
}

char LICENSE[] SEC("license") = "GPL";
