"""LoRA affinity: prefer pods that already hold the request's adapter."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.filters import lora_state
from picker.scheduling.framework import Handle, Params, Scorer


class LoraAffinityScorer(Scorer):
    """Prefers pods that hold the request's LoRA adapter.

    vLLM reports only adapters of *running or waiting* requests, but keeps up to
    ``max_loras`` adapters loaded after their requests finish (LRU slots). So besides the
    scraped state this scorer remembers, per pod, the adapters picker recently sent
    there, in an LRU as large as the pod's ``max_lora`` (``default_slots`` when the pod
    does not say): a sequence of requests for one adapter keeps landing where it is
    loaded even when none is running at scrape time.

    Scores: running/waiting or recently sent there → 1.0; a free adapter slot → 0.5;
    all slots taken by others → 0.0. Requests without adapter score 1.0 anywhere.
    """

    type = "lora_affinity"

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        self.default_slots = (params or Params()).integer("default_slots", 4)
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

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self._recent.pop(endpoint.address, None)

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
