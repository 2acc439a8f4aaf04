"""`vmnet bench`: a tiny run has the report's shape and leaves nothing behind.

No timing is asserted here: the numbers belong to docs/performance.md and
to whoever runs the benchmark; this only keeps the benchmark from rotting.
"""

import json

import pytest
from click.testing import CliRunner

from vmnet.bench import bench
from vmnet.bench import floor
from vmnet.bench.report import format_result
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
def test_floor_batches_the_pair_and_the_link_up_in_one_datagram():
    req = floor.veth_request("vmn-a", "vmc-a", 2, 3506, "02:00:00:00:00:01")
    first = floor._NLMSGHDR.unpack_from(req)
    second = floor._NLMSGHDR.unpack_from(req, first[0])
    assert first[1] == second[1] == floor.RTM_NEWLINK
    assert first[2] & floor.NLM_F_CREATE and not second[2] & floor.NLM_F_CREATE
    assert first[0] + second[0] == len(req)
    assert b"veth\0" in req and b"vmc-a\0" in req


@pytest.mark.netns
def test_quick_bench_reports_every_part_as_json_and_cleans_up():
    out = CliRunner().invoke(bench, ["--quick", "--json", "--iterations", "2", "--ports", "4",
                                     "--queues", "1", "--queues", "2"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert "errors" not in result, result["errors"]
    for part in ("latency", "scale", "hook", "datapath"):
        assert "error" not in result[part], (part, result[part])
    for key in HEADLINE_BY_QUEUES:
        assert set(result[key]) == {"1", "2"} and all(v > 0 for v in result[key].values()), key
    for key in HEADLINE:
        if key == "hook_ratio_to_python" and "skipped" in result["hook"]:
            continue        # the hook may be absent; the report then says why
        assert isinstance(result[key], (int, float)) and result[key] > 0, key
    assert result["scale"]["ports"] == 4 and len(result["scale"]["create_ms"]) == 4
    assert result["datapath"]["ok"], result["datapath"]
    assert {g["name"] for g in result["goals"]} >= {"create p99, 1 queue", "scale: helper RSS"}
    assert all(set(g) >= {"value", "limit", "met", "verdict"} for g in result["goals"])
    text = format_result(result)
    assert "goals" in text and "create p99, 1 queue" in text
