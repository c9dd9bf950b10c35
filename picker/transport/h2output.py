"""The output half of the HTTP/2 core and the connection's state: what picker sends
(messages within the peer's windows, trailers, resets, GOAWAY) and stream teardown.
``picker.transport.h2core.GrpcConnection`` adds the input half."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import hpack

from picker.transport.frames import (
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    OK_TRAILERS,
    RESPONSE_HEADERS,
    RST_STREAM,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
    trailers,
)
from picker.transport.h2state import (
    DEFAULT_WINDOW,
    ENHANCE_YOUR_CALM,
    GRPC_INTERNAL,
    MIN_FRAME,
    NO_ERROR,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    Bucket,
    Limits,
    Stream,
    StreamHandler,
    data_header,
)

log = logging.getLogger(__name__)

OpenStream = Callable[[int, str], StreamHandler | None]


class ConnectionState:
    """Connection state and the output side; see ``picker.transport.h2core``."""

    def __init__(
        self,
        open_stream: OpenStream,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = lim = limits or Limits()
        self._half_window = lim.stream_window // 2
        self._open_stream = open_stream
        self._out: list[bytes | memoryview] = []
        self._buf = bytearray()
        self._preface = False
        self.closed = False  # a GOAWAY for an error was queued: input is ignored
        self.draining = False  # a graceful GOAWAY was sent: no new streams
        self.error: str | None = None
        self.streams: dict[int, Stream] = {}
        self.last_sid = 0
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = lim.max_header_block
        self._memo: dict[bytes, str] = {}
        self._cont: tuple[int, int, bytearray] | None = None
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = MIN_FRAME
        self.conn_send_window = DEFAULT_WINDOW
        self.conn_recv_window = lim.conn_window
        self._recv_owed = 0  # connection credit to give back
        self.buffered = 0  # incomplete inbound message bytes over all streams
        self.pending = 0  # outbound bytes waiting for window over all streams
        self._resets = Bucket(lim.reset_rate, lim.reset_burst, clock)
        self._control = Bucket(lim.control_rate, lim.control_burst, clock)
        self.settings_acked = False

    def initiate(self) -> None:
        """Queues our SETTINGS and the connection window increase (call once, first)."""
        lim = self.limits
        settings = b"".join(
            U32.pack(i)[2:] + U32.pack(v)
            for i, v in (
                (S_MAX_CONCURRENT_STREAMS, lim.max_concurrent_streams),
                (S_INITIAL_WINDOW_SIZE, lim.stream_window),
                (S_MAX_FRAME_SIZE, lim.max_frame),
                (S_MAX_HEADER_LIST_SIZE, lim.max_header_block),
                (S_ENABLE_PUSH, 0),
            )
        )
        self._out.append(frame(SETTINGS, 0, 0, settings))
        if lim.conn_window > DEFAULT_WINDOW:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(lim.conn_window - DEFAULT_WINDOW)))

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out)  # entries may be memoryviews of messages: one copy here
        out.clear()
        return data

    @property
    def handshake_done(self) -> bool:
        return self._preface

    def send_message(self, sid: int, msg: bytes) -> None:
        """Queues one gRPC message on stream ``sid`` (no-op if the stream is gone).

        What the peer's windows allow now goes out as DATA frames that reference ``msg``
        (copied once, by ``data_to_send``); only the rest waits in the stream's buffer.
        """
        st = self.streams.get(sid)
        if st is None or st.trailer is not None:
            return
        out = self._out
        if not st.headers_sent:
            st.headers_sent = True
            out.append(frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS))
        prefix = b"\x00" + U32.pack(len(msg))
        total = len(msg) + 5
        if st.pending:
            self._enqueue(st, prefix, memoryview(msg))
            self._flush(st)
            return
        room = min(st.send_window, self.conn_send_window, total)
        if room < 5:
            self._enqueue(st, prefix, memoryview(msg))
            return
        step = self.peer_max_frame
        first = min(room, step)
        out.append(data_header(first, sid))
        out.append(prefix)
        view = memoryview(msg)
        off = first - 5
        out.append(view[:off])
        end = room - 5
        while off < end:
            k = min(step, end - off)
            out.append(data_header(k, sid))
            out.append(view[off : off + k])
            off += k
        st.send_window -= room
        self.conn_send_window -= room
        if off < len(msg):
            self._enqueue(st, b"", view[off:])

    def _enqueue(self, st: Stream, prefix: bytes, rest: memoryview) -> None:
        n = len(prefix) + len(rest)
        if len(st.pending) + n > self.limits.max_pending_stream:
            self._reset(st, ENHANCE_YOUR_CALM, "peer does not read: stream output over limit")
            return
        if self.pending + n > self.limits.max_pending:
            self._connection_error(ENHANCE_YOUR_CALM, "peer does not read: output over limit")
            return
        st.pending += prefix
        st.pending += rest
        self.pending += n

    def finish(self, sid: int, status: int, message: str = "") -> None:
        """Ends stream ``sid`` with ``grpc-status`` (after any output still held back)."""
        st = self.streams.get(sid)
        if st is None or st.trailer is not None:
            return
        st.handler = None
        st.discard = True
        self._release_buffered(st)
        if not st.headers_sent:
            st.headers_sent = True
            block = RESPONSE_HEADERS + trailers(status, message)
        else:
            block = trailers(status, message) if status or message else OK_TRAILERS
        if st.pending:
            st.trailer = block  # sent by _flush once the peer gives window
            return
        self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
        self._forget(st)

    def goaway(self) -> None:
        """Graceful shutdown: no new streams; open ones finish."""
        if not self.draining and not self.closed:
            self.draining = True
            self._out.append(frame(GOAWAY, 0, 0, U32.pack(self.last_sid) + U32.pack(NO_ERROR)))

    def connection_lost(self) -> None:
        """The transport is gone: every open stream is reset."""
        self.closed = True
        for st in list(self.streams.values()):
            self._drop(st)

    def _remote_end(self, st: Stream) -> None:
        st.remote_closed = True
        h = st.handler
        if h is not None:
            try:
                h.on_end()
            except Exception:
                log.exception("stream handler failed")
                self.finish(st.sid, GRPC_INTERNAL, "internal error")

    def _abort(self, st: Stream, status: int, message: str) -> None:
        """Ends the stream with ``status`` and tells its handler it was cut short."""
        h = st.handler
        st.handler = None
        self.finish(st.sid, status, message)
        _tell_reset(h)

    def _release_buffered(self, st: Stream) -> None:
        self.buffered -= st.counted
        st.counted = 0
        st.need = 0
        st.parts = []
        st.buf = bytearray()

    def _flush(self, st: Stream) -> None:
        pending = st.pending
        if pending:
            room = min(st.send_window, self.conn_send_window)
            take = min(room, len(pending))
            if take <= 0:
                return
            step = self.peer_max_frame
            out = self._out
            for off in range(0, take, step):
                chunk = bytes(pending[off : min(off + step, take)])
                out.append(data_header(len(chunk), st.sid))
                out.append(chunk)
            del pending[:take]
            st.send_window -= take
            self.conn_send_window -= take
            self.pending -= take
        if not pending and st.trailer is not None:
            self._out.append(frame(HEADERS, END_HEADERS | END_STREAM, st.sid, st.trailer))
            st.trailer = None
            self._forget(st)

    def _reset(self, st: Stream, code: int, reason: str) -> None:
        log.debug("resetting stream %d: %s", st.sid, reason)
        self._out.append(frame(RST_STREAM, 0, st.sid, U32.pack(code)))
        self._drop(st)

    def _drop(self, st: Stream) -> None:
        """The stream is gone without a normal end: tell its handler, free its state."""
        h = st.handler
        st.handler = None
        self._release_buffered(st)
        self._forget(st)
        _tell_reset(h)

    def _forget(self, st: Stream) -> None:
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
            self.pending -= len(st.pending)
            st.pending = bytearray()

    def _connection_error(self, code: int, reason: str) -> None:
        if self.closed:
            return
        log.warning("closing HTTP/2 connection: %s", reason)
        self.error = reason
        self._out.append(
            frame(GOAWAY, 0, 0, U32.pack(self.last_sid) + U32.pack(code) + reason.encode()[:200])
        )
        self.closed = True
        for st in list(self.streams.values()):
            self._drop(st)


def _tell_reset(handler: StreamHandler | None) -> None:
    """``handler.on_reset()``; a failing handler is logged, never propagated."""
    if handler is not None:
        try:
            handler.on_reset()
        except Exception:
            log.exception("stream handler failed")
