"""Filters: drop candidates that must not (or should not) serve a request."""

from __future__ import annotations

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Filter
from picker.scheduling.testing import allowed as named_in


class SubsetFilter(Filter):
    """Keeps only the endpoints the proxy allowed (the protocol's subset hint,
    ``request.subset``; None means no hint). An entry without a port (a bare IP, as the
    reference endpoint picker accepts) allows every endpoint of that host. Always first
    in every profile."""

    type = "subset"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        allowed = request.subset
        if allowed is None:
            return candidates
        return [e for e in candidates if named_in(e, allowed)]


class LoraFilter(Filter):
    """Never sends an adapter request to a pod whose adapter slots are all taken by others.

    A pod qualifies when it already runs or queues the adapter, or it has a free slot
    (``max_lora`` unknown counts as free). If no pod qualifies the candidates are kept
    unchanged: the request then waits in some pod's queue rather than failing.
    """

    type = "lora"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        adapter = request.adapter
        if adapter is None:
            return candidates
        kept = [e for e in candidates if lora_state(e, adapter) > 0]
        return kept or candidates


def lora_state(endpoint: Endpoint, adapter: str) -> int:
    """2: adapter loaded (running or waiting); 1: a free adapter slot; 0: full without it."""
    m = endpoint.metrics
    if adapter in m.running_adapters or adapter in m.waiting_adapters:
        return 2
    if m.max_lora <= 0 or len(m.running_adapters | m.waiting_adapters) < m.max_lora:
        return 1
    return 0
