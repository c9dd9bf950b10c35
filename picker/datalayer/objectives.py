"""Objectives and model rewrites: what the request path reads, what background writers fill.

Two kinds of entries, from two sources that may be combined:

* **objectives** (name → priority): the ``InferenceObjective`` objects of picker's pool
  (``picker.datalayer.discovery.objectives``). The request names one in the header
  ``x-llm-d-inference-objective`` (or the older ``x-gateway-inference-objective``);
  admission maps its priority onto a criticality (``criticality_of``).
* **model rewrites** (exact model name → weighted target models): the
  ``InferenceModelRewrite`` objects of the pool, and the static ``model_rewrites``
  config key. A rule whose model matches the request's exactly sends it to one of its
  targets, chosen by weight.

Precedence, as the reference endpoint picker (llm-d-router ``pkg/epp/datastore``) has
it: for one model, the rule of the oldest object (``creationTimestamp``, then name)
wins; rules of the static configuration come before any object's. A rule without
``matches`` (the CRD allows it) applies to every model without an exact rule.

Writers replace whole indexes (``set_objectives``/``set_rewrites`` after a list) or one
object (``put_*``/``delete_*`` on a watch event) and rebuild the small lookup dicts; the
request path does one dict lookup (``rewrite_for``, ``priority``) and never writes.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from picker.request.types import Criticality

MAX_WEIGHT = 1_000_000  # the CRD's maximum target weight


def criticality_of(priority: int) -> Criticality:
    """An objective's priority as picker's criticality: negative is sheddable (as the
    reference's admission has it), 0 standard, positive critical (admitted while
    saturated, never parked by flow control)."""
    if priority < 0:
        return Criticality.SHEDDABLE
    return Criticality.CRITICAL if priority > 0 else Criticality.STANDARD


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """One rule: the models it matches (empty: any model) and its weighted targets.

    ``cumulative[i]`` is the sum of the first ``i + 1`` weights; ``choose`` draws a
    uniform integer below the total and bisects, so each target is picked with
    probability weight / total.
    """

    matches: tuple[str, ...]
    targets: tuple[str, ...]
    cumulative: tuple[int, ...]
    name: str = ""  # the InferenceModelRewrite's name ("" for the static configuration)

    @classmethod
    def build(
        cls, matches: Iterable[str], targets: Sequence[tuple[str, int]], name: str = ""
    ) -> RewriteRule:
        if not targets:
            raise ValueError("a model rewrite rule needs at least one target")
        total = 0
        cumulative: list[int] = []
        for model, weight in targets:
            if not model:
                raise ValueError("a model rewrite target needs a model name")
            if isinstance(weight, bool) or not isinstance(weight, int):
                raise ValueError(f"rewrite target {model!r}: weight {weight!r} is not an integer")
            if not 1 <= weight <= MAX_WEIGHT:
                raise ValueError(
                    f"rewrite target {model!r}: weight {weight} not in 1..{MAX_WEIGHT}"
                )
            total += weight
            cumulative.append(total)
        return cls(tuple(matches), tuple(m for m, _ in targets), tuple(cumulative), name)

    @property
    def total(self) -> int:
        return self.cumulative[-1]

    def choose(self, rng: random.Random) -> str:
        targets = self.targets
        if len(targets) == 1:
            return targets[0]
        return targets[bisect.bisect_right(self.cumulative, rng.randrange(self.total))]


@dataclass(frozen=True, slots=True)
class RewriteSpec:
    """The rules of one ``InferenceModelRewrite`` and its precedence key."""

    name: str
    created: str  # RFC 3339 creationTimestamp: sorts as text
    rules: tuple[RewriteRule, ...]


class ObjectiveStore:
    """Objectives and rewrite rules for one picker (see the module doc)."""

    def __init__(self, static_rewrites: Mapping[str, RewriteRule] | None = None) -> None:
        self._static: dict[str, RewriteRule] = dict(static_rewrites or {})
        self._priorities: dict[str, int] = {}
        self._rewrite_objects: dict[str, RewriteSpec] = {}
        self._exact: dict[str, RewriteRule] = dict(self._static)
        self._generic: RewriteRule | None = None

    # -- the request path (reads only) ---------------------------------------------------

    def rewrite_for(self, model: str) -> RewriteRule | None:
        """The rule for ``model``: its exact rule, else the generic one, else None."""
        rule = self._exact.get(model)
        return rule if rule is not None else self._generic

    def priority(self, objective: str) -> int | None:
        """The priority of the objective named ``objective`` (None: no such objective)."""
        return self._priorities.get(objective)

    @property
    def has_rewrites(self) -> bool:
        return bool(self._exact) or self._generic is not None

    # -- writers -------------------------------------------------------------------------

    def set_objectives(self, priorities: Mapping[str, int]) -> None:
        self._priorities = dict(priorities)

    def put_objective(self, name: str, priority: int) -> None:
        self._priorities[name] = priority

    def delete_objective(self, name: str) -> None:
        self._priorities.pop(name, None)

    def set_rewrites(self, specs: Iterable[RewriteSpec]) -> None:
        self._rewrite_objects = {s.name: s for s in specs}
        self._reindex()

    def put_rewrite(self, spec: RewriteSpec) -> None:
        self._rewrite_objects[spec.name] = spec
        self._reindex()

    def delete_rewrite(self, name: str) -> None:
        if self._rewrite_objects.pop(name, None) is not None:
            self._reindex()

    def _reindex(self) -> None:
        """Rebuilds the lookup dicts, then swaps them in (a reader sees old or new)."""
        exact: dict[str, RewriteRule] = dict(self._static)
        generic: RewriteRule | None = None
        for spec in sorted(self._rewrite_objects.values(), key=lambda s: (s.created, s.name)):
            for rule in spec.rules:
                if not rule.matches:
                    generic = generic or rule
                for model in rule.matches:
                    exact.setdefault(model, rule)
        self._exact, self._generic = exact, generic


def static_rewrites(raw: Mapping[str, object]) -> dict[str, RewriteRule]:
    """The ``model_rewrites`` config key: ``{model: target}`` or ``{model: [{model:
    target, weight: n}, ...]}`` (weights optional, all or none, as in the CRD)."""
    out: dict[str, RewriteRule] = {}
    for model, value in raw.items():
        where = f"model_rewrites[{model!r}]"
        targets: list[tuple[str, int]] = []
        if isinstance(value, str):
            targets.append((value, 1))
        elif isinstance(value, list) and value:
            weighted = [isinstance(t, Mapping) and "weight" in t for t in value]
            if any(weighted) and not all(weighted):
                raise ValueError(f"{where}: give a weight for every target or for none")
            for t in value:
                if not isinstance(t, Mapping) or not isinstance(t.get("model"), str):
                    raise ValueError(f"{where}: each target is {{model: NAME, weight: N}}")
                unknown = set(t) - {"model", "weight"}
                if unknown:
                    raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
                targets.append((t["model"], t.get("weight", 1)))
        else:
            raise ValueError(f"{where}: a model name or a non-empty list of targets")
        try:
            out[str(model)] = RewriteRule.build((str(model),), targets)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    return out
