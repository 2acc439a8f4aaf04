"""The layers the package layout promises: the privileged helper imports none of its callers.

vmnet.priv knows verbs and objects (a port, a pod, a domain), not who asks:
the integrations (vmnet.kubevirt, vmnet.libvirt) import the core modules
and the helper's client, never the other way round. Read from the source
with `ast`, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vmnet"
INTEGRATIONS = ("vmnet.kubevirt", "vmnet.libvirt")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name the source imports, anywhere in it, relative imports made absolute
    (`from . import x` yields both the package and package.x: x may be either)."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.add(node.args[0].value)
    return found


def is_integration(name: str) -> bool:
    return any(name == pkg or name.startswith(pkg + ".") for pkg in INTEGRATIONS)


def source_of(name: str) -> pathlib.Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("source, module, expected", [
    ("from ..kubevirt.pod import in_pod", "vmnet.priv.authz", "vmnet.kubevirt.pod"),
    ("from ... import libvirt", "vmnet.priv.backends.veth", "vmnet.libvirt"),
    ("from ..libvirt import domain", "vmnet.priv.daemon", "vmnet.libvirt.domain"),
    ("def f():\n    import vmnet.kubevirt.takeover as tk\n", "vmnet.priv.ports", "vmnet.kubevirt.takeover"),
    ("import importlib\nimportlib.import_module('vmnet.libvirt.hook')", "vmnet.priv.x", "vmnet.libvirt.hook"),
])
def test_the_import_reader_resolves_relative_and_nested_imports(source, module, expected):
    assert expected in imported_names(source, module)


def test_the_import_reader_resolves_a_packages_own_relative_imports():
    assert "vmnet.priv.backends.veth" in imported_names("from . import veth", "vmnet.priv.backends", is_package=True)


def test_the_privileged_package_imports_no_integration():
    modules = sorted((PACKAGE / "priv").rglob("*.py"))
    assert len(modules) > 10, "vmnet/priv was not found"
    offending = {}
    for path in modules:
        names = imported_names(path.read_text(), module_name(path), path.name == "__init__.py")
        bad = {n for n in names if is_integration(n)}
        bad = sorted(n for n in bad if not any(n.startswith(m + ".") for m in bad))   # the module, not its names
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert not offending, ("vmnet.priv must not import its callers; move what it needs into a core "
                           f"module of vmnet/ that both import: {offending}")


def test_nothing_the_privileged_package_imports_brings_in_an_integration():
    """The core modules the helper imports (vmnet.pod, vmnet.domain, ...) must not import an
    integration on its behalf."""
    todo = [module_name(p) for p in (PACKAGE / "priv").rglob("*.py")]
    seen: dict[str, str] = {name: name for name in todo}       # module -> the module that imported it
    offending = []
    while todo:
        name = todo.pop()
        path = source_of(name)
        if path is None:
            continue
        for imported in imported_names(path.read_text(), name, path.name == "__init__.py"):
            if not (imported == "vmnet" or imported.startswith("vmnet.")) or imported in seen:
                continue
            if is_integration(imported):
                if not name.startswith("vmnet.priv"):       # the test above names those
                    offending.append(f"{name} (imported by {seen[name]}) imports {imported}")
                continue
            seen[imported] = name
            todo.append(imported)
    assert not offending, offending
