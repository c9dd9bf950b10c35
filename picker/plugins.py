"""Scorers that need parameters or shared state, registered by name for profiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from picker.scheduling.framework import Scorer


def _precise_prefix(params: Mapping[str, Any]) -> Scorer:
    # Imported on use: needs the optional deps (pip install 'picker[precise]').
    from picker.precise_prefix import PrecisePrefixScorer

    return PrecisePrefixScorer.from_params(params)


def extra_scorers() -> dict[str, Callable[[Mapping[str, Any]], Scorer]]:
    """Scorers from optional modules, by name."""
    return {"precise_prefix": _precise_prefix}
