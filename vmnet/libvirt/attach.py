"""Hot-plugging a port into a running libvirt domain that uses the stock QEMU.

libvirt closes fds it does not know, so the sockets reach QEMU through
libvirt_qemu.qemuMonitorCommandWithFiles: `getfd` once per queue, then
`netdev_add` af-xdp naming those fds and `device_add` virtio-net-pci — on a
q35 domain into a PCIe root port no device sits in (its root bus takes no
hot-plugged device), on pc onto the root bus. Every step is undone when a
later one fails. Run from the CLI (or the helper's
host), never from inside a libvirt hook: it calls back into libvirt.
"""

from __future__ import annotations

import functools
import json
import os
import time

from .. import client, domain, qemu_compat
from ..errors import AlreadyExists, InvalidInput, KernelError, NotFound, NotSupported, VmnetError
from ..qemu_args import netdev_id, netdev_qapi


def _libvirt():
    try:
        import libvirt
        import libvirt_qemu
    except ImportError:
        raise NotSupported("libvirt-python is not installed",
                           fix="install vmnet with the libvirt extra: pip install 'vmnet[libvirt]'") from None
    return libvirt, libvirt_qemu


def _domain(uri: str, name: str):
    libvirt, _ = _libvirt()
    try:
        conn = libvirt.open(uri)
        return conn, conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        raise NotFound(f"libvirt domain {name} cannot be found at {uri}: {exc.get_error_message()}",
                       fix="check the name with 'virsh list --all'") from None


def _qmp(dom, command: str, arguments: dict, fds: list[int] = ()):
    libvirt, libvirt_qemu = _libvirt()
    cmd = json.dumps({"execute": command, "arguments": arguments})
    try:
        if fds:
            out = libvirt_qemu.qemuMonitorCommandWithFiles(dom, cmd, list(fds), 0)
            reply = out[0] if isinstance(out, tuple) else out
        else:
            reply = libvirt_qemu.qemuMonitorCommand(dom, cmd, 0)
    except libvirt.libvirtError as exc:
        raise KernelError(f"QEMU refused {command}: {exc.get_error_message()}",
                          fix="check 'vmnet doctor' for QEMU's af-xdp support") from None
    data = json.loads(reply)
    if "error" in data:
        raise KernelError(f"QEMU refused {command}: {data['error'].get('desc')}",
                          fix="QEMU needs af-xdp support (built with libxdp); see 'vmnet doctor'")
    return data.get("return")


def _shown(socket_path: str, name: str) -> dict | None:
    return domain.shown(functools.partial(client.call, socket_path), name)


def owner_of(dom) -> str:
    """A running domain's owner, as the hook spells it."""
    return domain.owner_of(dom.UUIDString(), dom.name())


