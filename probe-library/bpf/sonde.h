/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* BPF-side helpers shared by every Sonde probe: the in-kernel target filter, drop accounting, thresholds and log2
 * histograms. The structs that cross to user space are in sonde_abi.h, CO-RE fallbacks across kernel versions in
 * core_fixes.bpf.h. Config arrives as `const volatile` globals set by the agent before load; filter maps are
 * updated live as pods come and go. */
#ifndef SONDE_H
#define SONDE_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "sonde_abi.h"
#include "core_fixes.bpf.h"

/* --- config set before load --- */
const volatile __u8 cfg_filter_cgroup = 0;
const volatile __u8 cfg_filter_pid = 0;
const volatile __u8 cfg_filter_comm = 0;    /* how many of cfg_comms are set (0: no comm filter) */
const volatile __u8 cfg_emit_events = 1;    /* send every admitted event, not only breaches */
const volatile __u32 cfg_sample_every = 1;  /* keep 1 in N non-breaching events */
const volatile __u64 cfg_threshold = 0;     /* 0: no threshold; unit depends on the probe */
const volatile __u8 cfg_threshold_ge = 0;   /* 1: >=, 0: > */

/* --- maps --- */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} filter_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} filter_pids SEC(".maps");

/* The comm filter is read-only config: compared word by word, cheaper than a hash lookup on every event. */
const volatile struct comm_key cfg_comms[MAX_COMMS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline bool comm_admitted(const char comm[TASK_COMM_LEN])
{
	__u64 lo, hi;
	__builtin_memcpy(&lo, comm, 8);
	__builtin_memcpy(&hi, comm + 8, 8);
#pragma unroll
	for (int i = 0; i < MAX_COMMS; i++) {
		if (i >= cfg_filter_comm)
			break;
		const volatile __u64 *want = (const volatile __u64 *)cfg_comms[i].comm;
		if (want[0] == lo && want[1] == hi)
			return true;
	}
	return false;
}

/* Does the target filter admit a task with this cgroup, tgid and comm? Unset filters admit everything. */
static __always_inline bool admitted(__u64 cgroup, __u32 tgid, const char comm[TASK_COMM_LEN])
{
	if (cfg_filter_cgroup && !bpf_map_lookup_elem(&filter_cgroups, &cgroup))
		return false;
	if (cfg_filter_pid && !bpf_map_lookup_elem(&filter_pids, &tgid))
		return false;
	if (cfg_filter_comm && !comm_admitted(comm))
		return false;
	return true;
}

static __always_inline __u64 task_cgroup_id(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

static __always_inline bool current_admitted(void)
{
	char comm[TASK_COMM_LEN] = {};
	if (!cfg_filter_cgroup && !cfg_filter_pid && !cfg_filter_comm)
		return true;
	bpf_get_current_comm(comm, sizeof(comm));
	return admitted(bpf_get_current_cgroup_id(), bpf_get_current_pid_tgid() >> 32, comm);
}

/* A task whose tgid and comm the caller already has (e.g. from BTF-typed loads); the cgroup walk is only paid
 * when a cgroup filter is on. */
static __always_inline bool task_admitted_as(struct task_struct *t, __u32 tgid, const char comm[TASK_COMM_LEN])
{
	if (!cfg_filter_cgroup && !cfg_filter_pid && !cfg_filter_comm)
		return true;
	return admitted(cfg_filter_cgroup ? task_cgroup_id(t) : 0, tgid, comm);
}

static __always_inline bool task_admitted(struct task_struct *t)
{
	char comm[TASK_COMM_LEN] = {};
	if (!cfg_filter_cgroup && !cfg_filter_pid && !cfg_filter_comm)
		return true;
	BPF_CORE_READ_STR_INTO(&comm, t, comm);
	return task_admitted_as(t, BPF_CORE_READ(t, tgid), comm);
}

/* A socket's owner, for hooks that run in softirq or timer context (retransmits), where the current task is
 * whoever was on the CPU. The socket keeps the cgroup it was created in (sk_cgrp_data.cgroup, 5.15+; older
 * kernels pack it in a union this object does not read, so their sockets are never admitted by a cgroup filter:
 * fail closed). Pid and comm filters cannot narrow a socket: they admit it. */
static __always_inline bool sock_admitted(struct sock *sk)
{
	if (!cfg_filter_cgroup)
		return true;
	__u64 id = 0;
	if (bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
		id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	return id && bpf_map_lookup_elem(&filter_cgroups, &id);
}

/* The cgroup holding every pod of the node (kubepods) and its level below the v2 root, set with a pod filter. A
 * task under it that the filter does not admit belongs to another pod: probes never name it to a tenant (a
 * tenant sees its own pods' tasks and host tasks, never another pod's). */
const volatile __u64 cfg_pods_root = 0;
const volatile __u32 cfg_pods_root_level = 0;

/* Another pod's task: under the pods root and not in one of the traced pods' cgroups (a task of a traced pod
 * that the comm filter leaves out, like ping's neighbour isc-socket, is not another pod's). */
static __always_inline bool in_other_pod(struct task_struct *p)
{
	if (!cfg_pods_root)
		return false;
	struct cgroup *cg = BPF_CORE_READ(p, cgroups, dfl_cgrp);
	__u64 id = BPF_CORE_READ(cg, kn, id);
	if (bpf_map_lookup_elem(&filter_cgroups, &id))
		return false;
	__u32 level = BPF_CORE_READ(cg, level);
	if (level <= cfg_pods_root_level || cfg_pods_root_level > 64)
		return false;
	return cgroup_ancestor_id(cg, cfg_pods_root_level) == cfg_pods_root;
}

/* Set by the cluster admin (Helm value tenancy.redactCounterparts): with a pod filter, a counterpart outside the
 * traced pods' cgroups (a host task: another pod's is never named anyway) is reported as "[outside]", pid 0. */
const volatile __u8 cfg_redact_outside = 0;

static __always_inline bool redacted(struct task_struct *p)
{
	if (!cfg_redact_outside || !cfg_filter_cgroup)
		return false;
	if (!p)
		return true; /* classic tracepoint: the task's cgroup is unknown, so it is not named */
	__u64 id = task_cgroup_id(p);
	return !bpf_map_lookup_elem(&filter_cgroups, &id);
}

/* Port filter of the network probes: a flow passes when either port is listed (no ports: every flow). */
const volatile __u16 cfg_ports[MAX_PORTS] = {};
const volatile __u32 cfg_nports = 0;

static __always_inline bool port_ok(__u16 sport, __u16 dport)
{
	if (!cfg_nports)
		return true;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= cfg_nports)
			break;
		if (cfg_ports[i] == sport || cfg_ports[i] == dport)
			return true;
	}
	return false;
}

/* Family and addresses of a socket into an event with `family`, `saddr[16]` and `daddr[16]` fields. */
#define FILL_SOCK_ADDRS(e, sk)                                                                     \
	do {                                                                                       \
		(e)->family = BPF_CORE_READ(sk, __sk_common.skc_family);                           \
		if ((e)->family == 2) {                                                            \
			bpf_core_read((e)->saddr, 4, &(sk)->__sk_common.skc_rcv_saddr);            \
			bpf_core_read((e)->daddr, 4, &(sk)->__sk_common.skc_daddr);                \
		} else {                                                                           \
			bpf_core_read((e)->saddr, 16, &(sk)->__sk_common.skc_v6_rcv_saddr);        \
			bpf_core_read((e)->daddr, 16, &(sk)->__sk_common.skc_v6_daddr);            \
		}                                                                                  \
	} while (0)

static __always_inline bool breaches(__u64 value)
{
	if (!cfg_threshold)
		return false;
	return cfg_threshold_ge ? value >= cfg_threshold : value > cfg_threshold;
}

/* Should a non-breaching event be sent? Sampling is per CPU so it needs no atomics. */
static __always_inline bool keep_event(bool breach)
{
	if (breach)
		return true;
	if (!cfg_emit_events)
		return false;
	if (cfg_sample_every <= 1)
		return true;
	return bpf_get_prandom_u32() % cfg_sample_every == 0;
}

/* Reserve ring-buffer space, counting a drop when it is full. */
static __always_inline void *reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		stat_inc(STAT_DROPPED);
	else
		stat_inc(STAT_EMITTED);
	return e;
}

