"""Soak: picker under steady load for minutes, sampling its memory and file descriptors.

Envoy + picker (TLS) + simulated pods; a paced stream of requests with never-repeating
prompts (a new prompt fills new prefix-index blocks until the index is at its bound)
and a share of shared-prefix ones. Every ``--every`` seconds prints picker's RSS, open
file descriptors, the prefix index size (blocks) and requests served; at the end, the
RSS slope over the first and the second half of the run. Flat RSS once the index is
full means no leak.

    python -m bench.soak [--minutes 10] [--rate 40] [--every 15]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import urllib.request
from pathlib import Path

import aiohttp

from bench.harness.workloads import words
from bench.stack.client import send
from bench.stack.gateway import MODEL, Stack


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def index_blocks(metrics_port: int) -> int:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("inference_extension_prefix_indexer_size "):
                return int(float(line.split()[1]))
    return 0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t seconds, MiB) in MiB per minute."""
    n = len(points)
    if n < 2:
        return float("nan")
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    num = sum((t - mt) * (v - mv) for t, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return num / den * 60 if den else float("nan")


async def load(stack: Stack, rate: float, seconds: float, done: list[int]) -> None:
    rng = random.Random(7)
    shared = [words(rng, 400) for _ in range(8)]
    async with aiohttp.ClientSession() as s:
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        i = 0

        async def one(body: dict[str, object]) -> None:
            out = await send(s, stack.url + "/v1/completions", body)
            if out.ok:
                done[0] += 1
            else:
                done[1] += 1

        while time.monotonic() - t0 < seconds:
            prefix = rng.choice(shared) if i % 3 else ""  # 1 in 3 never seen before
            body = {"model": MODEL, "prompt": prefix + f" #{i} " + words(rng, 300), "max_tokens": 4}
            task = asyncio.create_task(one(body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)


async def sample(
    stack: Stack, pid: int, seconds: float, every: float, done: list[int]
) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    t0 = time.monotonic()
    print(f"{'t s':>6} {'RSS MiB':>8} {'fds':>5} {'index blocks':>13} {'ok':>8} {'failed':>7}")
    while True:
        t = time.monotonic() - t0
        blocks = await asyncio.to_thread(index_blocks, stack.picker_metrics_port)
        r = rss_mib(pid)
        points.append((t, r))
        print(f"{t:6.0f} {r:8.1f} {fds(pid):5d} {blocks:13d} {done[0]:8d} {done[1]:7d}", flush=True)
        if t >= seconds:
            return points
        await asyncio.sleep(every)


async def main_async(args: argparse.Namespace) -> None:
    seconds = args.minutes * 60
    with Stack(
        pods=4, time_scale=args.time_scale, sim_args=["--num-blocks", str(args.num_blocks)]
    ) as stack:
        pid = next(p.pid for name, p in stack.procs.children if name == "picker")
        done = [0, 0]
        loader = asyncio.create_task(load(stack, args.rate, seconds, done))
        points = await sample(stack, pid, seconds, args.every, done)
        await loader
    half = seconds / 2
    first = [p for p in points if p[0] <= half]
    second = [p for p in points if p[0] >= half]
    print(
        f"RSS slope: first half {slope(first):+.2f} MiB/min, second half {slope(second):+.2f} "
        f"MiB/min; {done[0]} requests ok, {done[1]} failed"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=40.0, help="requests per second")
    ap.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--time-scale", type=float, default=10.0, help="simulator speed-up")
    ap.add_argument("--num-blocks", type=int, default=4096, help="KV blocks per sim pod")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
