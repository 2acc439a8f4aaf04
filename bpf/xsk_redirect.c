/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmnet's XSK program: hand every frame that arrives on queue q to the
 * AF_XDP socket stored at key q of vmnet_xsks; when no socket sits at that
 * key (the consumer has not bound yet, or that queue has no socket), let
 * the frame continue up the stack (XDP_PASS) instead of dropping it.
 *
 * The program name and vmnet_xsk_version are vmnet's version tag: a loader
 * reading the attached program's name or .rodata recognises its own program.
 * Bump both together when the program's behaviour changes.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);	/* resized by the loader to start + queues */
	__type(key, __u32);
	__type(value, __u32);
} vmnet_xsks SEC(".maps");

volatile const __u32 vmnet_xsk_version = 1;

SEC("xdp")
int vmnet_xsk_v1(struct xdp_md *ctx)
{
	return bpf_redirect_map(&vmnet_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
