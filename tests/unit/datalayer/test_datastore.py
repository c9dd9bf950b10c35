"""The dynamic datastore, and everything that must forget a removed endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from picker.config import Config
from picker.datalayer.datastore import Datastore, Endpoint, Pool
from picker.datalayer.kv_index import KVEvents, KVEventSubscriber
from picker.observability import Metrics
from picker.request.types import InferenceRequest
from picker.requestcontrol.director import Director, Routed
from picker.scheduling.framework import Handle, Plugin
from picker.scheduling.pickers import MaxScorePicker
from picker.scheduling.profile import build_profile
from picker.scheduling.scorers.lora import LoraAffinityScorer
from picker.scheduling.scorers.prefix import PrefixIndex, PrefixScorer


def addresses(pool: Pool) -> list[str]:
    return [e.address for e in pool.endpoints]


def test_set_and_update_endpoints_notify_once() -> None:
    ds = Datastore([Pool("static", [Endpoint("10.0.0.9:80", "static")], frozenset({"m"}))])
    ds.add_pool(Pool("k8s", []))
    seen: list[tuple[list[str], list[str]]] = []
    ds.add_listener(lambda a, r: seen.append(([e.address for e in a], [e.address for e in r])))
    added, removed = ds.set_endpoints("k8s", ["10.0.0.1:8000", "10.0.0.2:8000"])
    assert [e.address for e in added] == ["10.0.0.1:8000", "10.0.0.2:8000"] and not removed
    pool = ds.pool("k8s")
    assert pool is not None
    old_list = pool.endpoints
    keep = ds.by_address["10.0.0.1:8000"]
    keep.inflight = 3
    gone = ds.by_address["10.0.0.2:8000"]
    ds.set_endpoints("k8s", ["10.0.0.1:8000", "10.0.0.3:8000"])
    assert ds.by_address["10.0.0.1:8000"] is keep and keep.inflight == 3  # state kept
    assert gone.removed and not gone.healthy and "10.0.0.2:8000" not in ds.by_address
    assert addresses(pool) == ["10.0.0.1:8000", "10.0.0.3:8000"]
    assert [e.address for e in old_list] == ["10.0.0.1:8000", "10.0.0.2:8000"]  # not mutated
    assert ds.set_endpoints("k8s", ["10.0.0.3:8000", "10.0.0.1:8000"]) == ([], [])
    ds.update_endpoints("k8s", add=["10.0.0.9:80"])  # the static pool's: refused
    assert "10.0.0.9:80" not in addresses(pool)
    assert seen == [
        (["10.0.0.1:8000", "10.0.0.2:8000"], []),
        (["10.0.0.3:8000"], ["10.0.0.2:8000"]),
    ]
    # A pod back at a removed address is a new Endpoint; the old one stays removed.
    ds.set_endpoints("k8s", ["10.0.0.2:8000"])
    assert ds.by_address["10.0.0.2:8000"] is not gone and gone.removed
    assert ds.pool_for("any-model") is pool and ds.pool_for("m") is ds.pools[0]
    with pytest.raises(ValueError):
        ds.add_pool(Pool("k8s", []))


def test_a_failing_listener_does_not_stop_the_others() -> None:
    ds = Datastore([Pool("p", [])])
    seen: list[int] = []

    def bad(a: Sequence[Endpoint], r: Sequence[Endpoint]) -> None:
        raise RuntimeError("boom")

    ds.add_listener(bad)
    ds.add_listener(lambda a, r: seen.append(len(a)))
    ds.set_endpoints("p", ["1.2.3.4:5"])
    assert seen == [1]


def test_prefix_index_forget() -> None:
    idx = PrefixIndex()
    idx.add("a:1", [1, 2, 3])
    idx.add("b:1", [1, 2])
    idx.capacity_for["a:1"] = 10
    assert idx.forget("a:1") == 3
    assert idx.match([1, 2, 3], ["a:1", "b:1"]) == {"b:1": 2}
    assert len(idx) == 2 and idx.blocks_on("a:1") == 0 and "a:1" not in idx.capacity_for
    assert idx.forget("a:1") == 0


class Recorder(Plugin):
    type = "recorder"

    def __init__(self, *a: object) -> None:
        super().__init__("recorder")
        self.removed: list[str] = []
        self.done: list[str] = []

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        self.removed.append(endpoint.address)

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        self.done.append(endpoint.address)


def test_plugins_forget_removed_endpoints() -> None:
    profile = build_profile(
        {"scorers": {"prefix": 1, "lora_affinity": 1}, "picker": "max_score"}, handle=Handle()
    )
    rec = Recorder()
    profile.plugins.append(rec)
    profile.__post_init__()
    prefix = next(p for p in profile.plugins if isinstance(p, PrefixScorer))
    lora = next(p for p in profile.plugins if isinstance(p, LoraAffinityScorer))
    picker = profile.picker
    assert isinstance(picker, MaxScorePicker)
    a, b = Endpoint("10.0.0.1:8000"), Endpoint("10.0.0.2:8000")
    for ep in (a, b):
        req = InferenceRequest(model="m", prompt="hello " * 100, adapter="sql")
        ranked = profile.schedule(req, [ep])
        profile.on_pick(req, ranked[0])
    assert prefix.index.blocks_on(a.address) and lora._recent.get(a.address)
    assert a.address in picker._last
    a.removed = True
    profile.on_endpoints_removed([a])
    assert prefix.index.blocks_on(a.address) == 0 and prefix.index.blocks_on(b.address)
    assert a.address not in lora._recent and b.address in lora._recent
    assert a.address not in picker._last and b.address in picker._last
    assert rec.removed == [a.address]
    # A late response from the removed pod teaches no plugin anything.
    profile.on_done(InferenceRequest(model="m"), a, True)
    profile.on_done(InferenceRequest(model="m"), b, True)
    assert rec.done == [b.address]


async def test_kv_events_forget_stops_the_subscriber() -> None:
    events = KVEvents(pattern="tcp://127.0.0.1:1")  # nothing listens: never receives
    await events.start()
    try:
        events.ensure("10.0.0.1:8000")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        sub = events.subscribers["10.0.0.1:8000"]
        assert isinstance(sub, KVEventSubscriber)
        events.index.store("10.0.0.1:8000", [1, 2])
        events.index.store("10.0.0.2:8000", [1])
        events.forget("10.0.0.1:8000")
        assert "10.0.0.1:8000" not in events.subscribers
        assert events.index.blocks_on("10.0.0.1:8000") == set()
        assert events.index.pods_with(1) == {"10.0.0.2:8000"}
        for _ in range(5):
            await asyncio.sleep(0)
        assert sub._task is None and sub._socket is None  # stopped, socket closed
    finally:
        await events.stop()


async def test_requests_to_a_removed_endpoint_drain() -> None:
    cfg = Config()
    ds = Datastore([Pool("k8s", [])])
    ds.set_endpoints("k8s", ["10.0.0.1:8000", "10.0.0.2:8000"])
    metrics = Metrics()
    profile = build_profile({"scorers": {"least_inflight": 1}, "picker": "round_robin"})
    director = Director(cfg, ds, profile, metrics)
    body = b'{"model": "m", "prompt": "hi"}'
    routed = [director.decide("/v1/completions", body) for _ in range(4)]
    assert all(isinstance(r, Routed) for r in routed)
    victim = ds.by_address["10.0.0.1:8000"]
    assert victim.inflight == 2
    ds.set_endpoints("k8s", ["10.0.0.2:8000"])
    metrics.forget_endpoint(victim.address)
    # New requests never go there ...
    for _ in range(4):
        r = director.decide("/v1/completions", body)
        assert isinstance(r, Routed) and r.endpoints[0].address == "10.0.0.2:8000"
        director.finish(r, 200)
    # ... while those already routed there finish normally and drain its counts.
    for r in routed:
        assert isinstance(r, Routed)
        director.served_by(r, "10.0.0.1:8000")  # the removed address: not re-added
        director.finish(r, 200)
    assert victim.inflight == 0 and victim.inflight_tokens == 0
    assert "10.0.0.1:8000" not in ds.by_address
    assert ds.by_address["10.0.0.2:8000"].inflight == 0
    text = metrics.registry.get_sample_value(
        "picker_endpoint_responses_total", {"endpoint": "10.0.0.1:8000", "status_class": "2xx"}
    )
    assert text is None  # the removed endpoint's series is gone and not re-created
    kept = metrics.registry.get_sample_value(
        "picker_endpoint_responses_total", {"endpoint": "10.0.0.2:8000", "status_class": "2xx"}
    )
    assert kept == 6
