"""The netkit backend: an L2 netkit pair (Linux >= 6.7); generic (skb) XDP only.

The request, L2 mode, policies and the protocol fix-up on the primary are
vmnet.priv.netkit's; here is only what makes it a port's backend.
"""

from __future__ import annotations

from .. import netkit
from .pair import PairBackend


class Netkit(PairBackend):
    name = "netkit"
    attach_mode = "skb"         # netkit has no ndo_bpf: no native XDP

    def create(self, spec, ctx):
        netkit.create_pair(spec, peer_index=ctx.ifindex, host_index=ctx.host_ifindex)
