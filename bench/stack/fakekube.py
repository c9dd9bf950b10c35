"""A fake Kubernetes API server, over real HTTP on loopback, for tests and benchmarks.

No kube-apiserver can run here, so discovery is tested against this: an aiohttp server
that speaks the API's wire protocol for two resources, namespaced pods (core ``v1``)
and ``inferencepools`` (``inference.networking.k8s.io/v1``):

* ``GET .../pods`` (and ``/apis/{group}/{version}/namespaces/{ns}/inferencepools``):
  a list with ``metadata.resourceVersion``, ``labelSelector`` and ``fieldSelector``
  (``metadata.name``, ``metadata.namespace``), pagination with ``limit`` and
  ``continue`` (a consistent snapshot; 410 once compacted);
* ``?watch=1&resourceVersion=N``: a chunked stream of JSON lines ``{"type", "object"}``
  (ADDED, MODIFIED, DELETED, and BOOKMARK with ``allowWatchBookmarks``), replaying the
  events after N from a bounded history. As the real API server does with a selector, a
  change that makes an object stop matching arrives as DELETED, one that makes it match
  as ADDED. N older than the history: an ``ERROR`` event with a 410 ``Status``
  (``gone_as_http``: HTTP 410 instead). ``timeoutSeconds`` ends the watch cleanly;
* ``GET`` of one object; 404 with a ``Status`` when it does not exist;
* an optional bearer token (401 without it).

Tests change the state through methods (``add_pod``, ``set_pod``, ``delete_pod``,
``set_pool``, ``delete_pool``); each change gets the next resourceVersion and reaches
every open watch. Failure injection: ``compact`` (forget the history: resuming watches
get 410), ``drop_watches`` (abort their connections), ``fail_next`` (answer the next
requests with an error status), ``send_raw`` (a raw line to every watch), ``bookmark``.
Everything runs on the caller's event loop; every request is logged in ``requests``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from bench.stack.kubeobjects import POOL_GROUP, field_selector, matches, pod_object, pool_object
from bench.stack.kubeobjects import status as status_object
from picker.datalayer.discovery.selector import Selector, parse

POOLS = (POOL_GROUP, "v1", "inferencepools")
OBJECTIVES = ("inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives")
REWRITES = ("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites")
PODS = ("", "v1", "pods")
Resource = tuple[str, str, str]  # group, version, plural


def go_bool(text: str) -> bool:
    """A query flag as the API server (Go's strconv.ParseBool) reads it."""
    return text in ("1", "t", "T", "true", "TRUE", "True")


@dataclass
class _Change:
    rv: int
    resource: Resource
    namespace: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass(eq=False)
class _Watch:
    resource: Resource
    namespace: str
    labels: Selector
    fields: dict[str, tuple[str, bool]]
    bookmarks: bool
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)


