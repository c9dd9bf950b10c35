"""bench.fidelity's calibration fit, poller and workload, and bench.compare's --backend
real plumbing; nothing here starts vLLM."""

from __future__ import annotations

import asyncio
import math
import os
import random
import subprocess
import sys

import pytest

from bench.fidelity import workload
from bench.fidelity_cal import Calibration, jitter, lstsq, model_ttft, own_overhead
from bench.fidelity_load import Observer, OtherLoad, cpu_seconds, descendants
from bench.fidelity_report import comparison, table
from bench.harness import plan as run_plan
from bench.harness.pods import RealPods
from bench.sim import SimPodConfig, start_pods
from bench.sim.latency import LatencyModel, attention_pairs

E0, PER_TOKEN, PER_PAIR, FRONT, FRONT_PER_TOKEN = 4e-3, 8e-6, 10e-9, 7e-3, 2.5e-6


def _engine(n: int, cached: int) -> float:
    return E0 + PER_TOKEN * (n - cached) + PER_PAIR * attention_pairs(cached, n - cached)


def _cal() -> Calibration:
    """A pod that behaves exactly as the fitted model's form, from known constants."""
    sizes = (128, 512, 1024, 2048, 3072)
    cached = {n: (n - 1) // 128 * 128 for n in sizes}
    cold_e = {n: _engine(n, 0) for n in sizes}
    cached_e = {n: _engine(n, cached[n]) for n in sizes}
    return Calibration(
        cold_ttft={n: cold_e[n] + FRONT + FRONT_PER_TOKEN * n for n in sizes},
        cached_ttft={n: cached_e[n] + FRONT + FRONT_PER_TOKEN * n for n in sizes},
        cold_engine=cold_e,
        cached_engine=cached_e,
        itl_short_s=0.0010,
        itl_long_s=0.0018,
        itl_batch8_s=0.0019,
        long_ctx=2048,
        scrape_s=0.004,
    )


def test_lstsq_recovers_coefficients() -> None:
    rows = [(1.0, x, x * x * 1e3) for x in (0.5, 1.0, 2.0, 3.0, 5.0)]
    ys = [2.0 + 3.0 * x + 0.25 * z for _, x, z in rows]
    assert lstsq(rows, ys) == pytest.approx([2.0, 3.0, 0.25])


def test_calibration_fit_recovers_engine_and_front_end() -> None:
    cal = _cal()
    assert cal.engine_fit() == pytest.approx((E0, PER_TOKEN, PER_PAIR), rel=1e-6)
    assert cal.frontend_fit() == pytest.approx((FRONT, FRONT_PER_TOKEN), rel=1e-6)
    # a pod with a sub-linear engine: the attention term is dropped, never negative
    flat = _cal()
    flat.cold_engine = {n: E0 + 30e-6 * n - 3e-9 * n * n for n in flat.cold_engine}
    e0, per_token, per_pair = flat.engine_fit()
    assert per_pair == 0.0 and per_token > 0 and e0 > 0


def test_latency_model_reproduces_calibration() -> None:
    cal = _cal()
    lm = LatencyModel(**cal.latency_kwargs())
    # decode steps reproduce the measured ITLs
    assert lm.step_time(1, 0, 1, 64, 64) == pytest.approx(cal.itl_short_s, rel=0.02)
    assert lm.step_time(1, 0, 1, 2048, 2048) == pytest.approx(cal.itl_long_s, rel=0.02)
    assert lm.step_time(8, 0, 8, 8 * 64, 8 * 64) == pytest.approx(cal.itl_batch8_s, rel=0.05)
    # one prefill step + the front end reproduce the client's TTFTs, cold and cached
    for n, c, ttft, engine in cal.points():
        step = lm.step_time(1, n - c, 0, n, attention_pairs(c, n - c))
        assert step == pytest.approx(engine, rel=0.02)
        assert step + lm.frontend_s + lm.frontend_work(n) == pytest.approx(ttft, rel=0.02)


async def test_observer_polls_and_the_sim_charges_it() -> None:
    c = await start_pods([SimPodConfig(model="m", time_scale=1.0, metrics_render_ms=5.0)])
    try:
        obs = Observer(c.addresses[0], share=0.5, min_interval=0.01)
        stop = asyncio.Event()
        task = asyncio.create_task(obs.run(stop))
        while obs.scrapes < 3:
            await asyncio.sleep(0.01)
        stop.set()
        await task
        assert c.pods[0].metrics_renders == obs.scrapes  # not free: the pod paid
        assert obs.cost >= 0.005 and obs.seconds / obs.scrapes >= 0.005
    finally:
        await c.stop()


def test_comparison_reports_relative_error() -> None:
    def summary(p50: float, p90: float) -> dict[str, object]:
        return {"ttft": {"p50": p50, "p90": p90}, "scrapes": 30, "other_load": 0.05}

    rows = [
        {"rate": 4.0, "backend": "real", "summary": summary(0.025, 0.040)},
        {"rate": 4.0, "backend": "sim", "summary": summary(0.030, 0.036)},
    ]
    out = comparison(rows)
    assert "| 4 | 25 / 30 (+20 %) | 40 / 36 (-10 %) | 30 / 30 | 5.0 |" in out


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
    args = run_plan.parse_args(["--backend", "real"])
    plan = run_plan.plan_from(args)
    assert plan.workloads == ["shared_prefix"]
    assert [t.label for t in plan.targets] == ["picker", "round_robin", "least_request"]
    assert plan.rates == [3.0] and plan.duration == 60.0
    assert plan.knobs["shared_prefix"]["model"] == "tiny-llama"
    assert plan.knobs["shared_prefix"]["system_len"] == 110
    with pytest.raises(SystemExit):
        run_plan.plan_from(run_plan.parse_args(["--backend", "real", "--workloads", "lora_mix"]))
    sim = run_plan.plan_from(run_plan.parse_args(["--quick"]))
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


def test_own_overhead_is_what_the_sim_adds_to_its_model() -> None:
    latency = _cal().latency_kwargs()
    sizes = (128, 1024, 3072)
    sim = {
        "cold": {n: model_ttft(latency, n, 0) + 0.0015 for n in sizes},
        "cached": {n: model_ttft(latency, n, (n - 1) // 128 * 128) + 0.0015 for n in sizes},
    }
    assert own_overhead(sim, latency, 128) == pytest.approx(0.0015)
    assert model_ttft(latency, 1024, 0) == pytest.approx(_cal().cold_ttft[1024], rel=0.02)


def test_api_server_work_splits_the_fitted_front_end() -> None:
    cal = _cal()
    cal.api_work_s, cal.api_out_token_s, cal.engine_share = 0.002, 0.2e-3, 0.7
    kw = cal.latency_kwargs()
    assert kw["frontend_work_s"] == pytest.approx(0.002)
    assert kw["frontend_s"] + kw["frontend_work_s"] == pytest.approx(FRONT)
    assert kw["frontend_per_output_token_s"] == 0.2e-3 and kw["frontend_engine_share"] == 0.7
    lm = LatencyModel(**kw)  # lone TTFTs unchanged: the work is part of the front end
    assert model_ttft(kw, 1024, 0) == pytest.approx(cal.cold_ttft[1024], rel=0.02)
    assert lm.frontend_work(1024) == pytest.approx(0.002 + FRONT_PER_TOKEN * 1024)
    cal.api_work_s = 1.0  # more work than the whole fixed front end: capped
    assert cal.latency_kwargs()["frontend_s"] == 0.0


def test_process_cpu_and_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert child.pid in descendants(os.getpid())
        assert cpu_seconds(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()


def test_other_load_does_not_count_our_children() -> None:
    load = OtherLoad()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    _, ours, _ = OtherLoad._sample()
    assert ours - load.start[1] >= 0.25  # the exited child is ours, not other load
    assert 0.0 <= load.share() <= 1.0


def test_jitter_estimates_an_exponential_mean() -> None:
    rng = random.Random(3)
    samples = [[0.02 + rng.expovariate(1 / 0.003) for _ in range(5)] for _ in range(400)]
    assert jitter(samples) == pytest.approx(0.003, rel=0.15)
    assert jitter([[0.01] * 5]) == 0.0
    cal = _cal()
    cal.jitter_s = 0.002  # the median lone TTFT stays the fitted one
    kw = cal.latency_kwargs()
    assert kw["frontend_jitter_s"] == 0.002
    assert model_ttft(kw, 1024, 0) == pytest.approx(cal.cold_ttft[1024], rel=0.02)
