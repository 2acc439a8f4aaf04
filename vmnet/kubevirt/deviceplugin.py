"""The device plugin: `vmnet.io/port` for the kubelet, and the mounts a compute container needs.

A NetworkAttachmentDefinition annotated `k8s.v1.cni.cncf.io/resourceName:
vmnet.io/port` makes virt-controller ask for one of these per vmnet NIC;
the kubelet calls Allocate before the container exists, and this plugin
answers with what virt-launcher's compute container must see: the wrapper
directory and the consumer socket's directory, both read-only
(/opt/vmnet/kubevirt -> /var/run/vmnet/runtime, /run/vmnet/consumer ->
/var/run/vmnet/consumer: a directory, so a restarted helper's new socket
shows up), and VMNET_SOCKET. The pod gets no other path to the helper.

Capacity is a number from the command line, or, on a node that leases NIC
queues (netkit-lease), the free queues above the host's reserved ones
divided by the queues per port, looked at again every few seconds. Devices
are Unhealthy while the consumer socket does not answer. When the kubelet
restarts it removes every plugin socket and makes a new kubelet.sock: the
plugin sees either, and serves and registers again (kubelet device-plugin
API v1beta1).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent import futures

from ..errors import InvalidInput

log = logging.getLogger("vmnet.device-plugin")
KUBELET_DIR = "/var/lib/kubelet/device-plugins"
RESOURCE = "vmnet.io/port"
HOST_RUNTIME, POD_RUNTIME = "/opt/vmnet/kubevirt", "/var/run/vmnet/runtime"
HOST_CONSUMER, POD_CONSUMER = "/run/vmnet/consumer", "/var/run/vmnet/consumer"
SOCKET_NAME = "consumer.sock"
API_VERSION = "v1beta1"


def preferred(available: list[str], must: list[str], size: int) -> list[str]:
    """The devices to give a container: those it must have, then the lowest-numbered free ones."""
    chosen = list(dict.fromkeys(must))
    for d in sorted(available, key=_order):
        if len(chosen) >= size:
            break
        if d not in chosen:
            chosen.append(d)
    return chosen[:max(size, len(must))]


def _order(device_id: str):
    tail = device_id.rsplit("-", 1)[-1]
    return (0, int(tail)) if tail.isdigit() else (1, device_id)


def lease_capacity(nic: str, queues_per_port: int, reserved: int) -> int:
    """Ports of queues_per_port that the NIC's free queues still make (root; netdev queue-get)."""
    from ..priv import links, netdev_genl
    state = links.link_state(nic)
    if state is None:
        return 0
    return len(netdev_genl.free_queues(netdev_genl.rx_queues(state["ifindex"]), reserved)) // queues_per_port


