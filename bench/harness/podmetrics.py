"""The pods' side of a run, from their Prometheus ``/metrics`` (vLLM metric names).

``snapshot`` reads the counters of every pod (before and after a run: the deltas give
the prefix-cache hit rate and per-pod request counts); ``QueuePoller`` samples queue
depth (``vllm:num_requests_waiting``) and running requests every ``interval`` seconds
(simulated pods only: a real vLLM renders its ``/metrics`` in ~10 ms on its API server,
so sampling it every 0.2 s would cost each pod ~5 % for every target).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
SUCCESS = "vllm:request_success_total"
PREEMPTIONS = "vllm:num_preemptions_total"  # running requests evicted for KV room
# The simulator's count of /metrics scrapes that cost the pod (the router's, never ours).
RENDERS = "sim:metrics_renders_total"
RENDER_SECONDS = "sim:metrics_render_seconds_total"
WANTED = (HITS, QUERIES, WAITING, RUNNING, SUCCESS, PREEMPTIONS, RENDERS, RENDER_SECONDS)
# The harness's own reads are free on simulated pods (a real pod ignores the header).
FREE = {"x-sim-free": "1"}


def parse_metrics(text: str, wanted: tuple[str, ...] = WANTED) -> dict[str, float]:
    """Sums of the samples of each wanted metric (over all label sets)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            tail = rest.rsplit("}", 1)[-1]
        else:
            name, _, tail = line.partition(" ")
        if name not in wanted or not tail.split():
            continue
        value = tail.split()[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def scrape(session: aiohttp.ClientSession, pod: str) -> dict[str, float]:
    """One pod's wanted metrics; empty when it cannot be read."""
    try:
        async with session.get(
            f"http://{pod}/metrics", timeout=aiohttp.ClientTimeout(total=2), headers=FREE
        ) as r:
            if r.status != 200:
                return {}
            return parse_metrics(await r.text())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return {}


async def snapshot(pods: list[str]) -> dict[str, dict[str, float]]:
    async with aiohttp.ClientSession() as session:
        values = await asyncio.gather(*(scrape(session, p) for p in pods))
    return dict(zip(pods, values, strict=True))


def deltas(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per pod, counter increase over the run (gauges: the value at the end)."""
    out: dict[str, dict[str, float]] = {}
    for pod, end in after.items():
        start = before.get(pod, {})
        out[pod] = {k: v - start.get(k, 0.0) if k.endswith("_total") else v for k, v in end.items()}
    return out


@dataclass
class QueueSample:
    t: float  # seconds since the poller started
    pod: str
    waiting: float
    running: float


@dataclass
class QueuePoller:
    """Samples every pod's waiting/running gauges in the background."""

    pods: list[str]
    interval: float = 0.2
    samples: list[QueueSample] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> QueuePoller:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        t0 = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            while True:
                t = time.perf_counter() - t0
                values = await asyncio.gather(*(scrape(session, p) for p in self.pods))
                for pod, v in zip(self.pods, values, strict=True):
                    if v:
                        self.samples.append(
                            QueueSample(round(t, 3), pod, v.get(WAITING, 0.0), v.get(RUNNING, 0.0))
                        )
                await asyncio.sleep(max(0.0, t0 + t + self.interval - time.perf_counter()))
