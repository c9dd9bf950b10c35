"""Decisions at scale: one scheduling decision over many endpoints with long prompts.

Builds a pool of ``--endpoints`` pods with varied scraped load, fills the prefix index by
sending ``--prompts`` distinct long prompts (each sharing one of 16 system prompts) to
random pods, then times the decision for fresh requests: the profile's producers,
filters, scorers and picker, plus accounting (charge, on_pick) and release. Parsing is
excluded (requests are parsed beforehand). Prints p50/p99 decision time, decisions per
second of one process, and the prefix index's size and memory.

    python -m bench.micro.scale [--endpoints 1000] [--tokens 32000] [--decisions 2000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
import tracemalloc

import orjson

from picker.config import load_config
from picker.datalayer.datastore import EndpointMetrics
from picker.observability import Metrics
from picker.request.parse import parse_request
from picker.requestcontrol.director import Director, Routed
from picker.scheduling.framework import Handle
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.prefix import PrefixScorer


def words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(20000)}" for _ in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=32000, help="prompt length (4 chars/token)")
    ap.add_argument("--prompts", type=int, default=400, help="prompts in the index first")
    ap.add_argument("--decisions", type=int, default=2000)
    args = ap.parse_args()
    rng = random.Random(1)
    addrs = [f"10.{i // 250}.{i % 250}.1:8000" for i in range(args.endpoints)]
    cfg = load_config(data={"models": {"*": addrs}, "scrape": {"enabled": False}})
    ds = cfg.datastore()
    for e in ds.endpoints():
        e.metrics = EndpointMetrics(
            waiting=rng.randrange(4), running=rng.randrange(32), kv_usage=rng.random() * 0.8
        )
    metrics = Metrics()
    profile = build_profile(None, handle=Handle(ds, metrics, cfg.chars_per_token))
    director = Director(cfg, ds, profile, metrics)
    systems = [words(rng, args.tokens // 2 // 6) for _ in range(16)]

    def body(i: int) -> bytes:
        text = systems[i % 16] + words(rng, args.tokens // 2 // 6)
        return orjson.dumps({"model": "m", "prompt": text})

    prefix = next(p for p in profile.plugins if isinstance(p, PrefixScorer))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(args.prompts):  # fill the index: routed, then finished
        r = director.decide("/v1/completions", body(i))
        assert isinstance(r, Routed)
        director.finish(r, 200)
    index_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    blocks = len(prefix.index)

    requests = [parse_request("/v1/completions", body(i)) for i in range(args.decisions)]
    pool = ds.pools[0]
    times: list[float] = []
    gc.collect()
    t_all = time.perf_counter()
    for req in requests:
        req.prompt_tokens = int(len(req.prompt) / cfg.chars_per_token) + 1
        t0 = time.perf_counter()
        routed = director._route(req, pool, pool.ready(), t0, 0)
        times.append(time.perf_counter() - t0)
        assert isinstance(routed, Routed)
        director.finish(routed, 200)
    wall = time.perf_counter() - t_all
    times.sort()
    p50 = times[len(times) // 2] * 1e3
    p99 = times[int(len(times) * 0.99)] * 1e3
    print(
        f"{args.endpoints} endpoints, {args.tokens}-token prompts: decision p50 {p50:.3f} ms, "
        f"p99 {p99:.3f} ms; {len(times) / wall:.0f} decisions/s (one process, decide + "
        f"finish, parse excluded)"
    )
    print(
        f"prefix index: {blocks} blocks after {args.prompts} prompts, "
        f"{index_bytes / 2**20:.1f} MiB ({index_bytes / max(1, blocks):.0f} B/block); "
        f"bounded at {prefix.index.capacity_blocks} blocks per pod by default, or each "
        f"pod's KV-cache size once scraped"
    )


if __name__ == "__main__":
    main()
