"""An OpenAI-API client that measures what a user feels: TTFT, ITL, end-to-end latency.

Streaming responses are read as SSE; each ``data:`` event carrying generated text counts
as one token arrival (vLLM sends one event per token step), which is what TTFT and the
inter-token latency are measured on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass(slots=True)
class Outcome:
    status: int
    ttft: float | None = None  # seconds to the first token (streaming only)
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    pod: str | None = None  # the simulator's x-sim-pod, else Envoy's x-bench-upstream
    predicted_ttft: float | None = None  # picker's x-picker-predicted-ttft-ms, in seconds
    error: str | None = None
    sent_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


async def send(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> Outcome:
    """POSTs ``payload`` to ``url`` (full URL of the endpoint) and measures it."""
    t0 = time.perf_counter()
    stream = bool(payload.get("stream"))
    try:
        async with session.post(
            url,
            data=orjson.dumps(payload),
            headers={"content-type": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            pod = resp.headers.get("x-sim-pod") or resp.headers.get("x-bench-upstream")
            out = Outcome(status=resp.status, pod=pod, sent_at=t0)
            predicted = resp.headers.get("x-picker-predicted-ttft-ms")
            if predicted:
                out.predicted_ttft = float(predicted) / 1000.0
            if resp.status != 200:
                out.error = (await resp.read())[:500].decode("utf-8", "replace")
                out.e2e = time.perf_counter() - t0
                return out
            if not stream:
                data = orjson.loads(await resp.read())
                out.e2e = time.perf_counter() - t0
                usage = data.get("usage") or {}
                out.output_tokens = int(usage.get("completion_tokens") or 0)
                return out
            last = t0
            buf = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data:"):
                        continue
                    data_s = event[5:].strip()
                    if data_s == b"[DONE]":
                        continue
                    msg = orjson.loads(data_s)
                    if not _has_token(msg):
                        continue
                    out.output_tokens += 1
                    if out.ttft is None:
                        out.ttft = now - t0
                    else:
                        out.itl.append(now - last)
                    last = now
            out.e2e = time.perf_counter() - t0
            return out
    except Exception as e:  # a failed request is a data point, not a crash
        return Outcome(
            status=0, error=f"{type(e).__name__}: {e}", e2e=time.perf_counter() - t0, sent_at=t0
        )


def _has_token(msg: dict[str, Any]) -> bool:
    for choice in msg.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
