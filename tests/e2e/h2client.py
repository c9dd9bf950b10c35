"""A frame-level HTTP/2 client for attacking picker's gRPC port in tests.

It speaks just enough HTTP/2 to be a "well-behaved" peer where a test wants one (sends
the preface, acknowledges SETTINGS) and lets the test send any frame sequence, valid or
not. Frames from the server are read by a background thread (unless ``read=False``:
a peer that never reads).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((ftype, flags))
        + struct.pack(">I", sid)
        + payload
    )


def grpc(msg: bytes, length: int | None = None) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg) if length is None else length) + msg


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes


class H2Client:
    def __init__(self, port: int, *, read: bool = True, handshake: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.frames: list[Frame] = []
        self.closed = threading.Event()
        self.settings_acked = threading.Event()
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._encoder = hpack.Encoder()
        self.sent_data: dict[int, int] = {}  # DATA bytes sent per stream (0: all)
        if handshake:
            self.send(PREFACE + frame(SETTINGS, 0, 0))
        if read:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def send(self, data: bytes) -> bool:
        """Sends ``data``; False when the server closed the connection. One writer at a
        time: the reader thread's SETTINGS ACK never lands inside a test's frames."""
        with self._send_lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                return False

    def wait_settings(self, timeout: float = 5.0) -> bool:
        """Waits until the server's SETTINGS arrived and were acknowledged."""
        return self.settings_acked.wait(timeout)

    def headers(self, sid: int, end_stream: bool = False, path: str = PROCESS) -> bytes:
        block: bytes = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "picker"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block)

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    f = Frame(
                        buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + n]
                    )
                    buf = buf[9 + n :]
                    if f.type == SETTINGS and not f.flags & ACK:
                        self.send(frame(SETTINGS, ACK, 0))
                        self.settings_acked.set()
                    if f.type == DATA:  # keep memory flat: payloads are not needed
                        f.payload = b"x" * min(len(f.payload), 16)
                    with self._lock:
                        self.frames.append(f)
        except OSError:
            pass
        finally:
            self.closed.set()

    def credit(self, sid: int) -> int:
        """What the server's windows let us send on ``sid`` now (respecting flow control)."""
        with self._lock:
            frames = list(self.frames)
        initial = 65535
        for f in frames:
            if f.type == SETTINGS and not f.flags & ACK:
                for off in range(0, len(f.payload), 6):
                    if int.from_bytes(f.payload[off : off + 2], "big") == 4:
                        initial = int.from_bytes(f.payload[off + 2 : off + 6], "big")
        conn = 65535 - self.sent_data.get(0, 0)
        stream = initial - self.sent_data.get(sid, 0)
        for f in frames:
            if f.type == WINDOW_UPDATE:
                inc = int.from_bytes(f.payload, "big") & 0x7FFFFFFF
                if f.sid == 0:
                    conn += inc
                elif f.sid == sid:
                    stream += inc
        return min(conn, stream)

    def send_data(self, sid: int, data: bytes, timeout: float = 1.0) -> bool:
        """DATA frames within the server's windows; False if no credit came in time."""
        off = 0
        deadline = time.monotonic() + timeout
        while off < len(data):
            room = min(self.credit(sid), 16384, len(data) - off)
            if room <= 0:
                if time.monotonic() > deadline or self.closed.is_set():
                    return False
                time.sleep(0.005)
                continue
            if not self.send(frame(DATA, 0, sid, data[off : off + room])):
                return False
            self.sent_data[sid] = self.sent_data.get(sid, 0) + room
            self.sent_data[0] = self.sent_data.get(0, 0) + room
            off += room
            deadline = time.monotonic() + timeout
        return True

    def of_type(self, ftype: int) -> list[Frame]:
        with self._lock:
            return [f for f in self.frames if f.type == ftype]

    def goaway_code(self, timeout: float = 5.0) -> int | None:
        """The error code of the server's GOAWAY, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            g = self.of_type(GOAWAY)
            if g:
                return int.from_bytes(g[0].payload[4:8], "big")
            if self.closed.is_set():
                g = self.of_type(GOAWAY)
                return int.from_bytes(g[0].payload[4:8], "big") if g else None
            time.sleep(0.01)
        return None

    def wait_closed(self, timeout: float = 5.0) -> bool:
        if self._reader is not None:
            return self.closed.wait(timeout)
        # Not reading: probe by reading with a timeout.
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 16):
                pass
            return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
