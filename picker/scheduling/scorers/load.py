"""Load scorers: each maps candidates to scores in [0, 1], higher is better.

They normalise against the busiest candidate, with a floor (``scale``) so that at low
load a difference of one request stays a small difference; see ``inverse_scaled``.
Queue depth and load are the datastore's single definitions (``Endpoint.queue``,
``Endpoint.load``), shared with saturation and the prefix scorer's balance rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle, Params, Scorer


def inverse_scaled(values: Sequence[float], scale: float) -> list[float]:
    """``1 - v / max(max(values), scale)``: 0 → 1.0, the largest → 0.0 once past ``scale``.

    Plain min-max normalisation would turn a difference of one request (0 vs 1) into the
    full score range and drown every other scorer at low load; anchoring at zero with a
    floor on the range keeps small differences small and large ones large.
    """
    inv = 1.0 / max(max(values), scale)
    return [1.0 - v * inv for v in values]


class _ScaledScorer(Scorer):
    default_scale = 8.0

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        p = params or Params()
        self.scale = p.number("scale", self.default_scale)
        if self.scale <= 0:
            raise ValueError(f"plugin {self.name!r}: scale must be > 0")


class LeastInflightScorer(_ScaledScorer):
    """Prefers pods with the fewest requests picker has in flight to them (no metrics)."""

    type = "least_inflight"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return inverse_scaled([e.inflight for e in candidates], self.scale)


class QueueScorer(_ScaledScorer):
    """Prefers short queues: waiting requests (scraped) plus requests sent since."""

    type = "queue"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        # Endpoint.queue, inlined: this runs over every candidate on every request.
        queues = [
            e.metrics.waiting + (s if (s := e.sent_since_scrape) < (i := e.inflight) else i)
            for e in candidates
        ]
        return inverse_scaled(queues, self.scale)


class TokenLoadScorer(_ScaledScorer):
    """Prefers pods with less prefill work queued by picker: the estimated uncached prompt
    tokens of the requests picker has in flight there.

    Request counts treat a 50-token and a 5,000-token prompt alike; prefill time does
    not. ``scale`` (tokens) keeps small differences small, like the other load scorers.
    """

    type = "token_load"
    default_scale = 8192.0

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return inverse_scaled([e.inflight_tokens for e in candidates], self.scale)


class RunningScorer(_ScaledScorer):
    """Prefers small running batches (each decode step costs more with a bigger batch)."""

    type = "running"
    default_scale = 32.0

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return inverse_scaled([e.metrics.running for e in candidates], self.scale)


class KVCacheScorer(Scorer):
    """Prefers KV-cache headroom: score = 1 - utilisation (absolute, not normalised)."""

    type = "kv_cache"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return [1.0 - u if (u := e.metrics.kv_usage) < 1.0 else 0.0 for e in candidates]
