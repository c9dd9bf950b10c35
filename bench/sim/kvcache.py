"""A paged KV cache with automatic prefix caching, modelled on vLLM v1's ``BlockPool``.

* ``num_blocks`` blocks of ``block_size`` token slots. Each block has a reference count
  (how many running requests use it) and, once it holds a *full* block of computed
  prompt tokens, a block hash.
* Block hashes are chained, as in vLLM: ``hash(parent_hash, block token ids, extra
  keys)``; here ``xxh3_64(token ids as uint32 bytes, seed=parent_hash)`` with the first
  block's parent derived from the extra keys (the LoRA adapter name), so a hash
  identifies the whole prefix up to and including its block.
* Free blocks sit in an LRU free queue (an ``OrderedDict``); freed blocks keep their
  hash and stay findable in ``cached`` until the block is reused for new data (eviction
  happens only then, taking the least recently freed block first). A request frees its
  blocks tail first, so the end of a sequence is evicted before its shared prefix.
* ``usage`` counts only referenced blocks, so it is ~0 when idle even with a full
  prefix cache (vLLM's ``kv_cache_usage_perc``).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence

import xxhash

_xxh3 = xxhash.xxh3_64_intdigest

# (block hashes stored, their parent hash, token ids, lora name) / (block hashes removed)
StoredCallback = Callable[[list[int], int | None, list[int], str | None], None]
RemovedCallback = Callable[[list[int]], None]


def root_hash(extra: str | None) -> int:
    """The parent hash of a sequence's first block (depends on the extra keys only)."""
    return 0 if extra is None else _xxh3(b"lora:" + extra.encode())


def block_hashes(tokens: Sequence[int], block_size: int, extra: str | None = None) -> list[int]:
    """Chained hashes of the full blocks of ``tokens`` (the partial tail is not hashed)."""
    n = len(tokens) // block_size
    if n == 0:
        return []
    buf = memoryview(array("I", [t & 0xFFFFFFFF for t in tokens[: n * block_size]])).cast("B")
    step = 4 * block_size
    parent = root_hash(extra)
    out: list[int] = []
    for i in range(n):
        parent = _xxh3(buf[i * step : (i + 1) * step], seed=parent)
        out.append(parent)
    return out


class BlockPool:
    """Blocks, their reference counts and hashes, the LRU free queue and the hash index."""

    __slots__ = (
        "block_size",
        "cached",
        "evictions",
        "free",
        "hashes",
        "num_blocks",
        "on_removed",
        "on_stored",
        "refs",
    )

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.refs = [0] * num_blocks
        self.hashes: list[int | None] = [None] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.evictions = 0
        self.on_stored: StoredCallback | None = None
        self.on_removed: RemovedCallback | None = None

    @property
    def num_free(self) -> int:
        """Blocks with no reference (cached or not): what new allocations may take."""
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by requests (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - len(self.free) / self.num_blocks

    def match_prefix(self, hashes: Sequence[int], limit: int) -> list[int]:
        """Block ids of the longest cached prefix of ``hashes`` (at most ``limit`` blocks)."""
        cached = self.cached
        out: list[int] = []
        for h in hashes[:limit]:
            bid = cached.get(h)
            if bid is None:
                break
            out.append(bid)
        return out

    def cost(self, hit: Sequence[int], new: int) -> int:
        """Free blocks an allocation of ``new`` blocks after touching ``hit`` consumes."""
        refs = self.refs
        return new + sum(1 for b in hit if refs[b] == 0)

    def touch(self, hit: Sequence[int]) -> None:
        """Takes a reference on cache-hit blocks (removing idle ones from the free queue)."""
        refs = self.refs
        free = self.free
        for b in hit:
            if refs[b] == 0:
                del free[b]
            refs[b] += 1

    def allocate(self, n: int) -> list[int]:
        """``n`` fresh blocks from the head of the free queue, evicting cached ones.

        The caller checks ``num_free`` first; raises ``MemoryError`` when short.
        """
        if n > len(self.free):
            raise MemoryError("not enough free KV blocks")
        out: list[int] = []
        removed: list[int] = []
        free = self.free
        refs = self.refs
        hashes = self.hashes
        cached = self.cached
        for _ in range(n):
            b, _none = free.popitem(last=False)
            h = hashes[b]
            if h is not None:
                hashes[b] = None
                if cached.get(h) == b:
                    del cached[h]
                    removed.append(h)
            refs[b] = 1
            out.append(b)
        if removed:
            self.evictions += len(removed)
            if self.on_removed is not None:
                self.on_removed(removed)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drops one reference on each block; idle ones join the free queue tail first."""
        refs = self.refs
        free = self.free
        for b in reversed(blocks):
            r = refs[b] - 1
            refs[b] = r
            if r == 0:
                free[b] = None

    def register(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        start: int,
        end: int,
        tokens: Sequence[int],
        extra: str | None,
    ) -> None:
        """Marks ``blocks[start:end]`` (now full of computed tokens) as cached under
        ``hashes[start:end]``. A hash already cached by another block is left alone."""
        cached = self.cached
        bh = self.hashes
        run_start = -1
        for i in range(start, end + 1):
            h = hashes[i] if i < end else None
            if h is not None and h not in cached:
                b = blocks[i]
                cached[h] = b
                bh[b] = h
                if run_start < 0:
                    run_start = i
                continue
            if run_start >= 0 and self.on_stored is not None:
                bs = self.block_size
                parent = hashes[run_start - 1] if run_start > 0 else None
                self.on_stored(
                    list(hashes[run_start:i]), parent, list(tokens[run_start * bs : i * bs]), extra
                )
            run_start = -1

    def reset(self) -> int:
        """Forgets every cached hash of idle blocks (vLLM's ``reset_prefix_cache``)."""
        n = 0
        for b in self.free:
            h = self.hashes[b]
            if h is not None:
                self.hashes[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                    n += 1
        return n
