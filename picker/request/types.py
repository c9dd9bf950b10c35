"""The typed view of one inference request, and the data computed for it before scoring.

``InferenceRequest`` is filled in two steps, each field once:

1. the parser (``picker.request.parse``) and the director: model, kind, prompt text,
   token ids when the body gives them, a chat request's template inputs (``chat``), the
   token estimate, criticality, the proxy's
   subset hint, the conformance suite's endpoint selection header; a model rewrite
   (``picker.datalayer.objectives``) sets ``model`` to the target model, keeps the
   client's in ``incoming_model`` and the body to forward in ``body``;
2. the profile's data producers, before any scorer runs: ``prefix`` (the approximate
   text-prefix match) and ``kv_prefix`` (the exact match against the pods' KV events).

Scorers, pickers and accounting read these fields; nothing writes them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Criticality(IntEnum):
    """How much a request may be delayed or dropped when the pool is saturated."""

    SHEDDABLE = 0
    STANDARD = 1
    CRITICAL = 2


@dataclass(slots=True)
class ChatInput:
    """What a chat request gives the model's chat template, read once by the parser.

    ``messages``, ``tools``, ``template_kwargs`` (the body's ``chat_template_kwargs``)
    and ``documents`` are the parsed body's own objects, neither copied nor changed: only
    a plugin that needs the exact prompt renders them (``picker.request.chat_tokens``).
    The flags have vLLM's defaults. ``own_template``: the body brings its own
    ``chat_template``, which vLLM uses only when started to trust it.
    """

    messages: list[Any]
    tools: Any = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] | None = None
    documents: Any = None
    reasoning_effort: str | None = None
    own_template: bool = False


def _no_tokens(blocks: int) -> float:
    return 0.0


@dataclass(slots=True)
class PrefixMatch:
    """How many leading blocks of a request's prompt each candidate pod holds.

    ``hashes`` is the request's block chain, ``matched`` the leading blocks held per
    address (absent means none), ``tokens_of(k)`` the (estimated) tokens in the first
    ``k`` blocks. ``prompt_tokens``: the prompt's exact length in the pods' tokens when
    the match is exact (``precise_prefix`` tokenized it as the pods do), else 0;
    ``truncated``: only the first ``prompt_tokens`` were tokenized (a long chat).
    """

    hashes: list[int]
    matched: dict[str, int] = field(default_factory=dict)
    tokens_of: Callable[[int], float] = _no_tokens
    prompt_tokens: int = 0
    truncated: bool = False
    # Free room per pod in the index's view of its cache, in blocks (absent: unknown),
    # and the (estimated) tokens one block holds: where a new prefix would evict others.
    free_blocks: Mapping[str, int] | None = None
    block_tokens: float = 0.0

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
class LatencyPrediction:
    """The latency model's predictions for one request, per candidate address (seconds).

    ``unmeetable``: the request carries a latency target and no candidate is predicted
    to meet it (a sheddable request is then answered 429).
    """

    ttft: dict[str, float]
    tpot: dict[str, float]
    # Seconds of prefill the request's new blocks would cost later by evicting cached
    # prefixes of other requests (pods whose cache is full); ranked with ``ttft``.
    evict: dict[str, float] = field(default_factory=dict)
    unmeetable: bool = False
    chosen: str = ""  # the address the request was sent to
    position: float = 0.0  # the latency model's bookkeeping on that pod (``ttft.py``)
    sent_at: float = 0.0


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
    # A chat request's template inputs (None for other kinds).
    chat: ChatInput | None = None
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
    # Latency targets from the request's ``x-slo-ttft-ms`` / ``x-slo-tpot-ms`` headers,
    # in seconds (None: no target), and the latency model's predictions for it.
    slo_ttft: float | None = None
    slo_tpot: float | None = None
    latency: LatencyPrediction | None = None

    def cached_tokens(self, address: str) -> int:
        """Prompt tokens ``address`` is believed to hold: the exact match when known."""
        match = self.kv_prefix if self.kv_prefix is not None else self.prefix
        return 0 if match is None else min(match.cached_tokens(address), self.prompt_tokens)

    def uncached_tokens(self, address: str) -> int:
        """Estimated prompt tokens ``address`` must prefill for this request (>= 1)."""
        return max(1, self.prompt_tokens - self.cached_tokens(address))
