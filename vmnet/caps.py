"""Reading a process's credentials from /proc/<pid>/status.

Pure parsing plus one file read: the responder prints its own capability
sets at start, tests check a consumer's, doctor checks the helper's.
"""

from __future__ import annotations

# linux/capability.h, index = bit
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)


def cap_names(mask: int) -> list[str]:
    return [CAP_NAMES[i] if i < len(CAP_NAMES) else f"cap_{i}" for i in range(64) if mask >> i & 1]


def parse_status(text: str) -> dict:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    out = {
        "uid": int(fields["Uid"].split()[1]),
        "gid": int(fields["Gid"].split()[1]),
        "groups": [int(g) for g in fields.get("Groups", "").split()],
        "no_new_privs": fields.get("NoNewPrivs", "0").strip() == "1",
    }
    for key, label in (("CapEff", "effective"), ("CapPrm", "permitted"), ("CapInh", "inheritable"),
                       ("CapBnd", "bounding"), ("CapAmb", "ambient")):
        out[label] = cap_names(int(fields.get(key, "0"), 16))
    return out


def process_credentials(pid: int | str = "self") -> dict:
    with open(f"/proc/{pid}/status") as f:
        return parse_status(f.read())


def has_capability(name: str, pid: int | str = "self") -> bool:
    return name in process_credentials(pid)["effective"]
