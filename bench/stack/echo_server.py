"""A trivial HTTP/1.1 backend for overhead measurements: answers every request at once.

It reads each request (headers plus Content-Length body, keep-alive), and replies 200
with a small JSON body naming itself. With uvloop it serves tens of thousands of
requests per second on one core, so it never is the bottleneck of ``bench/overhead.py``.

    python -m bench.stack.echo_server --port 8001 [--port 8002 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
from typing import cast


class _Echo(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            if b"transfer-encoding: chunked" in head:
                last = self.buf.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    last = self.buf.find(b"0\r\n\r\n", end + 4)
                    if last != end + 4:
                        return
                    total = last + 5
                else:
                    total = last + 7
            else:
                length = 0
                i = head.find(b"content-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i)
                    length = int(head[i + 15 : j if j > 0 else None].strip())
                total = end + 4 + length
                if len(self.buf) < total:
                    return
            self.buf = self.buf[total:]
            assert self.transport is not None
            self.transport.write(self.reply)


def _reply(name: str) -> bytes:
    body = b'{"object":"echo","served_by":"' + name.encode() + b'"}'
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-sim-pod: "
        + name.encode()
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def serve(ports: list[int], host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        factory = functools.partial(_Echo, _reply(f"{host}:{port}"))
        servers.append(await loop.create_server(factory, host, port))
    print(f"echo ready {' '.join(str(p) for p in ports)}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.host))
    except ImportError:
        asyncio.run(serve(args.port, args.host))


if __name__ == "__main__":
    main()
