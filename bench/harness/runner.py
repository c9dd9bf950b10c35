"""Sends a workload at its arrival offsets and measures every request (client side)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from bench.harness.workloads import RequestSpec
from bench.stack.client import Outcome, send


@dataclass(slots=True)
class Record:
    """One sent request: its spec's labels, when it was sent, and what came back."""

    index: int
    at: float  # scheduled offset (s)
    sent: float  # actual send offset from the run's start (s)
    outcome: Outcome
    group: str | None = None
    session: str | None = None
    model: str = ""


Progress = Callable[[int, int], None]


async def drive(
    url: str,
    specs: Sequence[RequestSpec],
    *,
    concurrency: int = 0,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> tuple[list[Record], float]:
    """Sends ``specs`` to ``url`` (base URL); returns the records and the run's seconds.

    A request goes at its offset ``at``, but never before the previous request of its
    session finished, nor while ``concurrency`` (if > 0) requests are in flight.
    """
    sem = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    last_of_session: dict[str, asyncio.Task[Record]] = {}
    records: list[Record] = []
    base = url.rstrip("/")
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(i: int, spec: RequestSpec, before: asyncio.Task[Record] | None) -> Record:
            delay = start + spec.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if before is not None:
                await asyncio.shield(before)
            if sem is not None:
                await sem.acquire()
            try:
                sent = time.perf_counter() - start
                out = await send(session, base + spec.path, spec.body, spec.headers, timeout)
            finally:
                if sem is not None:
                    sem.release()
            rec = Record(i, spec.at, sent, out, spec.group, spec.session, spec.model)
            records.append(rec)
            if progress is not None:
                progress(len(records), len(specs))
            return rec

        tasks = []
        for i, spec in enumerate(specs):
            before = last_of_session.get(spec.session) if spec.session else None
            task = asyncio.create_task(one(i, spec, before))
            if spec.session:
                last_of_session[spec.session] = task
            tasks.append(task)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    records.sort(key=lambda r: r.index)
    return records, elapsed
