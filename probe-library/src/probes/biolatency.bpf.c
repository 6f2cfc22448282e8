// SPDX-License-Identifier: GPL-2.0
/* biolatency: block I/O latency from a request's issue to the device until its completion, as a log2 histogram in
 * microseconds; requests over cfg_threshold (ns) are sent as events. A request belongs to the task that started it:
 * block_io_start runs in the submitter's context, while issue and completion may run in a kworker or an interrupt,
 * so the target filter is checked at the start and the request is followed by (device, sector) from there. */
#include "sonde.h"

struct rq_key {
	__u32 dev;
	__u32 _pad;
	__u64 sector;
};

struct started {
	__u64 issue_ns; /* 0 until issued */
	__u32 pid;
	__u32 tid;
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rq_key);
	__type(value, struct started);
} inflight SEC(".maps");

SONDE_HISTS(1)

/* The device as the classic block tracepoints give it: MKDEV(major, first_minor) of the request's disk. */
static __always_inline __u32 rq_dev(struct request *rq)
{
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
}

static __always_inline void on_start(__u32 dev, __u64 sector)
{
	if (!current_admitted())
		return;
	struct rq_key k = { .dev = dev, .sector = sector };
	__u64 id = bpf_get_current_pid_tgid();
	struct started s = { .pid = id >> 32, .tid = (__u32)id };
	bpf_get_current_comm(s.comm, sizeof(s.comm));
	bpf_map_update_elem(&inflight, &k, &s, BPF_ANY);
}

static __always_inline void on_issue(__u32 dev, __u64 sector)
{
	struct rq_key k = { .dev = dev, .sector = sector };
	struct started *s = bpf_map_lookup_elem(&inflight, &k);
	if (s)
		s->issue_ns = bpf_ktime_get_ns();
}

static __always_inline void on_complete(__u32 dev, __u64 sector)
{
	struct rq_key k = { .dev = dev, .sector = sector };
	struct started *found = bpf_map_lookup_elem(&inflight, &k);
	if (!found)
		return;
	struct started s = *found;
	bpf_map_delete_elem(&inflight, &k);
	if (!s.issue_ns)
		return;
	__u64 delta = bpf_ktime_get_ns() - s.issue_ns;
	if (!latency_sample(0, delta)) /* one event per request is too many to send: only slow ones */
		return;
	struct latency_event *e = RESERVE_EVENT(struct latency_event);
	if (!e)
		return;
	e->latency_ns = delta;
	e->pid = s.pid;
	e->tid = s.tid;
	e->id = dev;
	e->flags = EV_BREACH;
	__builtin_memcpy(e->comm, s.comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(tp_btf_block_io_start, struct request *rq) { on_start(rq_dev(rq), BPF_CORE_READ(rq, __sector)); return 0; }
SEC("tracepoint/block/block_io_start")
int tp_block_io_start(struct trace_event_raw_block_rq *ctx) { on_start(ctx->dev, ctx->sector); return 0; }
/* Before 6.5 there is no block_io_start: the function it fires in. */
SEC("kprobe/blk_account_io_start")
int BPF_KPROBE(kprobe_blk_account_io_start, struct request *rq) { on_start(rq_dev(rq), BPF_CORE_READ(rq, __sector)); return 0; }

SEC("tp_btf/block_rq_issue")
int BPF_PROG(tp_btf_block_rq_issue, struct request *rq) { on_issue(rq_dev(rq), BPF_CORE_READ(rq, __sector)); return 0; }
SEC("tracepoint/block/block_rq_issue")
int tp_block_rq_issue(struct trace_event_raw_block_rq *ctx) { on_issue(ctx->dev, ctx->sector); return 0; }

SEC("tp_btf/block_rq_complete")
int BPF_PROG(tp_btf_block_rq_complete, struct request *rq) { on_complete(rq_dev(rq), BPF_CORE_READ(rq, __sector)); return 0; }
SEC("tracepoint/block/block_rq_complete")
int tp_block_rq_complete(struct trace_event_raw_block_rq_completion *ctx) { on_complete(ctx->dev, ctx->sector); return 0; }

char LICENSE[] SEC("license") = "GPL";
