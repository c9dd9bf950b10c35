"""A scheduling profile: filters → data producers → weighted scorers → picker.

Configuration (the ``scheduler`` key; ``DEFAULT_SCHEDULER`` when absent)::

    scheduler:
      plugins:                       # instances: a type, an optional name, parameters
        - {type: prefix, parameters: {block_chars: 256}}
        - {type: queue, name: short-queue, parameters: {scale: 4}}
      filters: [lora]                # plugin names
      scorers: {prefix: 3, short-queue: 2, kv_cache: 1}   # plugin name → weight
      picker: max_score
      fallbacks: 0                   # endpoints after the primary, for proxy retries

A name that no ``plugins`` entry declares stands for an instance of the type of that
name with default parameters, so ``scorers: {queue: 2}`` needs no ``plugins`` entry.
Every plugin instance, declared or referenced, takes part in the hooks it implements
(producers, ``on_pick``/``on_done`` observers, ``start``/``stop``). The subset filter
(the proxy's hint) always runs first; it is not configured. With
``ENABLE_REQ_HEADER_BASED_SCHEDULER_FOR_TESTING=true`` in the environment, the
conformance suite's two test plugins are added (``picker.scheduling.testing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import Any, TypeVar

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.filters import SubsetFilter
from picker.scheduling.framework import (
    DataProducer,
    Filter,
    Handle,
    Picker,
    Plugin,
    Scorer,
    overrides,
)
from picker.scheduling.registry import Registry, default_registry
from picker.scheduling.testing import HeaderSelectionFilter, ServedEndpointEcho, from_env

DEFAULT_SCHEDULER: dict[str, Any] = {
    "filters": ["lora"],
    # The lowest predicted TTFT wins (``scorers/ttft.py``); ``prefix`` at weight 0 only
    # produces the prefix match the prediction reads; a LoRA request prefers pods that
    # hold its adapter unless they are predicted more than twice as slow.
    "scorers": {"predicted_latency": 1.0, "prefix": 0.0, "lora_affinity": 1.0},
    "picker": "max_score",
    "fallbacks": 0,
}
_KEYS = frozenset({"plugins", "filters", "scorers", "picker", "fallbacks"})


@dataclass
class Profile:
    """One configured scheduler. ``schedule`` is the hot path: keep it allocation-light."""

    filters: list[Filter]
    producers: list[DataProducer]
    scorers: list[tuple[Scorer, float]]
    picker: Picker
    plugins: list[Plugin] = field(default_factory=list)  # every instance, for the hooks
    _pick_observers: list[Plugin] = field(default_factory=list)
    _done_observers: list[Plugin] = field(default_factory=list)
    _removal_observers: list[Plugin] = field(default_factory=list)
    _header_writers: list[Plugin] = field(default_factory=list)
    _peer_observers: list[Plugin] = field(default_factory=list)
    _peer_done_observers: list[Plugin] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._header_writers = [p for p in self.plugins if overrides(p, "response_headers")]
        self._pick_observers = [p for p in self.plugins if overrides(p, "on_pick")]
        self._done_observers = [p for p in self.plugins if overrides(p, "on_done")]
        self._removal_observers = [p for p in self.plugins if overrides(p, "on_endpoint_removed")]
        self._peer_observers = [p for p in self.plugins if overrides(p, "on_peer_pick")]
        self._peer_done_observers = [p for p in self.plugins if overrides(p, "on_peer_done")]

    def add_plugin(self, plugin: Plugin) -> None:
        """Adds a plugin that only observes (hooks, no filter/scorer role), e.g. the
        peer exchange's recorder; call before ``start``."""
        self.plugins.append(plugin)
        self.__post_init__()

    def schedule(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        """Ranked endpoints for ``request`` (primary first); empty when none is eligible."""
        for f in self.filters:
            candidates = f.filter(request, candidates)
            if not candidates:
                return []
        for producer in self.producers:
            producer.produce(request, candidates)
        n = len(candidates)
        totals: list[float] | None = None
        if n > 1:
            for scorer, weight in self.scorers:
                if not weight:  # declared for its data (a producer), not its score
                    continue
                scores = scorer.score(request, candidates)
                if len(scores) != n:
                    raise ValueError(f"scorer {scorer.name!r}: {len(scores)} scores for {n}")
                if weight != 1.0:
                    scores = [weight * s for s in scores]
                totals = list(scores) if totals is None else list(map(add, totals, scores))
        return self.picker.pick(request, candidates, totals or [0.0] * n)

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        for o in self._pick_observers:
            o.on_pick(request, endpoint)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        if endpoint.removed:  # a late response from a removed pod: no plugin learns from it
            return
        for o in self._done_observers:
            o.on_done(request, endpoint, ok)

    def on_peer_pick(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        for o in self._peer_observers:
            o.on_peer_pick(endpoint, hashes, tokens)

    def on_peer_done(self, endpoint: Endpoint, tokens: int) -> None:
        for o in self._peer_done_observers:
            o.on_peer_done(endpoint, tokens)

    @property
    def writes_response_headers(self) -> bool:
        return bool(self._header_writers)

    def response_headers(
        self, request: InferenceRequest, served: str | None
    ) -> list[tuple[str, str]]:
        """Headers the plugins add to the response (``writes_response_headers`` first)."""
        out: list[tuple[str, str]] = []
        for p in self._header_writers:
            out.extend(p.response_headers(request, served))
        return out

    def on_endpoints_removed(self, endpoints: Sequence[Endpoint]) -> None:
        """Tells every plugin that keeps per-pod state that these pods are gone."""
        for o in self._removal_observers:
            for ep in endpoints:
                o.on_endpoint_removed(ep)

    async def start(self) -> None:
        for p in self.plugins:
            if overrides(p, "start"):
                await p.start()

    async def stop(self) -> None:
        for p in reversed(self.plugins):
            if overrides(p, "stop"):
                await p.stop()


_P = TypeVar("_P", bound=Plugin)


def plugin_entry(entry: Mapping[str, Any], where: str) -> tuple[str, str]:
    """``(type, name)`` of a plugin entry ``{type, name?, parameters?}``; the name
    defaults to the type. Raises on other keys or a missing type."""
    unknown = set(entry) - {"type", "name", "parameters"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    type_name = entry.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"{where}: type is required")
    return type_name, str(entry.get("name") or type_name)


class _Builder:
    def __init__(self, registry: Registry, handle: Handle) -> None:
        self.registry = registry
        self.handle = handle
        self.instances: dict[str, Plugin] = {}

    def declare(self, i: int, entry: Any) -> None:
        where = f"scheduler.plugins[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a mapping with a type")
        type_name, name = plugin_entry(entry, where)
        if name in self.instances:
            raise ValueError(f"{where}: plugin name {name!r} is declared twice")
        self.instances[name] = self.registry.create(
            type_name, name, entry.get("parameters"), self.handle
        )

    def ref(self, name: Any, role: type[_P], what: str) -> _P:
        if not isinstance(name, str) or not name:
            raise ValueError(f"scheduler: a {what} must be named by a string, not {name!r}")
        plugin = self.instances.get(name)
        if plugin is None:
            if name not in self.registry:
                raise ValueError(
                    f"scheduler: unknown {what} {name!r}: no plugin of that name is declared "
                    f"and no plugin type has it; known types: {self.registry.types()}"
                )
            plugin = self.instances[name] = self.registry.create(name, name, None, self.handle)
        if not isinstance(plugin, role):
            raise ValueError(f"scheduler: plugin {name!r} ({type(plugin).__name__}) is no {what}")
        return plugin


def _order(producer: DataProducer) -> int:
    return producer.order


def build_profile(
    spec: Mapping[str, Any] | None = None,
    *,
    handle: Handle | None = None,
    registry: Registry | None = None,
    env: Mapping[str, str] | None = None,
) -> Profile:
    """Builds a profile from the ``scheduler`` config mapping (see the module doc);
    ``env`` (default ``os.environ``) may switch the conformance test plugins on."""
    spec = dict(DEFAULT_SCHEDULER if spec is None else spec)
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"scheduler: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    b = _Builder(registry or default_registry(), handle or Handle())
    declared = spec.get("plugins") or []
    if not isinstance(declared, Sequence) or isinstance(declared, str):
        raise ValueError("scheduler.plugins must be a list")
    for i, entry in enumerate(declared):
        b.declare(i, entry)

    names: Any = spec.get("filters") or []
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError("scheduler.filters must be a list of plugin names")
    built_filters: list[Filter] = [SubsetFilter()]
    built_filters += [b.ref(n, Filter, "filter") for n in names if n != "subset"]
    if from_env(os.environ if env is None else env):
        test_filter = b.ref(HeaderSelectionFilter.type, Filter, "filter")
        if test_filter not in built_filters:
            built_filters.insert(1, test_filter)
        b.ref(ServedEndpointEcho.type, Plugin, "plugin")

    weights: Any = spec.get("scorers") or {}
    if not isinstance(weights, Mapping):
        raise ValueError("scheduler.scorers must map plugin names to weights")
    built_scorers: list[tuple[Scorer, float]] = []
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"scheduler.scorers.{name}: the weight must be a number")
        scorer = b.ref(name, Scorer, "scorer")
        if weight:
            built_scorers.append((scorer, float(weight)))

    picker = b.ref(spec.get("picker", "max_score"), Picker, "picker")
    fallbacks = spec.get("fallbacks", 0)
    if isinstance(fallbacks, bool) or not isinstance(fallbacks, int) or fallbacks < 0:
        raise ValueError("scheduler.fallbacks must be a non-negative integer")
    picker.fallbacks = fallbacks
    plugins = list(b.instances.values())
    producers = sorted((p for p in plugins if isinstance(p, DataProducer)), key=_order)
    return Profile(built_filters, producers, built_scorers, picker, plugins)