class FakeKube:
    """The fake API server; ``await start()`` gives its URL; ``await stop()``."""

    def __init__(
        self,
        *,
        history: int = 10_000,
        token: str | None = None,
        gone_as_http: bool = False,
        bookmark_interval: float | None = None,
    ) -> None:
        self.history_size = history
        self.token = token
        self.gone_as_http = gone_as_http
        self.bookmark_interval = bookmark_interval
        self.rv = 100
        self.compacted = self.rv  # events after this one are in the history
        self.objects: dict[Resource, dict[tuple[str, str], dict[str, Any]]] = {
            PODS: {},
            POOLS: {},
        }
        self.history: deque[_Change] = deque()
        self.watches: set[_Watch] = set()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.failures: deque[int] = deque()
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.url = ""

    # --- server -----------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Callable[[web.Application], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        """Listens (HTTPS with ``ssl_context``); ``extra`` may add routes (e.g. a
        benchmark's control endpoint)."""
        app = web.Application()
        if extra is not None:
            extra(app)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}", self._collection)
        app.router.add_get("/api/v1/namespaces/{ns}/{plural}/{name}", self._one)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}", self._collection)
        app.router.add_get("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._one)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://{host}:{bound[1]}"
        if self.bookmark_interval:
            self._ticker = asyncio.create_task(self._tick(self.bookmark_interval))
        return self.url

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for w in list(self.watches):
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tick(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.bookmark()

    # --- state changes (call on the server's loop) -------------------------------------

    def _commit(self, resource: Resource, ns: str, old: Any, new: Any) -> int:
        self.rv += 1
        store = self.objects[resource]
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self.rv)
            store[(ns, new["metadata"]["name"])] = new
        else:
            old = store.pop((ns, old["metadata"]["name"]))
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(self.rv)
        change = _Change(self.rv, resource, ns, old, new)
        self.history.append(change)
        while len(self.history) > self.history_size:
            self.compacted = self.history.popleft().rv
        for w in self.watches:
            line = self._event_line(w, change)
            if line is not None:
                w.queue.put_nowait(line)
        return self.rv

    def add_pod(
        self,
        ns: str,
        name: str,
        ip: str,
        labels: Mapping[str, str],
        *,
        ready: bool = True,
        annotations: Mapping[str, str] | None = None,
        ports: tuple[int, ...] = (8000,),
    ) -> dict[str, Any]:
        pod = pod_object(ns, name, ip, labels, ready, annotations, ports, next(self._ids))
        old = self.objects[PODS].get((ns, name))
        self._commit(PODS, ns, copy.deepcopy(old) if old else None, pod)
        return pod

    def set_pod(
        self,
        ns: str,
        name: str,
        *,
        ready: bool | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        deleting: bool = False,
        ip: str | None = None,
    ) -> None:
        old = self.objects[PODS][(ns, name)]
        pod = copy.deepcopy(old)
        meta, st = pod["metadata"], pod["status"]
        if ready is not None:
            for cond in st["conditions"]:
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = "True" if ready else "False"
        if labels is not None:
            meta["labels"] = dict(labels)
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
            meta["deletionGracePeriodSeconds"] = 30
        if ip is not None:
            st["podIP"] = ip
            st["podIPs"] = [{"ip": ip}]
        self._commit(PODS, ns, copy.deepcopy(old), pod)

    def delete_pod(self, ns: str, name: str) -> None:
        self._commit(PODS, ns, self.objects[PODS][(ns, name)], None)

    def set_pool(
        self,
        ns: str,
        name: str,
        match_labels: Mapping[str, str],
        target_ports: tuple[int, ...] = (8000,),
        *,
        deleting: bool = False,
    ) -> None:
        old = self.objects[POOLS].get((ns, name))
        pool = pool_object(ns, name, match_labels, target_ports, next(self._ids))
        if old is not None:
            pool["metadata"]["uid"] = old["metadata"]["uid"]
            pool["metadata"]["generation"] = old["metadata"]["generation"] + 1
        if deleting:
            pool["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self._commit(POOLS, ns, copy.deepcopy(old) if old else None, pool)

    def delete_pool(self, ns: str, name: str) -> None:
        self._commit(POOLS, ns, self.objects[POOLS][(ns, name)], None)

    def install(self, *resources: Resource) -> None:
        """Serves these resources from now on (a CRD installed); until then: 404."""
        for res in resources:
            self.objects.setdefault(res, {})

    def put(self, resource: Resource, obj: dict[str, Any]) -> None:
        """Creates or replaces a namespaced object of an installed resource."""
        meta = obj["metadata"]
        old = self.objects[resource].get((meta["namespace"], meta["name"]))
        self._commit(resource, meta["namespace"], copy.deepcopy(old) if old else None, obj)

    def delete(self, resource: Resource, ns: str, name: str) -> None:
        self._commit(resource, ns, self.objects[resource][(ns, name)], None)

    # --- failure injection ------------------------------------------------------------

    def compact(self) -> None:
        """Forgets the history: a watch resuming from before now gets 410 Gone."""
        self.history.clear()
        self.compacted = self.rv
        self._snapshots.clear()

    def drop_watches(self) -> int:
        """Aborts every open watch connection (no clean end of stream)."""
        n = len(self.watches)
        for w in self.watches:
            w.queue.put_nowait(b"DROP")
        return n

    def fail_next(self, *statuses: int) -> None:
        """The next requests (lists, gets, watches) get these error statuses, in order."""
        self.failures.extend(statuses)

    def send_raw(self, line: bytes) -> None:
        for w in self.watches:
            w.queue.put_nowait(line)

    def bookmark(self) -> None:
        for w in self.watches:
            if w.bookmarks:
                w.queue.put_nowait(self._bookmark_line(w.resource))

    # --- handlers ---------------------------------------------------------------------

    def _resource(self, request: web.Request) -> Resource | None:
        info = request.match_info
        res = (info.get("group", ""), info.get("version", "v1"), info["plural"])
        return res if res in self.objects else None

    def _error(self, code: int, reason: str, message: str) -> web.Response:
        return web.Response(
            status=code, body=orjson.dumps(status_object(code, reason, message)),
            content_type="application/json",
        )  # fmt: skip

    def _precheck(self, request: web.Request) -> web.Response | None:
        """Authentication, then injected failures (only on resources the server has:
        a request for one it lacks gets its 404, and leaves the failures queued)."""
        self.requests.append((request.path, dict(request.query)))
        auth = request.headers.get("Authorization")
        if self.token is not None and auth != f"Bearer {self.token}":
            return self._error(401, "Unauthorized", "Unauthorized")
        if self.failures and self._resource(request) is not None:
            code = self.failures.popleft()
            return self._error(code, "InternalError", f"injected failure {code}")
        return None

    async def _one(self, request: web.Request) -> web.StreamResponse:
        early = self._precheck(request)
        if early is not None:
            return early
        res = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.objects[res].get((ns, name)) if res else None
        if obj is None:
            plural = request.match_info["plural"]
            return self._error(404, "NotFound", f'{plural} "{name}" not found')
        return web.Response(body=orjson.dumps(obj), content_type="application/json")

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        early = self._precheck(request)
        if early is not None:
            return early
        res = self._resource(request)
        if res is None:
            return self._error(404, "NotFound", "the server could not find the resource")
        q = request.query
        try:
            labels = parse(q.get("labelSelector", ""))
            fields = field_selector(q.get("fieldSelector", ""))
        except ValueError as e:
            return self._error(400, "BadRequest", str(e))
        ns = request.match_info["ns"]
        if go_bool(q.get("watch", "")):
            return await self._watch(request, res, ns, labels, fields)
        return self._list(res, ns, labels, fields, q)

    def _list(
        self,
        res: Resource,
        ns: str,
        labels: Selector,
        fields: dict[str, tuple[str, bool]],
        q: Mapping[str, str],
    ) -> web.Response:
        token = q.get("continue")
        if token:
            snap = self._snapshots.get(token)
            if snap is None:
                return self._error(
                    410, "Expired", "The provided continue parameter is too old to display "
                    "a consistent list result. You can start a new list without the continue "
                    "parameter.",
                )  # fmt: skip
            rv, items = snap
        else:
            rv = self.rv
            store = self.objects[res]
            items = [
                copy.deepcopy(store[k])
                for k in sorted(store)
                if k[0] == ns and matches(store[k], labels, fields)
            ]
        limit = int(q.get("limit") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            rest = items[limit:]
            items = items[:limit]
            nxt = base64.urlsafe_b64encode(f"{rv}:{next(self._ids)}".encode()).decode()
            self._snapshots[nxt] = (rv, rest)
            meta["continue"] = nxt
            meta["remainingItemCount"] = len(rest)
        group, version, _plural = res
        kind = "PodList" if res == PODS else "InferencePoolList"
        body = {
            "kind": kind,
            "apiVersion": f"{group}/{version}" if group else version,
            "metadata": meta,
            "items": items,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _event_line(self, w: _Watch, c: _Change) -> bytes | None:
        if c.resource != w.resource or c.namespace != w.namespace:
            return None
        was = c.old is not None and matches(c.old, w.labels, w.fields)
        now = c.new is not None and matches(c.new, w.labels, w.fields)
        if now:
            kind, obj = ("MODIFIED" if was else "ADDED"), c.new
        elif was:  # deleted, or no longer matching: DELETED (with its last state)
            kind, obj = "DELETED", c.new if c.new is not None else c.old
        else:
            return None
        return orjson.dumps({"type": kind, "object": obj}) + b"\n"

    def _bookmark_line(self, res: Resource) -> bytes:
        group, version, _plural = res
        obj = {
            "kind": "Pod" if res == PODS else "InferencePool",
            "apiVersion": f"{group}/{version}" if group else version,
            "metadata": {"resourceVersion": str(self.rv)},
        }
        return orjson.dumps({"type": "BOOKMARK", "object": obj}) + b"\n"

    async def _watch(
        self,
        request: web.Request,
        res: Resource,
        ns: str,
        labels: Selector,
        fields: dict[str, tuple[str, bool]],
    ) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        try:
            since = int(rv_text) if rv_text not in ("", "0") else None
        except ValueError:
            return self._error(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
        gone = since is not None and since < self.compacted
        if gone and self.gone_as_http:
            return self._error(410, "Expired", f"too old resource version: {since}")
        w = _Watch(res, ns, labels, fields, go_bool(q.get("allowWatchBookmarks", "")))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if gone:
            err = status_object(
                410, "Expired", f"too old resource version: {since} ({self.compacted})"
            )
            await resp.write(orjson.dumps({"type": "ERROR", "object": err}) + b"\n")
            await resp.write_eof()
            return resp
        if since is None:  # start at the current state: every object as ADDED
            store = self.objects[res]
            for key in sorted(store):
                line = self._event_line(w, _Change(0, res, key[0], None, store[key]))
                if line is not None:
                    w.queue.put_nowait(line)
        else:
            for c in self.history:
                if c.rv > since:
                    line = self._event_line(w, c)
                    if line is not None:
                        w.queue.put_nowait(line)
        self.watches.add(w)
        timeout = float(q.get("timeoutSeconds") or 1800)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await w.queue.get()
                    if line is None:
                        break
                    if line == b"DROP":
                        assert request.transport is not None
                        request.transport.abort()
                        return resp
                    await resp.write(line)
        except (TimeoutError, ConnectionError):  # timeoutSeconds; the client went away
            pass
        finally:
            self.watches.discard(w)
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp
