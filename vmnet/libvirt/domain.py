"""A libvirt domain's ports: created, deleted and checked as one unit.

The helper runs this for the hook's domain-prepare, domain-release and
domain-check verbs. The hook runs on every VM start; by sending the raw
domain XML it imports neither an XML parser nor this logic (about 20 ms of
a start), and the helper creates all of a domain's ports in one request,
all or nothing. Pure: `call(verb, **args) -> dict` is the helper's own verb
table, so the same authorisation and validation apply as for `vmnet port`.

prepare: every declared port (owner = the domain's uuid, consumer = the
uid libvirt runs QEMU as unless the port names one); a leftover of the
same domain is replaced, anyone else's is an error. release: the declared
ports this domain owns. check: which declared ports are gone.
"""

from __future__ import annotations

import pwd

from ..errors import AlreadyExists, InvalidInput, NotFound, VmnetError
from .domain_xml import domain_identity, parse_domain, parse_ports


def parse(xml: str | bytes) -> tuple[str, str, list[dict]]:
    """(name, owner, declared ports); owner is the uuid, or the name without one."""
    root = parse_domain(xml)
    name, uuid = domain_identity(root)
    return name, uuid or name, parse_ports(root, validate=False)   # port-create validates each


def consumer(port: dict, default_user: str) -> tuple[int, int]:
    user = port.get("consumer_user") or default_user
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise InvalidInput(f"port {port['name']}: consumer user {user!r} does not exist",
                           fix="set consumer-user in the domain's vmnet metadata, or libvirt_qemu_user "
                               "in /etc/vmnet/vmnet.toml, to the user libvirt runs QEMU as") from None
    return pw.pw_uid, pw.pw_gid


def _shown(call, port: str) -> dict | None:
    """The port's record, or None when it does not exist."""
    try:
        return call("port-show", name=port)
    except NotFound:
        return None


def prepare(call, xml, default_user: str) -> dict:
    name, owner, ports = parse(xml)
    created: list[str] = []
    try:
        for port in ports:
            uid, gid = consumer(port, default_user)
            args = {k: v for k, v in port.items() if k != "consumer_user"}
            args.update(consumer_uid=uid, consumer_gid=gid, owner=owner)
            try:
                call("port-create", **args)
            except AlreadyExists:
                # a leftover of this same domain (libvirtd died before release): replace it
                if call("port-show", name=port["name"]).get("owner") != owner:
                    raise
                call("port-delete", name=port["name"], missing_ok=True)
                call("port-create", **args)
            created.append(port["name"])
    except BaseException:
        for p in created:
            try:
                call("port-delete", name=p, missing_ok=True)
            except VmnetError:
                pass
        raise
    return {"domain": name, "owner": owner, "created": created}


def release(call, xml) -> dict:
    name, owner, ports = parse(xml)
    deleted = []
    for port in ports:
        existing = _shown(call, port["name"])
        if existing is not None and existing.get("owner") == owner:
            call("port-delete", name=port["name"], missing_ok=True)
            deleted.append(port["name"])
    return {"domain": name, "owner": owner, "deleted": deleted}


def check(call, xml) -> dict:
    name, owner, ports = parse(xml)
    missing = [port["name"] for port in ports if _shown(call, port["name"]) is None]
    return {"domain": name, "owner": owner, "missing": missing}
