"""bench.fidelity's calibration math and workload, and bench.compare's --backend real
plumbing; nothing here starts vLLM."""

from __future__ import annotations

import math

import pytest

from bench import compare
from bench.fidelity import Calibration, table, workload
from bench.harness.pods import RealPods
from bench.sim.latency import LatencyModel


def _cal() -> Calibration:
    return Calibration(
        cold_ttft={128: 0.02, 1024: 0.05},
        cached_ttft={128: 0.015, 1024: 0.02},
        intercept_s=0.014,
        per_token_s=1 / 27000,
        itl_short_s=0.0025,
        itl_long_s=0.0035,
        itl_batch8_s=0.0039,
        long_ctx=2048,
    )


def test_latency_model_reproduces_calibration() -> None:
    cal = _cal()
    lm = LatencyModel(**cal.latency_kwargs())
    # a lone decode step with 64 tokens of context = the measured lone ITL
    assert lm.step_time(1, 0, 1, 64) == pytest.approx(cal.itl_short_s, rel=1e-6)
    assert lm.step_time(1, 0, 1, 2048) == pytest.approx(cal.itl_long_s, rel=0.02)
    assert lm.step_time(8, 0, 8, 8 * 64) == pytest.approx(cal.itl_batch8_s, rel=0.05)
    # a long cold prefill costs n / (27k tok/s) plus the step's fixed part
    assert lm.step_time(1, 3000, 0, 3000) == pytest.approx(3000 / 27000, rel=0.05)
    cli = cal.cli_equivalent()
    assert cli["speed"] == pytest.approx(7.04e-3 / 0.0025)
    assert cli["prefill_tokens_per_s"] * cli["speed"] == pytest.approx(27000)


def test_workload_is_seeded_and_mixes_cold_prompts() -> None:
    kw = dict(groups=4, prefix=64, question=8, cold=0.25, output=4, model="m")
    a = workload(200, 5.0, 1, **kw)  # type: ignore[arg-type]
    b = workload(200, 5.0, 1, **kw)  # type: ignore[arg-type]
    assert [s.body for s in a] == [s.body for s in b]
    cold = sum(s.group == "cold" for s in a)
    assert 25 < cold < 80
    assert all(len(str(s.body["prompt"]).split()) == 72 for s in a)
    shared = [s for s in a if s.group == "g0"]
    assert len({str(s.body["prompt"]).split()[0:64].__repr__() for s in shared}) == 1
    assert all(a[i].at <= a[i + 1].at for i in range(len(a) - 1))


def test_table_renders_missing_values() -> None:
    summary = {
        "ok": 1,
        "requests": 1,
        "ttft": {"p50": 0.01, "p90": None},
        "e2e": {"p50": 0.02},
        "itl": {"p50": math.nan},
        "prefix_hit_rate": 0.5,
    }
    out = table([{"rate": 4.0, "backend": "real", "summary": summary}])
    assert "| 4 | real | 1/1 | 10 | - |" in out and "50.0" in out


def test_compare_real_backend_defaults() -> None:
    args = compare.parse_args(["--backend", "real"])
    plan = compare.plan_from(args)
    assert plan.workloads == ["shared_prefix"]
    assert [t.label for t in plan.targets] == ["picker", "round_robin", "least_request"]
    assert plan.rates == [3.0] and plan.duration == 60.0
    assert plan.knobs["shared_prefix"]["model"] == "tiny-llama"
    assert plan.knobs["shared_prefix"]["system_len"] == 110
    with pytest.raises(SystemExit):
        compare.plan_from(compare.parse_args(["--backend", "real", "--workloads", "lora_mix"]))
    sim = compare.plan_from(compare.parse_args(["--quick"]))
    assert sim.knobs["shared_prefix"]["system_len"] == 2000
    assert "model" not in sim.knobs["shared_prefix"]


def test_real_pods_vllm_args() -> None:
    assert RealPods(num_blocks=28).vllm_args() == [
        "--num-gpu-blocks-override",
        "28",
        "--max-model-len",
        str(27 * 128),
    ]
    assert RealPods(num_blocks=0, extra_args=["--x"]).vllm_args() == ["--x"]
