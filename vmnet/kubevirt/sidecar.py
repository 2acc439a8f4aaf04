"""The binding sidecar: KubeVirt's hook server that points a VMI's domain at the wrapper.

virt-launcher finds hook sockets under /var/run/kubevirt-hooks (the sidecar
sees its own sub-directory there), asks each `Info`, and calls the newest
`Callbacks` version both serve (v1alpha3, else v1alpha2). For a VMI with an
interface bound to this plugin (`binding: {name: vmnet}`), `OnDefineDomain`
changes exactly two things in the domain KubeVirt made:

- `<devices><emulator>` becomes the mounted wrapper
  (/var/run/vmnet/runtime/bin/vmnet-qemu-wrapper);
- `<qemu:commandline>` gets `<qemu:env>` VMNET_SOCKET (the mounted
  consumer socket) and VMNET_QEMU (the emulator KubeVirt had chosen, else
  the launcher's /usr/libexec/qemu-kvm), replacing earlier ones of vmnet.

Every other element, attribute, text, comment and namespace stays as it
was. KubeVirt writes the NIC itself (`domainAttachmentType: tap`: an
`<interface type='ethernet'>` with alias `ua-<name>`); a vmnet interface
without one is refused, saying which setting is missing. A VMI with no
vmnet interface gets its domain back byte for byte. The XML rules are pure
(edit_domain); the gRPC server is below.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import xml.etree.ElementTree as ET

from ..domain_metadata import QEMU_NS, parse_domain
from ..errors import InvalidInput
from ..libvirt.domain_xml import qemu_commandline

log = logging.getLogger("vmnet.sidecar")
HOOK_DIR = "/var/run/kubevirt-hooks"
POD_WRAPPER = "/var/run/vmnet/runtime/bin/vmnet-qemu-wrapper"
POD_SOCKET = "/var/run/vmnet/consumer/consumer.sock"
LAUNCHER_QEMU = "/usr/libexec/qemu-kvm"
ENV_NAMES = ("VMNET_SOCKET", "VMNET_QEMU")
VERSIONS = ("v1alpha3", "v1alpha2")


class Settings:
    __slots__ = ("binding", "wrapper", "socket", "qemu")

    def __init__(self, binding: str = "vmnet", wrapper: str = POD_WRAPPER, socket: str = POD_SOCKET,
                 qemu: str = LAUNCHER_QEMU):
        for label, path in (("wrapper", wrapper), ("consumer socket", socket), ("QEMU", qemu)):
            if not os.path.isabs(path):
                raise InvalidInput(f"the {label} path {path!r} must be absolute (as the compute container sees it)")
        self.binding, self.wrapper, self.socket, self.qemu = binding, wrapper, socket, qemu


def vmnet_interfaces(vmi: dict, binding: str) -> list[str]:
    """Names of the VMI's interfaces bound to this plugin."""
    try:
        interfaces = vmi.get("spec", {}).get("domain", {}).get("devices", {}).get("interfaces") or []
    except AttributeError:
        raise InvalidInput("the VMI is not a VirtualMachineInstance object") from None
    return [i.get("name") for i in interfaces
            if isinstance(i, dict) and isinstance(i.get("binding"), dict) and i["binding"].get("name") == binding]


