"""The benchmark's result as a table for people. Pure."""

from __future__ import annotations


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _x(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _table(head: tuple, rows: list[tuple]) -> list[str]:
    lines = [head] + rows
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]


def _problem(part: dict) -> str | None:
    return part.get("skipped") or part.get("error")


def _guests(g: dict) -> list[str]:
    """The af-xdp vs tap guest comparison of the data-path part."""
    if g.get("skipped"):
        return [f"   guest comparison (af-xdp vs tap) skipped: {g['skipped']}"]
    if g.get("error"):
        return [f"   guest comparison (af-xdp vs tap) failed: {g['error']}"]
    if not g:
        return []
    out = [f"   the test guest (TCG: absolute numbers are low, the ratios are the result), MTU {g['mtu']}, "
           f"QEMU as {g['user']}; {g['pings']} pings and {g['tcp_rounds']} x {g['tcp_seconds']:g} s of "
           "host -> guest TCP each, in turn:"]
    base = g["backends"].get("tap") or {}
    rows = []
    for key, b in g["backends"].items():
        drops = (sum(s.get("rx_dropped", 0) for s in b.get("xdp_statistics") or [])
                 + (b["host_link"]["tx_dropped"] or 0))
        rows.append((key, b["backend"], _ms(b["rtt"]["p50"]), _ms(b["rtt"]["p99"]), str(b["pings_lost"]),
                     f"{b['tcp_mbytes_s']:.1f}",
                     f"{sum(r['total_retrans'] for r in b['tcp_runs'])}/"
                     f"{sum((r.get('why_retransmitted') or {}).get('TCPLossProbes', 0) for r in b['tcp_runs'])}",
                     str(drops),
                     "" if b is base else _x(_div(b["rtt"]["p50"], base.get("rtt", {}).get("p50"))),
                     "" if b is base else _x(_div(b["tcp_mbytes_s"], base.get("tcp_mbytes_s"))),
                     _ms((b.get("qemu_cpu_ms_per_mb") or {}).get("vcpu")),
                     _ms((b.get("qemu_cpu_ms_per_mb") or {}).get("other"))))
    out += ["   " + line for line in _table(
        ("guest", "backend", "ping p50", "p99", "lost", "TCP MB/s", "retrans/TLP", "drops", "rtt/tap", "tcp/tap",
         "vCPU ms/MB", "QEMU I/O ms/MB"), rows)]
    out += ["   tap hands the guest 64 KB TSO frames (virtio-net header); AF_XDP frames carry none, like "
            "tap_novnet's.",
            "   drops: XDP rx_dropped + host end tx_dropped; retrans/TLP: segments sent again / tail loss "
            "probes (one answered by a D-SACK lost nothing);",
            "   ms/MB: QEMU's CPU per MB the guest received, its vCPU thread (the guest) and the rest "
            "(the backend)"]
    return out


def _div(a, b):
    return None if a is None or not b else a / b


KIND_LABELS = {"plain": "no attachment, no anti-spoofing", "none": "no attachment, anti-spoofing",
               "bridge": "Linux bridge member", "vlan": "bridge member, access VLAN", "routed": "routed /32",
               "routed_dhcp": "routed /32 + its address server",
               "ovs": "Open vSwitch port (userspace datapath)"}


