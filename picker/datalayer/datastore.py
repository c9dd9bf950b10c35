"""Endpoint state: what each model-server pod is doing, as far as picker knows.

Two writers, never contending (one asyncio loop):
- background scrapers replace ``Endpoint.metrics`` with a new immutable snapshot;
- the request path increments/decrements ``Endpoint.inflight`` (picker's own count of
  requests sent to the pod and not yet finished), which fills the gap between scrapes.
The hot path only reads the rest.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class Datastore:
    """All pools and endpoints; maps a model ID to its pool."""

    def __init__(self, pools: list[Pool]) -> None:
        self.pools = pools
        self._by_model: dict[str, Pool] = {}
        self._wildcard: Pool | None = None
        self.by_address: dict[str, Endpoint] = {}
        for pool in pools:
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

    def endpoints(self) -> list[Endpoint]:
        return list(self.by_address.values())
