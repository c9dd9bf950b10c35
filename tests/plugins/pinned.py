"""An out-of-tree scorer, written as another package would write one: it imports only
picker's plugin framework, and picker finds it through the ``picker.plugins`` entry-point
group. It prefers the candidate whose port is the highest (``prefer: highest``) or the
lowest, so where traffic lands shows that it, and not a built-in, decided."""

from __future__ import annotations

from collections.abc import Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle, Params, Scorer


class PinnedScorer(Scorer):
    type = "pinned"

    def __init__(self, name: str, params: Params, handle: Handle) -> None:
        super().__init__(name)
        prefer = params.text("prefer", "highest")
        if prefer not in ("highest", "lowest"):
            raise ValueError(f"plugin {name!r}: prefer must be highest or lowest")
        self.sign = 1 if prefer == "highest" else -1
        self.picks = 0

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        ports = [self.sign * e.port for e in candidates]
        top = max(ports)
        return [1.0 if p == top else 0.0 for p in ports]

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        self.picks += 1


def not_a_plugin(name: str, params: Params, handle: Handle) -> object:
    return object()
