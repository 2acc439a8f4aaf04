"""vmnet's configuration file (TOML), with defaults and clear errors.

Pure. Read by the helper (socket, groups, state), the wrapper (the real
QEMU) and clients (the socket path). /etc/vmnet/vmnet.toml by default,
VMNET_CONFIG to point elsewhere; VMNET_SOCKET overrides the socket path.
"""

from __future__ import annotations

import os
import stat

from .errors import InvalidInput

DEFAULT_PATH = "/etc/vmnet/vmnet.toml"

# setting -> (type, default). A plain class rather than a dataclass: the
# libvirt hook loads this on every VM start, and dataclasses pulls in inspect.
SETTINGS = {
    "socket": (str, "/run/vmnet/helper.sock"),
    "socket_mode": (int, 0o666),        # every request is authorised from SO_PEERCRED
    # the socket that serves consumers only (mounted into pods, by its directory: docs/kubevirt.md):
    # unset, it is consumer/consumer.sock beside `socket`, in a directory of its own; "" turns it off
    "consumer_socket": (str, None),
    "socket_group": (str, None),
    "admin_group": (str, None),         # members may create and delete ports
    "state_dir": (str, "/run/vmnet/ports"),
    "qemu": (str, "/usr/bin/qemu-system-x86_64"),
    "libvirt_qemu_user": (str, "libvirt-qemu"),   # consumer of a domain's ports unless its metadata names one
    "allow_ipc_lock": (bool, False),
    "idle_timeout": (float, 30.0),      # seconds a connected client may stay silent
    # connection slots (vmnet.priv.budget): admins have admin_clients of their own; other users of
    # the admin socket, and the consumer socket, max_clients each
    "admin_clients": (int, 64),
    "max_clients": (int, 256),
    "max_clients_per_uid": (int, 32),   # no single user can take every slot
    "max_clients_per_tenant": (int, 8),  # consumer socket: per pod, or per uid and cgroup outside pods
    "instance": (str, ""),              # "" is the default instance (vmnet.priv.instance)
    # without the kernel's bind guard (bpf LSM), allow ports whose consumer netns holds other
    # devices a consumer could bind its sockets to (docs/helper.md, "Security model")
    "allow_unconfined": (bool, False),
    # the QEMU this host runs reads every queue of a multi-queue af-xdp netdev (released QEMUs
    # read one: vmnet refuses multi-queue ports to them; docs/datapath.md)
    "qemu_multiqueue_fixed": (bool, False),
    "lease_reserved_queues": (int, 1),  # netkit-lease: NIC queues 0..N-1 stay with the host
    # netkit-lease: the run priority of vmnet's program in the NIC's libxdp dispatcher (lower runs
    # first; 20 is where libxdp's own AF_XDP program runs; docs/backends.md, "Sharing the NIC")
    "xdp_priority": (int, 20),
    "metrics": (str, None),             # ADDRESS:PORT or unix:PATH of the helper's Prometheus endpoint; off unless set
    # per-port series (names, pods, uids, counters) on a TCP endpoint, to whoever can reach it;
    # a unix:PATH endpoint shows each peer the ports it may see (docs/helper.md, "Metrics")
    "metrics_port_labels": (bool, False),
    "metrics_max_connections": (int, 16),   # scrapes served at once; the rest wait in the backlog
    # attachments (docs/networks.md)
    "ovsdb": (str, "unix:/run/openvswitch/db.sock"),   # Open vSwitch's database, for --ovs ports
    "libvirt_run_dir": (str, "/run/libvirt"),  # where libvirt keeps its networks' status (network=)
    "addr_server_user": (str, "nobody"),   # the unprivileged user a port's address server runs as
}


