"""InferenceObjective / InferenceModelRewrite watches against the fake API server."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from bench.stack.fakekube import OBJECTIVES, REWRITES, FakeKube
from bench.stack.kubeobjects import objective_object, rewrite_object
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.kubeconfig import KubeConfig
from picker.datalayer.discovery.objectives import ObjectiveWatch, rewrite_info
from picker.datalayer.discovery.objects import InvalidObject
from picker.datalayer.objectives import ObjectiveStore
from tests.unit.datalayer.discovery.conftest import NS, POOL, Harness, until

RNG = random.Random(0)


def target(store: ObjectiveStore, model: str) -> str | None:
    rule = store.rewrite_for(model)
    return None if rule is None else rule.choose(RNG)


@pytest.fixture
async def watch(kube: FakeKube) -> AsyncIterator[ObjectiveWatch]:
    client = KubeClient(KubeConfig(kube.url))
    w = ObjectiveWatch(client, ObjectiveStore(), NS, POOL, missing_retry=0.05)
    yield w
    await w.stop()
    await client.close()


async def test_not_installed_is_empty_then_found(kube: FakeKube, watch: ObjectiveWatch) -> None:
    watch.start()
    await watch.synced()  # a 404 counts as synced and empty, not as an error
    assert watch.objectives.missing and watch.rewrites.missing
    assert watch.objectives.errors == 0 and watch.store.rewrite_for("m") is None
    kube.install(OBJECTIVES, REWRITES)  # the CRDs arrive later: looked for again
    kube.put(OBJECTIVES, objective_object(NS, "batch", POOL, -1))
    kube.put(REWRITES, rewrite_object(NS, "rw", POOL, [(["m"], [("m-v2", None)])]))
    await until(lambda: watch.store.priority("batch") == -1 and target(watch.store, "m") == "m-v2")


async def test_follows_changes_for_this_pool_only(kube: FakeKube, watch: ObjectiveWatch) -> None:
    kube.install(OBJECTIVES, REWRITES)
    kube.put(OBJECTIVES, objective_object(NS, "mine", POOL, 3))
    kube.put(OBJECTIVES, objective_object(NS, "unset", POOL))
    kube.put(OBJECTIVES, objective_object(NS, "theirs", "other-pool", -5))
    kube.put(REWRITES, rewrite_object(NS, "theirs", "other-pool", [(["m"], [("no", 1)])]))
    watch.start()
    await watch.synced()
    store = watch.store
    assert store.priority("mine") == 3 and store.priority("unset") == 0
    assert store.priority("theirs") is None and store.rewrite_for("m") is None
    # Watch events: add, change, move to another pool, delete.
    kube.put(REWRITES, rewrite_object(NS, "rw", POOL, [(["m"], [("a", 1), ("b", 1)])]))
    await until(lambda: store.rewrite_for("m") is not None)
    rule = store.rewrite_for("m")
    assert rule is not None and rule.targets == ("a", "b")
    kube.put(OBJECTIVES, objective_object(NS, "mine", POOL, -2))
    await until(lambda: store.priority("mine") == -2)
    kube.put(OBJECTIVES, objective_object(NS, "mine", "other-pool", -2))
    await until(lambda: store.priority("mine") is None)
    kube.delete(REWRITES, NS, "rw")
    await until(lambda: store.rewrite_for("m") is None)
    # A relist after compaction (410) keeps the same state.
    kube.put(OBJECTIVES, objective_object(NS, "late", POOL, 1))
    await until(lambda: store.priority("late") == 1)
    lists = watch.objectives.lists
    kube.drop_watches()  # the next event is never delivered on this watch ...
    kube.put(OBJECTIVES, objective_object(NS, "after", POOL, 7))
    kube.compact()  # ... and resuming before it gets 410 Gone: list again
    await until(lambda: store.priority("after") == 7)
    assert watch.objectives.lists > lists and store.priority("late") == 1


async def test_discovery_watches_the_pools_objectives(kube: FakeKube, harness: Harness) -> None:
    kube.install(OBJECTIVES, REWRITES)
    kube.put(REWRITES, rewrite_object(NS, "rw", POOL, [(["m"], [("m-v2", 1)])]))
    await harness.discovery.start()
    await until(lambda: target(harness.datastore.objectives, "m") == "m-v2")


def test_mixed_weights_skip_unweighted_and_bad_objects_are_invalid() -> None:
    raw = rewrite_object(NS, "rw", POOL, [(["m"], [("w", 2), ("unweighted", None)])])
    info = rewrite_info(raw)
    assert info is not None and info.spec.rules[0].targets == ("w",)
    with pytest.raises(InvalidObject):
        rewrite_info({"metadata": {"name": "x"}, "spec": {"rules": []}})
    raw["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert rewrite_info(raw) is None
