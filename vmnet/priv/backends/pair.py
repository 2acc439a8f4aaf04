"""What the veth and netkit backends share: a pair whose consumer end carries the program.

The host end (vmn-<port>) stays in the helper's netns; the consumer end
(vmc-<port>) is created directly in the consumer's netns with the ifindex
vmnet chose for it, the VM's MAC and one queue per port queue. The shared
XSK program is attached to the consumer end by a bpf_link of the port's
own. AF_XDP carries no offload metadata, so the host end's checksum,
segmentation and VLAN offloads go off, and the MTU is the largest one UMEM
frame carries in the mode the program took (veth's native XDP lowers the
host end's max MTU to what fits a page).
"""

from __future__ import annotations

from ...errors import InvalidInput
from ...model import MTU_FRAME_MAX, PortSpec
from .. import bpf, links
from . import Backend, Configured, Context, Plugged


def choose_mtu(spec: PortSpec, host_max_mtu: int | None) -> int:
    limit = min(MTU_FRAME_MAX, host_max_mtu or MTU_FRAME_MAX)
    if spec.mtu is None:
        return limit
    if spec.mtu > limit:
        raise InvalidInput(
            f"MTU {spec.mtu} is larger than port {spec.name} can carry in this mode ({limit})",
            fix=f"give --mtu {limit} or less, or leave it out to get the largest")
    return spec.mtu


class PairBackend(Backend):
    attach_mode = None          # the mode the program must take, when the device allows only one

    def create(self, spec: PortSpec, ctx: Context) -> None:
        raise NotImplementedError

    def plug(self, spec, ctx):
        self.create(spec, ctx)
        if ctx.instance.alias:
            links.set_alias(spec.host_ifname, ctx.instance.alias, ctx.host_ip)
        consumer = links.require_link(spec.consumer_ifname, ctx.cons_ip)
        mode = self.attach_mode if (self.attach_mode and spec.mode == "auto") else spec.mode
        return Plugged(spec=spec, reason="asked for", consumer_ifindex=consumer["ifindex"],
                       bind_queues=spec.map_keys, keys=[(consumer["ifindex"], q) for q in spec.map_keys],
                       xdp={"ifindex": consumer["ifindex"], "ifname": spec.consumer_ifname,
                            "netns": spec.netns, "mode": mode, "shared": None})

    def configure(self, plugged, ctx):
        spec = plugged.spec
        offloads = links.disable_offloads(spec.host_ifname)
        host = links.require_link(spec.host_ifname, ctx.host_ip)
        mtu = choose_mtu(spec, host["max_mtu"])
        links.set_mtu_up(spec.host_ifname, mtu, ctx.host_ip)
        links.set_mtu_up(spec.consumer_ifname, mtu, ctx.cons_ip)
        return Configured(mtu=mtu, host_ifindex=host["ifindex"], offloads_off=offloads)

    def unplug(self, name, record, instance):
        # deleting the host end deletes the pair, in whatever netns its peer is
        return links.delete_link("vmn-" + name)

    def why_broken(self, name, record, instance):
        if links.link_state("vmn-" + name) is None:
            return "its host device is gone"
        ifindex = bpf.link_ifindex(name, instance.pin_root)
        if ifindex is None:
            return "its pins are gone"
        return None if ifindex else "its program lost its device"
