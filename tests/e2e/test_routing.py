"""Routing quality end to end: slow pods, conversations, bursts (real Envoy + simulator)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections import Counter
from typing import Any

import aiohttp

from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack
from bench.stack.procs import Procs, free_port


def chat(messages: list[dict[str, str]], max_tokens: int = 8) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages, "max_tokens": max_tokens}


async def test_slow_pod_gets_fewer_requests() -> None:
    with Stack(pods=3, speeds=[1.0, 1.0, 0.25], time_scale=2.0) as stack:
        slow = stack.pod_addresses[2]
        async with aiohttp.ClientSession() as s:
            sem = asyncio.Semaphore(12)

            async def one(i: int) -> str | None:
                async with sem:
                    body = {"model": MODEL, "prompt": f"request {i} " * 20, "max_tokens": 32}
                    out = await send(s, stack.url + "/v1/completions", body)
                    assert out.ok, out.error
                    return out.pod

            pods = Counter(await asyncio.gather(*(one(i) for i in range(120))))
    fast = [pods[a] for a in stack.pod_addresses[:2]]
    assert pods[slow] < min(fast) / 2, pods


async def test_conversation_turns_follow_their_prefix() -> None:
    system = "You are a careful assistant who answers in full sentences. " * 30
    with Stack(pods=4, time_scale=10.0) as stack:
        async with aiohttp.ClientSession() as s:
            url = stack.url + "/v1/chat/completions"
            for conv in range(6):
                history = [{"role": "system", "content": system + f" Conversation {conv}."}]
                served: list[str | None] = []
                for turn in range(4):
                    history.append({"role": "user", "content": f"turn {turn} of {conv}?"})
                    out = await send(s, url, chat(history))
                    assert out.ok, out.error
                    served.append(out.pod)
                    history.append({"role": "assistant", "content": "An answer. " * 5})
                # Every later turn extends the first turn's prompt: same pod throughout.
                assert len(set(served)) == 1, served


async def test_busy_holder_sheds_new_conversations_to_others() -> None:
    system = "Shared system prompt for every request in this test. " * 40
    with Stack(pods=3, time_scale=1.0) as stack:
        async with aiohttp.ClientSession() as s:
            url = stack.url + "/v1/chat/completions"
            # 48 concurrent long requests that all share one prefix: pure affinity would
            # queue every one of them on a single pod.
            outs = await asyncio.gather(
                *(
                    send(
                        s,
                        url,
                        chat(
                            [
                                {"role": "system", "content": system},
                                {"role": "user", "content": f"q{i}"},
                            ],
                            max_tokens=64,
                        ),
                    )
                    for i in range(48)
                )
            )
    pods = Counter(o.pod for o in outs if o.ok)
    assert sum(pods.values()) == 48
    assert len(pods) == 3 and min(pods.values()) >= 6, pods


async def test_flow_control_holds_instead_of_rejecting() -> None:
    with Stack(
        pods=2,
        time_scale=10.0,
        sim_args=["--max-num-seqs", "1"],
        picker_config={
            "saturation": {"queue_threshold": 2},
            "flow_control": {"enabled": True, "max_wait_seconds": 10},
            "criticality": {"batch": "sheddable"},
        },
    ) as stack:
        async with aiohttp.ClientSession() as s:
            url = stack.url + "/v1/completions"
            crit = {"x-gateway-inference-objective": "critical"}
            flood = [
                asyncio.create_task(
                    send(s, url, {"model": MODEL, "prompt": f"f{i}", "max_tokens": 400}, crit)
                )
                for i in range(8)
            ]
            await asyncio.sleep(0.1)
            held = await send(
                s,
                url,
                {"model": MODEL, "prompt": "batch", "max_tokens": 4},
                {"x-gateway-inference-objective": "batch"},
            )
            await asyncio.gather(*flood)
        assert held.status == 200, held.error
        with urllib.request.urlopen(
            f"http://127.0.0.1:{stack.picker_metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        # It was parked (not rejected, not routed at once) and served once a pod drained.
        assert 'picker_flow_control_queued_total{model_name="' + MODEL + '"} 1.0' in text
        assert "picker_shed_total" not in text or 'picker_shed_total{model_name="' not in text


async def test_hung_pod_is_excluded_and_comes_back() -> None:
    """A pod whose /metrics stops answering is not routed to, then is again."""
    procs = Procs()
    try:
        ports = [free_port(), free_port()]
        sims = [
            procs.start(
                f"sim{i}",
                [
                    sys.executable,
                    "-m",
                    "bench.sim",
                    "--pods",
                    "1",
                    "--ports",
                    str(p),
                    "--model",
                    MODEL,
                    "--time-scale",
                    "10",
                ],
                ready="ready",
            )
            for i, p in enumerate(ports)
        ]
        pods = [f"127.0.0.1:{p}" for p in ports]
        with Stack(
            pod_addresses=pods, picker_config={"scrape": {"stale_after": 0.5, "timeout": 0.3}}
        ) as stack:
            async with aiohttp.ClientSession() as s:
                url = stack.url + "/v1/completions"

                async def spread(n: int) -> Counter[str | None]:
                    # Distinct prompts: no prefix affinity, load decides.
                    outs = [
                        await send(s, url, {"model": MODEL, "prompt": f"q{i}", "max_tokens": 2})
                        for i in range(n)
                    ]
                    assert all(o.ok for o in outs), [o.error for o in outs if not o.ok]
                    return Counter(o.pod for o in outs)

                assert set(await spread(20)) == set(pods)
                os.kill(sims[1].pid, signal.SIGSTOP)  # hangs: scrapes time out
                try:
                    await asyncio.sleep(1.5)
                    assert set(await spread(20)) == {pods[0]}
                finally:
                    os.kill(sims[1].pid, signal.SIGCONT)
                await asyncio.sleep(1.0)
                assert set(await spread(20)) == set(pods)
    finally:
        procs.close()
