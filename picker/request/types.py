"""The typed view of one inference request, and the data computed for it before scoring.

``InferenceRequest`` is filled in two steps, each field once:

1. the parser (``picker.request.parse``) and the director: model, kind, prompt text,
   token ids when the body gives them, the token estimate, criticality, the proxy's
   subset hint, the conformance suite's endpoint selection header; a model rewrite
   (``picker.datalayer.objectives``) sets ``model`` to the target model, keeps the
   client's in ``incoming_model`` and the body to forward in ``body``;
2. the profile's data producers, before any scorer runs: ``prefix`` (the approximate
   text-prefix match) and ``kv_prefix`` (the exact match against the pods' KV events).

Scorers, pickers and accounting read these fields; nothing writes them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class Criticality(IntEnum):
    """How much a request may be delayed or dropped when the pool is saturated."""

    SHEDDABLE = 0
    STANDARD = 1
    CRITICAL = 2


def _no_tokens(blocks: int) -> float:
    return 0.0


@dataclass(slots=True)
class PrefixMatch:
    """How many leading blocks of a request's prompt each candidate pod holds.

    ``hashes`` is the request's block chain, ``matched`` the leading blocks held per
    address (absent means none), ``tokens_of(k)`` the (estimated) tokens in the first
    ``k`` blocks.
    """

    hashes: list[int]
    matched: dict[str, int] = field(default_factory=dict)
    tokens_of: Callable[[int], float] = _no_tokens

    @property
    def blocks(self) -> int:
        return len(self.hashes)

    def fraction(self, address: str) -> float:
        """Share of the request's blocks held by ``address``, in [0, 1]."""
        n = len(self.hashes)
        return self.matched.get(address, 0) / n if n else 0.0

    def cached_tokens(self, address: str) -> int:
        k = self.matched.get(address, 0)
        return int(self.tokens_of(k)) if k else 0


@dataclass(slots=True)
class InferenceRequest:
    """One request as the scheduler sees it.

    ``prompt`` is the text used for prefix affinity: the completion prompt, or the chat
    messages rendered in order with their roles (see ``parse``). ``adapter`` is the LoRA
    adapter the model ID names, when the pool serves one by that name.
    ``prompt_tokens`` is the exact count when ``token_ids`` are known, else an estimate
    from the configured characters per token. ``batch``: the prompt is a list of prompts
    (joined with newlines in ``prompt``).
    """

    model: str
    prompt: str = ""
    kind: str = "other"
    adapter: str | None = None
    path: str = "/"
    criticality: Criticality = Criticality.STANDARD
    # The objective's priority (InferenceObjective), else the criticality's: -1, 0, 1.
    priority: int = 0
    prompt_tokens: int = 0
    token_ids: list[int] | None = None
    batch: bool = False
    add_special_tokens: bool | None = None
    cache_salt: str | None = None
    subset: frozenset[str] | None = None
    # The ``test-epp-endpoint-selection`` header (conformance tests), when sent.
    endpoint_selection: str | None = None
    # A model rewrite: the client's model (``model`` is the target) and the rewritten
    # body to forward; both None when the request is forwarded unchanged.
    incoming_model: str | None = None
    body: bytes | None = None
    # Bounded metric label values (``Metrics.model_label``): model_name,
    # target_model_name, priority; set by the director once the pool is known.
    labels: tuple[str, str, str] = ("", "", "0")
    # Data producers' output (see the module doc).
    prefix: PrefixMatch | None = None
    kv_prefix: PrefixMatch | None = None

    def cached_tokens(self, address: str) -> int:
        """Prompt tokens ``address`` is believed to hold: the exact match when known."""
        match = self.kv_prefix if self.kv_prefix is not None else self.prefix
        return 0 if match is None else min(match.cached_tokens(address), self.prompt_tokens)

    def uncached_tokens(self, address: str) -> int:
        """Estimated prompt tokens ``address`` must prefill for this request (>= 1)."""
        return max(1, self.prompt_tokens - self.cached_tokens(address))
