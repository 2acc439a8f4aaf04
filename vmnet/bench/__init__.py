"""`vmnet bench`: what vmnet adds to a VM's start, and whether it holds as a host fills up.

Measures, in one run, against baselines taken in the same run: port
create/delete latency through the helper vs the floor (the same kernel work
done directly), 256 ports (first vs last creates, helper memory, `vmnet
status`, teardown), the libvirt hook vs `python3 -c pass`, the data
path's ping RTT, and a boot storm (100 VMs' hooks and wrappers at once). Prints a table (or one JSON object) with each of the
issue's goals met or missed and by how much. See docs/performance.md.
"""

from __future__ import annotations

import json
import sys

import click

from .runner import PARTS, Plan, progress_to_terminal, run

__all__ = ["bench", "run", "Plan"]


@click.command()
@click.option("--quick", is_flag=True, help="Fewer iterations, 64 ports instead of 256 and a boot storm of "
              "20 VMs instead of 100 (for CI).")
@click.option("--storm-vms", type=click.IntRange(1, 1000),
              help="VMs started at once in the boot-storm part (default 100, 20 with --quick).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--iterations", type=click.IntRange(1), help="Create/delete iterations per queue count "
              "(default 200, 20 with --quick).")
@click.option("--ports", type=click.IntRange(2), help="Ports in the scale part (default 256, 64 with --quick).")
@click.option("--queues", "queue_counts", multiple=True, type=click.IntRange(1, 64),
              help="Queue counts of the latency part (default 1, 4 and 8; repeatable).")
@click.option("--skip", multiple=True, type=click.Choice(PARTS), help="Leave out a part (repeatable).")
@click.option("--only", multiple=True, type=click.Choice(PARTS),
              help="Run only this part (repeatable); the others are reported as skipped.")
@click.option("--hook", "hook_path", metavar="PATH",
              help="Hook to measure (default: the one `vmnet libvirt install-hook` installs).")
@click.option("--profile", "profile_dir", metavar="DIR",
              help="Run the helper under cProfile; write DIR/helper.prof and DIR/helper-top.txt.")
@click.option("--lease-from", metavar="NIC",
              help="Also measure netkit-lease ports leasing from NIC (in this netns), against their "
                   "floor; needs queue-create (Linux >= 7.1) and a NIC that lends queues.")
@click.option("--state-dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, resolve_path=True),
              help="Keep the records of the latency, scale and hook parts' helper in a new directory "
                   "under DIR, removed afterwards (default: under /run, as the helper's own). The scale "
                   "part names the file system; compare one with another.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when a goal is missed.")
@click.pass_context
def bench(click_ctx, quick, storm_vms, as_json, iterations, ports, queue_counts, skip, only, hook_path,
          profile_dir, lease_from, state_dir, strict):
    """Benchmark port setup, scale, the libvirt hook and the data path (root).

    Everything runs against a throwaway helper in a throwaway network
    namespace and is removed afterwards, also on errors and Ctrl-C. Timings
    are wall-clock on this machine; ratios to the floors measured in the
    same run are what carries over to other machines.
    """
    from ..errors import CheckFailed
    from .report import format_result
    parent = click_ctx.obj                      # `vmnet --json bench` works too
    if only and skip:
        raise click.UsageError("--only and --skip together: name the parts to run with --only, "
                               "or the parts to leave out with --skip, not both")
    if only:
        skip = tuple(part for part in PARTS if part not in only)
    as_json = as_json or bool(getattr(parent, "json", False))
    plan = Plan.make(quick, iterations=iterations, ports=ports,
                     queue_counts=tuple(queue_counts) or None, skip=tuple(skip),
                     hook_path=hook_path, profile_dir=profile_dir, lease_from=lease_from, storm_vms=storm_vms,
                     state_dir=state_dir)
    progress = progress_to_terminal if sys.stderr.isatty() else (lambda *_: None)
    result = run(plan, progress)
    if progress is progress_to_terminal:
        sys.stderr.write("\r\033[K")
    click.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else format_result(result))
    missed = [g["name"] for g in result["goals"] if g["met"] is False]
    if strict and missed:
        raise CheckFailed(f"{len(missed)} goal(s) missed: {', '.join(missed)}")
