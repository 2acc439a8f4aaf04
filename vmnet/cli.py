"""The `vmnet` command line: a thin layer over the library.

This is the one place where VmnetError becomes an exit code and a message
on stderr (or a JSON object with --json). Tracebacks only with --debug.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .errors import CheckFailed, VmnetError


class Context:
    def __init__(self, debug: bool, as_json: bool):
        self.debug, self.json = debug, as_json


def _emit(ctx: Context, data, text=None, encoded: str | None = None):
    """Print data as JSON (--json), else text: a string, or a function that makes it (only
    called when printed: status's text takes longer than the request at 1,000 ports).
    encoded: data as the helper encoded it, printed as it is for a program."""
    if ctx.json:
        # indented and sorted for a person at a terminal; compact and in the helper's order
        # (several times faster: status at 1,000 ports is 1.5 MB) for programs
        person = sys.stdout.isatty()
        click.echo(encoded if encoded is not None and not person else
                   json.dumps(data, indent=2 if person else None, sort_keys=person, default=str))
    elif text is not None:
        click.echo(text() if callable(text) else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.version_option(package_name="vmnet")
@click.pass_context
def cli(click_ctx, debug, as_json):
    """vmnet: AF_XDP networking for unprivileged QEMU virtual machines.

    A privileged side creates the device, attaches the XDP program and
    creates the AF_XDP sockets in the consumer's netns; QEMU (or vmnet's
    own responder) receives the socket fds and runs with no capabilities.
    """
    click_ctx.obj = Context(debug, as_json)


@cli.command()
@click.option("--mode", "modes", multiple=True, type=click.Choice(["native", "skb"]),
              help="XDP attach mode(s) to test (default: both).")
@click.option("--queues", "queue_counts", multiple=True, type=click.IntRange(1, 64),
              help="Queue count(s) to test (default: 1, 2 and 4).")
@click.option("--user", default="nobody", show_default=True,
              help="Unprivileged user the responder runs as.")
@click.option("--ipc-lock/--no-ipc-lock", default=True, show_default=True,
              help="When memlock cannot be raised, let the responder keep CAP_IPC_LOCK "
                   "(and nothing else). The table's memlock column says what was used.")
@click.option("--backend", default="veth", show_default=True, type=click.Choice(["veth", "netkit"]),
              help="Device backend to test; netkit has generic (skb) XDP only.")
@click.pass_obj
def selftest(ctx, modes, queue_counts, user, ipc_lock, backend):
    """Prove the data path on this machine, end to end.

    For each mode and queue count: create a veth port in throwaway network
    namespaces, start the responder unprivileged through the same fd handoff
    QEMU uses, ping it, send UDP (small and MTU-sized) and TCP connection
    attempts from ordinary sockets, check checksums and sizes of every frame
    it received, and remove everything. Exits non-zero if any row fails.
    Needs root.
    """
    from . import selftest as st
    from .caps import has_capability
    if not (has_capability("net_admin") and has_capability("sys_admin")):
        from .errors import PermissionDenied
        raise PermissionDenied("vmnet selftest creates network namespaces, devices and BPF programs",
                               fix="run it as root: sudo vmnet selftest")
    if backend == "netkit" and "native" in modes:
        raise click.UsageError("netkit has no native XDP: use --mode skb (the default for netkit)")
    default_modes = ("skb",) if backend == "netkit" else ("native", "skb")
    rows = st.run(modes=modes or default_modes, queue_counts=queue_counts or (1, 2, 4),
                  user=user, allow_ipc_lock=ipc_lock, backend=backend)
    passed = all(r.ok for r in rows)
    text = [f"vmnet selftest: {backend} port -> AF_XDP sockets -> unprivileged responder (uid of "
            f"{user!r}), probed with ping, UDP echo and TCP SYN from host sockets", "",
            st.format_table(rows), "",
            f"{sum(r.ok for r in rows)} passed, {sum(not r.ok for r in rows)} failed "
            f"in {sum(r.seconds for r in rows):.1f} s"]
    import dataclasses      # here: every vmnet command (status too) starts faster without it
    _emit(ctx, {"passed": passed, "rows": [dataclasses.asdict(r) for r in rows]}, "\n".join(text))
    if not passed:
        raise CheckFailed("selftest failed", fix="see the rows marked FAIL above; 'vmnet doctor' checks the kernel")


ESSENTIAL_CHECKS = ("af-xdp", "btf", "bpf-link")


@cli.command()
@click.option("--qemu", metavar="PATH", help="QEMU binary to check (default: $VMNET_QEMU, then PATH).")
@click.pass_obj
def doctor(ctx, qemu):
    """Check what this machine offers vmnet, one line each, with the fix.

    Kernel features (AF_XDP, BTF, bpf_link XDP, netkit, netdev queue-create),
    bpffs, the memlock situation, QEMU and its af-xdp support, libvirt, and
    this process's privileges. Exits non-zero when AF_XDP, BTF or bpf_link
    (which every port needs) are missing; the rest only limit backends or
    integrations.
    """
    from . import doctor as dr
    try:
        cfg = _config()
    except VmnetError:
        cfg = None
    checks = dr.run_checks(qemu, cfg)
    _emit(ctx, {"checks": [c.to_dict() for c in checks]}, dr.format_checks(checks))
    missing = [c.name for c in checks if c.name in ESSENTIAL_CHECKS and c.status == "missing"]
    if missing:
        raise CheckFailed(f"this machine cannot run vmnet ports: {', '.join(missing)} missing",
                          fix="see the fix lines above")


@cli.command()
@click.option("--netdev", required=True, help="The af-xdp netdev string vmnet generated for QEMU.")
@click.option("--device", required=True, help="The -device string (mac= and host_mtu= are used).")
@click.option("--ip", required=True, help="IPv4 address the responder answers for.")
@click.option("--udp-port", default=7, show_default=True, type=click.IntRange(1, 65535),
              help="UDP port echoed back.")
@click.option("--allow-privileged", is_flag=True,
              help="Run even with capabilities (debugging by hand only).")
@click.option("--tap-fd", type=int, metavar="FD",
              help="Instead of answering, pass frames between the sockets and this inherited tap fd "
                   "(the tap's netns then plays the guest; for tests).")
@click.option("--program-check/--no-program-check", default=True, show_default=True,
              help="Refuse a port whose XSK program is not on ifname in mode=, as QEMU <= 10.0 "
                   "does; QEMU 10.1 and later do not check (and a netkit-lease port's program "
                   "is on the NIC).")
def respond(netdev, device, ip, udp_port, allow_privileged, tap_fd, program_check):
    """Play QEMU's part: bind inherited AF_XDP sockets and answer ARP/ICMP/UDP/TCP.

    Started by vmnet (selftest, exec) with the socket fds inherited, exactly
    like QEMU's -netdev af-xdp,...,inhibit=on,sock-fds=... Prints JSON lines:
    'ready' with its credentials, 'stats' on SIGUSR1 and when stopped.
    """
    from .consumer import responder
    responder.run(netdev, device, ip, udp_port, allow_privileged, program_check, tap_fd)


# ---- the helper and its clients -------------------------------------------

def _config(path=None):
    from .config import load
    return load(path)


def _call(verb, **args):
    from .client import call
    return call(_config().socket, verb, **args)


@cli.command()
@click.option("--config", "config_path", metavar="PATH",
              help="Configuration file (default: $VMNET_CONFIG or /etc/vmnet/vmnet.toml).")
@click.option("--socket", "socket_path", metavar="PATH", help="Listen here instead of the configured socket.")
@click.option("--metrics", metavar="ADDRESS:PORT|unix:PATH",
              help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics or on a unix socket (off by "
                   "default; also `metrics =` in the configuration), e.g. 127.0.0.1:9465. Over TCP only "
                   "totals unless metrics_port_labels = true; on a unix socket each peer sees the ports "
                   "it may see.")
def helper(config_path, socket_path, metrics):
    """Run the privileged helper in the foreground (as root; systemd: vmnet-helper.service).

    It owns every privileged operation: creating and deleting ports, handing
    a port's socket fds to its consumer, raising a consumer's memlock limit.
    Requests arrive on a Unix SOCK_SEQPACKET socket and are authorised from
    the peer's credentials. Ports survive a restart of the helper.
    """
    from .priv import daemon
    cfg = _config(config_path)
    if socket_path:
        cfg = cfg.replace(socket=socket_path)
    if metrics is not None:
        from .config import parse_metrics_listen
        try:
            parse_metrics_listen(metrics, "--metrics")
        except VmnetError as exc:
            raise click.BadParameter(exc.message + (f" ({exc.fix})" if exc.fix else ""),
                                     param_hint="--metrics") from None
        cfg = cfg.replace(metrics=metrics)
    daemon.run(cfg)


@cli.group()
def port():
    """Create, delete and inspect ports (through the helper)."""


def _numeric_id(value, kind: str):
    """A uid or gid given as a number or a name (None stays None)."""
    if value is None or (value.isascii() and value.isdigit()):
        return int(value) if value is not None else None
    import grp
    import pwd
    try:
        return pwd.getpwnam(value).pw_uid if kind == "user" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise click.BadParameter(f"no {kind} named {value!r}") from None


def _uid(value):
    return _numeric_id(value, "user")


def _gid(value):
    return _numeric_id(value, "group")


def _backend_text(r: dict) -> str:
    """The backend, and why when vmnet chose it (--backend auto)."""
    if r.get("backend_requested") == "auto" and r.get("backend_reason"):
        return f"{r['backend']} ({r['backend_reason']})"
    return r["backend"]


def _port_text(r: dict) -> str:
    return (f"{r['name']}: {_backend_text(r)} {r['host_ifname']} <-> {r['consumer_ifname']}"
            f" (netns {r.get('netns') or 'helper'}), {r['queues']} queue(s) from {r['start_queue']},"
            f" mode {r['mode']}, mtu {r['mtu']}, mac {r['mac']}, consumer uid {r.get('consumer_uid')}"
            + (f", pod {r['consumer_pod']['uid']}" if r.get("consumer_pod") else "")
            + (f", placeholder tap {r['placeholder_tap']}" if r.get("placeholder_tap") else "")
            + (f", owner {r['owner']}" if r.get("owner") else "")
            + f"\n  network: {_attachment_text(r)}")


def _attachment_text(r: dict) -> str:
    from .network import Attachment
    att = Attachment.from_dict(r.get("attachment"))
    text = att.describe()
    if r.get("mtu_reason"):
        text += f"; mtu {r['mtu']} ({r['mtu_reason']})"
    if not att.spoofcheck:
        text += "; anti-spoofing off"
    return text


MIGRATION_TEXT = {"incoming": "waiting for its VM: an incoming live migration (routes follow its first frame)",
                  "stopped": "its VM stopped here (migrated away, or shut down): kept until libvirt's release"}


def _network_text(r: dict) -> list[str]:
    net = r.get("network") or {}
    lines = []
    if r.get("migration"):
        lines.append(f"  migration: {MIGRATION_TEXT.get(r['migration'], r['migration'])}")
    if r.get("queues_served"):
        lines.append(f"  queues: its consumer reads {r['queues_served']} of {r['queues']}; the host end sends "
                     f"to queues {', '.join(str(q) for q in r['map_keys'][:r['queues_served']])} only")
    if net.get("waiting"):
        lines.append(f"  waiting: {net['waiting']}")
    if net.get("missing"):
        lines.append(f"  NOT PLUGGED: {net['missing']}")
    for note in net.get("notes") or ():
        lines.append(f"  note: {note}")
    spoofed = net.get("spoofed")
    if spoofed is not None:
        lines.append("  anti-spoofing dropped: " + ", ".join(f"{k} {v}" for k, v in spoofed.items()))
    addr = net.get("addr_server")
    if addr is not None:
        lines.append(f"  address server: pid {addr['pid']}" if addr.get("alive") else
                     "  address server: NOT RUNNING (see the helper's log)")
    return lines


@port.command("add")
@click.argument("name")
@click.option("--queues", default=1, show_default=True, type=int, help="Queues (1-64), one AF_XDP socket each.")
@click.option("--start-queue", default=0, show_default=True, type=int, help="First queue id.")
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["auto", "native", "skb"]),
              help="XDP attach mode; auto tries native, then skb.")
@click.option("--backend", default="veth", show_default=True,
              type=click.Choice(["auto", "veth", "netkit", "netkit-lease"]),
              help="How the device is made (docs/backends.md): a veth pair, a netkit pair "
                   "(skb mode only, Linux >= 6.7), netkit-lease (a netkit device with queues "
                   "leased from a NIC, Linux >= 7.1, --lease-from), or auto: netkit when the "
                   "kernel has it, veth otherwise; status says which and why.")
@click.option("--lease-from", metavar="NIC[:Q,...]",
              help="netkit-lease: the NIC whose RX queues the port leases, and which ones "
                   "(default: the next free ones above those the host keeps).")
@click.option("--receive-only", is_flag=True,
              help="netkit-lease on a NIC without AF_XDP zero-copy: allow a port that receives but "
                   "cannot send (never for QEMU).")
@click.option("--netns", metavar="REF", help="Consumer netns: /proc/PID/ns/net, /run/netns/NAME or NAME.")
@click.option("--mac", help="The VM's MAC (default: derived from the port name).")
@click.option("--mtu", type=int, help="MTU (default: the largest one frame carries).")
@click.option("--consumer-user", "consumer", required=True, metavar="USER|UID",
              help="The only user that may receive the port's sockets (QEMU's user).")
@click.option("--consumer-group", metavar="GROUP|GID", help="The consumer's group.")
@click.option("--consumer-cgroup", metavar="PATH", help="Only a consumer inside this cgroup (v2 path) gets the fds.")
@click.option("--owner", help="Free-form owner, e.g. a libvirt domain uuid.")
@click.option("--ifname", "consumer_name", metavar="NAME",
              help="Name the consumer end NAME instead of vmc-<port> (needs --netns).")
@click.option("--placeholder-tap", metavar="NAME",
              help="Also make tap NAME in the consumer's netns, owned by the consumer, for libvirt to "
                   "open until the wrapper swaps it for the port (docs/kubevirt.md).")
@click.option("--pod-uid", metavar="UID",
              help="Hand the sockets only to processes of this pod (its netns and cgroup, and the "
                   "consumer's uid and gid); the vmnet CNI plugin sets it.")
@click.option("--bridge", metavar="NAME", help="Plug the host end into Linux bridge NAME (docs/networks.md).")
@click.option("--ovs", metavar="BRIDGE", help="Plug the host end into Open vSwitch bridge BRIDGE.")
@click.option("--network", "libvirt_network", metavar="NAME",
              help="Plug the host end into libvirt network NAME (its bridge; its DHCP serves the guest).")
@click.option("--routed", is_flag=True,
              help="Route the VM's --address(es) through the host end (host routes, proxy ARP/NDP, "
                   "gateway 169.254.1.1 / fe80::1).")
@click.option("--attach", "attach_kind", type=click.Choice(["none", "bridge", "ovs", "routed", "network"]),
              help="The attachment by name; 'none' (the default) leaves the host end unplugged.")
@click.option("--vlan", type=int, help="Access VLAN (or a trunk's native VLAN) of a --bridge/--ovs port.")
@click.option("--trunk", metavar="LIST", help="Tagged VLANs of a --bridge/--ovs port, e.g. 10,20-30.")
@click.option("--address", "addresses", multiple=True, metavar="CIDR",
              help="The VM's address (repeatable; IPv4 and IPv6): served by DHCP/RA, enforced by "
                   "anti-spoofing, routed with --routed.")
@click.option("--gateway", "gateways", multiple=True, metavar="IP",
              help="The guest's gateway (one IPv4, one IPv6; --routed defaults to 169.254.1.1 and fe80::1).")
@click.option("--route", "routes", multiple=True, metavar="'DST [via GW]'", help="Another route for the guest.")
@click.option("--dns", "dns", multiple=True, metavar="IP", help="A name server for the guest (repeatable).")
@click.option("--search", "search", multiple=True, metavar="DOMAIN", help="A DNS search domain (repeatable).")
@click.option("--hostname", help="The guest's host name (DHCP option 12).")
@click.option("--iface-id", help="--ovs: external_ids:iface-id (default: the port's name).")
@click.option("--vm-uuid", help="--ovs: external_ids:vm-uuid.")
@click.option("--dhcp/--no-dhcp", default=True, show_default=True,
              help="Serve the guest its --address(es) by DHCP and router advertisements.")
@click.option("--spoofcheck/--no-spoofcheck", default=True, show_default=True,
              help="Drop frames from the VM with another MAC or (with --address) another address.")
@click.option("--incoming", is_flag=True,
              help="For a VM that is migrating here (QEMU -incoming): a --routed port gets its routes "
                   "only when the VM sends its first frame here (docs/migration.md).")
@click.pass_obj
def port_add(ctx, name, queues, start_queue, mode, backend, lease_from, receive_only, netns, mac, mtu,
             consumer, consumer_group, consumer_cgroup, owner, consumer_name, placeholder_tap, pod_uid,
             bridge, ovs, libvirt_network, routed, attach_kind, vlan, trunk, addresses, gateways, routes, dns,
             search, hostname, iface_id, vm_uuid, dhcp, spoofcheck, incoming):
    """Create port NAME for a consumer.

    \b
    Example:
      vmnet port add vm1 --consumer-user libvirt-qemu
      vmnet exec --user libvirt-qemu --port vm1 -- qemu-system-x86_64 ...
    """
    args = dict(name=name, queues=queues, start_queue=start_queue, mode=mode, backend=backend,
                consumer_uid=_uid(consumer))
    if receive_only:
        args["receive_only"] = True
    if incoming:
        args["incoming"] = True
    for key, value in (("netns", netns), ("mac", mac), ("mtu", mtu), ("owner", owner), ("lease_from", lease_from),
                       ("consumer_gid", _gid(consumer_group)), ("consumer_cgroup", consumer_cgroup),
                       ("consumer_name", consumer_name), ("placeholder_tap", placeholder_tap)):
        if value is not None:
            args[key] = value
    if pod_uid is not None:
        args["pod"] = {"uid": pod_uid}
    attachment = _attachment(attach_kind, bridge=bridge, ovs=ovs, network=libvirt_network, routed=routed,
                             vlan=vlan, trunk=trunk, addresses=addresses, gateways=gateways, routes=routes,
                             dns=dns, search=search, hostname=hostname, iface_id=iface_id, vm_uuid=vm_uuid,
                             dhcp=dhcp, spoofcheck=spoofcheck)
    if attachment is not None:
        args["attachment"] = attachment
    record = _call("port-create", **args)
    _emit(ctx, record, "created " + _port_text(record))


def _attachment(kind, *, gateways=(), **options) -> dict | None:
    """The attachment the options describe, checked here (the helper checks it again); None
    when none was asked for."""
    from .network import attachment_from_options
    gw4 = [g for g in gateways if ":" not in g]
    gw6 = [g for g in gateways if ":" in g]
    if len(gw4) > 1 or len(gw6) > 1:
        raise click.BadParameter("give at most one IPv4 and one IPv6 gateway", param_hint="--gateway")
    att = attachment_from_options(kind, gateway4=gw4[0] if gw4 else None, gateway6=gw6[0] if gw6 else None,
                                  **options)
    return None if att.to_dict() == {"kind": "none"} else att.to_dict()


@port.command("del")
@click.argument("name")
@click.option("--missing-ok", is_flag=True, help="Succeed when the port does not exist.")
@click.pass_obj
def port_del(ctx, name, missing_ok):
    """Delete port NAME and everything it owns."""
    result = _call("port-delete", name=name, missing_ok=missing_ok)
    _emit(ctx, result, f"deleted port {name}" if result["deleted"] else f"port {name} did not exist")


@port.command("list")
@click.pass_obj
def port_list(ctx):
    """List ports (all for admins, your own otherwise)."""
    result = _call("port-list")
    _emit(ctx, result, "\n".join(_port_text(r) for r in result["ports"]) or "no ports")


@port.command("show")
@click.argument("name")
@click.pass_obj
def port_show(ctx, name):
    """Show one port with its live socket counters."""
    result = _call("port-show", name=name)
    _emit(ctx, result, _status_text([result]))


def _lease_text(r: dict) -> str | None:
    if r.get("backend") != "netkit-lease":
        return None
    steer = r.get("steering") or {}
    steer_text = ("steering: RSS context " + str(steer.get("context")) if steer.get("active")
                  else f"steering: none ({steer.get('why', 'unknown')})")
    return (f"  leases {r.get('nic')} queue(s) {r.get('nic_queues')} as {r.get('bind_queues')}; "
            f"zero-copy {'yes' if r.get('zero_copy') else 'no'}; {steer_text}" + _hook_text(r.get("xdp_hook")))


def _hook_text(hook: dict | None) -> str:
    """Where vmnet's program runs on the NIC's XDP hook, and beside what."""
    if not hook:
        return ""
    if hook.get("error"):
        return f"\n  XDP hook of {hook.get('device')}: {hook['error']}"
    if hook.get("kind") != "dispatcher":
        return f"\n  XDP hook of {hook.get('device')}: vmnet's program alone ({hook.get('note', hook.get('kind'))})"
    slot = hook.get("vmnet_slot")
    progs = ", ".join(f"{c['name']} (id {c['id']}, prio {c['priority']})" for c in hook.get("components") or [])
    where = f"slot {slot}" if slot is not None else "no slot (vmnet's program is missing)"
    return f"\n  XDP hook of {hook.get('device')}: libxdp dispatcher ({hook.get('mode')}), vmnet in {where}: {progs}"


def _holder_text(r: dict) -> str:
    h = r.get("holder")
    if not h:
        return "  sockets: waiting for a consumer"
    return f"  sockets: held by pid {h['pid']}" + ("" if h.get("alive", True) else " (exited)")


def _status_text(ports: list) -> str:
    lines = []
    for r in ports:
        lines.append(_port_text(r))
        lines.append(_holder_text(r) + ("" if r.get("confined", True) else
                                        "; not confined to its queue (no bind guard on this kernel)"))
        if _lease_text(r):
            lines.append(_lease_text(r))
        lines += _network_text(r)
        if r.get("sockets") is None:
            lines.append(f"  {r.get('sockets_note', 'no counters')}")
            continue
        counters = {c["queue"]: c for c in r.get("queue_counters") or []}
        for s in r["sockets"]:
            c = counters.get(s["queue"])
            prog = (f"redirected {c['redirected']}, passed (no socket) {c['passed_no_socket']}; "
                    if c else "")
            lines.append(f"  queue {s['queue']}: {prog}rx dropped {s['rx_dropped']}, rx ring full {s['rx_ring_full']},"
                         f" fill ring empty {s['rx_fill_ring_empty_descs']}, tx invalid {s['tx_invalid_descs']}")
    return "\n".join(lines) or "no ports"


@cli.command()
@click.pass_obj
def status(ctx):
    """Ports, their devices, mode, queues, consumer and live AF_XDP counters.

    Also which protection keeps each port's sockets on its own queue (the
    kernel's bind guard, or only the netns rule), and which process holds
    each port's sockets now.
    """
    from .client import Client
    from .protocol import result_json
    with Client(_config().socket) as client:
        result, fds = client.call("status")
        encoded = result_json(client.last_reply)
    for fd in fds:          # (status hands out none)
        os.close(fd)
    h = result["helper"]
    head = f"helper pid {h['pid']}, {h['ports']} port(s)"
    if h.get("instance", "default") != "default":
        head += f", instance {h['instance']}"
    if h.get("protection"):
        head += f"\nbind confinement: {h['protection']['summary']}"
    _emit(ctx, result, lambda: head + "\n" + _status_text(result["ports"]), encoded)


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--port", "ports", multiple=True, metavar="NAME",
              help="Append this port's -netdev/-device to the command (repeatable).")
@click.option("--user", metavar="USER|UID", help="Run the command as this user (root only).")
@click.option("--group", metavar="GROUP|GID", help="...and this group (default: the user's).")
@click.option("--allow-ipc-lock", is_flag=True,
              help="When the helper cannot raise memlock, keep CAP_IPC_LOCK (root only; reported).")
@click.option("--keep-fds", is_flag=True, help="Keep fds this process inherited (default: close them).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(ports, user, group, allow_ipc_lock, keep_fds, command):
    """Run COMMAND (QEMU) with the AF_XDP sockets of its ports and no privileges.

    Placeholders key=vmnet:PORT in COMMAND are filled from the port:
    sock-fds, ifname, queues, start-queue, mode, mac, host_mtu. The helper
    raises this process's memlock limit; then vmnet sets no_new_privs,
    drops every capability (and the bounding set), switches to --user, and
    execs COMMAND, which inherits only the port sockets and stdio. With
    --user, COMMAND also runs in a session of its own (no controlling
    terminal) with that user's environment (HOME, USER, LOGNAME, SHELL, PATH).

    \b
    Example:
      vmnet exec --user libvirt-qemu -- qemu-system-x86_64 ... \\
        -netdev af-xdp,id=n0,ifname=vmnet:vm1,queues=vmnet:vm1,mode=vmnet:vm1,inhibit=on,sock-fds=vmnet:vm1 \\
        -device virtio-net-pci,netdev=n0,mac=vmnet:vm1,host_mtu=vmnet:vm1
    """
    import pwd
    from .handoff import exec_prepared, new_session, prepare
    cfg = _config()
    uid = _uid(user)
    try:
        gid = _gid(group) if group else (pwd.getpwuid(uid).pw_gid if uid is not None else None)
    except KeyError:
        raise click.BadParameter(f"uid {uid} has no passwd entry: give --group too", param_hint="--user") from None
    if uid is not None:
        new_session()       # before the fds: the process that holds them is the one that execs
    prepared = prepare(list(command), cfg.socket, extra_ports=ports,
                       allow_ipc_lock=allow_ipc_lock or cfg.allow_ipc_lock,
                       qemu_multiqueue_fixed=cfg.qemu_multiqueue_fixed)
    if prepared.keep_ipc_lock:
        click.echo("vmnet exec: memlock could not be raised; the command keeps CAP_IPC_LOCK (allowed)", err=True)
    exec_prepared(prepared, uid=uid, gid=gid, close_inherited=not keep_fds)


# ---- libvirt ---------------------------------------------------------------

@cli.group("libvirt")
def libvirt_group():
    """Fit vmnet into libvirt: domain XML, the qemu.d hook, live attach."""


_PORT_HELP = ("Port as NAME[,queues=N][,start-queue=S][,mode=auto|native|skb][,mac=M][,mtu=N]"
              "[,netns=REF][,consumer-user=USER] (repeatable).")


def _ports(specs):
    from .libvirt.domain_xml import port_option
    if not specs:
        raise click.UsageError("give at least one --port")
    return [port_option(s) for s in specs]


@libvirt_group.command("render")
@click.option("--port", "specs", multiple=True, metavar="SPEC", help=_PORT_HELP)
@click.option("--emulator", default=None, help="Wrapper path (default: /usr/local/bin/vmnet-qemu-wrapper).")
@click.option("--commandline", is_flag=True,
              help="The older form: <qemu:commandline> -netdev/-device pairs instead of <interface>s.")
def libvirt_render(specs, emulator, commandline):
    """Print the <metadata>, <emulator> and <interface> fragments for ports.

    Each port is an <interface type='ethernet'> whose target is the port's
    placeholder tap (vmt-PORT, managed='no'), tied to the port by its MAC.

    \b
    Example:
      vmnet libvirt render --port web1,queues=2,network=default
    """
    from .libvirt import domain_xml as lx
    click.echo(lx.render(_ports(specs), emulator or lx.WRAPPER, commandline=commandline), nl=False)


def _read_xml(path):
    with click.open_file(path, "rb") as f:
        return f.read()


def _write_xml(path, text):
    with click.open_file(path, "w") as f:
        f.write(text)


@libvirt_group.command("inject")
@click.argument("domain_xml", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--port", "specs", multiple=True, metavar="SPEC", help=_PORT_HELP)
@click.option("--emulator", default=None, help="Wrapper path (default: /usr/local/bin/vmnet-qemu-wrapper).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write here (default: stdout).")
@click.option("--declare-only", is_flag=True,
              help="Only declare the ports in the metadata (the hook makes them at start) and keep "
                   "the domain's emulator: for `vmnet libvirt attach` into the running domain.")
@click.option("--form", type=click.Choice(["interface", "commandline"]), default="interface", show_default=True,
              help="interface: a NIC libvirt manages; commandline: the older <qemu:commandline> pairs.")
def libvirt_inject(domain_xml, specs, emulator, output, declare_only, form):
    """Add or replace vmnet's parts in DOMAIN_XML (idempotent; '-' for stdin).

    An interface of the domain that already carries a port (its MAC or its
    tap) is rewritten in place, keeping its PCI address, alias and model; a
    domain of the older <qemu:commandline> form is rewritten to interfaces.

    \b
    Example:
      virsh dumpxml web | vmnet libvirt inject - --port web1,queues=2 > web.xml
      virsh define web.xml
    """
    from .libvirt import domain_xml as lx
    out = lx.inject(_read_xml(domain_xml), _ports(specs), emulator or lx.WRAPPER, commandline=not declare_only,
                    form=form)
    _write_xml(output, out)


@libvirt_group.command("convert")
@click.argument("domain_xml", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--interface", "selectors", multiple=True, metavar="MAC|ALIAS",
              help="Convert (or with --revert, restore) this interface only (repeatable; default: all).")
@click.option("--name", "names", multiple=True, metavar="MAC|ALIAS=PORT",
              help="Name the port of that interface (default: DOMAIN-N, or one derived from the uuid).")
@click.option("--revert", is_flag=True, help="Put back the interfaces convert replaced.")
@click.option("--emulator", default=None, help="Wrapper path (default: /usr/local/bin/vmnet-qemu-wrapper).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="Write here (default: stdout).")
def libvirt_convert(domain_xml, selectors, names, revert, emulator, output):
    """Turn a domain's network and bridge NICs into vmnet NICs on the same network.

    <interface type='network'|'bridge'> — Open vSwitch with its interfaceid,
    VLAN tags, MTU and queues included — becomes a vmnet port plugged
    where the NIC was, and the NIC keeps its MAC, model, PCI address and
    alias. The original interface is kept in vmnet's metadata: --revert
    restores it. macvtap (direct), hostdev, vhost-user and the like are
    refused. Idempotent.

    \b
    Example:
      virsh dumpxml web | vmnet libvirt convert - | virsh define /dev/stdin
      virsh dumpxml web | vmnet libvirt convert - --revert | virsh define /dev/stdin
    """
    from .libvirt import convert as cv
    from .libvirt import domain_xml as lx
    chosen = {}
    for item in names:
        sel, sep, port = item.partition("=")
        if not sep or not sel or not port:
            raise click.BadParameter(f"{item!r} is not MAC|ALIAS=PORT", param_hint="--name")
        chosen[sel] = port
    text = _read_xml(domain_xml)
    if revert:
        if chosen:
            raise click.UsageError("--name applies to convert, not to --revert")
        out = cv.revert(text, list(selectors))
    else:
        out, notes = cv.convert(text, list(selectors), emulator or lx.WRAPPER, chosen)
        for note in notes:
            click.echo(f"vmnet: note: {note}", err=True)
    _write_xml(output, out)


HOOK_PATH = "/etc/libvirt/hooks/qemu.d/vmnet"


@libvirt_group.command("install-hook")
@click.option("--path", default=HOOK_PATH, show_default=True, help="Where to install the hook.")
@click.option("--config", "config_path", metavar="PATH", help="Pin this VMNET_CONFIG in the installed hook.")
@click.pass_obj
def libvirt_install_hook(ctx, path, config_path):
    """Install the qemu.d hook (restart libvirtd afterwards: it reads hooks at start)."""
    from .libvirt.hookinstall import install_hook
    install_hook(path, config_path)
    _emit(ctx, {"installed": path}, f"installed {path}; restart libvirtd (or virtqemud) to enable it")


@libvirt_group.command("install-wrapper")
@click.option("--path", default=None,
              help="Where to install it, what the domains' <emulator> names "
                   "(default: /usr/local/bin/vmnet-qemu-wrapper).")
@click.pass_obj
def libvirt_install_wrapper(ctx, path):
    """Install vmnet-qemu-wrapper for libvirt's <emulator>.

    The same wrapper as pip's console script, started without Python's site
    (-I -S) with vmnet's own packages on its path: about 4 ms less CPU per
    VM start. install.sh runs it; run it again after moving vmnet."""
    from .libvirt.domain_xml import WRAPPER
    from .libvirt.hookinstall import install_wrapper
    path = path or WRAPPER
    install_wrapper(path)
    _emit(ctx, {"installed": path}, f"installed {path}")


@libvirt_group.command("uninstall-hook")
@click.option("--path", default=HOOK_PATH, show_default=True)
def libvirt_uninstall_hook(path):
    """Remove the qemu.d hook."""
    import os
    try:
        os.unlink(path)
        click.echo(f"removed {path}")
    except FileNotFoundError:
        click.echo(f"{path} was not installed")


@libvirt_group.command("attach")
@click.argument("domain")
@click.argument("spec", metavar="PORT_SPEC")
@click.option("--uri", default="qemu:///system", show_default=True)
@click.pass_obj
def libvirt_attach_cmd(ctx, domain, spec, uri):
    """Hot-plug a port into running DOMAIN (stock emulator).

    PORT_SPEC is NAME[,queues=N][,mode=...][,mac=...]. A port the domain
    declares in its metadata (made by the hook at start) is plugged as it
    is; otherwise a port is created, owned by the domain, for the uid the
    domain's QEMU runs as. The sockets reach QEMU through getfd +
    netdev_add af-xdp + device_add; the helper plans memlock from QEMU's
    own limits and capabilities.
    """
    from .libvirt.attach import attach
    from .libvirt.domain_xml import port_option
    cfg = _config()
    record = attach(cfg.socket, uri, domain, port_option(spec), cfg.qemu_multiqueue_fixed)
    _emit(ctx, record, f"attached port {record['name']} to {domain}")


@libvirt_group.command("detach")
@click.argument("domain")
@click.argument("port")
@click.option("--uri", default="qemu:///system", show_default=True)
def libvirt_detach_cmd(domain, port, uri):
    """Unplug PORT from running DOMAIN and delete it."""
    from .libvirt.attach import detach
    if detach(_config().socket, uri, domain, port):
        click.echo(f"detached port {port} from {domain}")
    else:
        click.echo(f"deleted port {port}; the guest of {domain} has not released its NIC yet (it needs ACPI "
                   "or PCIe hot-plug): QEMU removes the device when the guest lets it go", err=True)


# ---- KubeVirt ---------------------------------------------------------

@cli.group("kubevirt")
def kubevirt_group():
    """Fit vmnet into KubeVirt's virt-launcher pods (docs/kubevirt.md)."""