class Config:
    __slots__ = tuple(SETTINGS)

    def __init__(self, **values):
        for name, (_, default) in SETTINGS.items():
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"unknown settings {sorted(values)}")

    @property
    def consumer_socket_path(self) -> str | None:
        """Where the consumer socket listens (None: not at all)."""
        if self.consumer_socket is None:
            return os.path.join(os.path.dirname(self.socket), "consumer", "consumer.sock")
        return self.consumer_socket or None

    def replace(self, **changes) -> "Config":
        return Config(**{**{n: getattr(self, n) for n in SETTINGS}, **changes})

    def __eq__(self, other):
        return isinstance(other, Config) and all(getattr(self, n) == getattr(other, n) for n in SETTINGS)

    def __repr__(self):
        return "Config(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in SETTINGS) + ")"


def parse(text: str, origin: str = "config") -> Config:
    return from_data(_decode(text, origin), origin)


def _decode(text: str, origin: str) -> dict:
    import tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{origin} is not valid TOML: {exc}", fix="fix the syntax") from None


def from_data(data: dict, origin: str = "config") -> Config:
    """The configuration of a decoded file, checked by every rule."""
    data = data.get("vmnet", data)
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in SETTINGS:
            raise InvalidInput(f"{origin}: unknown setting {key!r}",
                               fix=f"known settings: {', '.join(sorted(SETTINGS))}")
        want = SETTINGS[name][0]
        if name == "socket_mode" and isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise InvalidInput(f"{origin}: socket_mode {value!r} is not octal, e.g. \"0660\"") from None
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise InvalidInput(f"{origin}: {key} = {value!r} is not a {want.__name__}")
        values[name] = value
    cfg = Config(**values)
    for key in ("socket", "state_dir", "qemu", "libvirt_run_dir"):
        if not os.path.isabs(getattr(cfg, key)):
            raise InvalidInput(f"{origin}: {key} must be an absolute path")
    if cfg.consumer_socket and not os.path.isabs(cfg.consumer_socket):
        raise InvalidInput(f"{origin}: consumer_socket must be an absolute path, or \"\" for none")
    if cfg.consumer_socket_path and os.path.dirname(cfg.consumer_socket_path) == os.path.dirname(cfg.socket):
        raise InvalidInput(f"{origin}: consumer_socket is in the admin socket's directory",
                           fix="give it a directory of its own: pods get that directory mounted, and "
                               "must never see the admin socket")
    if cfg.instance:
        from .fields import validate_instance
        try:
            validate_instance(cfg.instance)
        except InvalidInput as exc:
            raise InvalidInput(f"{origin}: {exc.message}", fix=exc.fix) from None
    if cfg.metrics:
        try:
            parse_metrics_listen(cfg.metrics)
        except InvalidInput as exc:
            raise InvalidInput(f"{origin}: {exc.message}", fix=exc.fix) from None
    for key in ("admin_clients", "max_clients", "max_clients_per_uid", "max_clients_per_tenant"):
        if not 1 <= getattr(cfg, key) <= 4096:
            raise InvalidInput(f"{origin}: {key} = {getattr(cfg, key)} is not 1-4096")
    if not 1 <= cfg.metrics_max_connections <= 1024:
        raise InvalidInput(f"{origin}: metrics_max_connections = {cfg.metrics_max_connections} is not 1-1024")
    if not 0 <= cfg.xdp_priority <= 1000:
        raise InvalidInput(f"{origin}: xdp_priority = {cfg.xdp_priority} is not 0-1000",
                           fix="lower runs first in the NIC's XDP dispatcher; libxdp's default is 50")
    if not 0 <= cfg.socket_mode <= 0o777:
        raise InvalidInput(f"{origin}: socket_mode {oct(cfg.socket_mode)} is not a file mode")
    return cfg


