/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The ABI between Sonde's BPF programs and user space: every struct that crosses the ring buffer or a map, and
 * the constants both sides share. Its twin is probe-library/abi/src/lib.rs (sonde_probe_abi); both assert the
 * sizes, so a change on one side alone fails to build. Needs vmlinux.h's fixed-width types. */
#ifndef SONDE_ABI_H
#define SONDE_ABI_H

#define TASK_COMM_LEN 16
#define MAX_PORTS 16
#define HIST_SLOTS 64

/* Stat slots of the `stats` per-CPU array. */
enum sonde_stat {
	STAT_SEEN = 0,     /* hook hits that passed the filter */
	STAT_EMITTED = 1,  /* events written to the ring buffer */
	STAT_DROPPED = 2,  /* events lost: ring buffer full */
	STAT_BREACHES = 3, /* threshold breaches */
	STAT_MAX = 4,
};

/* Flags carried by events. */
#define EV_BREACH 1u

struct comm_key {
	char comm[TASK_COMM_LEN];
};

#define MAX_COMMS 8

/* wakeups: one wakeup of `wakee` by the current task (`waker`). */
struct wakeup_event {
	__u64 ts_ns;
	__u32 waker_pid; /* tgid */
	__u32 waker_tid;
	__u32 wakee_pid;
	__u32 wakee_tid;
	__u64 wakee_cgroup;
	__u32 window_count; /* wakeups of this pair in the current 1 s window, including this one */
	__u32 flags;
	__u32 cpu;
	__u32 _pad;
	char waker_comm[TASK_COMM_LEN];
	char wakee_comm[TASK_COMM_LEN];
};

/* wakeups: the in-kernel aggregate, keyed by pair. */
/* A pair is keyed by thread ids only: 8 bytes hash faster than ids plus two comms. The comms are taken when the
 * pair is first seen (a thread that execs later keeps its old name in this pair). */
struct wakeup_key {
	__u32 waker_tid;
	__u32 wakee_tid;
};

struct wakeup_val {
	__u64 count;
	__u64 window_start_ns;
	__u32 window_count;
	__u32 breached_windows;
	__u32 waker_pid;
	__u32 wakee_pid;
	char waker_comm[TASK_COMM_LEN];
	char wakee_comm[TASK_COMM_LEN];
};

/* packet-latency stages */
enum pkt_stage {
	STAGE_XMIT = 0,
	STAGE_NETIF_RECEIVE = 1,
	STAGE_TCP_RCV_ESTABLISHED = 2,
	STAGE_TCP_RCV_STATE_PROCESS = 3,
};

struct pkt_event {
	__u64 ts_ns;
	__u64 delta_ns;       /* since device xmit */
	__u64 stage_delta_ns; /* since the previous receive stage (0 at netif_receive) */
	__u32 netns;
	__u32 ifindex;
	__u32 pid;
	__u32 cpu;
	__u32 seq;
	__u32 ack;
	__u32 family; /* AF_INET or AF_INET6 */
	__u16 win;
	__u16 sport;
	__u16 dport;
	__u8 tcp_flags;
	__u8 stage;
	__u32 flags;
	__u8 saddr[16];
	__u8 daddr[16];
	char ifname[16];
	char comm[TASK_COMM_LEN];
};

/* cpu-profile: stack counts keyed by process and stack ids. The process is its pid and start time: the thread
 * group leader's start_boottime, which /proc/<pid>/stat field 22 gives in clock ticks; a pid given to another
 * process makes another key. */
struct stack_key {
	__u32 pid;
	__s32 kstack;
	__s32 ustack;
	char comm[TASK_COMM_LEN];
	__u32 _pad;
	__u64 start_ns;
};

/* generic latency event for runq-latency, syscall-latency, tcp-connect */
struct latency_event {
	__u64 ts_ns;
	__u64 latency_ns;
	__u32 pid;
	__u32 tid;
	__u32 cpu;
	__u32 id; /* syscall number, or 0 */
	__u32 flags;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 family;
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

/* exec, oom-kill, tcp-retransmit: a single happening with addresses or a path */
struct note_event {
	__u64 ts_ns;
	__u32 pid;
	__u32 ppid;
	__u32 cpu;
	__u32 value; /* tcp state, or oom victim pages in MiB */
	__u32 family;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[TASK_COMM_LEN];
	char text[128]; /* exec filename, oom victim comm */
};

/* Layouts are shared with Rust (sonde_probe_abi); both sides assert the sizes. */
_Static_assert(sizeof(struct wakeup_event) == 80, "wakeup_event layout");
_Static_assert(sizeof(struct wakeup_key) == 8, "wakeup_key layout");
_Static_assert(sizeof(struct wakeup_val) == 64, "wakeup_val layout");
_Static_assert(sizeof(struct pkt_event) == 128, "pkt_event layout");
_Static_assert(sizeof(struct stack_key) == 40, "stack_key layout");
_Static_assert(sizeof(struct latency_event) == 96, "latency_event layout");
_Static_assert(sizeof(struct note_event) == 208, "note_event layout");

#endif
