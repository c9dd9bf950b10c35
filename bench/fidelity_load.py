"""The machine side of ``bench.fidelity``: :class:`Observer`, the ``/metrics`` poller of
its runs, and CPU accounting from Linux ``/proc`` (a process's CPU time, its children,
and :class:`OtherLoad`, the share of the CPUs other people's processes took)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import aiohttp


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """The share of the machine's CPUs that processes other than this one and its
    children (the pods under test) used since construction: other people's work."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        tick = os.sysconf("SC_CLK_TCK")
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(cpu[i]) for i in (0, 1, 2, 5, 6, 7)) / tick  # all but idle, iowait
        t = os.times()
        ours = t.children_user + t.children_system  # children that have exited
        for pid in [os.getpid(), *descendants(os.getpid())]:
            with contextlib.suppress(OSError):
                ours += cpu_seconds(pid)
        return busy, ours, time.monotonic()

    def share(self) -> float:
        busy0, ours0, t0 = self.start
        busy, ours, t = self._sample()
        wall = max(t - t0, 1e-9) * (os.cpu_count() or 1)
        return max(0.0, (busy - busy0) - (ours - ours0)) / wall


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class Observer:
    """Polls one pod's ``/metrics`` as picker's default scraper does: at most ``share``
    (1 %) of the pod's time, from the measured cost of a scrape (an EWMA of the seconds
    from sending the request to the end of the page), between ``min_interval`` and
    ``max_interval``. picker spends half of that budget on regular polls and half on
    early ones under load; this spends it all, evenly. No ``x-sim-free`` header: the
    simulated pod charges its ``metrics_render_ms``, the real one pays its render."""

    def __init__(
        self,
        address: str,
        share: float = 0.01,
        min_interval: float = 0.05,
        max_interval: float = 2.0,
    ) -> None:
        self.address = address
        self.share = share
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.cost = 0.0
        self.scrapes = 0
        self.seconds = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    async with session.get(f"http://{self.address}/metrics") as r:
                        await r.read()
                except (aiohttp.ClientError, OSError):
                    pass
                spent = time.perf_counter() - t0
                self.scrapes += 1
                self.seconds += spent
                self.cost = spent if not self.cost else self.cost + 0.25 * (spent - self.cost)
                interval = min(self.max_interval, max(self.min_interval, self.cost / self.share))
                delay = t0 + interval - time.perf_counter()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay if delay > 0 else 0)
