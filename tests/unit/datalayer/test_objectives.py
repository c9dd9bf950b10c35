"""The objectives/rewrites store: precedence, weighted choice, static config."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from picker.config import load_config
from picker.datalayer.objectives import (
    ObjectiveStore,
    RewriteRule,
    RewriteSpec,
    criticality_of,
    static_rewrites,
)
from picker.request.types import Criticality


def rule(models: tuple[str, ...], *targets: tuple[str, int]) -> RewriteRule:
    return RewriteRule.build(models, list(targets))


def test_priority_maps_to_criticality() -> None:
    assert criticality_of(-1) is Criticality.SHEDDABLE
    assert criticality_of(0) is Criticality.STANDARD
    assert criticality_of(5) is Criticality.CRITICAL


def test_weighted_choice_follows_the_weights() -> None:
    r = rule(("m",), ("a", 3), ("b", 1))
    rng = random.Random(7)
    counts = Counter(r.choose(rng) for _ in range(8000))
    assert set(counts) == {"a", "b"}
    assert 0.70 < counts["a"] / 8000 < 0.80  # 3:1 → 0.75
    assert rule(("m",), ("only", 5)).choose(rng) == "only"


def test_bad_weights_are_refused() -> None:
    for targets in ([], [("a", 0)], [("a", 1_000_001)], [("", 1)]):
        with pytest.raises(ValueError):
            RewriteRule.build(("m",), targets)


def test_oldest_object_wins_and_exact_beats_generic() -> None:
    store = ObjectiveStore()
    new = RewriteSpec("new", "2026-02-01T00:00:00Z", (rule(("m",), ("from-new", 1)),))
    old = RewriteSpec("old", "2026-01-01T00:00:00Z", (rule(("m",), ("from-old", 1)),))
    generic = RewriteSpec("any", "2025-01-01T00:00:00Z", (rule((), ("catch-all", 1)),))
    store.set_rewrites([new, old, generic])
    rng = random.Random(0)
    found = store.rewrite_for("m")
    assert found is not None and found.choose(rng) == "from-old"
    other = store.rewrite_for("x")
    assert other is not None and other.choose(rng) == "catch-all"
    store.delete_rewrite("old")
    found = store.rewrite_for("m")
    assert found is not None and found.choose(rng) == "from-new"
    store.delete_rewrite("any")
    assert store.rewrite_for("x") is None
    store.put_rewrite(old)
    found = store.rewrite_for("m")
    assert found is not None and found.choose(rng) == "from-old"


def test_static_rules_come_first() -> None:
    store = ObjectiveStore(static_rewrites({"m": "static-target"}))
    store.put_rewrite(RewriteSpec("o", "2020-01-01T00:00:00Z", (rule(("m",), ("crd", 1)),)))
    found = store.rewrite_for("m")
    assert found is not None and found.targets == ("static-target",)


def test_objectives() -> None:
    store = ObjectiveStore()
    store.set_objectives({"batch": -1, "chat": 10})
    assert store.priority("batch") == -1 and store.priority("nope") is None
    store.put_objective("batch", 2)
    store.delete_objective("chat")
    assert store.priority("batch") == 2 and store.priority("chat") is None


def test_config_keys() -> None:
    cfg = load_config(
        data={
            "models": {"*": ["10.0.0.1:8000"]},
            "criticality": {"batch": -3, "chat": "critical", "p": 0},
            "model_rewrites": {
                "llama": "llama-v2",
                "mix": [{"model": "x", "weight": 9}, {"model": "y", "weight": 1}],
            },
        }
    )
    assert cfg.criticality == {
        "batch": Criticality.SHEDDABLE,
        "chat": Criticality.CRITICAL,
        "p": Criticality.STANDARD,
    }
    store = cfg.datastore().objectives
    mix = store.rewrite_for("mix")
    assert mix is not None and mix.targets == ("x", "y") and mix.cumulative == (9, 10)
    llama = store.rewrite_for("llama")
    assert llama is not None and llama.targets == ("llama-v2",)


@pytest.mark.parametrize(
    "value",
    [[], 3, [{"model": "x", "weight": 1}, {"model": "y"}], [{"model": "x", "w": 1}]],
)
def test_bad_static_rewrites(value: object) -> None:
    with pytest.raises(ValueError, match="model_rewrites"):
        static_rewrites({"m": value})
