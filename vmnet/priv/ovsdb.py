"""The helper's connection to Open vSwitch's database, through ovsdbapp (as os-vif plugs).

One connection per OVSDB address for the helper's life: opening one costs
a schema fetch and a full dump of the database, far more than the
transaction a port needs. ovsdbapp runs it on a thread of its own; every
change vmnet makes is one transaction, checked (check_error) and waited
for until ovs-vswitchd has applied it. ovsdbapp and the python ovs library
are imported only here, and only when a port uses Open vSwitch.
"""

from __future__ import annotations

import os
import threading

from ..errors import KernelError, NotFound

DEFAULT = "unix:/run/openvswitch/db.sock"
TIMEOUT = 10.0

_apis: dict[str, object] = {}
_lock = threading.Lock()


def endpoint_of(config) -> str:
    return getattr(config, "ovsdb", None) or DEFAULT


def reachable(endpoint: str) -> bool:
    """Whether an OVSDB could answer there (a unix socket that exists; any TCP/SSL address)."""
    if endpoint.startswith("unix:"):
        return os.path.exists(endpoint[5:])
    return True


def api(config=None):
    """ovsdbapp's Open_vSwitch API on the configured OVSDB, connected once."""
    endpoint = endpoint_of(config)
    with _lock:
        found = _apis.get(endpoint)
        if found is not None:
            return found
        if not reachable(endpoint):
            raise NotFound(f"Open vSwitch is not running here: no OVSDB at {endpoint}",
                           fix="start it (systemctl start openvswitch-switch), or point vmnet.toml's "
                               "ovsdb at its database")
        import logging
        from ovsdbapp.backend.ovs_idl import connection
        from ovsdbapp.schema.open_vswitch import impl_idl
        logging.getLogger("ovsdbapp").setLevel(logging.ERROR)
        try:
            idl = connection.OvsdbIdl.from_server(endpoint, "Open_vSwitch")
            conn = connection.Connection(idl=idl, timeout=TIMEOUT)
            # ovsdbapp keeps the connection on the class: a class of its own per OVSDB
            cls = type("VmnetOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            found = cls(conn, start=True)
        except Exception as exc:        # ovsdbapp raises its own and the socket's errors
            raise KernelError(f"cannot connect to Open vSwitch's database at {endpoint}: {exc}",
                              fix="check that ovsdb-server runs and the helper may open its socket") from None
        _apis[endpoint] = found
        return found


def run(txn_commands, config=None, what: str = "Open vSwitch transaction") -> None:
    """Run the commands txn_commands(api) returns as one transaction; errors become vmnet's."""
    a = api(config)
    try:
        with a.transaction(check_error=True) as txn:
            for command in txn_commands(a):
                txn.add(command)
    except Exception as exc:
        raise KernelError(f"{what} failed: {exc}") from None


def close_all() -> None:
    with _lock:
        for a in _apis.values():
            try:
                a.ovsdb_connection.stop(timeout=5)
            except Exception:
                pass
        _apis.clear()
