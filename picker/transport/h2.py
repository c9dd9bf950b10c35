"""picker's gRPC server: the sans-IO HTTP/2 core (``h2core``) on an asyncio Protocol.

Why not grpc.aio: profiling picker behind Envoy showed ~85 % of its CPU inside grpc.aio
itself (completion-queue thread hand-offs, per-message task switches), not in picker's
own code. ext_proc is a narrow protocol: one bidirectional-streaming method, plus the
gRPC health check. This module serves exactly that, calling the synchronous
``StreamProcessor`` straight from ``data_received``: no task, future or thread per
request or per message, and one socket write per batch of frames.

Around the core: a handshake timeout (a client must complete the HTTP/2 preface),
an idle timeout (a connection without streams is closed with GOAWAY), a cap on
connections, back-pressure (when the socket's write buffer is full, picker stops
reading from that peer), TLS with ALPN ``h2`` (``picker.transport.tls``), and a graceful
drain: GOAWAY to every connection, then wait for open streams up to a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, cast

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2

from picker.handlers.stream import ExtProcService, StreamProcessor
from picker.transport.frames import HEALTH_CHECK_PATH, HEALTH_WATCH_PATH, PROCESS_PATH
from picker.transport.h2core import GrpcConnection, Limits, StreamHandler
from picker.transport.h2state import GRPC_INVALID_ARGUMENT
from picker.transport.health import HealthStatus

log = logging.getLogger(__name__)

GRPC_NOT_FOUND = 5


@dataclass(frozen=True)
class Timeouts:
    handshake: float = 10.0  # the HTTP/2 preface must arrive within this
    idle: float = 300.0  # a connection without streams this long is closed
    max_connections: int = 1024


class _ExtProcStream:
    """One ext_proc stream: gRPC messages in, the stream machine's answers out."""

    __slots__ = ("closed", "conn", "owner", "proc", "sid")

    def __init__(self, owner: H2GrpcProtocol, sid: int, proc: StreamProcessor) -> None:
        self.owner = owner
        self.conn = owner.conn
        self.sid = sid
        self.proc = proc
        self.closed = False

    def on_message(self, msg: bytes) -> None:
        try:
            req = pb.ProcessingRequest.FromString(msg)
        except Exception:
            self._end(GRPC_INVALID_ARGUMENT, "cannot decode ProcessingRequest")
            return
        self._answer(self.proc.handle(req))

    def _answer(self, outs: list[bytes]) -> None:
        conn, sid, proc = self.conn, self.sid, self.proc
        for out in outs:
            conn.send_message(sid, out)
        if proc.held is not None:
            proc.held.future.add_done_callback(self._resume)
        elif proc.done:
            self._end(0)

    def _resume(self, _future: object) -> None:
        """A request parked by flow control was decided: answer it now."""
        if self.closed or self.proc.held is None:
            return
        self._answer(self.proc.resume())
        self.owner.flush()

    def on_end(self) -> None:
        if not self.closed and self.proc.held is None:
            self._end(0)

    def on_reset(self) -> None:
        self._close()

    def _end(self, status: int, message: str = "") -> None:
        self.conn.finish(self.sid, status, message)
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.proc.close()
            except Exception:
                log.exception("closing stream state failed")


class _HealthStream:
    """grpc.health.v1: Check (unary) or Watch (answered once, left open)."""

    __slots__ = ("conn", "health", "sid", "watch")

    def __init__(self, conn: GrpcConnection, sid: int, health: HealthStatus, watch: bool):
        self.conn, self.sid, self.health, self.watch = conn, sid, health, watch

    def on_message(self, msg: bytes) -> None:
        try:
            service = health_pb2.HealthCheckRequest.FromString(msg).service
        except Exception:
            self.conn.finish(self.sid, GRPC_INVALID_ARGUMENT, "cannot decode HealthCheckRequest")
            return
        status = self.health.check(service)
        if status is None:
            if not self.watch:
                self.conn.finish(self.sid, GRPC_NOT_FOUND, "unknown service")
                return
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        resp = health_pb2.HealthCheckResponse(status=cast(Any, status)).SerializeToString()
        self.conn.send_message(self.sid, resp)
        if not self.watch:
            self.conn.finish(self.sid, 0)

    def on_end(self) -> None:
        if not self.watch:
            self.conn.finish(self.sid, 0)

    def on_reset(self) -> None:
        return None


