"""deploy/: every manifest parses and validates, and says what vmnet's code can do.

Core objects against the Kubernetes schemas bundled with kubernetes-validate
(offline); the KubeVirt CR fragment, the NAD and the VMI against schemas the
tests own for the fields used (tests/schemas/); the NAD's CNI configuration
through the vmnet CNI plugin's own checks; every vmnet command line in the
DaemonSet through the CLI's own parser; and the kustomization rendered (by
`kubectl kustomize` when it is installed, and always by the small renderer
here, which knows exactly the fields the kustomization uses and refuses any
other).
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the test extra installs it)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed "
                                          "(the test extra installs it)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (kubernetes-validate needs it)")

pytestmark = pytest.mark.unit

REPO = pathlib.Path(__file__).parent.parent
BASE = REPO / "deploy" / "kubernetes"
SCHEMAS = pathlib.Path(__file__).parent / "schemas"
K8S = "1.30.0"          # the oldest Kubernetes KubeVirt 1.9 supports
OWN_SCHEMA = {("kubevirt.io/v1", "KubeVirt"): "kubevirt-binding.json",
              ("kubevirt.io/v1", "VirtualMachineInstance"): "virtualmachineinstance.json",
              ("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"): "networkattachmentdefinition.json"}


def documents():
    for path in sorted(REPO.glob("deploy/**/*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.relative_to(REPO), doc


def test_every_yaml_in_deploy_parses_and_is_known():
    seen = list(documents())
    assert len(seen) >= 8
    for path, doc in seen:
        assert isinstance(doc, dict) and "kind" in doc, path


@pytest.mark.parametrize("path, doc", [(p, d) for p, d in documents() if d.get("kind") != "Kustomization"],
                         ids=lambda v: str(v) if isinstance(v, pathlib.Path) else "")
def test_each_object_validates_against_its_schema(path, doc):
    own = OWN_SCHEMA.get((doc["apiVersion"], doc["kind"]))
    if own:
        jsonschema.validate(doc, json.loads((SCHEMAS / own).read_text()))
    else:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_the_schemas_refuse_what_they_should():
    """The tests' own schemas are worth something: a misspelt field fails them."""
    kv = next(d for _, d in documents() if d["kind"] == "KubeVirt")
    bad = json.loads(json.dumps(kv))
    bad["spec"]["configuration"]["network"]["binding"]["vmnet"]["domainAttachementType"] = "tap"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads((SCHEMAS / "kubevirt-binding.json").read_text()))
    ds = next(d for _, d in documents() if d["kind"] == "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["addd"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S, strict=True)


def test_the_nads_cni_configuration_passes_the_plugins_own_checks():
    from vmnet.kubevirt import cni
    nad = next(d for _, d in documents() if d["kind"] == "NetworkAttachmentDefinition")
    assert nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] == "vmnet.io/port"
    conf = cni.parse_config(nad["spec"]["config"].encode())
    args = cni.port_args(conf, {"CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "pod1234567890a",
                                "CNI_ARGS": "K8S_POD_UID=1b4e28ba-2fa1-11d2-883f-0016d3cca427"})
    assert args["queues"] == 1 and args["placeholder_tap"] == "tap1234567890a"
    assert conf["name"] == nad["metadata"]["name"]
    vmi = next(d for _, d in documents() if d["kind"] == "VirtualMachineInstance")
    assert {n["multus"]["networkName"] for n in vmi["spec"]["networks"] if "multus" in n} == {nad["metadata"]["name"]}
    bound = [i["name"] for i in vmi["spec"]["domain"]["devices"]["interfaces"] if "binding" in i]
    kv = next(d for _, d in documents() if d["kind"] == "KubeVirt")
    (binding,) = kv["spec"]["configuration"]["network"]["binding"]
    assert bound and all(i["binding"]["name"] == binding for i in vmi["spec"]["domain"]["devices"]["interfaces"]
                         if "binding" in i)
    assert kv["spec"]["configuration"]["network"]["binding"][binding]["domainAttachmentType"] == "tap"


