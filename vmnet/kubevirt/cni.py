"""`vmnet` as a CNI plugin: a pod's port, made at sandbox creation (/opt/cni/bin/vmnet).

The container runtime (through Multus, for KubeVirt's binding plugin) runs
it as root with the CNI environment and the network configuration on
stdin, and reads the result or error from stdout (CNI spec 1.1.0; results
in the 1.0.0 shape, or the 0.4.0/0.3.x shape when the configuration asks
for that version, as Multus still does). It is a thin client: the helper
makes and removes everything.

ADD asks the helper (admin socket) for a port in CNI_NETNS whose consumer
end is CNI_IFNAME, with the placeholder tap KubeVirt's `domainAttachmentType:
tap` opens (`tap` + CNI_IFNAME[3:], as KubeVirt names it), owned by the
consumer (uid/gid 107 by default), and scoped to the pod: K8S_POD_UID from
CNI_ARGS, and the netns the helper records. DEL deletes it, idempotently,
also when the netns is gone. CHECK asks the helper whether it is whole.
GC deletes this network's ports that no valid attachment names. STATUS says
whether the helper answers. The port's name is derived from (container id,
network name, ifname), the triple CNI identifies an attachment by, so DEL
and GC find it without any state of their own.

Configuration (the NAD's `config`):
  {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet",
   "queues": 1, "backend": "veth", "mode": "auto", "mtu": 3506, "mac": "02:...",
   "leaseFrom": "eth1", "consumerUid": 107, "consumerGid": 107,
   "placeholderTap": true, "socket": "/run/vmnet/helper.sock",
   "runtimeConfig": {"mac": "02:..."}}
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from ..errors import AlreadyExists, HelperUnavailable, InvalidInput, NotFound, VmnetError

SPEC_VERSION = "1.1.0"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
KEYS = {"cniVersion", "name", "type", "queues", "backend", "mode", "mtu", "mac", "leaseFrom",
        "consumerUid", "consumerGid", "placeholderTap", "socket", "runtimeConfig", "args",
        "prevResult", "capabilities", "cniVersions", "disableCheck", "disableGC",
        "cni.dev/valid-attachments", "cni.dev/attachments", "ipam", "dns"}
KUBEVIRT_UID = 107

# CNI's well-known error codes
E_VERSION, E_FIELD, E_UNKNOWN_CONTAINER, E_ENV, E_IO, E_DECODE, E_CONFIG = 1, 2, 3, 4, 5, 6, 7
E_TRY_AGAIN, E_UNAVAILABLE = 11, 50


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


# ---- pure: configuration, names, results --------------------------------

def port_name(container_id: str, network: str, ifname: str) -> str:
    """The port of one attachment: 'k' + 10 hex digits (port names hold 11 characters)."""
    return "k" + hashlib.sha256(f"{container_id}/{network}/{ifname}".encode()).hexdigest()[:10]


def tap_name(ifname: str) -> str:
    """The tap KubeVirt's converter looks for: 'tap' + the pod interface name after its first
    three characters (pod<hash> -> tap<hash>, net1 -> tap1, eth0 -> tap0)."""
    return "tap" + ifname[3:]


def owner(network: str) -> str:
    return f"cni:{network}"[:128]


def parse_cni_args(text: str) -> dict:
    """CNI_ARGS: 'K=V;K=V' (IgnoreUnknown=1;K8S_POD_NAMESPACE=...;K8S_POD_UID=...)."""
    out = {}
    for part in (text or "").split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(E_ENV, f"CNI_ARGS part {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_config(data: bytes) -> dict:
    try:
        conf = json.loads(data.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(E_DECODE, f"the network configuration on stdin is not JSON ({exc})") from None
    if not isinstance(conf, dict):
        raise CniError(E_DECODE, "the network configuration on stdin must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(E_CONFIG, "the network configuration has no cniVersion",
                       'add "cniVersion": "1.0.0"')
    if version not in SUPPORTED:
        raise CniError(E_VERSION, f"cniVersion {version} is not supported",
                       f"use one of {', '.join(SUPPORTED)}")
    return conf


def port_args(conf: dict, env: dict) -> dict:
    """The helper's port-create arguments for an ADD, every field checked first."""
    unknown = sorted(set(conf) - KEYS)
    if unknown:
        raise CniError(E_FIELD, f"unknown field(s) in network {conf.get('name')!r}: {', '.join(unknown)}",
                       "vmnet knows: " + ", ".join(sorted(KEYS - {"prevResult", "args"})))
    if conf.get("ipam"):
        raise CniError(E_FIELD, "field ipam: vmnet gives the VM its NIC, not an address; the guest "
                                "configures its own", "remove ipam from the network configuration")
    network = _field(conf, "name", str)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    pod_uid = args.get("K8S_POD_UID")
    if not pod_uid:
        raise CniError(E_ENV, "CNI_ARGS carries no K8S_POD_UID: vmnet hands a pod's sockets only to "
                              "that pod, and needs its UID",
                       "use a runtime that passes K8S_POD_UID (containerd, CRI-O)")
    runtime = conf.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CniError(E_CONFIG, "field runtimeConfig must be an object")
    mac = runtime.get("mac") or conf.get("mac")
    uid = _field(conf, "consumerUid", int, KUBEVIRT_UID)
    out = {
        "name": port_name(env["CNI_CONTAINERID"], network, env["CNI_IFNAME"]),
        "netns": env["CNI_NETNS"],
        "consumer_name": env["CNI_IFNAME"],
        "queues": _field(conf, "queues", int, 1),
        "backend": _field(conf, "backend", str, "veth"),
        "mode": _field(conf, "mode", str, "auto"),
        "consumer_uid": uid,
        "consumer_gid": _field(conf, "consumerGid", int, uid),
        "owner": owner(network),
        "pod": {k: v for k, v in (("uid", pod_uid), ("namespace", args.get("K8S_POD_NAMESPACE")),
                                  ("name", args.get("K8S_POD_NAME")),
                                  ("container_id", args.get("K8S_POD_INFRA_CONTAINER_ID")
                                   or env["CNI_CONTAINERID"])) if v},
    }
    if _field(conf, "placeholderTap", bool, True):
        out["placeholder_tap"] = tap_name(env["CNI_IFNAME"])
    for key, field, kind in (("mtu", "mtu", int), ("lease_from", "leaseFrom", str)):
        value = _field(conf, field, kind, None)
        if value is not None:
            out[key] = value
    if mac is not None:
        if not isinstance(mac, str):
            raise CniError(E_CONFIG, "field mac (or runtimeConfig.mac) must be a string")
        out["mac"] = mac
    # the same rules the helper applies, before anything is asked of it
    from ..model import PortSpec
    try:
        PortSpec(**{k: v for k, v in out.items() if k not in ("owner", "pod")})
        from .pod import validate_pod
        validate_pod(out["pod"])
    except InvalidInput as exc:
        raise CniError(E_CONFIG, f"network {network!r}: {exc.message}", exc.fix or "") from None
    return out


