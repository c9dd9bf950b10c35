"""The parsed view of one inference request that the scheduler works on."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Criticality(IntEnum):
    """How much a request may be delayed or dropped when the pool is saturated."""

    SHEDDABLE = 0
    STANDARD = 1
    CRITICAL = 2


@dataclass(slots=True)
class InferenceRequest:
    """One request as the scheduler sees it.

    ``prompt`` is the text used for prefix affinity: the completion prompt, or the chat
    messages rendered in order with their roles. ``adapter`` is the LoRA adapter the
    model ID names, when it names one (``base:adapter`` style IDs or a configured map).
    ``scratch`` is per-request memo space for plugins (e.g. prefix block hashes), so a
    value computed by one scorer is not recomputed by the next.
    """

    model: str
    prompt: str = ""
    stream: bool = False
    kind: str = "other"
    adapter: str | None = None
    path: str = "/"
    criticality: Criticality = Criticality.STANDARD
    request_id: str = ""
    scratch: dict[str, Any] = field(default_factory=dict)
