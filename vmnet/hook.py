"""What the libvirt hook does for a domain that declares vmnet ports.

prepare/begin: create every declared port through the helper (owner = the
domain's uuid, consumer = the uid libvirt runs QEMU as), all or nothing.
release/end: delete the domain's ports (only those it owns). reconnect:
check the ports are still there, create nothing. stopped and the rest:
nothing. It never calls libvirt (hooks run under libvirt's locks). A failure
at prepare is printed on stderr, which libvirt shows to the user, and makes
libvirt abort the start.
"""

from __future__ import annotations

import pwd
import sys

from .client import Client
from .config import Config, load
from .errors import AlreadyExists, InvalidInput, NotFound, VmnetError
from .libvirt_xml import domain_identity, parse_domain, parse_ports


def _consumer(port: dict, default_user: str) -> tuple[int, int]:
    user = port.get("consumer_user") or default_user
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise InvalidInput(f"port {port['name']}: consumer user {user!r} does not exist",
                           fix="set consumer-user in the domain's vmnet metadata, or libvirt_qemu_user "
                               "in /etc/vmnet/vmnet.toml, to the user libvirt runs QEMU as") from None
    return pw.pw_uid, pw.pw_gid


def prepare(domain, ports: list[dict], cfg) -> list[str]:
    name, uuid = domain
    created: list[str] = []
    with Client(cfg.socket) as c:
        try:
            for port in ports:
                uid, gid = _consumer(port, cfg.libvirt_qemu_user)
                args = {k: v for k, v in port.items() if k != "consumer_user"}
                args.update(consumer_uid=uid, consumer_gid=gid, owner=uuid or name)
                try:
                    c.call("port-create", **args)
                except AlreadyExists:
                    # a leftover of this same domain (libvirtd died before release): replace it
                    existing, _ = c.call("port-show", name=port["name"])
                    if existing.get("owner") != (uuid or name):
                        raise
                    c.call("port-delete", name=port["name"], missing_ok=True)
                    c.call("port-create", **args)
                created.append(port["name"])
        except BaseException:
            for p in created:
                try:
                    c.call("port-delete", name=p, missing_ok=True)
                except VmnetError:
                    pass
            raise
    return created


def release(domain, ports: list[dict], cfg) -> list[str]:
    name, uuid = domain
    deleted = []
    with Client(cfg.socket) as c:
        for port in ports:
            try:
                existing, _ = c.call("port-show", name=port["name"])
            except NotFound:
                continue
            if existing.get("owner") == (uuid or name):
                c.call("port-delete", name=port["name"], missing_ok=True)
                deleted.append(port["name"])
    return deleted


def reconnect(domain, ports: list[dict], cfg) -> list[str]:
    missing = []
    with Client(cfg.socket) as c:
        for port in ports:
            try:
                c.call("port-show", name=port["name"])
            except NotFound:
                missing.append(port["name"])
    return missing


def run(argv: list[str], xml: bytes, settings: dict | None = None) -> int:
    """settings: what install-hook read from the configuration (no TOML parsing per VM start)."""
    op, subop = (argv + ["", "", ""])[1:3]
    try:
        root = parse_domain(xml)
        domain = domain_identity(root)
        ports = parse_ports(root, validate=False)     # the helper validates each port
        if not ports:
            return 0
        cfg = Config(**settings) if settings is not None else load()
        if op == "prepare" and subop == "begin":
            prepare(domain, ports, cfg)
        elif op == "release" and subop == "end":
            release(domain, ports, cfg)
        elif op == "reconnect" and subop == "begin":
            missing = reconnect(domain, ports, cfg)
            if missing:
                print(f"vmnet: domain {domain[0]}: port(s) {', '.join(missing)} are gone; "
                      "the VM has no network on them until it is restarted", file=sys.stderr)
        return 0
    except VmnetError as exc:
        print(f"vmnet: domain {argv[0] if argv else '?'}: {op} failed: {exc}", file=sys.stderr)
        # only prepare can stop anything; later ops must not make libvirt kill a running VM
        return 1 if op == "prepare" else 0