class H2GrpcProtocol(asyncio.Protocol):
    """One HTTP/2 connection (from Envoy, or anyone who can reach the port)."""

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.conn = GrpcConnection(self._open_stream, server.limits)
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = time.monotonic()

    def _open_stream(self, sid: int, path: str) -> StreamHandler | None:
        service = self.server.service
        if path == PROCESS_PATH and service is not None:
            return _ExtProcStream(self, sid, service.stream())
        if path in (HEALTH_CHECK_PATH, HEALTH_WATCH_PATH):
            return _HealthStream(self.conn, sid, self.server.health, path == HEALTH_WATCH_PATH)
        return None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.timeouts.max_connections:
            log.warning("refusing a connection: %d open", len(server.connections))
            self.transport.abort()
            return
        server.connections.add(self)
        if server.draining:
            self.conn.initiate()
            self.conn.goaway()
            self.flush()
            self.transport.close()
            return
        self.conn.initiate()
        self.flush()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(server.timeouts.handshake, self._check_handshake)

    def data_received(self, data: bytes) -> None:
        self._last_active = time.monotonic()
        self.conn.receive(data)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.server.connections.discard(self)
        self.conn.connection_lost()
        self.server.on_connection_closed()

    def pause_writing(self) -> None:
        # The peer does not read what we send: stop reading what it sends (PING floods,
        # requests whose answers pile up) until the socket drains.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- helpers -------------------------------------------------------------------

    def flush(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            t.write(data)
        if self.conn.closed:
            # GOAWAY is queued; a peer that does not read would keep the socket open
            # forever waiting for the flush, so abort after a grace period.
            t.close()
            asyncio.get_running_loop().call_later(2.0, t.abort)

    def _check_handshake(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self.conn.handshake_done:
            log.info("closing a connection that sent no HTTP/2 preface in time")
            self.transport.abort()
            return
        self._schedule_idle()

    def _schedule_idle(self) -> None:
        idle = self.server.timeouts.idle
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(idle / 2, self._check_idle)

    def _check_idle(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        idle = self.server.timeouts.idle
        if not self.conn.streams and time.monotonic() - self._last_active >= idle:
            self.conn.goaway()
            self.flush()
            self.transport.close()
            return
        self._schedule_idle()

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY, then close once the last stream ends."""
        self.conn.goaway()
        self.flush()
        if not self.conn.streams and self.transport is not None:
            self.transport.close()


class NativeServer:
    """picker's HTTP/2 gRPC server: ``start``, then ``drain`` and ``close``. Without a
    ``service`` it serves gRPC health alone (picker's health port)."""

    def __init__(
        self,
        service: ExtProcService | None,
        health: HealthStatus,
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.service = service
        self.health = health
        self.limits = limits or Limits()
        self.timeouts = timeouts or Timeouts()
        self.connections: set[H2GrpcProtocol] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: H2GrpcProtocol(self),
            host,
            port,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=self.timeouts.handshake if tls is not None else None,
        )
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def open_streams(self) -> int:
        return sum(len(c.conn.streams) for c in self.connections)

    def on_connection_closed(self) -> None:
        if self.draining and not self.connections:
            self._idle.set()

    async def drain(self, timeout: float) -> int:
        """Stops accepting streams, waits up to ``timeout`` s for open ones; returns how
        many were still open at the deadline."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            c.drain()
        deadline = time.monotonic() + timeout
        while self.open_streams() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.open_streams()
        self.close()
        return left

    def close(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            if c.transport is not None:
                c.flush()
                c.transport.close()
