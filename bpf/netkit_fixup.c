/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmnet's netkit protocol fix-up, on ingress of a netkit port's primary.
 *
 * AF_XDP copy-mode TX builds an skb without setting skb->protocol. veth
 * sets it on the way through (eth_type_trans); netkit only pulls the MAC
 * header, so the host stack drops every frame the consumer (QEMU) sends.
 * Frames that have a protocol pass untouched; one without is re-injected on
 * the device's own ingress, a path that runs eth_type_trans.
 *
 * The program name is its version tag (see xsk_redirect.c).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int vmnet_nkfix_v1(struct __sk_buff *skb)
{
	if (skb->protocol)
		return TC_ACT_OK;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

char _license[] SEC("license") = "GPL";
