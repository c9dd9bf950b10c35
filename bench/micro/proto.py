"""Why picker parses ext_proc messages with ``xds-protos`` (upb) and not with
``envoy-data-plane`` (betterproto2), the library the design first named.

Parses the same serialized messages with both, and serializes the same routing response:
the request-headers message Envoy sends for a chat request (with protocol config and
subset metadata), a 1 KB and a 220 KB request-body message, and picker's routing answer.
Prints µs per operation. Run with

    pip install envoy-data-plane      # part of picker's [bench] extra
    python -m bench.micro.proto [--seconds 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

HEADERS = [
    (":method", "POST"),
    (":path", "/v1/chat/completions"),
    (":authority", "gateway.example"),
    (":scheme", "http"),
    ("content-type", "application/json"),
    ("content-length", "1024"),
    ("user-agent", "openai-python/1.50"),
    ("x-request-id", "6f1c1c9e-8a0e-4c55-9a7e-1d3c0f6e1b2a"),
    ("x-gateway-inference-objective", "standard"),
    ("accept", "application/json"),
]


def headers_message() -> bytes:
    r = pb.ProcessingRequest()
    for k, v in HEADERS:
        h = r.request_headers.headers.headers.add()
        h.key = k
        h.raw_value = v.encode()
    r.protocol_config.request_body_mode = 4  # FULL_DUPLEX_STREAMED
    ns = r.metadata_context.filter_metadata["envoy.lb.subset_hint"]
    lst = ns.fields["x-gateway-destination-endpoint-subset"].list_value
    for i in range(4):
        lst.values.add().string_value = f"10.0.0.{i}:8000"
    out: bytes = r.SerializeToString()
    return out


def body_message(size: int) -> bytes:
    text = ("the quick brown fox jumps over the lazy dog " * (size // 44 + 1))[:size]
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    r = pb.ProcessingRequest()
    r.request_body.body = body
    r.request_body.end_of_stream = True
    out: bytes = r.SerializeToString()
    return out


def per_op(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return (now - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    try:
        from envoy_data_plane.envoy.service.ext_proc import v3 as bp
    except ImportError:
        raise SystemExit(
            "envoy-data-plane is not installed: pip install envoy-data-plane"
        ) from None

    messages = {
        "request_headers": headers_message(),
        "request_body 1 KB": body_message(1024),
        "request_body 220 KB": body_message(220 * 1024),
    }
    print(
        f"{'operation':34} {'bytes':>8} {'xds-protos us':>14} {'betterproto2 us':>16} {'ratio':>7}"
    )
    pair_upb = pair_bp = 0.0
    for name, raw in messages.items():
        a = per_op(partial(pb.ProcessingRequest.FromString, raw), args.seconds)
        b = per_op(partial(bp.ProcessingRequest.parse, raw), args.seconds)
        if name != "request_body 220 KB":
            pair_upb += a
            pair_bp += b
        print(f"parse {name:28} {len(raw):8d} {a:14.1f} {b:16.1f} {b / a:7.0f}")
    print(f"{'parse pair (headers + 1 KB body)':34} {'':8} {pair_upb:14.1f} {pair_bp:16.1f}")

    def routed_upb() -> bytes:
        resp = pb.ProcessingResponse()
        opt = resp.request_headers.response.header_mutation.set_headers.add()
        opt.header.key = "x-gateway-destination-endpoint"
        opt.header.raw_value = b"10.0.0.1:8000"
        out: bytes = resp.SerializeToString()
        return out

    def routed_bp() -> bytes:
        from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption

        opt = HeaderValueOption(
            header=HeaderValue(key="x-gateway-destination-endpoint", raw_value=b"10.0.0.1:8000")
        )
        resp = bp.ProcessingResponse(
            request_headers=bp.HeadersResponse(
                response=bp.CommonResponse(header_mutation=bp.HeaderMutation(set_headers=[opt]))
            )
        )
        return bytes(resp)

    assert pb.ProcessingResponse.FromString(routed_bp()) == pb.ProcessingResponse.FromString(
        routed_upb()
    )
    a = per_op(routed_upb, args.seconds)
    b = per_op(routed_bp, args.seconds)
    print(
        f"{'serialize routing response':34} {len(routed_upb()):8d} {a:14.1f} {b:16.1f} {b / a:7.0f}"
    )


if __name__ == "__main__":
    main()
