"""Scorers that need parameters or shared state, registered by name for profiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from picker.scheduling.framework import Scorer


def extra_scorers() -> dict[str, Callable[[Mapping[str, Any]], Scorer]]:
    """Scorers from optional modules, by name (none are built in yet)."""
    return {}
