"""A minimal keep-alive HTTP/1.1 client for one repeated GET (a pod's ``/metrics``).

Plain asyncio streams: no HTTP library at run time. Bodies are bounded (``MAX_BODY``).
"""

from __future__ import annotations

import asyncio

MAX_BODY = 32 * 2**20  # refuse larger pages


class ScrapeError(Exception):
    """A scrape that got an answer picker cannot use (non-200, oversized, bad framing)."""


class HTTPConnection:
    """A keep-alive HTTP/1.1 connection repeatedly GETting one path.

    Handles ``Content-Length``, chunked and read-to-close bodies. Not safe for concurrent
    use (one request at a time); on any error call ``close`` and the next ``get``
    reconnects. ``connects`` counts TCP connections opened.
    """

    def __init__(self, host: str, port: int, path: str = "/metrics") -> None:
        self.host = host.strip("[]")  # "[::1]" -> "::1"
        self.port = port
        authority = f"{host}:{port}"
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: picker\r\n"
            "Accept: text/plain\r\nAccept-Encoding: identity\r\n\r\n"
        ).encode("latin-1")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def get(self) -> bytes:
        """The body of a 200 response; raises ScrapeError, OSError, TimeoutError, ..."""
        reused = self._writer is not None
        try:
            return await self._get()
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            # The server may have closed the idle connection: retry once on a new one.
            self.close()
            return await self._get()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def _get(self) -> bytes:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self.connects += 1
        reader, writer = self._reader, self._writer
        writer.write(self._request)
        await writer.drain()
        status, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if "chunked" in headers.get("transfer-encoding", ""):
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if not 0 <= length <= MAX_BODY:
                raise ScrapeError(f"Content-Length {length} out of range")
            body = await reader.readexactly(length)
        elif status in (204, 304):
            body = b""
        else:  # body runs to the end of the connection
            body = await reader.read(MAX_BODY + 1)
            if len(body) > MAX_BODY or not reader.at_eof():
                raise ScrapeError("response body too large")
            headers["connection"] = "close"
        conn = headers.get("connection", "").lower()
        if conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive"):
            self.close()
        if status != 200:
            raise ScrapeError(f"HTTP {status}")
        return body


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ScrapeError(f"bad status line {lines[0][:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ScrapeError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        total += size
        if size < 0 or total > MAX_BODY:
            raise ScrapeError("response body too large")
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ScrapeError("chunk not terminated by CRLF")
        chunks.append(chunk[:-2])
