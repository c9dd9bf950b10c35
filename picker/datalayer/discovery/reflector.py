"""List, then watch from the list's resourceVersion: a local copy of a set of objects.

The client-go reflector's loop, on asyncio:

* list (paginated) → replace the copy → ``on_replace(objects)``; the version of the
  list is where the watch starts;
* watch → ``on_event(type, name, obj)`` per ADDED/MODIFIED/DELETED; each event and
  each BOOKMARK (asked for with ``allowWatchBookmarks``) moves the version on, so a
  watch the server ends (``timeoutSeconds``) or a dropped connection resumes where it
  stopped without listing again;
* 410 Gone (an ``ERROR`` event or an HTTP 410: the version was compacted away) → list
  again at once;
* any other failure (refused, reset, 5xx, 403, a malformed or oversized answer) → wait
  with exponential backoff and full jitter (``Backoff``), then resume the watch, or list
  again when the failure may have cost an event (malformed or oversized answers).

An optional resource (``missing_retry`` set: a CRD that may not be installed) that
answers a list with 404 counts as an empty, synced list; it is listed again every
``missing_retry`` seconds, so a CRD installed later is picked up.

At most ``max_objects`` objects are kept; more are ignored, with an error logged once per
list, so a huge or hostile namespace costs bounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from picker.datalayer.discovery.client import ApiError, BadStream, Gone, KubeClient, KubeError
from picker.datalayer.discovery.objects import InvalidObject, object_name, resource_version

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in
    [0, min(cap, base * 2**n)] (AWS's "full jitter"), at least ``floor``."""

    base: float = 0.2
    cap: float = 30.0
    floor: float = 0.05
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        return max(self.floor, self.rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0


class Reflector(Generic[T]):
    """Keeps ``objects`` (name → decoded object) equal to the server's, see the module doc.

    ``decode`` turns a raw object into what is kept (raise ``InvalidObject`` to skip it).
    ``sleep`` is how backoff waits (tests pass their own).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        decode: Callable[[dict[str, Any]], T],
        *,
        on_replace: Callable[[dict[str, T]], None],
        on_event: Callable[[str, str, T | None], None],
        label_selector: str = "",
        field_selector: str = "",
        max_objects: int = 10_000,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        name: str = "",
        missing_retry: float | None = None,
    ) -> None:
        self.client = client
        self.path = path
        self.decode = decode
        self.on_replace = on_replace
        self.on_event = on_event
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.max_objects = max_objects
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self.name = name or path
        self.missing_retry = missing_retry
        self.missing = False  # the last list found no such resource (404)
        self.objects: dict[str, T] = {}
        self.version = ""
        self.synced = asyncio.Event()  # set after the first successful list
        # Counters, for tests and logs.
        self.lists = 0
        self.watches = 0
        self.errors = 0
        self.last_error = ""

    async def run(self) -> None:
        """Runs until cancelled."""
        relist = True
        while True:
            try:
                if relist:
                    await self._list()
                    relist = False
                await self._watch()
                self.backoff.reset()  # the server ended the watch: resume it at once
            except Gone as e:
                log.info("%s: %s; listing again", self.name, e)
                relist = True
            except ApiError as e:
                if e.status != 404 or self.missing_retry is None:
                    await self._failed(e)
                elif relist:
                    await self._missing()
                else:
                    relist = True  # the resource went away while watched: list again
            except KubeError as e:
                relist = relist or isinstance(e, BadStream)
                await self._failed(e)

    async def _failed(self, e: KubeError) -> None:
        self.errors += 1
        self.last_error = str(e)
        # A malformed or oversized event may have been lost: the caller lists again.
        # After a dropped connection the watch resumes from the last version seen.
        delay = self.backoff.next()
        log.warning("%s: %s; retrying in %.2f s", self.name, e, delay)
        await self._sleep(delay)

    async def _missing(self) -> None:
        """The optional resource does not exist: nothing to keep, look again later."""
        assert self.missing_retry is not None
        if not self.missing:
            log.info("%s: not installed (404); looking again every %.0f s",
                     self.name, self.missing_retry)  # fmt: skip
        self.missing = True
        self.objects = {}
        self.on_replace({})
        self.synced.set()
        await self._sleep(self.missing_retry)

    async def _list(self) -> None:
        objects: dict[str, T] = {}
        version = ""
        dropped = 0
        async for items, page_version in self.client.list_pages(
            self.path, label_selector=self.label_selector, field_selector=self.field_selector
        ):
            version = page_version
            for raw in items:
                if len(objects) >= self.max_objects:
                    dropped += 1
                    continue
                decoded = self._decode(raw)
                if decoded is not None:
                    objects[decoded[0]] = decoded[1]
        if dropped:
            log.error(
                "%s: %d objects over the limit of %d ignored", self.name, dropped, self.max_objects
            )
        self.lists += 1
        self.missing = False
        self.objects = objects
        self.version = version
        self.backoff.reset()
        self.on_replace(dict(objects))
        self.synced.set()

    def _decode(self, raw: Any) -> tuple[str, T] | None:
        try:
            return object_name(raw), self.decode(raw)
        except InvalidObject as e:
            log.warning("%s: skipping an object: %s", self.name, e)
            return None

    async def _watch(self) -> None:
        self.watches += 1
        async for ev in self.client.watch(
            self.path,
            resource_version=self.version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=self.watch_timeout,
        ):
            rv = resource_version(ev.object)
            if ev.type == "BOOKMARK":
                if rv:
                    self.version = rv
                continue
            self.backoff.reset()
            decoded = self._decode(ev.object)
            if rv:
                self.version = rv
            if decoded is None:
                continue
            name, obj = decoded
            if ev.type == "DELETED":
                if self.objects.pop(name, None) is not None:
                    self.on_event("DELETED", name, None)
                continue
            if name not in self.objects and len(self.objects) >= self.max_objects:
                log.error("%s: over %d objects; ignoring %s", self.name, self.max_objects, name)
                continue
            self.objects[name] = obj
            self.on_event(ev.type, name, obj)
