"""Everything in vmnet that needs CAP_NET_ADMIN, CAP_BPF or CAP_NET_RAW.

Split by kernel object: netns (entering namespaces), links (veth devices),
bpf (the XSK program, its link and map, their pins), xsk (AF_XDP sockets),
ports (one port's lifecycle over those), confine (dropping privileges before
a consumer is exec'd), memlock (the consumer's RLIMIT_MEMLOCK). Nothing
outside this package creates or removes a kernel object.
"""
