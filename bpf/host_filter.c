/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmnet's host-side filter: what a VM sends is dropped on the port's host
 * end unless it comes from the port's own MAC and, where vmnet knows the
 * port's addresses, from one of them (IPv4, ARP, IPv6 and neighbour
 * advertisements). One program instance serves every port of a helper
 * instance; a port's settings are keyed by its host end's ifindex.
 *
 * Two entry points run the same check: a tc classifier (the default:
 * cls_bpf in direct-action mode on the device's clsact ingress, after its
 * packet taps, before the bridge, Open vSwitch's kernel datapath and the
 * IP stack) and an XDP program for a host end that a packet socket reads
 * before tc runs (Open vSwitch's userspace datapath reads its ports that
 * way).
 *
 * A frame that passes goes on untouched (TCX_NEXT, TC_ACT_UNSPEC: the
 * classifiers after it still run); one that does not is dropped and
 * counted per port and per reason.
 *
 * The program names are the version tag.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef TCX_NEXT		/* older UAPI headers (Linux < 6.6) lack the tcx verdicts */
#define TCX_NEXT -1
#define TCX_DROP 2
#endif

#define PORTS 16384
#define ADDRS (PORTS * 4)

#define ENFORCE_IPV4 1
#define ENFORCE_IPV6 2

struct vmnet_hf_port {
	__u8 mac[6];
	__u16 flags;
};

struct vmnet_hf_addr {
	__u32 ifindex;
	__u32 family;		/* 4 or 6 */
	__u8 addr[16];		/* IPv4 in the first 4 bytes */
};

struct vmnet_hf_stats {
	__u64 mac;		/* source MAC not the port's */
	__u64 arp;		/* ARP sender not the port's MAC or address */
	__u64 ipv4;		/* IPv4 source not the port's */
	__u64 ipv6;		/* IPv6 source not the port's (nor link-local) */
	__u64 nd;		/* neighbour advertisement for another address */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PORTS);
	__type(key, __u32);
	__type(value, struct vmnet_hf_port);
} vmnet_hf_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ADDRS);
	__type(key, struct vmnet_hf_addr);
	__type(value, __u8);
} vmnet_hf_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, PORTS);
	__type(key, __u32);
	__type(value, struct vmnet_hf_stats);
} vmnet_hf_stats SEC(".maps");

volatile const __u32 vmnet_host_filter_version = 1;

enum verdict { PASS, DROP_MAC, DROP_ARP, DROP_IPV4, DROP_IPV6, DROP_ND };

struct arp_eth_ipv4 {
	__be16 htype, ptype;
	__u8 hlen, plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline int known(__u32 ifindex, __u32 family, const __u8 *addr)
{
	struct vmnet_hf_addr key = { .ifindex = ifindex, .family = family };

	if (family == 4)
		__builtin_memcpy(key.addr, addr, 4);
	else
		__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&vmnet_hf_addrs, &key) != NULL;
}

static __always_inline enum verdict check(void *data, void *data_end, __u32 ifindex)
{
	struct vmnet_hf_port *port = bpf_map_lookup_elem(&vmnet_hf_ports, &ifindex);
	struct ethhdr *eth = data;
	__u8 *l3;
	__u16 proto;
	int i;

	if (!port)
		return PASS;
	if ((void *)(eth + 1) > data_end)
		return PASS;		/* a runt: the stack drops it */
	if (!same_mac(eth->h_source, port->mac))
		return DROP_MAC;
	proto = bpf_ntohs(eth->h_proto);
	l3 = (__u8 *)(eth + 1);
#pragma unroll
	for (i = 0; i < 2; i++) {	/* through a trunk's tag (and a QinQ one) */
		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if (l3 + 4 > (__u8 *)data_end)
			return PASS;
		proto = ((__u16)l3[2] << 8) | l3[3];
		l3 += 4;
	}
	if (proto == ETH_P_ARP) {
		struct arp_eth_ipv4 *arp = (void *)l3;

		if ((void *)(arp + 1) > data_end)
			return PASS;
		if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP))
			return PASS;
		if (!same_mac(arp->sha, port->mac))
			return DROP_ARP;
		if ((port->flags & ENFORCE_IPV4) && *(__u32 *)arp->spa != 0 && !known(ifindex, 4, arp->spa))
			return DROP_ARP;
		return PASS;
	}
	if (proto == ETH_P_IP) {
		__u8 *ip = l3;
		__u32 saddr;
		__u8 ihl;

		if (!(port->flags & ENFORCE_IPV4))
			return PASS;
		if (ip + 20 > (__u8 *)data_end)
			return DROP_IPV4;
		saddr = *(__u32 *)(ip + 12);
		if (known(ifindex, 4, ip + 12))
			return PASS;
		/* an unconfigured guest asks DHCP from 0.0.0.0 */
		ihl = (ip[0] & 0xf) * 4;
		if (saddr == 0 && ip[9] == 17 && ihl >= 20 && ihl <= 60) {
			__u8 *udp = ip + ihl;

			if (udp + 4 <= (__u8 *)data_end && udp[2] == 0 && udp[3] == 67)
				return PASS;
		}
		return DROP_IPV4;
	}
	if (proto == ETH_P_IPV6) {
		__u8 *ip6 = l3;

		if (!(port->flags & ENFORCE_IPV6))
			return PASS;
		if (ip6 + 40 > (__u8 *)data_end)
			return DROP_IPV6;
		/* unspecified (duplicate address detection) and link-local sources are the
		 * guest's own business on its link: routers never forward them */
		if (!(ip6[8] == 0xfe && (ip6[9] & 0xc0) == 0x80) &&
		    !(*(__u64 *)(ip6 + 8) == 0 && *(__u64 *)(ip6 + 16) == 0) &&
		    !known(ifindex, 6, ip6 + 8))
			return DROP_IPV6;
		/* a neighbour advertisement claims its target: only the guest's own */
		if (ip6[6] == 58 && ip6 + 40 + 24 <= (__u8 *)data_end && ip6[40] == 136) {
			__u8 *target = ip6 + 48;

			if (!(target[0] == 0xfe && (target[1] & 0xc0) == 0x80) && !known(ifindex, 6, target))
				return DROP_ND;
		}
		return PASS;
	}
	return PASS;
}

static __always_inline void count(__u32 ifindex, enum verdict v)
{
	struct vmnet_hf_stats *s = bpf_map_lookup_elem(&vmnet_hf_stats, &ifindex);

	if (!s)
		return;
	switch (v) {
	case DROP_MAC: s->mac++; break;
	case DROP_ARP: s->arp++; break;
	case DROP_IPV4: s->ipv4++; break;
	case DROP_IPV6: s->ipv6++; break;
	case DROP_ND: s->nd++; break;
	default: break;
	}
}

SEC("tc")
int vmnet_hf_tc_v1(struct __sk_buff *skb)
{
	enum verdict v;

	/* the headers checked lie within the first 128 bytes */
	if ((long)skb->data_end - (long)skb->data < 128 && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
	v = check((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex);
	if (v == PASS)
		return TCX_NEXT;
	count(skb->ifindex, v);
	return TCX_DROP;
}

SEC("xdp")
int vmnet_hf_xdp_v1(struct xdp_md *ctx)
{
	enum verdict v = check((void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->ingress_ifindex);

	if (v == PASS)
		return XDP_PASS;
	count(ctx->ingress_ifindex, v);
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