def _network_lines(r: dict) -> list[str]:
    nw = r.get("networks") or {}
    if _problem(nw):
        return ["6. networks", f"   {_problem(nw)}"]
    cr = nw["create"]
    out = [f"6. networks: one-queue ports by attachment kind, {cr['iterations']} iterations each, ms "
           "(kinds rotating; floor: the same kernel work done directly)"]
    rows = []
    for kind in [k for k in KIND_LABELS if k in cr["kinds"]]:
        v = cr["kinds"][kind]
        if "create" not in v:
            rows.append((kind, KIND_LABELS[kind], "-", "-", "-", "-", "-", "-", v.get("skipped", "")))
            continue
        rows.append((kind, KIND_LABELS[kind], _ms(v["create"]["p50"]), _ms(v["create"]["p99"]), _ms(v["cpu"]["p50"]),
                     "" if kind == "plain" else f"+{v['added_p50_ms']:.2f}",
                     _ms((v.get("floor_create") or {}).get("p50")),
                     "" if kind == "plain" or "floor_added_p50_ms" not in v else f"+{v['floor_added_p50_ms']:.2f}",
                     _ms(v["delete"]["p50"])))
    out += ["   " + line for line in _table(
        ("kind", "", "create p50", "p99", "cpu p50", "added", "floor p50", "floor added", "delete p50"), rows)]
    out.append("   added: over plain's create p50; one port with anti-spoofing stays meanwhile (a host where a VM "
               "runs)")
    ovs_plain = ((cr.get("kinds") or {}).get("ovs") or {}).get("plain_meanwhile")
    if ovs_plain:
        out.append(f"   ovs-vswitchd runs only for ovs, measured last: its \"added\" is over plain ports made meanwhile "
                   f"(create p50 {_ms(ovs_plain['p50'])} ms), as it slows every create in its netns")
    fp = cr.get("first_port_ms") or {}
    if fp:
        out.append(f"   a host's first port with anti-spoofing (its filter's pins, the kernel's switch for tc "
                   f"classifiers): create p50 {_ms(fp.get('none'))} ms, without anti-spoofing {_ms(fp.get('plain'))} ms")
    dp = nw.get("datapath") or {}
    if _problem(dp):
        out.append(f"   data path: {_problem(dp)}")
        return out
    out.append(f"   TCP through a stand-in guest (vmnet's responder relaying to a tap), MTU {dp['mtu']}, median of "
               f"{dp['rounds']} x {dp['seconds']:g} s, MB/s (br_netfilter's hooks off unless said):")
    labels = {"unattached": "unattached", "bridge_nofilter": "bridge, no anti-spoofing",
              "bridge": "bridge + anti-spoofing", "bridge_brnf": "bridge + anti-spoofing, br_netfilter on"}
    rows = []
    for key in dp.get("cases") or ("unattached", "bridge"):
        r = (dp.get("ratios_to_unattached") or {}).get(key) or {}
        rows.append((labels.get(key, key), _ms(dp[key]["guest_to_host"]), _ms(dp[key]["host_to_guest"]),
                     _x(r.get("guest_to_host")), _x(r.get("host_to_guest"))))
    out += ["   " + line for line in _table(("port", "guest -> host", "host -> guest", "ratio", "ratio"), rows)]
    cost = dp.get("bpf_run_time") or {}
    if cost:
        out.append("   kernel run time per packet meanwhile (bpf_stats): " + ", ".join(
            f"{k.replace('_', ' ')} {v['ns_per_packet']} ns ({v['packets']} packets)" for k, v in cost.items()))
    out.append(f"   frames the filter dropped on the bridged port: {dp.get('spoofed_on_bridge_port')}")
    return out


def _lease_lines(r: dict) -> list[str]:
    le = r.get("lease") or {}
    if _problem(le):
        return ["7. netkit-lease", f"   {_problem(le)}"]
    return ["7. netkit-lease: one-queue ports leasing from " + le["nic"]
            + f" (zero-copy {'yes' if le['zero_copy'] else 'no'}), {le['iterations']} iterations, ms",
            f"   create p50 {_ms(le['create']['p50'])}, p99 {_ms(le['create']['p99'])}; floor p50 "
            f"{_ms(le['floor_create']['p50'])} ({_x(le['create_p50_ratio_to_floor'])}); delete p50 "
            f"{_ms(le['delete']['p50'])}, floor {_ms(le['floor_delete']['p50'])}",
            "   library with a held shared program; floor: netkit single + queue-create + move + one "
            "socket in the map, the program already on the NIC"]


