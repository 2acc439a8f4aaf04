"""`vmnet bench`: a tiny run has the report's shape and leaves nothing behind.

No timing is asserted here: the numbers belong to docs/performance.md and
to whoever runs the benchmark; this only keeps the benchmark from rotting.
"""

import json
import os
import socket
import struct

import pytest
from click.testing import CliRunner

from vmnet.bench import bench
from vmnet.bench import floor
from vmnet import rawnl
from vmnet.bench.report import format_result
from vmnet.doctor import filesystem
from vmnet.bench.stats import Goal, goals_of, percentile, summary

HEADLINE_BY_QUEUES = ("create_p50_ms", "create_p99_ms", "delete_p99_ms")
HEADLINE = ("floor_p50_ms", "create_p50_ratio_to_floor", "scale_last16_over_first16", "helper_rss_mb",
            "status_ms", "hook_ratio_to_python")


@pytest.mark.unit
def test_percentiles_use_the_nearest_rank():
    samples = list(range(1, 201))
    assert percentile(samples, 99) == 198 and percentile(samples, 50) == 100
    assert percentile([], 99) is None
    assert summary([3.0, 1.0, 2.0])["p50"] == 2.0 and summary([])["n"] == 0


@pytest.mark.unit
def test_goals_say_met_missed_or_not_measured_and_by_how_much():
    assert Goal("g", 20.0, 30.0, "ms").verdict().startswith("met, 10.0 ms to spare")
    assert Goal("g", 45.0, 30.0, "ms").verdict().startswith("MISSED by 15.0 ms (1.50 of the limit)")
    assert Goal("g", None, 2.0, "x", note="hook not found").verdict() == "not measured: hook not found"
    assert all(g.met is None for g in goals_of({}))


@pytest.mark.unit
def test_a_minimum_goal_is_met_at_or_above_its_limit():
    assert Goal("tcp", 0.97, 0.95, "x", minimum=True).verdict().startswith("met, 0.02x to spare")
    assert Goal("tcp", 0.90, 0.95, "x", minimum=True).verdict().startswith("MISSED by 0.05x")
    assert Goal("tcp", 0.95, 0.95, "x", minimum=True).met


@pytest.mark.unit
def test_raw_requests_carry_what_the_kernel_needs():
    master = rawnl.set_master_request(7, 3)
    assert rawnl.NLMSGHDR.unpack_from(master)[1] == rawnl.RTM_NEWLINK
    assert struct.pack("=HHI", 8, rawnl.IFLA_MASTER, 3) in master
    vlan = rawnl.bridge_vlans_request(rawnl.RTM_SETLINK, 7, [(6, 100), (0, 200)])
    assert vlan[rawnl.NLMSGHDR.size] == socket.AF_BRIDGE and struct.pack("=HH", 6, 100) in vlan
    assert struct.pack("=HHHH", 8, rawnl.IFLA_BRIDGE_VLAN_INFO, 0, 200) in vlan
    assert rawnl.attrs(b"".join([rawnl.attr(3, b"ab\0"), rawnl.attr(4 | rawnl.NLA_F_NESTED, b"xyzw")])) == {
        3: b"ab\0", 4: b"xyzw"}
    veth = rawnl.veth_request("vmn-a", "vmc-a", "02:00:00:00:00:01", 2, 3, 9, host_index=40, peer_index=41)
    assert rawnl.NLMSGHDR.unpack_from(veth)[2] & rawnl.NLM_F_EXCL
    assert rawnl.IFINFOMSG.unpack_from(veth, rawnl.NLMSGHDR.size)[2] == 40
    assert b"veth\0" in veth and b"vmc-a\0" in veth and bytes.fromhex("020000000001") in veth
    assert struct.pack("=HHI", 8, rawnl.IFLA_NET_NS_FD, 9) in veth
    assert struct.pack("=HHI", 8, rawnl.IFLA_NUM_TX_QUEUES, 3) in veth     # the host end's, in skb mode
    assert rawnl.IFINFOMSG.pack(0, 0, 41, 0, 0) in veth                      # the peer's chosen ifindex
    up = rawnl.mtu_up_request(7, 3506)
    assert rawnl.IFINFOMSG.unpack_from(up, rawnl.NLMSGHDR.size)[2:] == (7, rawnl.IFF_UP, rawnl.IFF_UP)
    assert struct.pack("=HHI", 8, rawnl.IFLA_MTU, 3506) in up
    assert b"vmnet@x\0" in rawnl.alias_request(7, "vmnet@x")
    route = rawnl.host_route_request("10.99.1.2", 32, 7)
    assert rawnl.NLMSGHDR.unpack_from(route)[1] == rawnl.RTM_NEWROUTE
    assert socket.inet_aton("10.99.1.2") in route and route[rawnl.NLMSGHDR.size + 1] == 32


