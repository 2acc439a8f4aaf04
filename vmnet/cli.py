"""The `vmnet` command line: a thin layer over the library.

This is the one place where VmnetError becomes an exit code and a message
on stderr (or a JSON object with --json). Tracebacks only with --debug.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from .errors import CheckFailed, VmnetError


class Context:
    def __init__(self, debug: bool, as_json: bool):
        self.debug, self.json = debug, as_json


def _emit(ctx: Context, data, text: str | None = None):
    if ctx.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


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
@click.pass_obj
def selftest(ctx, modes, queue_counts, user, ipc_lock):
    """Prove the data path on this machine, end to end.

    For each mode and queue count: create a veth port in throwaway network
    namespaces, start the responder unprivileged through the same fd handoff
    QEMU uses, ping it, send UDP (small and MTU-sized) and TCP connection
    attempts from ordinary sockets, check checksums and sizes of every frame
    it received, and remove everything. Exits non-zero if any row fails.
    Needs root.
    """
    from . import selftest as st
    rows = st.run(modes=modes or ("native", "skb"), queue_counts=queue_counts or (1, 2, 4),
                  user=user, allow_ipc_lock=ipc_lock)
    passed = all(r.ok for r in rows)
    text = ["vmnet selftest: veth port -> AF_XDP sockets -> unprivileged responder (uid of "
            f"{user!r}), probed with ping, UDP echo and TCP SYN from host sockets", "",
            st.format_table(rows), "",
            f"{sum(r.ok for r in rows)} passed, {sum(not r.ok for r in rows)} failed "
            f"in {sum(r.seconds for r in rows):.1f} s"]
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
    checks = dr.run_checks(qemu)
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
def respond(netdev, device, ip, udp_port, allow_privileged):
    """Play QEMU's part: bind inherited AF_XDP sockets and answer ARP/ICMP/UDP/TCP.

    Started by vmnet (selftest, exec) with the socket fds inherited, exactly
    like QEMU's -netdev af-xdp,...,inhibit=on,sock-fds=... Prints JSON lines:
    'ready' with its credentials, 'stats' on SIGUSR1 and when stopped.
    """
    from .consumer import responder
    responder.run(netdev, device, ip, udp_port, allow_privileged)


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
