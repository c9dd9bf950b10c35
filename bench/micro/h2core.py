"""picker's hand-written HTTP/2 core against the ``h2`` library's state machine.

Both parse the same bytes (what Envoy sends for ``--requests`` small ext_proc streams:
HEADERS, three gRPC messages, END_STREAM), hand each whole gRPC message to a no-op
handler, answer each with one small message and trailers, and produce the bytes to
send. No sockets, no protobuf, no routing: only the HTTP/2 + gRPC framing cost, µs of
CPU per request.

    python -m bench.micro.h2core [--requests 20000]
"""

from __future__ import annotations

import argparse
import struct
import time

import h2.config
import h2.connection
import h2.events
import hpack
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from picker.transport.frames import frame
from picker.transport.h2core import GrpcConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
REPLY = b"\x0a\x00" * 20  # a 40-byte answer


def _grpc(n: int) -> bytes:
    return b"\x00" + struct.pack(">I", n) + b"\x0a" * n


def envoy_bytes(requests: int) -> list[bytes]:
    """One read per request, as Envoy writes each stream's frames together."""
    enc = hpack.Encoder()
    fields = [
        HeaderTuple(":method", "POST"),
        HeaderTuple(":scheme", "http"),
        NeverIndexedHeaderTuple(":path", PATH),  # as Envoy sends it
        HeaderTuple(":authority", "picker"),
        HeaderTuple("te", "trailers"),
        HeaderTuple("content-type", "application/grpc"),
    ]
    # Envoy's SETTINGS (large stream windows) and connection window.
    settings = struct.pack(">HI", 4, 1 << 30)
    out = [PREFACE + frame(4, 0, 0, settings) + frame(8, 0, 0, struct.pack(">I", 1 << 30))]
    for i in range(requests):
        sid = 1 + 2 * i
        block = enc.encode(fields)
        body = _grpc(300) + _grpc(700) + _grpc(60)
        out.append(frame(1, 4, sid, block) + frame(0, 1, sid, body))
    return out


def run_picker(reads: list[bytes]) -> int:
    sent = 0

    class Handler:
        def __init__(self, sid: int) -> None:
            self.sid = sid

        def on_message(self, msg: bytes) -> None:
            if len(msg) == 60:
                conn.send_message(self.sid, REPLY)

        def on_end(self) -> None:
            conn.finish(self.sid, 0)

        def on_reset(self) -> None:
            return None

    conn = GrpcConnection(lambda sid, path: Handler(sid))
    conn.initiate()
    for data in reads:
        conn.receive(data)
        sent += len(conn.data_to_send())
    return sent


def run_h2lib(reads: list[bytes]) -> int:
    cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
    conn = h2.connection.H2Connection(cfg)
    conn.initiate_connection()
    bufs: dict[int, bytearray] = {}
    sent = 0
    for data in reads:
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                bufs[ev.stream_id] = bytearray()
            elif isinstance(ev, h2.events.DataReceived):
                buf = bufs[ev.stream_id]
                buf += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                while len(buf) >= 5:
                    n = struct.unpack_from(">I", buf, 1)[0]
                    if len(buf) < 5 + n:
                        break
                    msg = bytes(buf[5 : 5 + n])
                    del buf[: 5 + n]
                    if len(msg) == 60:
                        sid = ev.stream_id
                        conn.send_headers(
                            sid, [(":status", "200"), ("content-type", "application/grpc")]
                        )
                        conn.send_data(sid, b"\x00" + struct.pack(">I", len(REPLY)) + REPLY)
            elif isinstance(ev, h2.events.StreamEnded):
                conn.send_headers(ev.stream_id, [("grpc-status", "0")], end_stream=True)
                bufs.pop(ev.stream_id, None)
        sent += len(conn.data_to_send())
    return sent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    reads = envoy_bytes(args.requests)
    print(f"{'HTTP/2 + gRPC framing':28} {'CPU us/request':>15} {'bytes out/request':>18}")
    for name, fn in (("picker h2core (hand-written)", run_picker), ("h2 library 4.x", run_h2lib)):
        best = float("inf")
        out = 0
        for _ in range(3):
            t0 = time.process_time()
            out = fn(reads)
            best = min(best, time.process_time() - t0)
        print(f"{name:28} {best / args.requests * 1e6:15.1f} {out / args.requests:18.0f}")


if __name__ == "__main__":
    main()
