"""Where does picker's CPU go on a large request body? In process, no sockets.

Feeds the HTTP/2 core and the ext_proc stream machine the bytes Envoy sends for one
chat request in FULL_DUPLEX_STREAMED mode (request headers, the body in ``--chunk-kb``
pieces, response headers), with the default scheduling profile over 4 endpoints, and
prints µs of CPU per request. ``--profile`` prints the top functions (cProfile).

    python -m bench.micro.bigbody [--body-kb 220] [--chunk-kb 16] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import struct
import time

import hpack
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.config import load_config
from picker.server import PickerServer
from picker.transport.frames import PREFACE, frame
from picker.transport.h2 import H2GrpcProtocol, NativeServer

PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def _grpc(msg: pb.ProcessingRequest) -> bytes:
    raw: bytes = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(raw)) + raw


def chat_body(kb: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [f"w{rng.randrange(5000)}" for _ in range(kb * 1024 // 6)]
    text = " ".join(words)[: kb * 1024]
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": text}]}
    )  # fmt: skip


def stream_bytes(sid: int, body: bytes, chunk: int, enc: hpack.Encoder) -> bytes:
    """What Envoy sends on one ext_proc stream for one request."""
    fields = [(":method", "POST"), (":path", PROCESS), (":scheme", "http")]
    block = enc.encode([*fields, (":authority", "picker"), ("content-type", "application/grpc")])
    out = [frame(1, 4, sid, block)]
    h = pb.ProcessingRequest()
    for k, v in ((":path", "/v1/chat/completions"), (":method", "POST"),
                 ("content-type", "application/json")):  # fmt: skip
        hh = h.request_headers.headers.headers.add()
        hh.key, hh.raw_value = k, v.encode()
    h.protocol_config.request_body_mode = 4
    msgs = [_grpc(h)]
    for off in range(0, len(body), chunk):
        b = pb.ProcessingRequest()
        b.request_body.body = body[off : off + chunk]
        b.request_body.end_of_stream = off + chunk >= len(body)
        msgs.append(_grpc(b))
    r = pb.ProcessingRequest()
    rh = r.response_headers.headers.headers.add()
    rh.key, rh.raw_value = ":status", b"200"
    r.response_headers.end_of_stream = True
    msgs.append(_grpc(r))
    for i, m in enumerate(msgs):  # Envoy's DATA frames carry at most 16 KiB
        for off in range(0, len(m), 16384):
            last = i == len(msgs) - 1 and off + 16384 >= len(m)
            out.append(frame(0, 1 if last else 0, sid, m[off : off + 16384]))  # END_STREAM
    return b"".join(out)


class _Sink:
    """A transport that drops what picker writes (it is counted, not sent)."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--body-kb", type=int, default=220)
    ap.add_argument("--chunk-kb", type=int, default=256, help="Envoy sends the body whole")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-prefix", action="store_true", help="scheduler without prefix scorer")
    args = ap.parse_args()
    cfg = load_config(
        data={
            "models": {"*": [f"10.0.0.{i}:8000" for i in range(4)]},
            "scrape": {"enabled": False},
            **({"scheduler": {"scorers": {"queue": 1}}} if args.no_prefix else {}),
        }
    )
    ps = PickerServer(cfg)
    server = NativeServer(ps.service, ps.health_status, ps._limits())
    proto = H2GrpcProtocol(server)
    sink = _Sink()
    proto.transport = sink  # type: ignore[assignment]
    proto.conn.initiate()
    # Envoy's HTTP/2 client: 256 MiB stream windows.
    proto.conn.receive(PREFACE + frame(4, 0, 0, struct.pack(">HI", 4, 1 << 28)))
    enc = hpack.Encoder()
    bodies = [chat_body(args.body_kb, i) for i in range(8)]  # distinct prompts
    streams = [
        stream_bytes(1 + 2 * i, bodies[i % len(bodies)], args.chunk_kb * 1024, enc)
        for i in range(args.requests)
    ]
    # Envoy grants window as it reads; give plenty up front.
    grant = frame(8, 0, 0, struct.pack(">I", (1 << 31) - 1 - 65535))
    proto.conn.receive(grant)

    def run() -> None:
        for data in streams:
            proto.data_received(data)

    prof = cProfile.Profile() if args.profile else None
    t0 = time.process_time()
    if prof is not None:
        prof.enable()
    run()
    if prof is not None:
        prof.disable()
    cpu = (time.process_time() - t0) / args.requests * 1e6
    print(
        f"body {len(bodies[0]) / 1024:.0f} KB in {args.chunk_kb} KB chunks: "
        f"{cpu:.0f} us CPU per request ({sink.written / args.requests / 1024:.0f} KB written)"
    )
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
