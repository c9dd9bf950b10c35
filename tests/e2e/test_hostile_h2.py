"""A hostile peer on picker's gRPC port, through a real socket to a real picker process.

One test per attack in the transport issue's table: each checks that the limit holds
(the connection gets GOAWAY or the stream is refused or reset) and that picker's peak
memory grows by a bounded amount while the attack runs.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from bench.stack.procs import Procs, free_port
from tests.e2e.h2client import (
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
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    H2Client,
    frame,
    grpc,
)

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 3, 6
REFUSED_STREAM, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 9, 0xB
MIB = 1 << 20


class Picker:
    def __init__(self, procs: Procs, port: int) -> None:
        self.procs = procs
        self.port = port
        self.pid = next(p.pid for n, p in procs.children if n == "picker")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def log(self) -> str:
        return self.procs.log("picker")


@pytest.fixture(scope="module")
def picker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Picker]:
    port = free_port()
    cfg = {
        "grpc_host": "127.0.0.1",
        "grpc_port": port,
        "metrics_port": -1,
        "max_body_bytes": MIB,
        "scrape": {"enabled": False},
        "models": {"*": [f"127.0.0.1:{free_port()}"]},
        "transport_limits": {
            "max_concurrent_streams": 100,
            "handshake_timeout": 0.5,
            "idle_timeout": 1.0,
        },
    }
    path = tmp_path_factory.mktemp("hostile") / "picker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    procs = Procs()
    try:
        procs.start(
            "picker",
            [sys.executable, "-m", "picker", "serve", "--config", str(path)],
            ready="picker ready",
            port=port,
        )
        yield Picker(procs, port)
    finally:
        procs.close()


def routed_stream(c: H2Client, sid: int) -> None:
    """Opens an ext_proc stream whose request is routed (FULL_DUPLEX both ways)."""
    h = pb.ProcessingRequest()
    hh = h.request_headers.headers.headers.add()
    hh.key, hh.raw_value = ":path", b"/v1/completions"
    h.protocol_config.request_body_mode = 4
    h.protocol_config.response_body_mode = 4
    b = pb.ProcessingRequest()
    b.request_body.body = b'{"model": "m", "prompt": "hi"}'
    b.request_body.end_of_stream = True
    r = pb.ProcessingRequest()
    rh = r.response_headers.headers.headers.add()
    rh.key, rh.raw_value = ":status", b"200"
    msgs = b"".join(grpc(m.SerializeToString()) for m in (h, b, r))
    c.send(c.headers(sid) + frame(DATA, 0, sid, msgs))


def test_continuation_flood_is_cut_at_the_header_limit(picker: Picker) -> None:
    before = picker.peak_rss_mib()
    c = H2Client(picker.port)
    assert c.wait_settings()  # no SETTINGS ACK can come between HEADERS and CONTINUATION
    c.send(frame(HEADERS, 0, 1, c.headers(1)[9:]))
    chunk = frame(CONTINUATION, 0, 1, b"\x00" * MIB)
    sent = sum(1 for _ in range(256) if c.send(chunk))
    assert c.goaway_code() == ENHANCE_YOUR_CALM
    assert c.wait_closed() and sent < 256
    assert picker.peak_rss_mib() - before < 24
    c.close()


def test_oversized_message_is_refused_with_status_8(picker: Picker) -> None:
    before = picker.peak_rss_mib()
    c = H2Client(picker.port)
    c.send(c.headers(1))
    time.sleep(0.1)  # picker's SETTINGS (its stream window) arrive
    # A client that respects windows sends what they allow of its 4 GiB message.
    sent = c.send_data(1, grpc(b"", length=0xFFFFFFFF) + b"\x00" * (4 * MIB), timeout=0.5)
    assert not sent  # picker stopped giving this stream credit
    assert c.sent_data[1] <= MIB  # its initial window, never refilled
    trailers = [f for f in c.of_type(HEADERS) if f.sid == 1 and f.flags & END_STREAM]
    assert trailers and b"grpc-status" in trailers[0].payload
    assert b"8" in trailers[0].payload  # RESOURCE_EXHAUSTED
    updates = [f for f in c.of_type(WINDOW_UPDATE) if f.sid == 1]
    assert not updates  # no more credit for a stream being discarded
    assert picker.peak_rss_mib() - before < 16
    c.close()


def test_peer_that_never_grants_window_gets_its_stream_reset(picker: Picker) -> None:
    before = picker.peak_rss_mib()
    c = H2Client(picker.port)  # reads, but never sends WINDOW_UPDATE
    routed_stream(c, 1)
    body = pb.ProcessingRequest()
    body.response_body.body = b"t" * MIB
    msg = grpc(body.SerializeToString())
    sent = 0
    while sent < 200 and c.send_data(1, msg):  # within picker's windows
        sent += 1
    time.sleep(0.3)
    resets = [f for f in c.of_type(RST_STREAM) if f.sid == 1]
    assert resets and struct.unpack(">I", resets[0].payload)[0] == ENHANCE_YOUR_CALM
    assert picker.peak_rss_mib() - before < 48
    c.close()


def test_ping_flood_from_a_peer_that_never_reads(picker: Picker) -> None:
    before = picker.peak_rss_mib()
    c = H2Client(picker.port, read=False)
    ping = frame(PING, 0, 0, b"12345678") * 1000
    for _ in range(2000):  # up to 2M PINGs
        if not c.send(ping):
            break
    assert c.wait_closed(10)
    assert picker.peak_rss_mib() - before < 16
    c.close()


def test_rapid_reset_ends_in_goaway(picker: Picker) -> None:
    c = H2Client(picker.port)
    sid = 1
    for _ in range(20):
        batch = b""
        for _ in range(1000):
            batch += c.headers(sid) + frame(RST_STREAM, 0, sid, struct.pack(">I", 8))
            sid += 2
        if not c.send(batch):
            break
    assert c.goaway_code() == ENHANCE_YOUR_CALM
    c.close()


def test_concurrent_streams_are_capped(picker: Picker) -> None:
    before = picker.peak_rss_mib()
    c = H2Client(picker.port)
    for start in range(0, 20000, 1000):
        batch = b"".join(c.headers(1 + 2 * i) for i in range(start, start + 1000))
        if not c.send(batch):
            break
    time.sleep(0.3)
    refused = [f for f in c.of_type(RST_STREAM) if f.payload == struct.pack(">I", REFUSED_STREAM)]
    assert refused and min(f.sid for f in refused) == 1 + 2 * 100  # the 101st stream
    assert c.goaway_code() == ENHANCE_YOUR_CALM  # refusals count as resets
    assert picker.peak_rss_mib() - before < 24
    c.close()


def test_routed_requests_per_connection_are_capped(picker: Picker) -> None:
    c = H2Client(picker.port)
    for i in range(150):
        routed_stream(c, 1 + 2 * i)
    time.sleep(0.3)
    refused = {f.sid for f in c.of_type(RST_STREAM)}
    assert len(refused) == 50 and min(refused) == 201
    c.close()


MALFORMED: list[tuple[str, bytes, int]] = [
    ("short WINDOW_UPDATE", frame(WINDOW_UPDATE, 0, 0, b"\x00\x01"), FRAME_SIZE_ERROR),
    ("WINDOW_UPDATE of 0", frame(WINDOW_UPDATE, 0, 0, b"\x00" * 4), PROTOCOL_ERROR),
    ("window overflow", frame(WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), FLOW_CONTROL_ERROR),
    ("PADDED HEADERS, empty", frame(HEADERS, PADDED | END_HEADERS, 1), PROTOCOL_ERROR),
    ("PADDED DATA, empty", frame(DATA, PADDED, 1), PROTOCOL_ERROR),
    ("padding too long", frame(HEADERS, PADDED | END_HEADERS, 1, b"\x09abc"), PROTOCOL_ERROR),
    ("short PING", frame(PING, 0, 0, b"1234"), FRAME_SIZE_ERROR),
    ("PING on a stream", frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    ("short RST_STREAM", frame(RST_STREAM, 0, 1, b"\x00"), FRAME_SIZE_ERROR),
    ("RST_STREAM idle", frame(RST_STREAM, 0, 9, b"\x00" * 4), PROTOCOL_ERROR),
    ("SETTINGS 7 bytes", frame(SETTINGS, 0, 0, b"\x00" * 7), FRAME_SIZE_ERROR),
    ("SETTINGS ACK body", frame(SETTINGS, 1, 0, b"\x00" * 6), FRAME_SIZE_ERROR),
    ("SETTINGS on stream", frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    ("bad max frame", frame(SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), PROTOCOL_ERROR),
    ("huge window", frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), FLOW_CONTROL_ERROR),
    ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
    ("DATA idle stream", frame(DATA, 0, 5, b"x"), PROTOCOL_ERROR),
    ("HEADERS on stream 0", frame(HEADERS, END_HEADERS, 0, b"\x82"), PROTOCOL_ERROR),
    ("even stream id", frame(HEADERS, END_HEADERS, 2, b"\x82"), PROTOCOL_ERROR),
    ("bad HPACK", frame(HEADERS, END_HEADERS, 1, b"\xff\xff\xff\xff\xff"), COMPRESSION_ERROR),
    ("lone CONTINUATION", frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
    ("PRIORITY short", frame(PRIORITY, 0, 1, b"\x00"), FRAME_SIZE_ERROR),
    ("PUSH_PROMISE", frame(5, END_HEADERS, 1, b"\x00" * 4), PROTOCOL_ERROR),
    ("short GOAWAY", frame(GOAWAY, 0, 0, b"\x00"), FRAME_SIZE_ERROR),
    ("frame too large", b"\x11\x00\x00\x00\x00\x00\x00\x00\x00", FRAME_SIZE_ERROR),
    (
        "interrupted header block",
        frame(HEADERS, 0, 1, b"\x82") + frame(PING, 0, 0, b"12345678"),
        PROTOCOL_ERROR,
    ),
]


@pytest.mark.parametrize(("name", "data", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_frames_get_goaway(picker: Picker, name: str, data: bytes, code: int) -> None:
    c = H2Client(picker.port)
    assert c.wait_settings()
    c.send(data)
    assert c.goaway_code() == code, name
    assert c.wait_closed()
    c.close()
    assert "Traceback" not in picker.log()


def test_bad_preface_gets_goaway(picker: Picker) -> None:
    c = H2Client(picker.port, handshake=False)
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.goaway_code() == PROTOCOL_ERROR and c.wait_closed()


def test_half_a_preface_is_dropped_after_the_handshake_timeout(picker: Picker) -> None:
    c = H2Client(picker.port, handshake=False, read=False)
    c.send(PREFACE[:10])
    t0 = time.monotonic()
    assert c.wait_closed(5)
    assert time.monotonic() - t0 < 3  # 0.5 s configured, checked once
    c.close()


def test_idle_connections_are_closed(picker: Picker) -> None:
    clients = [H2Client(picker.port) for _ in range(200)]
    codes = [c.goaway_code(6) for c in clients]
    assert codes == [NO_ERROR] * 200
    assert all(c.wait_closed() for c in clients)
    for c in clients:
        c.close()
