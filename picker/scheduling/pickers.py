"""Pickers: turn scores into an ordered choice (primary first, then ``fallbacks`` more)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle, Params, Picker


class _RandomizedPicker(Picker):
    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        self._rng = handle.rng if handle is not None else random.Random()


class MaxScorePicker(Picker):
    """Highest total score wins; the rest follow by score.

    Exact ties go to the tied candidate picked least recently: when nothing tells the
    pods apart (the common case below saturation) that is round-robin, whose evenly
    spaced arrivals per pod queue less than a random split (measured on the uniform
    workload: TTFT p90 75 ms with random tie-breaks, see README). Pods never picked
    come first, in an order drawn once per process: replicas deciding at the same
    moment (active-active, nothing shared yet) do not all start with the same pod.
    With ``peers``, the other replicas' picks count too.
    """

    type = "max_score"

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        self._seq = 0
        self._last: dict[str, float] = {}
        self._rng = handle.rng if handle is not None else random.Random()

    def _rank(self, address: str) -> float:
        rank = self._last.get(address)
        if rank is None:  # never picked: before every picked pod, in this process's order
            rank = self._last[address] = -1.0 - self._rng.random()
        return rank

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(candidates)
        if n == 1:
            chosen = candidates[0]
        else:
            best = max(scores)
            tied = [i for i in range(n) if scores[i] == best]
            if len(tied) == 1:
                first = tied[0]
            else:
                rank = self._rank
                first = min(tied, key=lambda i: rank(candidates[i].address))
            chosen = candidates[first]
        self._seq += 1
        self._last[chosen.address] = self._seq
        if not self.fallbacks or n == 1:
            return [chosen]
        rest = sorted(
            (i for i in range(n) if candidates[i] is not chosen),
            key=lambda i: scores[i],
            reverse=True,
        )
        return [chosen, *(candidates[i] for i in rest[: self.fallbacks])]

    def on_peer_pick(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        """A peer replica's pick counts as a pick here: ties go to the pod least recently
        picked by any replica (round-robin across them), not by this one alone."""
        if tokens > 0:  # (0: a replayed pick, history)
            self._seq += 1
            self._last[endpoint.address] = self._seq

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._last.pop(endpoint.address, None)


class PowerOfTwoPicker(_RandomizedPicker):
    """Samples two candidates at random and keeps the better-scored one."""

    type = "p2c"

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

    type = "random"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        k = min(len(candidates), 1 + self.fallbacks)
        return self._rng.sample(list(candidates), k)


class RoundRobinPicker(Picker):
    """Cycles through the candidates in address order, ignoring scores."""

    type = "round_robin"

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        self._next = 0

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        n = len(candidates)
        start = self._next % n
        self._next = start + 1
        k = min(n, 1 + self.fallbacks)
        return [candidates[(start + j) % n] for j in range(k)]
