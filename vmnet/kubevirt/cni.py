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

Where the port's host end is plugged takes the reference `bridge` plugin's
keys where they mean the same (bridge, vlan, vlanTrunk, mtu, macspoofchk),
plus ovsBridge and routed (docs/networks.md). An `ipam` section is
delegated as libcni and the reference plugins delegate: the IPAM plugin
named by its type is run from CNI_PATH with the same environment and
configuration; its ips, routes and dns go into the result (the ips on the
pod-side interface) and to the port, whose address server serves them to
the guest. DEL delegates too; an ADD that fails after IPAM gave an address
gives it back.

Configuration (the NAD's `config`):
  {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet",
   "queues": 1, "backend": "veth", "mode": "auto", "mtu": 3506, "mac": "02:...",
   "leaseFrom": "eth1", "consumerUid": 107, "consumerGid": 107,
   "placeholderTap": true, "socket": "/run/vmnet/helper.sock",
   "bridge": "br1", "vlan": 10, "vlanTrunk": [{"id": 20}, {"minID": 30, "maxID": 39}],
   "macspoofchk": true, "ovsBridge": "br-int", "routed": false,
   "ipam": {"type": "host-local", "subnet": "10.10.0.0/24", "gateway": "10.10.0.1"},
   "runtimeConfig": {"mac": "02:..."}}
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from ..errors import HelperUnavailable, InvalidInput, NotFound, VmnetError
from ..fields import netns_id as _netns_id

SPEC_VERSION = "1.1.0"
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
KEYS = {"cniVersion", "name", "type", "queues", "backend", "mode", "mtu", "mac", "leaseFrom",
        "consumerUid", "consumerGid", "placeholderTap", "socket", "runtimeConfig", "args",
        "prevResult", "capabilities", "cniVersions", "disableCheck", "disableGC",
        "cni.dev/valid-attachments", "cni.dev/attachments", "ipam", "dns",
        "bridge", "vlan", "vlanTrunk", "macspoofchk", "ovsBridge", "routed"}
KUBEVIRT_UID = 107

# CNI's well-known error codes
E_VERSION, E_FIELD, E_UNKNOWN_CONTAINER, E_ENV, E_IO, E_DECODE, E_CONFIG = 1, 2, 3, 4, 5, 6, 7
E_TRY_AGAIN, E_UNAVAILABLE = 11, 50
E_ALREADY_EXISTS = 104              # vmnet's own: 100 + AlreadyExists' exit code


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


OWNER_MAX = 128
MAX_CONFIG = 1 << 20            # a network configuration (with its prevResult) is a few KiB


def owner(network: str) -> str:
    """The owner of the ports network `network` makes: "cni:<name>", or, for a name too long
    for an owner, its first characters and a digest of all of it, so that two networks whose
    names differ only past the cut never own each other's ports. Pure."""
    plain = f"cni:{network}"
    if len(plain) <= OWNER_MAX:
        return plain
    digest = hashlib.sha256(network.encode()).hexdigest()[:32]
    return f"cni:{network[:OWNER_MAX - 4 - 33]}~{digest}"


def load_json(data: bytes | str, what: str):
    """JSON from a runtime or a plugin, bounded: too large, too deeply nested or not JSON at all
    is a CNI decoding error naming `what`, never a traceback."""
    if len(data) > MAX_CONFIG:
        raise CniError(E_DECODE, f"{what} is {len(data)} bytes, more than the {MAX_CONFIG} vmnet reads")
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(E_DECODE, f"{what} is not JSON ({exc})") from None
    except RecursionError:
        raise CniError(E_DECODE, f"{what} is nested too deeply to be a network configuration") from None


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
    conf = load_json(data or b"null", "the network configuration on stdin")
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


def check_keys(conf: dict) -> None:
    unknown = sorted(set(conf) - KEYS)
    if unknown:
        raise CniError(E_FIELD, f"unknown field(s) in network {conf.get('name')!r}: {', '.join(unknown)}",
                       "vmnet knows: " + ", ".join(sorted(KEYS - {"prevResult", "args"})))


def trunk_of(value) -> list:
    """The bridge plugin's vlanTrunk ([{"id": 10}, {"minID": 20, "maxID": 29}]) as VLAN ranges."""
    if not isinstance(value, list) or not value:
        raise CniError(E_CONFIG, "field vlanTrunk must be a non-empty list of {\"id\"} or {\"minID\", \"maxID\"}")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not (set(entry) == {"id"} or set(entry) == {"minID", "maxID"}):
            raise CniError(E_CONFIG, f"vlanTrunk entry {json.dumps(entry)} is not {{\"id\": N}} or "
                                     "{\"minID\": N, \"maxID\": M}")
        out.append([entry["id"], entry["id"]] if "id" in entry else [entry["minID"], entry["maxID"]])
    return out


def attachment(conf: dict, ipam: dict | None = None):
    """Where the port is plugged and what its guest is told: the configuration's keys and the
    IPAM plugin's result (its ips, routes and dns)."""
    from ..network import attachment_from_options
    routed = _field(conf, "routed", bool, False)
    if routed and not ipam:
        raise InvalidInput("a routed network needs addresses for its VMs", fix='add an "ipam" section')
    options = {"bridge": _field(conf, "bridge", str, None), "ovs": _field(conf, "ovsBridge", str, None),
               "routed": routed, "vlan": _field(conf, "vlan", int, None),
               "spoofcheck": _field(conf, "macspoofchk", bool, True)}
    if "vlanTrunk" in conf:
        options["trunk"] = trunk_of(conf["vlanTrunk"])
    if ipam:
        ips = [ip for ip in ipam.get("ips") or [] if isinstance(ip, dict) and isinstance(ip.get("address"), str)]
        if routed:          # a routed VM's addresses are its own: host routes, whatever the subnet
            options["addresses"] = [ip["address"].split("/")[0] for ip in ips]
        else:
            options["addresses"] = [ip["address"] for ip in ips]
            for ip in ips:
                if isinstance(ip.get("gateway"), str):
                    key = "gateway6" if ":" in ip["gateway"] else "gateway4"
                    options.setdefault(key, ip["gateway"])
        gateways = {4: options.get("gateway4"), 6: options.get("gateway6")}
        routes = []
        for r in ipam.get("routes") or []:
            if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
                continue
            gw = r.get("gw") or gateways[6 if ":" in r["dst"] else 4]
            if routed or not gw or r["dst"] in ("0.0.0.0/0", "::/0"):
                continue        # a routed guest's routes are vmnet's; default routes go with the gateway
            routes.append({"dst": r["dst"], "gw": gw})
        options["routes"] = routes
        dns = ipam.get("dns") or conf.get("dns") or {}      # as the bridge plugin: the network's own dns
        if isinstance(dns, dict):
            options["dns"] = [n for n in dns.get("nameservers") or [] if isinstance(n, str)]
            search = [s for s in dns.get("search") or [] if isinstance(s, str)]
            if not search and isinstance(dns.get("domain"), str):
                search = [dns["domain"]]
            options["search"] = search
    return attachment_from_options(**options)


def port_args(conf: dict, env: dict, ipam: dict | None = None) -> dict:
    """The helper's port-create arguments for an ADD, every field checked first."""
    check_keys(conf)
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
    try:
        if ipam is not None or not conf.get("ipam"):      # else checked once IPAM has answered
            out["attachment"] = attachment(conf, ipam).to_dict()
    except InvalidInput as exc:
        raise CniError(E_CONFIG, f"network {network!r}: {exc.message}", exc.fix or "") from None
    # the same rules the helper applies, before anything is asked of it
    from ..model import PortSpec
    try:
        PortSpec(**{k: v for k, v in out.items() if k not in ("owner", "pod")})
        from ..pod import validate_pod
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


def result(version: str, record: dict, netns: str, prev: dict | None = None, ipam: dict | None = None,
           dns: dict | None = None) -> dict:
    """The ADD result: the previous plugin's, plus the port's interfaces (the host end without a
    sandbox, the consumer end in the pod) and what IPAM gave (its ips on the pod-side interface).
    The placeholder tap is not listed: Multus would report it as a second interface of this
    network, and KubeVirt would take it for the pod's."""
    out = dict(prev or {})
    interfaces = list(out.get("interfaces") or [])
    from ..fields import has_host_end
    if has_host_end(record):
        interfaces.append({"name": record["host_ifname"]})
    interfaces.append({"name": record["consumer_ifname"], "mac": record["mac"], "sandbox": netns})
    out["interfaces"] = interfaces
    out.setdefault("ips", [])
    out.setdefault("dns", {})
    if ipam:
        pod_side = len(interfaces) - 1
        out["ips"] = list(out["ips"]) + [dict({k: v for k, v in ip.items() if k != "interface"}, interface=pod_side)
                                         for ip in ipam.get("ips") or [] if isinstance(ip, dict)]
        if ipam.get("routes"):
            out["routes"] = list(out.get("routes") or []) + list(ipam["routes"])
        if ipam.get("dns"):
            out["dns"] = ipam["dns"]
    if dns and not out.get("dns"):
        out["dns"] = dns            # the network's own, as the bridge plugin reports it
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


def _exists(conf: dict, name: str) -> dict | None:
    try:
        return _call(conf, "port-show", name=name)
    except NotFound:
        return None


def refuse_host_netns(ref: str) -> None:
    """A CNI_NETNS that is pid 1's netns or this plugin's own (the runtime's: the host's) is
    never a pod's. The helper refuses it too, and decides; this says so before anything is
    asked of it."""
    from ..fields import HOST_NETNS_INO
    here, own = _netns_id(ref), _netns_id("/proc/self/ns/net")
    if here is None or own is None:
        return                              # the helper says what is wrong with it
    nsfs = own.split(":")[0]
    host = here == f"{nsfs}:{HOST_NETNS_INO}" or here == _netns_id("/proc/1/ns/net")
    for whose, same in (("the host's (the initial one, pid 1's)", host),
                        ("the CNI plugin's own (the container runtime's)", here == own)):
        if same:
            raise CniError(E_ENV, f"CNI_NETNS {ref} is {whose} network namespace, not a pod's: vmnet puts "
                                  "a pod's port only in that pod's own",
                           "give the pod sandbox's network namespace as CNI_NETNS")


def refuse_ifname_collision(conf: dict, env: dict) -> None:
    """CNI_IFNAME, or the placeholder tap named after it, is already a device of another
    attachment's port in this pod: say so and whose, before the helper meets the name taken."""
    here = _netns_id(env["CNI_NETNS"])
    if here is None:
        return
    ifname = env["CNI_IFNAME"]
    mine = [ifname] + ([tap_name(ifname)] if _field(conf, "placeholderTap", bool, True) else [])
    for record in _call(conf, "port-list")["ports"]:
        if record.get("consumer_netns_id") != here:
            continue
        theirs = {record.get("placeholder_tap"): "the placeholder tap",
                  record.get("consumer_ifname"): "the pod-side interface"}
        clash = next((n for n in mine if n in theirs), None)
        if clash is None:
            continue
        pod, owner_ = record.get("consumer_pod") or {}, str(record.get("owner") or "")
        other = pod.get("container_id")
        whose = " of ".join(part for part in (f"container {other}" if other else "",
                                              f"network {owner_[4:]!r}" if owner_.startswith("cni:") else "")
                            if part)
        first = f"the attachment of container {other}" if other else "the other attachment"
        raise CniError(E_ALREADY_EXISTS,
                       f"interface {clash} already exists in {env['CNI_NETNS']}: it is {theirs[clash]} of "
                       f"another attachment, port {record['name']}{f' ({whose})' if whose else ''}",
                       "each attachment in a pod needs an interface name of its own (and its placeholder "
                       "tap is 'tap' + the name from its 4th character): give this attachment another "
                       f"interface name, or DEL {first} first")


def cmd_add(conf: dict, env: dict, stdin: bytes = b"") -> dict:
    _env(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    port_args(conf, env)                    # refuse a bad configuration before IPAM gives anything
    refuse_host_netns(env["CNI_NETNS"])
    name = port_name(env["CNI_CONTAINERID"], conf["name"], env["CNI_IFNAME"])
    if _exists(conf, name) is not None:
        raise CniError(E_ALREADY_EXISTS, f"interface {env['CNI_IFNAME']} of container {env['CNI_CONTAINERID']} "
                                         f"already exists on network {conf['name']!r} (port {name})",
                       "the CNI spec refuses a second ADD for the same container and interface: DEL it first")
    refuse_ifname_collision(conf, env)
    ipam = delegate("ADD", conf, env, stdin) if conf.get("ipam") else None
    try:
        args = port_args(conf, env, ipam)
        record = _call(conf, "port-create", **args)
    except BaseException:
        if ipam is not None:
            try:
                delegate("DEL", conf, env, stdin)       # give the address back
            except CniError:
                pass
        raise
    return result(conf["cniVersion"], record, env["CNI_NETNS"], conf.get("prevResult"), ipam, conf.get("dns"))


def cmd_del(conf: dict, env: dict, stdin: bytes = b"") -> None:
    _env(env, "CNI_CONTAINERID", "CNI_IFNAME")
    name = port_name(env["CNI_CONTAINERID"], _field(conf, "name", str), env["CNI_IFNAME"])
    record = _exists(conf, name)
    if record is not None:
        if record.get("owner") != owner(conf["name"]):
            raise CniError(E_CONFIG, f"port {name} does not belong to network {conf['name']!r}; not deleted")
        _call(conf, "port-delete", name=name, missing_ok=True)
    if conf.get("ipam"):
        delegate("DEL", conf, env, stdin)      # also when the port was gone: DEL is idempotent


# ---- IPAM, delegated as libcni delegates -------------------------------------

def find_plugin(kind: str, env: dict) -> str:
    if not isinstance(kind, str) or not kind or "/" in kind or kind.startswith("."):
        raise CniError(E_CONFIG, f"ipam type {kind!r} is not a plugin name", 'give e.g. "host-local"')
    for d in (env.get("CNI_PATH") or "").split(":"):
        path = os.path.join(d, kind)
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CniError(E_CONFIG, f"the IPAM plugin {kind!r} is not in CNI_PATH ({env.get('CNI_PATH') or 'unset'})",
                   "install it (Debian: containernetworking-plugins) or fix ipam.type")


def delegate(command: str, conf: dict, env: dict, stdin: bytes) -> dict | None:
    """Run the IPAM plugin with the same configuration and environment; its result (ADD)."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CniError(E_CONFIG, "field ipam must be an object with a type")
    plugin = find_plugin(ipam.get("type"), env)
    try:
        out = subprocess.run([plugin], input=stdin, env=dict(env, CNI_COMMAND=command), capture_output=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(E_IO, f"the IPAM plugin {ipam['type']} could not run ({exc})") from None
    body = None
    if out.stdout.strip():
        body = load_json(out.stdout, f"what the IPAM plugin {ipam['type']} printed")
    if out.returncode != 0:
        err = body if isinstance(body, dict) else {}
        raise CniError(err.get("code") if isinstance(err.get("code"), int) else E_IO,
                       f"IPAM {ipam['type']} {command}: {err.get('msg') or out.stderr.decode(errors='replace').strip()}",
                       str(err.get("details") or ""))
    if command == "ADD":
        if not isinstance(body, dict):
            raise CniError(E_DECODE, f"the IPAM plugin {ipam['type']} returned no result")
        return body
    return None


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
    try:
        if command in ("ADD", "DEL"):
            return (cmd_add if command == "ADD" else cmd_del)(conf, env, stdin)
        return {"CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}[command](conf, env)
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
        version = load_json(stdin or b"{}", "stdin").get("cniVersion") or SPEC_VERSION
    except (CniError, AttributeError):
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
