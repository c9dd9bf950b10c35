"""The plugin interfaces of the scheduler.

A scheduling cycle for one request (``Profile.schedule``):

    candidates = pool's ready endpoints
    for f in filters:    candidates = f.filter(request, candidates)
    for p in producers:  p.produce(request, candidates)      # typed request data
    totals = sum of weight_i * scorer_i.score(request, candidates)   (each in [0, 1])
    ranked = picker.pick(request, candidates, totals)        (primary first, then fallbacks)
    for o in plugins:    o.on_pick(request, ranked[0])       # after the director commits

Every plugin is built the same way, by a factory ``(name, params, handle) -> Plugin``
(a plugin class is its own factory): ``name`` is the instance name from the config,
``params`` its parameters (read them with ``params.number(...)`` etc.; any key left
unread is an error naming the plugin and the key), ``handle`` the shared services.

Hooks are declared here, with no-op defaults; a profile calls only the hooks a plugin
overrides (decided once, when the profile is built):

* ``start``/``stop``: background work (e.g. subscribing to KV events);
* ``produce``: compute data for the request once, before any scorer (``DataProducer``);
* ``on_pick``/``on_done``: learn from decisions and outcomes;
* ``on_peer_pick``/``on_peer_done``: another picker replica sent a request to a pod,
  or its response ended (active-active replicas, ``picker.datalayer.peers``): learn
  from them as from own picks;
* ``on_endpoint_removed``: a pod left the datastore (discovery): forget what is kept
  about it, so per-pod state does not outlive the pod;
* ``response_headers``: headers to add to the client's response, given the endpoint the
  proxy reports served it (e.g. the conformance suite's served-endpoint echo).

Plugins never mutate endpoint state; scores are plain lists aligned with the candidates.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from picker.datalayer.datastore import Datastore, Endpoint
from picker.observability import Metrics
from picker.request.types import InferenceRequest

DEFAULT_CHARS_PER_TOKEN = 4.0


@dataclass
class TokenScale:
    """The model servers' tokens per token picker estimates from text
    (``chars_per_token``): learned by the latency model from the pods' prompt-token
    counters, read by whoever turns text into tokens (the prefix index's capacity)."""

    value: float = 1.0


@dataclass
class Handle:
    """Services shared by all plugins of one picker."""

    datastore: Datastore = field(default_factory=lambda: Datastore([]))
    metrics: Metrics = field(default_factory=Metrics)
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    rng: random.Random = field(default_factory=random.Random)
    token_scale: TokenScale = field(default_factory=TokenScale)


class Params:
    """A plugin's parameters, read strictly: each key is read once with its type.

    ``finish`` (called by the registry after the factory returns) raises on any key the
    plugin did not read, naming the plugin and the key.
    """

    def __init__(self, raw: Mapping[str, Any] | None = None, plugin: str = "") -> None:
        if raw is not None and not isinstance(raw, Mapping):
            raise ValueError(f"plugin {plugin!r}: parameters must be a mapping")
        self._raw = dict(raw or {})
        self._read: set[str] = set()
        self.plugin = plugin

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._raw.get(key)

    def _bad(self, key: str, what: str, value: Any) -> ValueError:
        return ValueError(
            f"plugin {self.plugin!r}: parameter {key!r} must be {what}, not {value!r}"
        )

    def number(self, key: str, default: float) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise self._bad(key, "a number", v)
        try:
            return float(v)
        except ValueError:
            raise self._bad(key, "a number", v) from None

    def integer(self, key: str, default: int) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not (
            isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
        ):
            raise self._bad(key, "an integer", v)
        return int(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise self._bad(key, "a string", v)
        return str(v)

    def mapping(self, key: str) -> dict[str, str]:
        """A string → string map (absent: empty)."""
        v = self._get(key)
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise self._bad(key, "a map", v)
        return {str(k): str(x) for k, x in v.items()}

    def raw(self, key: str) -> Any:
        """The value as configured (None when absent), for plugins that check it."""
        return self._get(key)

    def finish(self) -> None:
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            known = sorted(self._read)
            raise ValueError(
                f"plugin {self.plugin!r}: unknown parameter {unknown[0]!r}"
                + (f"; known: {known}" if known else "; it takes none")
            )


class Plugin:
    """Base of every scheduling plugin; see the module doc for the hooks."""

    type: ClassVar[str] = ""

    def __init__(
        self, name: str = "", params: Params | None = None, handle: Handle | None = None
    ) -> None:
        self.name = name or self.type

    async def start(self) -> None:
        """Starts background work (once a loop runs)."""

    async def stop(self) -> None:
        """Stops what ``start`` started."""

    def on_pick(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        """``request`` was sent to ``endpoint``."""

    def on_done(self, request: InferenceRequest, endpoint: Endpoint, ok: bool) -> None:
        """``request``'s response from ``endpoint`` ended (``ok``: status < 500)."""

    def on_peer_pick(self, endpoint: Endpoint, hashes: Sequence[int], tokens: int) -> None:
        """A peer replica sent a request to ``endpoint``: ``hashes`` are its prompt's
        blocks as the ``prefix`` plugin computes them (same layout), ``tokens`` its
        estimated uncached prompt tokens there (>= 1); 0 for a pick replayed to a new
        replica: the pod holds the prefix, but the request is long done (no load)."""

    def on_peer_done(self, endpoint: Endpoint, tokens: int) -> None:
        """A request a peer replica sent to ``endpoint`` ended (``tokens``: its estimated
        uncached prompt tokens)."""

    def on_endpoint_removed(self, endpoint: Endpoint) -> None:
        """``endpoint`` was removed from the datastore and will never be a candidate again
        (a pod coming back at its address is a new ``Endpoint``)."""

    def response_headers(
        self, request: InferenceRequest, served: str | None
    ) -> Sequence[tuple[str, str]]:
        """Headers to set on the response; ``served`` is the proxy's served-endpoint
        report (``x-gateway-destination-endpoint-served``), None when it sent none."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DataProducer(Plugin):
    """Computes typed request data once, before scoring (e.g. ``request.prefix``).

    Producers run by ``order`` (then declaration): one that reads another's output
    (the latency model reads the prefix match) has a higher ``order``.
    """

    order: ClassVar[int] = 0

    def produce(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        raise NotImplementedError


class Filter(Plugin):
    """Drops candidates that must not serve the request. May return the input list."""

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    """Scores each candidate in [0, 1], higher is better; one float per candidate."""

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        raise NotImplementedError


class Picker(Plugin):
    """Orders the candidates by preference (primary first); may return fewer.

    ``fallbacks`` (how many endpoints after the primary to return) is set by the profile.
    """

    fallbacks: int = 0

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        raise NotImplementedError


PluginFactory = Callable[[str, Params, Handle], Plugin]


def overrides(plugin: Plugin, hook: str) -> bool:
    """True when ``plugin``'s class implements ``hook`` itself (not the no-op default)."""
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)
