"""Approximate prefix index: chained block hashes, LRU, matching, balance."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.datastore import Endpoint, EndpointMetrics
from picker.prefix import PrefixIndex, PrefixScorer, block_hashes
from picker.request import InferenceRequest

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
    assert idx.match(block_hashes(sb, B), ["pod"]) == [k]


def test_identical_prompt_matches_fully_including_partial_tail() -> None:
    idx = PrefixIndex()
    h = block_hashes("short prompt", B)
    idx.add("a", h)
    assert idx.match(h, ["a", "b"]) == [len(h), 0]


def test_lru_evicts_tails_first_and_respects_capacity() -> None:
    idx = PrefixIndex(capacity_blocks=10)
    first = block_hashes("A" * (8 * B), B)  # 8 blocks
    idx.add("p", first)
    second = block_hashes("B" * (4 * B), B)  # 4 more → 2 of the oldest go
    idx.add("p", second)
    assert idx.blocks_on("p") == 10
    # The tail of the first prompt was evicted, its head kept: a 6-block prefix remains.
    assert idx.match(first, ["p"]) == [6]
    assert idx.match(second, ["p"]) == [4]


def test_match_stops_at_first_gap() -> None:
    idx = PrefixIndex()
    h = block_hashes("C" * (5 * B), B)
    idx.add("p", [h[0], h[1], h[3], h[4]])
    assert idx.match(h, ["p"]) == [2]


def test_remove_endpoint_forgets_everything() -> None:
    idx = PrefixIndex()
    h = block_hashes("D" * (3 * B), B)
    idx.add("p", h)
    idx.remove_endpoint("p")
    assert idx.match(h, ["p"]) == [0] and len(idx) == 0


def _req(prompt: str) -> InferenceRequest:
    return InferenceRequest(model="m", prompt=prompt)


def test_scorer_prefers_pod_that_was_sent_the_prefix() -> None:
    scorer = PrefixScorer(block_chars=B)
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(3)]
    system = "You are a helpful assistant that answers briefly. " * 4
    scorer.on_pick(_req(system + "question one"), pods[1])
    scores = scorer.score(_req(system + "question two"), pods)
    assert scores[1] > 0.5 and scores[0] == 0 and scores[2] == 0


def test_scorer_ignores_affinity_when_holder_is_hot() -> None:
    scorer = PrefixScorer(block_chars=B, balance_abs=4, balance_rel=1.5)
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(2)]
    prompt = "shared system prompt " * 10
    scorer.on_pick(_req(prompt), pods[0])
    pods[0].metrics = EndpointMetrics(waiting=10, running=4)
    assert scorer.score(_req(prompt + "?"), pods) == [0.0, 0.0]
    pods[0].metrics = EndpointMetrics(waiting=0, running=4)
    assert scorer.score(_req(prompt + "?"), pods)[0] > 0.5


def test_adapter_is_part_of_the_hash_chain() -> None:
    scorer = PrefixScorer(block_chars=B)
    pods = [Endpoint(address="10.0.0.1:80")]
    r = _req("x" * 100)
    r.adapter = "sql"
    scorer.on_pick(r, pods[0])
    assert scorer.score(_req("x" * 100), pods) == [0.0]


def test_capacity_follows_pod_kv_size() -> None:
    scorer = PrefixScorer(block_chars=64, chars_per_token=4)
    pod = Endpoint(address="10.0.0.1:80")
    pod.metrics = EndpointMetrics(num_blocks=10, block_size=16)  # 160 tokens ≈ 640 chars
    for i in range(20):
        scorer.on_pick(_req(f"{i:04d}" * 100), pod)
    assert scorer.index.blocks_on(pod.address) == 10


def test_new_prefix_goes_to_the_emptiest_cache() -> None:
    scorer = PrefixScorer(block_chars=B, cold_spread=0.5)
    pods = [Endpoint(address=f"10.0.0.{i}:80") for i in range(3)]
    scorer.on_pick(_req("a" * 400), pods[0])  # 25 blocks
    scorer.on_pick(_req("b" * 160), pods[1])  # 10 blocks
    scores = scorer.score(_req("brand new prompt " * 10), pods)
    assert scores[2] == 0.5 and scores[0] == 0.0 and 0 < scores[1] < 0.5
    assert PrefixScorer(block_chars=B, cold_spread=0).score(_req("x" * 50), pods) == [0.0] * 3