@pytest.mark.unit
def test_a_routed_host_ends_settings_are_packed_as_the_kernel_reads_them():
    """IFLA_AF_SPEC > AF_INET > IFLA_INET_CONF > {IPV4_DEVCONF_*: u32} beside the MAC, and the ARP
    table's per-device proxy_delay (u64 milliseconds) by name."""
    req = rawnl.address_request(7, "ee:ee:ee:ee:ee:ee", {rawnl.IPV4_DEVCONF_FORWARDING: 1,
                                                         rawnl.IPV4_DEVCONF_PROXY_ARP: 1})
    size, kind, flags, _, _ = rawnl.NLMSGHDR.unpack_from(req)
    assert size == len(req) and kind == rawnl.RTM_NEWLINK and flags & rawnl.NLM_F_ACK
    assert rawnl.IFINFOMSG.unpack_from(req, rawnl.NLMSGHDR.size)[2] == 7
    top = rawnl.attrs(req, rawnl.NLMSGHDR.size + rawnl.IFINFOMSG.size)
    assert top[rawnl.IFLA_ADDRESS] == b"\xee" * 6
    inet = rawnl.attrs(rawnl.attrs(top[rawnl.IFLA_AF_SPEC])[socket.AF_INET])
    conf = rawnl.attrs(inet[rawnl.IFLA_INET_CONF])
    assert {k: struct.unpack("=I", v)[0] for k, v in conf.items()} == {1: 1, 3: 1}      # forwarding, proxy_arp
    assert rawnl.IFLA_AF_SPEC not in rawnl.attrs(rawnl.address_request(7, "ee:ee:ee:ee:ee:ee"),
                                                 rawnl.NLMSGHDR.size + rawnl.IFINFOMSG.size)
    req = rawnl.proxy_delay_request(7, 0)
    size, kind, _, _, _ = rawnl.NLMSGHDR.unpack_from(req)
    assert size == len(req) and kind == 67                                      # RTM_SETNEIGHTBL
    assert req[rawnl.NLMSGHDR.size] == socket.AF_INET
    table = rawnl.attrs(req, rawnl.NLMSGHDR.size + 4)                           # struct ndtmsg
    assert table[rawnl.NDTA_NAME] == b"arp_cache\0"
    parms = rawnl.attrs(table[rawnl.NDTA_PARMS])
    assert struct.unpack("=I", parms[1]) == (7,) and struct.unpack("=Q", parms[13]) == (0,)


@pytest.mark.unit
def test_floor_batches_the_pair_and_the_link_up_in_one_datagram():
    req = floor.veth_request("vmn-a", "vmc-a", 2, 3506, "02:00:00:00:00:01")
    first = rawnl.NLMSGHDR.unpack_from(req)
    second = rawnl.NLMSGHDR.unpack_from(req, first[0])
    assert first[1] == second[1] == floor.RTM_NEWLINK
    assert first[2] & rawnl.NLM_F_CREATE and not second[2] & rawnl.NLM_F_CREATE
    assert first[0] + second[0] == len(req)
    assert b"veth\0" in req and b"vmc-a\0" in req


