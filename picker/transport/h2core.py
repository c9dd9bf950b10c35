"""A sans-IO HTTP/2 (RFC 9113) server connection carrying gRPC, with resource limits.

``GrpcConnection`` takes bytes (``receive``), calls a ``StreamHandler`` per stream with
whole gRPC messages, and queues the bytes to send (``data_to_send``). It does no I/O and
never raises on input: anything malformed ends in RST_STREAM (a stream error) or GOAWAY
(a connection error) and ``closed``. So it can be driven by an asyncio Protocol
(``picker.transport.h2``) or by a fuzzer with no socket.

Limits (``Limits``), as hardened HTTP/2 servers have them:

* header blocks, across CONTINUATION frames, are bounded (``max_header_block``);
* a gRPC message longer than ``max_message`` is refused (grpc-status 8) and its bytes
  dropped; receive windows are refilled only as data is buffered within those bounds, and
  the connection stops granting credit while ``max_buffered`` bytes of incomplete
  messages are held;
* ``SETTINGS_MAX_CONCURRENT_STREAMS`` is advertised and enforced (REFUSED_STREAM);
* stream resets by the client, and control frames that make us answer (PING, SETTINGS)
  or cost work without progress (empty DATA/HEADERS), are rate limited per connection
  (token buckets); past the limit: GOAWAY(ENHANCE_YOUR_CALM);
* output waiting for the peer's flow-control window is bounded per stream and per
  connection (``max_pending_stream``, ``max_pending``): past them the stream is reset or
  the connection closed.

Deliberately minimal: no server push, no priority, no gRPC compression. Header blocks are
decoded with ``hpack`` (the dynamic table must stay in sync); a block of only indexed
fields (what Envoy sends for every stream after its first) is memoised.
"""

from __future__ import annotations

import logging

import hpack

from picker.transport.frames import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    frame,
)
from picker.transport.h2control import ControlFrames
from picker.transport.h2output import OpenStream
from picker.transport.h2state import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GRPC_INTERNAL,
    GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNIMPLEMENTED,
    INTERNAL_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    Limits,
    ProtocolError,
    Stream,
    StreamHandler,
)
from picker.transport.hpack_scan import keeps_table

log = logging.getLogger(__name__)

__all__ = ["GrpcConnection", "Limits", "OpenStream", "StreamHandler"]


