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

from ... import rawnl
from ...errors import InvalidInput, KernelError
from ...fields import MTU_FRAME_MAX
from ...model import PortSpec
from .. import bpf, links, netns
from . import Backend, Configured, Context, Plugged


def choose_mtu(spec: PortSpec, host_max_mtu: int | None, network: tuple | None = None) -> tuple[int, str]:
    """The port's MTU and why: the largest one UMEM frame carries in this mode, lowered to its
    network's (a bridge's, an Open vSwitch bridge's) as libvirt lowers a tap's to its bridge's,
    or the one asked for. A network whose MTU is larger than the port can carry would have the
    VM drop the network's larger frames silently: refused, unless a smaller MTU is asked for."""
    limit = min(MTU_FRAME_MAX, host_max_mtu or MTU_FRAME_MAX)
    net_mtu, net_name = network if network and network[0] else (None, "")
    if spec.mtu is not None and spec.mtu > limit:
        raise InvalidInput(
            f"MTU {spec.mtu} is larger than port {spec.name} can carry in this mode ({limit})",
            fix=f"give --mtu {limit} or less, or leave it out to get the largest")
    if net_mtu is None:
        return (spec.mtu, "asked for") if spec.mtu is not None else (limit, "the largest one frame carries")
    if spec.mtu is not None:
        if spec.mtu > net_mtu:
            raise InvalidInput(f"MTU {spec.mtu} of port {spec.name} is larger than the MTU of {net_name} "
                               f"({net_mtu}): the network would drop the VM's larger frames",
                               fix=f"give --mtu {net_mtu} or less, or leave it out to take the network's")
        return spec.mtu, "asked for" + (f" (below {net_name}'s {net_mtu}: larger frames from it are dropped)"
                                        if spec.mtu < net_mtu else "")
    if net_mtu > limit:
        raise InvalidInput(
            f"{net_name} has MTU {net_mtu}, and port {spec.name} carries at most {limit} bytes per frame in "
            "this mode: the VM would silently lose the network's larger frames",
            fix=f"lower the network's MTU to {limit} or less, or ask for a smaller port MTU explicitly "
                f"(--mtu {min(limit, 1500)}) if nothing on the network sends larger frames to the VM")
    return net_mtu, f"the MTU of {net_name}"


class PairBackend(Backend):
    attach_mode = None          # the mode the program must take, when the device allows only one

    def create(self, spec: PortSpec, ctx: Context) -> None:
        raise NotImplementedError

    def plug(self, spec, ctx):
        self.create(spec, ctx)
        if ctx.instance.alias:
            if ctx.host_ifindex:
                links.set_alias_raw(ctx.host_ifindex, spec.host_ifname, ctx.instance.alias)
            else:
                links.set_alias(spec.host_ifname, ctx.instance.alias, ctx.host_ip)
        # the consumer end has the ifindex vmnet asked for (send_newlink refuses a taken one)
        consumer = ctx.ifindex or links.require_link(spec.consumer_ifname, ctx.cons_ip)["ifindex"]
        mode = self.attach_mode if (self.attach_mode and spec.mode == "auto") else spec.mode
        return Plugged(spec=spec, reason="asked for", consumer_ifindex=consumer,
                       bind_queues=spec.map_keys, keys=[(consumer, q) for q in spec.map_keys],
                       xdp={"ifindex": consumer, "ifname": spec.consumer_ifname,
                            "netns": spec.netns, "mode": mode, "shared": None})

    def configure(self, plugged, ctx):
        spec = plugged.spec
        offloads = links.disable_offloads(spec.host_ifname)
        # raw rtnetlink: pyroute2's message objects cost more here than the kernel's work
        host = rawnl.link(spec.host_ifname)
        if host is None:
            raise KernelError(f"host end {spec.host_ifname} of port {spec.name} went while it was made")
        mtu, why = choose_mtu(spec, host["max_mtu"], ctx.network_mtu)
        if ctx.host_layer2:
            links.disable_ipv6(spec.host_ifname)        # a switch port: nothing of its own to say
        links.set_mtu_up_raw(host["ifindex"], spec.host_ifname, mtu)
        with netns.entered(spec.netns):
            # the consumer end has the VM's MAC: were its own stack to speak (IPv6 DAD, router
            # solicitations, MLD), switches would learn the VM's MAC here, wherever the VM runs
            # (a migrated VM's old port, until its release); and no IP of its own is ever used
            links.disable_ipv6(spec.consumer_ifname)
            links.set_mtu_up_raw(plugged.consumer_ifindex, spec.consumer_ifname, mtu, silent=True)
        return Configured(mtu=mtu, host_ifindex=host["ifindex"], offloads_off=offloads, mtu_reason=why)

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
