"""State shared by the two halves of the HTTP/2 core: limits, error codes, streams."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from picker.transport.frames import U32

# Error codes (RFC 9113 section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB
# SETTINGS identifiers
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
DEFAULT_WINDOW = 65535
MIN_FRAME, MAX_FRAME = 16384, (1 << 24) - 1
# gRPC status codes used here
GRPC_INVALID_ARGUMENT, GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED = 3, 8, 12
GRPC_INTERNAL = 13


@dataclass(frozen=True)
class Limits:
    max_concurrent_streams: int = 1000
    max_header_block: int = 64 * 1024
    max_message: int = 17 * 2**20  # the server sets max_body_bytes + 1 MiB
    max_frame: int = 1 << 20  # SETTINGS_MAX_FRAME_SIZE we advertise
    stream_window: int = 1 << 20  # initial per-stream receive window we advertise
    conn_window: int = 1 << 24  # connection receive window
    max_buffered: int = 1 << 26  # incomplete inbound messages held per connection
    max_pending_stream: int = 1 << 25  # outbound bytes waiting for window, per stream
    max_pending: int = 1 << 26  # ... and per connection
    reset_rate: float = 200.0  # client stream resets per second (sustained) ...
    reset_burst: float = 1000.0  # ... and in a burst
    control_rate: float = 200.0  # PING / SETTINGS / empty frames per second ...
    control_burst: float = 2000.0  # ... and in a burst


class StreamHandler(Protocol):
    """What the connection tells about one stream."""

    def on_message(self, msg: bytes) -> None: ...

    def on_end(self) -> None:
        """The client half-closed its side."""

    def on_reset(self) -> None:
        """The stream ended abnormally (client reset, refused, connection lost)."""


OpenStream = Callable[[int, str], StreamHandler | None]


def data_header(length: int, sid: int) -> bytes:
    """The 9-byte header of a DATA frame without flags."""
    return U32.pack(length)[1:] + b"\x00\x00" + U32.pack(sid)


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class Bucket:
    __slots__ = ("burst", "last", "now", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: Callable[[], float]) -> None:
        self.rate, self.burst, self.now = rate, burst, now
        self.tokens = burst
        self.last = now()

    def take(self) -> bool:
        t = self.now()
        self.tokens = min(self.burst, self.tokens + (t - self.last) * self.rate)
        self.last = t
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Stream:
    __slots__ = (
        "buf",
        "counted",
        "discard",
        "handler",
        "headers_sent",
        "need",
        "parts",
        "pending",
        "recv_window",
        "remote_closed",
        "send_window",
        "sid",
        "trailer",
    )

    def __init__(self, sid: int, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.buf = bytearray()  # an incomplete gRPC message header (under 5 bytes)
        self.counted = 0  # bytes of buf and parts, as counted in ``buffered``
        self.need = 0  # payload bytes still missing from the message in ``parts``
        self.parts: list[bytes] = []  # the payload so far of a message spread over frames
        self.handler: StreamHandler | None = None
        self.headers_sent = False
        self.remote_closed = False
        self.discard = False  # finished by us: drop further data
        self.send_window = send_window
        self.recv_window = recv_window
        self.pending = bytearray()  # outbound gRPC bytes waiting for window
        self.trailer: bytes | None = None  # held until pending is sent
