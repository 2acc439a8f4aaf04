"""A libvirt domain's ports: created, deleted and checked as one unit.

The helper runs this for its domain-prepare, domain-release and
domain-check verbs, which the libvirt hook sends. The hook runs on every VM
start; by sending the raw domain XML it imports neither an XML parser nor
this logic (about 20 ms of a start), and the helper creates all of a
domain's ports in one request, all or nothing. Pure: `call(verb, **args) ->
dict` is the helper's own verb table, so the same authorisation and
validation apply as for `vmnet port`. A core module, not the libvirt
integration's: a domain is one of the helper's objects, and the helper does
not import its callers (live attach, vmnet.libvirt.attach, shares
owner_of and shown).

incoming (libvirt's `migrate begin` on the destination of a live
migration): refuses what prepare would (a port name another owner has
here) before libvirt starts anything; prepare then makes the ports
incoming (docs/migration.md).

prepare: every declared port (owner = "uuid:<the domain's uuid>", or
"name:<its name>" for a domain without one, so a domain named like
another's uuid owns nothing of it; consumer = the uid libvirt runs QEMU as
unless the port names one); a leftover of the same domain is replaced,
anyone else's is an error. release: the declared ports this domain owns.
check: which declared ports are gone.

What binds a domain's ports to that domain's QEMU: every QEMU of a libvirt
host runs as the same uid, so the uid alone would let one domain's QEMU
take another's sockets. libvirt gives the prepare hook the domain's id
(`<domain id='N'>`) and, before it execs QEMU (our wrapper), puts the
process in the domain's own cgroup, named after that id and the domain
name: `qemu-N-NAME.libvirt-qemu` (cgroupfs; seen here with libvirt 11.3)
or `machine-qemu\x2dN\x2dNAME.scope` (systemd). A process cannot leave
its cgroup, so the helper hands the sockets only to a process inside it
(consumer_scope); with one consumer at a time, a QEMU that took them
blocks its own domain's next start instead of another's.
"""

from __future__ import annotations

import pwd

from .domain_metadata import bind_interfaces, domain_identity, parse_domain, parse_ports
from .errors import AlreadyExists, InvalidInput, NotFound, VmnetError


def owner_of(uuid: str | None, name: str) -> str:
    """Who owns a domain's ports: uuid:<uuid>, or name:<name> for a domain without one (kept
    apart, so that a domain named like another's uuid owns nothing of it)."""
    return f"uuid:{uuid}" if uuid else f"name:{name}"


def parse(xml: str | bytes, bind: bool = True) -> tuple[str, str, list[dict], int | None]:
    """(name, owner, declared ports, the running domain's id); owner is uuid:<uuid>,
    or name:<name> without one; the id is what libvirt puts in the hook's XML. bind: tie
    each port to its <interface> (prepare); release and check need only the names, and must
    work on a domain whose interfaces were edited since."""
    root = parse_domain(xml)
    name, uuid = domain_identity(root)
    owner = owner_of(uuid, name)
    value = root.get("id")
    domain_id = int(value) if value and value.isascii() and value.isdigit() else None
    ports = parse_ports(root, validate=False)           # port-create validates each port
    return name, owner, bind_interfaces(root, ports) if bind else ports, domain_id


_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def machine_name(domain_id: int, name: str) -> str:
    """libvirt's machine name for a domain of the privileged QEMU driver: qemu-<id>-<name>,
    the name reduced to host-name characters (libvirt's virDomainDriverGenerateMachineName)."""
    out = f"qemu-{domain_id}-"
    skip = True                     # no '-' or '.' right after another, or first
    for ch in name:
        if len(out) >= 64:
            break
        if ch in ".-":
            if not skip:
                out += ch
                skip = True
            continue
        if ch not in _HOSTNAME_CHARS:
            continue
        out += ch
        skip = False
    return out.rstrip("-.")


def _systemd_escape(text: str) -> str:
    return "".join(c if c.isascii() and (c.isalnum() or c in ":_.") else f"\\x{ord(c):02x}" for c in text)


def cgroup_scope(domain_id: int, name: str) -> list[str]:
    """The names libvirt gives the domain's cgroup, with and without systemd."""
    machine = machine_name(domain_id, name)
    return [f"{machine}.libvirt-qemu", f"machine-{_systemd_escape(machine)}.scope"]


def consumer(port: dict, default_user: str) -> tuple[int, int]:
    user = port.get("consumer_user") or default_user
    try:
        pw = pwd.getpwuid(int(user)) if user.isascii() and user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise InvalidInput(f"port {port['name']}: consumer user {user!r} does not exist",
                           fix="set consumer-user in the domain's vmnet metadata, or libvirt_qemu_user "
                               "in /etc/vmnet/vmnet.toml, to the user libvirt runs QEMU as") from None
    return pw.pw_uid, pw.pw_gid


def shown(call, port: str) -> dict | None:
    """The port's record, or None when it does not exist."""
    try:
        return call("port-show", name=port)
    except NotFound:
        return None


def prepare(call, xml, default_user: str, incoming=None) -> dict:
    """incoming(owner) -> bool: whether the domain is migrating here (the hook's migrate came
    first); its ports are then made incoming."""
    name, owner, ports, domain_id = parse(xml)
    scope = cgroup_scope(domain_id, name) if domain_id is not None else None
    arriving = bool(incoming and incoming(owner))
    created: list[str] = []
    try:
        for port in ports:
            uid, gid = consumer(port, default_user)
            args = {k: v for k, v in port.items() if k != "consumer_user"}
            args.update(consumer_uid=uid, consumer_gid=gid, owner=owner)
            att = args.get("attachment")
            if att and att.get("kind") in ("ovs", "network") and "vm_uuid" not in att and owner.startswith("uuid:"):
                # what libvirt puts in an Open vSwitch port's external_ids:vm-uuid
                args["attachment"] = dict(att, vm_uuid=owner[5:])
            if scope:
                args["consumer_scope"] = scope
            if arriving:
                args["incoming"] = True
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
    return {"domain": name, "owner": owner, "created": created, "consumer_scope": scope, "incoming": arriving}


def incoming(call, xml, default_user: str) -> dict:
    """A domain migrating here (the hook's migrate, before libvirt starts anything here): what
    prepare would refuse, refused now, while the VM still runs, untouched, on its source."""
    name, owner, ports, _ = parse(xml)
    for port in ports:
        consumer(port, default_user)
        existing = shown(call, port["name"])
        if existing is not None and existing.get("owner") != owner:
            raise AlreadyExists(
                f"port {port['name']} of domain {name} exists on this host already, "
                f"owned by {existing.get('owner') or 'no domain'}: the VM cannot migrate here",
                fix=f"delete that port here ('vmnet port del {port['name']}') or give the domain's port "
                    "another name in its vmnet metadata, then migrate again")
    return {"domain": name, "owner": owner, "ports": [p["name"] for p in ports]}


def release(call, xml) -> dict:
    name, owner, ports, _ = parse(xml, bind=False)
    deleted = []
    for port in ports:
        existing = shown(call, port["name"])
        if existing is not None and existing.get("owner") == owner:
            call("port-delete", name=port["name"], missing_ok=True)
            deleted.append(port["name"])
    return {"domain": name, "owner": owner, "deleted": deleted}


def check(call, xml) -> dict:
    name, owner, ports, _ = parse(xml, bind=False)
    missing = [port["name"] for port in ports if shown(call, port["name"]) is None]
    return {"domain": name, "owner": owner, "missing": missing}
