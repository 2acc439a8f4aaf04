"""`vmnet doctor`: what this host offers vmnet, and what to do about the gaps.

Each check is a cheap, read-only probe (no network, nothing left behind)
answering a question a failed `port add` or a silent guest would leave
open: which backends the kernel can do, whether QEMU takes AF_XDP sockets,
whether memlock will bite. A probe that breaks becomes a "warn" row, so one
odd corner of a host never hides the other answers.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import os
import re
import resource
import shutil
import socket
import subprocess

from . import caps
from .memlock import INFINITY, UMEM_BYTES_PER_QUEUE, mib

OK, MISSING, WARN = "ok", "missing", "warn"
CHECK_NAMES = ("kernel", "af-xdp", "btf", "bpf-link", "netkit", "queue-lease", "xdp-sharing", "bpffs",
               "bind-guard", "memlock", "qemu", "libvirt", "privileges", "anti-spoofing", "bridge-vlans",
               "openvswitch", "libvirt-networks", "addr-server", "state-dir", "ports")
AF_XDP = 44
# netkit_new_link/netkit_xmit exist only in drivers/net/netkit.c; names such
# as netkit_peer_dev also show up without netkit (inline stubs in
# include/net/netkit.h that the compiler kept out of line).
NETKIT_SYMBOLS = {"netkit_new_link", "netkit_xmit"}
SUBPROCESS_TIMEOUT = 5.0


@dataclasses.dataclass
class Check:
    name: str
    status: str            # OK, MISSING or WARN
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def kernel_version(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _run(argv: list[str]) -> str:
    """stdout+stderr of a short command; raises OSError/TimeoutExpired for the caller to word."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=SUBPROCESS_TIMEOUT)
    return proc.stdout


def check_af_xdp() -> Check:
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        # The family lookup comes before xsk_create()'s CAP_NET_RAW test, so
        # EPERM/EACCES already prove the kernel has AF_XDP.
        if exc.errno in (errno.EPERM, errno.EACCES):
            return Check("af-xdp", WARN, "the kernel has AF_XDP sockets, but this process may not "
                         "create one", "run vmnet as root (AF_XDP sockets need CAP_NET_RAW)")
        return Check("af-xdp", MISSING, f"cannot create an AF_XDP socket: {exc.strerror}",
                     "boot a kernel with CONFIG_XDP_SOCKETS=y, and run vmnet with CAP_NET_RAW")
    return Check("af-xdp", OK, "AF_XDP sockets can be created")


def check_btf() -> Check:
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        return Check("btf", OK, "/sys/kernel/btf/vmlinux")
    return Check("btf", MISSING, "the kernel exposes no BTF (/sys/kernel/btf/vmlinux)",
                 "boot a kernel with CONFIG_DEBUG_INFO_BTF=y")


def check_bpf_link(release: str) -> Check:
    version = kernel_version(release)
    if version is None:
        return Check("bpf-link", WARN, f"unknown: cannot parse kernel release {release!r}")
    if version >= (5, 9):
        return Check("bpf-link", OK, f"inferred from kernel {version[0]}.{version[1]} >= 5.9")
    return Check("bpf-link", MISSING, f"inferred from kernel {version[0]}.{version[1]} < 5.9: "
                 "XDP cannot be attached through a bpf_link", "boot a kernel >= 5.9")


def kernel_config(release: str, option: str) -> str | None:
    """'y', 'm' or 'n' for CONFIG_<option> ('n' also when it is absent); None when there is no
    config to read."""
    for path, opener in ((f"/boot/config-{release}", open), ("/proc/config.gz", gzip.open)):
        try:
            with opener(path, "rt") as f:
                m = re.search(rf"^CONFIG_{option}=([ym])$", f.read(), re.M)
            return m.group(1) if m else "n"
        except OSError:
            continue
    return None


def netkit_config(release: str) -> str | None:
    """'y', 'm' or 'n' ('n' also when the option is absent: kernel < 6.7 or
    unmet dependencies); None when there is no config to read."""
    return kernel_config(release, "NETKIT")


def netkit_evidence(release: str) -> str | None:
    """Only positive evidence: an unloaded module leaves no trace in
    /sys/module or kallsyms, so their silence proves nothing."""
    if os.path.isdir("/sys/module/netkit"):
        return "netkit module loaded"
    with open("/proc/kallsyms") as f:
        if any(line.split()[2] in NETKIT_SYMBOLS for line in f if "netkit" in line):
            return "netkit symbols in the running kernel"
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{name}") as f:
                if "/netkit.ko" in f.read():
                    return f"netkit listed in {name}"
        except OSError:
            continue
    return None