class GrpcConnection(ControlFrames):
    """The server side of one HTTP/2 connection; see the module doc."""

    def receive(self, data: bytes) -> None:
        """Processes bytes from the peer. Never raises; see ``closed``/``error``."""
        if self.closed:
            return
        try:
            self._receive(data)
        except ProtocolError as e:
            self._connection_error(e.code, str(e))
        except Exception as e:  # a bug must cost this connection, never the server
            log.exception("HTTP/2 connection failed")
            self._connection_error(INTERNAL_ERROR, f"internal error: {type(e).__name__}")

    def _receive(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            view = memoryview(buf)
        else:
            view = memoryview(data)
        n = len(view)
        pos = 0
        if not self._preface:
            m = min(n, len(PREFACE))
            if view[:m] != PREFACE[:m]:
                raise ProtocolError(PROTOCOL_ERROR, "bad connection preface")
            if m < len(PREFACE):
                self._keep(view, 0)
                return
            self._preface = True
            pos = len(PREFACE)
        max_frame = self.limits.max_frame
        try:
            while n - pos >= 9 and not self.closed:
                length = (view[pos] << 16) | (view[pos + 1] << 8) | view[pos + 2]
                if length > max_frame:
                    raise ProtocolError(
                        FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"
                    )
                end = pos + 9 + length
                if end > n:
                    break
                ftype = view[pos + 3]
                flags = view[pos + 4]
                sid = U32.unpack_from(view, pos + 5)[0] & 0x7FFFFFFF
                if ftype == DATA and not flags and self._cont is None:
                    # Fast path: a frame from the middle of a large message (Envoy
                    # sends a body in 16 KiB frames). Same checks as _on_data.
                    st = self.streams.get(sid)
                    if (
                        st is not None
                        and length < st.need
                        and length <= st.recv_window
                        and length <= self.conn_recv_window
                        and self.buffered + length <= self.limits.max_buffered
                    ):
                        st.parts.append(bytes(view[pos + 9 : end]))
                        st.need -= length
                        st.counted += length
                        st.recv_window -= length
                        self.buffered += length
                        self.conn_recv_window -= length
                        self._recv_owed += length
                        if st.recv_window <= self._half_window:
                            self._grant_stream(st)
                        pos = end
                        continue
                self._frame(ftype, flags, sid, view[pos + 9 : end])
                pos = end
        except BaseException:
            self._buf = bytearray()  # the connection is closing; views may still be alive
            raise
        self._keep(view, pos)
        if self._recv_owed >= self.limits.conn_window // 4:
            self._grant_connection()

    def _keep(self, view: memoryview, pos: int) -> None:
        """Keeps the unprocessed tail ``view[pos:]`` for the next ``receive``."""
        rest = view[pos:]
        if view.obj is self._buf:
            view.release()
            rest.release()
            del self._buf[:pos]
        else:
            self._buf[:] = rest
            rest.release()
            view.release()

    def _frame(self, ftype: int, flags: int, sid: int, payload: memoryview) -> None:
        if self._cont is not None and ftype != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            self._on_headers(flags, sid, payload)
        elif ftype == CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == PING:
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
            if sid:
                raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
            if not flags & ACK:
                self._calm("PING flood")
                self._out.append(frame(PING, ACK, 0, bytes(payload)))
        elif ftype == RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif ftype == PRIORITY:
            if len(payload) != 5:
                raise ProtocolError(FRAME_SIZE_ERROR, "PRIORITY payload must be 5 bytes")
            if not sid:
                raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            self._calm("PRIORITY flood")
        elif ftype == GOAWAY:
            if len(payload) < 8 or sid:
                raise ProtocolError(FRAME_SIZE_ERROR if sid == 0 else PROTOCOL_ERROR, "bad GOAWAY")
            self.draining = True  # the client opens no more streams; open ones finish
        elif ftype == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        else:
            self._calm("unknown frames")  # ignored, as RFC 9113 says, but not for free

    def _strip_padding(self, flags: int, payload: memoryview, extra: int = 0) -> memoryview:
        start, end = 0, len(payload)
        if flags & PADDED:
            if end < 1:
                raise ProtocolError(PROTOCOL_ERROR, "PADDED frame without pad length")
            start = 1
            end -= payload[0]
        start += extra
        if end < start:
            raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[start:end]

    def _on_headers(self, flags: int, sid: int, payload: memoryview) -> None:
        if not sid:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._strip_padding(flags, payload, 5 if flags & PRIORITY_FLAG else 0)
        if len(block) > self.limits.max_header_block:
            raise ProtocolError(ENHANCE_YOUR_CALM, "header block over limit")
        if not flags & END_HEADERS:
            self._cont = (sid, flags, bytearray(block))
            return
        if not block and not flags & END_STREAM:
            self._calm("empty HEADERS")
        self._on_header_block(sid, flags, bytes(block))

    def _on_continuation(self, flags: int, sid: int, payload: memoryview) -> None:
        cont = self._cont
        if cont is None or cont[0] != sid:
            raise ProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = cont[2]
        if len(block) + len(payload) > self.limits.max_header_block:
            raise ProtocolError(ENHANCE_YOUR_CALM, "header block over limit (CONTINUATION)")
        if not payload and not flags & END_HEADERS:
            self._calm("empty CONTINUATION")
        block += payload
        if flags & END_HEADERS:
            self._cont = None
            self._on_header_block(sid, cont[1], bytes(block))

    def _decode_path(self, block: bytes) -> str:
        memo = self._memo
        path = memo.get(block)
        if path is not None:
            return path
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as e:
            raise ProtocolError(COMPRESSION_ERROR, f"HPACK: {e}") from None
        except Exception as e:  # hpack's own parsing errors on malformed integers
            raise ProtocolError(COMPRESSION_ERROR, f"HPACK: {type(e).__name__}") from None
        path = ""
        for k, v in headers:
            if k == b":path":
                path = bytes(v).decode("latin-1")
                break
        if keeps_table(block):
            # Decoding did not touch the dynamic table, so the same bytes mean the same
            # headers until a block that does change it arrives. Envoy sends the same
            # block for every ext_proc stream after its first few.
            if len(memo) < 64:
                memo[block] = path
        else:
            memo.clear()
        return path

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        path = self._decode_path(block)  # always: keeps the HPACK table in sync
        st = self.streams.get(sid)
        if st is not None:  # trailers: they must end the client's side
            if not flags & END_STREAM:
                raise ProtocolError(PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            self._remote_end(st)
            return
        if sid <= self.last_sid:
            if sid % 2 == 0:
                raise ProtocolError(PROTOCOL_ERROR, "even stream id from a client")
            return  # a stream we already closed (e.g. trailers after our reset)
        if sid % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, "even stream id from a client")
        self.last_sid = sid
        if self.draining:
            self._out.append(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self._out.append(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
            if not self._resets.take():
                raise ProtocolError(
                    ENHANCE_YOUR_CALM, "streams over SETTINGS_MAX_CONCURRENT_STREAMS"
                )
            return
        st = Stream(sid, self.peer_initial_window, self.limits.stream_window)
        self.streams[sid] = st
        handler = self._open_stream(sid, path)
        if handler is None:
            self.finish(sid, GRPC_UNIMPLEMENTED, f"unknown method {path[:64]}")
            return
        st.handler = handler
        if flags & END_STREAM:
            self._remote_end(st)

    def _on_data(self, flags: int, sid: int, payload: memoryview) -> None:
        if not sid:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)  # flow control counts padding too
        if n > self.conn_recv_window:
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.conn_recv_window -= n
        self._recv_owed += n
        data = self._strip_padding(flags, payload) if flags & PADDED else payload
        if not n and not flags & END_STREAM:
            self._calm("empty DATA")
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ProtocolError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # closed by us: credit given back, bytes dropped
        if st.remote_closed:
            self._reset(st, STREAM_CLOSED, "DATA after END_STREAM")
            return
        if n > st.recv_window:
            self._reset(st, FLOW_CONTROL_ERROR, "DATA beyond the stream window")
            return
        st.recv_window -= n
        if not st.discard and data:
            self._on_bytes(st, data)
        if self.streams.get(sid) is st:
            if st.recv_window <= self._half_window:
                self._grant_stream(st)
            if flags & END_STREAM:
                self._remote_end(st)

    def _on_bytes(self, st: Stream, data: memoryview) -> None:
        """Hands every complete gRPC message to the handler; keeps an incomplete tail.

        A message that arrives whole in one DATA frame (the common case) is copied once,
        straight out of the frame. One spread over frames (Envoy sends a large body in
        16 KiB frames) is kept as a list of its pieces and joined once when complete:
        each byte is copied twice, never re-copied as a buffer grows.
        """
        need = st.need
        if need:  # a message in progress: its payload pieces are in st.parts
            k = len(data)
            if k < need:
                st.parts.append(bytes(data))
                st.need = need - k
                self._hold(st, k)
                return
            st.parts.append(bytes(data[:need]))
            msg = b"".join(st.parts)
            st.parts = []
            st.need = 0
            self._hold(st, -st.counted)
            if not self._deliver(st, msg) or k == need:
                return
            data = data[need:]
        buf: bytearray | memoryview
        if st.buf:  # a partial message header from the previous frame
            st.buf += data
            buf = st.buf
        else:
            buf = data
        off = 0
        n = len(buf)
        max_message = self.limits.max_message
        while n - off >= 5:
            if buf[off]:
                self._abort(st, GRPC_UNIMPLEMENTED, "compressed messages are not supported")
                return
            mlen = U32.unpack_from(buf, off + 1)[0]
            if mlen > max_message:
                self._abort(st, GRPC_RESOURCE_EXHAUSTED, f"message over {max_message} bytes")
                return
            if n - off - 5 < mlen:  # incomplete: keep its payload so far
                piece = bytes(buf[off + 5 : n])
                st.parts = [piece]
                st.need = mlen - len(piece)
                off = n
                break
            msg = bytes(buf[off + 5 : off + 5 + mlen])
            off += 5 + mlen
            if not self._deliver(st, msg):
                return
        tail = bytearray(buf[off:]) if off < n else bytearray()  # under 5 bytes
        st.buf = tail
        self._hold(st, len(tail) + sum(len(p) for p in st.parts) - st.counted)

    def _deliver(self, st: Stream, msg: bytes) -> bool:
        """Gives ``msg`` to the stream's handler; False when the stream is over."""
        h = st.handler
        if h is None:
            return False
        try:
            h.on_message(msg)
        except Exception:
            log.exception("stream handler failed")
            self._abort(st, GRPC_INTERNAL, "internal error")
            return False
        return not st.discard  # the handler may have finished the stream

    def _hold(self, st: Stream, delta: int) -> None:
        """Counts ``delta`` more bytes of incomplete messages held for ``st``."""
        st.counted += delta
        self.buffered += delta
        if delta > 0 and self.buffered > self.limits.max_buffered:
            self._abort(st, GRPC_RESOURCE_EXHAUSTED, "too much incomplete data buffered")

    def _grant_stream(self, st: Stream) -> None:
        """Gives the stream credit back for what it consumed, within the message bound."""
        if st.discard:
            return
        lim = self.limits
        used = lim.stream_window - st.recv_window
        if used >= lim.stream_window // 2:  # st.buf < max_message + 5: larger ones abort
            st.recv_window += used
            self._out.append(frame(WINDOW_UPDATE, 0, st.sid, U32.pack(used)))

    def _grant_connection(self) -> None:
        if self.buffered > self.limits.max_buffered:
            return  # held until incomplete messages are consumed or dropped
        owed = self._recv_owed
        self._recv_owed = 0
        self.conn_recv_window += owed
        self._out.append(frame(WINDOW_UPDATE, 0, 0, U32.pack(owed)))