/* A zeroed event of `type` from the ring buffer, stamped with the time and CPU; NULL when the ring is full (the
 * drop is counted). */
#define RESERVE_EVENT(type)                                                                                        \
	({                                                                                                         \
		type *__e = reserve(sizeof(type));                                                                 \
		if (__e) {                                                                                         \
			__builtin_memset(__e, 0, sizeof(type));                                                    \
			__e->ts_ns = bpf_ktime_get_ns();                                                           \
			__e->cpu = bpf_get_smp_processor_id();                                                     \
		}                                                                                                  \
		__e;                                                                                               \
	})

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0;
	/* Unrolled to keep the verifier happy on older kernels. */
	if (v >= (1ull << 32)) { v >>= 32; r += 32; }
	if (v >= (1ull << 16)) { v >>= 16; r += 16; }
	if (v >= (1ull << 8)) { v >>= 8; r += 8; }
	if (v >= (1ull << 4)) { v >>= 4; r += 4; }
	if (v >= (1ull << 2)) { v >>= 2; r += 2; }
	if (v >= (1ull << 1)) { r += 1; }
	return r;
}

/* Log2 histograms: `hists[hist * HIST_SLOTS + slot]`. Declared by probes that use them via SONDE_HISTS(n). */
#define SONDE_HISTS(n)                                                                                             \
	struct {                                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                                           \
		__uint(max_entries, (n) * HIST_SLOTS);                                                             \
		__type(key, __u32);                                                                                \
		__type(value, __u64);                                                                              \
	} hists SEC(".maps");                                                                                      \
	static __always_inline void hist_add(__u32 hist, __u64 value)                                              \
	{                                                                                                          \
		__u32 idx = hist * HIST_SLOTS + (log2_slot(value) & (HIST_SLOTS - 1));                             \
		__u64 *c = bpf_map_lookup_elem(&hists, &idx);                                                      \
		if (c)                                                                                             \
			*c += 1;                                                                                   \
	}                                                                                                          \
	/* One measured latency: counted, added to histogram `hist` in microseconds, checked against the       \
	 * threshold in nanoseconds. Returns whether it breached. */                                               \
	static __always_inline bool latency_sample(__u32 hist, __u64 ns)                                          \
	{                                                                                                          \
		stat_inc(STAT_SEEN);                                                                               \
		hist_add(hist, ns / 1000);                                                                         \
		bool breach = breaches(ns);                                                                        \
		if (breach)                                                                                        \
			stat_inc(STAT_BREACHES);                                                                   \
		return breach;                                                                                     \
	}

#endif