def qemu_pid(name: str, run_dir: str = "/run/libvirt/qemu") -> int:
    try:
        with open(os.path.join(run_dir, f"{name}.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        raise NotFound(f"domain {name} is not running (no pid file in {run_dir})",
                       fix="start it first; live attach needs a running QEMU") from None


HOTPLUG_PORTS = ("pcie-root-port", "pcie-switch-downstream-port")


def hotplug_candidates(xml: str | bytes) -> list[str] | None:
    """Where a NIC can be hot-plugged into the running domain whose live XML this is: the
    aliases (QEMU's bus ids) of its PCIe root and downstream ports that libvirt has put no
    device on, in order; None for a conventional PCI machine (pc), whose root bus takes
    hot-plugged devices. Pure."""
    from ..domain_metadata import parse_domain
    root = parse_domain(xml)
    controllers = root.findall("devices/controller[@type='pci']")
    if not any(c.get("model") == "pcie-root" for c in controllers):
        return None
    used = {int(a.get("bus"), 16) for a in root.iter("address")
            if a.get("type") == "pci" and a.get("bus") and a.get("bus").startswith("0x")}
    free = []
    for c in controllers:
        alias = c.find("alias")
        if c.get("model") in HOTPLUG_PORTS and c.get("index", "").isdigit() and int(c.get("index")) not in used \
                and alias is not None and alias.get("name"):
            free.append(alias.get("name"))
    return free


NO_SLOT_FIX = ("stop the domain and add empty root ports to its XML, one per NIC to hot-plug: "
               "<controller type='pci' model='pcie-root-port'/> (virt-install --controller "
               "type=pci,model=pcie-root-port; libvirt gives q35 domains a few spare ones at define)")


def _hotplug_bus(dom, name: str) -> str | None:
    """The bus to device_add on: a free PCIe port (asking QEMU as well which ones already
    carry a device libvirt does not know of, such as an earlier `attach`), or None on pc."""
    candidates = hotplug_candidates(dom.XMLDesc(0))
    if candidates is None:
        return None
    for bus in candidates:
        try:
            children = _qmp(dom, "qom-list", {"path": f"/machine/peripheral/{bus}/{bus}"})
        except VmnetError:
            children = []
        if not any(str(c.get("name", "")).startswith("child[") for c in children or ()):
            return bus
    raise NotSupported(f"domain {name} has no free PCIe port to hot-plug a NIC into (its machine is "
                       "PCI Express, whose root bus takes no hot-plugged device)", fix=NO_SLOT_FIX)


def attach(socket_path: str, uri: str, name: str, port: dict, qemu_multiqueue_fixed: bool = False) -> dict:
    """Plug a port into the running domain: the domain's own port when it exists (declared in
    its metadata, made by the hook at start), else a new one owned by the domain. On a q35
    domain the NIC goes into a free PCIe root port; with none, nothing is made."""
    conn, dom = _domain(uri, name)
    pid = qemu_pid(name)
    try:
        bus = _hotplug_bus(dom, name)
    except BaseException:
        conn.close()
        raise
    with open(f"/proc/{pid}/status") as f:
        uid = int(next(l for l in f if l.startswith("Uid:")).split()[1])
    existing = _shown(socket_path, port["name"])
    created = existing is None
    if existing is not None:
        if existing.get("owner") != owner_of(dom):
            conn.close()
            raise AlreadyExists(f"port {port['name']} already exists and belongs to "
                                f"{existing.get('owner') or 'no domain'}, not to {name}",
                                fix="pick another port name, or delete that port first")
        record = existing
    else:
        ns = f"/proc/{pid}/ns/net"
        if os.stat(ns).st_ino != os.stat("/proc/self/ns/net").st_ino:
            port = dict(port, netns=ns)
        args = {k: v for k, v in port.items() if k != "consumer_user"}
        record = client.call(socket_path, "port-create", consumer_uid=uid, owner=owner_of(dom), **args)
    pname = record["name"]
    refused = qemu_compat.refusal(qemu_compat.version_of(f"/proc/{pid}/exe"), record, qemu_multiqueue_fixed)
    if refused is not None:
        if created:
            _quiet(client.call, socket_path, "port-delete", name=pname, missing_ok=True)
        conn.close()
        raise refused
    fd_names, added_netdev = [], False
    fds: list[int] = []
    try:
        with client.Client(socket_path) as c:
            # the sockets are QEMU's, not this process's: it holds them from now on
            record, fds = c.call("fds-for-consumer", name=pname, holder_pid=pid)
            c.call("raise-memlock-for-peer", ports=[pname], pid=pid)
        for i, fd in enumerate(fds):
            _qmp(dom, "getfd", {"fdname": f"{netdev_id(pname)}-{i}"}, [fd])
            fd_names.append(f"{netdev_id(pname)}-{i}")
        _qmp(dom, "netdev_add", netdev_qapi(record, fd_names, netdev_id(pname)))
        added_netdev = True
        device = {"driver": "virtio-net-pci", "id": f"{netdev_id(pname)}-dev", "netdev": netdev_id(pname),
                  "mac": record["mac"], "host_mtu": record["mtu"]}
        if record["queues"] > 1:
            device.update(mq=True, vectors=2 * record["queues"] + 2)
        if bus is not None:
            device["bus"] = bus
        _qmp(dom, "device_add", device)
        return record
    except BaseException:
        if added_netdev:
            _quiet(_qmp, dom, "netdev_del", {"id": netdev_id(pname)})
        for fdname in fd_names:
            _quiet(_qmp, dom, "closefd", {"fdname": fdname})
        if created:                     # the domain's own port stays its own (the hook removes it)
            _quiet(client.call, socket_path, "port-delete", name=pname, missing_ok=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def detach(socket_path: str, uri: str, name: str, pname: str, wait: float = 10.0) -> bool:
    """Unplug port `pname` from domain `name` and delete it. device_del only asks the guest
    (ACPI or PCIe hot-plug): wait up to `wait` seconds for QEMU to drop the device, as
    libvirt does for its own. True when it is gone; False when the guest has not let it go
    yet (QEMU removes it when the guest does) — the port is deleted either way."""
    conn, dom = _domain(uri, name)
    device = f"{netdev_id(pname)}-dev"
    try:
        record = client.call(socket_path, "port-show", name=pname)
        if record.get("owner") != owner_of(dom):
            raise InvalidInput(f"port {pname} does not belong to domain {name}")
        _quiet(_qmp, dom, "device_del", {"id": device})
        deadline = time.monotonic() + wait
        while (present := _present(dom, device)) is not False and time.monotonic() < deadline:
            time.sleep(0.1)
        _quiet(_qmp, dom, "netdev_del", {"id": netdev_id(pname)})
        client.call(socket_path, "port-delete", name=pname, missing_ok=True)
        return present is False
    finally:
        conn.close()


def _present(dom, ident: str) -> bool | None:
    """Whether QEMU still has the device `ident`, from its own composition tree; None when
    QEMU cannot be asked."""
    try:
        return any(p.get("name") == ident for p in _qmp(dom, "qom-list", {"path": "/machine/peripheral"}) or ())
    except VmnetError:
        return None


def _quiet(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except VmnetError:
        pass
