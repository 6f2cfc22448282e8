// SPDX-License-Identifier: GPL-2.0
/* exec: every successful execve with pid, parent and filename. */
#include "sonde.h"

static __always_inline int emit(struct task_struct *t, const char *filename)
{
	if (!current_admitted())
		return 0;
	stat_inc(STAT_SEEN);
	if (!keep_event(false))
		return 0;
	struct note_event *e = RESERVE_EVENT(struct note_event);
	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->text, sizeof(e->text), filename);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tp_btf_sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return emit(p, BPF_CORE_READ(bprm, filename));
}

SEC("tracepoint/sched/sched_process_exec")
int tp_sched_process_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	unsigned int off = ctx->__data_loc_filename & 0xffff;
	return emit((struct task_struct *)bpf_get_current_task(), (const char *)ctx + off);
}

char LICENSE[] SEC("license") = "GPL";