@pytest.mark.netns
def test_the_floor_does_a_default_ports_anti_spoofing_too_and_forgets_it_at_removal(test_netns):
    """A port has anti-spoofing by default, so the floor a create is compared with makes the same
    classifier and rules: on its host end while that is down, which then comes up."""
    import subprocess
    from vmnet.priv import bpf, hostfilter
    fds = bpf.load_object(hostfilter.object_path(), hostfilter.PROGRAMS, hostfilter.MAPS, "test")
    try:
        port = floor.create("tfl", 1, 1500, "02:00:00:00:00:07", fds)
        try:
            ifindex = socket.if_nametoindex(port.host)
            shown = subprocess.run(["tc", "filter", "show", "dev", port.host, "ingress"], capture_output=True,
                                   text=True, check=True).stdout
            assert "vmnet_hf_tc_v1" in shown and "direct-action" in shown, shown
            link = subprocess.run(["ip", "-o", "link", "show", "dev", port.host], capture_output=True, text=True,
                                  check=True).stdout
            assert ",UP" in link or "<UP" in link, link     # up, after the classifier
            assert "filter" in port.steps and all(v >= 0 for v in port.steps.values()), port.steps
            from vmnet.priv import libbpf
            assert hostfilter.IFINDEX.pack(ifindex) in libbpf.map_keys(fds["ports"], hostfilter.IFINDEX.size)
        finally:
            port.remove()
        assert libbpf.map_keys(fds["ports"], hostfilter.IFINDEX.size) == []
        assert subprocess.run(["ip", "link", "show", "dev", port.host], capture_output=True).returncode != 0
        plain = floor.create("tfm", 1, 1500, "02:00:00:00:00:08")
        try:
            assert "filter" not in plain.steps and plain.filtered is None
        finally:
            plain.remove()
    finally:
        bpf.close_fds(fds)


