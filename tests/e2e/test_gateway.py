"""End to end: a real Envoy, picker (subprocess) and simulated vLLM pods on loopback."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack
from bench.stack.procs import free_port

ADAPTER = "sql-lora"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    with Stack(
        pods=4,
        time_scale=20.0,
        sim_args=["--max-num-seqs", "2", "--lora-adapters", ADAPTER, "--max-loras", "1"],
        picker_config={
            "max_body_bytes": 256 * 1024,
            "saturation": {"queue_threshold": 3, "kv_threshold": 0.95},
            "criticality": {"batch": "sheddable"},
        },
        extra_pools=[{"name": "dead", "models": ["dead-model"], "endpoints": [dead]}],
        # The inference extension's reference setup: both bodies FULL_DUPLEX_STREAMED, so
        # every response chunk also passes through picker (the default skips that hop).
        envoy_options={"response_body_mode": "FULL_DUPLEX_STREAMED"},
        pool_models=[MODEL, ADAPTER],
        pool_adapters=[ADAPTER],
    ) as st:
        yield st


def post_or_get(
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` as JSON (or ``raw`` bytes), GET without either: status, headers, body."""
    data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    req = urllib.request.Request(
        url,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http(
    stack: Stack,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    return post_or_get(stack.url + path, body, headers, raw)


def picker_metrics(stack: Stack) -> dict[str, float]:
    url = f"http://127.0.0.1:{stack.picker_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def completion(prompt: str = "hello world", **kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 4, **kw}


def test_requests_land_where_picker_said(stack: Stack) -> None:
    before = picker_metrics(stack)
    seen: Counter[str] = Counter()
    for i in range(24):
        status, headers, _ = http(stack, "/v1/completions", completion(f"prompt {i}"))
        assert status == 200
        seen[headers["x-sim-pod"]] += 1
    after = picker_metrics(stack)
    assert set(seen) <= set(stack.pod_addresses) and len(seen) > 1
    for pod, n in seen.items():
        key = f"picker_endpoint_responses_total{{endpoint={pod},status_class=2xx}}"
        assert after.get(key, 0) - before.get(key, 0) == n


async def test_streaming_passes_through_intact(stack: Stack) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me a story"}],
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/v1/chat/completions", json=body) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = await r.read()
        pod = r.headers["x-sim-pod"]
        async with s.post(f"http://{pod}/v1/chat/completions", json=body) as r2:
            direct = await r2.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    direct_chunks = [
        orjson.loads(e[6:]) for e in direct.split(b"\n\n") if e and e != b"data: [DONE]"
    ]
    direct_text = "".join(
        (c["choices"][0]["delta"].get("content") or "") for c in direct_chunks if c["choices"]
    )
    assert text == direct_text and len(text.split()) == 12
    assert chunks[-1]["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, None),
        (b'{"prompt": "no model"}', 400, None),
        (b'{"model": 42, "prompt": "x"}', 400, None),
        (orjson.dumps(completion(model="no-such-model")), 404, "model_not_found"),
        (orjson.dumps(completion(prompt="x" * 300_000)), 413, "request_too_large"),
        (orjson.dumps(completion(model="dead-model")), 503, "service_unavailable"),
    ],
)
def test_errors_through_envoy(stack: Stack, raw: bytes, status: int, code: str | None) -> None:
    got, headers, body = http(stack, "/v1/completions", raw=raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    err = orjson.loads(body)["error"]
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code


def test_errors_are_counted(stack: Stack) -> None:
    http(stack, "/v1/completions", raw=b"{bad")
    m = picker_metrics(stack)
    assert any(k.startswith("picker_requests_total{") and "status=400" in k for k in m)


def test_spoofed_destination_is_ignored(stack: Stack) -> None:
    for _ in range(5):
        status, headers, _ = http(
            stack,
            "/v1/completions",
            completion(),
            headers={"x-gateway-destination-endpoint": "127.0.0.1:1"},
        )
        assert status == 200 and headers["x-sim-pod"] in stack.pod_addresses


def test_get_without_body_is_routed(stack: Stack) -> None:
    status, headers, body = http(stack, "/v1/models")
    assert status == 200 and headers["x-sim-pod"] in stack.pod_addresses
    assert MODEL in {m["id"] for m in orjson.loads(body)["data"]}


def test_lora_requests_stick_to_the_pod_with_the_adapter(stack: Stack) -> None:
    pods: Counter[str] = Counter()
    for i in range(12):
        status, headers, _ = http(stack, "/v1/completions", completion(f"q{i}", model=ADAPTER))
        assert status == 200
        pods[headers["x-sim-pod"]] += 1
    # The first request loads the adapter somewhere; affinity keeps the rest there.
    assert pods.most_common(1)[0][1] == 12


async def test_saturation_sheds_sheddable_and_routes_critical(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        # Fill every pod: 2 running + several waiting each (max_num_seqs=2).
        flood = [
            asyncio.create_task(
                send(s, stack.url + "/v1/completions", completion(f"long {i}", max_tokens=1500))
            )
            for i in range(32)
        ]
        await asyncio.sleep(0.3)
        shed = await send(
            s,
            stack.url + "/v1/completions",
            completion("batch job"),
            headers={"x-gateway-inference-objective": "batch"},
        )
        critical = asyncio.create_task(
            send(
                s,
                stack.url + "/v1/completions",
                completion("urgent"),
                headers={"x-gateway-inference-objective": "critical"},
            )
        )
        results = await asyncio.gather(*flood)
        crit = await critical
    assert shed.status == 429
    assert shed.error is not None and "rate_limit_exceeded" in shed.error
    assert crit.status == 200
    assert all(r.status == 200 for r in results)
    m = picker_metrics(stack)
    assert any(k.startswith("picker_shed_total{") and v >= 1 for k, v in m.items())
    # Once the queues drain, the same sheddable request is served again.
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as s:
        again = await send(
            s,
            stack.url + "/v1/completions",
            completion("batch job"),
            headers={"x-gateway-inference-objective": "batch"},
        )
    assert again.status == 200


def test_subset_hint_through_envoy(stack: Stack) -> None:
    only = stack.pod_addresses[2]
    with Stack(pod_addresses=stack.pod_addresses, envoy_options={"subset_hint": [only]}) as hinted:
        for i in range(6):
            status, headers, _ = http(hinted, "/v1/completions", completion(f"s{i}"))
            assert status == 200 and headers["x-sim-pod"] == only
    with Stack(
        pod_addresses=stack.pod_addresses, envoy_options={"subset_hint": ["127.0.0.1:1"]}
    ) as empty:
        status, _, body = http(empty, "/v1/completions", completion())
        assert status == 503 and orjson.loads(body)["error"]["code"] == "service_unavailable"
