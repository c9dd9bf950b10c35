"""Approximate prefix-cache affinity: which pod was recently sent which prompt prefix.

No tokenizer: the prompt text (UTF-8) is cut into fixed-size chunks of ``block_chars``
bytes and hashed as a chain, each hash seeded with the previous one, so block *i*'s hash
stands for all text up to the end of block *i* — the same idea as vLLM's chained KV block
hashes. Each pod has an LRU of the block hashes it was sent; a global map from hash to
pods makes a lookup cost O(matched blocks), not O(pods * blocks).

A request's blocks are touched from last to first, so the first blocks are the most
recently used and eviction removes the tails of old prompts first (as vLLM frees a
finished request's blocks tail-first); matching walks from the first block and stops at
the first miss, so an evicted middle never counts.

The scorer balances affinity against load the way the sglang/vLLM cache-aware routers
do: when the pod holding the longest prefix is much busier than the least-busy candidate
(more than ``balance_abs`` requests *and* more than ``balance_rel`` times), affinity is
ignored for this request and the load scorers decide.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import xxhash

from picker.datastore import Endpoint
from picker.request import InferenceRequest

_HASH = xxhash.xxh3_64_intdigest
_SCRATCH_KEY = "prefix_hashes"


def block_hashes(text: str, block_chars: int, max_blocks: int = 0) -> list[int]:
    """Chained 64-bit hashes of the full ``block_chars``-byte blocks of ``text``.

    A trailing partial block is hashed too, so short prompts still match each other;
    its hash differs from the full block that a longer prompt has at that position.
    """
    data = text.encode("utf-8", "surrogatepass")
    n = len(data)
    if max_blocks:
        n = min(n, max_blocks * block_chars)
    out: list[int] = []
    h = 0
    for start in range(0, n, block_chars):
        h = _HASH(data[start : start + block_chars], h)
        out.append(h)
    return out


class PrefixIndex:
    """Per-pod LRU sets of block hashes plus a reverse map hash → pods."""

    def __init__(self, capacity_blocks: int = 65536) -> None:
        self.capacity_blocks = capacity_blocks
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._where: dict[int, set[str]] = {}
        self.capacity_for: dict[str, int] = {}

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

    def remove_endpoint(self, address: str) -> None:
        lru = self._lru.pop(address, None)
        if lru is None:
            return
        for h in lru:
            pods = self._where.get(h)
            if pods is not None:
                pods.discard(address)
                if not pods:
                    del self._where[h]

    def match(self, hashes: Sequence[int], addresses: Sequence[str]) -> list[int]:
        """Longest matched prefix, in blocks, for each address (aligned with input)."""
        matched = dict.fromkeys(addresses, 0)
        where = self._where
        for i, h in enumerate(hashes):
            pods = where.get(h)
            if not pods:
                break
            advanced = False
            for a in pods:
                if matched.get(a) == i:
                    matched[a] = i + 1
                    advanced = True
            if not advanced:
                break
        return [matched[a] for a in addresses]


def endpoint_load(e: Endpoint) -> int:
    """Requests the pod is busy with: scraped running + waiting, plus sent since."""
    m = e.metrics
    return max(e.inflight, m.running + m.waiting + min(e.sent_since_scrape, e.inflight))


class PrefixScorer:
    """Score = fraction of the request's prompt blocks the pod is believed to hold."""

    name = "prefix"

    def __init__(
        self,
        block_chars: int = 128,
        capacity_blocks: int = 65536,
        max_blocks: int = 2048,
        balance_abs: int = 8,
        balance_rel: float = 1.5,
        chars_per_token: float = 4.0,
        cold_spread: float = 0.0,
        index: PrefixIndex | None = None,
    ) -> None:
        self.block_chars = block_chars
        self.max_blocks = max_blocks
        self.balance_abs = balance_abs
        self.balance_rel = balance_rel
        self.chars_per_token = chars_per_token
        self.cold_spread = cold_spread
        self.index = index or PrefixIndex(capacity_blocks)

    def hashes(self, request: InferenceRequest) -> list[int]:
        cached: list[int] | None = request.scratch.get(_SCRATCH_KEY)
        if cached is None:
            text = request.prompt
            if request.adapter:
                text = f"<lora:{request.adapter}>" + text
            cached = block_hashes(text, self.block_chars, self.max_blocks) if text else []
            request.scratch[_SCRATCH_KEY] = cached
        return cached

    def _sync_capacity(self, e: Endpoint) -> None:
        m = e.metrics
        if m.num_blocks and m.block_size:
            chars = m.num_blocks * m.block_size * self.chars_per_token
            self.index.capacity_for[e.address] = max(1, int(chars // self.block_chars))

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        hashes = self.hashes(request)
        if not hashes:
            return [0.0] * len(candidates)
        matched = self.index.match(hashes, [e.address for e in candidates])
        best = max(matched)
        if best == 0:
            return self._spread(candidates)
        # Balance: is the best-matched pod much busier than the least busy one?
        loads = [endpoint_load(e) for e in candidates]
        hot = min(loads[i] for i, m in enumerate(matched) if m == best)
        idle = min(loads)
        if hot - idle > self.balance_abs and hot > self.balance_rel * idle:
            return [0.0] * len(candidates)
        n = len(hashes)
        scores = [m / n for m in matched]
        request.scratch["prefix_match"] = {
            e.address: sc for e, sc in zip(candidates, scores, strict=True) if sc
        }
        return scores

    def _spread(self, candidates: Sequence[Endpoint]) -> list[float]:
        """A prompt no pod holds: prefer the pods holding the fewest blocks.

        Where a new prefix lands decides where it will be cached; spreading new
        prefixes by cache occupancy (as sglang's cache-aware router does with its trees)
        keeps any one pod's cache from overflowing while others sit empty. Scaled by
        ``cold_spread``; off by default: it counts requests, not their cost, so it pulls
        traffic towards a slow pod (it holds fewer blocks because it served less), and
        on the shared-prefix bench it moved the hit rate by under one point.
        """
        if not self.cold_spread:
            return [0.0] * len(candidates)
        held = [self.index.blocks_on(e.address) for e in candidates]
        top = max(held)
        if top == 0:
            return [0.0] * len(candidates)
        return [self.cold_spread * (1.0 - h / top) for h in held]

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        hashes = self.hashes(request)
        if hashes:
            self._sync_capacity(endpoint)
            self.index.add(endpoint.address, hashes)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        return None
