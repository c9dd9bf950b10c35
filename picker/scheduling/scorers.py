"""Scorers: each maps candidates to scores in [0, 1], higher is better.

Load scorers normalise against the busiest candidate, with a floor (``scale``) so that
at low load a difference of one request stays a small difference; see
``_inverse_scaled``. Each takes its ``scale`` from the profile's scorer parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from picker.datastore import Endpoint
from picker.request import InferenceRequest
from picker.scheduling.filters import lora_state


def _inverse_scaled(values: Sequence[float], scale: float) -> list[float]:
    """``1 - v / max(max(values), scale)``: 0 → 1.0, the largest → 0.0 once past ``scale``.

    Plain min-max normalisation would turn a difference of one request (0 vs 1) into the
    full score range and drown every other scorer at low load; anchoring at zero with a
    floor on the range keeps small differences small and large ones large.
    """
    top = max(max(values), scale)
    return [1.0 - v / top for v in values]


def effective_queue(e: Endpoint) -> int:
    """Scraped waiting queue plus what picker sent since that scrape and is still open.

    Between two scrapes the scraped queue is frozen; the requests picker itself sent in
    the meantime are the part it cannot see yet, so a burst spreads instead of herding.
    Those of them that already finished are no load at all, hence the ``min``.
    """
    return e.metrics.waiting + min(e.sent_since_scrape, e.inflight)


class LeastInflightScorer:
    """Prefers pods with the fewest requests picker has in flight to them (no metrics)."""

    name = "least_inflight"

    def __init__(self, scale: float = 8.0) -> None:
        self.scale = scale

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_scaled([e.inflight for e in candidates], self.scale)


class QueueScorer:
    """Prefers short queues: waiting requests (scraped) plus requests sent since.

    ``count_unscraped=False`` uses the scraped queue alone (what a metrics-only router
    sees); it exists to measure the herding that the default avoids.
    """

    name = "queue"

    def __init__(self, scale: float = 8.0, count_unscraped: bool = True) -> None:
        self.scale = scale
        self.count_unscraped = count_unscraped

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        if self.count_unscraped:
            return _inverse_scaled([effective_queue(e) for e in candidates], self.scale)
        return _inverse_scaled([e.metrics.waiting for e in candidates], self.scale)


class TokenLoadScorer:
    """Prefers pods with less prefill work queued by picker: the estimated uncached prompt
    tokens of the requests picker has in flight there.

    Request counts treat a 50-token and a 5,000-token prompt alike; prefill time does
    not. ``scale`` (tokens) keeps small differences small, like the other load scorers.
    """

    name = "token_load"

    def __init__(self, scale: float = 8192.0) -> None:
        self.scale = scale

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_scaled([e.inflight_tokens for e in candidates], self.scale)


class RunningScorer:
    """Prefers small running batches (each decode step costs more with a bigger batch)."""

    name = "running"

    def __init__(self, scale: float = 32.0) -> None:
        self.scale = scale

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return _inverse_scaled([e.metrics.running for e in candidates], self.scale)


class KVCacheScorer:
    """Prefers KV-cache headroom: score = 1 - utilisation (absolute, not normalised)."""

    name = "kv_cache"

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        return [max(0.0, 1.0 - e.metrics.kv_usage) for e in candidates]


class LoraAffinityScorer:
    """Prefers pods that hold the request's LoRA adapter.

    vLLM reports only adapters of *running or waiting* requests, but keeps up to
    ``max_loras`` adapters loaded after their requests finish (LRU slots). So besides the
    scraped state this scorer remembers, per pod, the adapters picker recently sent
    there, in an LRU as large as the pod's ``max_lora``: a sequence of requests for one
    adapter keeps landing where it is loaded even when none is running at scrape time.

    Scores: running/waiting or recently sent there → 1.0; a free adapter slot → 0.5;
    all slots taken by others → 0.0. Requests without adapter score 1.0 anywhere.
    """

    name = "lora_affinity"

    def __init__(self, default_slots: int = 4) -> None:
        self.default_slots = default_slots
        self._recent: dict[str, OrderedDict[str, None]] = {}

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        adapter = request.adapter
        if adapter is None:
            return [1.0] * len(candidates)
        out: list[float] = []
        for e in candidates:
            state = lora_state(e, adapter)
            if state == 2:
                out.append(1.0)
            else:
                recent = self._recent.get(e.address)
                out.append(1.0 if recent is not None and adapter in recent else state / 2.0)
        return out

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        adapter = request.adapter
        if adapter is None:
            return
        recent = self._recent.setdefault(endpoint.address, OrderedDict())
        recent[adapter] = None
        recent.move_to_end(adapter)
        slots = endpoint.metrics.max_lora or self.default_slots
        while len(recent) > slots:
            recent.popitem(last=False)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        return None
