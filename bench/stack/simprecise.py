"""Exact prefix matching against the simulator's KV events, for ``sharing=kv_events``.

picker's ``precise_prefix`` plugin hashes a prompt as vLLM does: the model's tokenizer
and chat template, then vLLM's chained block hash. The simulator (``bench.sim``) has
stand-ins for all three (``bench.sim.tokenize``: a deterministic tokenizer and a
Llama-3-like chat template; ``bench.sim.kvcache.block_hashes``: xxh3 chained hashes),
and publishes its KV events with those hashes. ``SimPrecisePrefixScorer`` is
``precise_prefix`` with the simulator's three stand-ins in place of the model's, so the
same KV-event subscription, index and scoring run against simulated pods. It is loaded
into picker as an out-of-tree plugin (an entry point, ``bench.stack.plugins``).

Chat messages are recovered from picker's own rendering of the request (``<|role|>\\n``
heads, see ``picker.request.parse``), exact for the benchmark workloads' plain-text
messages (the simulator's tokenizer ignores whitespace).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bench.sim.kvcache import block_hashes
from bench.sim.tokenize import render_chat, tokenize
from bench.stack.ports import stable_ports
from picker.request.types import InferenceRequest
from picker.scheduling.profile import DEFAULT_SCHEDULER
from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer

SIM_PRECISE = "sim_precise_prefix"
SIM_PRECISE_ENTRY = "bench.stack.simprecise:SimPrecisePrefixScorer"
KV_PREFIX_NAME = "kv_prefix"
SIM_BLOCK_SIZE = 16  # bench.sim's --block-size default

_HEAD = re.compile(r"<\|(system|developer|user|assistant|tool)\|>\n")


def chat_messages(rendered: str) -> list[dict[str, str]]:
    """The (role, content) messages behind picker's chat rendering."""
    parts = _HEAD.split(rendered)
    out: list[dict[str, str]] = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        out.append({"role": role, "content": content[:-1] if content.endswith("\n") else content})
    return out


class SimPrecisePrefixScorer(PrecisePrefixScorer):
    """``precise_prefix`` with the simulator's tokenizer, chat template and block hash.

    Parameters as ``precise_prefix`` (``events``, ``block_size``: the pods'
    ``--block-size``, ``max_blocks``); ``tokenizer`` and the hash settings are unused.
    """

    type = SIM_PRECISE

    def token_ids(self, request: InferenceRequest) -> list[int] | None:
        if request.token_ids is not None:
            return request.token_ids
        if request.batch or not request.prompt:
            return None
        if request.kind == "completions":
            return tokenize(request.prompt)
        if request.kind == "chat":
            return tokenize(render_chat(chat_messages(request.prompt)))
        return None

    def hashes(self, request: InferenceRequest, ids: list[int] | None = None) -> list[int]:
        if ids is None:
            ids = self.token_ids(request)
        if ids is None:
            return []
        size = self.hasher.block_size
        return block_hashes(ids[: self.max_blocks * size], size, request.adapter)


def sim_precise_entry(
    events: Mapping[str, str], block_size: int = SIM_BLOCK_SIZE
) -> dict[str, Any]:
    """The plugin entry subscribing to the simulated pods' events (pod -> tcp://...)."""
    return {
        "type": SIM_PRECISE,
        "name": KV_PREFIX_NAME,
        "parameters": {"events": dict(events), "block_size": block_size, "max_blocks": 8192},
    }


def with_kv_events(scheduler: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``scheduler`` (default: picker's) with the exact prefix match from KV events.

    The plugin is declared, so it produces ``request.kv_prefix`` for every request (the
    latency prediction and accounting prefer it to the approximate match); a positive
    weight of the approximate ``prefix`` scorer moves to it.
    """
    spec = dict(DEFAULT_SCHEDULER if scheduler is None else scheduler)
    name = str(entry.get("name") or entry["type"])
    spec["plugins"] = [*(spec.get("plugins") or []), dict(entry)]
    scorers = dict(spec.get("scorers") or {})
    if scorers.get("prefix"):
        scorers[name] = scorers["prefix"]
        scorers["prefix"] = 0.0
        spec["scorers"] = scorers
    return spec


def kv_event_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (the simulator's
    ``--kv-events-port`` binds base + i for pod i); see ``bench.stack.ports``."""
    return stable_ports(n, consecutive=True)[0]
