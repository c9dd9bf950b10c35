"""Approximate prefix-cache affinity: which pod was recently sent which prompt prefix.

No tokenizer: the prompt text (UTF-8) is cut into chunks and hashed as a chain, each hash
seeded with the previous one, so block *i*'s hash stands for all text up to the end of
block *i*, the same idea as vLLM's chained KV block hashes. Blocks start at
``block_chars`` bytes and double every ``double_every`` blocks (up to
``max_block_chars``): the resolution stays a few percent of the prefix length, and a
220 KB prompt costs ~190 blocks instead of 1,700. Block boundaries depend only on the
position, so prompts sharing a prefix share its blocks. Each pod has an LRU of the block
hashes it was sent; a global map from hash to pods answers "who holds this block".

A request's blocks are touched from last to first, so a block is always at least as
recent as every later block of its chain, and eviction removes the tails of old prompts
first (as vLLM frees a finished request's blocks tail-first). So a pod that holds block
*i* of a chain holds all blocks before it, and the matched length per pod is found by
binary search: O(log blocks) lookups per pod instead of a walk over every block.

The plugin is a data producer (it sets ``request.prefix``: the request's block chain and
the leading blocks each candidate holds, which accounting turns into uncached tokens), a
scorer (the fraction held) and an observer (a picked pod now holds the prompt). The
score balances affinity against load the way the sglang/vLLM cache-aware routers do: when
the pod holding the longest prefix is much busier than the least-busy candidate (more
than ``balance_abs`` requests *and* more than ``balance_rel`` times), affinity is ignored
for this request and the load scorers decide.
"""

from __future__ import annotations

import bisect
import functools
from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from picker.datalayer.datastore import Endpoint
from picker.request.types import InferenceRequest, PrefixMatch
from picker.scheduling.framework import DataProducer, Handle, Params, Scorer, TokenScale

_HASH = xxhash.xxh3_64_intdigest


def block_hashes(
    text: str,
    block_chars: int,
    max_blocks: int = 0,
    double_every: int = 0,
    max_block_chars: int = 0,
) -> list[int]:
    """Chained 64-bit hashes of ``text``'s blocks (sizes: see the module doc; all
    ``block_chars`` when ``double_every`` is 0; at most ``max_blocks``, 0: no limit).

    A trailing partial block is hashed too, so short prompts still match each other;
    its hash differs from the full block that a longer prompt has at that position.
    """
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    n = len(data)
    out: list[int] = []
    append = out.append
    h = 0
    start = 0
    for end in _block_ends(block_chars, double_every, max_block_chars, max_blocks, n):
        h = _HASH(data[start:end], h)
        append(h)
        start = end
    return out


def _block_ends(
    block_chars: int, double_every: int, max_block_chars: int, max_blocks: int, n: int
) -> list[int]:
    """End offsets of the blocks covering ``n`` bytes (the last one may pass ``n``)."""
    if not n:
        return []
    ends = _layout(block_chars, double_every, max_block_chars)
    while ends[-1] < n and (not max_blocks or len(ends) < max_blocks):
        _grow(ends, block_chars, double_every, max_block_chars)
    k = bisect.bisect_left(ends, n) + 1
    return ends[: min(k, max_blocks) if max_blocks else k]


@functools.lru_cache(maxsize=8)
def _layout(block_chars: int, double_every: int, max_block_chars: int) -> list[int]:
    """The end offsets of a layout's blocks, as far as a prompt needed them so far
    (grown in place by ``_grow``; one list per layout, whatever the prompt's length)."""
    ends: list[int] = []
    _grow(ends, block_chars, double_every, max_block_chars)
    return ends


