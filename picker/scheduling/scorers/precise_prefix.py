"""Precise prefix affinity: the exact KV block hashes vLLM computes
(``picker.datalayer.vllm_blocks``), matched against the blocks each pod reports through
its KV events (``picker.datalayer.kv_events``).

Where the ``prefix`` plugin guesses (text chunks, what picker sent where), this one knows:
it tokenizes the prompt with the model's own ``tokenizer.json``, cuts the token ids into
full blocks of ``block_size`` tokens (vLLM never caches a trailing partial block) and
chains them as vLLM does. As a data producer it sets ``request.kv_prefix``, which
accounting prefers over the approximate match; as a scorer it returns the share held.

Which token ids vLLM hashes:

* ``/v1/completions`` with a string prompt: ``tokenizer.encode(prompt,
  add_special_tokens=True)`` (vLLM's default, or the body's ``add_special_tokens``);
* ``/v1/completions`` with token ids: those ids as they are (``request.token_ids``);
* a batch of prompts: no single chain, so no match;
* chat: the messages rendered with the model's chat template (``chat_template.jinja`` or
  ``tokenizer_config.json`` beside ``tokenizer.json``, or the ``chat_template`` file),
  as vLLM renders them, then encoded without the tokenizer's special tokens (vLLM's chat
  default; the template writes the BOS). ``picker.request.chat_tokens`` does both and
  encodes each piece of text between special tokens once (an LRU of
  ``chat_cache_bytes``), so a shared system prompt is not tokenized again. Requests
  picker cannot render exactly (images, the body's own template, a template error)
  get no match, as before: pair this plugin with ``prefix`` for those.

LoRA requests hash with ``("lora", name, path)``: give the adapter paths as
``lora_paths``. The body's ``cache_salt`` is honoured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picker.datalayer.datastore import Endpoint
from picker.datalayer.kv_index import KVBlockIndex, KVEvents
from picker.datalayer.vllm_blocks import BlockHasher
from picker.request.types import InferenceRequest, PrefixMatch
from picker.scheduling.framework import DataProducer, Handle, Params, Scorer

if TYPE_CHECKING:  # jinja2 and tokenizers: imported only when a tokenizer is configured
    from picker.request.chat_tokens import ChatTokenizer

log = logging.getLogger(__name__)


class PromptTokenizer:
    """The model's tokenizer (``tokenizer.json``), encoding as vLLM's completions API does."""

    def __init__(self, path: str | Path, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer  # imported here: only this plugin needs it

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        self.path = p
        self.add_special_tokens = add_special_tokens
        self._tok = Tokenizer.from_file(str(p))

    @property
    def backend(self) -> Any:
        """The ``tokenizers.Tokenizer`` itself (shared with the chat tokenizer)."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        ids: list[int] = self._tok.encode(text, add_special_tokens=special).ids
        return ids


