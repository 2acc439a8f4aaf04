"""KubeVirt: vmnet for virt-launcher pods (docs/kubevirt.md).

- pod: who a pod is (its UID, and how its cgroup path shows it), pure;
- cni: the `vmnet` CNI plugin, which asks the helper for a pod's port;
- takeover: how the wrapper swaps libvirt's tap netdev for af-xdp, pure;
- runtime: the wrapper as a read-only directory for images without Python.
"""
