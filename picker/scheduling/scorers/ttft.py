"""Predicted time to first token, in seconds (a first cut of the latency model).

For each candidate pod the plugin keeps a fluid model of its prefill backlog: the
uncached prompt tokens picker sent there, drained at the pod's prefill rate as time
passes. A request's predicted TTFT on a pod is

    overhead + (backlog + the request's own uncached tokens on that pod) / rate

where the request's uncached tokens come from the prefix match (``request.prefix`` or
``request.kv_prefix``), so a pod holding the prompt's prefix is predicted faster by
exactly what the hit saves, and a busy holder slower by exactly its backlog: affinity
and load weighed in one unit. The score is ``best / predicted`` (1.0 for the fastest).

The rate is learned per pod from its own counters: between two scrapes, the prompt
tokens it computed over the seconds it spent prefilling (vLLM's
``request_prefill_kv_computed_tokens`` and ``request_prefill_time_seconds``), as a
moving average; until a pod has prefilled ``learn_after_tokens`` tokens, or when it
does not export them, the prior ``tokens_per_second`` applies.

Parameters: ``tokens_per_second`` (33000: an 8B model on one H100), ``overhead_s``
(0.01), ``learn_after_tokens`` (256). Opt-in (``scorers: {predicted_ttft: 1}`` with
the ``max_score`` picker).
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
        self.learn_after = p.number("learn_after_tokens", 256.0)
        if self.rate <= 0 or self.overhead < 0:
            raise ValueError(f"plugin {self.name!r}: tokens_per_second > 0, overhead_s >= 0")
        self._clock = clock
        self._backlog: dict[str, tuple[float, float]] = {}  # address -> (tokens, at)
        self._mean_tokens = 0.0  # moving average of uncached tokens per request sent
        self._rates: dict[str, float] = {}  # address -> learned prefill tokens/s
        self._seen: dict[str, tuple[float, float, float]] = {}  # address -> (at, s, tokens)

    def rate_of(self, address: str) -> float:
        """Prefill tokens per second of ``address``: learned, else the prior."""
        return self._rates.get(address, self.rate)

    def learn(self, endpoint: Endpoint) -> None:
        """Updates the pod's rate from its counters when a new scrape came in."""
        m = endpoint.metrics
        seen = self._seen.get(endpoint.address)
        if seen is not None and seen[0] == m.scraped_at:
            return
        self._seen[endpoint.address] = (m.scraped_at, m.prefill_seconds, m.prefill_tokens)
        if seen is None or not m.scraped_at:
            return
        seconds = m.prefill_seconds - seen[1]
        tokens = m.prefill_tokens - seen[2]
        if seconds <= 0 or tokens < self.learn_after:
            return  # nothing prefilled (or the pod restarted: counters went back)
        sample = min(max(tokens / seconds, self.rate / 20), self.rate * 20)
        old = self._rates.get(endpoint.address)
        self._rates[endpoint.address] = sample if old is None else old + 0.3 * (sample - old)

    def backlog(self, address: str, now: float) -> float:
        """Uncached tokens still ahead of a new request on ``address`` at ``now``."""
        entry = self._backlog.get(address)
        if entry is None:
            return 0.0
        tokens, at = entry
        left = tokens - (now - at) * self.rate_of(address)
        return left if left > 0 else 0.0

    def predict(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> float:
        """Predicted seconds to the first token of ``request`` on ``endpoint``.

        The backlog is the fluid estimate, or what the pod itself last reported queued
        (its waiting requests at the mean request size) when that is larger: a pod
        slower than the prior rate keeps a queue the fluid model drains too fast.
        """
        address = endpoint.address
        own = request.uncached_tokens(address)
        reported = endpoint.metrics.waiting * self._mean_tokens
        backlog = max(self.backlog(address, now), reported)
        return self.overhead + (backlog + own) / self.rate_of(address)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        now = self._clock()
        for e in candidates:
            self.learn(e)
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
        for state in (self._backlog, self._rates, self._seen):
            state.pop(endpoint.address, None)
