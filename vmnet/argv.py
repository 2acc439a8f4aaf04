"""`vmnet:PORT` placeholders in a QEMU command line, and their substitution.

Pure. Anywhere in the argv, `key=vmnet:PORT` is replaced by that port's
value for key: sock-fds (the fd numbers the consumer inherits), ifname,
queues, start-queue, mode, mac, host_mtu. An argv with no placeholder is
left untouched — that is how the wrapper passes libvirt's capability probes
straight through to QEMU.
"""

from __future__ import annotations

import re

from .errors import InvalidInput
from .model import validate_port_name

PLACEHOLDER = re.compile(r"(?P<key>[a-z_-]+)=vmnet:(?P<port>[^,]*)")
KEYS = ("sock-fds", "ifname", "queues", "start-queue", "mode", "mac", "host_mtu")


def ports_in(argv: list[str]) -> list[str]:
    """Names of the ports the argv refers to, in order of first appearance."""
    found: list[str] = []
    for arg in argv:
        if "vmnet:" not in arg:
            continue
        for m in PLACEHOLDER.finditer(arg):
            if m["key"] not in KEYS:
                raise InvalidInput(f"{m['key']}=vmnet:{m['port']} is not a placeholder vmnet fills",
                                   fix=f"vmnet fills: {', '.join(KEYS)}")
            name = validate_port_name(m["port"])
            if name not in found:
                found.append(name)
    return found


def port_values(port: dict, fds: list[int]) -> dict:
    """What each key becomes for a port (a port record as the helper reports it)."""
    if len(fds) != port["queues"]:
        raise InvalidInput(f"port {port['name']} has {port['queues']} queues but {len(fds)} fds arrived")
    return {
        "sock-fds": ":".join(str(fd) for fd in fds),
        "ifname": port["consumer_ifname"],
        "queues": str(port["queues"]),
        "start-queue": str(port["start_queue"]),
        "mode": port["mode"],
        "mac": port["mac"],
        "host_mtu": str(port["mtu"]),
    }


def substitute(argv: list[str], values: dict[str, dict]) -> list[str]:
    """Replace every placeholder; values maps port name -> port_values()."""
    def repl(m):
        if m["port"] not in values:
            raise InvalidInput(f"no values for port {m['port']!r}")
        return f"{m['key']}={values[m['port']][m['key']]}"
    return [PLACEHOLDER.sub(repl, a) if "vmnet:" in a else a for a in argv]
