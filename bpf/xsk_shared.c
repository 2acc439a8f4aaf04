/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmnet's shared XSK program: one instance per helper instance, attached to
 * every port's device (a veth or netkit consumer end, or a NIC whose queues
 * are leased), instead of one program per port. Loading a program makes
 * the kernel rebuild its XDP dispatcher and wait for an RCU grace period;
 * attaching one it already has does not.
 *
 * A frame that arrives on queue q of device ifindex is looked up as
 * (ifindex, q) in vmnet_slots; the slot found is its socket's key in
 * vmnet_xsks and its counters' index in vmnet_stats (per CPU: redirected
 * to the socket, or passed to the stack because no socket is there yet).
 * Frames of queues vmnet does not own go on up the stack untouched.
 * ifindexes are per netns, so vmnet gives the devices it makes ifindexes
 * from a range of its own (vmnet.priv.xskprog), unique across netns.
 *
 * vmnet_claims records which port owns each slot, for the helper's
 * bookkeeping only; the program never reads it.
 *
 * The program name and vmnet_xsk_shared_version are the version tag.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define SLOTS 16384

struct vmnet_queue_key {
	__u32 ifindex;
	__u32 queue;
};

struct vmnet_queue_stats {
	__u64 redirected;
	__u64 passed;
};

struct vmnet_claim {
	char port[16];
	__u32 ifindex;
	__u32 queue;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLOTS);
	__type(key, struct vmnet_queue_key);
	__type(value, __u32);
} vmnet_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} vmnet_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct vmnet_queue_stats);
} vmnet_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct vmnet_claim);
} vmnet_claims SEC(".maps");

volatile const __u32 vmnet_xsk_shared_version = 2;

SEC("xdp")
int vmnet_xsk_v2(struct xdp_md *ctx)
{
	struct vmnet_queue_key key = {
		.ifindex = ctx->ingress_ifindex,
		.queue = ctx->rx_queue_index,
	};
	struct vmnet_queue_stats *stats;
	__u32 *slot;
	long action;

	slot = bpf_map_lookup_elem(&vmnet_slots, &key);
	if (!slot)
		return XDP_PASS;
	action = bpf_redirect_map(&vmnet_xsks, *slot, XDP_PASS);
	stats = bpf_map_lookup_elem(&vmnet_stats, slot);
	if (stats) {
		if (action == XDP_REDIRECT)
			stats->redirected++;
		else
			stats->passed++;
	}
	return action;
}

char _license[] SEC("license") = "GPL";
