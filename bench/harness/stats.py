"""Aggregation of one run: latency percentiles, throughput, errors, pod shares, cache hits.

Definitions (as in vLLM's and inference-perf's benchmarks):

* TTFT: send → first streamed token, per successful request.
* ITL: gaps between consecutive token events, pooled over all successful requests.
* TPOT: per request, (e2e - TTFT) / (output tokens - 1), for requests with >= 2 tokens.
* e2e: send → end of the response.
* throughput: output tokens of successful requests / run seconds (first send to last
  completion); request rate likewise.
* prefix-cache hit rate: sum over pods of the increase of ``vllm:prefix_cache_hits_total``
  over that of ``vllm:prefix_cache_queries_total`` (tokens).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.harness.podmetrics import (
    HITS,
    PREEMPTIONS,
    QUERIES,
    RENDER_SECONDS,
    RENDERS,
    SUCCESS,
    QueueSample,
)
from bench.harness.runner import Record
from bench.stack.client import percentile

PERCENTILES = (50, 90, 99)


def describe(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (NaN when empty) and count."""
    vals = list(values)
    out = {"mean": math.fsum(vals) / len(vals) if vals else math.nan, "count": float(len(vals))}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(vals, p)
    return out


def tpot(rec: Record) -> float | None:
    o = rec.outcome
    if not o.ok or o.ttft is None or o.output_tokens < 2:
        return None
    return (o.e2e - o.ttft) / (o.output_tokens - 1)


def summarize(
    records: Sequence[Record],
    elapsed: float,
    pod_deltas: dict[str, dict[str, float]] | None = None,
    queue: Sequence[QueueSample] = (),
    time_scale: float = 1.0,
) -> dict[str, Any]:
    """Everything the report shows about one run, JSON-ready (NaN → None)."""
    ok = [r for r in records if r.outcome.ok]
    ttft = [r.outcome.ttft for r in ok if r.outcome.ttft is not None]
    itl = [x for r in ok for x in r.outcome.itl]
    tpots = [t for r in ok if (t := tpot(r)) is not None]
    e2e = [r.outcome.e2e for r in ok]
    out_tokens = sum(r.outcome.output_tokens for r in ok)
    errors = Counter(str(r.outcome.status) for r in records if not r.outcome.ok)
    first_error = next((r.outcome.error for r in records if not r.outcome.ok), None)
    per_pod = Counter(r.outcome.pod or "?" for r in ok)
    ape = [
        abs(o.predicted_ttft - o.ttft) / o.ttft
        for r in ok
        if (o := r.outcome).predicted_ttft is not None and o.ttft
    ]
    result: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(sorted(errors.items())),
        "first_error": first_error,
        "elapsed_s": elapsed,
        "request_rate": len(ok) / elapsed if elapsed > 0 else math.nan,
        "output_tokens": out_tokens,
        "output_tokens_per_s": out_tokens / elapsed if elapsed > 0 else math.nan,
        "ttft": describe(ttft),
        "itl": describe(itl),
        "tpot": describe(tpots),
        "e2e": describe(e2e),
        "pod_share": share(per_pod),
        # picker's predicted TTFT (x-picker-predicted-ttft-ms) against the client's:
        # absolute percentage error, over the requests that carried a prediction.
        "prediction_ape": describe(ape),
        "ttft_by_pod": {
            pod: describe([r.outcome.ttft for r in ok if r.outcome.pod == pod and r.outcome.ttft])
            for pod in sorted(per_pod)
        },
        "samples": samples(records),
    }
    if pod_deltas:
        result.update(pod_summary(pod_deltas))
        result.update(observation_summary(pod_deltas, elapsed * time_scale))
    if queue:
        result["queue"] = queue_summary(queue)
    cleaned: dict[str, Any] = clean(result)
    return cleaned


def samples(records: Sequence[Record]) -> list[list[Any]]:
    """Per request, for diagnosis (a run's tail, which pod, what picker predicted):
    [sent s, status, TTFT ms, pod, predicted TTFT ms, group]."""
    out: list[list[Any]] = []
    for r in records:
        o = r.outcome
        ttft = round(o.ttft * 1000, 2) if o.ttft is not None else None
        pred = round(o.predicted_ttft * 1000, 2) if o.predicted_ttft is not None else None
        out.append([round(r.sent, 3), o.status, ttft, o.pod, pred, r.group])
    return out


def share(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def pod_summary(pod_deltas: dict[str, dict[str, float]]) -> dict[str, Any]:
    hits = sum(d.get(HITS, 0.0) for d in pod_deltas.values())
    queries = sum(d.get(QUERIES, 0.0) for d in pod_deltas.values())
    served = Counter({p: int(d.get(SUCCESS, 0.0)) for p, d in pod_deltas.items()})
    return {
        "prefix_hit_rate": hits / queries if queries else math.nan,
        "prefix_hit_tokens": hits,
        "prefix_query_tokens": queries,
        "pod_requests": dict(sorted(served.items())),
        "pod_share_metrics": share(served),
        "preemptions": int(sum(d.get(PREEMPTIONS, 0.0) for d in pod_deltas.values())),
    }


def observation_summary(
    pod_deltas: dict[str, dict[str, float]], sim_seconds: float
) -> dict[str, Any]:
    """What the router's polling of ``/metrics`` cost the pods: scrapes per pod per
    second and the mean share of a pod's time spent rendering them (simulated pods
    count both; a real pod does not, so they are absent there)."""
    renders = [d[RENDERS] for d in pod_deltas.values() if RENDERS in d]
    seconds = [d[RENDER_SECONDS] for d in pod_deltas.values() if RENDER_SECONDS in d]
    if not renders or sim_seconds <= 0:
        return {}
    return {
        "scrapes_per_pod_s": math.fsum(renders) / len(renders) / sim_seconds,
        "observation_share": math.fsum(seconds) / len(seconds) / sim_seconds,
    }


def queue_summary(samples: Sequence[QueueSample]) -> dict[str, Any]:
    """Mean and max of waiting requests per pod, and the samples themselves (for plots)."""
    by_pod: dict[str, list[QueueSample]] = {}
    for s in samples:
        by_pod.setdefault(s.pod, []).append(s)
    waiting = [s.waiting for s in samples]
    return {
        "max_waiting": max(waiting) if waiting else 0.0,
        "mean_waiting": math.fsum(waiting) / len(waiting) if waiting else 0.0,
        "per_pod_mean_waiting": {
            p: math.fsum(s.waiting for s in v) / len(v) for p, v in sorted(by_pod.items())
        },
        "samples": [[s.t, s.pod, s.waiting, s.running] for s in samples],
    }


def imbalance(shares: dict[str, float]) -> float:
    """max share / fair share (1.0 = perfectly even)."""
    if not shares:
        return math.nan
    return max(shares.values()) * len(shares)


def clean(value: Any) -> Any:
    """NaN and infinities → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
