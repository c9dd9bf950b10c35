"""``make demo``: real Envoy + picker + a simulated pool of 4 vLLM pods, on loopback.

Sends a short mixed workload through Envoy — chat sessions that share a system prompt,
multi-turn follow-ups, plain completions, streaming and not — then prints where the
requests went and how fast they were served, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp

from bench.client import Outcome, percentile, send
from bench.stack import MODEL, Stack

SYSTEMS = [
    "You are a meticulous travel agent. Always answer with a short itinerary, prices in "
    "euros, and one local tip. " * 6,
    "You are a senior Python reviewer. Point out bugs first, then style, then tests. " * 6,
    "You are a customer-support bot for a bank. Never reveal account data. " * 6,
]


def workload(n: int, seed: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """A reproducible mix of (path, body)."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    sessions: list[list[dict[str, str]]] = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.5:
            system = rng.choice(SYSTEMS)
            msgs = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Question {i}: {rng.randrange(10**6)}?"},
            ]
            sessions.append(msgs)
            body = {"model": MODEL, "messages": msgs, "max_tokens": rng.choice([8, 16, 32])}
        elif kind < 0.75 and sessions:
            msgs = rng.choice(sessions)
            msgs += [
                {"role": "assistant", "content": "Sure. " * rng.randrange(5, 20)},
                {"role": "user", "content": f"And follow-up {i}?"},
            ]
            body = {"model": MODEL, "messages": list(msgs), "max_tokens": 16}
        else:
            prompt = " ".join(f"w{rng.randrange(5000)}" for _ in range(rng.randrange(20, 200)))
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 16}
        body["stream"] = rng.random() < 0.7
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        out.append((path, body))
    return out


async def drive(url: str, n: int, concurrency: int) -> list[Outcome]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(path: str, body: dict[str, Any]) -> Outcome:
            async with sem:
                return await send(session, url + path, body)

        return await asyncio.gather(*(one(p, b) for p, b in workload(n)))


def report(outcomes: list[Outcome]) -> None:
    pods = Counter(o.pod or "?" for o in outcomes if o.ok)
    print(f"\n{'pod':24} {'requests':>8}")
    for pod, count in sorted(pods.items()):
        print(f"{pod:24} {count:8d}")
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    ttft = [o.ttft for o in ok if o.ttft is not None]
    e2e = [o.e2e for o in ok]
    print(f"\n{len(ok)} ok, {len(failed)} failed")
    for name, vals in (("TTFT", ttft), ("end-to-end", e2e)):
        ps = "  ".join(f"p{p}={percentile(vals, p) * 1e3:7.1f} ms" for p in (50, 90, 99))
        print(f"{name:11} {ps}")
    if failed:
        print("first failure:", failed[0].status, failed[0].error)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-scale", type=float, default=1.0)
    args = ap.parse_args()
    print("starting 4 simulated vLLM pods, picker and Envoy on loopback ...")
    with Stack(pods=4, time_scale=args.time_scale) as stack:
        print(f"Envoy listening on {stack.url}; pods: {', '.join(stack.pod_addresses)}")
        outcomes = asyncio.run(drive(stack.url, args.requests, args.concurrency))
        report(outcomes)
    print("\nstopped Envoy, picker and the simulator.")


if __name__ == "__main__":
    main()
