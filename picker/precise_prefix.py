"""Precise prefix affinity: the exact KV block hashes vLLM computes, matched against the
blocks each pod reports through its KV events (``picker.kv_events``).

Where ``picker.prefix`` guesses (text chunks, what picker sent where), this scorer knows:
it tokenizes the prompt with the model's own ``tokenizer.json``, cuts the token ids into
full blocks of ``block_size`` tokens (a trailing partial block is never cached by vLLM, so
it does not count) and chains them exactly as vLLM 0.32 does
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
``("lora", name, path)`` to every block (give the adapter paths as ``lora_paths``),
``cache_salt`` adds ``("cache_salt", salt)`` to the first block; multimodal inputs and
prompt embeddings are not supported (such requests would score 0).

Which token ids vLLM hashes:

* ``/v1/completions`` with a string prompt: ``tokenizer.encode(prompt,
  add_special_tokens=True)`` (vLLM's default), i.e. with the BOS that the tokenizer's
  post-processor adds; picker does the same with ``tokenizers.Tokenizer.encode``.
* ``/v1/completions`` with token ids: those ids as they are. ``parse.py`` renders them as
  ``"1 2 3 "``; that form is read back (a string prompt that looks exactly like it is
  taken for token ids, an accepted ambiguity), or ids put in
  ``request.scratch["prompt_token_ids"]`` by the parser are used first.
* chat: vLLM renders the messages with the model's Jinja chat template and then
  tokenizes without special tokens. picker's parsed request keeps only its own rendering
  of the messages, not the body, so chat requests score 0 here unless the parser puts the
  token ids (``scratch["prompt_token_ids"]``) or the templated text
  (``scratch["templated_prompt"]``) in the request. Pair this scorer with the
  approximate ``prefix`` scorer for chat traffic.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import xxhash

from picker.datastore import Endpoint
from picker.kv_events import KVBlockIndex, KVEvents
from picker.request import InferenceRequest

HASH_ALGOS = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
DEFAULT_SEED = "vllm-none-hash"  # vLLM's seed for sha256* when PYTHONHASHSEED is unset
PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL of every CPython vLLM runs on
_SCRATCH_TOKENS = "prompt_token_ids"
_SCRATCH_TEMPLATED = "templated_prompt"
_SCRATCH_HASHES = "precise_prefix_hashes"


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


# -- tokenization ------------------------------------------------------------------------


class PromptTokenizer:
    """The model's tokenizer (``tokenizer.json``), encoding as vLLM's completions API does."""

    def __init__(self, path: str | Path, add_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer  # imported here: only this scorer needs it

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        self.path = p
        self.add_special_tokens = add_special_tokens
        self._tok = Tokenizer.from_file(str(p))

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        ids: list[int] = self._tok.encode(text, add_special_tokens=special).ids
        return ids


def token_ids_from_rendering(prompt: str) -> list[int] | None:
    """Token ids from parse.py's rendering of a token-id prompt (``"1 2 3 "``), else None."""
    if not prompt or not prompt.endswith(" ") or "\n" in prompt:
        return None
    parts = prompt[:-1].split(" ")
    if not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return [int(p) for p in parts]


# -- the scorer --------------------------------------------------------------------------


