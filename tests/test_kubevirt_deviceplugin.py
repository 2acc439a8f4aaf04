"""The device plugin against a fake kubelet speaking the real v1beta1 protocol.

The fake kubelet is a gRPC server on a temporary kubelet.sock implementing
Registration, and, once the plugin registered, a client of the plugin's own
socket, as the kubelet's device manager is: GetDevicePluginOptions,
ListAndWatch (kept open: updates must arrive on it), GetPreferredAllocation,
Allocate, PreStartContainer. A restart of the kubelet is what a real one
does: its sockets, and every plugin's, removed; a new kubelet.sock.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc", reason="grpcio is not installed (the kubevirt extra: install.sh installs it)")

from vmnet.kubevirt.proto import deviceplugin_v1beta1_pb2 as pb  # noqa: E402
from vmnet.kubevirt.proto import deviceplugin_v1beta1_pb2_grpc as pbg  # noqa: E402

pytestmark = pytest.mark.unit


class FakeKubelet(pbg.RegistrationServicer):
    def __init__(self, directory: str):
        self.dir = directory
        self.registered: queue.Queue = queue.Queue()
        self.server = None
        self.channels = []

    def Register(self, request, context):
        self.registered.put(request)
        return pb.Empty()

    def start(self):
        path = os.path.join(self.dir, "kubelet.sock")
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pbg.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix:{path}")
        self.server.start()
        return self

    def restart(self):
        """As the kubelet does: stop, remove every socket in its directory, come back."""
        self.server.stop(grace=0).wait()
        for name in os.listdir(self.dir):
            if name.endswith(".sock"):
                os.unlink(os.path.join(self.dir, name))
        time.sleep(0.05)
        return self.start()

    def plugin(self, request) -> pbg.DevicePluginStub:
        channel = grpc.insecure_channel(f"unix:{os.path.join(self.dir, request.endpoint)}")
        self.channels.append(channel)
        return pbg.DevicePluginStub(channel)

    def stop(self):
        """Stop serving and close the channels to the plugin: an open channel keeps grpc's
        fds and threads in this process."""
        for channel in self.channels:
            channel.close()
        self.server.stop(grace=0).wait()


@pytest.fixture
def node(tmp_path):
    """A kubelet directory with the fake kubelet, a consumer socket directory with a listener in
    it (what the helper serves), a runtime directory, and the plugin process."""
    kubelet_dir, consumer_dir, runtime_dir = (tmp_path / n for n in ("device-plugins", "consumer", "kubevirt"))
    for d in (kubelet_dir, consumer_dir, runtime_dir):
        d.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(consumer_dir / "consumer.sock"))
    listener.listen(8)
    kubelet = FakeKubelet(str(kubelet_dir)).start()
    proc = subprocess.Popen([sys.executable, "-I", "-m", "vmnet", "kubevirt", "device-plugin",
                             "--kubelet-dir", str(kubelet_dir), "--capacity", "3",
                             "--runtime-dir", str(runtime_dir), "--consumer-dir", str(consumer_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, VMNET_CONFIG="/dev/null"))
    try:
        yield kubelet, proc, listener, consumer_dir, runtime_dir
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0]
        listener.close()
        kubelet.stop()
        print(out)


def _watch(stub):
    """ListAndWatch kept open on a thread; its responses on a queue."""
    q: queue.Queue = queue.Queue()
    stream = stub.ListAndWatch(pb.Empty())

    def read():
        try:
            for response in stream:
                q.put([(d.ID, d.health) for d in response.devices])
        except grpc.RpcError:
            q.put(None)
    threading.Thread(target=read, daemon=True).start()
    return stream, q


def test_registration_list_and_watch_allocate(node):
    kubelet, proc, listener, consumer_dir, runtime_dir = node
    req = kubelet.registered.get(timeout=30)
    assert (req.version, req.resource_name, req.endpoint) == ("v1beta1", "vmnet.io/port", "vmnet.sock")
    assert req.options.get_preferred_allocation_available and not req.options.pre_start_required
    stub = kubelet.plugin(req)
    options = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
    assert options.get_preferred_allocation_available
    stream, updates = _watch(stub)
    assert updates.get(timeout=10) == [("port-0", "Healthy"), ("port-1", "Healthy"), ("port-2", "Healthy")]
    # the helper's consumer socket goes away: every device turns Unhealthy, on the same stream
    listener.close()
    os.unlink(consumer_dir / "consumer.sock")
    assert updates.get(timeout=10) == [(f"port-{i}", "Unhealthy") for i in range(3)]
    pref = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=["port-2", "port-0", "port-1"],
                                               must_include_deviceIDs=["port-2"], allocation_size=2)]), timeout=5)
    assert list(pref.container_responses[0].deviceIDs) == ["port-2", "port-0"]
    got = stub.Allocate(pb.AllocateRequest(container_requests=[
        pb.ContainerAllocateRequest(devices_ids=["port-0"])]), timeout=5)
    (c,) = got.container_responses
    assert dict(c.envs) == {"VMNET_SOCKET": "/var/run/vmnet/consumer/consumer.sock"}
    assert sorted((m.container_path, m.host_path, m.read_only) for m in c.mounts) == [
        ("/var/run/vmnet/consumer", str(consumer_dir), True), ("/var/run/vmnet/runtime", str(runtime_dir), True)]
    assert not c.devices
    with pytest.raises(grpc.RpcError) as exc:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["port-9"])]),
                      timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "port-9" in exc.value.details()
    assert stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=["port-0"]), timeout=5) == \
        pb.PreStartContainerResponse()
    stream.cancel()
    assert proc.poll() is None


def test_it_registers_again_when_the_kubelet_restarts(node):
    kubelet, proc, *_ = node
    first = kubelet.registered.get(timeout=30)
    kubelet.restart()
    again = kubelet.registered.get(timeout=30)
    assert again.endpoint == first.endpoint and again.resource_name == first.resource_name
    stub = kubelet.plugin(again)                       # its socket is back, and serves
    assert stub.GetDevicePluginOptions(pb.Empty(), timeout=5).get_preferred_allocation_available
    _, updates = _watch(stub)
    assert len(updates.get(timeout=10)) == 3


@pytest.mark.parametrize("args, words", [
    (["--capacity", "-1"], "-1 is not in the range"),
    (["--resource", "port"], "is not an extended resource"),
    (["--kubelet-dir", "relative"], "must be an absolute path"),
])
def test_bad_options_are_refused_saying_which(tmp_path, args, words):
    out = subprocess.run([sys.executable, "-I", "-m", "vmnet", "kubevirt", "device-plugin", *args],
                         capture_output=True, text=True, timeout=30, env=dict(os.environ, VMNET_CONFIG="/dev/null"))
    assert out.returncode != 0 and words in out.stderr, out.stderr
