"""The exact QEMU arguments for a port, and their parser.

Pure. The netdev string is the contract with QEMU's net/af-xdp.c: one
socket fd per queue (sock-fds count == queues), queue i bound to
start-queue + i (the XSK map key the program uses), inhibit=on because the
sockets come from outside, and mode= always given because QEMU <= 10.0
checks for a program attached in that mode (native when omitted). The
responder parses the same strings, so what vmnet hands QEMU is what the
tests exercise.
"""

from __future__ import annotations

import re

from .errors import InvalidInput
from .fields import record_queue_ids


def netdev_id(port_name: str) -> str:
    return "vmnet-" + port_name


def netdev_arg(port, fds: list) -> str:
    """port: a vmnet.model.Port (not imported: the wrapper imports this module, and the
    model's dataclasses cost it more than its handoff)."""
    return render_opts(netdev_qapi(port.to_dict(), fds, netdev_id(port.spec.name)))


def render_opts(netdev: dict) -> str:
    """A QAPI netdev in QEMU's 'type,key=value,...' form (booleans on/off, ',' doubled)."""
    def kv(v):
        return "on" if v is True else "off" if v is False else str(v).replace(",", ",,")
    return ",".join([netdev["type"]] + [f"{k}={kv(v)}" for k, v in netdev.items() if k != "type"])


def device_arg(port, driver: str = "virtio-net-pci") -> str:
    spec = port.spec
    parts = [driver, f"netdev={netdev_id(spec.name)}", f"mac={spec.mac}", f"host_mtu={port.mtu}"]
    if spec.queues > 1:
        # one RX/TX vector pair per queue, plus config and control
        parts += ["mq=on", f"vectors={2 * spec.queues + 2}"]
    return ",".join(parts)


def netdev_qapi(record: dict, sock_fds: list, netdev: str) -> dict:
    """The same af-xdp netdev as a QAPI object (QMP netdev_add, a JSON -netdev), for a port
    record as the helper reports it; sock_fds are fd numbers or getfd names."""
    if len(sock_fds) != record["queues"]:
        raise InvalidInput(f"port {record['name']} has {record['queues']} queues but {len(sock_fds)} "
                           "socket fds were given", fix="pass one socket fd per queue")
    return {"type": "af-xdp", "id": netdev, "ifname": record["consumer_ifname"],
            "queues": record["queues"], "start-queue": record_queue_ids(record)[0],
            "mode": record["mode"], "inhibit": True, "sock-fds": ":".join(str(f) for f in sock_fds)}


def qemu_argv(port, fds: list) -> list[str]:
    return ["-netdev", netdev_arg(port, fds), "-device", device_arg(port)]


def parse_opts(text: str) -> tuple[str, dict]:
    """Split QEMU's 'type,key=value,...' (',,' is a literal comma)."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    kind, opts = parts[0], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InvalidInput(f"option {part!r} in {text!r} is not key=value")
        opts[key] = value
    return kind, opts


def _bool(opts: dict, key: str) -> bool:
    value = opts.get(key, "off")
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise InvalidInput(f"{key}={value} is not on or off")


def parse_af_xdp_netdev(text: str) -> dict:
    """Read an af-xdp netdev the way QEMU does; refuse what QEMU would refuse."""
    kind, opts = parse_opts(text)
    if kind != "af-xdp":
        raise InvalidInput(f"netdev type is {kind!r}, not 'af-xdp'")
    for key in ("id", "ifname"):
        if key not in opts:
            raise InvalidInput(f"af-xdp netdev has no {key}=")
    try:
        queues = int(opts.get("queues", "1"))
        start = int(opts.get("start-queue", "0"))
    except ValueError:
        raise InvalidInput("queues= and start-queue= must be numbers") from None
    if queues < 1:
        raise InvalidInput(f"invalid number of queues ({queues}) for '{opts['ifname']}'")
    if start < 0:
        raise InvalidInput(f"start-queue={start} is negative")
    inhibit = _bool(opts, "inhibit")
    # QEMU splits with g_strsplit: "" is zero entries, "3:" is two (the second empty)
    fds = opts["sock-fds"].split(":") if opts.get("sock-fds") else []
    if inhibit != ("sock-fds" in opts):
        raise InvalidInput("'inhibit=on' requires 'sock-fds' and vice versa")
    if inhibit and len(fds) != queues:
        raise InvalidInput(f"expected {queues} socket fds, got {len(fds)}")
    for fd in fds:
        if not re.fullmatch(r"[0-9]+|[A-Za-z][A-Za-z0-9_.-]*", fd):
            raise InvalidInput(f"sock-fds entry {fd!r} is neither an fd number nor a getfd name")
    mode = opts.get("mode", "native")
    if mode not in ("native", "skb"):
        raise InvalidInput(f"mode={mode} is not native or skb")
    return {
        "id": opts["id"], "ifname": opts["ifname"], "queues": queues, "start_queue": start,
        "mode": mode, "inhibit": inhibit, "force_copy": _bool(opts, "force-copy"),
        "sock_fds": fds,
    }
