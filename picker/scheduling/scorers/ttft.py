"""Predicted time to first token, in seconds (a first cut of the latency model).

For each candidate pod the plugin keeps a fluid model of its prefill backlog: the
uncached prompt tokens picker sent there, drained at the pod's prefill rate as time
passes. A request's predicted TTFT on a pod is

    overhead + (backlog + the request's own uncached tokens on that pod) / rate

where the request's uncached tokens come from the prefix match (``request.prefix`` or
``request.kv_prefix``), so a pod holding the prompt's prefix is predicted faster by
exactly what the hit saves, and a busy holder slower by exactly its backlog: affinity
and load weighed in one unit. The score is ``best / predicted`` (1.0 for the fastest).

Parameters: ``tokens_per_second`` (33000: an 8B model on one H100), ``overhead_s``
(0.01). Opt-in (``scorers: {predicted_ttft: 1}`` with the ``max_score`` picker); the
rate is a prior, not yet learned per pod from its counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle, Params, Scorer


class PredictedTTFTScorer(Scorer):
    type = "predicted_ttft"

    def __init__(
        self,
        name: str = "",
        params: Params | None = None,
        handle: Handle | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        p = params or Params()
        self.rate = p.number("tokens_per_second", 33000.0)
        self.overhead = p.number("overhead_s", 0.01)
        if self.rate <= 0 or self.overhead < 0:
            raise ValueError(f"plugin {self.name!r}: tokens_per_second > 0, overhead_s >= 0")
        self._clock = clock
        self._backlog: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._mean_tokens = 0.0  # moving average of uncached tokens per request sent

    def backlog(self, address: str, now: float) -> float:
        """Uncached tokens still ahead of a new request on ``address`` at ``now``."""
        entry = self._backlog.get(address)
        if entry is None:
            return 0.0
        tokens, at = entry
        left = tokens - (now - at) * self.rate
        return left if left > 0 else 0.0

    def predict(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> float:
        """Predicted seconds to the first token of ``request`` on ``endpoint``.

        The backlog is the fluid estimate, or what the pod itself last reported queued
        (its waiting requests at the mean request size) when that is larger: a pod
        slower than the prior rate keeps a queue the fluid model drains too fast.
        """
        own = request.uncached_tokens(endpoint.address)
        reported = endpoint.metrics.waiting * self._mean_tokens
        backlog = max(self.backlog(endpoint.address, now), reported)
        return self.overhead + (backlog + own) / self.rate

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        now = self._clock()
        preds = [self.predict(request, e, now) for e in candidates]
        best = min(preds)
        return [best / p for p in preds]

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        now = self._clock()
        address = endpoint.address
        left = self.backlog(address, now)
        tokens = request.uncached_tokens(address)
        self._backlog[address] = (left + tokens, now)
        self._mean_tokens += 0.05 * (tokens - self._mean_tokens)

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._backlog.pop(endpoint.address, None)
