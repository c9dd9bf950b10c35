"""Tests of the simulated vLLM pods (``bench.sim``): engine, KV cache, HTTP API, metrics."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.sim import (
    Engine,
    EngineConfig,
    LatencyModel,
    SimCluster,
    SimPodConfig,
    start_pods,
)
from bench.sim.kvcache import BlockPool, block_hashes
from bench.sim.latency import attention_pairs
from bench.sim.tokenize import render_chat, tokenize
from tests import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
MODEL = "sim-model"
LONG_PROMPT = " ".join(f"word{i % 97} alpha{i}" for i in range(1000))  # ~3,000 tokens


def _cfg(**kw: Any) -> SimPodConfig:
    base: dict[str, Any] = {"model": MODEL, "time_scale": 50.0}
    base.update(kw)
    return SimPodConfig(**base)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | bytes
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data) as resp:
        return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, list[Any]]:
    async with session.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _value(m: dict[str, list[Any]], name: str) -> float:
    return float(m[name][0].value)


# ---- tokenizer and KV cache ---------------------------------------------------------


def test_tokenizer_is_deterministic_and_roughly_llama_sized() -> None:
    text = "The quick brown fox jumps over the lazy dog, 12345 times!"
    ids = tokenize(text)
    assert ids == tokenize(text)
    assert all(0 <= t < 2**32 for t in ids)
    assert len(ids) == 14  # 9 words, ',', '123', '45', 'times', '!'
    prose = "Routing requests to the pod that already holds the prompt prefix saves work. " * 20
    chars_per_token = len(prose) / len(tokenize(prose))
    assert 3.5 < chars_per_token < 6.5
    chat = render_chat([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert "user" in chat and "hi" in chat


def test_block_hashes_chain_and_depend_on_lora() -> None:
    toks = list(range(100))
    h = block_hashes(toks, 16)
    assert len(h) == 6
    assert block_hashes(toks[:50], 16) == h[:3]
    assert block_hashes(toks, 16, "a")[0] != h[0]
    changed = [999, *toks[1:]]
    assert all(x != y for x, y in zip(block_hashes(changed, 16), h, strict=True))


def test_block_pool_lru_eviction() -> None:
    pool = BlockPool(num_blocks=6, block_size=2)
    toks_a = [1, 2, 3, 4, 5, 6]
    ha = block_hashes(toks_a, 2)
    a = pool.allocate(3)
    pool.register(a, ha, 0, 3, toks_a, None)
    toks_b = [7, 8, 9, 10]
    hb = block_hashes(toks_b, 2)
    b = pool.allocate(2)
    pool.register(b, hb, 0, 2, toks_b, None)
    assert pool.usage == pytest.approx(5 / 6)
    pool.release(a)  # freed tail first: a[2], a[1], a[0]
    pool.release(b)
    assert pool.usage == 0.0  # idle, though 5 blocks stay cached
    assert len(pool.cached) == 5
    assert pool.match_prefix(ha, 3) == a
    # One fresh block takes the never-used one, then evictions start at a's tail.
    pool.allocate(1)
    assert len(pool.cached) == 5
    pool.allocate(2)
    assert pool.match_prefix(ha, 3) == [a[0]]  # a's last two blocks evicted
    assert pool.match_prefix(hb, 2) == b
    # Touching a cached block takes it off the free list, so it is not evicted.
    pool.touch(b[:1])
    pool.allocate(1)  # evicts a[0], the least recently freed
    assert pool.match_prefix(ha, 3) == []
    assert pool.match_prefix(hb, 2) == b
    with pytest.raises(MemoryError):
        pool.allocate(3)
    assert pool.evictions == 3


# ---- engine in simulated (virtual) time -----------------------------------------------


def _drain(engine: Engine, t: float = 0.0) -> float:
    while (d := engine.step_virtual(t)) is not None:
        t += d
    return t


def test_prefix_hit_cuts_ttft_in_virtual_time() -> None:
    engine = Engine(EngineConfig())
    prompt = tokenize(LONG_PROMPT)
    first = engine.add_request(prompt, 4, arrival=0.0)
    t = _drain(engine)
    second = engine.add_request(prompt, 4, arrival=t)
    _drain(engine, t)
    hit = (len(prompt) - 1) // 16 * 16
    assert first.cached_tokens == 0 and second.cached_tokens == hit
    assert engine.stats.prefix_hits == hit
    assert engine.stats.prefix_queries == 2 * len(prompt)
    # ~3k-token prefill at 33k tok/s is ~90 ms; the cached one is one decode-sized step.
    assert first.ttft > 0.06
    assert second.ttft < first.ttft / 5


def test_speed_factor_scales_step_time() -> None:
    fast = Engine(EngineConfig(speed=1.0))
    slow = Engine(EngineConfig(speed=0.5))
    prompt = tokenize(LONG_PROMPT)
    rf = fast.add_request(prompt, 8, arrival=0.0)
    rs = slow.add_request(prompt, 8, arrival=0.0)
    _drain(fast)
    _drain(slow)
    assert rs.ttft == pytest.approx(2 * rf.ttft)
    assert rs.finished_at == pytest.approx(2 * rf.finished_at)


def test_latency_model_matches_public_decode_figures() -> None:
    lat = LatencyModel()
    assert lat.step_time(1, 0, 1, 300) == pytest.approx(7.0e-3, rel=0.05)
    for n in (16, 64, 128):
        assert lat.step_time(n, 0, n, 300 * n) == pytest.approx(7e-3 + 1e-4 * n, rel=0.1)
    for n in (2000, 3000, 4000):  # attention included: ~33k tok/s at 2-4k tokens
        t = lat.step_time(1, n, 0, n, attention_pairs(0, n))
        assert n / t == pytest.approx(33000, rel=0.05)


def _saturation(shared_frac: float, out_len: int, n: int = 1500) -> float:
    rng = random.Random(0)
    engine = Engine(EngineConfig(max_num_seqs=256))
    shared = [rng.getrandbits(32) for _ in range(int(200 * shared_frac))]
    reqs = [
        engine.add_request(
            shared + [rng.getrandbits(32) for _ in range(200 - len(shared))],
            out_len,
            arrival=0.0,
            stream=False,
        )
        for _ in range(n)
    ]
    _drain(engine)
    fin = sorted(r.finished_at for r in reqs)
    return (0.6 * n) / (fin[4 * n // 5] - fin[n // 5])


def test_saturation_in_virtual_time() -> None:
    # Public vLLM runs (~200-token prompts): ~106 req/s, ~177 req/s with prefix caching.
    assert 90 < _saturation(0.0, 27) < 125
    assert 150 < _saturation(0.6, 27) < 205


def test_queueing_and_preemption_in_virtual_time() -> None:
    engine = Engine(EngineConfig(max_num_seqs=4, num_blocks=40, block_size=16))
    rng = random.Random(1)
    reqs = [
        engine.add_request([rng.getrandbits(32) for _ in range(100)], 80, arrival=0.0)
        for _ in range(10)
    ]
    d = engine.step_virtual(0.0)
    assert d is not None
    assert engine.num_running == 4 and engine.num_waiting == 6
    _drain(engine, d)
    assert all(r.finished and r.num_output == 80 for r in reqs)
    assert engine.stats.preemptions > 0  # 4 x 180 tokens do not fit in 40 x 16 slots
    assert engine.pool.usage == 0.0
    assert engine.stats.success["length"] == 10


def test_lora_slots_in_virtual_time() -> None:
    engine = Engine(EngineConfig(max_loras=1))
    a = engine.add_request(tokenize("hello a"), 20, lora="a", arrival=0.0)
    b = engine.add_request(tokenize("hello b"), 20, lora="b", arrival=0.0)
    c = engine.add_request(tokenize("hello c"), 20, lora="a", arrival=0.0)
    engine.step_virtual(0.0)
    assert set(engine.running) == {a, c}  # b is skipped, c (same adapter) is admitted
    assert engine.num_deferred() == 1
    _drain(engine)
    assert b.finished and b.scheduled_at >= a.finished_at


# ---- HTTP pods ----------------------------------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    c = await start_pods(
        [_cfg(lora_adapters=("sql-lora", "chat-lora"), max_loras=1), _cfg(speed=0.5)]
    )
    try:
        yield c
    finally:
        await c.stop()


async def test_models_health_and_pod_header(
    cluster: SimCluster, session: aiohttp.ClientSession
) -> None:
    a, b = cluster.urls
    assert cluster.addresses[0] != cluster.addresses[1]
    async with session.get(a + "/health") as resp:
        assert resp.status == 200
        assert resp.headers["x-sim-pod"] == cluster.addresses[0]
    async with session.get(a + "/v1/models") as resp:
        models = orjson.loads(await resp.read())
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [MODEL, "sql-lora", "chat-lora"]
    assert models["data"][1]["parent"] == MODEL
    status, body, headers = await _post(session, b + "/v1/completions", {"prompt": "x"})
    assert status == 200 and headers["x-sim-pod"] == cluster.addresses[1]
    assert body["usage"]["completion_tokens"] == 16


async def test_errors(cluster: SimCluster, session: aiohttp.ClientSession) -> None:
    url = cluster.urls[0]
    status, body, headers = await _post(
        session, url + "/v1/completions", {"model": "nope", "prompt": "hi"}
    )
    assert status == 404 and "x-sim-pod" in headers
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == 404
    status, body, _ = await _post(session, url + "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == 400
    status, body, _ = await _post(session, url + "/v1/completions", {"prompt": 5})
    assert status == 400
    status, body, _ = await _post(session, url + "/v1/chat/completions", {"messages": []})
    assert status == 400
    status, body, _ = await _post(
        session, url + "/v1/completions", {"prompt": "hi", "max_tokens": 0}
    )
    assert status == 400
    status, body, _ = await _post(
        session, url + "/v1/completions", {"prompt": "hi", "max_tokens": 200_000}
    )
    assert status == 400 and "maximum context length" in body["error"]["message"]


async def test_completion_shapes(cluster: SimCluster, session: aiohttp.ClientSession) -> None:
    url = cluster.urls[0]
    status, body, _ = await _post(
        session, url + "/v1/completions", {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 5}
    )
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 5
    status, body, _ = await _post(
        session, url + "/v1/completions", {"prompt": ["a b c", [7, 8]], "max_tokens": 3}
    )
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 6
    status, body, _ = await _post(
        session,
        url + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2},
    )
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 2


async def _sse(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> list[dict[str, Any] | str]:
    async with session.post(url, data=orjson.dumps(body)) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events: list[dict[str, Any] | str] = []
    for ev in raw.split(b"\n\n")[:-1]:
        assert ev.startswith(b"data: ")
        payload = ev[6:]
        events.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return events


async def test_streaming_format(cluster: SimCluster, session: aiohttp.ClientSession) -> None:
    url = cluster.urls[0]
    events = await _sse(
        session,
        url + "/v1/completions",
        {
            "prompt": "hello",
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == 6
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 5 + ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    events = await _sse(
        session,
        url + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True},
    )
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] != "" for c in chunks[1:]] == [True] * 3
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["object"] == "chat.completion.chunk"


async def test_prefix_cache_hit_over_http(
    cluster: SimCluster, session: aiohttp.ClientSession
) -> None:
    url = cluster.urls[0]
    engine = cluster.pods[0].engine
    body = {"prompt": LONG_PROMPT, "max_tokens": 2}
    _, first, _ = await _post(session, url + "/v1/completions", body)
    ttft_first = engine.stats.ttft.sum
    m1 = await _metrics(session, url)
    _, second, _ = await _post(session, url + "/v1/completions", body)
    ttft_second = engine.stats.ttft.sum - ttft_first
    m2 = await _metrics(session, url)
    n = first["usage"]["prompt_tokens"]
    cached = (n - 1) // 16 * 16
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    hits = "vllm:prefix_cache_hits_total"
    queries = "vllm:prefix_cache_queries_total"
    assert _value(m2, hits) - _value(m1, hits) == cached
    assert _value(m2, queries) - _value(m1, queries) == n
    assert ttft_second < ttft_first / 3  # simulated seconds
    assert _value(m2, "vllm:kv_cache_usage_perc") == 0.0  # idle, prefix still cached
    assert len(engine.pool.cached) >= cached // 16


async def test_queueing_under_load(session: aiohttp.ClientSession) -> None:
    cluster = await start_pods([_cfg(max_num_seqs=4, time_scale=5.0)])
    try:
        url = cluster.urls[0]
        engine = cluster.pods[0].engine
        body = {"prompt": "tell me a story", "max_tokens": 100}
        tasks = [
            asyncio.create_task(_post(session, url + "/v1/completions", body)) for _ in range(12)
        ]
        for _ in range(200):
            await asyncio.sleep(0.01)
            if engine.num_waiting > 0 and engine.num_running == 4:
                break
        m = await _metrics(session, url)
        assert _value(m, "vllm:num_requests_running") == 4
        assert _value(m, "vllm:num_requests_waiting") > 0
        assert _value(m, "vllm:kv_cache_usage_perc") > 0
        results = await asyncio.gather(*tasks)
        assert all(r[0] == 200 and r[1]["usage"]["completion_tokens"] == 100 for r in results)
        m = await _metrics(session, url)
        assert _value(m, "vllm:num_requests_waiting") == 0
        success = {s.labels["finished_reason"]: s.value for s in m["vllm:request_success_total"]}
        assert success["length"] == 12
        queue = m["vllm:request_queue_time_seconds_sum"][0].value
        assert queue > 0
    finally:
        await cluster.stop()


async def test_metrics_names_and_labels(
    cluster: SimCluster, session: aiohttp.ClientSession
) -> None:
    url = cluster.urls[0]
    await _post(session, url + "/v1/completions", {"prompt": "hi there", "max_tokens": 4})
    m = await _metrics(session, url)
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_sum",
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
    ):
        assert name in m, name
    running = m["vllm:num_requests_running"][0]
    assert running.labels == {"engine": "0", "model_name": MODEL}
    cache = m["vllm:cache_config_info"][0].labels
    assert cache["block_size"] == "16" and cache["num_gpu_blocks"] == "26000"
    assert cache["enable_prefix_caching"] == "True"
    assert _value(m, "vllm:generation_tokens_total") == 4
    assert _value(m, "vllm:inter_token_latency_seconds_count") == 3
    assert _value(m, "vllm:time_to_first_token_seconds_count") == 1
    # The real capture's names all exist here (for the metrics this simulator models).
    fixture = FIXTURES / "vllm-0.32.0-cpu-metrics.txt"
    real = {
        s.name for fam in text_string_to_metric_families(fixture.read_text()) for s in fam.samples
    }
    ours = {n for n in m if n.startswith("vllm:")}
    assert ours - {"vllm:lora_requests_info"} <= real


async def test_lora_info_metric(cluster: SimCluster, session: aiohttp.ClientSession) -> None:
    url = cluster.urls[0]
    engine = cluster.pods[0].engine
    body_a = {"model": "sql-lora", "prompt": "select", "max_tokens": 2000}
    body_b = {"model": "chat-lora", "prompt": "hello", "max_tokens": 5}
    ta = asyncio.create_task(_post(session, url + "/v1/completions", body_a))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if engine.running_loras:
            break
    tb = asyncio.create_task(_post(session, url + "/v1/completions", body_b))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if engine.waiting_loras:
            break
    m = await _metrics(session, url)
    info = m["vllm:lora_requests_info"]
    latest = max(info, key=lambda s: s.value)
    assert latest.labels == {
        "max_lora": "1",
        "running_lora_adapters": "sql-lora",
        "waiting_lora_adapters": "chat-lora",
    }
    assert latest.value > 1e9  # a Unix timestamp, as vLLM sets it
    waiting = {s.labels["reason"]: s.value for s in m["vllm:num_requests_waiting_by_reason"]}
    assert waiting["deferred"] == 1
    (sa, _, ha), (sb, _, _) = await asyncio.gather(ta, tb)
    assert sa == sb == 200 and ha["x-sim-pod"] == cluster.addresses[0]


async def test_client_disconnect_aborts(
    cluster: SimCluster, session: aiohttp.ClientSession
) -> None:
    url = cluster.urls[0]
    engine = cluster.pods[0].engine
    body = {"prompt": "long one", "max_tokens": 5000, "stream": True}
    async with session.post(url + "/v1/completions", data=orjson.dumps(body)) as resp:
        await resp.content.readline()
        resp.close()
    for _ in range(200):
        await asyncio.sleep(0.01)
        if engine.num_running == 0:
            break
    assert engine.num_running == 0
    assert engine.stats.success["abort"] == 1
    assert engine.pool.usage == 0.0


def test_cli_starts_pods_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sim", "--pods", "2", "--port", "0", "--time-scale", "100",
         "--speed", "1,0.5", "--model", MODEL],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("ready pods="), line
        addresses = line.split()[1].split("=", 1)[1].split(",")
        assert len(addresses) == 2
        import urllib.request

        for addr in addresses:
            with urllib.request.urlopen(f"http://{addr}/health", timeout=5) as r:
                assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_kv_events_over_zmq(session: aiohttp.ClientSession) -> None:
    zmq = pytest.importorskip("zmq")
    zmq_asyncio = pytest.importorskip("zmq.asyncio")
    msgpack = pytest.importorskip("msgpack")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        zport = s.getsockname()[1]
    cluster = await start_pods(
        [_cfg(kv_events_endpoint=f"tcp://127.0.0.1:{zport}", num_blocks=64, block_size=16)]
    )
    ctx = zmq_asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.connect(f"tcp://127.0.0.1:{zport}")
        sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
        await asyncio.sleep(0.2)  # let the subscription reach the publisher
        url = cluster.urls[0]
        prompt = list(range(1, 101))  # 6 full blocks
        await _post(session, url + "/v1/completions", {"prompt": prompt, "max_tokens": 2})
        topic, seq, payload = await asyncio.wait_for(sub.recv_multipart(), 5)
        assert topic == f"kv@{cluster.addresses[0]}@{MODEL}".encode()
        assert int.from_bytes(seq, "big") == 0
        ts, events, dp_rank = msgpack.unpackb(payload)
        assert ts > 1e9 and dp_rank == 0
        stored = events[0]
        assert stored["type"] == "BlockStored"
        assert stored["block_hashes"] == block_hashes(prompt, 16)
        assert stored["parent_block_hash"] is None
        assert stored["token_ids"] == prompt[:96] and stored["block_size"] == 16
        # Fill the cache with other prompts: evictions arrive as BlockRemoved.
        for i in range(8):
            other = [1000 * (i + 2) + k for k in range(120)]
            await _post(session, url + "/v1/completions", {"prompt": other, "max_tokens": 2})
        removed: list[int] = []
        while not removed:
            _, _, payload = await asyncio.wait_for(sub.recv_multipart(), 5)
            for ev in msgpack.unpackb(payload)[1]:
                if ev["type"] == "BlockRemoved":
                    removed += ev["block_hashes"]
        assert set(removed) & set(stored["block_hashes"])
    finally:
        sub.close(0)
        ctx.term()
        await cluster.stop()


async def test_metrics_render_costs_the_pod(session: aiohttp.ClientSession) -> None:
    """A scrape costs the pod its render time: the answer comes that much later and a
    working engine loses it from its next step; the harness's own reads are free."""
    c = await start_pods([_cfg(metrics_render_ms=400.0, time_scale=10.0)])
    try:
        url = c.urls[0]
        pod = c.pods[0]
        t0 = asyncio.get_running_loop().time()
        m = await _metrics(session, url)
        assert asyncio.get_running_loop().time() - t0 >= 0.04  # 400 simulated ms / 10
        assert _value(m, "sim:metrics_renders_total") == 1  # this render counts itself
        m = await _metrics(session, url)
        assert _value(m, "sim:metrics_renders_total") == 2
        assert _value(m, "sim:metrics_render_seconds_total") == pytest.approx(0.8)
        async with session.get(url + "/metrics", headers={"x-sim-free": "1"}) as r:
            assert r.status == 200
        assert pod.metrics_renders == 2  # the free read did not count
        # An idle engine loses nothing; a busy one loses the render from its next step.
        pod.engine.stall(0.5)
        assert pod.engine._stall == 0.0
        body = {"prompt": "hi there", "max_tokens": 200}
        task = asyncio.create_task(_post(session, url + "/v1/completions", body))
        await asyncio.sleep(0.05)
        pod.engine.stall(0.5)
        assert pod.engine._stall == 0.5
        status, _, _ = await task
        assert status == 200 and pod.engine._stall == 0.0
    finally:
        await c.stop()