def _grow(ends: list[int], block_chars: int, double_every: int, max_block_chars: int) -> None:
    """Appends the next 64 blocks of the layout to ``ends``."""
    cap = max_block_chars or (1 << 40)
    have = len(ends)
    end = ends[-1] if ends else 0
    size = block_chars
    if double_every:
        for _ in range(have // double_every):
            size = max(size, min(2 * size, cap))
    for i in range(have + 1, have + 65):
        end += size
        ends.append(end)
        if double_every and i % double_every == 0:
            size = max(size, min(2 * size, cap))


def prefix_chars(blocks: int, block_chars: int, double_every: int, max_block_chars: int) -> int:
    """Bytes covered by the first ``blocks`` full blocks of the layout above."""
    if not double_every:
        return blocks * block_chars
    chars, size = 0, block_chars
    while blocks > 0:
        k = min(blocks, double_every) if size < max_block_chars else blocks
        chars += k * size
        blocks -= k
        size = min(2 * size, max_block_chars)
    return chars


class PrefixIndex:
    """Per-pod LRU sets of block hashes plus a reverse map hash → pods."""

    def __init__(self, capacity_blocks: int = 65536) -> None:
        self.capacity_blocks = capacity_blocks
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._where: dict[int, set[str]] = {}
        self.capacity_for: dict[str, int] = {}
        self.free: dict[str, int] = {}  # capacity - blocks held, per pod recorded

    def __len__(self) -> int:
        return len(self._where)

    def blocks_on(self, address: str) -> int:
        lru = self._lru.get(address)
        return len(lru) if lru is not None else 0

    def add(self, address: str, hashes: Sequence[int]) -> None:
        """Records that ``address`` now holds ``hashes`` (a prompt's block chain)."""
        lru = self._lru.get(address)
        if lru is None:
            lru = self._lru[address] = OrderedDict()
        where = self._where
        move = lru.move_to_end
        for h in reversed(hashes):  # first block ends most recent: tails evict first
            if h in lru:
                move(h)
            else:
                lru[h] = None
                pods = where.get(h)
                if pods is None:
                    where[h] = {address}
                else:
                    pods.add(address)
        cap = self.capacity_for.get(address, self.capacity_blocks)
        while len(lru) > cap:
            old, _ = lru.popitem(last=False)
            pods = where.get(old)
            if pods is not None:
                pods.discard(address)
                if not pods:
                    del where[old]
        self.free[address] = cap - len(lru)

    def forget(self, address: str) -> int:
        """Drops every block recorded for ``address`` (a removed pod); returns how many."""
        self.capacity_for.pop(address, None)
        self.free.pop(address, None)
        lru = self._lru.pop(address, None)
        if not lru:
            return 0
        where = self._where
        for h in lru:
            pods = where.get(h)
            if pods is not None:
                pods.discard(address)
                if not pods:
                    del where[h]
        return len(lru)

    def match(self, hashes: Sequence[int], addresses: Sequence[str]) -> dict[str, int]:
        """Longest matched prefix, in blocks, per address (only addresses with a match).

        Binary search per pod that holds the first block: holding block *i* implies
        holding every block before it (see the module doc).
        """
        if not hashes:
            return {}
        where = self._where
        first = where.get(hashes[0])
        if not first:
            return {}
        n = len(hashes)
        last = where.get(hashes[-1]) or ()
        out: dict[str, int] = {}
        for a in addresses:
            if a not in first:
                continue
            if a in last:
                out[a] = n
                continue
            lo, hi = 1, n - 1  # block lo-1 is held; block hi (0-based) is the upper bound
            while lo < hi:
                mid = (lo + hi + 1) >> 1
                pods = where.get(hashes[mid - 1])
                if pods is not None and a in pods:
                    lo = mid
                else:
                    hi = mid - 1
            out[a] = lo
        return out


class PrefixScorer(DataProducer, Scorer):
    """Score = fraction of the request's prompt blocks the pod is believed to hold.

    Parameters: ``block_chars`` (128), ``double_every`` (32 blocks), ``max_block_chars``
    (16384); ``capacity_blocks`` (65536, per pod, until the pod's scraped
    KV-cache size says how many blocks it holds), ``max_blocks`` (2048 blocks hashed per
    prompt), ``balance_abs`` (8), ``balance_rel`` (1.5).
    """

    type = "prefix"

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        super().__init__(name)
        p = params or Params()
        self.block_chars = p.integer("block_chars", 128)
        self.double_every = p.integer("double_every", 32)
        self.max_block_chars = p.integer("max_block_chars", 16384)
        capacity = p.integer("capacity_blocks", 65536)
        self.max_blocks = p.integer("max_blocks", 2048)
        self.balance_abs = p.integer("balance_abs", 8)
        self.balance_rel = p.number("balance_rel", 1.5)
        sizes = (self.block_chars, self.max_block_chars, capacity, self.max_blocks)
        if min(sizes) <= 0 or self.double_every < 0:
            raise ValueError(f"plugin {self.name!r}: sizes must be positive")
        self.chars_per_token = handle.chars_per_token if handle else 4.0
        self._scale = handle.token_scale if handle else TokenScale()
        self._size_gauge = handle.metrics.prefix_indexer_size if handle else None
        self.index = PrefixIndex(capacity)

    def produce(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        text = request.prompt
        if request.adapter:
            text = f"<lora:{request.adapter}>" + text
        hashes = (
            block_hashes(
                text, self.block_chars, self.max_blocks, self.double_every, self.max_block_chars
            )
            if text
            else []
        )
        matched = self.index.match(hashes, [e.address for e in candidates])
        request.prefix = PrefixMatch(
            hashes,
            matched,
            self._tokens_of,
            free_blocks=self.index.free,
            block_tokens=self.block_chars / self.chars_per_token,
        )

    def _tokens_of(self, blocks: int) -> float:
        chars = prefix_chars(blocks, self.block_chars, self.double_every, self.max_block_chars)
        return chars / self.chars_per_token

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        match = request.prefix
        if match is None or not match.matched:
            return [0.0] * len(candidates)
        held = match.matched
        n = match.blocks
        fractions = [held.get(e.address, 0) / n for e in candidates]
        best = max(held.values()) / n
        # Balance: is the best-matched pod much busier than the least busy one?
        hot = min(e.load for e, f in zip(candidates, fractions, strict=True) if f == best)
        idle = min([e.load for e in candidates])
        if hot - idle > self.balance_abs and hot > self.balance_rel * idle:
            return [0.0] * len(candidates)
        return fractions

    def _sync_capacity(self, e: Endpoint) -> None:
        m = e.metrics
        if m.num_blocks and m.block_size:
            # The pod's tokens, in text: chars_per_token / the learned pod tokens per
            # estimated token (a tokenizer denser than chars_per_token holds less text).
            chars = m.num_blocks * m.block_size * self.chars_per_token / self._scale.value
            self.index.capacity_for[e.address] = max(1, int(chars // self.block_chars))

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        match = request.prefix
        if match is not None and match.hashes:
            self._sync_capacity(endpoint)
            self.index.add(endpoint.address, match.hashes)
            if self._size_gauge is not None:
                self._size_gauge.set(len(self.index))

    @property
    def layout(self) -> str:
        """What makes two replicas' block hashes comparable (``picker.datalayer.peers``)."""
        return f"prefix:{self.block_chars}:{self.double_every}:{self.max_block_chars}"

    def on_peer_pick(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        self.observe_remote(endpoint, hashes)

    def observe_remote(self, endpoint: Endpoint, hashes: Sequence[int]) -> None:
        """Another replica sent a prompt with these blocks to ``endpoint``: the pod now
        holds them, as after an own pick (hashes of this plugin's ``layout``)."""
        if hashes:
            self._sync_capacity(endpoint)
            self.index.add(endpoint.address, hashes)
            if self._size_gauge is not None:
                self._size_gauge.set(len(self.index))

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.forget(endpoint.address)
        if self._size_gauge is not None:
            self._size_gauge.set(len(self.index))