def parse_metrics_listen(text: str, what: str = "metrics") -> tuple[str, int] | str:
    """The metrics endpoint: ADDRESS:PORT -> (address, port); unix:PATH -> PATH."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not os.path.isabs(path):
            raise InvalidInput(f"{what} = {text!r}: the socket path must be absolute",
                               fix="give e.g. unix:/run/vmnet/metrics.sock")
        return path
    return parse_listen(text, what)


def parse_listen(text: str, what: str = "metrics") -> tuple[str, int]:
    """ADDRESS:PORT (IPv6 in brackets) -> (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise InvalidInput(f"{what} = {text!r} is not ADDRESS:PORT",
                           fix="give e.g. 127.0.0.1:9465, [::1]:9465 or unix:/run/vmnet/metrics.sock")
    if not 1 <= int(port) <= 65535:
        raise InvalidInput(f"{what} = {text!r}: port {port} is not 1-65535")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    import ipaddress
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise InvalidInput(f"{what} = {text!r}: {host!r} is not an IP address",
                               fix="give the address to listen on, e.g. 127.0.0.1 or 0.0.0.0") from None
    return host, int(port)


def load(path: str | None = None) -> Config:
    path = path or os.environ.get("VMNET_CONFIG") or DEFAULT_PATH
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            ident = _identity(st)
            data = _cached(path, ident) if stat.S_ISREG(st.st_mode) else None
            if data is None:
                try:
                    text = f.read().decode()
                except UnicodeDecodeError as exc:
                    raise InvalidInput(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                                       fix="write the file as UTF-8, as TOML requires") from None
                data = _decode(text, path)
                if stat.S_ISREG(st.st_mode):
                    _store(path, ident, data)
        cfg = from_data(data, path)
    except FileNotFoundError:
        if path != DEFAULT_PATH:
            raise InvalidInput(f"config file {path} does not exist") from None
        cfg = Config()
    if os.environ.get("VMNET_SOCKET"):
        cfg = cfg.replace(socket=os.environ["VMNET_SOCKET"])
    return cfg


# ---- the decoded files, kept by root ------------------------------------------
# Importing tomllib costs a process 7-8 ms of CPU: a tenth of what a VM start spends
# outside the helper (the wrapper reads the file on every start). So whenever root
# decodes a file it keeps the result here, and anyone may reuse it while the file is
# the same one, unchanged (device, inode, size, mtime, ctime). Only the decoding is
# reused: every rule (from_data) still runs on every load. Trusted only when root owns
# the cache and its directory and no one else can write either; otherwise, and on any
# doubt, the file is decoded again.
CACHE_PATH = "/run/vmnet/config-cache.json"
CACHE_ENTRIES = 32


def _identity(st) -> list:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _root_only(st) -> bool:
    return st.st_uid == 0 and not st.st_mode & 0o022


def _read_cache() -> dict:
    import json
    try:
        if not _root_only(os.stat(os.path.dirname(CACHE_PATH))):
            return {}
        with open(CACHE_PATH, "rb") as f:
            if not _root_only(os.fstat(f.fileno())):
                return {}
            data = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(path: str, ident: list) -> dict | None:
    entry = _read_cache().get(os.path.abspath(path))
    if isinstance(entry, dict) and entry.get("id") == ident and isinstance(entry.get("data"), dict):
        return entry["data"]
    return None


def _store(path: str, ident: list, data: dict) -> None:
    """Keep a decoded file (root only; best effort: a cache that cannot be written is none)."""
    if os.geteuid() != 0:
        return
    import json
    entries = {p: e for p, e in _read_cache().items() if os.path.exists(p)}
    entries.pop(os.path.abspath(path), None)
    entries[os.path.abspath(path)] = {"id": ident, "data": data}
    tmp = f"{CACHE_PATH}.{os.getpid()}"
    try:
        text = json.dumps(dict(list(entries.items())[-CACHE_ENTRIES:]))
        os.makedirs(os.path.dirname(CACHE_PATH), mode=0o755, exist_ok=True)
        if not _root_only(os.stat(os.path.dirname(CACHE_PATH))):
            return                  # someone else's directory: never write there as root
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, CACHE_PATH)
    except (OSError, TypeError, ValueError):        # TypeError: a TOML date, which JSON cannot hold
        try:
            os.unlink(tmp)
        except OSError:
            pass
