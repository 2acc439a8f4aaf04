"""vmnet's configuration file (TOML), with defaults and clear errors.

Pure. Read by the helper (socket, groups, state), the wrapper (the real
QEMU) and clients (the socket path). /etc/vmnet/vmnet.toml by default,
VMNET_CONFIG to point elsewhere; VMNET_SOCKET overrides the socket path.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from .errors import InvalidInput

DEFAULT_PATH = "/etc/vmnet/vmnet.toml"


@dataclasses.dataclass(frozen=True)
class Config:
    socket: str = "/run/vmnet/helper.sock"
    socket_mode: int = 0o666          # every request is authorised from SO_PEERCRED
    socket_group: str | None = None
    admin_group: str | None = None    # members may create and delete ports
    state_dir: str = "/run/vmnet/ports"
    qemu: str = "/usr/bin/qemu-system-x86_64"
    libvirt_qemu_user: str = "libvirt-qemu"   # consumer of a domain's ports unless its metadata names one
    allow_ipc_lock: bool = False
    idle_timeout: float = 30.0        # seconds a connected client may stay silent
    max_clients: int = 256
    max_clients_per_uid: int = 32     # no single user can take every slot


_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def parse(text: str, origin: str = "config") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{origin} is not valid TOML: {exc}", fix="fix the syntax") from None
    data = data.get("vmnet", data)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _TYPES:
            raise InvalidInput(f"{origin}: unknown setting {key!r}",
                               fix=f"known settings: {', '.join(sorted(_TYPES))}")
        want = _TYPES[name]
        if name == "socket_mode" and isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise InvalidInput(f"{origin}: socket_mode {value!r} is not octal, e.g. \"0660\"") from None
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "str | None": isinstance(value, str)}[want]
        if not ok:
            raise InvalidInput(f"{origin}: {key} = {value!r} is not a {want.split(' ')[0]}")
        values[name] = value
    cfg = Config(**values)
    for key in ("socket", "state_dir", "qemu"):
        if not os.path.isabs(getattr(cfg, key)):
            raise InvalidInput(f"{origin}: {key} must be an absolute path")
    if not 0 <= cfg.socket_mode <= 0o777:
        raise InvalidInput(f"{origin}: socket_mode {oct(cfg.socket_mode)} is not a file mode")
    return cfg


def load(path: str | None = None) -> Config:
    path = path or os.environ.get("VMNET_CONFIG") or DEFAULT_PATH
    try:
        with open(path) as f:
            cfg = parse(f.read(), path)
    except FileNotFoundError:
        if path != DEFAULT_PATH:
            raise InvalidInput(f"config file {path} does not exist") from None
        cfg = Config()
    if os.environ.get("VMNET_SOCKET"):
        cfg = dataclasses.replace(cfg, socket=os.environ["VMNET_SOCKET"])
    return cfg
