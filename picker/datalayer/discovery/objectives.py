"""Watches the pool's ``InferenceObjective`` and ``InferenceModelRewrite`` objects.

Both CRDs (group ``inference.networking.x-k8s.io``, version ``v1alpha2``; vendored under
``deploy/crds/gateway-api-inference-extension/``) are optional: a cluster without them
answers the list with 404, which counts as "none" (``Reflector(missing_retry=...)``),
never as an error that stops picker.

Only objects whose ``spec.poolRef`` names picker's pool are kept: ``poolRef.name`` equal
to the pool's name and ``poolRef.group`` (default ``inference.networking.k8s.io``) equal
to the pool's group, in the pool's namespace, as the reference endpoint picker filters
them. An object whose poolRef moves to another pool is dropped; the API server does not
filter on ``spec`` fields, so this is done here, on decoded objects.

The reflectors write into the datastore's ``ObjectiveStore``; the request path only
reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.objects import POOL_GROUP, InvalidObject
from picker.datalayer.discovery.reflector import Backoff, Reflector
from picker.datalayer.objectives import ObjectiveStore, RewriteRule, RewriteSpec

log = logging.getLogger(__name__)

GROUP = "inference.networking.x-k8s.io"
VERSION = "v1alpha2"
MISSING_RETRY = 60.0  # seconds between looks for a CRD that is not installed
MAX_OBJECTS = 10_000


@dataclass(frozen=True, slots=True)
class PoolRef:
    name: str
    group: str


@dataclass(frozen=True, slots=True)
class ObjectiveInfo:
    pool: PoolRef
    priority: int  # unset counts as 0, as in the reference


@dataclass(frozen=True, slots=True)
class RewriteInfo:
    pool: PoolRef
    spec: RewriteSpec


def _spec(raw: Any) -> dict[str, Any]:
    spec = raw.get("spec") if isinstance(raw, dict) else None
    if not isinstance(spec, dict):
        raise InvalidObject("no spec")
    return spec


def _pool_ref(spec: dict[str, Any]) -> PoolRef:
    ref = spec.get("poolRef")
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        raise InvalidObject("no spec.poolRef.name")
    group = ref.get("group")
    return PoolRef(ref["name"], group if isinstance(group, str) else POOL_GROUP)


def _deleting(raw: dict[str, Any]) -> bool:
    meta = raw.get("metadata")
    return isinstance(meta, dict) and bool(meta.get("deletionTimestamp"))


def objective_info(raw: dict[str, Any]) -> ObjectiveInfo | None:
    """An InferenceObjective's pool and priority (None while it is being deleted)."""
    spec = _spec(raw)
    pool = _pool_ref(spec)
    priority = spec.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidObject(f"spec.priority {priority!r} is not an integer")
    return None if _deleting(raw) else ObjectiveInfo(pool, priority)


def rewrite_info(raw: dict[str, Any]) -> RewriteInfo | None:
    """An InferenceModelRewrite's pool and rules (None while it is being deleted).

    A rule matches the ``model.value`` of each of its ``matches`` exactly (the only match
    type the CRD has); with no ``matches`` it applies to any model. Targets without a
    weight share evenly when none has one; when only some have one, the others are
    never chosen (the reference's behaviour; the CRD asks for all or none).
    """
    spec = _spec(raw)
    pool = _pool_ref(spec)
    meta = raw.get("metadata") or {}
    name = meta.get("name", "") if isinstance(meta, dict) else ""
    rules: list[RewriteRule] = []
    for i, rule in enumerate(spec.get("rules") or ()):
        if not isinstance(rule, dict):
            raise InvalidObject(f"spec.rules[{i}] is not an object")
        matches: list[str] = []
        for m in rule.get("matches") or ():
            model = m.get("model") if isinstance(m, dict) else None
            value = model.get("value") if isinstance(model, dict) else None
            if not isinstance(value, str) or not value:
                raise InvalidObject(f"spec.rules[{i}].matches: no model.value")
            matches.append(value)
        raw_targets = [t for t in rule.get("targets") or () if isinstance(t, dict)]
        weighted = any(t.get("weight") is not None for t in raw_targets)
        targets: list[tuple[str, int]] = []
        for t in raw_targets:
            weight = t.get("weight")
            if weighted and weight is None:
                continue
            targets.append((t.get("modelRewrite") or "", 1 if weight is None else weight))
        try:
            rules.append(RewriteRule.build(matches, targets, name=str(name)))
        except ValueError as e:
            raise InvalidObject(f"spec.rules[{i}]: {e}") from None
    created = meta.get("creationTimestamp") if isinstance(meta, dict) else ""
    spec_out = RewriteSpec(str(name), str(created or ""), tuple(rules))
    return None if _deleting(raw) else RewriteInfo(pool, spec_out)


class ObjectiveWatch:
    """List+watch of both CRDs in ``namespace``, kept in ``store`` for ``pool``."""

    def __init__(
        self,
        client: KubeClient,
        store: ObjectiveStore,
        namespace: str,
        pool: str,
        pool_group: str = POOL_GROUP,
        *,
        watch_timeout: int = 300,
        missing_retry: float = MISSING_RETRY,
        backoff: Callable[[], Backoff] = Backoff,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.ref = PoolRef(pool, pool_group)
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}"
        self.objectives: Reflector[ObjectiveInfo | None] = Reflector(
            client,
            f"{base}/inferenceobjectives",
            objective_info,
            on_replace=self._objectives_listed,
            on_event=self._objective_event,
            max_objects=MAX_OBJECTS,
            watch_timeout=watch_timeout,
            backoff=backoff(),
            sleep=sleep,
            name=f"InferenceObjectives {namespace}",
            missing_retry=missing_retry,
        )
        self.rewrites: Reflector[RewriteInfo | None] = Reflector(
            client,
            f"{base}/inferencemodelrewrites",
            rewrite_info,
            on_replace=self._rewrites_listed,
            on_event=self._rewrite_event,
            max_objects=MAX_OBJECTS,
            watch_timeout=watch_timeout,
            backoff=backoff(),
            sleep=sleep,
            name=f"InferenceModelRewrites {namespace}",
            missing_retry=missing_retry,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.objectives.run(), name="discovery-objectives"),
            asyncio.create_task(self.rewrites.run(), name="discovery-rewrites"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def synced(self) -> None:
        await self.objectives.synced.wait()
        await self.rewrites.synced.wait()

    def _ours(self, info: ObjectiveInfo | RewriteInfo | None) -> bool:
        return info is not None and info.pool == self.ref

    def _objectives_listed(self, objects: dict[str, ObjectiveInfo | None]) -> None:
        self.store.set_objectives(
            {name: o.priority for name, o in objects.items() if o is not None and self._ours(o)}
        )

    def _objective_event(self, kind: str, name: str, info: ObjectiveInfo | None) -> None:
        if info is not None and self._ours(info):
            self.store.put_objective(name, info.priority)
        else:
            self.store.delete_objective(name)

    def _rewrites_listed(self, objects: dict[str, RewriteInfo | None]) -> None:
        self.store.set_rewrites(r.spec for r in objects.values() if r is not None and self._ours(r))

    def _rewrite_event(self, kind: str, name: str, info: RewriteInfo | None) -> None:
        if info is not None and self._ours(info):
            self.store.put_rewrite(info.spec)
        else:
            self.store.delete_rewrite(name)
