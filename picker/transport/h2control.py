"""The HTTP/2 control frames a server connection answers: SETTINGS, WINDOW_UPDATE,
RST_STREAM, and the rate limit on frames that cost work without progress.

``ControlFrames`` is the part of ``h2core.GrpcConnection`` that changes the
connection's settings and windows (kept in ``h2output.ConnectionState``); it raises
``ProtocolError`` for connection errors and resets streams for stream errors."""

from __future__ import annotations

from picker.transport.frames import ACK, MAX_WINDOW, SETTINGS, U32, frame
from picker.transport.h2output import ConnectionState
from picker.transport.h2state import (
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    MAX_FRAME,
    MIN_FRAME,
    PROTOCOL_ERROR,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    ProtocolError,
)


class ControlFrames(ConnectionState):
    def _calm(self, what: str) -> None:
        if not self._control.take():
            raise ProtocolError(ENHANCE_YOUR_CALM, what)

    def _on_settings(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self.settings_acked = True
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        self._calm("SETTINGS flood")
        for off in range(0, len(payload), 6):
            ident = (payload[off] << 8) | payload[off + 1]
            value = U32.unpack_from(payload, off + 2)[0]
            if ident == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(
                        FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large"
                    )
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ProtocolError(FLOW_CONTROL_ERROR, "stream window overflow")
            elif ident == S_MAX_FRAME_SIZE:
                if not MIN_FRAME <= value <= MAX_FRAME:
                    raise ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif ident == S_ENABLE_PUSH and value > 1:
                raise ProtocolError(PROTOCOL_ERROR, "bad SETTINGS_ENABLE_PUSH")
        self._out.append(frame(SETTINGS, ACK, 0))
        for st in list(self.streams.values()):
            if st.pending:
                self._flush(st)

    def _on_window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        inc = U32.unpack_from(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += inc
            if self.conn_send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
            for blocked in list(self.streams.values()):
                if blocked.pending:
                    self._flush(blocked)
                if self.conn_send_window <= 0:
                    break
            return
        st = self.streams.get(sid)
        if st is None:
            if sid > self.last_sid:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if inc == 0:
            self._reset(st, PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            return
        st.send_window += inc
        if st.send_window > MAX_WINDOW:
            self._reset(st, FLOW_CONTROL_ERROR, "stream window overflow")
            return
        if st.pending:
            self._flush(st)

    def _on_rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        if not sid or sid > self.last_sid:
            raise ProtocolError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        st = self.streams.get(sid)
        if st is None:
            return
        # Only a reset of a stream picker has not answered yet is work thrown away (the
        # rapid-reset attack). Envoy resets every ext_proc stream once the response is
        # done, after picker answered: that is not counted.
        if not st.headers_sent and not self._resets.take():
            raise ProtocolError(ENHANCE_YOUR_CALM, "too many stream resets")
        self._drop(st)
