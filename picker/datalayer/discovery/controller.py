"""Discovery: keeps one datastore pool equal to the cluster's endpoints.

Two modes, as the reference endpoint picker has:

* **InferencePool** (``--pool-name``): watch the pool (a list+watch with the field
  selector ``metadata.name=<name>``) and, once it exists, the pods of its namespace that
  its ``selector`` matches. Endpoints are the Ready pods' ``PodIP:targetPort`` (see
  ``objects``). A changed selector lists and watches the pods again with the new one,
  which replaces the old pod set in one step once listed (the old set serves until
  then: never an empty pool in between); changed ``targetPorts`` recompute every
  endpoint from the watched pods (the watch cache is the server's state, as the
  reference's informer cache is). A deleted pool (or one being deleted) empties the
  datastore pool and stops the pod watch until the pool is back.
* **selector only** (``--endpoint-selector`` + ``--endpoint-target-ports``): the pods
  the selector matches, on those ports; no InferencePool.

In pool mode the pool's ``InferenceObjective`` and ``InferenceModelRewrite`` objects are
watched too (``objectives``; optional CRDs), into the datastore's ``ObjectiveStore``.

``synced`` is set once the pool (in pool mode) and its pods have been listed;
``ready`` is true while that holds (false again while the pool is missing), and
``on_ready`` hears each change. Everything runs on the event loop; datastore updates
are synchronous, so once a pod's change has been read off the watch no later request is
routed by the old state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from picker.datalayer.datastore import Datastore, PodRef
from picker.datalayer.discovery.client import KubeClient
from picker.datalayer.discovery.objectives import ObjectiveWatch
from picker.datalayer.discovery.objects import (
    POOL_GROUP,
    POOL_VERSIONS,
    PodInfo,
    PoolSpec,
    pod_info,
    pool_spec,
)
from picker.datalayer.discovery.reflector import Backoff, Reflector
from picker.datalayer.discovery.selector import Selector

log = logging.getLogger(__name__)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class Discovery:
    """Fills datastore pool ``pool`` from the cluster; ``start``, then ``stop``."""

    def __init__(
        self,
        datastore: Datastore,
        pool: str,
        client: KubeClient,
        namespace: str,
        *,
        inference_pool: str | None = None,
        pool_group: str = POOL_GROUP,
        selector: Selector | None = None,
        target_ports: tuple[int, ...] = (),
        max_pods: int = 10_000,
        watch_timeout: int = 300,
        on_ready: Callable[[bool], None] | None = None,
        backoff: Callable[[], Backoff] = Backoff,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        if not _DNS_LABEL.match(namespace):
            raise ValueError(f"namespace {namespace!r} is not a valid Kubernetes namespace")
        if inference_pool is not None:
            if not _DNS_NAME.match(inference_pool):
                raise ValueError(f"pool name {inference_pool!r} is not a valid object name")
            if pool_group not in POOL_VERSIONS:
                raise ValueError(
                    f"pool group {pool_group!r} is not supported; known: {sorted(POOL_VERSIONS)}"
                )
        elif selector is None or selector.empty or not target_ports:
            raise ValueError("discovery needs an InferencePool name, or a selector and ports")
        self.datastore = datastore
        self.pool = pool
        self.client = client
        self.namespace = namespace
        self.inference_pool = inference_pool
        self.pool_group = pool_group
        self.max_pods = max_pods
        self.watch_timeout = watch_timeout
        self.on_ready = on_ready
        self._backoff = backoff
        self._sleep = sleep
        # The pool's current selector and ports (fixed in selector-only mode).
        self.spec: PoolSpec | None = (
            None if inference_pool else PoolSpec("", selector or Selector(()), target_ports)
        )
        self.synced = asyncio.Event()
        self.ready = False
        self.pool_reflector: Reflector[PoolSpec] | None = None
        self.pod_reflector: Reflector[PodInfo] | None = None
        self._pool_task: asyncio.Task[None] | None = None
        self._pod_task: asyncio.Task[None] | None = None
        self._selector = self.spec.selector if self.spec is not None else Selector(())
        # A watch for a changed selector, until it has listed and takes over.
        self._next: Reflector[PodInfo] | None = None
        self._next_task: asyncio.Task[None] | None = None
        self._next_selector = Selector(())
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled pod watches winding down
        self._by_pod: dict[str, tuple[str, ...]] = {}  # pod name → its endpoints
        self._refs: Counter[str] = Counter()  # address → pods claiming it
        # The pool's InferenceObjectives and InferenceModelRewrites (optional CRDs).
        self.objectives: ObjectiveWatch | None = None
        if inference_pool is not None:
            self.objectives = ObjectiveWatch(
                client,
                datastore.objectives,
                namespace,
                inference_pool,
                pool_group,
                watch_timeout=watch_timeout,
                backoff=backoff,
            )

    @property
    def pods_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    @property
    def pool_path(self) -> str:
        version = POOL_VERSIONS[self.pool_group]
        return f"/apis/{self.pool_group}/{version}/namespaces/{self.namespace}/inferencepools"

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.inference_pool is None:
            assert self.spec is not None
            self._start_pods(self.spec.selector)
            return
        self.pool_reflector = Reflector(
            self.client,
            self.pool_path,
            pool_spec,
            on_replace=self._pool_listed,
            on_event=self._pool_event,
            field_selector=f"metadata.name={self.inference_pool}",
            max_objects=1,
            watch_timeout=self.watch_timeout,
            backoff=self._backoff(),
            sleep=self._sleep,
            name=f"InferencePool {self.namespace}/{self.inference_pool}",
        )
        self._pool_task = asyncio.create_task(self.pool_reflector.run(), name="discovery-pool")
        if self.objectives is not None:
            self.objectives.start()

    async def stop(self) -> None:
        tasks = [t for t in (self._pool_task, self._pod_task, self._next_task) if t is not None]
        tasks += self._stopping
        self._pool_task = self._pod_task = self._next_task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.objectives is not None:
            await self.objectives.stop()
        await self.client.close()

    # --- the pool ---------------------------------------------------------------------

    def _pool_listed(self, objects: dict[str, PoolSpec]) -> None:
        spec = objects.get(self.inference_pool or "")
        if spec is None:
            log.warning(
                "InferencePool %s/%s (%s) not found; no endpoints until it exists",
                self.namespace,
                self.inference_pool,
                self.pool_group,
            )
        self._set_pool(spec)

    def _pool_event(self, kind: str, name: str, spec: PoolSpec | None) -> None:
        if name == self.inference_pool:
            self._set_pool(spec)

    def _set_pool(self, spec: PoolSpec | None) -> None:
        if spec is not None and spec.deleting:
            spec = None
        old = self.spec
        if spec is None:
            if old is not None:
                log.warning("InferencePool %s/%s is gone: no endpoints", self.namespace, old.name)
            self.spec = None
            self._stop_pods()
            self._replace({})
            self._set_ready(False)
            return
        self.spec = spec
        if old is None or old.selector != spec.selector:
            log.info(
                "InferencePool %s/%s: selector %s, target ports %s",
                self.namespace,
                spec.name,
                spec.selector,
                ",".join(map(str, spec.target_ports)),
            )
            self._start_pods(spec.selector)
        elif old.target_ports != spec.target_ports:
            log.info(
                "InferencePool %s/%s: target ports %s",
                self.namespace,
                spec.name,
                ",".join(map(str, spec.target_ports)),
            )
            pods = self.pod_reflector.objects if self.pod_reflector is not None else {}
            self._replace(pods)

    # --- the pods ---------------------------------------------------------------------

    def _start_pods(self, selector: Selector) -> None:
        """Lists and watches the pods ``selector`` matches. With a watch already running
        (the pool's selector changed), the new one takes over once it has listed: until
        then the old pod set keeps serving, so a switch to disjoint pods never leaves
        the pool empty in between."""
        reflector: Reflector[PodInfo] = Reflector(
            self.client,
            self.pods_path,
            pod_info,
            on_replace=lambda objs: self._pods_listed(reflector, objs),
            on_event=lambda kind, name, pod: self._pod_event(reflector, name, pod),
            label_selector=str(selector),
            max_objects=self.max_pods,
            watch_timeout=self.watch_timeout,
            backoff=self._backoff(),
            sleep=self._sleep,
            name=f"pods {self.namespace} ({selector})",
        )
        task = asyncio.create_task(reflector.run(), name=f"discovery-pods {selector}")
        self._cancel(self._next_task)  # an earlier switch that has not listed yet
        if self.pod_reflector is None:
            self.pod_reflector, self._selector, self._pod_task = reflector, selector, task
            self._next, self._next_task = None, None
        else:
            self._next, self._next_selector, self._next_task = reflector, selector, task

    def _cancel(self, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            task.cancel()  # its callbacks never run again (they check their reflector too)
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _stop_pods(self) -> None:
        self._cancel(self._pod_task)
        self._cancel(self._next_task)
        self._pod_task = self._next_task = None
        self.pod_reflector = self._next = None

    def _pods_listed(self, reflector: Reflector[PodInfo], pods: dict[str, PodInfo]) -> None:
        if reflector is self._next:  # the new selector's pods are known: switch over
            self._cancel(self._pod_task)
            self.pod_reflector, self._selector, self._pod_task = (
                reflector,
                self._next_selector,
                self._next_task,
            )
            self._next, self._next_task = None, None
        elif reflector is not self.pod_reflector:
            return
        self._replace(pods)
        log.info(
            "discovery: %d pods match, %d endpoints in pool %s",
            len(pods),
            len(self._refs),
            self.pool,
        )
        self.synced.set()
        self._set_ready(True)

    def _pod_event(self, reflector: Reflector[PodInfo], name: str, pod: PodInfo | None) -> None:
        if reflector is not self.pod_reflector:
            return
        new = self._endpoints_of(pod)
        old = self._by_pod.get(name, ())
        if new == old:
            return
        if new:
            self._by_pod[name] = new
        else:
            self._by_pod.pop(name, None)
        self._apply(old, new, self._pod_refs(name, pod))

    def _pod_refs(self, name: str, pod: PodInfo | None) -> dict[str, PodRef]:
        """Address → (pod name, namespace, port index): the endpoints' metric labels."""
        spec = self.spec
        if pod is None or spec is None:
            return {}
        ns = self.namespace
        return {a: (name, ns, i) for a, i in pod.ranks(spec.target_ports).items()}

    def _endpoints_of(self, pod: PodInfo | None) -> tuple[str, ...]:
        spec = self.spec
        if pod is None or spec is None or not self._selector.matches(pod.labels):
            return ()
        return pod.endpoints(spec.target_ports)

    def _replace(self, pods: dict[str, PodInfo]) -> None:
        """Makes the pool's endpoints those of ``pods`` (after a list or a spec change)."""
        by_pod: dict[str, tuple[str, ...]] = {}
        refs_of: dict[str, PodRef] = {}
        for name, pod in pods.items():
            eps = self._endpoints_of(pod)
            if eps:
                by_pod[name] = eps
                for a, ref in self._pod_refs(name, pod).items():
                    refs_of.setdefault(a, ref)
        refs: Counter[str] = Counter()
        for eps in by_pod.values():
            refs.update(eps)
        self._by_pod, self._refs = by_pod, refs
        self.datastore.set_endpoints(self.pool, list(refs), pods=refs_of)

    def _apply(
        self, old: tuple[str, ...], new: tuple[str, ...], pods: dict[str, PodRef] | None = None
    ) -> None:
        refs = self._refs
        add: list[str] = []
        remove: list[str] = []
        for a in old:
            if a in new:
                continue
            refs[a] -= 1
            if refs[a] <= 0:
                del refs[a]
                remove.append(a)
        for a in new:
            if a in old:
                continue
            refs[a] += 1
            if refs[a] == 1:
                add.append(a)
        if add or remove:
            self.datastore.update_endpoints(self.pool, add=add, remove=remove, pods=pods)

    def _set_ready(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if self.on_ready is not None:
            self.on_ready(ready)