def _vmnet_commands(ds: dict) -> list[list[str]]:
    """Every vmnet command line in the pod template: commands, probes, the install script."""
    spec = ds["spec"]["template"]["spec"]
    out = []
    for c in spec.get("initContainers", []) + spec["containers"]:
        cmd = c.get("command", [])
        if cmd[:1] == ["/opt/vmnet/bin/vmnet"]:
            out.append(cmd[1:])
        elif cmd[:2] == ["/bin/sh", "-ec"]:
            out += [shlex.split(line)[1:] for line in cmd[2].splitlines() if line.startswith("/opt/vmnet/bin/vmnet ")]
        for probe in ("livenessProbe", "readinessProbe"):
            ex = (c.get(probe) or {}).get("exec", {}).get("command", [])
            if ex[:1] == ["/opt/vmnet/bin/vmnet"]:
                out.append(ex[1:])
    return out


def _parse(args: list[str]):
    """The vmnet command these arguments name, parsed as the CLI would (without running it)."""
    import warnings

    import click

    from vmnet.cli import cli
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # protected_args, until Click 9
        ctx = cli.make_context("vmnet", list(args), resilient_parsing=False)
        cmd, rest = cli, ctx.protected_args + ctx.args
        while isinstance(cmd, click.Group) and rest:
            name, cmd, rest = cmd.resolve_command(ctx, rest)
            ctx = cmd.make_context(name, list(rest), parent=ctx, resilient_parsing=False)
            rest = ctx.protected_args + ctx.args if isinstance(cmd, click.Group) else []
    return cmd


def test_every_vmnet_command_in_the_daemonset_is_one_the_cli_accepts():
    import click
    ds = next(d for _, d in documents() if d["kind"] == "DaemonSet")
    commands = _vmnet_commands(ds)
    assert len(commands) >= 5
    for args in commands:
        assert not isinstance(_parse(args), click.Group), args
    with pytest.raises(click.NoSuchOption):
        _parse(["kubevirt", "device-plugin", "--capacityy", "16"])


def test_the_daemonset_asks_for_named_capabilities_not_privileged():
    ds = next(d for _, d in documents() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["hostPID"] and spec["automountServiceAccountToken"] is False
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    helper = next(c for c in spec["containers"] if c["name"] == "helper")
    assert set(helper["securityContext"]["capabilities"]["add"]) == {
        "NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}
    config = next(d for _, d in documents() if d["kind"] == "ConfigMap")["data"]["vmnet.toml"]
    from vmnet import config as cfgmod
    parsed = cfgmod.parse(config)
    # the metrics stay on the node's loopback, totals only: nothing announces them to the cluster
    assert parsed.metrics.startswith("127.0.0.1:") and not parsed.metrics_port_labels
    assert "prometheus.io/scrape" not in (ds["spec"]["template"]["metadata"].get("annotations") or {})
    plugin = next(c for c in spec["containers"] if c["name"] == "device-plugin")
    assert plugin["command"][plugin["command"].index("--consumer-dir") + 1] == \
        str(pathlib.PurePath(parsed.consumer_socket_path).parent)


# ---- kustomize --------------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}


def render(directory: pathlib.Path) -> list[dict]:
    """What `kustomize build` makes of the fields this kustomization uses."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - KUSTOMIZATION_FIELDS
    assert not unknown, f"the test's renderer does not model {unknown}: teach it, or use kubectl"
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k.get("images", [])}
    out = []
    for res in k["resources"]:
        for doc in yaml.safe_load_all((directory / res).read_text()):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = k["namespace"]
            for label in k.get("labels", []):
                assert label.get("includeSelectors") is False
                doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                c["image"] = images.get(c["image"], c["image"])
            out.append(doc)
    return out


def _key(doc):
    return (doc["kind"], doc["metadata"]["name"])


def test_the_kustomization_renders():
    docs = render(BASE)
    assert sorted(_key(d) for d in docs) == [("ConfigMap", "vmnet-config"), ("DaemonSet", "vmnet-node"),
                                            ("Namespace", "vmnet-system"), ("ServiceAccount", "vmnet-node")]
    for d in docs:
        kubernetes_validate.validate(d, K8S, strict=True)
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vmnet"
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    assert {c["image"] for c in ds["spec"]["template"]["spec"]["containers"]} == {"localhost/vmnet-node:0.1.0"}
    assert re.fullmatch(r"[a-z0-9./-]+:[0-9.]+", ds["spec"]["template"]["spec"]["initContainers"][0]["image"])


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed: the test's own renderer "
                    "above checked the kustomization")
def test_kubectl_kustomize_agrees_with_the_renderer():
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=_key)
    assert theirs == sorted(render(BASE), key=_key)
