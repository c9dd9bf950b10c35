"""The comparison harness: aggregation math, metric parsing, CLI plumbing, a tiny real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import compare
from bench.harness.podmetrics import HITS, QUERIES, SUCCESS, WAITING, deltas, parse_metrics
from bench.harness.report import markdown
from bench.harness.runner import Record
from bench.harness.stats import describe, summarize, tpot
from bench.harness.targets import parse_target
from bench.stack.client import Outcome


def rec(i: int, ttft: float, e2e: float, tokens: int, pod: str = "p1", status: int = 200) -> Record:
    itl = [(e2e - ttft) / (tokens - 1)] * (tokens - 1) if tokens > 1 else []
    out = Outcome(status=status, ttft=ttft, e2e=e2e, itl=itl, output_tokens=tokens, pod=pod)
    if status != 200:
        out = Outcome(status=status, e2e=e2e, error="boom")
    return Record(i, 0.0, 0.0, out)


def test_describe_percentiles_and_mean() -> None:
    d = describe([float(x) for x in range(1, 101)])
    assert d["mean"] == pytest.approx(50.5)
    assert d["p50"] == pytest.approx(50.5)
    assert d["p90"] == pytest.approx(90.1)
    assert d["p99"] == pytest.approx(99.01)
    assert d["count"] == 100
    empty = describe([])
    assert math.isnan(empty["p50"]) and math.isnan(empty["mean"])


def test_tpot() -> None:
    assert tpot(rec(0, 0.1, 1.1, 11)) == pytest.approx(0.1)
    assert tpot(rec(0, 0.1, 0.1, 1)) is None
    assert tpot(rec(0, 0.1, 0.5, 5, status=500)) is None


def test_summarize() -> None:
    records = [rec(i, 0.01 * (i + 1), 0.5, 6, pod=f"p{i % 2}") for i in range(10)]
    records += [rec(10, 0, 0.01, 0, status=429), rec(11, 0, 0.01, 0, status=0)]
    pods: dict[str, dict[str, float]] = {
        "p0": {HITS: 30.0, QUERIES: 100.0, SUCCESS: 5.0},
        "p1": {HITS: 10.0, QUERIES: 100.0, SUCCESS: 5.0},
    }
    s = summarize(records, 2.0, pods)
    assert s["requests"] == 12 and s["ok"] == 10
    assert s["errors"] == {"0": 1, "429": 1}
    assert s["ttft"]["mean"] == pytest.approx(0.055)
    assert s["ttft"]["p50"] == pytest.approx(0.055)
    assert s["output_tokens"] == 60
    assert s["output_tokens_per_s"] == pytest.approx(30.0)
    assert s["request_rate"] == pytest.approx(5.0)
    assert s["pod_share"] == {"p0": 0.5, "p1": 0.5}
    assert s["prefix_hit_rate"] == pytest.approx(0.2)
    assert s["itl"]["count"] == 50
    json.dumps(s)  # JSON-ready (no NaN)


def test_parse_metrics_and_deltas() -> None:
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 120.0\n'
        "vllm:prefix_cache_queries_total 400\n"
        'vllm:request_success_total{engine="0",finished_reason="length"} 7.0\n'
        'vllm:request_success_total{engine="0",finished_reason="stop"} 1.0\n'
        "other_metric 5\n"
    )
    m = parse_metrics(text)
    assert m == {WAITING: 3.0, HITS: 120.0, QUERIES: 400.0, SUCCESS: 8.0}
    d = deltas({"a": {HITS: 20.0, WAITING: 9.0}}, {"a": m})
    assert d["a"][HITS] == 100.0 and d["a"][WAITING] == 3.0 and d["a"][QUERIES] == 400.0


def test_parse_target() -> None:
    assert parse_target("picker").label == "picker"
    assert parse_target("vllm-router").label == "vllm-router:cache_aware"
    assert parse_target("sglang-router:power_of_two").policy == "power_of_two"
    assert parse_target("url", "http://x:1").url == "http://x:1"
    with pytest.raises(ValueError):
        parse_target("haproxy")


def test_markdown_row() -> None:
    records = [rec(i, 0.02, 0.2, 4) for i in range(4)]
    s = summarize(records, 1.0)
    table = markdown([{"target": "picker", "workload": "uniform", "rate": 4.0, "pods": 2, **s}])
    lines = table.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| picker")
    assert "20.0/20.0/20.0" in lines[2]


def test_tiny_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compare.main(
        [
            "--workloads",
            "shared_prefix",
            "--targets",
            "picker,round_robin",
            "--rates",
            "20",
            "--requests",
            "12",
            "--pods",
            "2",
            "--time-scale",
            "10",
            "--knob",
            "shared_prefix.system_len=200",
            "--knob",
            "shared_prefix.groups=2",
            "--out",
            str(tmp_path),
            "--no-plots",
        ]
    )
    out = capsys.readouterr().out
    assert "| picker" in out and "| round_robin" in out
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    runs = data["runs"]
    assert [r["target"] for r in runs] == ["picker", "round_robin"]
    for r in runs:
        assert r["requests"] == 12 and r["ok"] == 12, r.get("first_error")
        assert r["ttft"]["p50"] > 0
        assert sum(r["pod_requests"].values()) == 12
        assert r["prefix_query_tokens"] > 0
        assert set(r["pod_share"]) <= set(r["pod_requests"])


def test_observation_share_sums_replicas_per_pod_and_averages_pods() -> None:
    """For real pods (which count no renders) the harness reads picker's own gauge."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from bench.harness.targets import observation_share
    from bench.stack.procs import free_port

    ports, servers = [], []
    for shares in ({"a": 0.004, "b": 0.006}, {"a": 0.002, "b": 0.0}):
        reg = CollectorRegistry()
        g = Gauge("picker_pod_observation_share", "", ["name", "model_server_pod"], registry=reg)
        for pod, v in shares.items():
            g.labels("", pod).set(v)
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=reg)[0])
        ports.append(port)
    try:
        got = observation_share([*ports, free_port()])  # a replica that is gone: skipped
        assert got["observation_share"] == pytest.approx((0.006 + 0.006) / 2)
        assert observation_share([free_port()]) == {}
    finally:
        for s in servers:
            s.shutdown()