class PrecisePrefixScorer(DataProducer, Scorer):
    """Score = leading blocks of the request that the pod holds / the request's full blocks.

    Parameters: ``tokenizer`` (path to tokenizer.json or its directory), ``block_size``
    (128), ``hash_algo`` ("sha256"), ``hash_seed`` (the pods' PYTHONHASHSEED; default:
    vLLM's fixed seed for sha256), ``events`` (a map ``{"ip:port": "tcp://host:port"}``
    or a pattern such as ``"tcp://{host}:5557"``), ``topic`` (ZMQ subscription prefix,
    default all), ``max_blocks`` (2048), ``lora_paths`` (``{adapter: path}`` as the pods
    load them), ``add_special_tokens`` (True, completions only), ``chat_template`` (a
    Jinja file instead of the model's template), ``chat_template_content_format``
    ("auto", "string" or "openai", as vLLM's flag), ``chat_template_kwargs`` (the pods'
    ``--default-chat-template-kwargs``), ``chat_cache_bytes`` (64 MiB).

    Subscribes to the pods' KV events on ``start`` (and to a new pod when it first
    becomes a candidate); unsubscribes on ``stop``.
    """

    type = "precise_prefix"

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        p = params or Params()
        seed = p.text("hash_seed")
        self.hasher = BlockHasher(
            block_size=p.integer("block_size", 128),
            hash_algo=p.text("hash_algo", "sha256") or "sha256",
            hash_seed=seed,
        )
        tok_path = p.text("tokenizer")
        special = p.flag("add_special_tokens", True)
        self.tokenizer = PromptTokenizer(tok_path, special) if tok_path else None
        self.chat = self._chat_tokenizer(p) if self.tokenizer is not None else None
        self.chat_failures = 0
        ev = p.raw("events")
        topic = p.text("topic", "") or ""
        if ev is None:
            self.events = KVEvents(topic=topic)
        elif isinstance(ev, str):
            self.events = KVEvents(pattern=ev, topic=topic)
        elif isinstance(ev, dict):
            self.events = KVEvents({str(k): str(v) for k, v in ev.items()}, topic=topic)
        else:
            raise ValueError(f"plugin {self.name!r}: events must be a map or a pattern string")
        self.max_blocks = p.integer("max_blocks", 2048)
        self.lora_paths = p.mapping("lora_paths")

    def _chat_tokenizer(self, p: Params) -> ChatTokenizer | None:
        """The model's chat template with the tokenizer; None when the model has none."""
        from picker.request.chat_template import ChatTemplate, load_templates
        from picker.request.chat_tokens import DEFAULT_CACHE_BYTES, ChatTokenizer

        assert self.tokenizer is not None
        model_dir = self.tokenizer.path.parent
        template_file = p.text("chat_template")
        content_format = p.text("chat_template_content_format", "auto") or "auto"
        kwargs = p.raw("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ValueError(f"plugin {self.name!r}: chat_template_kwargs must be a map")
        cache_bytes = p.integer("chat_cache_bytes", DEFAULT_CACHE_BYTES)
        if not template_file and not load_templates(model_dir):
            return None
        template = ChatTemplate.from_dir(
            model_dir, template_file, content_format=content_format, default_kwargs=kwargs
        )
        return ChatTokenizer(self.tokenizer.backend, template, cache_bytes=cache_bytes)

    @property
    def index(self) -> KVBlockIndex:
        return self.events.index

    async def start(self) -> None:
        await self.events.start()

    async def stop(self) -> None:
        await self.events.stop()

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.events.forget(endpoint.address)

    def token_ids(self, request: InferenceRequest) -> list[int] | None:
        """The prompt token ids vLLM will hash, or None when picker cannot know them."""
        if request.token_ids is not None:
            return request.token_ids
        if request.kind == "chat":
            return self._chat_ids(request)
        if request.kind != "completions" or not request.prompt or request.batch:
            return None
        if self.tokenizer is None:
            return None
        return self.tokenizer.encode(request.prompt, request.add_special_tokens)

    def _chat_ids(self, request: InferenceRequest) -> list[int] | None:
        if self.chat is None or request.chat is None:
            return None
        try:
            limit = self.max_blocks * self.hasher.block_size
            return self.chat.encode(request.chat, request.add_special_tokens is True, limit)
        except Exception as e:
            # A client's messages through a model's template: any failure (Unsupported,
            # TemplateError, a type error inside the template) means "no exact match",
            # never a failed request.
            self.chat_failures += 1
            log.debug("chat request not rendered exactly: %s", e)
            return None

    def hashes(self, request: InferenceRequest, ids: list[int] | None = None) -> list[int]:
        if ids is None:
            ids = self.token_ids(request)
        if ids is None:
            return []
        lora: tuple[str, str] | None = None
        if request.adapter is not None:
            path = self.lora_paths.get(request.adapter)
            if path is None:
                return []  # the adapter's blocks hash with its path: unknown, no match
            lora = (request.adapter, path)
        return self.hasher.hashes(
            ids, lora=lora, cache_salt=request.cache_salt, max_blocks=self.max_blocks
        )

    def produce(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        addresses = [e.address for e in candidates]
        for a in addresses:
            self.events.ensure(a)
        ids = self.token_ids(request)
        hashes = self.hashes(request, ids) if ids is not None else []
        held: dict[str, int] = {}
        if hashes:
            for a, m in zip(addresses, self.index.match(hashes, addresses), strict=True):
                if m:
                    held[a] = m
        n = len(ids) if ids is not None else 0
        # A chat is tokenized only up to what the index can hold: its length is then a
        # lower bound (the latency model takes the larger of it and its own estimate).
        cut = request.token_ids is None and n >= self.max_blocks * self.hasher.block_size
        request.kv_prefix = PrefixMatch(hashes, held, self._tokens_of, n, cut)

    def _tokens_of(self, blocks: int) -> float:
        return float(blocks * self.hasher.block_size)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = request.kv_prefix
        if match is None or not match.matched:
            return [0.0] * len(candidates)
        return [match.fraction(e.address) for e in candidates]
