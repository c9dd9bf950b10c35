"""Scorers: each maps candidates to scores in [0, 1], higher is better.

Load scorers normalise against the candidate set (min-max), so the weights in a profile
compare like with like whatever the absolute queue lengths are.
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.datastore import Endpoint
from picker.request import InferenceRequest
from picker.scheduling.filters import lora_state


def _inverse_minmax(values: Sequence[float]) -> list[float]:
    """Lowest value → 1.0, highest → 0.0; all equal → all 1.0."""
    lo = min(values)
    hi = max(values)
    if hi <= lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


def effective_queue(e: Endpoint) -> int:
    """Scraped waiting queue plus what picker sent since that scrape.

    Between two scrapes the scraped queue is frozen; the requests picker itself sent in
    the meantime are the part it cannot see yet, so a burst spreads instead of herding.
    """
    return e.metrics.waiting + e.sent_since_scrape


class LeastInflightScorer:
    """Prefers pods with the fewest requests picker has in flight to them (no metrics)."""

    name = "least_inflight"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_minmax([e.inflight for e in candidates])


class QueueScorer:
    """Prefers short queues: waiting requests (scraped) plus requests sent since."""

    name = "queue"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_minmax([effective_queue(e) for e in candidates])


class RunningScorer:
    """Prefers small running batches (each decode step costs more with a bigger batch)."""

    name = "running"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_minmax([e.metrics.running for e in candidates])


class KVCacheScorer:
    """Prefers KV-cache headroom: score = 1 - utilisation (absolute, not normalised)."""

    name = "kv_cache"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return [max(0.0, 1.0 - e.metrics.kv_usage) for e in candidates]


class LoraAffinityScorer:
    """Adapter loaded → 1.0, free adapter slot → 0.5, full without it → 0.0."""

    name = "lora_affinity"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        adapter = request.adapter
        if adapter is None:
            return [1.0] * len(candidates)
        return [lora_state(e, adapter) / 2.0 for e in candidates]
