"""vLLM's KV block hashes: the identity of a cached block, as vLLM 0.32 computes it
(``vllm/v1/core/kv_cache_utils.py``: ``hash_block_tokens`` / ``init_none_hash``)::

    NONE_HASH = H(seed)                                 # seed: PYTHONHASHSEED of the pod
    block[i] = H((block[i-1] or NONE_HASH, tuple(token_ids of block i), extra_keys))

with ``H`` the pod's ``--prefix-caching-hash-algo``:

* ``sha256`` (the default): SHA-256 of ``pickle.dumps(obj, protocol=5)``;
* ``sha256_cbor``: SHA-256 of canonical CBOR (encoded here, no ``cbor2`` needed);
* ``xxhash`` / ``xxhash_cbor``: XXH3-128 of the same serialisations.

The chain uses the full digests; KV events carry only their low 64 bits, as an unsigned
big-endian integer (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``), and so does the index.

``seed``: vLLM takes ``PYTHONHASHSEED`` when set, else the fixed ``"vllm-none-hash"`` for
the sha256 algorithms, else (xxhash) a random per-process value that nobody outside can
match: set ``PYTHONHASHSEED`` on the pods and give picker the same ``hash_seed``.

``extra_keys`` is ``None`` for plain text requests. LoRA requests add
``("lora", name, path)`` to every block, ``cache_salt`` adds ``("cache_salt", salt)`` to
the first block; multimodal inputs and prompt embeddings are not supported.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any

import xxhash

HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_SEED = "vllm-none-hash"  # vLLM's seed for sha256* when PYTHONHASHSEED is unset
PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL of every CPython vLLM runs on


# -- serialisations --------------------------------------------------------------------


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + struct.pack(">I", n)
    if n < 0x10000000000000000:
        return bytes((major << 5 | 27,)) + struct.pack(">Q", n)
    raise ValueError("integer too large for this CBOR encoder")


def cbor_dumps(obj: Any) -> bytes:
    """Canonical CBOR of None/bool/int/str/bytes/tuple/list, byte-equal to
    ``cbor2.dumps(obj, canonical=True)`` for these types (all vLLM's block keys use)."""
    out = bytearray()

    def enc(o: Any) -> None:
        if o is None:
            out.append(0xF6)
        elif o is True:
            out.append(0xF5)
        elif o is False:
            out.append(0xF4)
        elif isinstance(o, int):
            out.extend(_cbor_head(0, o) if o >= 0 else _cbor_head(1, -1 - o))
        elif isinstance(o, bytes | bytearray):
            out.extend(_cbor_head(2, len(o)))
            out.extend(o)
        elif isinstance(o, str):
            b = o.encode("utf-8")
            out.extend(_cbor_head(3, len(b)))
            out.extend(b)
        elif isinstance(o, tuple | list):
            out.extend(_cbor_head(4, len(o)))
            for x in o:
                enc(x)
        else:
            raise TypeError(f"cannot CBOR-encode {type(o).__name__}")

    enc(obj)
    return bytes(out)


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def _xxh128(data: bytes) -> bytes:
    digest: bytes = xxhash.xxh3_128_digest(data)
    return digest


def hash_function(name: str) -> Callable[[Any], bytes]:
    """vLLM's ``get_hash_fn_by_name``: object → digest bytes."""
    if name == "sha256":
        return lambda o: hashlib.sha256(_pickle(o)).digest()
    if name == "sha256_cbor":
        return lambda o: hashlib.sha256(cbor_dumps(o)).digest()
    if name == "xxhash":
        return lambda o: _xxh128(_pickle(o))
    if name == "xxhash_cbor":
        return lambda o: _xxh128(cbor_dumps(o))
    raise ValueError(f"hash_algo must be one of {HASH_ALGOS}, not {name!r}")


def external_hash(digest: bytes) -> int:
    """The 64-bit integer a KV event carries for a block digest (its low 8 bytes)."""
    return int.from_bytes(digest[-8:], "big")


class BlockHasher:
    """vLLM's chained block hashes for token ids."""

    def __init__(
        self, block_size: int = 128, hash_algo: str = "sha256", hash_seed: str | None = None
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        if hash_seed is None:
            if hash_algo.startswith("xxhash"):
                raise ValueError(
                    "xxhash block hashes use a random seed unless PYTHONHASHSEED is set: "
                    "set it on the pods and pass the same hash_seed"
                )
            hash_seed = DEFAULT_SEED
        self.block_size = block_size
        self.hash_algo = hash_algo
        self.hash_seed = hash_seed
        self._fn = hash_function(hash_algo)
        self.none_hash = self._fn(hash_seed)

    def digests(
        self,
        token_ids: Sequence[int],
        *,
        lora: tuple[str, str] | None = None,
        cache_salt: str | None = None,
        max_blocks: int = 0,
    ) -> list[bytes]:
        """Full digests of the full blocks of ``token_ids`` (a partial tail is not hashed)."""
        bs = self.block_size
        n = len(token_ids) // bs
        if max_blocks:
            n = min(n, max_blocks)
        fn = self._fn
        lora_keys: list[tuple[str, ...]] = [("lora", *lora)] if lora else []
        out: list[bytes] = []
        parent = self.none_hash
        for i in range(n):
            keys = list(lora_keys)
            if i == 0 and cache_salt:
                keys.append(("cache_salt", cache_salt))
            extra = tuple(keys) if keys else None
            parent = fn((parent, tuple(token_ids[i * bs : (i + 1) * bs]), extra))
            out.append(parent)
        return out

    def hashes(
        self,
        token_ids: Sequence[int],
        *,
        lora: tuple[str, str] | None = None,
        cache_salt: str | None = None,
        max_blocks: int = 0,
    ) -> list[int]:
        """The 64-bit block hashes vLLM publishes for ``token_ids``."""
        return [
            external_hash(d)
            for d in self.digests(
                token_ids, lora=lora, cache_salt=cache_salt, max_blocks=max_blocks
            )
        ]