class Plugin:
    def __init__(self, kubelet_dir: str = KUBELET_DIR, resource: str = RESOURCE, capacity: int | None = 16,
                 lease_from: str | None = None, queues_per_port: int = 1, reserved: int = 1,
                 host_runtime: str = HOST_RUNTIME, host_consumer: str = HOST_CONSUMER,
                 endpoint: str = "vmnet.sock", poll: float = 1.0):
        if "/" not in resource or resource.startswith("kubernetes.io/"):
            raise InvalidInput(f"resource name {resource!r} is not an extended resource (vendor.domain/name)",
                               fix="use e.g. vmnet.io/port")
        if lease_from is None and (capacity is None or not 0 <= capacity <= 1024):
            raise InvalidInput(f"capacity {capacity!r} is out of range", fix="give 0-1024 ports per node")
        for label, path in (("kubelet directory", kubelet_dir), ("runtime directory", host_runtime),
                            ("consumer socket directory", host_consumer)):
            if not os.path.isabs(path):
                raise InvalidInput(f"the {label} {path!r} must be an absolute path")
        self.kubelet_dir, self.resource, self.endpoint = kubelet_dir, resource, endpoint
        self.capacity, self.lease_from = capacity, lease_from
        self.queues_per_port, self.reserved = queues_per_port, reserved
        self.host_runtime, self.host_consumer = host_runtime, host_consumer
        self.poll = poll
        self.changed = threading.Condition()
        self.generation = 0
        self.devices: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self.server = None
        self.registrations = 0

    # ---- what is advertised ----------------------------------------------

    def _count(self) -> int:
        if self.lease_from is None:
            return self.capacity
        try:
            return lease_capacity(self.lease_from, self.queues_per_port, self.reserved)
        except Exception as exc:        # the NIC is gone or busy: nothing to lease now
            log.warning("cannot count the free queues of %s: %s", self.lease_from, exc)
            return 0

    def _healthy(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(os.path.join(self.host_consumer, SOCKET_NAME))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def refresh(self) -> bool:
        health = "Healthy" if self._healthy() else "Unhealthy"
        devices = [(f"port-{i}", health) for i in range(self._count())]
        with self.changed:
            if devices == self.devices:
                return False
            self.devices = devices
            self.generation += 1
            self.changed.notify_all()
        log.info("advertising %d %s, %s", len(devices), self.resource, health.lower())
        return True

    # ---- the DevicePlugin service ---------------------------------------

    def _servicer(self):
        import grpc

        from .proto import deviceplugin_v1beta1_pb2 as pb
        from .proto import deviceplugin_v1beta1_pb2_grpc as pbg
        plugin = self

        class Servicer(pbg.DevicePluginServicer):
            def GetDevicePluginOptions(self, request, context):
                return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

            def ListAndWatch(self, request, context):
                seen = -1
                while context.is_active() and not plugin.stopping.is_set():
                    with plugin.changed:
                        if seen == plugin.generation:
                            plugin.changed.wait(timeout=1.0)
                            continue
                        seen, devices = plugin.generation, list(plugin.devices)
                    yield pb.ListAndWatchResponse(devices=[pb.Device(ID=i, health=h) for i, h in devices])

            def GetPreferredAllocation(self, request, context):
                return pb.PreferredAllocationResponse(container_responses=[
                    pb.ContainerPreferredAllocationResponse(deviceIDs=preferred(
                        list(r.available_deviceIDs), list(r.must_include_deviceIDs), r.allocation_size))
                    for r in request.container_requests])

            def Allocate(self, request, context):
                known = {i for i, _ in plugin.devices}
                out = []
                for r in request.container_requests:
                    unknown = sorted(set(r.devices_ids) - known)
                    if unknown:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                      f"vmnet: no such device(s) {', '.join(unknown)} of {plugin.resource}")
                    out.append(pb.ContainerAllocateResponse(
                        envs={"VMNET_SOCKET": os.path.join(POD_CONSUMER, SOCKET_NAME)},
                        mounts=[pb.Mount(container_path=POD_RUNTIME, host_path=plugin.host_runtime, read_only=True),
                                pb.Mount(container_path=POD_CONSUMER, host_path=plugin.host_consumer,
                                         read_only=True)]))
                log.info("allocated %s to %d container(s)",
                         ", ".join(d for r in request.container_requests for d in r.devices_ids), len(out))
                return pb.AllocateResponse(container_responses=out)

            def PreStartContainer(self, request, context):
                return pb.PreStartContainerResponse()
        return Servicer()

    def _serve(self):
        import grpc

        from .proto import deviceplugin_v1beta1_pb2_grpc as pbg
        path = os.path.join(self.kubelet_dir, self.endpoint)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pbg.add_DevicePluginServicer_to_server(self._servicer(), server)
        server.add_insecure_port(f"unix:{path}")
        server.start()
        return server

    def _register(self) -> None:
        import grpc

        from .proto import deviceplugin_v1beta1_pb2 as pb
        from .proto import deviceplugin_v1beta1_pb2_grpc as pbg
        with grpc.insecure_channel(f"unix:{os.path.join(self.kubelet_dir, 'kubelet.sock')}") as channel:
            pbg.RegistrationStub(channel).Register(pb.RegisterRequest(
                version=API_VERSION, endpoint=self.endpoint, resource_name=self.resource,
                options=pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)),
                timeout=10)
        self.registrations += 1
        log.info("registered %s with the kubelet (%s)", self.resource, self.kubelet_dir)

    def _kubelet_identity(self):
        try:
            st = os.stat(os.path.join(self.kubelet_dir, "kubelet.sock"))
            return (st.st_ino, st.st_ctime_ns)
        except FileNotFoundError:
            return None

    def run(self, ready=None) -> None:
        """Serve and register; again whenever the kubelet restarts; until stop()."""
        import grpc
        self.refresh()
        kubelet = None
        last_refresh = time.monotonic()
        while not self.stopping.is_set():
            ours = os.path.join(self.kubelet_dir, self.endpoint)
            now = self._kubelet_identity()
            if now is not None and (now != kubelet or not os.path.exists(ours)):
                if self.server is not None:
                    log.info("the kubelet restarted (or removed our socket): serving and registering again")
                    self.server.stop(grace=0)
                self.server = self._serve()
                try:
                    self._register()
                    kubelet = now
                    if ready:
                        ready()
                        ready = None
                except grpc.RpcError as exc:
                    log.warning("the kubelet refused or did not answer registration: %s", exc.details()
                                if hasattr(exc, "details") else exc)
            if time.monotonic() - last_refresh >= max(self.poll, 1.0) * 5 or self.lease_from is None:
                self.refresh()
                last_refresh = time.monotonic()
            self.stopping.wait(self.poll)
        if self.server is not None:
            self.server.stop(grace=1).wait()
        try:
            os.unlink(os.path.join(self.kubelet_dir, self.endpoint))
        except FileNotFoundError:
            pass

    def stop(self):
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
