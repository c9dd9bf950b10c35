"""End to end through real Envoy (TLS to picker): a model rewrite reaches the pod with a
correct content-length, in both request body modes; an objective with a negative
priority is shed under saturation while others are routed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack
from tests.e2e.test_gateway import http

# Padded with spaces: the rewritten (compact) body is shorter, so a stale content-length
# would leave the pod waiting for bytes that never come, and the request would fail.
ALIAS_BODY = b'{"model":    "alias",     "prompt": "hello",      "max_tokens": 2}'


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack(
        pods=2,
        time_scale=20.0,
        sim_args=["--max-num-seqs", "1"],
        picker_config={
            "model_rewrites": {"alias": MODEL},
            "criticality": {"batch": -1, "interactive": 0},
            "saturation": {"queue_threshold": 2, "kv_threshold": 0.99},
        },
    ) as st:
        assert st.tls
        yield st


REWRITTEN = orjson.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 2})


def check_rewritten(stack: Stack, chunked: bool) -> None:
    """``chunked``: Envoy streams the body (FULL_DUPLEX_STREAMED) and sends it chunked,
    without content-length; never with the client's stale one."""
    allowed = {str(len(REWRITTEN))} | ({"none"} if chunked else set())
    for _ in range(4):
        status, headers, body = http(stack, "/v1/completions", raw=ALIAS_BODY)
        assert status == 200, body
        assert orjson.loads(body)["model"] == MODEL  # the pod served the target model
        # The pod got the new body's length as its content-length (the sim echoes it).
        assert headers["x-sim-content-length"] in allowed


def test_rewrite_reaches_the_pod_full_duplex(stack: Stack) -> None:
    check_rewritten(stack, chunked=True)
    # Without a rule the model is unknown to the pod: the rewrite is what made it work.
    raw = ALIAS_BODY.replace(b'"alias"', b'"unknown"')
    assert http(stack, "/v1/completions", raw=raw)[0] == 404


def test_rewrite_reaches_the_pod_buffered(stack: Stack) -> None:
    with Stack(
        pod_addresses=stack.pod_addresses,
        picker_config={"model_rewrites": {"alias": MODEL}},
        envoy_options={"request_body_mode": "BUFFERED"},
    ) as buffered:
        check_rewritten(buffered, chunked=False)


async def test_negative_priority_objective_is_shed_under_saturation(stack: Stack) -> None:
    url = stack.url + "/v1/completions"
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        flood = [
            asyncio.create_task(send(s, url, {**body, "prompt": f"long {i}", "max_tokens": 1500}))
            for i in range(12)
        ]
        await asyncio.sleep(0.3)
        hdr = "x-llm-d-inference-objective"
        shed = await send(s, url, body, headers={hdr: "batch"})
        kept = await send(s, url, body, headers={hdr: "interactive"})
        results = await asyncio.gather(*flood)
    assert shed.status == 429
    assert kept.status == 200
    assert all(r.status == 200 for r in results)
