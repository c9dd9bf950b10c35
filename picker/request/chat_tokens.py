"""A chat request's prompt token ids, as vLLM 0.32's chat endpoint makes them: the chat
template rendered (``picker.request.chat_template``), then encoded with the model's
``tokenizer.json`` *without* the tokenizer's own special tokens (vLLM's chat default,
``add_special_tokens=False``: the template writes the BOS itself; a body may set
``add_special_tokens: true``, and then the post-processor adds them as well).

Repeated text is encoded once. A tokenizer cuts text at its added tokens (``<|eot_id|>``,
``<|im_start|>``, ...) before anything else and encodes the pieces between them one by
one, so a prompt's ids are its pieces' ids joined, and a piece seen before (a shared
system prompt, the earlier turns of a conversation) is looked up instead of encoded. No
BPE merge crosses an added token, so no cached piece can tokenize differently in a new
context. That holds when every added token is matched on the raw text (``normalized``
false, or no normalizer) and takes no whitespace around it (``lstrip``, ``rstrip``,
``single_word`` false), and the pre-tokenizer does not treat the first piece specially
(``Metaspace`` with ``prepend_scheme: first``); at load, probes with each added token
between words must also encode alike both ways. Otherwise each prompt is encoded whole:
correct, just not cached (``ChatTokenizer.segmented`` is False).

The cache (``PieceCache``) is an LRU bounded by an estimate of the memory it holds: each
piece's string, its ids (a tuple of shared int objects: one per vocabulary entry, made
once, so 8 bytes per cached token) and a fixed overhead per entry. A piece larger than an
eighth of the bound is not kept. ``limit`` stops encoding once that many ids are known
(the blocks past ``max_blocks`` are never hashed).
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from typing import Any

import orjson

from picker.request.chat_template import ChatTemplate
from picker.request.types import ChatInput

DEFAULT_CACHE_BYTES = 64 * 2**20
# Per entry besides the string and the tuple: the OrderedDict's node and table slot.
ENTRY_OVERHEAD = 120


class PieceCache:
    """LRU ``text piece -> token ids``, holding at most ``max_bytes`` (estimated)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._map: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    @staticmethod
    def cost(text: str, ids: tuple[int, ...]) -> int:
        return sys.getsizeof(text) + sys.getsizeof(ids) + ENTRY_OVERHEAD

    def get(self, text: str) -> tuple[int, ...] | None:
        ids = self._map.get(text)
        if ids is None:
            self.misses += 1
            return None
        self.hits += 1
        self._map.move_to_end(text)
        return ids

    def put(self, text: str, ids: tuple[int, ...]) -> None:
        cost = self.cost(text, ids)
        if cost > self.max_bytes // 8 or text in self._map:
            return  # one huge piece must not flush the cache
        while self.bytes + cost > self.max_bytes:
            old, old_ids = self._map.popitem(last=False)
            self.bytes -= self.cost(old, old_ids)
        self._map[text] = ids
        self.bytes += cost

    def clear(self) -> None:
        self._map.clear()
        self.bytes = 0


class ChatTokenizer:
    """Renders a chat request with the model's template and encodes it as vLLM does.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (the model's ``tokenizer.json``).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: ChatTemplate,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._tok = tokenizer
        self.template = template
        self.cache = PieceCache(cache_bytes)
        spec = orjson.loads(tokenizer.to_str())
        added: list[dict[str, Any]] = spec.get("added_tokens") or []
        self._added = {t["content"]: t["id"] for t in added}
        self._ints = list(range(tokenizer.get_vocab_size(with_added_tokens=True)))
        self._split: re.Pattern[str] | None = None
        if added and _segmentable(spec, tokenizer):
            longest_first = sorted(self._added, key=len, reverse=True)
            self._split = re.compile("|".join(map(re.escape, longest_first)))
            if not all(self._probe(t) for t in self._added):
                self._split = None

    @property
    def segmented(self) -> bool:
        """Whether prompts are encoded piece by piece (and pieces cached)."""
        return self._split is not None

    def encode(
        self, chat: ChatInput, add_special_tokens: bool = False, limit: int = 0
    ) -> list[int]:
        """vLLM's prompt token ids for ``chat`` (at least the first ``limit``, when set);
        raises (``Unsupported``, template errors) when picker cannot know them."""
        return self.encode_text(self.template.render(chat), add_special_tokens, limit)

    def encode_text(self, text: str, add_special_tokens: bool = False, limit: int = 0) -> list[int]:
        split = self._split
        if split is None or add_special_tokens:
            return self.encode_whole(text, add_special_tokens)
        out: list[int] = []
        pos = 0
        for m in split.finditer(text):
            start = m.start()
            if start > pos:
                out += self._piece(text[pos:start])
            out.append(self._added[m.group()])
            pos = m.end()
            if limit and len(out) >= limit:
                return out
        if pos < len(text):
            out += self._piece(text[pos:])
        return out

    def encode_whole(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The uncached path: the tokenizer on the whole text."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def _piece(self, text: str) -> tuple[int, ...]:
        ids = self.cache.get(text)
        if ids is None:
            ints = self._ints
            ids = tuple([ints[i] for i in self._tok.encode(text, add_special_tokens=False).ids])
            self.cache.put(text, ids)
        return ids

    def _probe(self, token: str) -> bool:
        text = f"a {token}b{token} c\n\n{token}{token}  d é"
        saved = self.cache.max_bytes
        self.cache.max_bytes = 0  # probes must not fill the cache
        try:
            return self.encode_text(text) == self.encode_whole(text)
        finally:
            self.cache.max_bytes = saved


def _segmentable(spec: dict[str, Any], tokenizer: Any) -> bool:
    """Whether the pieces between added tokens are encoded independently (module doc)."""
    if getattr(tokenizer, "encode_special_tokens", False):
        return False  # special tokens are not split out at all
    normalizer = spec.get("normalizer")
    for t in spec.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            return False
        if t.get("normalized") and normalizer is not None:
            return False
    return not _prepends_first(spec.get("pre_tokenizer"))


def _prepends_first(pre: Any) -> bool:
    if type(pre) is not dict:
        return False
    if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") == "first":
        return True
    return any(_prepends_first(p) for p in pre.get("pretokenizers") or [])