@kubevirt_group.command("runtime")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--qemu", metavar="PATH",
              help="The real QEMU inside the launcher image, for libvirt's probes "
                   "(default: the wrapper's /usr/bin/qemu-system-x86_64; KubeVirt's is /usr/libexec/qemu-kvm).")
@click.option("--allow-ipc-lock", is_flag=True,
              help="Let QEMU keep CAP_IPC_LOCK when the pod's memlock limit cannot be raised.")
@click.pass_obj
def kubevirt_runtime(ctx, dest, qemu, allow_ipc_lock):
    """Build the wrapper directory DEST for a launcher image without Python.

    \b
    It holds Debian's python3.11, the libraries it loads, vmnet, and
    bin/vmnet-qemu-wrapper, a shell script that starts them through the
    directory's own dynamic loader (nothing set in QEMU's environment).
    Mount DEST read-only into the compute container and point <emulator>
    at its bin/vmnet-qemu-wrapper.
    \b
    Example:
      vmnet kubevirt runtime /opt/vmnet/kubevirt --qemu /usr/libexec/qemu-kvm
    """
    from .kubevirt import runtime
    if qemu is not None and not os.path.isabs(qemu):
        raise click.BadParameter("give the absolute path of QEMU inside the image", param_hint="--qemu")
    made = runtime.build(os.path.abspath(dest), qemu=qemu,
                         config_text="allow_ipc_lock = true\n" if allow_ipc_lock else "")
    _emit(ctx, made, f"built {made['path']} ({made['bytes'] // 2**20} MiB, Python {made['python']}, "
                     f"{made['libraries']} libraries); <emulator>{made['wrapper']}</emulator>")


