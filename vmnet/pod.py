"""Who a pod is, as the helper checks it: its UID and the cgroup path that shows it.

Pure. Every virt-launcher on a node runs QEMU as uid 107, so a uid names
no pod. What does: the pod's network namespace (checked by the helper
against the one its port was made in) and its cgroup, whose path carries
the pod's UID in one component, spelt by the kubelet's cgroup driver:

  cgroupfs: /kubepods/besteffort/pod1b4e28ba-2fa1-11d2-883f-0016d3cca427/<container>
  systemd:  /kubepods.slice/kubepods-besteffort.slice/
            kubepods-besteffort-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice/cri-containerd-<id>.scope

(Guaranteed pods have no QoS level: /kubepods/pod<uid>, kubepods-pod<uid>.slice.)
A helper in a container with a cgroup namespace of its own sees these
paths relative to it (/../../kubepods/...), so the component is matched,
never a whole path.

A core module, not KubeVirt's: the helper validates the pod a port-create
names and checks every consumer against it (vmnet.priv.daemon, authz,
server) — a pod is one of its objects, whoever asks — and the CNI plugin
(vmnet.kubevirt.cni) applies the same rules before it asks.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_K8S_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_CONTAINER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_SYSTEMD = re.compile(r"kubepods(?:-[a-z]+)?-pod([0-9a-f_]{36})\.slice")
_CGROUPFS = re.compile(r"pod([0-9a-f-]{36})")
FIELDS = ("uid", "namespace", "name", "container_id")


def validate_uid(uid) -> str:
    if not isinstance(uid, str) or not _UID.fullmatch(uid.lower()):
        raise InvalidInput(f"pod UID {uid!r} is not a Kubernetes UID",
                           fix="give the pod's metadata.uid, e.g. 1b4e28ba-2fa1-11d2-883f-0016d3cca427 "
                               "(K8S_POD_UID in CNI_ARGS)")
    return uid.lower()


def validate_pod(pod) -> dict:
    """A pod's identity as recorded on its port: uid required; namespace, name, container_id kept."""
    if not isinstance(pod, dict):
        raise InvalidInput("pod must be an object with at least its uid")
    unknown = set(pod) - set(FIELDS)
    if unknown:
        raise InvalidInput(f"unknown pod field(s): {', '.join(sorted(unknown))}",
                           fix=f"known fields: {', '.join(FIELDS)}")
    out = {"uid": validate_uid(pod.get("uid"))}
    for key, pattern in (("namespace", _K8S_NAME), ("name", _K8S_NAME), ("container_id", _CONTAINER_ID)):
        value = pod.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidInput(f"pod {key} {value!r} is not valid")
        out[key] = value
    return out


def uid_in_component(component: str) -> str | None:
    """The pod UID a cgroup path component names, in either driver's spelling, or None."""
    m = _SYSTEMD.fullmatch(component)
    if m:
        return m.group(1).replace("_", "-")
    m = _CGROUPFS.fullmatch(component)
    return m.group(1) if m and _UID.fullmatch(m.group(1)) else None


def pod_uids(paths: list[str]) -> set[str]:
    """Every pod UID that the cgroup paths of a process (all hierarchies) name."""
    return {uid for p in paths for part in p.split("/") if (uid := uid_in_component(part))}


def in_pod(paths: list[str], uid: str) -> bool:
    """Whether a process with these cgroup paths runs in pod `uid`, and in no other.

    Every hierarchy that names a pod must name this one: a process cannot be
    in two pods, and a path naming another pod anywhere is not this pod's."""
    found = pod_uids(paths)
    return found == {uid}
