"""KubeVirt: vmnet for virt-launcher pods (docs/kubevirt.md).

- pod: who a pod is, re-exported from the core module vmnet.pod (the helper
  checks it too);
- cni: the `vmnet` CNI plugin, which asks the helper for a pod's port;
- takeover: how the wrapper swaps libvirt's tap netdev for af-xdp, pure (the
  placeholder's alias is spelt by the core module vmnet.tap_alias);
- runtime: the wrapper as a read-only directory for images without Python.
"""
