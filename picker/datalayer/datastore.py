"""Endpoint state: what each model-server pod is doing, as far as picker knows.

Writers, never contending (one asyncio loop):
- background scrapers replace ``Endpoint.metrics`` with a new immutable snapshot;
- the request path increments/decrements ``Endpoint.inflight`` (picker's own count of
  requests sent to the pod and not yet finished), which fills the gap between scrapes;
  with peer replicas (``peers``) their requests are counted in as well, so the counts
  are the gateway's, not one replica's (``picker.datalayer.peers`` adds and removes
  exactly what each peer reported);
- discovery (``picker.datalayer.discovery``) adds and removes endpoints of a pool at run
  time (``Datastore.set_endpoints``). A pool's ``endpoints`` list is replaced, never
  changed in place, so a reader holding the old list keeps a consistent one. A removed
  ``Endpoint`` is marked ``removed`` (and not healthy) and never comes back: a pod that
  returns at the same address gets a new object. Listeners (``add_listener``) hear of
  every change once it is made: scrapers start and stop, plugins forget removed pods.
The hot path only reads the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from picker.datalayer.objectives import ObjectiveStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One scrape of a model server's ``/metrics``, reduced to what scheduling needs."""

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    running_adapters: frozenset[str] = frozenset()
    waiting_adapters: frozenset[str] = frozenset()
    max_lora: int = 0
    block_size: int = 0
    num_blocks: int = 0
    # Counters since the pod started (0 when it does not export them): seconds spent in
    # prefill, prompt tokens computed (not cache hits), requests prefilled; seconds queued;
    # time to first token (seconds, requests); inter-token latency (seconds, intervals).
    prefill_seconds: float = 0.0
    prefill_tokens: float = 0.0
    prefill_count: float = 0.0
    queue_seconds: float = 0.0
    ttft_seconds: float = 0.0
    ttft_count: float = 0.0
    itl_seconds: float = 0.0
    itl_count: float = 0.0
    prompt_tokens: float = 0.0  # prompt tokens of finished requests (sum), and their count
    prompt_count: float = 0.0
    scraped_at: float = 0.0  # time.monotonic() of the scrape; 0 = never scraped


EMPTY_METRICS = EndpointMetrics()


@dataclass(slots=True, eq=False)
class Endpoint:
    """A model-server pod picker can route to, addressed as ``ip:port``."""

    address: str
    pool: str = "default"
    metrics: EndpointMetrics = EMPTY_METRICS
    inflight: int = 0
    # Estimated prompt tokens still to prefill in those requests (uncached part only).
    inflight_tokens: int = 0
    # Requests sent since the last scrape (reset by the scraper when it publishes a new
    # snapshot): the part of ``inflight`` the scraped queue cannot know about yet.
    sent_since_scrape: int = 0
    healthy: bool = True  # False while metrics are stale or scrapes fail
    scrape_failures: int = 0
    removed: bool = False  # taken out of the datastore (discovery); never routed again
    # The pod behind the endpoint (discovery sets them; empty with static endpoints) and
    # the index of its port in the pool's targetPorts: metric labels, as the EPP's.
    pod_name: str = ""
    namespace: str = ""
    rank: int = 0

    @property
    def metric_name(self) -> str:
        """The ``model_server_pod`` label: ``<pod>-rank-<i>`` as the EPP names a pod's
        i-th target port, or the address when the pod is unknown (static endpoints)."""
        return f"{self.pod_name}-rank-{self.rank}" if self.pod_name else self.address

    @property
    def port_label(self) -> str:
        return self.address.rsplit(":", 1)[1]

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def queue(self) -> int:
        """Requests waiting on the pod: the scraped queue plus what picker sent since.

        Between two scrapes the scraped queue is frozen; the requests picker itself sent
        in the meantime are the part it cannot see yet, so a burst spreads instead of
        herding. Those of them that already finished are no load at all, hence the
        ``min``. This is the one definition of queue depth: scorers and saturation use it.
        """
        return self.metrics.waiting + min(self.sent_since_scrape, self.inflight)

    @property
    def load(self) -> int:
        """Requests the pod is busy with: scraped running plus ``queue``, at least what
        picker itself has in flight there."""
        return max(self.inflight, self.metrics.running + self.queue)

    def __repr__(self) -> str:
        return f"Endpoint({self.address})"


@dataclass(slots=True, eq=False)
class Pool:
    """A set of interchangeable endpoints serving the same base model(s).

    ``models`` are the model IDs routed here (``*`` matches any); ``adapters`` are LoRA
    adapter names the pool serves (a request naming one is routed here too).
    """

    name: str
    endpoints: list[Endpoint]
    models: frozenset[str] = frozenset({"*"})
    adapters: frozenset[str] = frozenset()
    model_server: str = "vllm"

    def ready(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.healthy]


PodRef = tuple[str, str, int]
"""The pod behind an endpoint: (pod name, namespace, index of the port in targetPorts)."""

