"""The binding sidecar, driven the way virt-launcher's hook manager drives it.

The sidecar runs as its own process on a Unix socket laid out as the compute
container sees the hook directory (/var/run/kubevirt-hooks/hook-sidecar-0/
vmnet.sock). The client does what pkg/hooks/manager.go does: list the
directory's sub-directories, take every non-directory entry in them as a
socket, dial it with authority "localhost", call Info with a 1 s deadline,
pick the newest version both speak, call OnDefineDomain(domainXML, vmi
JSON) with a 60 s deadline, and Shutdown at the end.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (the kubevirt extra: install.sh installs it)")

from vmnet.kubevirt import sidecar  # noqa: E402
from vmnet.kubevirt.proto import (hooks_info_pb2, hooks_info_pb2_grpc, hooks_v1alpha2_pb2,  # noqa: E402
                                  hooks_v1alpha2_pb2_grpc, hooks_v1alpha3_pb2, hooks_v1alpha3_pb2_grpc)

pytestmark = pytest.mark.unit

DOMAIN = (pathlib.Path(__file__).parent / "golden" / "kubevirt-domain.xml").read_bytes()
QEMU = "{http://libvirt.org/schemas/domain/qemu/1.0}"
KNOWN = ("v1alpha3", "v1alpha2", "v1alpha1")      # newest first, as the manager prefers them


def vmi(*bindings) -> bytes:
    interfaces = [{"name": "fast", "binding": {"name": b}} for b in bindings] + [{"name": "default", "masquerade": {}}]
    return json.dumps({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                       "metadata": {"name": "vmi-fast", "namespace": "default"},
                       "spec": {"domain": {"devices": {"interfaces": interfaces}},
                                "networks": [{"name": "fast", "multus": {"networkName": "vmnet-fast"}},
                                             {"name": "default", "pod": {}}]}}).encode()


@pytest.fixture
def hooks(tmp_path):
    """A running sidecar under <tmp>/kubevirt-hooks/hook-sidecar-0/, and its process."""
    hook_dir = tmp_path / "kubevirt-hooks"
    sock = hook_dir / "hook-sidecar-0" / "vmnet.sock"
    proc = subprocess.Popen([sys.executable, "-I", "-m", "vmnet", "kubevirt", "sidecar", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, NETWORK_BINDING_PLUGIN_NAME="vmnet"))
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the sidecar did not listen"
        time.sleep(0.05)
    try:
        yield hook_dir, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


@pytest.fixture
def manager(hooks):
    with Manager(hooks[0]) as m:
        yield m


class Manager:
    """virt-launcher's hook manager, for the calls it makes."""

    def __init__(self, hook_dir: pathlib.Path):
        self.callbacks = []
        for sub in sorted(p for p in hook_dir.iterdir() if p.is_dir()):
            for entry in sorted(sub.iterdir()):
                if entry.is_dir():
                    continue            # sockets of the plugin's own, one level deeper, are not hooks
                channel = grpc.insecure_channel(f"unix:{entry}", options=[("grpc.default_authority", "localhost")])
                info = hooks_info_pb2_grpc.InfoStub(channel).Info(hooks_info_pb2.InfoParams(), timeout=1)
                version = next((v for v in KNOWN if v in info.versions), None)
                assert version, f"no version in common: {list(info.versions)}"
                self.callbacks.append((info, version, channel))

    def close(self):
        """Close every channel: grpc's core keeps an open channel's fds and threads (and
        re-creates its wakeup fd in this process at every later fork) until then."""
        for _, _, channel in self.callbacks:
            channel.close()
        self.callbacks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def stub(self, version=None):
        info, chosen, channel = self.callbacks[0]
        version = version or chosen
        grpc_mod = {"v1alpha3": hooks_v1alpha3_pb2_grpc, "v1alpha2": hooks_v1alpha2_pb2_grpc}[version]
        pb2 = {"v1alpha3": hooks_v1alpha3_pb2, "v1alpha2": hooks_v1alpha2_pb2}[version]
        return grpc_mod.CallbacksStub(channel), pb2

    def on_define_domain(self, xml: bytes, vmi_json: bytes, version=None) -> bytes:
        stub, pb2 = self.stub(version)
        return stub.OnDefineDomain(pb2.OnDefineDomainParams(domainXML=xml, vmi=vmi_json), timeout=60).domainXML

    def shutdown(self):
        stub, pb2 = self.stub("v1alpha3")
        stub.Shutdown(pb2.ShutdownParams(), timeout=10)


