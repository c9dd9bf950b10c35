"""Workloads are reproducible and have the advertised shape; arrivals have the right rate."""

from __future__ import annotations

import itertools
import json
import os
import statistics
from pathlib import Path

import pytest

from bench.harness.workloads import (
    CHAT,
    COMPLETIONS,
    Arrival,
    build,
    iter_sessions,
    load_trace,
    parse_arrival,
    shared_prefix,
    words,
)
from bench.sim.tokenize import tokenize


@pytest.mark.parametrize("name", ["shared_prefix", "multi_turn", "uniform", "lora_mix"])
def test_deterministic_for_a_seed(name: str) -> None:
    a = build(name, 40, seed=7, arrival=Arrival("poisson", rate=5))
    b = build(name, 40, seed=7, arrival=Arrival("poisson", rate=5))
    c = build(name, 40, seed=8, arrival=Arrival("poisson", rate=5))
    assert a == b
    assert [s.body for s in a] != [s.body for s in c]


def test_one_token_per_word() -> None:
    import random

    text = words(random.Random(1), 300)
    assert len(text.split()) == 300
    assert len(tokenize(text)) == 300


def test_shared_prefix_groups_share_exact_prefixes() -> None:
    specs = shared_prefix(
        200, seed=3, groups=4, prompts_per_group=5, system_len=50, question_len=10, output_len=7
    )
    assert {s.path for s in specs} == {COMPLETIONS}
    assert all(s.body["max_tokens"] == 7 and s.body["stream"] for s in specs)
    by_group: dict[str | None, set[str]] = {}
    for s in specs:
        by_group.setdefault(s.group, set()).add(s.body["prompt"])
    assert len(by_group) == 4
    prefixes = set()
    for prompts in by_group.values():
        assert len(prompts) <= 5
        heads = {p.split("\nQuestion: ")[0] for p in prompts}
        assert len(heads) == 1  # one exact system prompt per group
        (head,) = heads
        assert len(tokenize(head)) == 50 + 3  # "group N:" is three more tokens
        assert all(p.startswith(head + "\nQuestion: ") for p in prompts)
        prefixes.add(head)
    assert len(prefixes) == 4


def test_multi_turn_turns_extend_each_other() -> None:
    specs = build("multi_turn", 60, seed=2, sessions=3, system_len=20, user_len=5)
    assert {s.path for s in specs} == {CHAT}
    sessions = dict(iter_sessions(specs))
    assert len(sessions) == 3
    for turns in sessions.values():
        for prev, nxt in itertools.pairwise(turns):
            p, n = prev.body["messages"], nxt.body["messages"]
            assert n[: len(p)] == p
            assert [m["role"] for m in n[len(p) :]] == ["assistant", "user"]
        assert turns[0].body["messages"][0]["role"] == "system"


def test_multi_turn_conversations_end_after_turns() -> None:
    specs = build("multi_turn", 200, seed=3, sessions=4, system_len=20, user_len=5, turns=3)
    sessions = dict(iter_sessions(specs))
    assert len(sessions) > 4  # slots began new conversations
    for turns in sessions.values():
        assert 1 <= len(turns) <= 3
        assert len(turns[0].body["messages"]) == 2  # system + first user message
        for prev, nxt in itertools.pairwise(turns):
            assert nxt.body["messages"][: len(prev.body["messages"])] == prev.body["messages"]
    assert max(len(s.body["messages"]) for s in specs) == 6


def test_lora_mix_uses_adapters_and_base() -> None:
    specs = build("lora_mix", 200, seed=1, adapters=["a", "b"], base_fraction=0.3)
    models = {s.model for s in specs}
    assert {"a", "b"} < models and len(models) == 3


@pytest.mark.parametrize("kind", ["constant", "poisson"])
def test_arrival_mean_rate(kind: str) -> None:
    offsets = Arrival(kind, rate=50).offsets(5000, seed=4)
    assert offsets == sorted(offsets)
    rate = (len(offsets) - 1) / offsets[-1]
    assert rate == pytest.approx(50, rel=0.05)


def test_poisson_gaps_are_exponential() -> None:
    offsets = Arrival("poisson", rate=20).offsets(5000, seed=1)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.1)


def test_stages_rates() -> None:
    arrival = parse_arrival("stages:10x20,40x20")
    assert arrival.mean_rate == 25
    n = arrival.count_for(0)
    assert n == 1000
    offsets = arrival.offsets(n, seed=3)
    first = sum(1 for t in offsets if t < 20)
    second = sum(1 for t in offsets if 20 <= t < 40)
    assert first == pytest.approx(200, rel=0.2)
    assert second == pytest.approx(800, rel=0.1)


def test_closed_loop_and_parse() -> None:
    a = parse_arrival("closed:8")
    assert a.kind == "closed" and a.concurrency == 8
    assert a.offsets(3) == [0.0, 0.0, 0.0]
    assert parse_arrival("poisson:12.5").rate == 12.5
    with pytest.raises(ValueError):
        Arrival("bursty")


def test_trace_replay(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 101.5, "model": "m", "prompt": "hello there", "max_tokens": 4},
        {"timestamp": 100.0, "messages": [{"role": "user", "content": "hi"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    specs = load_trace(path, model="base")
    assert [s.at for s in specs] == [0.0, 1.5]
    assert specs[0].path == CHAT and specs[0].body["model"] == "base"
    assert specs[1].path == COMPLETIONS and specs[1].body["max_tokens"] == 4
    assert build("trace", 0, path=os.fspath(path), model="base") == specs
