"""``make demo``: real Envoy + picker + a simulated pool of 4 vLLM pods, on loopback.

Sends a short mixed workload through Envoy — chat sessions that share a system prompt,
multi-turn follow-ups, plain completions, streaming and not — then prints where the
requests went and how fast they were served, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import urllib.request
from collections import Counter
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.stack.client import Outcome, percentile, send
from bench.stack.gateway import MODEL, Stack

ROLES = [
    "a meticulous travel agent",
    "a senior Python reviewer",
    "a bank's support bot",
    "a patient maths tutor",
    "a legal assistant",
    "a recipe planner",
    "a SQL expert",
    "a release-notes writer",
    "a kind librarian",
    "a fitness coach",
    "a chess trainer",
    "a museum guide",
]


def system_prompt(role: str, words: int = 1200) -> str:
    """A long, role-specific system prompt (~1,500 simulated tokens), like a real app's."""
    rng = random.Random(role)
    vocab = [f"{w}{rng.randrange(100)}" for w in role.split()] + [
        "always",
        "never",
        "answer",
        "briefly",
        "cite",
        "sources",
        "policy",
        "format",
    ]
    rules = " ".join(rng.choice(vocab) for _ in range(words))
    return f"You are {role}. Follow these rules: {rules}"


SYSTEMS = [system_prompt(r) for r in ROLES]


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


def prefix_hits(pod: str) -> tuple[float, float]:
    """(hits, queries) of the pod's vLLM prefix cache, in tokens."""
    with urllib.request.urlopen(f"http://{pod}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {"vllm:prefix_cache_hits_total": 0.0, "vllm:prefix_cache_queries_total": 0.0}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values["vllm:prefix_cache_hits_total"], values["vllm:prefix_cache_queries_total"]


def report(outcomes: list[Outcome], pod_addresses: list[str]) -> dict[str, float]:
    pods = Counter(o.pod or "?" for o in outcomes if o.ok)
    print(f"\n{'pod':24} {'requests':>8} {'prefix-cache hit rate':>22}")
    total_hits = total_queries = 0.0
    for pod in pod_addresses:
        hits, queries = prefix_hits(pod)
        total_hits += hits
        total_queries += queries
        rate = hits / queries if queries else 0.0
        print(f"{pod:24} {pods.get(pod, 0):8d} {rate:22.1%}")
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
    hit_rate = total_hits / total_queries if total_queries else 0.0
    print(f"pool prefix-cache hit rate {hit_rate:.1%}")
    return {
        "ttft_p50": percentile(ttft, 50),
        "ttft_p90": percentile(ttft, 90),
        "e2e_p90": percentile(e2e, 90),
        "hit_rate": hit_rate,
        "failed": float(len(failed)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--time-scale", type=float, default=1.0)
    args = ap.parse_args()
    summary: dict[str, dict[str, float]] = {}
    for target in ("picker", "round_robin"):
        label = "picker" if target == "picker" else "Envoy round-robin (no picker)"
        print(f"\n=== {label}: 4 simulated vLLM pods + Envoy on loopback ===")
        # A KV cache of 1,500 blocks x 16 tokens per pod holds a few of the 12 system
        # prompts, not all: where each prompt is sent decides whether it is cached.
        with Stack(
            pods=4,
            time_scale=args.time_scale,
            target=target,
            sim_args=["--num-blocks", "1500"],
        ) as stack:
            print(f"Envoy on {stack.url}; pods: {', '.join(stack.pod_addresses)}")
            outcomes = asyncio.run(drive(stack.url, args.requests, args.concurrency))
            summary[target] = report(outcomes, stack.pod_addresses)
    print("\n=== same workload, side by side ===")
    print(
        f"{'target':14} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'e2e p90 ms':>11} {'hit rate':>9}"
    )
    for target, r in summary.items():
        print(
            f"{target:14} {r['ttft_p50'] * 1e3:12.1f} {r['ttft_p90'] * 1e3:12.1f} "
            f"{r['e2e_p90'] * 1e3:11.1f} {r['hit_rate']:9.1%}"
        )
    print("\nstopped Envoy, picker and the simulator: nothing left running.")


if __name__ == "__main__":
    main()