def canonical(root: ET.Element) -> str:
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def without_vmnets_edits(out: bytes) -> ET.Element:
    """The returned domain with the sidecar's two edits taken out again."""
    root = ET.fromstring(out)
    devices = root.find("devices")
    devices.remove(devices.find("emulator"))
    cmd = root.find(f"{QEMU}commandline")
    for env in [e for e in cmd.findall(f"{QEMU}env") if e.get("name") in sidecar.ENV_NAMES]:
        cmd.remove(env)
    return root


def test_info_says_what_the_manager_needs(hooks, manager):
    info, version, _ = manager.callbacks[0]
    assert info.name == "vmnet" and version == "v1alpha3" and list(info.versions) == ["v1alpha3", "v1alpha2"]
    assert {h.name for h in info.hookPoints} == {"OnDefineDomain", "Shutdown"}


@pytest.mark.parametrize("version", ["v1alpha3", "v1alpha2"])
def test_on_define_domain_changes_the_emulator_and_env_and_nothing_else(hooks, manager, version):
    out = manager.on_define_domain(DOMAIN, vmi("vmnet"), version)
    root = ET.fromstring(out)
    assert root.find("devices/emulator").text == sidecar.POD_WRAPPER
    env = {e.get("name"): e.get("value") for e in root.iter(f"{QEMU}env")}
    assert env == {"SOMEONE_ELSES": "kept", "VMNET_SOCKET": sidecar.POD_SOCKET, "VMNET_QEMU": sidecar.LAUNCHER_QEMU}
    # everything else, element by element, attribute by attribute, namespaces included
    assert canonical(without_vmnets_edits(out)) == canonical(ET.fromstring(DOMAIN))
    # the qemu prefix is libvirt's own; KubeVirt's metadata keeps its namespace (ElementTree
    # declares a default namespace on the root, under a prefix of its own: the same names)
    assert b"xmlns:qemu=" in out and root.find("metadata/{http://kubevirt.io}kubevirt") is not None
    # the manager's next step: the result is a domain again, and a second pass changes nothing
    assert manager.on_define_domain(out, vmi("vmnet"), version) == out


def test_a_vmi_without_a_vmnet_interface_gets_its_domain_back_byte_for_byte(hooks, manager):
    assert manager.on_define_domain(DOMAIN, vmi(), None) == DOMAIN
    assert manager.on_define_domain(DOMAIN, vmi("passt"), None) == DOMAIN


def test_the_emulator_kubevirt_chose_becomes_the_real_qemu():
    xml = DOMAIN.replace(b"<devices>", b"<devices>\n    <emulator>/usr/bin/qemu-system-aarch64</emulator>", 1)
    out = sidecar.edit_domain(xml, vmi("vmnet"), sidecar.Settings())
    env = {e.get("name"): e.get("value") for e in ET.fromstring(out).iter(f"{QEMU}env")}
    assert env["VMNET_QEMU"] == "/usr/bin/qemu-system-aarch64"
    assert ET.fromstring(out).find("devices/emulator").text == sidecar.POD_WRAPPER


@pytest.mark.parametrize("xml, vmi_json, words", [
    (b"<domain", vmi("vmnet"), "not well-formed"),
    (b"<network/>", vmi("vmnet"), "root element is <network>"),
    (DOMAIN, b"{nope", "not JSON"),
    (DOMAIN.replace(b'<alias name="ua-fast">', b'<alias name="ua-other">'), vmi("vmnet"),
     "no <interface> with alias ua-fast"),
    (DOMAIN.replace(b'<interface type="ethernet">', b'<interface type="bridge">', 1), vmi("vmnet"),
     "not a tap"),
])
def test_bad_input_is_a_grpc_error_and_the_server_keeps_serving(hooks, manager, xml, vmi_json, words):
    with pytest.raises(grpc.RpcError) as exc:
        manager.on_define_domain(xml, vmi_json)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in exc.value.details()
    if "alias" in words:
        assert "domainAttachmentType: tap" in exc.value.details()
    assert ET.fromstring(manager.on_define_domain(DOMAIN, vmi("vmnet"))).find("devices/emulator") is not None
    assert hooks[1].poll() is None


def test_pre_cloud_init_iso_passes_through_and_shutdown_ends_the_sidecar(hooks, manager):
    stub, pb2 = manager.stub("v1alpha3")
    got = stub.PreCloudInitIso(pb2.PreCloudInitIsoParams(cloudInitNoCloudSource=b'{"userData":"x"}',
                                                         cloudInitData=b'{"a":1}', vmi=vmi("vmnet")), timeout=5)
    assert (got.cloudInitNoCloudSource, got.cloudInitData) == (b'{"userData":"x"}', b'{"a":1}')
    manager.shutdown()
    assert hooks[1].wait(15) == 0
    assert list((hooks[0] / "hook-sidecar-0").iterdir()) == []       # it removed its socket
