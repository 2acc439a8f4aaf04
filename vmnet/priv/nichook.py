"""vmnet's place on a NIC's XDP hook: joined with the NIC's first lease, left with its last.

Ports leasing queues of one NIC share one component in the NIC's libxdp
dispatcher (vmnet.priv.xdpshare): the instance's XSK program, loaded as
freplace with the instance's maps. The instance pins that component's
program at <instance root>/+nic-IFINDEX/prog — a reference that names it
(its id) and attaches nothing: libxdp's own pins under <bpffs>/xdp hold
the attachment, and follow the dispatcher when another tool changes it.

A NIC whose kernel refuses freplace programs (this project's 6.18 host:
EPERM) gets the program alone, as libxdp falls back to; it is shown so,
and nothing can join it there.

Recovery (the helper's start) removes, and only removes: this instance's
component on a NIC none of its ports leases from, a vmnet component whose
maps no pinned instance holds (a helper died between joining and
pinning), and libxdp's pin directories of dispatchers no longer attached
there (a helper died inside a change).
"""

from __future__ import annotations

import os
import socket

from ..errors import AlreadyExists, VmnetError
from . import bpf, libbpf, links, xdpshare, xskprog

PIN = "prog"


def shared_name(ifindex: int) -> str:
    return f"+nic-{ifindex}"


def _prog_id(state: dict) -> int:
    return state["xdp_prog_id"] or state["xdp_drv_prog_id"] or state["xdp_skb_prog_id"]


def hook_of(state: dict) -> xdpshare.Hook:
    return xdpshare.inspect(state["ifindex"], state["ifname"], _prog_id(state), state["xdp_mode"],
                            xskprog.PROGRAM)


def pinned_component(instance, ifindex: int) -> int | None:
    """The program id of this instance's component on the NIC, from its pin (None: no pin;
    0: a pin of the layout before dispatchers, a bpf_link of the program itself)."""
    d = bpf.pin_dir(shared_name(ifindex), instance.pin_root)
    try:
        fd = libbpf.obj_get(os.path.join(d, PIN))
    except OSError:
        return 0 if os.path.exists(os.path.join(d, "link")) else None
    try:
        return libbpf.prog_info(fd).id
    finally:
        os.close(fd)


def ours_on(hook: xdpshare.Hook, component: int | None) -> bool:
    """Whether this instance's component (or, before dispatchers, its link) runs on the hook."""
    if component is None:
        return False
    if component == 0:
        return hook.kind == "program" and hook.prog_name == xskprog.PROGRAM
    return hook.prog_id == component or hook.component(component) is not None


def check(state: dict, instance) -> xdpshare.Hook:
    """Refuse, before anything is made, a NIC whose XDP hook vmnet cannot share."""
    hook = hook_of(state)
    if ours_on(hook, pinned_component(instance, state["ifindex"])):
        return hook
    xdpshare.refuse_unshareable(hook, "vmnet's XSK program")
    if hook.kind == "program":
        raise AlreadyExists(f"{state['ifname']} already carries vmnet's XSK program of another instance",
                            fix="lease from another NIC")
    return hook


def ensure(program: xskprog.XskProgram, instance, xdp: dict, priority: int) -> tuple[str, int]:
    """vmnet's component on the NIC, joined now when this is its first port: (mode, component
    program id; 0 for a program of the layout before dispatchers)."""
    ifindex, ifname = xdp["ifindex"], xdp["ifname"]
    state = links.require_link(ifname)
    hook = hook_of(state)
    pinned = pinned_component(instance, ifindex)
    if ours_on(hook, pinned):
        return hook.mode or xdp["mode"], pinned
    if pinned is not None:                       # its component went (unloaded by someone)
        bpf.unpin(shared_name(ifindex), instance.pin_root)
    xdpshare.refuse_unshareable(hook, "vmnet's XSK program")
    mode = hook.mode if hook.kind == "dispatcher" else xdp["mode"]
    component, mode = program.join(ifindex, ifname, mode, priority)
    try:
        fd = libbpf.prog_fd_by_id(component)
        try:
            bpf.pin_port_links(shared_name(ifindex), {PIN: fd}, instance.pin_root)
        finally:
            os.close(fd)
    except BaseException:
        xdpshare.leave(ifindex, ifname, component, mode)
        raise
    return mode, component


def release(instance, ifindex: int) -> bool:
    """Leave the NIC (its last port went): vmnet's component only, the others keep running."""
    component = pinned_component(instance, ifindex)
    if component is None:
        return False
    if component:
        name = _ifname(ifindex) or str(ifindex)
        try:
            xdpshare.leave(ifindex, name, component, None)
        except VmnetError:
            pass            # the NIC went, or someone unloaded the component: the pin still goes
    return bpf.unpin(shared_name(ifindex), instance.pin_root)


def _ifname(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def _instance_maps() -> set[int]:
    """The XSK map ids of every instance whose shared program is pinned."""
    out = set()
    for root in bpf.instance_roots():
        try:
            fd = libbpf.obj_get(os.path.join(xskprog.pin_dir(root), "xsks"))
        except OSError:
            continue
        try:
            out.add(libbpf.map_info(fd).id)
        finally:
            os.close(fd)
    return out


def collect(instance, program: xskprog.XskProgram, leased: set[int]) -> list[str]:
    """What crashes left on NIC hooks: (see the module's docstring). `leased`: ifindexes this
    instance's kept ports lease from. Returns what was removed, for the log."""
    removed = []
    for entry in bpf.entries(instance.pin_root):
        if entry.startswith("+nic-") and entry[5:].isdigit() and int(entry[5:]) not in leased:
            if release(instance, int(entry[5:])):
                removed.append(entry)
    own_map = libbpf.map_info(program.fds["xsks"]).id
    alive = _instance_maps() | {own_map}
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        devices = [m for m in ip.get_links() if m.get("IFLA_XDP")]
    for msg in devices:
        state = links.link_state(msg.get("IFLA_IFNAME"))
        if state is None:
            continue
        try:
            hook = hook_of(state)
        except VmnetError:
            continue
        if hook.kind != "dispatcher":
            continue
        xdpshare.clean_references(state["ifindex"])
        pinned = pinned_component(instance, state["ifindex"])
        for c in hook.components:
            if not c.vmnet or c.id == pinned:
                continue
            xsks = set(c.map_ids)
            if (own_map in xsks) or not (xsks & alive):
                xdpshare.leave(state["ifindex"], state["ifname"], c.id, hook.mode)
                removed.append(f"{state['ifname']}:{c.name}({c.id})")
    return removed


def describe(instance, ifindex: int) -> dict | None:
    """The NIC's hook as status shows it: vmnet's slot and the programs sharing it."""
    name = _ifname(ifindex)
    state = links.link_state(name) if name else None
    if state is None:
        return None
    try:
        hook = hook_of(state)
    except VmnetError as exc:
        return {"device": name, "error": exc.message}
    out = hook.to_dict()
    component = pinned_component(instance, ifindex)
    slots = [c.id for c in hook.components]
    out["vmnet_slot"] = slots.index(component) if component in slots else None
    if hook.kind == "program" and hook.prog_name == xskprog.PROGRAM:
        out["note"] = "vmnet's program alone: this kernel refuses the dispatcher's freplace programs"
    return out
