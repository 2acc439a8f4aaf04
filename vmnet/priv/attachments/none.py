"""No attachment: the host end stays where it is made, connected to nothing (vmnet's
behaviour before attachments; the operator plugs vmn-<port> himself)."""

from __future__ import annotations

from . import Kind


class NoAttachment(Kind):
    name = "none"

    def describe(self, record, ctx):
        return {"plugged": False, "note": "the host end is connected to nothing: plug it yourself, "
                                          "or give the port --bridge, --ovs, --routed or --network"}