class PrecisePrefixScorer:
    """Score = leading blocks of the request that the pod holds / the request's full blocks.

    Exact: hashes are vLLM's own, and which pod holds which block comes from the pods'
    KV events. Call ``await start()`` once a loop runs (subscribes) and ``await stop()``.
    """

    name = "precise_prefix"

    def __init__(
        self,
        hasher: BlockHasher,
        tokenizer: PromptTokenizer | None = None,
        events: KVEvents | None = None,
        *,
        max_blocks: int = 2048,
        lora_paths: Mapping[str, str] | None = None,
    ) -> None:
        self.hasher = hasher
        self.tokenizer = tokenizer
        self.events = events or KVEvents()
        self.max_blocks = max_blocks
        self.lora_paths = dict(lora_paths or {})

    @property
    def index(self) -> KVBlockIndex:
        return self.events.index

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PrecisePrefixScorer:
        """Parameters: ``tokenizer`` (path to tokenizer.json or its directory),
        ``block_size`` (128), ``hash_algo`` ("sha256"), ``hash_seed`` (the pods'
        PYTHONHASHSEED; default: vLLM's fixed seed for sha256), ``events`` (a map
        ``{"ip:port": "tcp://host:port"}`` or a pattern such as ``"tcp://{host}:5557"``),
        ``topic`` (ZMQ subscription prefix, default all), ``max_blocks`` (2048),
        ``lora_paths`` (``{adapter: path}`` as the pods load them),
        ``add_special_tokens`` (True)."""
        allowed = {
            "tokenizer",
            "block_size",
            "hash_algo",
            "hash_seed",
            "events",
            "topic",
            "max_blocks",
            "lora_paths",
            "add_special_tokens",
        }
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"precise_prefix scorer: unknown parameters {sorted(unknown)}")
        seed = params.get("hash_seed")
        hasher = BlockHasher(
            block_size=int(params.get("block_size", 128)),
            hash_algo=str(params.get("hash_algo", "sha256")),
            hash_seed=None if seed is None else str(seed),
        )
        tok_path = params.get("tokenizer")
        tokenizer = (
            PromptTokenizer(str(tok_path), bool(params.get("add_special_tokens", True)))
            if tok_path
            else None
        )
        ev = params.get("events")
        topic = str(params.get("topic", ""))
        if ev is None:
            events = KVEvents(topic=topic)
        elif isinstance(ev, str):
            events = KVEvents(pattern=ev, topic=topic)
        elif isinstance(ev, Mapping):
            events = KVEvents({str(k): str(v) for k, v in ev.items()}, topic=topic)
        else:
            raise ValueError("precise_prefix scorer: events must be a map or a pattern string")
        lora = params.get("lora_paths") or {}
        if not isinstance(lora, Mapping):
            raise ValueError("precise_prefix scorer: lora_paths must be a map")
        return cls(
            hasher,
            tokenizer,
            events,
            max_blocks=int(params.get("max_blocks", 2048)),
            lora_paths={str(k): str(v) for k, v in lora.items()},
        )

    async def start(self) -> None:
        await self.events.start()

    async def stop(self) -> None:
        await self.events.stop()

    def token_ids(self, request: InferenceRequest) -> list[int] | None:
        """The prompt token ids vLLM will hash, or None when picker cannot know them."""
        scratch = request.scratch
        ids: list[int] | None = scratch.get(_SCRATCH_TOKENS)
        if ids is not None:
            return ids
        if request.kind == "chat":
            templated = scratch.get(_SCRATCH_TEMPLATED)
            if isinstance(templated, str) and self.tokenizer is not None:
                return self.tokenizer.encode(templated, add_special_tokens=False)
            return None
        if request.kind != "completions" or not request.prompt:
            return None
        ids = token_ids_from_rendering(request.prompt)
        if ids is not None:
            return ids
        if "\n" in request.prompt and scratch.get("prompt_is_batch"):
            return None
        if self.tokenizer is None:
            return None
        special = scratch.get("add_special_tokens")  # the body's flag, when the parser keeps it
        return self.tokenizer.encode(request.prompt, special if isinstance(special, bool) else None)

    def hashes(self, request: InferenceRequest) -> list[int]:
        cached: list[int] | None = request.scratch.get(_SCRATCH_HASHES)
        if cached is not None:
            return cached
        out: list[int] = []
        ids = self.token_ids(request)
        lora: tuple[str, str] | None = None
        if request.adapter is not None:
            path = self.lora_paths.get(request.adapter)
            lora = None if path is None else (request.adapter, path)
        if ids is not None and (request.adapter is None or lora is not None):
            salt = request.scratch.get("cache_salt")
            out = self.hasher.hashes(
                ids,
                lora=lora,
                cache_salt=salt if isinstance(salt, str) else None,
                max_blocks=self.max_blocks,
            )
        request.scratch[_SCRATCH_HASHES] = out
        return out

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        addresses = [e.address for e in candidates]
        for a in addresses:
            self.events.ensure(a)
        hashes = self.hashes(request)
        if not hashes:
            return [0.0] * len(candidates)
        n = len(hashes)
        return [m / n for m in self.index.match(hashes, addresses)]