# What `--backend auto` does with the answer (vmnet.priv.ports decides the same
# way at creation, from the kernel's own reply to RTM_NEWLINK kind netkit).
AUTO_NETKIT = ("--backend netkit works (generic/skb XDP only) and --backend auto picks it "
               "unless native mode is asked for")
AUTO_VETH = "--backend auto picks veth"


def check_netkit(release: str) -> Check:
    fix = "use the veth backend, or boot a kernel with CONFIG_NETKIT (>= 6.7)"
    version = kernel_version(release)
    state = "n" if version and version < (6, 7) else netkit_config(release)
    if state in ("y", "m"):
        return Check("netkit", OK, f"CONFIG_NETKIT={state}: {AUTO_NETKIT}")
    if state == "n":
        return Check("netkit", MISSING, f"kernel {release} is built without CONFIG_NETKIT: {AUTO_VETH}",
                     fix)
    evidence = netkit_evidence(release)
    if evidence:
        return Check("netkit", OK, f"{evidence}: {AUTO_NETKIT}")
    return Check("netkit", WARN, "unknown: no kernel config, module or symbol tells; --backend auto "
                 "tries netkit and falls back to veth", fix)


def check_queue_lease() -> Check:
    """queue-create (the netkit-lease backend) and which NICs here could lend zero-copy queues."""
    from .priv import netdev_genl
    fix = ("use the veth or netkit backend; netkit-lease needs " + netdev_genl.REQUIREMENT
           + " and " + netdev_genl.NIC_REQUIREMENT)
    ok, why = netdev_genl.queue_create_supported()
    if not ok:
        return Check("queue-lease", MISSING, why, fix)
    import socket
    zero_copy = sorted(socket.if_indextoname(i) for i, zc in netdev_genl.zero_copy_devices().items() if zc)
    nics = (f"devices here with AF_XDP zero-copy: {', '.join(zero_copy)}" if zero_copy else
            "no device here has AF_XDP zero-copy, so a leased queue could only receive")
    return Check("queue-lease", OK, f"{why}: --backend netkit-lease works with a NIC whose driver can "
                 f"lend queues (mlx5, bnxt_en, gve, fbnic; netdevsim); {nics}")


def check_xdp_sharing() -> Check:
    """libxdp (how a leased NIC's XDP hook is shared), and what runs on each device's hook here."""
    from .errors import VmnetError
    from .priv import links, nichook, xdpshare
    try:
        xdpshare.lib()
    except VmnetError as exc:
        return Check("xdp-sharing", MISSING, exc.message, exc.fix)
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        names = [m.get("IFLA_IFNAME") for m in ip.get_links() if m.get("IFLA_XDP")]
    shown = []
    for name in names:
        state = links.link_state(name)
        if not state or not nichook._prog_id(state):
            continue
        try:
            hook = nichook.hook_of(state)
        except VmnetError as exc:
            shown.append(f"{name}: unreadable ({exc.message})")
            continue
        if hook.kind == "dispatcher":
            shown.append(f"{name}: libxdp dispatcher ({hook.mode}) with "
                         + ", ".join(f"{c.name} prio {c.priority}" for c in hook.components))
        elif hook.kind == "foreign-dispatcher":
            shown.append(f"{name}: a dispatcher libxdp did not pin (bpfman's?): vmnet cannot join it")
        else:
            shown.append(f"{name}: {hook.prog_name} (id {hook.prog_id}) alone"
                         + ("" if hook.prog_name == "vmnet_xsk_v2" else ": vmnet cannot join it"))
    return Check("xdp-sharing", OK, f"libxdp found: a NIC's XDP hook is shared through its dispatcher "
                 f"(pins under {xdpshare.bpffs()}); " + ("; ".join(shown) if shown else "no XDP program here"))


def bpffs_mounted(mounts: str, root: str = "/sys/fs/bpf") -> bool:
    return any(f[1:3] == [root, "bpf"] for f in (line.split() for line in mounts.splitlines())
               if len(f) >= 3)


