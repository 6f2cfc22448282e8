// SPDX-License-Identifier: GPL-2.0
/* packet-latency: per TCP segment, time from device xmit to __netif_receive_skb and to the TCP receive
 * functions, keyed by 4-tuple + seq + ack (a stream of pure ACKs shares its seq; each acks more). Segments at or over cfg_threshold (ns) are sent with every column of the
 * field case; per-stage log2 histograms count every segment. */
#include "sonde.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET 2
#define AF_INET6 10

const volatile __u8 cfg_filter_netns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} filter_netns SEC(".maps");

struct seg_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 ack;
};

/* Sends of one key this close together are one segment's trip through several devices. */
#define SAME_TRIP_NS (1000ULL * 1000 * 1000)

struct seg_val {
	__u64 xmit_ns;
	__u64 last_stage_ns;
	__u64 xmit_dev; /* the device of the first send (its address: ifindex is per namespace) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct seg_key);
	__type(value, struct seg_val);
} inflight SEC(".maps");

/* hist 0: xmit->netif_receive, 1: xmit->tcp_rcv_established, 2: xmit->tcp_rcv_state_process (ns) */
SONDE_HISTS(3)

struct seg {
	struct seg_key key;
	__u32 family;
	__u32 ack;
	__u16 win;
	__u8 flags;
};

/* Parse IPv4/IPv6 + TCP starting at the network header. Returns false for anything but TCP. */
static __always_inline bool parse(unsigned char *nh, struct seg *s)
{
	__u8 vers = 0;
	if (bpf_probe_read_kernel(&vers, 1, nh))
		return false;
	unsigned char *th;
	if ((vers >> 4) == 4) {
		struct iphdr ip;
		if (bpf_probe_read_kernel(&ip, sizeof(ip), nh) || ip.protocol != IPPROTO_TCP)
			return false;
		s->family = AF_INET;
		__builtin_memcpy(s->key.saddr, &ip.saddr, 4);
		__builtin_memcpy(s->key.daddr, &ip.daddr, 4);
		th = nh + ip.ihl * 4;
	} else if ((vers >> 4) == 6) {
		struct ipv6hdr ip6;
		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), nh) || ip6.nexthdr != IPPROTO_TCP)
			return false;
		s->family = AF_INET6;
		__builtin_memcpy(s->key.saddr, &ip6.saddr, 16);
		__builtin_memcpy(s->key.daddr, &ip6.daddr, 16);
		th = nh + sizeof(ip6);
	} else {
		return false;
	}
	struct tcphdr tcp;
	if (bpf_probe_read_kernel(&tcp, sizeof(tcp), th))
		return false;
	s->key.sport = bpf_ntohs(tcp.source);
	s->key.dport = bpf_ntohs(tcp.dest);
	s->key.seq = bpf_ntohl(tcp.seq);
	s->key.ack = bpf_ntohl(tcp.ack_seq);
	s->ack = s->key.ack;
	s->win = bpf_ntohs(tcp.window);
	s->flags = ((__u8 *)&tcp)[13];
	return port_ok(s->key.sport, s->key.dport);
}

