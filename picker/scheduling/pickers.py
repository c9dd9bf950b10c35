"""Pickers: turn scores into an ordered choice (primary first, then fallbacks)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from picker.datastore import Endpoint
from picker.request import InferenceRequest


class _RandomizedPicker:
    """Common state: how many fallbacks to return, and the random source."""

    def __init__(self, fallbacks: int = 0, rng: random.Random | None = None) -> None:
        self.fallbacks = fallbacks
        self._rng = rng or random.Random()


class MaxScorePicker(_RandomizedPicker):
    """Highest total score wins; ties broken at random; the rest follow by score."""

    name = "max_score"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(candidates)
        if n == 1:
            return [candidates[0]]
        rnd = self._rng.random
        # Random tie-break key per candidate, then sort by (score, key) descending.
        order = sorted(range(n), key=lambda i: (scores[i], rnd()), reverse=True)
        return [candidates[i] for i in order[: 1 + self.fallbacks]]


class PowerOfTwoPicker(_RandomizedPicker):
    """Samples two candidates at random and keeps the better-scored one."""

    name = "p2c"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(candidates)
        if n == 1:
            return [candidates[0]]
        a, b = self._rng.sample(range(n), 2)
        first, second = (a, b) if scores[a] >= scores[b] else (b, a)
        return [candidates[first], candidates[second]][: 1 + self.fallbacks]


class RandomPicker(_RandomizedPicker):
    """Uniformly random, ignoring scores."""

    name = "random"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        k = min(len(candidates), 1 + self.fallbacks)
        return self._rng.sample(list(candidates), k)


class RoundRobinPicker:
    """Cycles through the candidates in address order, ignoring scores."""

    name = "round_robin"

    def __init__(self, fallbacks: int = 0) -> None:
        self.fallbacks = fallbacks
        self._next = 0

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(candidates)
        start = self._next % n
        self._next = start + 1
        k = min(n, 1 + self.fallbacks)
        return [candidates[(start + j) % n] for j in range(k)]