def edit_domain(xml: bytes, vmi_json: bytes, settings: Settings) -> bytes:
    """The domain for a VMI: pointed at the wrapper when the VMI has vmnet interfaces."""
    try:
        vmi = json.loads(vmi_json or b"{}")
    except ValueError as exc:
        raise InvalidInput(f"the VMI is not JSON ({exc})") from None
    if not isinstance(vmi, dict):
        raise InvalidInput("the VMI is not a JSON object")
    names = vmnet_interfaces(vmi, settings.binding)
    root = parse_domain(xml)                       # malformed XML is refused even when nothing changes
    if not names:
        return xml
    devices = root.find("devices")
    if devices is None:
        raise InvalidInput("the domain has no <devices>")
    aliases = {a.get("name"): iface for iface in devices.findall("interface")
               for a in iface.findall("alias")}
    for name in names:
        iface = aliases.get("ua-" + name)
        if iface is None:
            raise InvalidInput(
                f"VMI interface {name!r} is bound to {settings.binding!r}, but the domain has no "
                f"<interface> with alias ua-{name}",
                fix="register the binding with domainAttachmentType: tap in the KubeVirt CR "
                    f"(spec.configuration.network.binding.{settings.binding}), so KubeVirt writes the NIC")
        if iface.get("type") != "ethernet" or iface.find("target") is None:
            raise InvalidInput(f"the domain's NIC ua-{name} is <interface type={iface.get('type')!r}>, "
                               "not a tap (type='ethernet' with a target)",
                               fix="register the binding with domainAttachmentType: tap")
    emulator = devices.find("emulator")
    if emulator is None:
        emulator = ET.Element("emulator")
        devices.insert(0, emulator)
        emulator.tail = devices.text
    env = {e.get("name"): e.get("value") for cmd in root.findall(f"{{{QEMU_NS}}}commandline")
           for e in cmd.findall(f"{{{QEMU_NS}}}env")}
    chosen = (emulator.text or "").strip()
    real = env.get("VMNET_QEMU") if chosen == settings.wrapper else chosen
    emulator.text = settings.wrapper
    cmd = qemu_commandline(root)
    for old in [e for e in cmd.findall(f"{{{QEMU_NS}}}env") if e.get("name") in ENV_NAMES]:
        cmd.remove(old)
    for name, value in (("VMNET_SOCKET", settings.socket), ("VMNET_QEMU", real or settings.qemu)):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}env", {"name": name, "value": value})
    return ET.tostring(root, encoding="unicode").encode()


# ---- the gRPC server --------------------------------------------------------

def serve(settings: Settings, socket_path: str, name: str = "vmnet", ready=None) -> None:
    """Serve Info and Callbacks v1alpha2/v1alpha3 on socket_path until Shutdown (or a signal)."""
    import signal
    from concurrent import futures

    import grpc

    from .proto import (hooks_info_pb2, hooks_info_pb2_grpc, hooks_v1alpha2_pb2, hooks_v1alpha2_pb2_grpc,
                        hooks_v1alpha3_pb2, hooks_v1alpha3_pb2_grpc)
    stop = threading.Event()

    class Info(hooks_info_pb2_grpc.InfoServicer):
        def Info(self, request, context):
            return hooks_info_pb2.InfoResult(
                name=name, versions=list(VERSIONS),
                hookPoints=[hooks_info_pb2.HookPoint(name="OnDefineDomain", priority=0),
                            hooks_info_pb2.HookPoint(name="Shutdown", priority=0)])

    def on_define(pb2):
        def handler(self, request, context):
            try:
                out = edit_domain(request.domainXML, request.vmi, settings)
            except InvalidInput as exc:
                log.warning("OnDefineDomain refused: %s", exc)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"vmnet: {exc}")
            log.info("OnDefineDomain: %s", "domain pointed at the wrapper" if out != request.domainXML
                     else "no vmnet interface, domain unchanged")
            return pb2.OnDefineDomainResult(domainXML=out)
        return handler

    def pre_cloud_init(pb2):
        def handler(self, request, context):
            return pb2.PreCloudInitIsoResult(cloudInitNoCloudSource=request.cloudInitNoCloudSource,
                                             cloudInitData=request.cloudInitData)
        return handler

    class V1alpha2(hooks_v1alpha2_pb2_grpc.CallbacksServicer):
        OnDefineDomain = on_define(hooks_v1alpha2_pb2)
        PreCloudInitIso = pre_cloud_init(hooks_v1alpha2_pb2)

    class V1alpha3(hooks_v1alpha3_pb2_grpc.CallbacksServicer):
        OnDefineDomain = on_define(hooks_v1alpha3_pb2)
        PreCloudInitIso = pre_cloud_init(hooks_v1alpha3_pb2)

        def Shutdown(self, request, context):
            log.info("Shutdown: the launcher is done with this VMI")
            stop.set()
            return hooks_v1alpha3_pb2.ShutdownResult()

    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    hooks_info_pb2_grpc.add_InfoServicer_to_server(Info(), server)
    hooks_v1alpha2_pb2_grpc.add_CallbacksServicer_to_server(V1alpha2(), server)
    hooks_v1alpha3_pb2_grpc.add_CallbacksServicer_to_server(V1alpha3(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("listening on %s (binding %s, wrapper %s)", socket_path, settings.binding, settings.wrapper)
    if ready:
        ready()
    while not stop.wait(1.0):
        pass
    server.stop(grace=2).wait()
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
