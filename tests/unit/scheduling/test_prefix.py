"""Approximate prefix index: chained block hashes, LRU, matching, balance."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.datalayer.datastore import Endpoint, EndpointMetrics
from picker.request.types import InferenceRequest
from picker.scheduling.framework import Handle, Params
from picker.scheduling.scorers.prefix import (
    PrefixIndex,
    PrefixScorer,
    block_hashes,
    prefix_chars,
)

B = 16


@settings(max_examples=200, deadline=None)
@given(
    shared=st.text(min_size=0, max_size=400),
    a=st.text(min_size=1, max_size=200),
    b=st.text(min_size=1, max_size=200),
)
def test_shared_prefix_of_k_blocks_matches_exactly_k(shared: str, a: str, b: str) -> None:
    # Make the two suffixes differ in their first byte, so blocks diverge right there.
    if a[0] == b[0]:
        b = ("x" if a[0] != "x" else "y") + b
    sa, sb = shared + a, shared + b
    da, db = sa.encode("utf-8", "surrogatepass"), sb.encode("utf-8", "surrogatepass")
    k = 0
    while (k + 1) * B <= min(len(da), len(db)) and da[: (k + 1) * B] == db[: (k + 1) * B]:
        k += 1
    idx = PrefixIndex()
    idx.add("pod", block_hashes(sa, B))
    assert idx.match(block_hashes(sb, B), ["pod"]).get("pod", 0) == k


def test_identical_prompt_matches_fully_including_partial_tail() -> None:
    idx = PrefixIndex()
    h = block_hashes("short prompt", B)
    idx.add("a", h)
    assert idx.match(h, ["a", "b"]) == {"a": len(h)}


def test_lru_evicts_tails_first_and_respects_capacity() -> None:
    idx = PrefixIndex(capacity_blocks=10)
    first = block_hashes("A" * (8 * B), B)  # 8 blocks
    idx.add("p", first)
    second = block_hashes("B" * (4 * B), B)  # 4 more → 2 of the oldest go
    idx.add("p", second)
    assert idx.blocks_on("p") == 10
    # The tail of the first prompt was evicted, its head kept: a 6-block prefix remains.
    assert idx.match(first, ["p"]) == {"p": 6}
    assert idx.match(second, ["p"]) == {"p": 4}


def linear_match(idx: PrefixIndex, hashes: list[int], addresses: list[str]) -> dict[str, int]:
    """The obvious walk over every block: what the binary search must agree with."""
    out = {}
    for a in addresses:
        k = 0
        while k < len(hashes) and a in idx._where.get(hashes[k], ()):
            k += 1
        if k:
            out[a] = k
    return out


@settings(max_examples=150, deadline=None)
@given(
    prompts=st.lists(
        st.tuples(st.sampled_from(["p0", "p1", "p2"]), st.integers(0, 5), st.integers(1, 40)),
        min_size=1,
        max_size=40,
    ),
    capacity=st.integers(4, 60),
)
def test_binary_search_equals_a_linear_walk(
    prompts: list[tuple[str, int, int]], capacity: int
) -> None:
    """Through adds of prompt chains (shared heads, different tails) and evictions."""
    idx = PrefixIndex(capacity_blocks=capacity)
    chains = [block_hashes("".join(f"{h}{i:03d}" * 4 for i in range(n)), B) for _, h, n in prompts]
    for (pod, _, _), chain in zip(prompts, chains, strict=True):
        idx.add(pod, chain)
        for probe in chains:
            pods = ["p0", "p1", "p2"]
            assert idx.match(probe, pods) == linear_match(idx, probe, pods)


def test_blocks_double_along_the_prompt() -> None:
    # double_every=2, max 4*B: B, B, 2B, 2B, 4B, 4B, 4B, ...
    assert [prefix_chars(k, B, 2, 4 * B) for k in range(8)] == [
        0, B, 2 * B, 4 * B, 6 * B, 10 * B, 14 * B, 18 * B,
    ]  # fmt: skip
    text = "x" * (18 * B)
    assert len(block_hashes(text, B, 0, 2, 4 * B)) == 7
    assert len(block_hashes(text + "y", B, 0, 2, 4 * B)) == 8  # a partial tail block
    assert block_hashes(text + "y", B, 0, 2, 4 * B)[:7] == block_hashes(text, B, 0, 2, 4 * B)
    assert len(block_hashes("x" * 220_000, 128, 0, 32, 16384)) < 200


def test_long_prompts_use_growing_blocks() -> None:
    scorer = _scorer(double_every=2, max_block_chars=4 * B)
    shared = "s" * (18 * B)  # exactly 7 blocks
    a, b = _req(shared + "tail a"), _req(shared + "tail b")
    pod = Endpoint(address="10.0.0.1:80")
    send(scorer, a, pod)
    assert a.prefix is not None and a.prefix.blocks == 8
    score(scorer, b, [pod])
    assert b.prefix is not None and b.prefix.matched == {pod.address: 7}
    b.prompt_tokens = len(b.prompt) // 4 + 1
    assert b.cached_tokens(pod.address) == 18 * B // 4  # at 4 chars per token


def _req(prompt: str) -> InferenceRequest:
    return InferenceRequest(model="m", prompt=prompt)


def _scorer(**params: object) -> PrefixScorer:
    return PrefixScorer(params=Params({"block_chars": B, **params}))


def score(scorer: PrefixScorer, r: InferenceRequest, pods: list[Endpoint]) -> list[float]:
    scorer.produce(r, pods)
    return scorer.score(r, pods)


def send(scorer: PrefixScorer, r: InferenceRequest, pod: Endpoint) -> None:
    scorer.produce(r, [pod])
    scorer.on_pick(r, pod)


def test_scorer_prefers_pod_that_was_sent_the_prefix() -> None:
    scorer = _scorer()
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(3)]
    system = "You are a helpful assistant that answers briefly. " * 4
    send(scorer, _req(system + "question one"), pods[1])
    scores = score(scorer, _req(system + "question two"), pods)
    assert scores[1] > 0.5 and scores[0] == 0 and scores[2] == 0


def test_match_is_typed_request_data_for_accounting() -> None:
    scorer = _scorer()
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(2)]
    prompt = "p" * (10 * B)
    send(scorer, _req(prompt), pods[0])
    r = _req(prompt + "q" * (10 * B))
    r.prompt_tokens = 20 * B // 4 + 1
    scorer.produce(r, pods)
    assert r.prefix is not None and r.prefix.blocks == 20
    assert r.prefix.matched == {pods[0].address: 10}
    # 10 blocks of B chars at 4 chars per token are cached on pod 0, none on pod 1
    assert r.cached_tokens(pods[0].address) == 10 * B // 4
    assert r.uncached_tokens(pods[0].address) == r.prompt_tokens - 10 * B // 4
    assert r.uncached_tokens(pods[1].address) == r.prompt_tokens


def test_scorer_ignores_affinity_when_holder_is_hot() -> None:
    scorer = _scorer(balance_abs=4, balance_rel=1.5)
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(2)]
    prompt = "shared system prompt " * 10
    send(scorer, _req(prompt), pods[0])
    pods[0].metrics = EndpointMetrics(waiting=10, running=4)
    assert score(scorer, _req(prompt + "?"), pods) == [0.0, 0.0]
    pods[0].metrics = EndpointMetrics(waiting=0, running=4)
    assert score(scorer, _req(prompt + "?"), pods)[0] > 0.5


def test_adapter_is_part_of_the_hash_chain() -> None:
    scorer = _scorer()
    pods = [Endpoint(address="10.0.0.1:80")]
    r = _req("x" * 100)
    r.adapter = "sql"
    send(scorer, r, pods[0])
    assert score(scorer, _req("x" * 100), pods) == [0.0]


def test_capacity_follows_pod_kv_size() -> None:
    scorer = PrefixScorer(params=Params({"block_chars": 64}), handle=Handle(chars_per_token=4))
    pod = Endpoint(address="10.0.0.1:80")
    pod.metrics = EndpointMetrics(num_blocks=10, block_size=16)  # 160 tokens ≈ 640 chars
    for i in range(20):
        send(scorer, _req(f"{i:04d}" * 100), pod)
    assert scorer.index.blocks_on(pod.address) == 10


def test_a_pods_capacity_counts_its_tokens_as_the_pod_does() -> None:
    # 28 blocks x 128 tokens; at 4 chars per token that is 14,336 characters, but when
    # the pods' tokenizer makes 4x as many tokens of the same text, a quarter of it.
    handle = Handle()
    scorer = PrefixScorer("prefix", Params({"block_chars": 128}), handle)
    pod = Endpoint("10.0.0.1:8000")
    pod.metrics = EndpointMetrics(num_blocks=28, block_size=128)
    r = InferenceRequest(model="m", prompt="x" * 300)
    scorer.produce(r, [pod])
    scorer.on_pick(r, pod)
    assert scorer.index.capacity_for[pod.address] == 14336 // 128
    handle.token_scale.value = 4.0
    scorer.on_pick(r, pod)
    assert scorer.index.capacity_for[pod.address] == 14336 // 4 // 128
