"""The plugin interfaces of the scheduler.

A scheduling cycle for one request:

    candidates = pool.ready()
    for f in filters:   candidates = f.filter(request, candidates)
    totals = sum of weight_i * scorer_i.score(request, candidates)   (each score in [0, 1])
    ranked = picker.pick(request, candidates, totals)          (primary first, then fallbacks)
    for h in post_pick: h.on_pick(request, ranked[0])

Plugins never mutate endpoint state except through explicit hooks (``PickObserver``);
scores are plain lists aligned with the candidate list, so no per-endpoint dicts are
allocated on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from picker.datastore import Endpoint
from picker.request import InferenceRequest


class Filter(Protocol):
    """Drops candidates that must not serve the request. May return the input list."""

    name: str

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]: ...


class Scorer(Protocol):
    """Scores each candidate in [0, 1], higher is better; one float per candidate."""

    name: str

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]: ...


class Picker(Protocol):
    """Orders the candidates by preference (primary first); may return fewer."""

    name: str

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]: ...


@runtime_checkable
class PickObserver(Protocol):
    """Optional hooks for stateful plugins (e.g. a prefix index that learns from picks)."""

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None: ...

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None: ...
