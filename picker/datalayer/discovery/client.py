"""A small asyncio client for the Kubernetes API: list (paginated) and watch, as JSON.

aiohttp (non-blocking sockets, TLS) and orjson; objects stay plain dicts, decoded only
into the few fields discovery keeps. Chosen over ``kubernetes_asyncio`` and the
``kubernetes`` client by measurement (``docs/kubernetes-discovery.md``).

Bounded against a broken or hostile API server: one list page is at most
``max_page_bytes`` (pages of ``page_size`` objects, following ``continue``), one watch
event line at most ``max_event_bytes``; past either the call fails with
``TooLarge`` and the caller backs off. Requests time out; a watch whose connection
says nothing (no event, no bookmark) for ``timeout_seconds`` + 30 s is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from picker.datalayer.discovery.kubeconfig import KubeConfig

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 4 << 20  # an object is at most ~1.5 MiB in etcd; an event line wraps one
MAX_PAGE_BYTES = 64 << 20
PAGE_SIZE = 500
TOKEN_REFRESH = 60.0  # seconds between re-reads of a token file


class KubeError(Exception):
    """Talking to the API server failed (transport, framing, or an error status)."""


class ApiError(KubeError):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason


class Gone(ApiError):
    """410: the resourceVersion asked for is compacted away; list again."""


class BadStream(KubeError):
    """A watch stream that cannot be trusted to have delivered every event (a line that
    is not a JSON event, or too large): list again rather than resume."""


class TooLarge(BadStream):
    """A list page or a watch event over the client's limit."""


@dataclass(slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]


def _status_error(status: int, body: bytes) -> ApiError:
    message, reason = body[:512].decode("utf-8", "replace"), ""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict):
            message = str(doc.get("message", message))
            reason = str(doc.get("reason", ""))
            status = int(doc.get("code", status) or status)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        pass
    cls = Gone if status == 410 else ApiError
    return cls(status, message, reason)


class KubeClient:
    """List and watch against one API server; call ``close`` when done."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_page_bytes: int = MAX_PAGE_BYTES,
        page_size: int = PAGE_SIZE,
        request_timeout: float = 30.0,
    ) -> None:
        self.config = config
        self.max_event_bytes = max_event_bytes
        self.max_page_bytes = max_page_bytes
        self.page_size = page_size
        self.request_timeout = request_timeout
        self._ssl = config.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = config.token
        self._token_read = 0.0

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"Accept": "application/json", "User-Agent": "picker"},
                auto_decompress=False,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _headers(self) -> dict[str, str]:
        path = self.config.token_file
        if path and time.monotonic() - self._token_read > TOKEN_REFRESH:
            text = await asyncio.to_thread(_read_text, path)
            self._token = text.strip()
            self._token_read = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    # --- list -------------------------------------------------------------------------

    async def get(self, path: str) -> dict[str, Any]:
        """One object (or list page) as a dict; ApiError on a non-200 answer."""
        return await self._get_json(path, {})

    async def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        session = self._get_session()
        try:
            async with session.get(
                self.config.server + path,
                params=params,
                headers=await self._headers(),
                timeout=timeout,
            ) as resp:
                body = await _read_bounded(resp, self.max_page_bytes)
                if resp.status != 200:
                    raise _status_error(resp.status, body)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(f"GET {path}: {type(e).__name__}: {e}") from e
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise KubeError(f"GET {path}: not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise KubeError(f"GET {path}: not a JSON object")
        return doc

    async def list_pages(
        self, path: str, *, label_selector: str = "", field_selector: str = ""
    ) -> AsyncIterator[tuple[list[Any], str]]:
        """Pages of ``(items, resourceVersion)``; the last page's version is the list's."""
        params = {"limit": str(self.page_size)}
        _add_selectors(params, label_selector, field_selector)
        while True:
            doc = await self._get_json(path, params)
            meta = doc.get("metadata") or {}
            items = doc.get("items")
            if not isinstance(items, list) or not isinstance(meta, dict):
                raise KubeError(f"GET {path}: not a list")
            yield items, str(meta.get("resourceVersion") or "")
            token = meta.get("continue")
            if not token:
                return
            params["continue"] = str(token)

    # --- watch ------------------------------------------------------------------------

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
        bookmarks: bool = True,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after ``resource_version`` until the server ends the watch.

        An ``ERROR`` event raises (``Gone`` for 410); so do a dropped connection, a line
        that is not a JSON event, or one over ``max_event_bytes``.
        """
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if bookmarks:
            params["allowWatchBookmarks"] = "true"
        _add_selectors(params, label_selector, field_selector)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.request_timeout, sock_read=timeout_seconds + 30
        )
        session = self._get_session()
        try:
            async with session.get(
                self.config.server + path,
                params=params,
                headers=await self._headers(),
                timeout=timeout,
            ) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, await _read_bounded(resp, 1 << 16))
                async for line in _lines(resp, self.max_event_bytes):
                    yield _event(line)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeError(f"watch {path}: {type(e).__name__}: {e}") from e


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"response of {declared} bytes is over the limit of {limit}")
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise TooLarge(f"response over the limit of {limit} bytes")
    return bytes(buf)


async def _lines(resp: aiohttp.ClientResponse, limit: int) -> AsyncIterator[bytes]:
    """Newline-separated lines of a streamed body, each at most ``limit`` bytes."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if end - start > limit:
                raise TooLarge(f"watch event over the limit of {limit} bytes")
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
        if len(buf) > limit:
            raise TooLarge(f"watch event over the limit of {limit} bytes")
    if buf.strip():
        raise KubeError("watch stream ended in the middle of an event")


def _event(line: bytes) -> WatchEvent:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise BadStream(f"watch event is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadStream("watch event is not a JSON object")
    kind, obj = doc.get("type"), doc.get("object")
    if not isinstance(obj, dict) or not isinstance(kind, str):
        raise BadStream("watch event without type or object")
    if kind == "ERROR":
        code = obj.get("code")
        raise _status_error(code if isinstance(code, int) else 500, orjson.dumps(obj))
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise BadStream(f"unknown watch event type {kind!r}")
    return WatchEvent(kind, obj)


def _add_selectors(params: dict[str, str], label_selector: str, field_selector: str) -> None:
    if label_selector:
        params["labelSelector"] = label_selector
    if field_selector:
        params["fieldSelector"] = field_selector
