"""`vmnet:PORT` placeholders in a QEMU command line, and their substitution.

Pure. Anywhere in the argv, `key=vmnet:PORT` is replaced by that port's
value for key: sock-fds (the fd numbers the consumer inherits), ifname,
queues, start-queue, mode, mac, host_mtu. In a JSON argument (QEMU's
`-device {...}`), a member `"key": "vmnet:PORT"` is replaced the same way,
with numbers as JSON numbers. An argv with no placeholder is left untouched
— that is how the wrapper passes libvirt's capability probes straight
through to QEMU.

Why JSON: QEMU creates every key=value `-device` before any JSON one, and
libvirt writes its devices, with the PCI addresses it chose, as JSON. A
key=value virtio-net-pci would take the first free slot before libvirt's
devices exist, and collide with one of them.
"""

from __future__ import annotations

import json
import re

from .errors import InvalidInput
from .fields import record_queue_ids, validate_port_name

PLACEHOLDER = re.compile(r"(?P<key>[a-z_-]+)=vmnet:(?P<port>[^,]*)")
KEYS = ("sock-fds", "ifname", "queues", "start-queue", "mode", "mac", "host_mtu")
NUMBERS = ("queues", "start-queue", "host_mtu")     # JSON numbers in a JSON argument


def _json_object(arg: str) -> dict | None:
    if not arg.startswith("{"):
        return None
    try:
        obj = json.loads(arg)
    except ValueError:
        return None                 # not JSON after all: QEMU will say what is wrong
    return obj if isinstance(obj, dict) else None


def _placeholders(arg: str):
    """(key, port) of every placeholder in one argument."""
    obj = _json_object(arg)
    if obj is None:
        return [(m["key"], m["port"]) for m in PLACEHOLDER.finditer(arg)]
    return [(k, v[len("vmnet:"):]) for k, v in obj.items()
            if isinstance(v, str) and v.startswith("vmnet:")]


def ports_in(argv: list[str]) -> list[str]:
    """Names of the ports the argv refers to, in order of first appearance."""
    found: list[str] = []
    for arg in argv:
        if "vmnet:" not in arg:
            continue
        for key, port in _placeholders(arg):
            if key not in KEYS:
                raise InvalidInput(f"{key}=vmnet:{port} is not a placeholder vmnet fills",
                                   fix=f"vmnet fills: {', '.join(KEYS)}")
            name = validate_port_name(port)
            if name not in found:
                found.append(name)
    return found


def placeholder_netdev(port: str, netdev_id: str = "n0") -> tuple[str, str]:
    """(-netdev, -device) values for port `port` written with placeholders only, as a launcher
    that knows nothing but the port's name writes them (vmnet fills every value). Pure."""
    p = f"vmnet:{port}"
    return (f"af-xdp,id={netdev_id},ifname={p},queues={p},start-queue={p},mode={p},inhibit=on,sock-fds={p}",
            f"virtio-net-pci,netdev={netdev_id},mac={p},host_mtu={p}")


def port_values(port: dict, fds: list[int]) -> dict:
    """What each key becomes for a port (a port record as the helper reports it)."""
    if len(fds) != port["queues"]:
        raise InvalidInput(f"port {port['name']} has {port['queues']} queues but {len(fds)} fds arrived")
    return {
        "sock-fds": ":".join(str(fd) for fd in fds),
        "ifname": port["consumer_ifname"],
        "queues": str(port["queues"]),
        "start-queue": str(record_queue_ids(port)[0]),
        "mode": port["mode"],
        "mac": port["mac"],
        "host_mtu": str(port["mtu"]),
    }


def substitute(argv: list[str], values: dict[str, dict]) -> list[str]:
    """Replace every placeholder; values maps port name -> port_values()."""
    def value(key, port):
        if port not in values:
            raise InvalidInput(f"no values for port {port!r}")
        return values[port][key]

    def one(arg):
        if "vmnet:" not in arg:
            return arg
        obj = _json_object(arg)
        if obj is None:
            return PLACEHOLDER.sub(lambda m: f"{m['key']}={value(m['key'], m['port'])}", arg)
        for key, port in _placeholders(arg):
            v = value(key, port)
            obj[key] = int(v) if key in NUMBERS else v
        return json.dumps(obj, separators=(",", ":"))
    return [one(a) for a in argv]