@kubevirt_group.command("sidecar")
@click.option("--socket", "socket_path", default=None, metavar="PATH",
              help="Listen here (default: /var/run/kubevirt-hooks/vmnet.sock, where virt-launcher "
                   "finds the sidecar's hook socket).")
@click.option("--binding", default=None, metavar="NAME",
              help="The binding plugin's name in the KubeVirt CR (default: $NETWORK_BINDING_PLUGIN_NAME, "
                   "which virt-controller sets, else vmnet).")
@click.option("--wrapper", default=None, metavar="PATH",
              help="The wrapper as the compute container sees it "
                   "(default: /var/run/vmnet/runtime/bin/vmnet-qemu-wrapper).")
@click.option("--consumer-socket", default=None, metavar="PATH",
              help="The consumer socket as the compute container sees it "
                   "(default: /var/run/vmnet/consumer/consumer.sock).")
@click.option("--qemu", default=None, metavar="PATH",
              help="The launcher's QEMU when the domain names none (default: /usr/libexec/qemu-kvm).")
def kubevirt_sidecar(socket_path, binding, wrapper, consumer_socket, qemu):
    """Serve KubeVirt's hook protocol: point vmnet VMIs' domains at the wrapper.

    \b
    Info, and Callbacks v1alpha3 (OnDefineDomain, PreCloudInitIso, Shutdown)
    and v1alpha2. OnDefineDomain sets <emulator> to the wrapper and adds
    <qemu:env> VMNET_SOCKET and VMNET_QEMU for VMIs with an interface bound
    to this plugin; everything else in the domain is kept. Exits after
    Shutdown. Run as the binding's sidecarImage (docs/kubevirt.md).
    """
    import logging

    from .kubevirt import sidecar
    logging.basicConfig(level=logging.INFO, format="vmnet-sidecar: %(levelname)s %(message)s")
    settings = sidecar.Settings(binding=binding or os.environ.get("NETWORK_BINDING_PLUGIN_NAME") or "vmnet",
                                wrapper=wrapper or sidecar.POD_WRAPPER,
                                socket=consumer_socket or sidecar.POD_SOCKET, qemu=qemu or sidecar.LAUNCHER_QEMU)
    sidecar.serve(settings, socket_path or os.path.join(sidecar.HOOK_DIR, settings.binding + ".sock"),
                  name=settings.binding)


