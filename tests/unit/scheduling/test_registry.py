"""The plugin registry: one factory signature, strict parameters, entry points."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.stack.plugins import entry_point_dist
from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle
from picker.scheduling.profile import build_profile
from picker.scheduling.registry import Registry, builtin_registry, default_registry
from tests.plugins.pinned import PinnedScorer, not_a_plugin


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """Puts a distribution declaring entry points on sys.path, as pip would."""
    where = tmp_path / "site"
    sys.path.insert(0, str(where))
    try:
        yield where
    finally:
        sys.path.remove(str(where))


def test_builtins_are_registered() -> None:
    types = builtin_registry().types()
    for t in ("prefix", "precise_prefix", "queue", "kv_cache", "lora", "max_score", "p2c"):
        assert t in types


def test_entry_point_plugin_routes(installed: Path) -> None:
    entry_point_dist(installed, {"pinned": "tests.plugins.pinned:PinnedScorer"})
    reg = default_registry()
    assert "pinned" in reg
    spec = {
        "plugins": [{"type": "pinned", "name": "low", "parameters": {"prefer": "lowest"}}],
        "scorers": {"low": 1},
    }
    prof = build_profile(spec, registry=reg)
    pods = [Endpoint(address=f"10.0.0.1:{p}") for p in (8002, 8001, 8003)]
    for _ in range(3):
        ranked = prof.schedule(InferenceRequest(model="m"), pods)
        assert ranked[0] is pods[1]
        prof.on_pick(InferenceRequest(model="m"), ranked[0])
    ((scorer, _),) = prof.scorers
    assert isinstance(scorer, PinnedScorer) and scorer.picks == 3


def test_entry_point_plugin_gets_strict_parameters(installed: Path) -> None:
    entry_point_dist(installed, {"pinned": "tests.plugins.pinned:PinnedScorer"})
    spec = {"plugins": [{"type": "pinned", "parameters": {"prefer": "lowest", "extra": 1}}]}
    with pytest.raises(ValueError, match="plugin 'pinned': unknown parameter 'extra'"):
        build_profile(spec, registry=default_registry())


def test_a_package_cannot_replace_a_builtin(installed: Path) -> None:
    entry_point_dist(installed, {"queue": "tests.plugins.pinned:PinnedScorer"})
    with pytest.raises(ValueError, match=r"plugin type 'queue' .* is already registered"):
        default_registry()


def test_broken_entry_points_are_clear_errors(installed: Path) -> None:
    entry_point_dist(installed, {"gone": "tests.plugins.missing:Nothing"})
    with pytest.raises(ValueError, match=r"plugin 'gone' from tests\.plugins\.missing"):
        default_registry()


def test_factory_must_build_a_plugin() -> None:
    reg = Registry()
    reg.register("odd", not_a_plugin)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not a picker\.scheduling\.framework\.Plugin"):
        reg.create("odd", "odd", None, Handle())
