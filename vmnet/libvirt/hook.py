"""What the libvirt hook does for a domain that declares vmnet ports.

It hands the domain XML to the helper, which does the work in one request
(vmnet.domain): prepare/begin creates every declared port, all or nothing;
release/end deletes the ports the domain owns; reconnect/begin reports
ports that are gone and creates nothing; migrate/begin (on a live
migration's destination, first of all) refuses what prepare would and
marks the ports to come as incoming; stopped/end withdraws what draws the
domain's traffic here (a migration's source) and keeps the ports until
release; every other operation does nothing (docs/migration.md). Importing no XML parser keeps a VM start cheap. It never calls
libvirt (hooks run under libvirt's locks). A failure at prepare is printed
on stderr, which libvirt shows to the user, and makes libvirt abort the
start; a failure at migrate aborts the migration (the VM runs on, untouched,
on its source); later operations only log, so that a hook never kills a
running VM.
"""

from __future__ import annotations

import sys

from ..client import call
from ..errors import InvalidInput, VmnetError
from ..protocol import MAX_MESSAGE

VERBS = {("prepare", "begin"): "domain-prepare",
         ("release", "end"): "domain-release",
         ("reconnect", "begin"): "domain-check",
         ("migrate", "begin"): "domain-incoming",
         ("stopped", "end"): "domain-stopped"}
FATAL = ("prepare", "migrate")      # a failure here stops libvirt, before anything runs


def run(argv: list[str], xml: bytes, settings: dict | None = None) -> int:
    """settings: the socket install-hook read from the configuration (no TOML per VM start)."""
    domain, op, subop = (argv + ["?", "", ""])[:3]
    verb = VERBS.get((op, subop))
    if verb is None:
        return 0
    try:
        if len(xml) > MAX_MESSAGE - 4096:
            raise InvalidInput(f"the domain XML is {len(xml)} bytes; the hook passes at most "
                               f"{MAX_MESSAGE - 4096} to the helper",
                               fix="create the ports with 'vmnet port add' and use `vmnet exec` "
                                   "or the wrapper without the hook")
        try:
            text = xml.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("the domain XML is not UTF-8") from None
        if settings is not None:
            socket = settings["socket"]
        else:
            from ..config import load
            socket = load().socket
        result = call(socket, verb, xml=text)
        if result.get("missing"):
            print(f"vmnet: domain {domain}: port(s) {', '.join(result['missing'])} are gone; "
                  "the VM has no network on them until it is restarted", file=sys.stderr)
        return 0
    except VmnetError as exc:
        print(f"vmnet: domain {domain}: {op} failed: {exc}", file=sys.stderr)
        return 1 if op in FATAL else 0