static __always_inline __u32 dev_netns(struct net_device *dev)
{
	return BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

static __always_inline int on_xmit(struct sk_buff *skb)
{
	struct seg s = {};
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	if (!parse(head + nh, &s))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 dev = (__u64)BPF_CORE_READ(skb, dev);
	/* A segment on its way is sent again by every device it crosses (a pod's veth, then the bridge to the other
	 * pod's veth): its first send is where the trip starts, and a queue there is part of it. A send from the
	 * first device again is a retransmit (its original lost on the way), and an older entry another segment of
	 * the same key (a wrapped seq): both start a trip of their own. */
	struct seg_val *seen = bpf_map_lookup_elem(&inflight, &s.key);
	if (seen && seen->xmit_dev != dev && now - seen->xmit_ns < SAME_TRIP_NS)
		return 0;
	struct seg_val v = { .xmit_ns = now, .last_stage_ns = now, .xmit_dev = dev };
	bpf_map_update_elem(&inflight, &s.key, &v, BPF_ANY);
	return 0;
}

/* The pid/comm columns are the task the receive ran on top of (softirq borrows whatever was on the CPU; the
 * field case reads them to spot ksoftirqd and idle). Under a pod filter another pod's task is never named, and
 * with the admin's redaction switch neither is a host task: both come out as a pseudo task with pid 0. */
static __always_inline void name_current(struct pkt_event *e)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (in_other_pod(t)) {
		__builtin_memcpy(e->comm, "[other pod]", 12);
		return;
	}
	if (redacted(t)) {
		__builtin_memcpy(e->comm, "[outside]", 10);
		return;
	}
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* `dev` is the receiving device at __netif_receive_skb; in the TCP functions skb->dev is no longer reliable,
 * so the socket gives the namespace and skb_iif the interface. */
static __always_inline int on_receive(struct sk_buff *skb, unsigned char *nh, __u8 stage, struct net_device *dev,
				      __u32 netns)
{
	struct seg s = {};
	if (!parse(nh, &s))
		return 0;
	struct seg_val *v = bpf_map_lookup_elem(&inflight, &s.key);
	if (!v)
		return 0;
	if (cfg_filter_netns && !bpf_map_lookup_elem(&filter_netns, &netns))
		return 0;
	stat_inc(STAT_SEEN);
	__u64 now = bpf_ktime_get_ns();
	__u64 delta = now - v->xmit_ns;
	__u64 stage_delta = stage == STAGE_NETIF_RECEIVE ? 0 : now - v->last_stage_ns;
	v->last_stage_ns = now;
	/* In TCP the trip is over: a later send of this key (a retransmit of a segment that did arrive) is another. */
	if (stage != STAGE_NETIF_RECEIVE)
		bpf_map_delete_elem(&inflight, &s.key);
	hist_add(stage - 1, delta);
	bool breach = breaches(delta);
	if (breach)
		stat_inc(STAT_BREACHES);
	if (!keep_event(breach))
		return 0;
	struct pkt_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->delta_ns = delta;
	e->stage_delta_ns = stage_delta;
	e->netns = netns;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		BPF_CORE_READ_STR_INTO(&e->ifname, dev, name);
	} else {
		e->ifindex = BPF_CORE_READ(skb, skb_iif);
	}
	e->cpu = bpf_get_smp_processor_id();
	e->seq = s.key.seq;
	e->ack = s.ack;
	e->family = s.family;
	e->win = s.win;
	e->sport = s.key.sport;
	e->dport = s.key.dport;
	e->tcp_flags = s.flags;
	e->stage = stage;
	e->flags = breach ? EV_BREACH : 0;
	__builtin_memcpy(e->saddr, s.key.saddr, 16);
	__builtin_memcpy(e->daddr, s.key.daddr, 16);
	name_current(e);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* At __netif_receive_skb the mac header has been pulled: skb->data is the network header. */
static __always_inline int on_netif_receive(struct sk_buff *skb)
{
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	return on_receive(skb, BPF_CORE_READ(skb, data), STAGE_NETIF_RECEIVE, dev, dev_netns(dev));
}

/* In the TCP receive functions the network header offset is valid again. */
static __always_inline int on_tcp(struct sock *sk, struct sk_buff *skb, __u8 stage)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u32 netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	return on_receive(skb, head + BPF_CORE_READ(skb, network_header), stage, NULL, netns);
}

SEC("fentry/__dev_queue_xmit")
int BPF_PROG(fentry_dev_queue_xmit, struct sk_buff *skb) { return on_xmit(skb); }
SEC("kprobe/__dev_queue_xmit")
int BPF_KPROBE(kprobe_dev_queue_xmit, struct sk_buff *skb) { return on_xmit(skb); }
SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_btf_net_dev_queue, struct sk_buff *skb) { return on_xmit(skb); }
SEC("tracepoint/net/net_dev_queue")
int tp_net_dev_queue(struct trace_event_raw_net_dev_template *ctx) { return on_xmit(ctx->skbaddr); }

SEC("fentry/__netif_receive_skb")
int BPF_PROG(fentry_netif_receive_skb, struct sk_buff *skb) { return on_netif_receive(skb); }
SEC("kprobe/__netif_receive_skb")
int BPF_KPROBE(kprobe_netif_receive_skb, struct sk_buff *skb) { return on_netif_receive(skb); }
SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tp_btf_netif_receive_skb, struct sk_buff *skb) { return on_netif_receive(skb); }
SEC("tracepoint/net/netif_receive_skb")
int tp_netif_receive_skb(struct trace_event_raw_net_dev_template *ctx) { return on_netif_receive(ctx->skbaddr); }

SEC("fentry/tcp_rcv_established")
int BPF_PROG(fentry_tcp_rcv_established, struct sock *sk, struct sk_buff *skb)
{
	return on_tcp(sk, skb, STAGE_TCP_RCV_ESTABLISHED);
}
SEC("kprobe/tcp_rcv_established")
int BPF_KPROBE(kprobe_tcp_rcv_established, struct sock *sk, struct sk_buff *skb)
{
	return on_tcp(sk, skb, STAGE_TCP_RCV_ESTABLISHED);
}
SEC("tp_btf/tcp_probe")
int BPF_PROG(tp_btf_tcp_probe, struct sock *sk, struct sk_buff *skb)
{
	return on_tcp(sk, skb, STAGE_TCP_RCV_ESTABLISHED);
}
SEC("tracepoint/tcp/tcp_probe")
int tp_tcp_probe(struct trace_event_raw_tcp_probe *ctx)
{
	return on_tcp((struct sock *)ctx->skaddr, (struct sk_buff *)ctx->skbaddr, STAGE_TCP_RCV_ESTABLISHED);
}

SEC("fentry/tcp_rcv_state_process")
int BPF_PROG(fentry_tcp_rcv_state_process, struct sock *sk, struct sk_buff *skb)
{
	return on_tcp(sk, skb, STAGE_TCP_RCV_STATE_PROCESS);
}
SEC("kprobe/tcp_rcv_state_process")
int BPF_KPROBE(kprobe_tcp_rcv_state_process, struct sock *sk, struct sk_buff *skb)
{
	return on_tcp(sk, skb, STAGE_TCP_RCV_STATE_PROCESS);
}

char LICENSE[] SEC("license") = "GPL";