@pytest.mark.netns
def test_quick_bench_reports_every_part_as_json_and_cleans_up():
    out = CliRunner().invoke(bench, ["--quick", "--json", "--iterations", "2", "--ports", "4",
                                     "--queues", "1", "--queues", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert "errors" not in result, result["errors"]
    for part in ("latency", "scale", "hook", "datapath"):
        assert "error" not in result[part], (part, result[part])
    assert all(result["latency"][q]["anti_spoofing"] and "filter" in result["latency"][q]["floor_steps_p50_ms"]
               for q in ("1", "2")), result["latency"]      # the floor does a default port's classifier too
    for key in HEADLINE_BY_QUEUES:
        assert set(result[key]) == {"1", "2"} and all(v > 0 for v in result[key].values()), key
    for key in HEADLINE:
        if key == "hook_ratio_to_python" and "skipped" in result["hook"]:
            continue        # the hook may be absent; the report then says why
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["scale"]["ports"] == 4 and len(result["scale"]["create_ms"]) == 4
    assert result["scale"]["state_fs"] != "unknown", result["scale"]     # the helper's records, under /run
    assert result["datapath"]["ok"], result["datapath"]
    kinds = result["networks"]["create"]["kinds"]
    assert "error" not in result["networks"] and "error" not in result["networks"]["datapath"], result["networks"]
    for kind in ("plain", "none", "bridge", "routed"):
        assert kinds[kind]["create"]["p50"] > 0 and kinds[kind]["floor_create"]["p50"] > 0, kind
    assert set(result["network_added_p50_ms"]) >= {"none", "bridge", "routed"}
    if "skipped" not in kinds["ovs"]:       # measured last, against plain ports made while ovs-vswitchd runs
        assert kinds["ovs"]["create"]["p50"] > 0 and kinds["ovs"]["plain_meanwhile"]["p50"] > 0, kinds["ovs"]
    assert result["network_tcp_ratio_bridge_to_unattached"] > 0
    assert result["networks"]["datapath"]["spoofed_on_bridge_port"] == {"mac": 0, "arp": 0, "ipv4": 0, "ipv6": 0,
                                                                        "nd": 0}
    assert {g["name"] for g in result["goals"]} >= {"create p99, 1 queue", "scale: helper RSS"}
    by_name = {g["name"]: g for g in result["goals"]}
    assert by_name["helper CPU per create / floor CPU, 1 queue"]["value"] > 0, by_name
    assert all("--ports 1000" in g["verdict"] for n, g in by_name.items() if n.startswith("scale, 1,000 ports")), \
        by_name
    xs = result["xdp-sharing"]          # measured where the kernel runs freplace programs
    assert "error" not in xs, xs
    assert "freplace" in xs.get("skipped", "") or xs["ns_per_packet"]["dispatcher"]["other_queue"] > 0, xs
    assert all(set(g) >= {"value", "limit", "met", "verdict"} for g in result["goals"])
    mg = result["migration"]            # needs a QEMU with af-xdp (the VM tier's), and says so
    assert "error" not in mg, mg
    assert "VMNET_TEST_QEMU" in mg.get("skipped", "") or mg["vmnet"]["port_activated"], mg
    bs = result["boot-storm"]           # 20 VMs with --quick: each a hook and a wrapper process
    assert "error" not in bs and bs["started"] == bs["vms"] == 20, bs
    assert bs["release_failures"] == 0 and bs["ports_left_after_release"] == 0, bs
    assert 0 < bs["slowest_vm_s"] <= bs["wall_s"] and bs["helper_cpu_per_vm_ms"] > 0, bs
    assert 0 < bs["floor_slowest_vm_s"] <= bs["floor_wall_s"] and bs["floor_cpu_per_vm_ms"] > 0, bs
    storm_goals = [g for g in result["goals"] if g["name"].startswith("boot storm")]
    assert len(storm_goals) == 2 and all("--quick" in g["verdict"] for g in storm_goals), storm_goals
    text = format_result(result)
    assert "goals" in text and "create p99, 1 queue" in text and "9. live migration" in text
    assert "10. boot storm: 20 VMs at once" in text and "floor, the same storm" in text


MOUNTINFO = """\
21 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
22 21 0:20 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
23 22 0:21 / /run/user/0 rw shared:6 - tmpfs tmpfs rw
24 21 0:22 / /srv/vm\\040images rw shared:7 - xfs /dev/vdb1 rw
25 21 0:23 / /running rw shared:8 - btrfs /dev/vdc rw
"""


@pytest.mark.unit
def test_the_records_file_system_is_the_longest_mount_point_that_holds_them():
    assert filesystem("/run/vmnet/ports", MOUNTINFO) == "tmpfs"
    assert filesystem("/run/user/0/x", MOUNTINFO) == "tmpfs" and filesystem("/run", MOUNTINFO) == "tmpfs"
    assert filesystem("/running/x", MOUNTINFO) == "btrfs"           # a prefix of the name is not a parent
    assert filesystem("/srv/vm images/a", MOUNTINFO) == "xfs"       # mountinfo escapes the space
    assert filesystem("/var/lib/vmnet", MOUNTINFO).startswith("ext4")
    assert filesystem("/var", "garbage\n") == "unknown"


def test_the_scale_part_names_the_records_file_system_and_removes_its_directory():
    """--state-dir puts the helper's records in a directory of its own under DIR, named in the
    report with its file system, and removed afterwards; DIR itself and what else it holds stay."""
    parent = "/dev/shm"
    if filesystem(parent) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine")
    before = set(os.listdir(parent))
    out = CliRunner().invoke(bench, ["--quick", "--json", "--ports", "3", "--state-dir", parent, "--only", "scale"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    scale = result["scale"]
    assert all(result[part] == {"skipped": f"--skip {part}"} for part in ("latency", "hook", "networks")), result
    assert "emulated CPU" not in format_result(result)      # a real CPU here
    result["machine"]["cpu_model"] = "QEMU TCG CPU version 2.5+"
    assert "note: an emulated CPU (QEMU TCG CPU version 2.5+)" in format_result(result)
    assert scale["state_fs"] == "tmpfs" and scale["state_dir"].startswith(parent + "/vmnet-bench-"), scale
    assert set(os.listdir(parent)) == before
    refused = CliRunner().invoke(bench, ["--state-dir", "/nonexistent/vmnet"])
    assert refused.exit_code == 2 and "does not exist" in refused.output


@pytest.mark.unit
def test_the_cpu_model_is_the_first_model_name(tmp_path):
    from vmnet.bench.runner import cpu_model
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: QEMU TCG CPU version 2.5+\n"
                    "\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(str(info)) == "QEMU TCG CPU version 2.5+"
    assert cpu_model(str(tmp_path / "absent")) == "unknown"
    assert cpu_model() != "unknown"


def test_only_and_skip_together_are_refused_before_anything_is_made():
    before = set(os.listdir("/run"))
    out = CliRunner().invoke(bench, ["--only", "networks", "--skip", "scale"])
    assert out.exit_code == 2 and "--only and --skip together" in out.output, out.output
    assert set(os.listdir("/run")) == before
    unknown = CliRunner().invoke(bench, ["--only", "vlan"])
    assert unknown.exit_code == 2 and "'vlan' is not one of" in unknown.output, unknown.output


def test_a_records_directory_someone_else_made_first_is_refused_and_left_alone(tmp_path):
    """Under a directory others may write to, the bench makes its records' directory itself:
    one that is already there (a guess of its name) is never used, nor removed."""
    from vmnet.bench.launcher import BenchHelper
    helper = BenchHelper("bnt" + os.urandom(2).hex(), state_parent=str(tmp_path))
    os.mkdir(helper.state_dir)
    with open(os.path.join(helper.state_dir, "theirs"), "w") as f:
        f.write("x")
    try:
        with pytest.raises(FileExistsError):
            helper.start()
    finally:
        helper.close()
    assert os.listdir(helper.state_dir) == ["theirs"] and not os.path.exists(helper.dir)


@pytest.mark.unit
def test_guest_starts_its_tcp_sink_before_it_says_ready():
    from vmnet import testguest
    init = testguest.init_script(["/bin/busybox insmod /lib/modules/virtio_net.ko"], "198.18.1.2")
    lines = init.splitlines()
    sink = next(i for i, line in enumerate(lines) if f"nc -ll -p {testguest.TCP_SINK_PORT}" in line)
    ready = next(i for i, line in enumerate(lines) if testguest.READY in line)
    assert lines[sink].endswith("&") and "dd of=/dev/null" in lines[sink]
    assert lines.index("/bin/busybox ip addr add 198.18.1.2/24 dev eth0") < sink < ready


@pytest.mark.unit
def test_tap_guest_gets_the_device_a_one_queue_port_gets():
    from vmnet.bench import qemuguest
    from vmnet.model import Port, PortSpec
    from vmnet.qemu_args import device_arg
    port = Port(spec=PortSpec(name="p1"), mode="native", mtu=3506, host_ifindex=1, consumer_ifindex=2)
    vmnet_device = device_arg(port).split(",")
    tap_device = qemuguest.tap_device_arg("tap0", port.spec.mac, 3506).split(",")
    assert vmnet_device[0] == tap_device[0] and vmnet_device[2:] == tap_device[2:]
    netdev = qemuguest.tap_netdev_arg("tap0", "vmt3-x").split(",")
    assert netdev[0] == "tap" and {"script=no", "downscript=no", "vhost=off", "ifname=vmt3-x"} <= set(netdev)
    assert "vnet_hdr=off" in qemuguest.tap_netdev_arg("tap0", "vmt3-x", vnet_hdr=False)


@pytest.mark.unit
def test_guest_comparison_says_why_it_cannot_run():
    from vmnet.bench import qemuguest
    assert "VMNET_TEST_QEMU is not set" in qemuguest.qemu_problem(None)
    assert "has no af-xdp netdev" in qemuguest.qemu_problem("/bin/true")


@pytest.mark.system
def test_guest_behind_af_xdp_is_compared_with_tap_and_everything_goes_away():
    import os
    from vmnet.bench import qemuguest
    qemu = os.environ.get("VMNET_TEST_QEMU")
    problem = qemuguest.qemu_problem(qemu)
    if not qemu:
        pytest.skip(problem)
    assert problem is None, problem     # set, but unusable: a broken setup, not a skip
    out = CliRunner().invoke(bench, ["--quick", "--json", "--skip", "latency", "--skip", "scale",
                                     "--skip", "hook"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    dp = result["datapath"]
    assert "error" not in dp["guest"], dp["guest"]
    for key in ("afxdp", "afxdp_skb", "tap", "tap_novnet"):
        assert dp["guest_rtt_p50_ms"][key] > 0 and dp["tcp_mbytes_s"][key] > 0, key
        assert dp["guest"]["backends"][key]["qemu_credentials"]["uid"] == 65534
    assert dp["guest"]["backends"]["tap"]["qemu_credentials"]["effective"] == []
    assert result["tcp_ratio_afxdp_to_tap"] > 0 and result["guest_rtt_p50_ratio_afxdp_to_tap"] > 0
    workdir = dp["guest"]["workdir"]
    assert not os.path.exists(workdir)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert workdir.encode() not in f.read(), f"process {pid} outlived the benchmark"
        except OSError:
            pass
    assert "tcp/tap" in format_result(result)
    mg = result["migration"]
    assert "error" not in mg, result.get("errors", mg)
    for kind in ("vmnet", "tap"):
        assert mg[kind]["destination"] == "running" and mg[kind]["pings_sent"] > 100, mg
    assert mg["vmnet"]["port_activated"], mg
    assert "vmnet lost" in format_result(result)


@pytest.mark.unit
def test_the_classifier_request_makes_clsact_then_a_direct_action_bpf_filter():
    req = rawnl.classifier_request(7, 42, "vmnet_hf_tc_v1")
    first = rawnl.NLMSGHDR.unpack_from(req)
    second = rawnl.NLMSGHDR.unpack_from(req, first[0])
    assert (first[1], second[1]) == (rawnl.RTM_NEWQDISC, rawnl.RTM_NEWTFILTER)
    assert b"clsact\0" in req and b"bpf\0" in req and b"vmnet_hf_tc_v1\0" in req
    assert struct.pack("=HHI", 8, rawnl.TCA_BPF_FD, 42) in req
    assert struct.pack("=HHI", 8, rawnl.TCA_BPF_FLAGS, rawnl.TCA_BPF_FLAG_ACT_DIRECT) in req


def test_the_vm_start_benchmark_refuses_a_qemu_without_af_xdp_saying_so():
    """scripts/bench-vm-start needs a QEMU with af-xdp (the VM tier's); Debian's has none."""
    import subprocess
    import sys
    debian_qemu = "/usr/bin/qemu-system-x86_64"
    if not os.path.exists(debian_qemu):
        pytest.skip("Debian's QEMU is not installed")
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench-vm-start")
    out = subprocess.run([sys.executable, script, "--qemu", debian_qemu], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert out.returncode != 0 and "needs a QEMU built with af-xdp" in out.stderr, out.stderr
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--runs" in shown.stdout and "libvirt's own NIC" in shown.stdout


def test_the_kernel_matrix_runs_one_bench_part_in_a_kernel_and_fails_when_it_does():
    """scripts/kernel-matrix --bench PART: `vmnet bench --only PART` instead of pytest, its report
    printed; the entry fails when the bench does. The host entry here (no guest, same code path
    but the boot): the 6.12 entry is what measures a bridge VLAN port."""
    import subprocess
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "kernel-matrix")
    ran = subprocess.run([script, "--kernel", "host", "--bench", "scale", "--", "--quick", "--ports", "3"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "2. scale: 3 one-queue ports" in ran.stdout and "--skip networks" in ran.stdout, ran.stdout
    assert "vmnet bench exit 0" in ran.stdout and "1 passed, 0 failed" in ran.stdout
    bad = subprocess.run([script, "--kernel", "host", "--bench", "scale", "--", "--ports", "1"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "vmnet bench exited 2" in bad.stdout and "0 passed, 1 failed" in bad.stdout