def filesystem(path: str, mountinfo: str | None = None) -> str:
    """The type of the file system `path` is on (the mount whose mount point is its longest
    prefix in /proc/self/mountinfo, or in `mountinfo`), with "(no journal)" for an ext4 without
    one; "unknown" when none matches."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    path = os.path.realpath(path)
    best, fstype, source = "", "unknown", ""
    for line in mountinfo.splitlines():
        fields, sep, tail = line.partition(" - ")
        parts, rest = fields.split(), tail.split()
        if not sep or len(parts) < 5 or len(rest) < 2:
            continue
        point = parts[4].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype, source = point, rest[0], rest[1]
    if fstype == "ext4":
        try:                    # the journal's thread, or "<none>" for a file system without one
            with open(f"/sys/fs/ext4/{os.path.basename(source)}/journal_task") as f:
                if f.read().strip() == "<none>":
                    return "ext4 (no journal)"
        except OSError:
            pass
    return fstype


def check_bpffs() -> Check:
    with open("/proc/self/mounts") as f:
        if bpffs_mounted(f.read()):
            return Check("bpffs", OK, "mounted at /sys/fs/bpf")
    return Check("bpffs", WARN, "no bpffs at /sys/fs/bpf (vmnet mounts it itself when run as "
                 "root; ports are pinned there)", "mount -t bpf bpf /sys/fs/bpf")


def check_bind_guard() -> Check:
    """Whether the kernel will keep each handed-out socket on its own port (docs/helper.md)."""
    from .priv import bindguard
    ok, detail = bindguard.probe()
    if ok:
        return Check("bind-guard", OK, detail + ": every socket binds only to its port's queue")
    return Check("bind-guard", WARN, detail + "; the helper then refuses ports whose consumer netns "
                 "holds other devices (unless allow_unconfined = true)", bindguard.FIX)


def check_memlock() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    can_raise = caps.has_capability("sys_resource")
    detail = (f"soft {mib(soft)}, hard {mib(hard)}; each queue needs {mib(UMEM_BYTES_PER_QUEUE)}; "
              + ("CAP_SYS_RESOURCE: the helper can raise a consumer's limit" if can_raise
                 else "no CAP_SYS_RESOURCE: limits cannot be raised above the hard limit"))
    if hard != INFINITY and hard < UMEM_BYTES_PER_QUEUE and not can_raise:
        return Check("memlock", WARN, detail + ", so consumers need CAP_IPC_LOCK",
                     "give the helper CAP_SYS_RESOURCE, or allow the CAP_IPC_LOCK fallback "
                     "(--allow-ipc-lock)")
    return Check("memlock", OK, detail)


def find_qemu(qemu: str | None = None) -> str | None:
    return qemu or os.environ.get("VMNET_QEMU") or shutil.which("qemu-system-x86_64")


def check_qemu(qemu: str | None = None) -> Check:
    path = find_qemu(qemu)
    if path is None:
        return Check("qemu", MISSING, "qemu-system-x86_64 not found (PATH, VMNET_QEMU)",
                     "apt-get install qemu-system-x86")
    try:
        version = (_run([path, "-version"]).splitlines() or ["unknown version"])[0].strip()
        backends = _run([path, "-netdev", "help"]).split()
    except subprocess.TimeoutExpired:
        return Check("qemu", WARN, f"{path} did not answer within {SUBPROCESS_TIMEOUT:g} s")
    except OSError as exc:
        return Check("qemu", MISSING, f"cannot run {path}: {exc.strerror}",
                     "apt-get install qemu-system-x86, or point VMNET_QEMU at an existing QEMU")
    if "af-xdp" in backends:
        from . import qemu_compat
        parsed = qemu_compat.parse_version(version)
        limits = ["ports of 1 queue only: it reads one queue of a multi-queue af-xdp netdev "
                  "(net/af-xdp.c net_init_af_xdp; docs/datapath.md; qemu_multiqueue_fixed = true for a "
                  "QEMU with the fix)"]
        if parsed is not None and parsed < (10, 1, 0):
            limits.append("no netkit-lease ports (it wants the program on ifname; 10.1 and later do not)")
        return Check("qemu", OK, f"{path}: {version}, with af-xdp; " + "; ".join(limits))
    return Check("qemu", MISSING, f"{path} ({version}) has no af-xdp netdev backend",
                 "use a QEMU built with libxdp (--enable-af-xdp); Debian's QEMU is built without it")


def check_libvirt() -> Check:
    for tool in ("libvirtd", "virsh"):
        path = shutil.which(tool)
        if path is None:
            continue
        try:
            out = _run([path, "--version"]).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("libvirt", WARN, f"{path} --version failed: {exc}")
        return Check("libvirt", OK, f"{tool} {out.split()[-1] if out else 'unknown version'}")
    return Check("libvirt", MISSING, "neither libvirtd nor virsh found",
                 "apt-get install libvirt-daemon-system")


def check_privileges() -> Check:
    creds = caps.process_credentials()
    have = set(creds["effective"])
    lacking = [c for c in ("net_admin", "net_raw") if c not in have]
    if not have & {"bpf", "sys_admin"}:
        lacking.append("bpf (or sys_admin)")
    who = f"uid {creds['uid']}"
    if not lacking:
        return Check("privileges", OK, f"{who} with net_admin, net_raw and "
                     f"{'bpf' if 'bpf' in have else 'sys_admin'}: can create ports")
    return Check("privileges", MISSING, f"{who} lacks {', '.join(lacking)}: cannot create ports",
                 "run the vmnet helper as root (or with CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW)")


# ---- networks (docs/networks.md) ---------------------------------------------

def check_anti_spoofing(release: str) -> Check:
    """The host filter is a cls_bpf classifier on clsact: CONFIG_NET_CLS_BPF, CONFIG_NET_SCH_INGRESS."""
    options = {opt: kernel_config(release, opt) for opt in ("NET_CLS_BPF", "NET_SCH_INGRESS")}
    absent = [f"CONFIG_{opt}" for opt, state in options.items() if state == "n"]
    if absent:
        return Check("anti-spoofing", MISSING, f"kernel {release} is built without {' and '.join(absent)}: ports "
                     "with anti-spoofing cannot be made", "boot a kernel with them (Debian's have both), or make "
                     "ports with --no-spoofcheck")
    if None in options.values():
        return Check("anti-spoofing", WARN, "unknown: no kernel config tells whether tc has cls_bpf and clsact "
                     "(a port's create says so if not)")
    return Check("anti-spoofing", OK, "tc clsact + cls_bpf: every port's host end drops frames from other MACs "
                 "and addresses")


def check_bridge_vlans(release: str) -> Check:
    state = kernel_config(release, "BRIDGE_VLAN_FILTERING")
    if state is None:
        filtering = [d for d in _bridges() if os.path.exists(f"/sys/class/net/{d}/bridge/vlan_filtering")]
        if filtering:
            return Check("bridge-vlans", OK, f"bridge {filtering[0]} has VLAN filtering: --vlan/--trunk on "
                         "bridges whose vlan_filtering is on")
        return Check("bridge-vlans", WARN, "unknown: no kernel config tells whether bridges can filter VLANs")
    if state == "n":
        return Check("bridge-vlans", MISSING, f"kernel {release} is built without CONFIG_BRIDGE_VLAN_FILTERING: "
                     "bridge ports cannot have VLANs (Open vSwitch ports can)",
                     "boot a kernel with it (Debian's have it)")
    off = [d for d in _bridges() if _read(f"/sys/class/net/{d}/bridge/vlan_filtering") == "0"]
    detail = "--vlan/--trunk work on bridges whose vlan_filtering is on"
    if off:
        detail += f"; off on {', '.join(off[:6])} (ip link set BRIDGE type bridge vlan_filtering 1)"
    return Check("bridge-vlans", OK, detail)


def _bridges() -> list[str]:
    try:
        return sorted(d for d in os.listdir("/sys/class/net") if os.path.isdir(f"/sys/class/net/{d}/bridge"))
    except OSError:
        return []


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_openvswitch(config=None) -> Check:
    from .priv import ovsdb      # imports nothing of ovsdbapp until it connects
    endpoint = ovsdb.endpoint_of(config)
    if ovsdb.reachable(endpoint):
        tool = shutil.which("ovs-vsctl")
        return Check("openvswitch", OK, f"an OVSDB is at {endpoint}: --ovs BRIDGE works" +
                     ("" if tool else " (ovs-vsctl is not installed, which vmnet does not need)"))
    installed = shutil.which("ovsdb-server") or os.path.exists("/usr/sbin/ovsdb-server")
    return Check("openvswitch", MISSING, f"no OVSDB at {endpoint}: --ovs ports cannot be made",
                 "start Open vSwitch (systemctl start openvswitch-switch)" if installed else
                 "apt-get install openvswitch-switch (or point vmnet.toml's ovsdb at yours)")


def check_libvirt_networks(config=None) -> Check:
    run = getattr(config, "libvirt_run_dir", None) or "/run/libvirt"
    try:
        active = sorted(f[:-4] for f in os.listdir(os.path.join(run, "network")) if f.endswith(".xml"))
    except OSError:
        active = []
    if active:
        return Check("libvirt-networks", OK, f"active: {', '.join(active)} (--network NAME, network= in a domain)")
    return Check("libvirt-networks", WARN, f"no active libvirt network ({run}/network): network= ports "
                 "cannot be made", "virsh net-start default (and virsh net-autostart default)")


def check_addr_server(config=None) -> Check:
    import platform
    import pwd
    user = getattr(config, "addr_server_user", None) or "nobody"
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return Check("addr-server", MISSING, f"addr_server_user {user!r} does not exist: guests of ports with "
                     "--address get no DHCP", "create it, or set addr_server_user in vmnet.toml")
    if platform.machine() != "x86_64":
        return Check("addr-server", MISSING, f"the address server confines itself with seccomp on x86_64 only, "
                     f"not {platform.machine()}", "give ports --no-dhcp and configure guests yourself")
    return Check("addr-server", OK, f"guests of ports with --address get DHCP/RA from a server running as "
                 f"{pw.pw_name} (uid {pw.pw_uid}), no capabilities, seccomp")


def check_state_dir(config=None) -> Check:
    """What the file system under the helper's records means for it (docs/performance.md)."""
    path = config.state_dir if config else "/run/vmnet/ports"
    where = path
    while not os.path.exists(where) and where not in ("/", ""):
        where = os.path.dirname(where)          # the records' directory is made at the first start
    fs = filesystem(where)
    if fs == "ext4 (no journal)":
        return Check("state-dir", WARN, f"{path} is on ext4 without a journal: every new record skips and "
                     "reads each inode freed there in the last minutes, so after many deletes (a node "
                     "drained and refilled) each create is slower; at 1,000 ports here up to 2x",
                     "with no ports left (a helper that finds no record of a port removes it): stop the "
                     f"helper, mount a tmpfs as /run is on a systemd host (mount -t tmpfs -o mode=0755 tmpfs "
                     f"{os.path.dirname(path.rstrip('/')) or path}) and start it again, or set state_dir "
                     "to a directory on a tmpfs")
    if fs in ("tmpfs", "ramfs"):
        return Check("state-dir", OK, f"{path} is on {fs}: records go with the ports at a reboot")
    return Check("state-dir", OK, f"{path} is on {fs}: records outlive a reboot, and the helper removes "
                 "those of ports that are gone at its next start")


