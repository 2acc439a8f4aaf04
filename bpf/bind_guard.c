/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmnet's bind guard, a BPF LSM program on socket_bind.
 *
 * vmnet hands its consumers (QEMU) AF_XDP sockets that are open but not
 * bound, and binding needs no capability: whoever holds such a socket could
 * bind it to any device and queue of the netns it was made in and send raw
 * frames there. For every socket it makes, vmnet stores in vmnet_bind_rules
 * (socket-local storage, keyed by the socket itself) the one place it may be
 * bound to: the netns it was made in, its port's device and its queue. This
 * program refuses (EPERM) every other bind of such a socket. Sockets without
 * a rule are none of vmnet's business and are left alone.
 *
 * vmnet_bind_refused counts refusals, per CPU, for `vmnet status`.
 * The program name is the version tag (see xsk_redirect.c); a new version
 * gets a new name, pins and map, and older versions stay attached for the
 * sockets they confine.
 */
#include <linux/bpf.h>
#include <linux/if_xdp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define AF_XDP 44
#define EPERM 1

/* The kernel types the hook reads, relocated against the running kernel's BTF. */
struct net {
	__u64 net_cookie;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	possible_net_t skc_net;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct sockaddr;

struct vmnet_bind_rule {
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 queue_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct vmnet_bind_rule);
} vmnet_bind_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vmnet_bind_refused SEC(".maps");

volatile const __u32 vmnet_bind_version = 1;

static __always_inline int refuse(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&vmnet_bind_refused, &zero);

	if (count)
		(*count)++;
	return -EPERM;
}

SEC("lsm/socket_bind")
int BPF_PROG(vmnet_bind_v1, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	struct vmnet_bind_rule *rule;
	struct sockaddr_xdp sxdp = {};
	struct sock *sk;

	if (ret)
		return ret;		/* refused already */
	sk = sock->sk;
	if (!sk)
		return 0;
	rule = bpf_sk_storage_get(&vmnet_bind_rules, sk, 0, 0);
	if (!rule)
		return 0;		/* not a socket vmnet made */
	if (addrlen < (int)sizeof(sxdp) || bpf_probe_read_kernel(&sxdp, sizeof(sxdp), address))
		return refuse();
	if (sxdp.sxdp_family != AF_XDP || sxdp.sxdp_ifindex != rule->ifindex ||
	    sxdp.sxdp_queue_id != rule->queue_id)
		return refuse();
	if (BPF_CORE_READ(sk, __sk_common.skc_net.net, net_cookie) != rule->netns_cookie)
		return refuse();
	return 0;
}

char _license[] SEC("license") = "GPL";