def _field(conf: dict, key: str, kind, default=...):
    if key not in conf:
        if default is ...:
            raise CniError(E_CONFIG, f"the network configuration has no {key}")
        return default
    value = conf[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CniError(E_CONFIG, f"field {key} must be {'a number' if kind is int else kind.__name__}, "
                                 f"not {json.dumps(value)}")
    return value


def result(version: str, record: dict, netns: str, prev: dict | None = None) -> dict:
    """The ADD result: the previous plugin's, plus the port's interfaces (the host end without a
    sandbox, the consumer end in the pod). The placeholder tap is not listed: Multus would report
    it as a second interface of this network, and KubeVirt would take it for the pod's."""
    out = dict(prev or {})
    interfaces = list(out.get("interfaces") or [])
    from ..model import has_host_end
    if has_host_end(record):
        interfaces.append({"name": record["host_ifname"]})
    interfaces.append({"name": record["consumer_ifname"], "mac": record["mac"], "sandbox": netns})
    out["interfaces"] = interfaces
    out.setdefault("ips", [])
    out.setdefault("dns", {})
    return convert(out, version)


def convert(res: dict, version: str) -> dict:
    """A result in the shape of `version`: 0.3.x/0.4.0 IPs carry "version", 1.x ones do not."""
    out = json.loads(json.dumps(res))
    out["cniVersion"] = version
    for ip in out.get("ips", []):
        if version.startswith("0."):
            ip.setdefault("version", "6" if ":" in ip.get("address", "") else "4")
        else:
            ip.pop("version", None)
    if version.startswith("0.") and not out.get("dns"):
        out.pop("dns", None)
    return out


# ---- commands ---------------------------------------------------------------

def _env(env: dict, *names) -> None:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise CniError(E_ENV, f"the environment has no {', '.join(missing)}",
                       "run vmnet as a CNI plugin, by a container runtime or Multus")


def _socket(conf: dict) -> str:
    if "socket" in conf:
        return _field(conf, "socket", str)
    from ..config import load
    return load().socket


def _call(conf: dict, verb: str, **args) -> dict:
    from ..client import call
    return call(_socket(conf), verb, **args)


def cmd_add(conf: dict, env: dict) -> dict:
    _env(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    args = port_args(conf, env)
    try:
        record = _call(conf, "port-create", **args)
    except AlreadyExists:
        # the same attachment again (a runtime that retried an ADD): the port it made, if whole
        record = _call(conf, "port-show", name=args["name"])
        if record.get("owner") != args["owner"] or record.get("health") \
                or (record.get("consumer_pod") or {}).get("uid") != args["pod"]["uid"]:
            raise
    return result(conf["cniVersion"], record, env["CNI_NETNS"], conf.get("prevResult"))


def cmd_del(conf: dict, env: dict) -> None:
    _env(env, "CNI_CONTAINERID", "CNI_IFNAME")
    name = port_name(env["CNI_CONTAINERID"], _field(conf, "name", str), env["CNI_IFNAME"])
    try:
        record = _call(conf, "port-show", name=name)
    except NotFound:
        return                          # deleted already, or never made: DEL succeeds
    if record.get("owner") != owner(conf["name"]):
        raise CniError(E_CONFIG, f"port {name} does not belong to network {conf['name']!r}; not deleted")
    _call(conf, "port-delete", name=name, missing_ok=True)


def cmd_check(conf: dict, env: dict) -> None:
    _env(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    name = port_name(env["CNI_CONTAINERID"], _field(conf, "name", str), env["CNI_IFNAME"])
    try:
        record = _call(conf, "port-show", name=name)
    except NotFound:
        raise CniError(E_UNKNOWN_CONTAINER, f"the port of this attachment ({name}) does not exist",
                       "delete and re-add the attachment") from None
    problems = []
    if record.get("health"):
        problems.append(record["health"])
    if record.get("consumer_ifname") != env["CNI_IFNAME"]:
        problems.append(f"its consumer end is {record.get('consumer_ifname')}, not {env['CNI_IFNAME']}")
    try:
        st = os.stat(env["CNI_NETNS"])
        if record.get("consumer_netns_id") != f"{st.st_dev}:{st.st_ino}":
            problems.append(f"it was made in another network namespace than {env['CNI_NETNS']}")
    except OSError as exc:
        problems.append(f"{env['CNI_NETNS']} cannot be read ({exc.strerror})")
    prev = conf.get("prevResult") or {}
    if prev and not any(i.get("name") == env["CNI_IFNAME"] for i in prev.get("interfaces", [])):
        problems.append(f"prevResult lists no interface {env['CNI_IFNAME']}")
    if problems:
        raise CniError(100, f"port {name} is not as ADD made it: {'; '.join(problems)}",
                       "delete and re-add the attachment")


def cmd_gc(conf: dict, env: dict) -> None:
    valid = conf.get("cni.dev/valid-attachments")
    if not isinstance(valid, list):
        raise CniError(E_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
    network = _field(conf, "name", str)
    keep = set()
    for a in valid:
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) \
                or not isinstance(a.get("ifname"), str):
            raise CniError(E_CONFIG, "each cni.dev/valid-attachments entry needs containerID and ifname")
        keep.add(port_name(a["containerID"], network, a["ifname"]))
    for record in _call(conf, "port-list")["ports"]:
        if record.get("owner") == owner(network) and record["name"] not in keep:
            _call(conf, "port-delete", name=record["name"], missing_ok=True)


def cmd_status(conf: dict, env: dict) -> None:
    try:
        _call(conf, "status")
    except HelperUnavailable as exc:
        raise CniError(E_UNAVAILABLE, f"the vmnet helper does not answer: {exc.message}", exc.fix or "") \
            from None


def run(command: str, stdin: bytes, env: dict) -> dict | None:
    """One CNI invocation: its result (None: nothing to print), or a CniError."""
    if command not in COMMANDS:
        raise CniError(E_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        try:
            version = parse_config(stdin).get("cniVersion", SPEC_VERSION) if stdin.strip() else SPEC_VERSION
        except CniError:
            version = SPEC_VERSION
        return {"cniVersion": version, "supportedVersions": list(SUPPORTED)}
    conf = parse_config(stdin)
    if command in ("GC", "STATUS") and conf["cniVersion"] != "1.1.0":
        raise CniError(E_VERSION, f"{command} needs cniVersion 1.1.0, the configuration says "
                                  f"{conf['cniVersion']}")
    if command == "CHECK" and conf["cniVersion"] in ("0.3.0", "0.3.1"):
        raise CniError(E_VERSION, f"CHECK needs cniVersion 0.4.0 or later, not {conf['cniVersion']}")
    handler = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}[command]
    try:
        return handler(conf, env)
    except CniError:
        raise
    except HelperUnavailable as exc:
        raise CniError(E_TRY_AGAIN, exc.message, exc.fix or "") from None
    except NotFound as exc:
        if command == "ADD" and "network namespace" in exc.message:
            raise CniError(E_UNKNOWN_CONTAINER, exc.message, exc.fix or "") from None
        raise CniError(100 + exc.exit_code, exc.message, exc.fix or "") from None
    except InvalidInput as exc:
        raise CniError(E_CONFIG, exc.message, exc.fix or "") from None
    except VmnetError as exc:
        raise CniError(100 + exc.exit_code, str(exc).split("\n")[0], exc.fix or "") from None


def main():
    env = dict(os.environ)
    stdin = sys.stdin.buffer.read()
    version = SPEC_VERSION
    try:
        version = json.loads(stdin or b"{}").get("cniVersion") or SPEC_VERSION
    except (ValueError, AttributeError):
        pass
    try:
        out = run(env.get("CNI_COMMAND", ""), stdin, env)
    except CniError as exc:
        err = {"cniVersion": version if version in SUPPORTED else SPEC_VERSION, "code": exc.code,
               "msg": exc.msg}
        if exc.details:
            err["details"] = exc.details
        sys.stdout.write(json.dumps(err) + "\n")
        sys.exit(1)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