@kubevirt_group.command("device-plugin")
@click.option("--kubelet-dir", default="/var/lib/kubelet/device-plugins", show_default=True, metavar="DIR",
              help="Where kubelet.sock is; the plugin's own socket goes beside it.")
@click.option("--resource", default="vmnet.io/port", show_default=True,
              help="The extended resource advertised (the NAD's k8s.v1.cni.cncf.io/resourceName).")
@click.option("--capacity", type=click.IntRange(0, 1024), default=16, show_default=True,
              help="Ports this node offers.")
@click.option("--lease-from", metavar="NIC",
              help="netkit-lease node: offer as many ports as NIC's free queues make (instead of --capacity).")
@click.option("--queues-per-port", type=click.IntRange(1, 64), default=1, show_default=True,
              help="With --lease-from: queues each port leases.")
@click.option("--runtime-dir", default="/opt/vmnet/kubevirt", show_default=True, metavar="DIR",
              help="The wrapper directory on the node, mounted read-only at /var/run/vmnet/runtime.")
@click.option("--consumer-dir", default="/run/vmnet/consumer", show_default=True, metavar="DIR",
              help="The consumer socket's directory on the node, mounted read-only at /var/run/vmnet/consumer.")
def kubevirt_device_plugin(kubelet_dir, resource, capacity, lease_from, queues_per_port, runtime_dir,
                           consumer_dir):
    """Advertise vmnet.io/port to the kubelet and mount what the wrapper needs into pods.

    \b
    kubelet device-plugin API v1beta1: registers on kubelet.sock, serves
    ListAndWatch (Unhealthy while the consumer socket does not answer),
    Allocate (the wrapper directory and the consumer socket's directory,
    read-only, and VMNET_SOCKET), GetPreferredAllocation, PreStartContainer,
    and registers again whenever the kubelet restarts.
    """
    import logging
    import signal

    from .kubevirt.deviceplugin import Plugin
    logging.basicConfig(level=logging.INFO, format="vmnet-device-plugin: %(levelname)s %(message)s")
    cfg = _config()
    plugin = Plugin(kubelet_dir=kubelet_dir, resource=resource, capacity=None if lease_from else capacity,
                    lease_from=lease_from, queues_per_port=queues_per_port, reserved=cfg.lease_reserved_queues,
                    host_runtime=runtime_dir, host_consumer=consumer_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: plugin.stop())
    plugin.run()


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def bench(ctx, args):
    """Measure port setup, scale, hook overhead and the data path (see --help)."""
    # imported only when asked for: it pulls in the privileged modules
    from .bench import bench as command
    args = list(args) + (["--json"] if ctx.json and "--json" not in args else [])
    command.main(args=args, prog_name="vmnet bench", standalone_mode=False)


def main(argv=None):
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VmnetError as exc:
        if debug:
            raise
        if as_json:
            click.echo(json.dumps({"error": exc.to_dict()}), err=True)
        else:
            click.echo(f"vmnet: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(0)
