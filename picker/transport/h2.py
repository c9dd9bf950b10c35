"""A small gRPC-over-HTTP/2 server for picker's two services, on an asyncio Protocol.

Why not grpc.aio: profiling picker behind Envoy showed ~85 % of its CPU inside grpc.aio
itself (completion-queue thread hand-offs, per-message task switches), not in picker's
own code. ext_proc is a narrow protocol: one bidirectional-streaming method, plus the
unary gRPC health check. This module implements exactly that much of HTTP/2 (RFC 9113)
and gRPC framing, calling the synchronous ``StreamProcessor`` directly from
``data_received``: no task, future or thread per request or per message, and one socket
write per batch of frames.

Implemented: connection preface and SETTINGS, HEADERS(+CONTINUATION, padding, priority),
DATA (padding, flow control in both directions), RST_STREAM, PING, WINDOW_UPDATE,
GOAWAY. Header blocks are decoded with ``hpack`` (the dynamic table must be kept in
sync); blocks made only of indexed fields — what Envoy sends for every stream after the
first — are memoised. Responses use fixed header blocks without dynamic-table entries.
Not implemented (not used by Envoy's gRPC client): server push, compression
(``grpc-encoding``), TLS.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Callable
from typing import Any, cast

import hpack
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from grpc_health.v1 import health_pb2

from picker.handlers.stream import ExtProcService, StreamProcessor
from picker.transport.frames import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    HEALTH_CHECK_PATH,
    HEALTH_WATCH_PATH,
    MAX_WINDOW,
    OK_TRAILERS,
    OUR_MAX_FRAME,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROCESS_PATH,
    RECV_REFILL,
    RESPONSE_HEADERS,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    trailers,
)
from picker.transport.health import HealthStatus

log = logging.getLogger(__name__)


class _Stream:
    __slots__ = (
        "buf",
        "closed",
        "headers_sent",
        "path",
        "pending",
        "proc",
        "send_window",
        "sid",
        "trailer",
    )

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.buf = bytearray()
        self.proc: StreamProcessor | None = None
        self.path = ""
        self.headers_sent = False
        self.closed = False
        self.send_window = send_window
        self.pending = bytearray()  # gRPC bytes waiting for flow-control credit
        self.trailer: bytes | None = None  # trailers held back until pending is sent


class H2GrpcProtocol(asyncio.Protocol):
    """One HTTP/2 connection from Envoy."""

    def __init__(self, service: ExtProcService, health: HealthStatus) -> None:
        self.service = service
        self.health = health
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.preface_seen = False
        self.decoder = hpack.Decoder()
        self._memo: dict[bytes, str] = {}
        self.streams: dict[int, _Stream] = {}
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.conn_send_window = 65535
        self.recv_unacked = 0
        self.out: list[bytes] = []
        self._cont: tuple[int, int, bytearray] | None = None  # (sid, flags, block)
        self.last_sid = 0

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        settings = struct.pack(
            ">HIHI", S_INITIAL_WINDOW_SIZE, MAX_WINDOW, S_MAX_FRAME_SIZE, OUR_MAX_FRAME
        )
        self.transport.write(
            frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        for st in self.streams.values():
            self._close_proc(st)
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        if not self.preface_seen:
            if len(buf) < len(PREFACE):
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                self._fail("bad connection preface")
                return
            self.preface_seen = True
            pos = len(PREFACE)
        n = len(buf)
        try:
            while n - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError("frame larger than SETTINGS_MAX_FRAME_SIZE")
                end = pos + 9 + length
                if end > n:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : end])
                pos = end
                self._onframe(ftype, flags, sid, payload)
        except _ConnectionError as e:
            self._fail(str(e))
            return
        finally:
            del buf[:pos]
            if self.out and self.transport is not None:
                self.transport.write(b"".join(self.out))
                self.out.clear()

    # -- frames --------------------------------------------------------------------

    def _onframe(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._cont is not None and ftype != CONTINUATION:
            raise _ConnectionError("expected CONTINUATION")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            self._on_headers(flags, sid, payload)
        elif ftype == CONTINUATION:
            if self._cont is None or self._cont[0] != sid:
                raise _ConnectionError("unexpected CONTINUATION")
            csid, cflags, block = self._cont
            block += payload
            if flags & END_HEADERS:
                self._cont = None
                self._on_header_block(csid, cflags, bytes(block))
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload)
                self.out.append(frame(SETTINGS, ACK, 0))
        elif ftype == WINDOW_UPDATE:
            inc = U32.unpack_from(payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += inc
                for blocked in list(self.streams.values()):
                    if blocked.pending:
                        self._flush(blocked)
            else:
                target = self.streams.get(sid)
                if target is not None:
                    target.send_window += inc
                    if target.pending:
                        self._flush(target)
        elif ftype == PING:
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            reset = self.streams.pop(sid, None)
            if reset is not None:
                reset.closed = True
                self._close_proc(reset)
        elif ftype == GOAWAY:
            pass  # Envoy stops opening streams; open ones finish normally
        # PRIORITY, PUSH_PROMISE and unknown frame types are ignored.

    def _on_settings(self, payload: bytes) -> None:
        for off in range(0, len(payload) - 5, 6):
            ident, value = struct.unpack_from(">HI", payload, off)
            if ident == S_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
            elif ident == S_MAX_FRAME_SIZE:
                self.peer_max_frame = value

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        start, end = 0, len(payload)
        if flags & PADDED:
            end -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
        block = payload[start:end]
        if not flags & END_HEADERS:
            self._cont = (sid, flags, bytearray(block))
            return
        self._on_header_block(sid, flags, block)

    def _decode_path(self, block: bytes) -> str:
        memo = self._memo
        path = memo.get(block)
        if path is not None:
            return path
        headers = self.decoder.decode(block, raw=True)
        path = ""
        for k, v in headers:
            if k == b":path":
                path = v.decode("latin-1")
                break
        if all(b & 0x80 for b in block):
            # Only indexed fields: decoding did not touch the dynamic table, so the same
            # bytes mean the same headers until a block that does change it arrives.
            if len(memo) < 64:
                memo[block] = path
        else:
            memo.clear()
        return path

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            path = self._decode_path(block)
        except hpack.HPACKError as e:
            raise _ConnectionError(f"HPACK: {e}") from None
        st = self.streams.get(sid)
        if st is not None:
            # Trailers from the client end its half of the stream.
            if flags & END_STREAM:
                self._end_stream(st)
            return
        if sid <= self.last_sid or sid % 2 == 0:
            raise _ConnectionError("bad stream id")
        self.last_sid = sid
        st = _Stream(sid, self.peer_initial_window)
        st.path = path
        self.streams[sid] = st
        if path == PROCESS_PATH:
            st.proc = self.service.stream()
        elif path not in (HEALTH_CHECK_PATH, HEALTH_WATCH_PATH):
            self._finish(st, 12, f"unknown method {path}")  # UNIMPLEMENTED
            return
        if flags & END_STREAM:
            self._end_stream(st)

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        self.recv_unacked += len(payload)
        if self.recv_unacked >= RECV_REFILL:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
            self.recv_unacked = 0
        st = self.streams.get(sid)
        if st is None or st.closed:
            return
        if flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        buf = st.buf
        buf += payload
        # Unpack complete gRPC messages: 1-byte compressed flag, 4-byte length, message.
        off = 0
        n = len(buf)
        while n - off >= 5:
            mlen = U32.unpack_from(buf, off + 1)[0]
            if n - off - 5 < mlen:
                break
            if buf[off]:
                del buf[:]
                self._finish(st, 12, "compressed messages are not supported")
                return
            msg = bytes(buf[off + 5 : off + 5 + mlen])
            off += 5 + mlen
            self._on_message(st, msg)
            if st.closed:
                return
        if off:
            del buf[:off]
        if flags & END_STREAM:
            self._end_stream(st)

    # -- gRPC ----------------------------------------------------------------------

    def _on_message(self, st: _Stream, msg: bytes) -> None:
        proc = st.proc
        if proc is not None:
            try:
                req = pb.ProcessingRequest.FromString(msg)
            except Exception:
                self._finish(st, 3, "cannot decode ProcessingRequest")  # INVALID_ARGUMENT
                return
            for out in proc.handle(req):
                self._send_message(st, out)
            if proc.held is not None and not st.closed:
                proc.held.future.add_done_callback(functools.partial(self._resume, st))
            elif proc.done:
                self._finish(st, 0)
            return
        # Health check: unary (Check) or server-streaming (Watch, answered once).
        try:
            service = health_pb2.HealthCheckRequest.FromString(msg).service
        except Exception:
            self._finish(st, 3, "cannot decode HealthCheckRequest")
            return
        status = self.health.check(service)
        if status is None:
            if st.path == HEALTH_CHECK_PATH:
                self._finish(st, 5, "unknown service")  # NOT_FOUND
                return
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        resp = health_pb2.HealthCheckResponse(status=cast(Any, status)).SerializeToString()
        self._send_message(st, resp)
        if st.path == HEALTH_CHECK_PATH:
            self._finish(st, 0)

    def _resume(self, st: _Stream, _future: object = None) -> None:
        """A request parked by flow control was decided: answer it now."""
        proc = st.proc
        if proc is None or st.closed or proc.held is None:
            return
        for out in proc.resume():
            self._send_message(st, out)
        if proc.done:
            self._finish(st, 0)
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _end_stream(self, st: _Stream) -> None:
        """The client half-closed: a finished request stream ends ours with OK."""
        if not st.closed:
            self._finish(st, 0)

    def _send_message(self, st: _Stream, msg: bytes) -> None:
        if not st.headers_sent:
            st.headers_sent = True
            self.out.append(frame(HEADERS, END_HEADERS, st.sid, RESPONSE_HEADERS))
        st.pending += b"\x00" + U32.pack(len(msg)) + msg
        self._flush(st)

    def _flush(self, st: _Stream) -> None:
        pending = st.pending
        while pending:
            room = min(st.send_window, self.conn_send_window, self.peer_max_frame)
            if room <= 0:
                return
            chunk = bytes(pending[:room])
            del pending[:room]
            st.send_window -= len(chunk)
            self.conn_send_window -= len(chunk)
            self.out.append(frame(DATA, 0, st.sid, chunk))
        if st.trailer is not None:
            self.streams.pop(st.sid, None)
            self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, st.trailer))
            st.trailer = None

    def _finish(self, st: _Stream, status: int, message: str = "") -> None:
        """Ends the stream with ``grpc-status`` (after any data still held back)."""
        st.closed = True
        self._close_proc(st)
        if not st.headers_sent:
            block = RESPONSE_HEADERS + trailers(status, message)
        else:
            block = trailers(status, message) if status or message else OK_TRAILERS
        if st.pending:
            st.trailer = block  # rare: blocked by flow control
            return
        self.streams.pop(st.sid, None)
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, block))

    def _close_proc(self, st: _Stream) -> None:
        proc = st.proc
        if proc is not None:
            st.proc = None
            try:
                proc.close()
            except Exception:
                log.exception("closing stream state failed")

    def _fail(self, reason: str) -> None:
        log.warning("closing HTTP/2 connection: %s", reason)
        if self.transport is not None:
            self.transport.write(
                b"".join(self.out)
                + frame(GOAWAY, 0, 0, U32.pack(self.last_sid) + U32.pack(1) + reason.encode())
            )
            self.out.clear()
            self.transport.close()


class _ConnectionError(Exception):
    pass


async def serve(
    service: ExtProcService, health: HealthStatus, host: str, port: int
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.Protocol] = lambda: H2GrpcProtocol(service, health)  # noqa: E731
    return await loop.create_server(factory, host, port, reuse_address=True)