EndpointListener = Callable[[Sequence[Endpoint], Sequence[Endpoint]], None]
"""Called with (added, removed) endpoints after each change of the datastore."""


class Datastore:
    """All pools and endpoints; maps a model ID to its pool.

    Static configuration builds it once; discovery changes a pool's endpoints at run
    time with ``set_endpoints`` (or ``add_pool`` for a pool it finds).
    """

    def __init__(self, pools: list[Pool], objectives: ObjectiveStore | None = None) -> None:
        self.pools: list[Pool] = []
        # Objectives and model rewrites (static config, and the cluster's CRDs).
        self.objectives = objectives if objectives is not None else ObjectiveStore()
        self._by_model: dict[str, Pool] = {}
        self._wildcard: Pool | None = None
        self.by_address: dict[str, Endpoint] = {}
        self._listeners: list[EndpointListener] = []
        for pool in pools:
            self._index_pool(pool)

    def _index_pool(self, pool: Pool) -> None:
        self.pools.append(pool)
        for model in pool.models | pool.adapters:
            if model == "*":
                self._wildcard = self._wildcard or pool
            else:
                self._by_model.setdefault(model, pool)
        for ep in pool.endpoints:
            self.by_address[ep.address] = ep

    def pool_for(self, model: str) -> Pool | None:
        """The pool serving ``model``, or None when no pool does (→ 404)."""
        pool = self._by_model.get(model)
        if pool is not None:
            return pool
        return self._wildcard

    def pool(self, name: str) -> Pool | None:
        for p in self.pools:
            if p.name == name:
                return p
        return None

    def endpoints(self) -> list[Endpoint]:
        return list(self.by_address.values())

    # --- run-time changes (discovery) ---------------------------------------------------

    def add_listener(self, listener: EndpointListener) -> None:
        """``listener(added, removed)`` runs after every change (on the loop's thread)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EndpointListener) -> None:
        self._listeners.remove(listener)

    def add_pool(self, pool: Pool) -> None:
        """Adds a pool (with its endpoints, if any) at run time."""
        if self.pool(pool.name) is not None:
            raise ValueError(f"pool {pool.name!r} exists already")
        fresh = [ep for ep in pool.endpoints if ep.address not in self.by_address]
        pool.endpoints = fresh
        self._index_pool(pool)
        if fresh:
            self._notify(fresh, [])

    def set_endpoints(
        self,
        pool_name: str,
        addresses: Iterable[str],
        pods: Mapping[str, PodRef] | None = None,
    ) -> tuple[list[Endpoint], list[Endpoint]]:
        """Makes ``pool_name``'s endpoints exactly ``addresses``: endpoints already there
        are kept as they are (metrics, in-flight counts), new ones are added, the others
        removed. Returns (added, removed); listeners hear of them once."""
        pool = self._pool(pool_name)
        wanted = dict.fromkeys(addresses)
        gone = [ep.address for ep in pool.endpoints if ep.address not in wanted]
        return self.update_endpoints(pool_name, add=wanted, remove=gone, pods=pods)

    def update_endpoints(
        self,
        pool_name: str,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        pods: Mapping[str, PodRef] | None = None,
    ) -> tuple[list[Endpoint], list[Endpoint]]:
        """Adds and removes endpoints of ``pool_name`` (addresses it already has, or does
        not have, are left alone). Returns (added, removed); listeners hear of them once.
        An address another pool has is not added (an address belongs to one pool).
        ``pods`` names the pod of an added address (pod name, namespace, port index)."""
        pool = self._pool(pool_name)
        current = {ep.address: ep for ep in pool.endpoints}
        removed: list[Endpoint] = []
        for address in remove:
            ep = current.pop(address, None)
            if ep is not None:
                removed.append(ep)
        added: list[Endpoint] = []
        for address in add:
            if address in current:
                continue
            other = self.by_address.get(address)
            if other is not None and not (other.pool == pool_name and other in removed):
                log.warning(
                    "endpoint %s is in pool %s already; not added to %s",
                    address,
                    other.pool,
                    pool_name,
                )
                continue
            ep = current[address] = Endpoint(address=address, pool=pool_name)
            ref = pods.get(address) if pods else None
            if ref is not None:
                ep.pod_name, ep.namespace, ep.rank = ref
            added.append(ep)
        if not added and not removed:
            return [], []
        for ep in removed:
            ep.removed = True
            ep.healthy = False
            if self.by_address.get(ep.address) is ep:
                del self.by_address[ep.address]
        for ep in added:
            self.by_address[ep.address] = ep
        pool.endpoints = list(current.values())  # a new list: readers of the old one are fine
        self._notify(added, removed)
        return added, removed

    def _pool(self, name: str) -> Pool:
        pool = self.pool(name)
        if pool is None:
            raise KeyError(f"no pool {name!r}")
        return pool

    def _notify(self, added: Sequence[Endpoint], removed: Sequence[Endpoint]) -> None:
        for listener in list(self._listeners):
            try:
                listener(added, removed)
            except Exception:  # one listener's bug must not stop the others
                log.exception("datastore listener %r failed", listener)
