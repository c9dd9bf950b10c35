"""A small, fast HTTP/1.1 load generator (keep-alive, raw asyncio streams).

Cheap enough per request that on this 2-core box it does not hide the cost of what it
measures; used by ``bench/overhead.py``. Responses must carry Content-Length or be
chunked.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i)
        await reader.readexactly(int(lower[i + 15 : j]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


def build_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run(
    port: int,
    request: bytes,
    *,
    concurrency: int = 1,
    duration: float | None = None,
    total: int | None = None,
    host: str = "127.0.0.1",
) -> Result:
    """Closed loop: ``concurrency`` connections each sending back-to-back requests."""
    res = Result()
    deadline = time.perf_counter() + duration if duration else None
    remaining = [total if total is not None else 1 << 62]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                t1 = time.perf_counter()
                res.latencies.append(t1 - t0)
                res.statuses[status] = res.statuses.get(status, 0) + 1
                if deadline is not None and t1 > deadline:
                    break
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.elapsed = time.perf_counter() - t0
    return res


def run_blocking(port: int, request: bytes, **kw: Any) -> Result:
    """``run`` on a fresh uvloop event loop (the cheapest client this box has, so the load
    generator takes as little CPU as possible from what it measures)."""
    import uvloop

    return uvloop.run(run(port, request, **kw))
