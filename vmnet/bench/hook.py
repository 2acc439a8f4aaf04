"""What the libvirt hook costs a VM start, against `python3 -c pass`.

libvirt runs every hook in qemu.d/ five or more times per VM lifecycle, for
every domain, vmnet or not. The hook measured is the one `vmnet libvirt
install-hook` would install (vmnet.libvirt.hookinstall.hook_text, written into the
benchmark's directory with the benchmark's config pinned), or the file
given with --hook; runs alternate with the baseline so both see the same
machine. The baseline is the hook's own interpreter with `-c pass`.
With one port, `prepare begin` creates the port through the benchmark's
helper and `release end` deletes it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

from .stats import summary

DOMAIN_XML = """<domain type='kvm' id='7'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource><partition>/machine</partition></resource>
  <os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/><timer name='pit' tickpolicy='delay'/><timer name='hpet' present='no'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'><alias name='usb'/></controller>
    <controller type='pci' index='0' model='pcie-root'><alias name='pcie.0'/></controller>
    <controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='1' port='0x10'/><alias name='pci.1'/></controller>
    <controller type='pci' index='2' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='2' port='0x11'/><alias name='pci.2'/></controller>
    <controller type='pci' index='3' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='3' port='0x12'/><alias name='pci.3'/></controller>
    <controller type='pci' index='4' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='4' port='0x13'/><alias name='pci.4'/></controller>
    <controller type='sata' index='0'><alias name='ide'/></controller>
    <controller type='virtio-serial' index='0'><alias name='virtio-serial0'/></controller>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target><alias name='serial0'/></serial>
    <console type='pty'><target type='serial' port='0'/><alias name='serial0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/><alias name='channel0'/></channel>
    <input type='mouse' bus='ps2'><alias name='input0'/></input>
    <input type='keyboard' bus='ps2'><alias name='input1'/></input>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>
    <video><model type='virtio' heads='1' primary='yes'/><alias name='video0'/></video>
    <memballoon model='virtio'><alias name='balloon0'/></memballoon>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend><alias name='rng0'/></rng>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label><imagelabel>+64055:+994</imagelabel></seclabel>
</domain>
"""


def find_hook(helper, explicit: str | None) -> tuple[list[str] | None, str]:
    """(argv prefix of the hook, how it was found) or (None, why not)."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            return None, f"hook not found: {explicit} is not an executable file"
        return [explicit], explicit
    try:
        from ..libvirt.hookinstall import hook_text
        text = hook_text(helper.config)
    except (ImportError, OSError) as exc:
        return None, f"hook not found (vmnet.libvirt.hookinstall cannot render it: {exc})"
    path = os.path.join(helper.dir, "vmnet-hook")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return [path], "vmnet.libvirt.hookinstall.hook_text (as `vmnet libvirt install-hook` installs it)"


def _interpreter(hook: str) -> str:
    with open(hook, "rb") as f:
        first = f.readline().decode(errors="replace")
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and parts[0].endswith("/env") and len(parts) > 1:
            return shutil.which(parts[1]) or sys.executable
        if parts:
            return parts[0]
    return sys.executable


def _last_line(done) -> str:
    lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no message)"


def _timed(argv, stdin: bytes, env) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60, cwd="/")
    return (time.perf_counter() - t0) * 1000, done


def _port_xml(name: str, uuid_: str, port: str) -> bytes | None:
    try:
        from ..libvirt.domain_xml import inject
    except ImportError:
        return None
    return inject(DOMAIN_XML.format(name=name, uuid=uuid_),
                  [{"name": port, "queues": 1, "backend": "veth", "consumer_user": "nobody"}]).encode()


def measure(helper, tag: str, runs: int, port_runs: int, explicit: str | None, progress) -> dict:
    argv, found = find_hook(helper, explicit)
    if argv is None:
        return {"skipped": found}
    python = _interpreter(argv[0])
    env = dict(helper.env)
    plain_xml = DOMAIN_XML.format(name=f"bench-{tag}", uuid=str(uuid.uuid4())).encode()
    hook_ms, python_ms, python_is_ms = [], [], []
    for i in range(runs + 1):           # the first round warms the page cache
        ms, done = _timed(argv + [f"bench-{tag}", "prepare", "begin", "-"], plain_xml, env)
        if done.returncode != 0:
            return {"skipped": f"the hook failed for a domain without vmnet (exit {done.returncode}): "
                               f"{_last_line(done)}", "hook": found}
        py, _ = _timed([python, "-c", "pass"], b"", env)
        py_is, _ = _timed([python, "-I", "-S", "-c", "pass"], b"", env)
        if i:
            hook_ms.append(ms)
            python_ms.append(py)
            python_is_ms.append(py_is)
        progress("hook, no vmnet", i, runs)
    out = {"hook": found, "python": python, "runs": runs,
           "plain": summary(hook_ms), "python_c_pass": summary(python_ms),
           "python_IS_c_pass": summary(python_is_ms),
           "ratio_to_python": round(statistics.median(hook_ms) / statistics.median(python_ms), 3),
           "ratio_to_bare_python": round(statistics.median(hook_ms) / statistics.median(python_is_ms), 3)}

    port = f"{tag}h"
    dom, dom_uuid = f"bench-{tag}-port", str(uuid.uuid4())
    xml = _port_xml(dom, dom_uuid, port)
    if xml is None:
        out["port_skipped"] = "vmnet.libvirt.domain_xml is not available to write the port's metadata"
        return out
    prepare, release = [], []
    for i in range(port_runs):
        ms, done = _timed(argv + [dom, "prepare", "begin", "-"], xml, env)
        if done.returncode != 0:
            out["port_skipped"] = f"prepare failed (exit {done.returncode}): {_last_line(done)}"
            helper.call("port-delete", name=port, missing_ok=True)
            return out
        names = [p["name"] for p in helper.call("port-list")["ports"]]
        if port not in names:
            out["port_skipped"] = "prepare exited 0 but created no port"
            return out
        prepare.append(ms)
        ms, done = _timed(argv + [dom, "release", "end", "-"], xml, env)
        still = port in [p["name"] for p in helper.call("port-list")["ports"]]
        if done.returncode != 0 or still:
            helper.call("port-delete", name=port, missing_ok=True)
            out["port_skipped"] = f"release did not delete the port (exit {done.returncode})"
            return out
        release.append(ms)
        progress("hook, one port", i + 1, port_runs)
    out.update(port_prepare=summary(prepare), port_release=summary(release))
    return out
