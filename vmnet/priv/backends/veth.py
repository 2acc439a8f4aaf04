"""The veth backend: works everywhere; native XDP (else skb), AF_XDP in copy mode."""

from __future__ import annotations

from .. import links
from .pair import PairBackend


class Veth(PairBackend):
    name = "veth"

    def create(self, spec, ctx):
        links.create_veth(spec, ctx.host_ip, peer_index=ctx.ifindex, host_index=ctx.host_ifindex)
