"""A scheduling profile: filters → weighted scorers → picker, wired by configuration."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.datastore import Endpoint
from picker.prefix import PrefixScorer
from picker.request import InferenceRequest
from picker.scheduling import filters, pickers, scorers
from picker.scheduling.framework import Filter, Picker, PickObserver, Scorer

FILTERS: dict[str, Callable[[], Filter]] = {
    "subset": filters.SubsetFilter,
    "lora": filters.LoraFilter,
}

SCORERS: dict[str, Callable[..., Scorer]] = {
    "least_inflight": scorers.LeastInflightScorer,
    "queue": scorers.QueueScorer,
    "running": scorers.RunningScorer,
    "token_load": scorers.TokenLoadScorer,
    "kv_cache": scorers.KVCacheScorer,
    "lora_affinity": scorers.LoraAffinityScorer,
    "prefix": PrefixScorer,
}

PICKERS: dict[str, Callable[..., Picker]] = {
    "max_score": lambda n, rng, **kw: pickers.MaxScorePicker(n, rng, **kw),
    "p2c": lambda n, rng: pickers.PowerOfTwoPicker(n, rng),
    "random": lambda n, rng: pickers.RandomPicker(n, rng),
    "round_robin": lambda n, rng: pickers.RoundRobinPicker(n),
}


@dataclass
class Profile:
    """One configured scheduler. ``schedule`` is the hot path: keep it allocation-light."""

    filters: list[Filter]
    scorers: list[tuple[Scorer, float]]
    picker: Picker
    observers: list[PickObserver] = field(default_factory=list)

    def schedule(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        """Ranked endpoints for ``request`` (primary first); empty when none is eligible."""
        for f in self.filters:
            candidates = f.filter(request, candidates)
            if not candidates:
                return []
        n = len(candidates)
        totals = [0.0] * n
        if n > 1:
            for scorer, weight in self.scorers:
                for i, s in enumerate(scorer.score(request, candidates)):
                    totals[i] += weight * s
        return self.picker.pick(request, candidates, totals)

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        for o in self.observers:
            o.on_pick(request, endpoint)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        for o in self.observers:
            o.on_done(request, endpoint, ok)


DEFAULT_PROFILE: dict[str, Any] = {
    "filters": ["lora"],
    "scorers": {
        "prefix": 3.0,
        "queue": 2.0,
        "kv_cache": 1.0,
        "lora_affinity": 1.0,
        "least_inflight": 1.0,
    },
    "picker": "max_score",
    "fallbacks": 0,
}


def build_profile(
    spec: Mapping[str, Any] | None = None,
    *,
    extra_scorers: Mapping[str, Callable[[Mapping[str, Any]], Scorer]] | None = None,
    rng: random.Random | None = None,
) -> Profile:
    """Builds a profile from a config mapping (see ``DEFAULT_PROFILE`` for the shape).

    ``scorers`` maps a scorer name to its weight, or to ``{"weight": w, ...params}``.
    The subset filter is always first: the protocol requires honouring the proxy's hint.
    """
    spec = dict(DEFAULT_PROFILE if spec is None else spec)
    filter_names: Sequence[str] = spec.get("filters", [])
    built_filters: list[Filter] = [filters.SubsetFilter()]
    for name in filter_names:
        if name == "subset":
            continue
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}; known: {sorted(FILTERS)}")
        built_filters.append(FILTERS[name]())

    built_scorers: list[tuple[Scorer, float]] = []
    observers: list[PickObserver] = []
    extra = dict(extra_scorers or {})
    for name, value in dict(spec.get("scorers", {})).items():
        params: dict[str, Any] = dict(value) if isinstance(value, Mapping) else {"weight": value}
        weight = float(params.pop("weight", 1.0))
        if weight == 0:
            continue
        if name in SCORERS:
            try:
                scorer = SCORERS[name](**params)
            except TypeError as e:
                raise ValueError(f"scorer {name!r}: bad parameters {sorted(params)}: {e}") from None
        elif name in extra:
            scorer = extra[name](params)
        else:
            known = sorted(SCORERS) + sorted(extra)
            raise ValueError(f"unknown scorer {name!r}; known: {known}")
        built_scorers.append((scorer, weight))
        if isinstance(scorer, PickObserver):
            observers.append(scorer)

    picker_name = str(spec.get("picker", "max_score"))
    if picker_name not in PICKERS:
        raise ValueError(f"unknown picker {picker_name!r}; known: {sorted(PICKERS)}")
    fallbacks = int(spec.get("fallbacks", 0))
    picker_kw: dict[str, Any] = {}
    for key in ("tie_tolerance", "tie_break"):
        if key in spec:
            if picker_name != "max_score":
                raise ValueError(f"{key} applies to the max_score picker only")
            picker_kw[key] = spec[key]
    picker = PICKERS[picker_name](fallbacks, rng, **picker_kw)
    return Profile(built_filters, built_scorers, picker, observers)
