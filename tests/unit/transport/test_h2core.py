"""The sans-IO HTTP/2 core without sockets: interop with the ``h2`` library's client
state machine, and hypothesis over arbitrary frame sequences."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import hpack
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from picker.transport.h2core import GrpcConnection, Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LIMITS = Limits(
    max_concurrent_streams=8,
    max_header_block=4096,
    max_message=4096,
    max_frame=16384,
    stream_window=8192,
    conn_window=65535,
    max_buffered=16384,
    max_pending_stream=16384,
    max_pending=32768,
    reset_rate=10.0,
    reset_burst=20.0,
    control_rate=10.0,
    control_burst=50.0,
)


class Echo:
    """Echoes each message back and ends the stream when the client half-closes."""

    def __init__(self, conn: GrpcConnection, sid: int) -> None:
        self.conn, self.sid = conn, sid
        self.messages: list[bytes] = []
        self.reset = False

    def on_message(self, msg: bytes) -> None:
        self.messages.append(msg)
        self.conn.send_message(self.sid, msg * 3)

    def on_end(self) -> None:
        self.conn.finish(self.sid, 0)

    def on_reset(self) -> None:
        self.reset = True


def server(limits: Limits = LIMITS) -> tuple[GrpcConnection, dict[int, Echo]]:
    handlers: dict[int, Echo] = {}

    def open_stream(sid: int, path: str) -> Echo | None:
        if path != "/svc/Echo":
            return None
        h = handlers[sid] = Echo(conn, sid)
        return h

    conn = GrpcConnection(open_stream, limits)
    conn.initiate()
    return conn, handlers


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, "truncated frame header"
        n = int.from_bytes(data[pos : pos + 3], "big")
        assert len(data) - pos - 9 >= n, "truncated frame"
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big")
        out.append((data[pos + 3], data[pos + 4], sid, data[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    return out


def grpc(msg: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def test_interop_with_the_h2_library() -> None:
    conn, handlers = server()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()

    def pump() -> list[h2.events.Event]:
        conn.receive(client.data_to_send())
        return client.receive_data(conn.data_to_send())

    pump()
    for sid in (1, 3, 5):
        client.send_headers(
            sid, [(":method", "POST"), (":path", "/svc/Echo"), (":scheme", "http"),
                  (":authority", "x"), ("content-type", "application/grpc")],
        )  # fmt: skip
        client.send_data(sid, grpc(b"a" * 1000) + grpc(b"b" * 3000), end_stream=True)
    events = pump()
    got: dict[int, bytes] = {}
    ended: dict[int, list[tuple[bytes, bytes]]] = {}
    for _ in range(20):
        for e in events:
            if isinstance(e, h2.events.DataReceived):
                got[e.stream_id] = got.get(e.stream_id, b"") + e.data
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.TrailersReceived):
                ended[e.stream_id] = [(bytes(k), bytes(v)) for k, v in e.headers]
        if len(ended) == 3:
            break
        events = pump()
    assert sorted(ended) == [1, 3, 5]
    for sid in (1, 3, 5):
        assert (b"grpc-status", b"0") in ended[sid]
        assert got[sid] == grpc(b"a" * 3000) + grpc(b"b" * 9000)  # more than one window
        assert handlers[sid].messages == [b"a" * 1000, b"b" * 3000]
    assert not conn.streams and not conn.closed


def test_unknown_method_is_unimplemented() -> None:
    conn, _ = server()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/nope"), (":scheme", "http"),
                            (":authority", "x")], end_stream=True)  # fmt: skip
    conn.receive(client.data_to_send())
    events = client.receive_data(conn.data_to_send())
    trailers = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert trailers and (b"grpc-status", b"12") in [
        (bytes(k), bytes(v)) for k, v in trailers[0].headers
    ]


# -- fuzzing -----------------------------------------------------------------------------

_enc = hpack.Encoder()
_BLOCK = _enc.encode([(":method", "POST"), (":path", "/svc/Echo"), ("te", "trailers")])


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


payloads = st.one_of(
    st.binary(max_size=40),
    st.just(_BLOCK),
    st.builds(grpc, st.binary(max_size=3000)),
    st.builds(lambda n: b"\x00" + struct.pack(">I", n), st.integers(0, 2**32 - 1)),
    st.builds(lambda i, v: struct.pack(">HI", i, v), st.integers(0, 8), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: struct.pack(">I", v), st.integers(0, 2**32 - 1)),
)
valid_data = st.builds(
    lambda sid, m, end: _frame(0, 1 if end else 0, sid, grpc(m)),
    st.sampled_from([1, 3, 5]),
    st.binary(max_size=3000),
    st.booleans(),
)
window_updates = st.builds(
    lambda sid, inc: _frame(8, 0, sid, struct.pack(">I", inc)),
    st.sampled_from([0, 1, 3, 5]),
    st.integers(1, 1 << 16),
)
random_frames = st.builds(
    _frame,
    st.integers(0, 11),
    st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0xFF]),
    st.sampled_from([0, 1, 2, 3, 5, 7, 9, 2**31 - 1]),
    payloads,
)
# Mostly frames a real client would send, with hostile ones mixed in.
frames = st.one_of(valid_data, valid_data, valid_data, valid_data, window_updates, random_frames)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    preface=st.sampled_from([True, True, True, False]),
    opening=st.sampled_from([[], [_frame(1, 4, i, _BLOCK) for i in (1, 3, 5)]]),
    seq=st.lists(frames, max_size=40),
    cuts=st.lists(st.integers(1, 200), max_size=10),
)
def test_any_frame_sequence_ends_well(
    preface: bool, opening: list[bytes], seq: list[bytes], cuts: list[int]
) -> None:
    conn, handlers = server()
    data = (PREFACE if preface else b"") + b"".join(opening + seq)
    chunks = []
    pos = 0
    for c in cuts:
        chunks.append(data[pos : pos + c])
        pos += c
    chunks.append(data[pos:])
    out = conn.data_to_send()
    for chunk in chunks:
        conn.receive(chunk)  # never raises
        out += conn.data_to_send()
        # Memory stays bounded whatever arrives.
        assert conn.buffered <= LIMITS.max_buffered + LIMITS.max_frame
        assert conn.pending <= LIMITS.max_pending
        assert len(conn.streams) <= LIMITS.max_concurrent_streams
        assert len(conn._buf) <= LIMITS.max_frame + 9 + len(PREFACE)
    event("streams opened" if handlers else "no stream")
    event("closed with GOAWAY" if conn.closed else "still open")
    event("a message was handled" if any(h.messages for h in handlers.values()) else "no message")
    sent = parse_frames(out)  # every byte picker wrote is a well-formed frame
    assert sent and sent[0][0] == 4  # our SETTINGS first
    goaways = [f for f in sent if f[0] == 7]
    if conn.closed:
        assert goaways and sent[-1][0] == 7  # a clean GOAWAY, last
        assert not conn.streams
    else:
        assert not goaways
    for f in sent:
        if f[0] == 0:  # DATA frames stay within our stream ids
            assert f[2] % 2 == 1


def test_blocks_that_keep_the_hpack_table_are_recognised() -> None:
    from picker.transport.hpack_scan import keeps_table as _keeps_table

    enc = hpack.Encoder()
    first = enc.encode([(":method", "POST"), (":path", "/a"), ("x-id", "1")])
    assert not _keeps_table(first)  # literals with incremental indexing
    again = enc.encode([(":method", "POST"), (":path", "/a"), ("x-id", "1")])
    assert _keeps_table(again)  # all indexed now
    never = hpack.Encoder().encode([(":path", "/p", True), ("x", "y", True)])  # never indexed
    assert _keeps_table(never)
    assert not _keeps_table(b"\x3f\xe1\x1f")  # dynamic table size update
    assert not _keeps_table(b"\x04\x85ab")  # string longer than the block


def test_envoys_repeated_block_is_decoded_once() -> None:
    """Envoy sends :path as a literal without indexing on every stream; the block is
    memoised, and a block that changes the table clears the memo."""
    conn, handlers = server()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    conn.receive(client.data_to_send())
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/svc/Echo", True)])
    for sid in (1, 3, 5):
        conn.receive(len(block).to_bytes(3, "big") + b"\x01\x05" + sid.to_bytes(4, "big") + block)
    assert sorted(handlers) == [1, 3, 5] and list(conn._memo.values()) == ["/svc/Echo"]


def _raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


def test_resets_of_answered_streams_are_not_an_attack() -> None:
    """Envoy resets each ext_proc stream after picker answered; only resets of streams
    picker had not answered count towards the rapid-reset limit."""
    conn, _ = server()
    conn.receive(PREFACE)
    rst = struct.pack(">I", 8)
    for i in range(200):  # 10x the burst of LIMITS
        sid = 1 + 2 * i
        conn.receive(_raw(1, 4, sid, _BLOCK) + _raw(0, 0, sid, grpc(b"q")) + _raw(3, 0, sid, rst))
    assert not conn.closed
    for i in range(200, 240):  # HEADERS then RST at once: nothing answered
        sid = 1 + 2 * i
        conn.receive(_raw(1, 4, sid, _BLOCK) + _raw(3, 0, sid, rst))
    assert conn.closed and conn.error == "too many stream resets"
