/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* CO-RE fallbacks: fields that moved or changed type across kernel versions, read the way the running kernel
 * lays them out (as libbpf-tools' core_fixes.bpf.h does). Each helper names the versions it bridges. */
#ifndef SONDE_CORE_FIXES_BPF_H
#define SONDE_CORE_FIXES_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_core_read.h>

/* task_struct::state became __state in 5.14. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

/* mm_struct::rss_stat: per-CPU batched counters (struct percpu_counter[], 6.2+) or an atomic array inside
 * struct mm_rss_stat (before). The percpu counters are read without summing the CPUs' deltas: close enough for
 * MiB. */
struct mm_rss_stat___pre62 {
	atomic_long_t count[4];
} __attribute__((preserve_access_index));

struct mm_struct___pre62 {
	struct mm_rss_stat___pre62 rss_stat;
} __attribute__((preserve_access_index));

/* MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES: resident is file + anon + shmem (not swap), as the
 * mark_victim tracepoint counts it. */
static __always_inline __u64 mm_resident_pages(struct mm_struct *mm)
{
	if (!mm)
		return 0;
	if (bpf_core_field_exists(mm->rss_stat[0].count))
		return BPF_CORE_READ(mm, rss_stat[0].count) + BPF_CORE_READ(mm, rss_stat[1].count) +
		       BPF_CORE_READ(mm, rss_stat[3].count);
	struct mm_struct___pre62 *old = (void *)mm;
	return BPF_CORE_READ(old, rss_stat.count[0].counter) + BPF_CORE_READ(old, rss_stat.count[1].counter) +
	       BPF_CORE_READ(old, rss_stat.count[3].counter);
}

/* cgroup::ancestors[] holds the ancestors' pointers since 6.0; before, ancestor_ids[] held their ids. */
struct cgroup___pre60 {
	__u64 ancestor_ids[0];
} __attribute__((preserve_access_index));

/* The id of `cg`'s ancestor at `level` (0 is the root), 0 when unreadable. */
static __always_inline __u64 cgroup_ancestor_id(struct cgroup *cg, __u32 level)
{
	if (bpf_core_field_exists(cg->ancestors)) {
		struct cgroup *anc = NULL;
		bpf_core_read(&anc, sizeof(anc), &cg->ancestors[level]);
		return anc ? BPF_CORE_READ(anc, kn, id) : 0;
	}
	struct cgroup___pre60 *old = (void *)cg;
	__u64 id = 0;
	bpf_core_read(&id, sizeof(id), &old->ancestor_ids[level]);
	return id;
}

/* When a task's process started, in ns after boot (suspend included): the thread group leader's start_boottime
 * (5.5+), real_start_time before; what /proc/<pid>/stat field 22 gives in clock ticks. */
struct task_struct___pre55 {
	__u64 real_start_time;
} __attribute__((preserve_access_index));

static __always_inline __u64 task_process_start_ns(struct task_struct *t)
{
	struct task_struct *leader = BPF_CORE_READ(t, group_leader);
	if (bpf_core_field_exists(leader->start_boottime))
		return BPF_CORE_READ(leader, start_boottime);
	return BPF_CORE_READ((struct task_struct___pre55 *)leader, real_start_time);
}

#endif
