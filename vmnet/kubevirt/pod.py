"""KubeVirt's name for a pod's identity rules, which live in vmnet.pod.

The rules moved to the core module vmnet.pod because the privileged helper
checks them and must not import its callers; `vmnet.kubevirt.pod` stays
importable with the same names for the integration's own code.
"""

from __future__ import annotations

from ..pod import FIELDS, in_pod, pod_uids, uid_in_component, validate_pod, validate_uid

__all__ = ["FIELDS", "in_pod", "pod_uids", "uid_in_component", "validate_pod", "validate_uid"]