def check_ports(config=None) -> Check:
    """Where the running helper's ports are plugged, and which are not."""
    from .client import call
    from .errors import VmnetError
    try:
        status = call(config.socket if config else "/run/vmnet/helper.sock", "status")
    except VmnetError as exc:
        return Check("ports", OK, f"no helper answers ({exc.message}): nothing to check")
    ports = status.get("ports") or []
    broken = [f"{p['name']} ({(p.get('network') or {}).get('missing')})" for p in ports
              if (p.get("network") or {}).get("missing")]
    if broken:
        return Check("ports", WARN, f"{len(broken)} of {len(ports)} port(s) are not plugged as declared: "
                     + "; ".join(broken[:8]), "see 'vmnet port show NAME'; recreate a port whose network came back")
    return Check("ports", OK, f"{len(ports)} port(s), each plugged where it was declared")


def run_checks(qemu: str | None = None, config=None) -> list[Check]:
    release = os.uname().release
    probes = [
        ("kernel", lambda: Check("kernel", OK, release)),
        ("af-xdp", check_af_xdp), ("btf", check_btf),
        ("bpf-link", lambda: check_bpf_link(release)), ("netkit", lambda: check_netkit(release)),
        ("queue-lease", check_queue_lease), ("xdp-sharing", check_xdp_sharing), ("bpffs", check_bpffs), ("bind-guard", check_bind_guard),
        ("memlock", check_memlock),
        ("qemu", lambda: check_qemu(qemu)), ("libvirt", check_libvirt),
        ("privileges", check_privileges),
        ("anti-spoofing", lambda: check_anti_spoofing(release)), ("bridge-vlans", lambda: check_bridge_vlans(release)),
        ("openvswitch", lambda: check_openvswitch(config)), ("libvirt-networks", lambda: check_libvirt_networks(config)),
        ("addr-server", lambda: check_addr_server(config)), ("state-dir", lambda: check_state_dir(config)),
        ("ports", lambda: check_ports(config)),
    ]
    return [_guarded(name, probe) for name, probe in probes]


def _guarded(name: str, probe) -> Check:
    try:
        return probe()
    except Exception as exc:   # noqa: BLE001 - one broken probe must not hide the rest
        return Check(name, WARN, f"unknown: the check itself failed ({exc!r})")


LABELS = {OK: "[ ok ]", MISSING: "[MISS]", WARN: "[warn]"}


def format_checks(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{LABELS.get(check.status, '[????]')} {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"       fix: {check.fix}")
    return "\n".join(lines)
