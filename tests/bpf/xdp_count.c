/* A counting XDP program for the sharing tests: counts the test's frames
 * (EtherType 0x88b5, local experimental) it sees and passes every frame on. Built by tests/xdp_env.py with the name given in NAME,
 * so that two copies are told apart in a dispatcher. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

SEC("xdp")
int NAME(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = 0;
	__u64 *n;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(0x88b5))
		return XDP_PASS;
	n = bpf_map_lookup_elem(&seen, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