def _xdp_sharing_lines(r: dict) -> list[str]:
    xs = r.get("xdp-sharing") or {}
    if _problem(xs):
        return ["8. sharing a NIC's XDP hook (libxdp dispatcher)", f"   {_problem(xs)}"]
    c, pp = xs["create_ms"], xs["ns_per_packet"]
    return ["8. sharing a NIC's XDP hook (libxdp dispatcher), per create on a veth, "
            f"{xs['iterations']} iterations, ms p50 (p99)",
            f"   bpf_link attach {_ms(c['link_attach']['p50'])} ({_ms(c['link_attach']['p99'])}), detach "
            f"{_ms(c['link_detach']['p50'])}",
            f"   join, making the dispatcher {_ms(c['join_new']['p50'])} ({_ms(c['join_new']['p99'])}), "
            f"leave as the last {_ms(c['leave_last']['p50'])}",
            f"   join a dispatcher running another program {_ms(c['join_existing']['p50'])} "
            f"({_ms(c['join_existing']['p99'])}), leave it {_ms(c['leave_one']['p50'])}",
            "   per packet (BPF_PROG_TEST_RUN, 1,000,000 runs, median of 3), ns: "
            f"vmnet's program alone {pp['alone']['other_queue']} / {pp['alone']['served_queue']}, in the "
            f"dispatcher {pp['dispatcher']['other_queue']} / {pp['dispatcher']['served_queue']} "
            f"(a frame of another queue / of a queue vmnet serves); added "
            f"{pp['added']['other_queue']} / {pp['added']['served_queue']}"]


def _migration_lines(r: dict) -> list[str]:
    mg = r.get("migration") or {}
    if _problem(mg):
        return ["9. live migration (QEMU's, on one bridge)", f"   {_problem(mg)}"]
    rows = [(kind, _ms(mg[kind]["downtime_ms"]), _ms(mg[kind]["total_ms"]),
             f"{mg[kind]['pings_lost']:g} of {mg[kind]['pings_sent']:g}",
             " ".join(str(run["pings_lost"]) for run in mg[kind].get("runs", ()))) for kind in ("vmnet", "tap")]
    return (["9. live migration (QEMU's, on one bridge): the same guest, a vmnet NIC and a tap NIC, "
             f"pinged every {mg['ping_interval_ms']:g} ms; medians of {mg.get('rounds', 1)} round(s)"]
            + ["   " + line for line in _table(("NIC", "QEMU downtime ms", "total ms", "pings lost", "each round"),
                                             rows)]
            + [f"   vmnet lost {mg['extra_pings_lost']:+g} ping(s) against tap"])


def _storm_lines(r: dict) -> list[str]:
    bs = r.get("boot-storm") or {}
    if _problem(bs):
        return ["10. boot storm", f"   {_problem(bs)}"]
    return [f"10. boot storm: {bs['vms']} VMs at once, each its libvirt hook's prepare then the QEMU wrapper's "
            "hand-off (separate processes)",
            f"   all with their sockets after {bs['wall_s']:.2f} s; slowest VM {bs['slowest_vm_s']:.2f} s, median "
            f"{bs['vm_p50_ms'] / 1000:.2f} s (its hook {bs['hook_p50_ms'] / 1000:.2f} s)",
            f"   CPU per VM: the helper {_ms(bs['helper_cpu_per_vm_ms'])} ms, the hook's and the wrapper's processes "
            f"{_ms(bs['processes_cpu_per_vm_ms'])} ms, on {bs['cpus']} CPUs",
            f"   releasing all through the hook: {bs['release_all_s']:.2f} s, {bs['release_failures']} failed, "
            f"{bs['ports_left_after_release']} port(s) left",
            f"   floor, the same storm of two bare interpreter starts per VM (python -I -S -c 'import json'): "
            f"{bs['floor_wall_s']:.2f} s, slowest VM {bs['floor_slowest_vm_s']:.2f} s, "
            f"{_ms(bs['floor_cpu_per_vm_ms'])} ms of CPU per VM"]


