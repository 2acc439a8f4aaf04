"""Run a command the way a virt-launcher pod's compute container runs it (root, for tests).

    python -I podexec.py SPEC_JSON -- COMMAND ...

SPEC: {"cgroups": [dirs to join], "netns": "/run/netns/N", "uid": 107, "gid": 107,
       "caps": ["net_bind_service"], "mounts": [[source, target, read_only]],
       "env": {...}}

In order: join the cgroups (the fake pod's, in every hierarchy the test made),
enter the netns, take a private mount namespace with a tmpfs on /mnt (the pod's
own view: nothing outside changes) holding the bind mounts, remount /sys for
the netns (as a container runtime does), become uid/gid with no supplementary
groups, keep only `caps` (bounding, permitted, effective, inheritable and
ambient: what `capabilities: {drop: [ALL], add: [...]}` leaves a non-root
container), set no_new_privs (allowPrivilegeEscalation: false), exec with
exactly `env`.
"""

import ctypes
import json
import os
import sys

import prctl

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
libc = ctypes.CDLL(None, use_errno=True)


def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    check(libc.mount(source.encode() if source else None, target.encode(),
                     fstype.encode() if fstype else None, flags, data.encode() if data else None),
          f"mount {source} on {target}")


def main():
    spec = json.loads(sys.argv[1])
    assert sys.argv[2] == "--"
    argv = sys.argv[3:]
    for cg in spec.get("cgroups", []):
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if spec.get("netns"):
        fd = os.open(spec["netns"], os.O_RDONLY)
        check(libc.setns(fd, CLONE_NEWNET), "setns")
        os.close(fd)
    check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", "/mnt", "tmpfs", 0, "mode=0755")
    for source, target, read_only in spec.get("mounts", []):
        # mount points are made only on the pod's own tmpfs; elsewhere (the image's
        # /etc/passwd, say) they must exist, and are covered, never written
        if not os.path.exists(target):
            assert target.startswith("/mnt/"), f"no mount point {target} outside /mnt"
            if os.path.isdir(source):
                os.makedirs(target)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "x").close()
        mount(source, target, None, MS_BIND)
        if read_only:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    if spec.get("netns"):
        check(libc.umount2(b"/sys", 2), "umount /sys")          # MNT_DETACH
        mount("sysfs", "/sys", "sysfs", 0)
    keep = [getattr(prctl, "CAP_" + c.upper()) for c in spec.get("caps", [])]
    for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
        if cap not in keep:
            prctl.capbset_drop(cap)
    for name in spec.get("caps", []):
        setattr(prctl.cap_inheritable, name, True)
    prctl.set_keepcaps(True)
    os.setgroups([])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    prctl.cap_effective.limit(*keep)
    prctl.cap_permitted.limit(*keep)
    prctl.cap_inheritable.limit(*keep)
    for cap in keep:
        check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), "ambient")
    prctl.set_no_new_privs(True)
    os.chdir(spec.get("cwd", "/"))
    os.execve(argv[0], argv, spec.get("env", {}))


if __name__ == "__main__":
    main()