def format_result(r: dict) -> str:
    out = [f"vmnet bench{' --quick' if r.get('quick') else ''}: kernel {r['machine']['kernel']}, "
           f"{r['machine']['cpus']} CPUs, load {r['machine']['loadavg_start']} -> {r['machine'].get('loadavg_end')}, "
           f"{r.get('duration_s', 0):.0f} s", ""]
    busy = max(r["machine"]["loadavg_start"][0], (r["machine"].get("loadavg_end") or [0])[0])
    if busy > 0.5 * (r["machine"]["cpus"] or 1):
        out[-1:-1] = [f"note: load average {busy:.1f} on {r['machine']['cpus']} CPUs: other work shares this "
                      "machine; p99s and absolute times reflect it, ratios and CPU times much less"]
    if "TCG" in r["machine"].get("cpu_model", ""):
        out[-1:-1] = [f"note: an emulated CPU ({r['machine']['cpu_model']}): times are many times a real CPU's, so "
                      "the goals' limits do not apply; compare the rows of this run with each other"]
    lat = r.get("latency") or {}
    out.append(f"1. port create/delete latency, ms ({r['plan']['iterations']} iterations each, veth, "
               "client-side wall time)")
    if _problem(lat):
        out.append(f"   {_problem(lat)}")
    else:
        rows = []
        for q, v in lat.items():
            for way, label in (("", "helper"), ("library_", "library"), ("floor_", "floor")):
                rows.append((q if not way else "", label, _ms(v[way + "create"]["p50"]), _ms(v[way + "create"]["p99"]),
                             _ms(v[way + "create_cpu"]["p50"]),
                             _ms(v[way + "delete"]["p50"]), _ms(v[way + "delete"]["p99"]),
                             _x(r["create_p50_ratio_to_floor_by_queues"].get(q)) if not way else ""))
        out += ["   " + line for line in _table(
            ("queues", "way", "create p50", "p99", "cpu p50", "delete p50", "p99", "create/floor"), rows)]
        out.append("   helper: vmnet.client -> vmnet helper; library: vmnet.priv.ports in-process; "
                   "floor: the same kernel work, direct; cpu: CPU time of one create (helper: the helper "
                   "process's)")
        steps = next(iter(lat.values())).get("floor_steps_p50_ms") or {}
        if steps:
            out.append(f"   floor create, p50 per step ({next(iter(lat))} queue(s)): "
                       + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    out.append("")
    sc = r.get("scale") or {}
    out.append(f"2. scale: {sc.get('ports', r['plan']['ports'])} one-queue ports"
               + (f" (records on {sc['state_fs']})" if sc.get("state_fs") else ""))
    if _problem(sc):
        out.append(f"   {_problem(sc)}")
    else:
        out += [f"   create p50 of the first {sc['edge']}: {_ms(sc['first_p50_ms'])} ms, of the last {sc['edge']}: "
                f"{_ms(sc['last_p50_ms'])} ms ({_x(sc['last_over_first'])}); all: p50 {_ms(sc['create']['p50'])}, "
                f"p99 {_ms(sc['create']['p99'])} ms",
                f"   (the kernel's XDP dispatcher stops costing an RCU grace period per attach after 48 programs; "
                f"creates {48 + 1}-{48 + sc['edge']}: p50 {_ms(sc['past_dispatcher_p50_ms'])} ms, last / those: "
                f"{_x(sc['last_over_past_dispatcher'])})",
                f"   helper CPU per create, first {sc['edge']}: {_ms(sc['cpu_first_p50_ms'])} ms, last {sc['edge']}: "
                f"{_ms(sc['cpu_last_p50_ms'])} ms ({_x(sc['cpu_last_over_first'])})",
                f"   helper RSS {sc['helper_rss_mb']} MiB (peak {sc['helper_hwm_mb']}, "
                f"{sc['helper_rss_mb_before']} with no port)",
                f"   `{sc['status_command']}`: p50 {_ms(sc['status_cli']['p50'])} ms, min "
                f"{_ms(sc['status_cli']['min'])} ms (new process); the same request in-process: "
                f"p50 {_ms(sc['status_in_process']['p50'])} ms; reply {sc['status_reply_bytes']} bytes",
                f"   delete all: {sc['delete_total_s']:.2f} s (p50 {_ms(sc['delete']['p50'])}, "
                f"p99 {_ms(sc['delete']['p99'])} ms each)"]
    out.append("")
    hk = r.get("hook") or {}
    out.append("3. libvirt hook")
    if _problem(hk):
        out.append(f"   {_problem(hk)}")
    else:
        out += [f"   hook: {hk['hook']}",
                f"   domain without vmnet, prepare begin: p50 {_ms(hk['plain']['p50'])} ms; "
                f"`{hk['python']} -c pass`: p50 {_ms(hk['python_c_pass']['p50'])} ms "
                f"({_x(hk['ratio_to_python'])}); `-I -S -c pass`: {_ms(hk['python_IS_c_pass']['p50'])} ms "
                f"({_x(hk['ratio_to_bare_python'])})"]
        if hk.get("port_skipped"):
            out.append(f"   one port: {hk['port_skipped']}")
        else:
            out.append(f"   domain with one port: prepare begin p50 {_ms(hk['port_prepare']['p50'])} ms "
                       f"(create p50 + {_ms(r.get('hook_prepare_over_create_ms'))} ms), release end p50 "
                       f"{_ms(hk['port_release']['p50'])} ms")
    out.append("")
    wr = r.get("wrapper") or {}
    out.append("4. the QEMU wrapper's start-up (`-version`, as libvirt probes it)")
    if _problem(wr):
        out.append(f"   {_problem(wr)}")
    else:
        rows = [(label, _ms(wr[key]["p50"]), _ms(wr[key]["p99"]),
                 "" if key == "qemu" else f"+{wr['added_ms'][key]:.1f}",
                 "" if key == "qemu" else _x(wr["ratios_to_qemu"][key]))
                for key, label in (("qemu", "QEMU itself"), ("wrapper_venv", "wrapper, libvirt host (install-wrapper)"),
                                   ("wrapper_runtime", "wrapper, KubeVirt directory"),
                                   ("wrapper_venv_tap_not_vmnets", "  libvirt host + a tap to look at"),
                                   ("wrapper_runtime_tap_not_vmnets", "  KubeVirt dir. + a tap to look at"))
                if key in wr]
        out += ["   " + line for line in _table(("way", "p50 ms", "p99", "added ms", "ratio"), rows)]
        out.append(f"   {wr['runs']} runs each; the KubeVirt directory ({wr['runtime_mib']} MiB) built in "
                   f"{wr['runtime_build_s']} s")
    out.append("")
    dp = r.get("datapath") or {}
    out.append("5. data path")
    if _problem(dp):
        out.append(f"   {_problem(dp)}")
    else:
        rtt = "-" if dp["rtt_avg_ms"] is None else f"{dp['rtt_avg_ms']:.3f}"
        out.append(f"   ping through a {dp['mode']} {dp['queues']}-queue port to the {dp['consumer']}: "
                   f"{dp['ping']} answered, rtt avg {rtt} ms"
                   + ("" if dp["ok"] else f" (problems: {'; '.join(dp['problems'])})"))
        guests = dp.get("guests") or ({"": dp["guest"]} if dp.get("guest") else {})
        for label, g in guests.items():
            if len(guests) > 1 or label:
                out.append(f"   QEMU {label} ({g.get('qemu', '?')}):")
            out += _guests(g)
    if not (r.get("networks") or {}).get("skipped"):
        out += [""] + _network_lines(r)
    if not (r.get("lease") or {}).get("skipped"):
        out += [""] + _lease_lines(r)
    if "xdp-sharing" in r:
        out += [""] + _xdp_sharing_lines(r)
    if "migration" in r:
        out += [""] + _migration_lines(r)
    if "boot-storm" in r:
        out += [""] + _storm_lines(r)
    out += ["", "goals"]
    out += ["   " + line for line in _table(
        ("goal", "limit", "measured", "verdict"),
        [(g["name"], ("at least " if g.get("minimum") else "") + f"{g['limit']:g} {g['unit']}".replace(" x", "x"),
          "-" if g["value"] is None else (f"{g['value']:.2f}x" if g["unit"] == "x" else f"{g['value']:.1f} {g['unit']}"),
          g["verdict"]) for g in r["goals"]])]
    missed = sum(g["met"] is False for g in r["goals"])
    out.append(f"   {sum(bool(g['met']) for g in r['goals'])} met, {missed} missed, "
               f"{sum(g['met'] is None for g in r['goals'])} not measured")
    for part, lines in (r.get("errors") or {}).items():
        out.append(f"error in {part}: " + " | ".join(lines))
    return "\n".join(out)
